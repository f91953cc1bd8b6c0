package cli_test

import (
	"net"
	"strings"
	"testing"

	"github.com/spf13/cobra"

	"github.com/batonhq/baton/client/cmd/baton/cli"
	batonv1 "github.com/batonhq/baton/gen/baton/v1"
)

// closedAddr returns a loopback address nothing listens on.
func closedAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	return addr
}

func TestConnectionRefused(t *testing.T) {
	t.Parallel()
	b := &testBundle{env: map[string]string{}}
	addr := closedAddr(t)

	for _, args := range [][]string{
		{"--addr", addr, "agents"},
		{"--addr", addr, "run", "watch", "1"},
		{"--addr", addr, "run", "start", "nightly-dw-load", "--wait"},
		{"--addr", addr, "job", "list", "-o", "json"},
	} {
		r := b.runRaw(t, args...)
		if r.code != cli.ExitError {
			t.Errorf("%v: exit code = %d, want 2", args, r.code)
		}
		if !strings.HasPrefix(r.stderr, "baton: cannot reach the control plane at "+addr+": ") ||
			!strings.Contains(r.stderr, "--addr or BATON_ADDR") {
			t.Errorf("%v: stderr = %q, want the address and a hint at --addr/BATON_ADDR", args, r.stderr)
		}
		if r.stdout != "" {
			t.Errorf("%v: stdout = %q, want nothing", args, r.stdout)
		}
	}
}

func TestEnvTwins(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.srv.AddAgent(&batonv1.Agent{Name: "etl-01", State: batonv1.AgentState_AGENT_STATE_CONNECTED})

	// BATON_ADDR is used when --addr is not given.
	b.env["BATON_ADDR"] = b.srv.Addr()
	if r := b.runRaw(t, "agents"); r.code != cli.ExitOK || !strings.Contains(r.stdout, "etl-01") {
		t.Errorf("agents with BATON_ADDR = %d %q %q, want the agent table", r.code, r.stdout, r.stderr)
	}
	// The flag wins over the variable.
	addr := closedAddr(t)
	if r := b.runRaw(t, "--addr", addr, "agents"); r.code != cli.ExitError || !strings.Contains(r.stderr, addr) {
		t.Errorf("agents --addr %s = %d %q, want exit 2 naming the flag's address", addr, r.code, r.stderr)
	}
	b.env["BATON_OUTPUT_FORMAT"] = "json"
	var resp batonv1.ListAgentsResponse
	decode(t, b.runRaw(t, "agents"), &resp)
	if r := b.runRaw(t, "agents", "-o", "table"); !strings.HasPrefix(r.stdout, "NAME") {
		t.Errorf("agents -o table with BATON_OUTPUT_FORMAT=json = %q, want a table", r.stdout)
	}

	bad := []struct {
		name, value, want string
	}{
		{"BATON_TLS", "maybe", "baton: invalid BATON_TLS \"maybe\""},
		{"BATON_TIMEOUT", "soon", "baton: invalid BATON_TIMEOUT \"soon\""},
		{"BATON_OUTPUT_FORMAT", "yaml", "baton: invalid --output \"yaml\": want table or json"},
		{"BATON_CA_FILE", "/does/not/exist.pem", "baton: read CA file: open /does/not/exist.pem"},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := &testBundle{env: map[string]string{"BATON_ADDR": b.srv.Addr(), tc.name: tc.value}}
			r := b.runRaw(t, "agents")
			if r.code != cli.ExitError || !strings.HasPrefix(r.stderr, tc.want) {
				t.Errorf("agents with %s=%s = %d %q, want exit 2 and %q", tc.name, tc.value, r.code, r.stderr, tc.want)
			}
		})
	}
}

func TestTLSAgainstPlaintext(t *testing.T) {
	t.Parallel()
	b := setup(t)
	// A TLS handshake with a plaintext server fails; baton says where.
	r := b.run(t, "--tls", "agents")
	if r.code != cli.ExitError || !strings.Contains(r.stderr, b.srv.Addr()) {
		t.Errorf("agents --tls = %d %q, want exit 2 naming the address", r.code, r.stderr)
	}
}

