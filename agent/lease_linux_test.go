package agent

import (
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/batonhq/baton/agent/runner"
	batonv1 "github.com/batonhq/baton/gen/baton/v1"
)

// TestRunnerFencesWhileTheAgentIsStopped stops the agent process
// (SIGSTOP) while its child runs under a lease, as a frozen or cut-off
// agent would be: nothing renews the lease, and the runner alone stops
// the child's tree when it ends. Resumed, the agent reports the attempt
// LEASE_EXPIRED.
func TestRunnerFencesWhileTheAgentIsStopped(t *testing.T) {
	t.Parallel()
	const id = 601
	const lease = time.Second
	b := setup(t)
	b.srv.heartbeat = 20 * time.Millisecond
	b.srv.setLease(lease, nil)
	agentProc := b.startProcess(t, 0)
	s := b.srv.session(t)
	st := b.task(id, "grandchild")
	st.KillGrace = durationpb.New(100 * time.Millisecond)
	s.startTask(t, st)
	child := pidOf(t, s.started(t, id))
	// Renewed until the agent is stopped, so that the lease surely ends
	// after that.
	var out strings.Builder
	var gc int
	s.until(t, "grandchild pid on stdout", func(m *batonv1.ConnectRequest) bool {
		if hb := m.GetHeartbeat(); hb != nil {
			s.renewLeases(t, hb.GetSeq(), id)
		}
		if c := m.GetLogChunk(); c.GetAttemptId() == id && c.GetStream() == streamStdout {
			out.Write(c.GetData())
		}
		line, _, ok := strings.Cut(out.String(), "\n")
		if !ok {
			return false
		}
		n, err := strconv.Atoi(strings.TrimPrefix(line, "grandchild="))
		if err != nil {
			t.Fatalf("unexpected stdout %q", line)
		}
		gc = n
		return true
	})
	t.Cleanup(func() { _ = syscall.Kill(gc, syscall.SIGKILL) })
	if err := agentProc.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	stopped := time.Now()
	if !alive(child) || !alive(gc) {
		t.Fatal("the child's tree ended before the agent was stopped")
	}

	waitGone(t, child)
	waitGone(t, gc)
	waitFor(t, "the runner records the exit", func() bool { return exitRecorded(b.stateDir, runner.ProtocolVersion, id) })
	recs, err := runner.Recorded(b.stateDir, runner.ProtocolVersion)
	if err != nil {
		t.Fatal(err)
	}
	if rec := recs[id]; !rec.LeaseExpired || rec.LeaseExpiredAt.Before(stopped) || rec.LeaseTerm != lease {
		t.Errorf("exit record = %+v, want the lease of %s expired after the agent was stopped (%v)", rec, lease, stopped)
	}
	if !strings.Contains(runnerLog(b.stateDir), "attempt lease expired; stopping the child's process tree (self-fencing)") {
		t.Errorf("the runner's log does not say it fenced the child:\n%s", runnerLog(b.stateDir))
	}

	if err := agentProc.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	tf, _ := s.finished(t, id)
	if at := expiredAt(t, tf, lease); at.Before(stopped.Truncate(time.Millisecond)) {
		t.Errorf("lease expired at %v, before the agent was stopped (%v)", at, stopped)
	}
}

// TestChildOfAnOlderRunnerIsFenced upgrades an agent while its child runs
// without a lease: the new agent's control plane leases it, and as the
// older runner knows nothing of leases the agent process stops the
// child's tree itself once the lease renewed by the Welcome has passed.
func TestChildOfAnOlderRunnerIsFenced(t *testing.T) {
	t.Parallel()
	const id = 611
	const lease = time.Second
	b := setup(t)
	first := b.startProcess(t, 7) // no lease in its Welcome
	s1 := b.srv.session(t)
	s1.startTask(t, b.task(id, "sleep"))
	child := pidOf(t, s1.started(t, id))
	first.kill(t)

	b.srv.setLease(lease, func(h *batonv1.Hello) []int64 {
		var ids []int64
		for _, r := range h.GetRunning() {
			ids = append(ids, r.GetAttemptId())
		}
		return ids
	})
	b.start(t, b.config())
	s2 := b.srv.session(t)
	if r := s2.hello.GetRunning(); len(r) != 1 || r[0].GetAttemptId() != id {
		t.Fatalf("Hello.running = %v, want %d", r, id)
	}
	tf, _ := s2.finished(t, id)
	expiredAt(t, tf, lease)
	waitGone(t, child)
}
