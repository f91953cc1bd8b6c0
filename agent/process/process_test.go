package process_test

import (
	"bytes"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/batonhq/baton/agent/process"
)

// waitTimeout bounds every wait in these tests.
const waitTimeout = 20 * time.Second

// lines is an io.Writer that hands each complete line to a channel.
type lines struct {
	mu  sync.Mutex
	buf bytes.Buffer
	ch  chan string
}

func newLines() *lines { return &lines{ch: make(chan string, 256)} }

func (l *lines) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf.Write(p)
	for {
		line, err := l.buf.ReadString('\n')
		if err != nil {
			// Keep the partial line for the next write.
			l.buf.Reset()
			l.buf.WriteString(line)
			return len(p), nil
		}
		select {
		case l.ch <- strings.TrimRight(line, "\r\n"):
		default:
		}
	}
}

// wait returns the next line starting with prefix, skipping others.
func (l *lines) wait(t *testing.T, prefix string) string {
	t.Helper()
	deadline := time.After(waitTimeout)
	for {
		select {
		case line := <-l.ch:
			if strings.HasPrefix(line, prefix) {
				return line
			}
		case <-deadline:
			t.Fatalf("no line starting with %q within %s", prefix, waitTimeout)
		}
	}
}

// raceNoExitSleep stops a race-enabled child from sleeping a second at exit.
const raceNoExitSleep = "GORACE=atexit_sleep_ms=0"

// childEnv returns the environment for a child: this process's plus env.
func childEnv(env ...string) []string {
	return append(append(os.Environ(), raceNoExitSleep), env...)
}

// start starts the test binary as a child with the given behaviour.
func start(t *testing.T, behaviour string, env ...string) (*process.Process, *lines) {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	out := newLines()
	p, err := process.Start(process.Spec{
		Argv:   []string{exe},
		Env:    childEnv(append([]string{"BATON_TEST_CHILD=" + behaviour}, env...)...),
		Stdout: out,
		Stderr: out,
	})
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		_ = p.Kill()
		<-p.Done()
	})
	return p, out
}

// result waits for p to end.
func result(t *testing.T, p *process.Process) process.Result {
	t.Helper()
	select {
	case <-p.Done():
		return p.Result()
	case <-time.After(waitTimeout):
		t.Fatalf("process %d still running after %s", p.Pid(), waitTimeout)
		return process.Result{}
	}
}

func TestExitCode(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		code    string
		want    int
		wantErr string
	}{
		{name: "success", code: "0", want: 0},
		{name: "failure", code: "3", want: 3, wantErr: "exit status 3"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			p, _ := start(t, "exit", "BATON_TEST_EXIT="+tc.code)
			res := result(t, p)
			if res.ExitCode != tc.want {
				t.Errorf("ExitCode = %d, want %d", res.ExitCode, tc.want)
			}
			gotErr := ""
			if res.Err != nil {
				gotErr = res.Err.Error()
			}
			if gotErr != tc.wantErr {
				t.Errorf("Err = %q, want %q", gotErr, tc.wantErr)
			}
		})
	}
}

func TestStartFails(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		spec process.Spec
	}{
		{name: "empty argv", spec: process.Spec{}},
		{name: "not in PATH", spec: process.Spec{Argv: []string{"baton-no-such-command-xyz"}}},
		{name: "bad working dir", spec: process.Spec{Argv: []string{os.Args[0]}, Dir: "/no/such/dir/baton"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			p, err := process.Start(tc.spec)
			if err == nil {
				<-p.Done()
				t.Fatalf("Start(%+v) = nil error, want an error", tc.spec)
			}
		})
	}
}

func TestArgvEnvDir(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	out := newLines()
	p, err := process.Start(process.Spec{
		Argv: []string{exe, "one", "two words", ""},
		// The later duplicate wins.
		Env:    []string{"BATON_TEST_CHILD=exit", "BATON_TEST_CHILD=info", "BATON_TEST_X=x", raceNoExitSleep},
		Dir:    dir,
		Stdout: out,
	})
	if err != nil {
		t.Fatal(err)
	}
	args := out.wait(t, "args=")
	cwd := out.wait(t, "cwd=")
	x := out.wait(t, "x=")
	if res := result(t, p); res.ExitCode != 0 || res.Err != nil {
		t.Errorf("Result = {%d, %v}, want {0, <nil>}", res.ExitCode, res.Err)
	}
	if want := `args=["one","two words",""]`; args != want {
		t.Errorf("child saw %s, want %s", args, want)
	}
	if want := "cwd=" + dir; cwd != want {
		t.Errorf("child saw %s, want %s", cwd, want)
	}
	if want := "x=x"; x != want {
		t.Errorf("child saw %s, want %s", x, want)
	}
}

func TestOnExitRunsAfterDone(t *testing.T) {
	t.Parallel()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan process.Result, 1)
	var p *process.Process
	ready := make(chan struct{})
	p, err = process.Start(process.Spec{
		Argv: []string{exe},
		Env:  childEnv("BATON_TEST_CHILD=exit", "BATON_TEST_EXIT=5"),
		OnExit: func() {
			<-ready
			select {
			case <-p.Done():
				got <- p.Result()
			default:
				t.Error("OnExit ran before Done was closed")
				got <- process.Result{}
			}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	close(ready)
	select {
	case res := <-got:
		if res.ExitCode != 5 {
			t.Errorf("Result in OnExit: exit code %d, want 5", res.ExitCode)
		}
	case <-time.After(waitTimeout):
		t.Fatalf("OnExit not called within %s", waitTimeout)
	}
}