func TestUsageErrors(t *testing.T) {
	t.Parallel()
	b := setup(t)

	tests := []struct {
		name string
		args []string
		want string
	}{
		{"unknown command", []string{"jobs"}, "baton: unknown command \"jobs\" for \"baton\""},
		{"unknown subcommand", []string{"run", "stop", "1"}, "baton: unknown command \"stop\" for \"baton run\"\nRun 'baton run --help' for usage.\n"},
		{"unknown flag", []string{"agents", "--all"}, "baton: unknown flag: --all\nRun 'baton agents --help' for usage.\n"},
		{"missing argument", []string{"run", "get"}, "baton: baton run get needs RUN\nRun 'baton run get --help' for usage.\n"},
		{"extra argument", []string{"run", "watch", "1", "2"}, "baton: baton run watch takes 1 argument(s), got 2: 1 2\nRun 'baton run watch --help' for usage.\n"},
		{"bad run id", []string{"run", "get", "abc"}, "baton: invalid run id \"abc\": want a positive integer\nRun 'baton run get --help' for usage.\n"},
		{"zero run id", []string{"run", "cancel", "0"}, "baton: invalid run id \"0\": want a positive integer\nRun 'baton run cancel --help' for usage.\n"},
		{"missing file flag", []string{"job", "apply"}, "baton: required flag(s) \"file\" not set\nRun 'baton job apply --help' for usage.\n"},
		{"bad output", []string{"-o", "yaml", "agents"}, "baton: invalid --output \"yaml\": want table or json\nRun 'baton agents --help' for usage.\n"},
		{"negative timeout", []string{"--timeout", "-1s", "agents"}, "baton: invalid --timeout -1s: must not be negative\nRun 'baton agents --help' for usage.\n"},
		{"bad version", []string{"job", "get", "x", "--version", "-2"}, "baton: invalid --version -2: must be positive (or 0 for the current one)\nRun 'baton job get --help' for usage.\n"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := b.run(t, tc.args...)
			if r.code != cli.ExitError || !strings.HasPrefix(r.stderr, tc.want) || r.stdout != "" {
				t.Errorf("baton %v = %d, stdout %q, stderr %q; want exit 2 and stderr starting %q",
					tc.args, r.code, r.stdout, r.stderr, tc.want)
			}
		})
	}
}

func TestHelp(t *testing.T) {
	t.Parallel()
	b := setup(t)

	r := b.run(t, "--version")
	r.want(t, cli.ExitOK, "baton version 1.2.3-test\n", "")

	// Every command of ours documents itself with examples.
	var walk func(path []string, c *cobra.Command)
	commands := 0
	walk = func(path []string, c *cobra.Command) {
		for _, sub := range c.Commands() {
			if sub.Name() == "help" || sub.Name() == "completion" {
				continue
			}
			p := append(append([]string(nil), path...), sub.Name())
			commands++
			r := b.run(t, append(p, "--help")...)
			if r.code != cli.ExitOK || !strings.Contains(r.stdout, "Examples:\n  baton "+strings.Join(p, " ")) {
				t.Errorf("baton %s --help = %d, want examples of it:\n%s", strings.Join(p, " "), r.code, r.stdout)
			}
			walk(p, sub)
		}
	}
	walk(nil, cli.RootCommandForDocs())
	if commands != 27 {
		t.Errorf("walked %d commands, want 27", commands)
	}
}

func TestGroupsShowHelp(t *testing.T) {
	t.Parallel()
	b := setup(t)
	for _, group := range []string{"job", "run"} {
		r := b.run(t, group)
		if r.code != cli.ExitOK || !strings.Contains(r.stdout, "Available Commands:") {
			t.Errorf("baton %s = %d, want its help:\n%s", group, r.code, r.stdout)
		}
	}
}

func TestTimeout(t *testing.T) {
	t.Parallel()
	b := setup(t)
	// A deadline that has passed before the call is made fails it at once.
	r := b.run(t, "--timeout", "1ns", "agents")
	want := "baton: list agents: context deadline exceeded\nhint: no answer from " + b.srv.Addr() + " within --timeout 1ns"
	if r.code != cli.ExitError || !strings.HasPrefix(r.stderr, want) {
		t.Errorf("agents --timeout 1ns = %d %q, want exit 2 and %q", r.code, r.stderr, want)
	}
	b.env["BATON_TIMEOUT"] = "1ns"
	if r := b.run(t, "agents"); r.code != cli.ExitError || !strings.HasPrefix(r.stderr, want) {
		t.Errorf("agents with BATON_TIMEOUT=1ns = %d %q, want exit 2 and %q", r.code, r.stderr, want)
	}
	// 0 turns the limit off.
	if r := b.run(t, "agents", "--timeout", "0"); r.code != cli.ExitOK {
		t.Errorf("agents --timeout 0 = %d %q, want success", r.code, r.stderr)
	}
}
