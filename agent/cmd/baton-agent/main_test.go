package main

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/durationpb"

	batonv1 "github.com/batonhq/baton/gen/baton/v1"
)

const waitTimeout = 20 * time.Second

// With BATON_TEST_CHILD set the test binary is a child the agent runs;
// with BATON_TEST_MAIN set, or the argument "runner", it is baton-agent
// (or its runner) as main runs it.
func TestMain(m *testing.M) {
	switch os.Getenv("BATON_TEST_CHILD") {
	case "sleep":
		time.Sleep(time.Hour)
		os.Exit(0)
	case "wait-file":
		// Print to stderr, wait for the release file, write an output and
		// exit 5.
		fmt.Fprintln(os.Stderr, "waiting")
		for {
			if _, err := os.Stat(os.Getenv("BATON_TEST_RELEASE")); err == nil {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		fmt.Fprintln(os.Stderr, "released")
		if err := os.WriteFile(os.Getenv("BATON_OUTPUT"), []byte("Answer=42\n"), 0o600); err != nil {
			os.Exit(1)
		}
		os.Exit(5)
	}
	if os.Getenv("BATON_TEST_MAIN") == "1" || (len(os.Args) > 1 && os.Args[1] == runnerArg) {
		os.Exit(mainCode(os.Args[1:]))
	}
	goleak.VerifyTestMain(m)
}

// syncBuffer is a bytes.Buffer safe for the agent's logger and the test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func envFunc(env map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) {
		v, ok := env[k]
		return v, ok
	}
}

func TestUsageErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		args    []string
		env     map[string]string
		wantErr string
	}{
		{name: "label without =", args: []string{"--label", "role"}, wantErr: `--label "role": want key=value`},
		{name: "label with empty key", args: []string{"--label", "=x"}, wantErr: `--label "=x": want key=value`},
		{name: "labels variable", env: map[string]string{"BATON_AGENT_LABELS": "role=ssis,dc"}, wantErr: `BATON_AGENT_LABELS: "dc": want key=value`},
		{name: "zero slots", args: []string{"--slots", "0"}, wantErr: "--slots 0: must be at least 1"},
		{name: "negative slots", args: []string{"--slots=-2"}, wantErr: "--slots -2: must be at least 1"},
		{name: "zero slots from the variable", env: map[string]string{"BATON_AGENT_SLOTS": "0"}, wantErr: "--slots 0: must be at least 1"},
		{name: "slots not a number", env: map[string]string{"BATON_AGENT_SLOTS": "many"}, wantErr: `BATON_AGENT_SLOTS="many"`},
		{name: "negative kill grace", args: []string{"--kill-grace", "-1s"}, wantErr: "--kill-grace -1s: must not be negative"},
		{name: "log level", args: []string{"--log-level", "loud"}, wantErr: `--log-level "loud"`},
		{name: "log format", args: []string{"--log-format", "xml"}, wantErr: `--log-format "xml"`},
		{name: "unknown flag", args: []string{"--bogus"}, wantErr: "unknown flag: --bogus"},
		{name: "positional argument", args: []string{"start"}, wantErr: `unexpected argument "start"`},
		{name: "no allowlist", wantErr: "no allowlist: name the programs tasks may run with --allow (repeatable) or --allow-file, or say --allow-any-command"},
		{name: "empty allow file", args: []string{"--allow-file", os.DevNull}, wantErr: "no allowlist"},
		{name: "missing allow file", args: []string{"--allow-file", "/no/such/allow.txt"}, wantErr: "--allow-file: open /no/such/allow.txt"},
		{name: "relative pattern", args: []string{"--allow", "bin/*"}, wantErr: `--allow "bin/*": not an absolute path`},
		{name: "relative pattern from the variable", env: map[string]string{"BATON_AGENT_ALLOW": "/opt/x,bin/*"}, wantErr: `--allow "bin/*": not an absolute path`},
		{name: "bad allow-dir", args: []string{"--allow", "/opt/x", "--allow-dir", "data"}, wantErr: `--allow-dir "data": not an absolute path`},
		{name: "any and a list", args: []string{"--allow", "/opt/x", "--allow-any-command"}, wantErr: "--allow-any-command allows everything"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var stdout, stderr syncBuffer
			env := map[string]string{"HOME": t.TempDir()}
			for k, v := range tc.env {
				env[k] = v
			}
			code := run(tc.args, envFunc(env), &stdout, &stderr, nil)
			if code != 2 || !strings.Contains(stderr.String(), tc.wantErr) {
				t.Errorf("run(%q) = %d, stderr %q; want 2 and an error containing %q", tc.args, code, stderr.String(), tc.wantErr)
			}
		})
	}
}

