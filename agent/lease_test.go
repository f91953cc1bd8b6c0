package agent

import (
	"strings"
	"testing"
	"time"

	batonv1 "github.com/batonhq/baton/gen/baton/v1"
)

const leaseExpired = batonv1.AttemptOutcome_ATTEMPT_OUTCOME_LEASE_EXPIRED

// expiredAt checks that tf is the outcome of a child stopped by SIGTERM
// because its lease of term ran out, and returns when the lease expired
// as its error says.
func expiredAt(t *testing.T, tf *batonv1.TaskFinished, term time.Duration) time.Time {
	t.Helper()
	rest, ok := strings.CutPrefix(tf.GetError(), "lease expired at ")
	at, tail, found := strings.Cut(rest, ": ")
	want := "not renewed by the control plane for " + term.String() + "; child stopped (self-fenced): signal: terminated"
	if tf.GetOutcome() != leaseExpired || tf.GetExitCode() != -1 || !ok || !found || tail != want {
		t.Fatalf("TaskFinished = {%v, %d, %q}, want {LEASE_EXPIRED, -1, lease expired at <time>: %s}",
			tf.GetOutcome(), tf.GetExitCode(), tf.GetError(), want)
	}
	when, err := time.Parse(leaseTimeFormat, at)
	if err != nil {
		t.Fatalf("lease expiry time in %q: %v", tf.GetError(), err)
	}
	return when
}

// TestLeaseRenewal runs two attempts under leases of a second, with
// heartbeats every 20ms: one renewed by the LeaseRenewal answering each
// Heartbeat keeps running; the other, started with the lease of a later
// heartbeat (lease_seq) and never renewed, is stopped once that lease has
// passed and reported LEASE_EXPIRED with its output. Heartbeats are
// numbered 1, 2, 3..., and a StartTask naming a message the agent does not
// know is rejected.
func TestLeaseRenewal(t *testing.T) {
	t.Parallel()
	const lease = time.Second
	// Heartbeats are at least 20ms apart: heartbeat 60 is sent 1.2s after
	// the Hello at the earliest, after the first lease (from the Hello)
	// has passed.
	const laterSeq = 60
	b := setup(t)
	b.srv.heartbeat = 20 * time.Millisecond
	b.srv.setLease(lease, nil)
	b.start(t, b.config())
	s := b.srv.session(t)
	s.startTask(t, b.task(1, "sleep")) // lease_seq 0: the Hello
	var fencedStart time.Time
	var last uint64
	finished := map[int64]*batonv1.TaskFinished{}
	s.until(t, "TaskFinished of attempts 1 to 3", func(m *batonv1.ConnectRequest) bool {
		if hb := m.GetHeartbeat(); hb != nil {
			if hb.GetSeq() != last+1 {
				t.Fatalf("Heartbeat.seq = %d after %d, want %d", hb.GetSeq(), last, last+1)
			}
			last = hb.GetSeq()
			s.renewLeases(t, hb.GetSeq(), 1, 99) // 99 is unknown: ignored
			if hb.GetSeq() == laterSeq {
				st := b.task(2, "sleep", "BATON_TEST_STDOUT", "working\n")
				st.LeaseSeq = hb.GetSeq()
				fencedStart = time.Now()
				s.startTask(t, st)
			}
		}
		tf := m.GetTaskFinished()
		if tf == nil {
			return false
		}
		finished[tf.GetAttemptId()] = tf
		switch tf.GetAttemptId() {
		case 2:
			st := b.task(3, "exit")
			st.LeaseSeq = last + 1000
			s.startTask(t, st)
		case 3:
			// Attempt 1 is still renewed and running.
			s.cancelTask(t, &batonv1.CancelTask{AttemptId: 1, Reason: "done"})
		}
		return len(finished) == 3
	})
	tf := finished[2]
	// Measured from the Hello, the lease would have ended before the
	// StartTask (and the attempt been rejected); from heartbeat 60, it
	// ends about a lease after it.
	if at := expiredAt(t, tf, lease); at.Before(fencedStart) {
		t.Errorf("attempt 2's lease expired at %v, before its StartTask was sent (%v)", at, fencedStart)
	}
	if got := string(tf.GetStdoutTail()); got != "working\n" {
		t.Errorf("stdout_tail = %q, want %q", got, "working\n")
	}
	b.logs.wait(t, "attempt lease expired: the control plane did not renew it; child's process tree stopped (self-fenced)",
		"attempt_id", "2")
	if tf := finished[3]; tf.GetOutcome() != rejected || !strings.Contains(tf.GetError(), "names no recent message") {
		t.Errorf("TaskFinished of a StartTask with an unknown lease_seq = {%v, %q}, want REJECTED", tf.GetOutcome(), tf.GetError())
	}
	if tf := finished[1]; tf.GetOutcome() != cancelled {
		t.Errorf("renewed attempt: TaskFinished = {%v, %q}, want CANCELLED", tf.GetOutcome(), tf.GetError())
	}
}

