//go:build unix

package agent

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	batonv1 "github.com/batonhq/baton/gen/baton/v1"
)

// grandchildPid waits for the "grandchild" child to print its
// grandchild's pid on stdout and returns it.
func grandchildPid(t *testing.T, s *fakeSession, id int64) int {
	t.Helper()
	var out strings.Builder
	var pid int
	s.until(t, "grandchild pid on stdout", func(m *batonv1.ConnectRequest) bool {
		c := m.GetLogChunk()
		if c.GetAttemptId() != id || c.GetStream() != streamStdout {
			return false
		}
		out.Write(c.GetData())
		line, _, ok := strings.Cut(out.String(), "\n")
		if !ok {
			return false
		}
		v, found := strings.CutPrefix(line, "grandchild=")
		if !found {
			t.Fatalf("unexpected stdout %q", line)
		}
		n, err := strconv.Atoi(v)
		if err != nil {
			t.Fatalf("bad pid in %q", line)
		}
		pid = n
		return true
	})
	t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGKILL) })
	return pid
}

// alive reports whether pid has not exited. A zombie (exited, not yet
// reaped by its new parent) counts as gone.
func alive(pid int) bool {
	if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
		return false
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	if i := strings.LastIndexByte(string(stat), ')'); i >= 0 && i+2 < len(stat) {
		return stat[i+2] != 'Z'
	}
	return true
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

func TestCancelKillsChildAndGrandchild(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.start(t, b.config())
	s := b.srv.session(t)
	s.startTask(t, b.task(101, "grandchild"))
	gc := grandchildPid(t, s, 101)
	if !alive(gc) {
		t.Fatalf("grandchild %d is not running", gc)
	}
	s.cancelTask(t, &batonv1.CancelTask{AttemptId: 101, Reason: "run cancelled"})
	tf, _ := s.finished(t, 101)
	if tf.GetOutcome() != cancelled || tf.GetExitCode() != -1 {
		t.Errorf("TaskFinished = {%v, %d, %q}, want {CANCELLED, -1}", tf.GetOutcome(), tf.GetExitCode(), tf.GetError())
	}
	waitGone(t, gc)
}

func TestCancelEscalatesToKill(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.start(t, b.config()) // KillGrace 5s: the CancelTask's grace must win
	s := b.srv.session(t)
	s.startTask(t, b.task(102, "ignore-term"))
	s.until(t, "child ignoring SIGTERM", func(m *batonv1.ConnectRequest) bool {
		return strings.Contains(string(m.GetLogChunk().GetData()), "ignoring SIGTERM")
	})
	start := time.Now()
	s.cancelTask(t, &batonv1.CancelTask{AttemptId: 102, KillGrace: durationpb.New(100 * time.Millisecond)})
	tf, _ := s.finished(t, 102)
	if tf.GetOutcome() != cancelled || tf.GetError() != "cancelled: signal: killed" {
		t.Errorf("TaskFinished = {%v, %q}, want {CANCELLED, cancelled: signal: killed}", tf.GetOutcome(), tf.GetError())
	}
	if d := time.Since(start); d > 4*time.Second {
		t.Errorf("cancel took %s; the CancelTask's 100ms grace was not used", d)
	}
}

func TestTimeoutKillsTree(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.start(t, b.config())
	s := b.srv.session(t)
	st := b.task(103, "grandchild")
	st.Timeout = durationpb.New(500 * time.Millisecond)
	st.KillGrace = durationpb.New(100 * time.Millisecond)
	s.startTask(t, st)
	gc := grandchildPid(t, s, 103)
	tf, _ := s.finished(t, 103)
	if tf.GetOutcome() != timedOut || tf.GetExitCode() != -1 || tf.GetError() != "timed out after 500ms: signal: terminated" {
		t.Errorf("TaskFinished = {%v, %d, %q}, want {TIMED_OUT, -1, timed out after 500ms: signal: terminated}",
			tf.GetOutcome(), tf.GetExitCode(), tf.GetError())
	}
	waitGone(t, gc)
}

func TestAbortKillsChildren(t *testing.T) {
	t.Parallel()
	b := setup(t)
	r := b.start(t, b.config())
	s := b.srv.session(t)
	s.startTask(t, b.task(104, "grandchild"))
	gc := grandchildPid(t, s, 104)

	r.cancel() // drain: the child keeps running
	b.logs.wait(t, "waiting for running children to finish", "running", "1")
	if !alive(gc) {
		t.Fatal("draining killed the grandchild")
	}
	r.Abort()
	if err := r.wait(t); err != nil {
		t.Errorf("Run = %v, want nil", err)
	}
	waitGone(t, gc)

	// The outcome was journaled; it may not have been sent before Run
	// returned, so the next agent reports it.
	b.start(t, b.config())
	s2 := b.srv.session(t)
	unacked := s2.hello.GetUnacked()
	if len(unacked) != 1 || unacked[0].GetAttemptId() != 104 || unacked[0].GetOutcome() != failed ||
		unacked[0].GetError() != "killed: the agent was stopped by force: signal: killed" {
		t.Errorf("Hello.unacked = %v, want attempt 104 FAILED (killed: the agent was stopped by force: signal: killed)", unacked)
	}
}
