package server_test

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"

	batonv1 "github.com/batonhq/baton/gen/baton/v1"
	"github.com/batonhq/baton/server"
)

// restRequest sends one raw request to the gateway with the given headers
// and returns the status and the decoded error message, if any.
func restRequest(t *testing.T, b *testBundle, method, path string, body io.Reader, header map[string]string) (int, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(testContext(t), method, b.srv.url(path), body)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		if k == "Host" {
			req.Host = v
			continue
		}
		req.Header.Set(k, v)
	}
	resp, err := b.srv.http.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer func() { _ = resp.Body.Close() }()
	var e struct{ Message string }
	out, _ := io.ReadAll(resp.Body)
	_ = json.Unmarshal(out, &e)
	return resp.StatusCode, e.Message
}

// TestRESTGuard: what a web page can make a browser send to the gateway
// on loopback is refused, and stores nothing; the gateway's own clients
// are unaffected.
func TestRESTGuard(t *testing.T) {
	t.Parallel()
	b := setup(t)
	apply, err := json.Marshal(map[string]string{"source": etlJob})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		header map[string]string
		code   int
		says   string
	}{
		{"a form post", map[string]string{"Content-Type": "application/x-www-form-urlencoded"}, 415, "Content-Type: application/json"},
		{"text/plain", map[string]string{"Content-Type": "text/plain"}, 415, "must be JSON"},
		{"no content type", nil, 415, "must be JSON"},
		{"another site's page", map[string]string{"Content-Type": "application/json", "Origin": "https://evil.example"}, 403, "evil.example"},
		{"DNS rebinding", map[string]string{"Content-Type": "application/json", "Host": "evil.example:7701", "Origin": "http://evil.example:7701"}, 403, "listens on loopback"},
	} {
		code, msg := restRequest(t, b, "POST", "/v1/jobs", bytes.NewReader(apply), tc.header)
		if code != tc.code || !strings.Contains(msg, tc.says) {
			t.Errorf("%s: POST /v1/jobs = %d %q, want %d saying %q", tc.name, code, msg, tc.code, tc.says)
		}
	}
	// YAML sent as if it were JSON.
	if code, msg := restRequest(t, b, "POST", "/v1/jobs", strings.NewReader(etlJob), map[string]string{"Content-Type": "application/json"}); code != 400 || !strings.Contains(msg, `{"source": "<the YAML>"}`) {
		t.Errorf("YAML posted as JSON = %d %q, want 400 saying how to wrap it", code, msg)
	}
	// Reads by a rebinding page are refused too.
	if code, _ := restRequest(t, b, "GET", "/metrics", nil, map[string]string{"Host": "evil.example"}); code != 403 {
		t.Errorf("GET /metrics with a foreign Host = %d, want 403", code)
	}
	if _, err := b.jobs.GetJob(testContext(t), &batonv1.GetJobRequest{Name: "etl"}); err == nil {
		t.Fatal("a refused REST request stored the job")
	}

	// Too large: refused whether or not the length is announced, without
	// reading it whole.
	big := bytes.Repeat([]byte("x"), server.MaxRESTBody+1)
	code, msg := restRequest(t, b, "POST", "/v1/jobs", bytes.NewReader(big), map[string]string{"Content-Type": "application/json"})
	if code != 413 || !strings.Contains(msg, "larger than 4 MiB") {
		t.Errorf("a body over the cap = %d %q, want 413 naming the cap", code, msg)
	}
	chunked := io.MultiReader(bytes.NewReader(big)) // no length: sent chunked
	code, msg = restRequest(t, b, "POST", "/v1/jobs", chunked, map[string]string{"Content-Type": "application/json"})
	if code != 413 || !strings.Contains(msg, "larger than 4 MiB") {
		t.Errorf("a chunked body over the cap = %d %q, want 413 naming the cap", code, msg)
	}

	// The gateway's own clients: JSON, same origin, loopback names.
	for _, h := range []map[string]string{
		{"Content-Type": "application/json"},
		{"Content-Type": "application/json; charset=utf-8", "Origin": "http://" + b.srv.addrs.HTTP},
		{"Content-Type": "application/json", "Host": "localhost"},
	} {
		if code, msg := restRequest(t, b, "POST", "/v1/jobs:validate", bytes.NewReader(apply), h); code != 200 {
			t.Errorf("POST /v1/jobs:validate with %v = %d %q, want 200", h, code, msg)
		}
	}
	if code, msg := restRequest(t, b, "POST", "/v1/jobs", bytes.NewReader(apply), map[string]string{"Content-Type": "application/json"}); code != 200 {
		t.Fatalf("POST /v1/jobs = %d %q, want 200", code, msg)
	}
}
