package e2e

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/batonhq/baton/client/pki"
	batonv1 "github.com/batonhq/baton/gen/baton/v1"
)

// withSecurity starts batond as a production estate would run it: TLS,
// agent certificates from the CA in pkiDir with approval, and API tokens.
// The first admin token comes from batond init, run before batond starts;
// the cluster's client and CLI use it.
func withSecurity(pkiDir string) clusterOption {
	return func(c *cluster) {
		c.extra = append(c.extra, "--tls-cert", filepath.Join(pkiDir, pki.ServerCrt), "--tls-key", filepath.Join(pkiDir, pki.ServerKey),
			"--agent-ca", filepath.Join(pkiDir, pki.CACert), "--auth=on")
		c.dial.CAFile = filepath.Join(pkiDir, pki.CACert)
		tokenFile := filepath.Join(c.dir, "admin.token")
		out, err := exec.Command(bins.batond, "init", "--data-dir", filepath.Join(c.dir, "batond"), "--token-file", tokenFile).CombinedOutput()
		if err != nil {
			c.t.Fatalf("batond init: %v\n%s", err, out)
		}
		tok, err := os.ReadFile(tokenFile)
		if err != nil {
			c.t.Fatal(err)
		}
		c.dial.Token = strings.TrimSpace(string(tok))
	}
}

