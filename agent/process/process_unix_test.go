//go:build unix

package process_test

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/batonhq/baton/agent/process"
)

// pidFrom parses "grandchild=<pid>".
func pidFrom(t *testing.T, line string) int {
	t.Helper()
	_, v, _ := strings.Cut(line, "=")
	pid, err := strconv.Atoi(v)
	if err != nil {
		t.Fatalf("bad pid line %q", line)
	}
	t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGKILL) })
	return pid
}

// alive reports whether pid names a process that has not exited. A zombie
// (exited, not yet reaped by its new parent) counts as gone.
func alive(pid int) bool {
	if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
		return false
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		// No /proc (not Linux): kill(pid, 0) succeeded, so it exists.
		return !os.IsNotExist(err) || !procMounted()
	}
	// The state follows the parenthesised command name.
	if i := strings.LastIndexByte(string(stat), ')'); i >= 0 && i+2 < len(stat) {
		return stat[i+2] != 'Z'
	}
	return true
}

func procMounted() bool {
	_, err := os.Stat("/proc/self/stat")
	return err == nil
}

// waitGone waits until pid has exited.
func waitGone(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for alive(pid) {
		if time.Now().After(deadline) {
			t.Fatalf("process %d still alive after %s", pid, waitTimeout)
		}
		time.Sleep(10 * time.Millisecond) // polling a condition, not synchronising
	}
}

func TestKillKillsTree(t *testing.T) {
	t.Parallel()
	p, out := start(t, "spawn")
	gc := pidFrom(t, out.wait(t, "grandchild="))
	out.wait(t, "ready") // the grandchild runs
	if err := p.Kill(); err != nil {
		t.Fatalf("Kill: %v", err)
	}
	res := result(t, p)
	if res.ExitCode != -1 || res.Err == nil || res.Err.Error() != "signal: killed" {
		t.Errorf("Result = {%d, %v}, want {-1, signal: killed}", res.ExitCode, res.Err)
	}
	waitGone(t, gc)
}

func TestTerminate(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		behaviour string
		grace     time.Duration
		wantErr   string
	}{
		{name: "child stops on SIGTERM", behaviour: "sleep", grace: time.Hour, wantErr: "signal: terminated"},
		{name: "child ignoring SIGTERM is killed after grace", behaviour: "ignore-term", grace: 100 * time.Millisecond, wantErr: "signal: killed"},
		{name: "zero grace kills at once", behaviour: "ignore-term", grace: 0, wantErr: "signal: killed"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			p, out := start(t, tc.behaviour)
			out.wait(t, "ready")
			if err := p.Terminate(tc.grace); err != nil {
				t.Fatalf("Terminate: %v", err)
			}
			res := result(t, p)
			if res.ExitCode != -1 || res.Err == nil || res.Err.Error() != tc.wantErr {
				t.Errorf("Result = {%d, %v}, want {-1, %s}", res.ExitCode, res.Err, tc.wantErr)
			}
			// Signalling after the end is a no-op.
			if err := p.Kill(); err != nil {
				t.Errorf("Kill after exit: %v", err)
			}
			if err := p.Terminate(time.Second); err != nil {
				t.Errorf("Terminate after exit: %v", err)
			}
		})
	}
}

func TestLeftoverGroupKilledWhenChildExits(t *testing.T) {
	t.Parallel()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	out := newLines()
	start := time.Now()
	p, err := process.Start(process.Spec{
		Argv:      []string{exe},
		Env:       childEnv("BATON_TEST_CHILD=spawn", "BATON_TEST_THEN=exit"),
		Stdout:    out,
		WaitDelay: time.Hour, // Done must not depend on WaitDelay
	})
	if err != nil {
		t.Fatal(err)
	}
	gc := pidFrom(t, out.wait(t, "grandchild="))
	res := result(t, p)
	if res.ExitCode != 0 || res.Err != nil {
		t.Errorf("Result = {%d, %v}, want {0, <nil>}", res.ExitCode, res.Err)
	}
	waitGone(t, gc)
	t.Logf("child with a leftover grandchild done in %s", time.Since(start))
}

func TestWaitDelayBoundsEscapedDescendant(t *testing.T) {
	t.Parallel()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	out := newLines()
	p, err := process.Start(process.Spec{
		Argv:      []string{exe},
		Env:       childEnv("BATON_TEST_CHILD=spawn", "BATON_TEST_THEN=exit", "BATON_TEST_SETSID=1"),
		Stdout:    out,
		WaitDelay: 200 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	gc := pidFrom(t, out.wait(t, "grandchild="))
	res := result(t, p)
	if res.ExitCode != 0 || !errors.Is(res.Err, exec.ErrWaitDelay) {
		t.Errorf("Result = {%d, %v}, want {0, %v}", res.ExitCode, res.Err, exec.ErrWaitDelay)
	}
	if !alive(gc) {
		t.Errorf("grandchild %d in its own session was killed; only the group should be", gc)
	}
}