func TestAllowFile(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "allow.txt")
	content := "\uFEFF# SSIS host\n/opt/etl/bin/*\n\n   # sqlcmd\n  /usr/bin/sqlcmd  \r\n"
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := readAllowFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"/opt/etl/bin/*", "/usr/bin/sqlcmd"}; !cmp.Equal(got, want) {
		t.Errorf("readAllowFile = %q, want %q", got, want)
	}
	o := &options{allow: []string{"/srv/x"}, allowFile: path}
	p, err := o.policy()
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"/srv/x", "/opt/etl/bin/*", "/usr/bin/sqlcmd"}; !cmp.Equal(p.Programs(), want) {
		t.Errorf("policy patterns = %q, want %q (flags, then the file)", p.Programs(), want)
	}
	any, err := (&options{allowAny: true}).policy()
	if err != nil || !any.AllowsAny() {
		t.Errorf("--allow-any-command: policy = %v, %v; want one allowing everything", any, err)
	}
}

func TestHelpNamesEveryVariable(t *testing.T) {
	t.Parallel()
	var stdout, stderr syncBuffer
	if code := run([]string{"--help"}, envFunc(nil), &stdout, &stderr, nil); code != 0 {
		t.Fatalf("--help exited %d: %s", code, stderr.String())
	}
	for flag, env := range envs {
		if !strings.Contains(stdout.String(), "--"+flag) || !strings.Contains(stdout.String(), "["+env+"]") {
			t.Errorf("--help does not explain --%s with [%s]", flag, env)
		}
	}
}

func TestVersion(t *testing.T) {
	t.Parallel()
	var stdout, stderr syncBuffer
	if code := run([]string{"--version"}, envFunc(nil), &stdout, &stderr, nil); code != 0 {
		t.Fatalf("--version exited %d: %s", code, stderr.String())
	}
	if got := stdout.String(); !strings.Contains(got, version) {
		t.Errorf("--version printed %q, want the version %q", got, version)
	}
}

func TestDefaultStateDir(t *testing.T) {
	t.Parallel()
	if os.PathSeparator != '/' {
		t.Skip("Unix paths")
	}
	tests := []struct {
		name string
		env  map[string]string
		want string
	}{
		{name: "XDG_STATE_HOME", env: map[string]string{"XDG_STATE_HOME": "/x", "HOME": "/h"}, want: "/x/baton-agent/etl-01"},
		{name: "HOME", env: map[string]string{"HOME": "/h"}, want: "/h/.local/state/baton-agent/etl-01"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, err := defaultStateDir("etl-01", envFunc(tc.env))
			if err != nil || got != tc.want {
				t.Errorf("defaultStateDir = %q, %v; want %q", got, err, tc.want)
			}
		})
	}
	if _, err := defaultStateDir("etl-01", envFunc(nil)); err == nil {
		t.Error("defaultStateDir without XDG_STATE_HOME and HOME = nil error, want one")
	}
}

// controlPlane is a minimal AgentService: it records each Hello, welcomes
// the agent and sends what the test queues.
type controlPlane struct {
	batonv1.UnimplementedAgentServiceServer
	hellos chan *batonv1.Hello
	recv   chan *batonv1.ConnectRequest
	send   chan *batonv1.ConnectResponse
}

func (c *controlPlane) Connect(stream batonv1.AgentService_ConnectServer) error {
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	c.hellos <- first.GetHello()
	welcome := &batonv1.Welcome{HeartbeatInterval: durationpb.New(time.Hour)}
	if err := stream.Send(&batonv1.ConnectResponse{Msg: &batonv1.ConnectResponse_Welcome{Welcome: welcome}}); err != nil {
		return err
	}
	go func() {
		for {
			m, err := stream.Recv()
			if err != nil {
				return
			}
			select {
			case c.recv <- m:
			case <-stream.Context().Done():
				return
			}
		}
	}()
	for {
		select {
		case m := <-c.send:
			if err := stream.Send(m); err != nil {
				return err
			}
		case <-stream.Context().Done():
			return nil
		}
	}
}