// makePKI makes a CA, batond's certificate for 127.0.0.1 and agents'.
func makePKI(t *testing.T, agents ...string) string {
	t.Helper()
	dir := t.TempDir()
	now := time.Now()
	if err := pki.NewCA(dir, "e2e CA", time.Hour, now); err != nil {
		t.Fatal(err)
	}
	ca, err := pki.LoadCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := ca.Server(dir, []string{"127.0.0.1"}, time.Hour, now); err != nil {
		t.Fatal(err)
	}
	for _, a := range agents {
		if err := ca.Agent(dir, a, time.Hour, now); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// certFlags are the flags that make an agent present certificate's files.
func certFlags(pkiDir, certificate string) []string {
	crt, key := pki.AgentFiles(certificate)
	return []string{"--tls-cert", filepath.Join(pkiDir, crt), "--tls-key", filepath.Join(pkiDir, key)}
}

// TestSecurityOn is the security issue's end-to-end proof, with TLS, agent
// certificates, approval and API tokens all on:
//   - an agent waits for approval, then works;
//   - a hijack with a certificate for another name is refused and the
//     victim's run succeeds;
//   - a viewer cannot start a run (PermissionDenied and 403), an operator can;
//   - an agent refuses a command outside its allowlist: the run shows
//     rejected with the reason;
//   - a secret: value reaches its child but neither the store file nor the
//     logs;
//   - every mutating call of the test, and every refused one, is in the
//     audit trail.
func TestSecurityOn(t *testing.T) {
	t.Parallel()
	const secret = "e2e-S3cure-9d41be07"
	pkiDir := makePKI(t, "sql01", "evil")
	c := newCluster(t, withSecurity(pkiDir))
	admin := c.dial.Token
	secrets := filepath.Join(c.dir, "secrets")
	if err := os.Mkdir(secrets, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(secrets, "dbpass"), []byte(secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(c.marks, "PASSWORD.expected"), []byte(secret), 0o600); err != nil {
		t.Fatal(err)
	}
	cli := func(token string, args ...string) (string, string, int) {
		t.Helper()
		return c.cli(append([]string{"--token", token}, args...)...)
	}

	// The agent connects with its certificate and waits for approval.
	victim := c.agentWith("sql01", 2, append(certFlags(pkiDir, "sql01"), "--allow", taskScript(), "--secrets-dir", secrets), "role=ssis")
	waitFor(t, 30*time.Second, "sql01 to wait for approval", func() bool {
		agents, err := c.c.ListAgents(context.Background())
		return err == nil && len(agents) == 1 && agents[0].GetState() == batonv1.AgentState_AGENT_STATE_PENDING
	})
	if out, stderr, code := cli(admin, "agents", "approve", "sql01"); code != 0 || !strings.Contains(out, "agent sql01 approved: labels role=ssis, slots 2") {
		t.Fatalf("baton agents approve = %d %q %q", code, out, stderr)
	}
	c.waitAgents(1)

	// Tokens for a viewer and an operator.
	token := func(name, role string) string {
		out, stderr, code := cli(admin, "token", "create", name, "--role", role)
		if code != 0 {
			t.Fatalf("baton token create %s = %d %q", name, code, stderr)
		}
		return strings.TrimSpace(out)
	}
	viewer, operator := token("dashboard", "viewer"), token("scheduler", "operator")

	c.apply(`name: victim
tasks:
  - name: load
    runs_on: {labels: {role: ssis}}
    run: [TASK, ok]
`)
	c.apply(`name: guarded
tasks:
  - name: shell
    runs_on: {labels: {role: ssis}}
    run: [/bin/sh, -c, 'echo ran >> "$MARK_DIR/shell"']
  - name: use-secret
    runs_on: {labels: {role: ssis}}
    run: [TASK, secret, PASSWORD]
    env:
      PASSWORD: secret:dbpass
`)

	// A viewer may not start a run, over gRPC or REST.
	if _, stderr, code := cli(viewer, "run", "start", "victim"); code != 2 || !strings.Contains(stderr, "needs the operator role") {
		t.Errorf("baton run start as viewer = %d %q, want refused naming the operator role", code, stderr)
	}
	if got := c.restPostTLS(t, "/v1/runs", viewer, `{"job":"victim"}`); got != http.StatusForbidden {
		t.Errorf("POST /v1/runs as viewer = %d, want 403", got)
	}

	// A machine with a certificate for "evil" tries to take over sql01: it
	// is refused and gives up (the refusal is final).
	hijack := c.agentWith("hijack", 100000, append(certFlags(pkiDir, "evil"), "--name", "sql01", "--allow-any-command"), "role=ssis")
	select {
	case <-hijack.done:
	case <-time.After(time.Minute):
		t.Fatal("the hijacking agent did not give up")
	}
	if log := hijack.logText(); !strings.Contains(log, `the client certificate is for agent \"evil\"; this connection says it is \"sql01\"`) &&
		!strings.Contains(log, `the client certificate is for agent "evil"; this connection says it is "sql01"`) {
		t.Errorf("hijacking agent's log does not say why it was refused:\n%s", log)
	}

	// The operator starts the victim's run; it succeeds on the real sql01.
	out, stderr, code := cli(operator, "run", "start", "victim", "--wait")
	if code != 0 {
		t.Fatalf("baton run start victim as operator = %d\n%s\n%s", code, out, stderr)
	}
	vrun := c.latestRun("victim")
	if got := task(c.getRun(vrun.GetId()), "load"); got.GetState() != batonv1.TaskState_TASK_STATE_SUCCEEDED || got.GetAgent() != "sql01" {
		t.Errorf("victim's load = %v, want succeeded on sql01", got)
	}

	// The allowlist refuses /bin/sh; the secret reaches its child only.
	if _, _, code := cli(operator, "run", "start", "guarded", "--wait"); code != 1 {
		t.Fatalf("baton run start guarded = %d, want 1 (the run fails)", code)
	}
	grun := c.wait(c.latestRun("guarded").GetId())
	shell := task(grun, "shell")
	if shell.GetAttemptState() != batonv1.AttemptState_ATTEMPT_STATE_REJECTED || shell.GetAttempts() != 1 ||
		!strings.Contains(shell.GetError(), "program /bin/sh") || !strings.Contains(shell.GetError(), "is not allowed on agent sql01") {
		t.Errorf("shell = %v, want one rejected attempt with the agent's reason", shell)
	}
	if ran := c.ran("shell"); ran != nil {
		t.Errorf("the refused task ran: %q", ran)
	}
	get, _, _ := cli(viewer, "run", "get", strconv.FormatInt(grun.GetId(), 10))
	if !strings.Contains(get, "shell rejected: program /bin/sh") {
		t.Errorf("baton run get:\n%s\nwant shell rejected with the reason", get)
	}
	use := task(grun, "use-secret")
	if use.GetState() != batonv1.TaskState_TASK_STATE_SUCCEEDED || use.GetOutputs()["PASSWORD_matches"] != "yes" {
		t.Errorf("use-secret = %v, want succeeded with PASSWORD_matches=yes", use)
	}
	logs, _, _ := cli(viewer, "logs", strconv.FormatInt(grun.GetId(), 10), "use-secret")
	if !strings.Contains(logs, "PASSWORD is [secret:dbpass]") {
		t.Errorf("baton logs:\n%s\nwant the redacted line", logs)
	}
	leaks := map[string][]byte{"baton logs": []byte(logs), "baton run get": []byte(get),
		"batond's log": []byte(c.batond.logText()), "sql01's log": []byte(victim.logText())}
	for _, f := range []string{"baton.db", "baton.db-wal"} {
		if b, err := os.ReadFile(filepath.Join(c.dir, "batond", f)); err == nil {
			leaks["store file "+f] = b
		} else if f == "baton.db" {
			t.Fatal(err)
		}
	}
	for what, b := range leaks {
		if bytes.Contains(b, []byte(secret)) {
			t.Errorf("%s holds the secret's value", what)
		}
	}

	// The audit trail has every mutating call of the test and every
	// refused one, each with who did it.
	want := []struct{ who, method, code string }{
		{"token:admin", "/baton.v1.AgentAdminService/ApproveAgent", "OK"},
		{"token:admin", "/baton.v1.TokenService/CreateToken", "OK"},
		{"token:admin", "/baton.v1.JobService/ApplyJob", "OK"},
		{"token:dashboard", "/baton.v1.RunService/StartRun", "PermissionDenied"},
		{"cert:evil", "/baton.v1.AgentService/Connect", "PermissionDenied"},
		{"token:scheduler", "/baton.v1.RunService/StartRun", "OK"},
	}
	audit := batonv1.NewAuditServiceClient(c.c.Conn())
	waitFor(t, 30*time.Second, "every call in the audit trail", func() bool {
		resp, err := audit.ListAudit(context.Background(), &batonv1.ListAuditRequest{PageSize: 1000})
		if err != nil {
			return false
		}
		count := map[[3]string]int{}
		for _, r := range resp.GetRecords() {
			count[[3]string{r.GetWho(), r.GetMethod(), r.GetCode()}]++
		}
		for _, w := range want {
			if count[[3]string{w.who, w.method, w.code}] == 0 {
				return false
			}
		}
		// Two tokens, two jobs, two refused starts (gRPC and REST), two
		// operator starts.
		return count[[3]string{"token:admin", "/baton.v1.TokenService/CreateToken", "OK"}] == 2 &&
			count[[3]string{"token:admin", "/baton.v1.JobService/ApplyJob", "OK"}] == 2 &&
			count[[3]string{"token:dashboard", "/baton.v1.RunService/StartRun", "PermissionDenied"}] == 2 &&
			count[[3]string{"token:scheduler", "/baton.v1.RunService/StartRun", "OK"}] == 2
	})
}

// restPostTLS posts a JSON body to the gateway over TLS with a bearer
// token and returns the status code.
func (c *cluster) restPostTLS(t *testing.T, path, token, body string) int {
	t.Helper()
	pem, err := os.ReadFile(c.dial.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}
	defer tr.CloseIdleConnections()
	req, err := http.NewRequestWithContext(context.Background(), http.MethodPost, "https://"+c.http+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := (&http.Client{Transport: tr, Timeout: 30 * time.Second}).Do(req)
	if err != nil {
		t.Fatalf("POST %s: %v", path, err)
	}
	_ = resp.Body.Close()
	return resp.StatusCode
}
