package e2e

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	batonv1 "github.com/batonhq/baton/gen/baton/v1"
)

// TestAllowlistAndSecrets runs a real batond and an agent whose allowlist
// names the e2e task script and /opt/etl/bin/*, with a secrets directory.
// A task running /bin/sh is refused on the agent: it never runs, it is not
// retried although it has retries, and the run shows it rejected with
// the agent's reason. A task with env PASSWORD: secret:dbpass sees the
// secret's value, which appears nowhere batond keeps or shows: not in the
// SQLite store (the database and its WAL), not in `baton logs`, not in
// batond's log, not in the outputs.
func TestAllowlistAndSecrets(t *testing.T) {
	t.Parallel()
	const secret = "e2e-Pa55w0rd-3c1f9a"
	c := newCluster(t)
	secrets := filepath.Join(c.dir, "secrets")
	if err := os.Mkdir(secrets, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(secrets, "dbpass"), []byte(secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// The task checks the value it sees against this file.
	if err := os.WriteFile(filepath.Join(c.marks, "PASSWORD.expected"), []byte(secret), 0o600); err != nil {
		t.Fatal(err)
	}
	agent := c.agentWith("guard", 2, []string{"--allow", taskScript(), "--allow", "/opt/etl/bin/*", "--secrets-dir", secrets})
	c.waitAgents(1)

	c.apply(`name: guarded
tasks:
  - name: shell
    run: [/bin/sh, -c, 'echo ran >> "$MARK_DIR/shell"']
    retries: 2
  - name: after-shell
    needs: [{task: shell, status: failure}]
    run: [TASK, ok]
  - name: use-secret
    run: [TASK, secret, PASSWORD]
    env:
      PASSWORD: secret:dbpass
`)
	out, stderr, code := c.cli("run", "start", "guarded", "--wait")
	if code != 1 {
		t.Fatalf("baton run start --wait = %d, want 1 (the run fails)\n%s\n%s", code, out, stderr)
	}
	run := c.latestRun("guarded")
	run = c.wait(run.GetId())
	if run.GetState() != batonv1.RunState_RUN_STATE_FAILED {
		t.Errorf("run state = %v, want failed", run.GetState())
	}

	// The refused task never ran and was not retried.
	shell := task(run, "shell")
	if shell.GetState() != batonv1.TaskState_TASK_STATE_FAILED || shell.GetAttemptState() != batonv1.AttemptState_ATTEMPT_STATE_REJECTED ||
		shell.GetAttempts() != 1 || !strings.Contains(shell.GetError(), "program /bin/sh") ||
		!strings.Contains(shell.GetError(), "is not allowed on agent guard: it matches none of --allow "+taskScript()+", --allow /opt/etl/bin/*") {
		t.Errorf("shell = %v; want failed after one rejected attempt, with the agent's reason", shell)
	}
	if ran := c.ran("shell"); ran != nil {
		t.Errorf("the refused task ran: %q", ran)
	}
	if _, err := os.Stat(filepath.Join(c.marks, "shell")); !os.IsNotExist(err) {
		t.Errorf("the refused task's marker exists: %v", err)
	}
	if got := task(run, "after-shell").GetState(); got != batonv1.TaskState_TASK_STATE_SUCCEEDED {
		t.Errorf("after-shell (needs shell's failure) = %v, want succeeded", got)
	}
	id := strconv.FormatInt(run.GetId(), 10)
	get, _, _ := c.cli("run", "get", id)
	rowRejected := false
	for _, line := range strings.Split(get, "\n") {
		if f := strings.Fields(line); len(f) >= 3 && f[0] == "shell" && f[1] == "rejected" && f[2] == "guard" {
			rowRejected = true
		}
	}
	if !rowRejected || !strings.Contains(get, "\nshell rejected: program /bin/sh") {
		t.Errorf("baton run get:\n%s\nwant shell's row rejected on guard, and the reason", get)
	}
	hist, _, _ := c.cli("run", "history", id)
	if !strings.Contains(hist, "rejected") {
		t.Errorf("baton run history:\n%s\nwant the rejected attempt", hist)
	}

	// The secret reached the child and nothing else.
	use := task(run, "use-secret")
	if use.GetState() != batonv1.TaskState_TASK_STATE_SUCCEEDED || use.GetOutputs()["PASSWORD_matches"] != "yes" {
		t.Fatalf("use-secret = %v; want succeeded with PASSWORD_matches=yes (the child saw the secret)", use)
	}
	if got := use.GetOutputs()["PASSWORD"]; got != "[secret:dbpass]" {
		t.Errorf("output PASSWORD = %q, want [secret:dbpass]", got)
	}
	logs, _, code := c.cli("logs", id, "use-secret")
	if code != 0 || !strings.Contains(logs, "PASSWORD is [secret:dbpass]") {
		t.Errorf("baton logs = %d:\n%s\nwant the redacted line", code, logs)
	}
	leaks := map[string][]byte{
		"baton logs":      []byte(logs),
		"baton run get":   []byte(get),
		"stdout tail":     []byte(use.GetStdoutTail()),
		"stderr tail":     []byte(use.GetStderrTail()),
		"batond's log":    []byte(c.batond.logText()),
		"the agent's log": []byte(agent.logText()),
	}
	for _, f := range []string{"baton.db", "baton.db-wal"} {
		b, err := os.ReadFile(filepath.Join(c.dir, "batond", f))
		if os.IsNotExist(err) && f != "baton.db" {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		leaks["store file "+f] = b
	}
	for what, b := range leaks {
		if bytes.Contains(b, []byte(secret)) {
			t.Errorf("%s holds the secret's value", what)
		}
	}
}