// TestWelcomeRenewsRunningAttempts reconnects while two attempts run: the
// Welcome of the new session renews one of them as of its Hello, which
// then outlives its first lease, and not the other, which is stopped
// when its first lease ends.
func TestWelcomeRenewsRunningAttempts(t *testing.T) {
	t.Parallel()
	const lease = time.Second
	b := setup(t)
	b.srv.heartbeat = 20 * time.Millisecond
	b.srv.setLease(lease, func(h *batonv1.Hello) []int64 {
		if len(h.GetRunning()) > 0 {
			return []int64{11}
		}
		return nil
	})
	b.start(t, b.config())
	s1 := b.srv.session(t)
	s1.startTask(t, b.task(11, "sleep"))
	s1.startTask(t, b.task(12, "sleep"))
	started := map[int64]bool{}
	s1.until(t, "TaskStarted of attempts 11 and 12", func(m *batonv1.ConnectRequest) bool {
		if ts := m.GetTaskStarted(); ts != nil {
			started[ts.GetAttemptId()] = true
		}
		return len(started) == 2
	})
	// At least 200ms after the Hello, so that the new Hello's lease ends
	// well after the first.
	s1.until(t, "Heartbeat 10", func(m *batonv1.ConnectRequest) bool { return m.GetHeartbeat().GetSeq() >= 10 })
	hangUp := time.Now()
	s1.hangUp(t, nil)

	s2 := b.srv.session(t)
	if n := len(s2.hello.GetRunning()); n != 2 {
		t.Fatalf("Hello.running lists %d attempts, want 2", n)
	}
	finished := map[int64]*batonv1.TaskFinished{}
	s2.until(t, "TaskFinished of attempts 11 and 12", func(m *batonv1.ConnectRequest) bool {
		if tf := m.GetTaskFinished(); tf != nil {
			finished[tf.GetAttemptId()] = tf
		}
		return len(finished) == 2
	})
	// Renewed as of the new Hello, sent after the hang-up.
	if at := expiredAt(t, finished[11], lease); at.Before(hangUp.Add(lease).Truncate(time.Millisecond)) {
		t.Errorf("renewed attempt 11's lease expired at %v, before a lease after the reconnect (%v)", at, hangUp.Add(lease))
	}
	// Not listed: the lease from the first Hello stands.
	if at := expiredAt(t, finished[12], lease); !at.Before(hangUp.Add(lease)) {
		t.Errorf("attempt 12's lease expired at %v, want its first lease (before %v)", at, hangUp.Add(lease))
	}
}

// TestNoLeaseNeverFences runs an attempt for a control plane that names no
// lease: heartbeats still count up, lease_seq and renewals mean nothing,
// and the child runs until it is cancelled.
func TestNoLeaseNeverFences(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.srv.heartbeat = 20 * time.Millisecond
	b.start(t, b.config())
	s := b.srv.session(t)
	st := b.task(21, "sleep")
	st.LeaseSeq = 12345
	s.startTask(t, st)
	s.started(t, 21)
	s.until(t, "Heartbeat 25", func(m *batonv1.ConnectRequest) bool {
		if tf := m.GetTaskFinished(); tf != nil {
			t.Fatalf("attempt finished without a lease: %v", tf)
		}
		if hb := m.GetHeartbeat(); hb != nil && hb.GetSeq() == 5 {
			s.renewLeases(t, hb.GetSeq(), 21)
		}
		return m.GetHeartbeat().GetSeq() >= 25
	})
	s.cancelTask(t, &batonv1.CancelTask{AttemptId: 21})
	if tf, _ := s.finished(t, 21); tf.GetOutcome() != cancelled {
		t.Errorf("TaskFinished = {%v, %q}, want CANCELLED", tf.GetOutcome(), tf.GetError())
	}
}