func startControlPlane(t *testing.T) (*controlPlane, string) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cp := &controlPlane{
		hellos: make(chan *batonv1.Hello, 4),
		recv:   make(chan *batonv1.ConnectRequest, 64),
		send:   make(chan *batonv1.ConnectResponse, 4),
	}
	srv := grpc.NewServer()
	batonv1.RegisterAgentServiceServer(srv, cp)
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = srv.Serve(lis)
	}()
	t.Cleanup(func() {
		srv.Stop()
		<-served
	})
	return cp, lis.Addr().String()
}

func TestRunDrainsOnFirstSignalAndKillsOnSecond(t *testing.T) {
	t.Parallel()
	cp, addr := startControlPlane(t)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	state := t.TempDir()
	env := map[string]string{
		"BATON_SERVER":          addr,
		"BATON_AGENT_NAME":      "from-env",
		"BATON_AGENT_LABELS":    "role=ssis, dc=east",
		"BATON_AGENT_SLOTS":     "3",
		"BATON_AGENT_STATE_DIR": state,
		"BATON_LOG_FORMAT":      "json",
		// A list, as PATH is; the child is the test binary.
		"BATON_AGENT_ALLOW": "/opt/etl/bin/*," + exe + string(os.PathListSeparator) + "/usr/bin/sqlcmd",
	}
	args := []string{"--name", "from-flag", "--log-level", "debug"}
	sig := make(chan os.Signal, 2)
	var stdout, stderr syncBuffer
	done := make(chan int, 1)
	go func() { done <- run(args, envFunc(env), &stdout, &stderr, sig) }()

	var hello *batonv1.Hello
	select {
	case hello = <-cp.hellos:
	case <-time.After(waitTimeout):
		t.Fatalf("agent did not connect; stderr:\n%s", stderr.String())
	}
	want := &batonv1.Hello{Name: "from-flag", Labels: map[string]string{"role": "ssis", "dc": "east"}, Slots: 3, Version: version}
	got := &batonv1.Hello{Name: hello.GetName(), Labels: hello.GetLabels(), Slots: hello.GetSlots(), Version: hello.GetVersion()}
	if diff := cmp.Diff(want, got, protocmp.Transform()); diff != "" {
		t.Errorf("Hello mismatch (flags win over variables) (-want +got):\n%s", diff)
	}
	if _, err := os.Stat(filepath.Join(state, "journal")); err != nil {
		t.Errorf("state dir from BATON_AGENT_STATE_DIR not used: %v", err)
	}

	cp.send <- &batonv1.ConnectResponse{Msg: &batonv1.ConnectResponse_StartTask{StartTask: &batonv1.StartTask{
		AttemptId: 1, Argv: []string{exe}, Env: map[string]string{"BATON_TEST_CHILD": "sleep"},
	}}}
	var pid int32
	for pid == 0 {
		select {
		case m := <-cp.recv:
			pid = m.GetTaskStarted().GetPid()
		case <-time.After(waitTimeout):
			t.Fatal("no TaskStarted")
		}
	}

	sig <- syscall.SIGTERM
	for !strings.Contains(stderr.String(), "waiting for running children to finish") {
		select {
		case code := <-done:
			t.Fatalf("run returned %d after the first signal while a child was running", code)
		case <-time.After(10 * time.Millisecond): // polling the log, not synchronising
		}
	}
	sig <- syscall.SIGTERM
	select {
	case code := <-done:
		if code != 0 {
			t.Errorf("run = %d after the second signal, want 0; stderr:\n%s", code, stderr.String())
		}
	case <-time.After(waitTimeout):
		t.Fatal("run did not return after the second signal")
	}
	if !strings.Contains(stderr.String(), `"msg":"second signal received: killing running children"`) {
		t.Errorf("no JSON log of the second signal in:\n%s", stderr.String())
	}
}
