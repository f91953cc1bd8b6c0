package e2e

import (
	"context"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestAuthTokens: with --auth=on, batond init makes the first admin token;
// the CLI creates a narrower token with it; each token may do what its role
// allows, over gRPC and REST; and the audit trail shows the refusals.
func TestAuthTokens(t *testing.T) {
	t.Parallel()
	c := newCluster(t, withBatondFlags("--auth=on"))
	out, err := exec.Command(bins.batond, "init", "--data-dir", filepath.Join(c.dir, "batond")).Output()
	if err != nil {
		t.Fatalf("batond init: %v", err)
	}
	admin := strings.TrimSpace(string(out))

	_, stderr, code := c.cli("agents")
	if code != 2 || !strings.Contains(stderr, "batond init") {
		t.Fatalf("baton agents without a token = %d %q, want refused saying how to get a token", code, stderr)
	}
	operator, stderr, code := c.cli("--token", admin, "token", "create", "ci", "--role", "operator")
	if code != 0 {
		t.Fatalf("baton token create = %d %q", code, stderr)
	}
	operator = strings.TrimSpace(operator)

	job := filepath.Join(t.TempDir(), "job.yaml")
	if err := os.WriteFile(job, []byte("name: e2e-auth\ntasks:\n  - name: t\n    run: [/bin/true]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tokenFile := filepath.Join(t.TempDir(), "ci.token")
	if err := os.WriteFile(tokenFile, []byte(operator+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, stderr, code = c.cli("--token-file", tokenFile, "job", "apply", "-f", job)
	if code != 2 || !strings.Contains(stderr, "needs the admin role") {
		t.Errorf("baton job apply as operator = %d %q, want refused naming the admin role", code, stderr)
	}
	if _, stderr, code := c.cli("--token", admin, "job", "apply", "-f", job); code != 0 {
		t.Fatalf("baton job apply as admin = %d %q", code, stderr)
	}

	// REST: the same token in the Authorization header.
	get := func(path, token string) int {
		req, err := http.NewRequestWithContext(context.Background(), "GET", "http://"+c.http+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		defer func() { _ = resp.Body.Close() }()
		_, _ = io.Copy(io.Discard, resp.Body)
		return resp.StatusCode
	}
	if got := get("/v1/jobs/e2e-auth", ""); got != http.StatusUnauthorized {
		t.Errorf("GET /v1/jobs/e2e-auth without a token = %d, want 401", got)
	}
	if got := get("/v1/jobs/e2e-auth", operator); got != http.StatusOK {
		t.Errorf("GET /v1/jobs/e2e-auth as operator = %d, want 200", got)
	}

	// The refused apply is in the audit trail (written asynchronously).
	waitFor(t, 30*time.Second, "the refused apply in the audit trail", func() bool {
		out, _, code := c.cli("--token", admin, "audit", "--who", "token:ci")
		return code == 0 && strings.Contains(out, "JobService.ApplyJob") && strings.Contains(out, "PermissionDenied")
	})
	if _, stderr, code := c.cli("--token", admin, "token", "revoke", "ci"); code != 0 {
		t.Fatalf("baton token revoke = %d %q", code, stderr)
	}
	if _, stderr, code := c.cli("--token", operator, "agents"); code != 2 || !strings.Contains(stderr, "revoked") {
		t.Errorf("baton agents with a revoked token = %d %q, want refused as revoked", code, stderr)
	}
}
