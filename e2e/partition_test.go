package e2e

import (
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	batonv1 "github.com/batonhq/baton/gen/baton/v1"
)

// TestPartitionNoOverlap cuts an agent off (SIGSTOP: the agent process
// freezes, its runner and children do not) while it runs children that
// would take 8 s. With --agent-timeout 3s the children's leases run out and
// the agent's runner stops them (self-fencing); only after the lease plus
// the kill grace has passed are the attempts lost and replaced on the other
// agent. The children's own timestamps show that no replacement started
// before the child it replaces had ended: a task instance never has two
// live executions. After SIGCONT the stopped agent reports its children as
// LEASE_EXPIRED, kept as late history (cancelled by the agent) that
// decides nothing.
func TestPartitionNoOverlap(t *testing.T) {
	t.Parallel()
	c := newCluster(t, withBatondFlags("--agent-timeout", "3s", "--kill-grace", "1s"))
	cut := c.agent("cut", 3)
	// Room on steady for the replacements at once, so the gap between a
	// cut child's end and its replacement's start is the fence's.
	c.agent("steady", 6)
	c.waitAgents(2)
	const tasks = 6
	var src strings.Builder
	src.WriteString("name: cutoff\ntasks:\n")
	for i := range tasks {
		fmt.Fprintf(&src, "  - {name: t%d, run: [TASK, span, sleep, '8']}\n", i)
	}
	c.apply(src.String())

	id := c.startRun("cutoff", nil).GetId()
	run := c.waitTasks(id, 30*time.Second, "every task to run", func(r *batonv1.Run) bool {
		return runningOn(r, "cut")+runningOn(r, "steady") == tasks
	})
	onCut := map[string]int64{} // task -> the attempt the stopped agent runs
	for _, tr := range run.GetTasks() {
		if tr.GetAgent() == "cut" {
			onCut[tr.GetTask()] = tr.GetAttemptId()
		}
	}
	if len(onCut) == 0 {
		t.Fatalf("no task runs on agent cut: %v", run.GetTasks())
	}
	cut.signal(t, syscall.SIGSTOP)
	stoppedAt := time.Now()
	stopped := true
	t.Cleanup(func() {
		if stopped {
			_ = cut.cmd.Process.Signal(syscall.SIGCONT)
		}
	})

	// The lost attempts are replaced on the other agent, and the run
	// succeeds there.
	decided := c.waitState(id, 60*time.Second, batonv1.RunState_RUN_STATE_SUCCEEDED, batonv1.RunState_RUN_STATE_FAILED)
	if decided.GetState() != batonv1.RunState_RUN_STATE_SUCCEEDED {
		t.Fatalf("run = %v (%s), want SUCCEEDED", decided.GetState(), decided.GetError())
	}

	// No overlap, from the children's own clocks.
	for name := range onCut {
		spans := c.spans(name)
		if len(spans) != 2 {
			t.Fatalf("%s children = %+v, want the cut one and its replacement", name, spans)
		}
		first, second := spans[0], spans[1]
		if first.start > second.start {
			first, second = second, first
		}
		if first.agent != "cut" || second.agent != "steady" {
			t.Fatalf("%s children ran on %s then %s, want cut then steady", name, first.agent, second.agent)
		}
		if first.end >= second.start {
			t.Errorf("%s: the replacement started %v before the cut child ended: two live executions",
				name, time.Duration(first.end-second.start))
		}
		ran := time.Duration(first.end - first.start)
		if ran >= 8*time.Second {
			t.Errorf("%s: the cut child ran %v, its full course: it was not stopped when its lease ran out", name, ran)
		}
		t.Logf("%s: cut child stopped %v after the agent froze; replacement started %v after that",
			name, time.Unix(0, first.end).Sub(stoppedAt).Round(time.Millisecond), time.Duration(second.start-first.end).Round(time.Millisecond))
	}

	cut.signal(t, syscall.SIGCONT)
	stopped = false
	waitFor(t, 30*time.Second, "the late outcomes to be recorded", func() bool {
		for name, attID := range onCut {
			for _, a := range c.attempts(id, name) {
				if a.GetId() == attID && a.GetLateState() == batonv1.AttemptState_ATTEMPT_STATE_UNSPECIFIED {
					return false
				}
			}
		}
		return true
	})

	after := c.getRun(id)
	if after.GetState() != decided.GetState() || after.GetEndTime().AsTime() != decided.GetEndTime().AsTime() {
		t.Errorf("run after the late outcomes = %v ended %v, want unchanged %v ended %v",
			after.GetState(), after.GetEndTime().AsTime(), decided.GetState(), decided.GetEndTime().AsTime())
	}
	for i := range tasks {
		name := fmt.Sprintf("t%d", i)
		tr := task(after, name)
		atts := c.attempts(id, name)
		succeeded := 0
		for _, a := range atts {
			if a.GetState() == batonv1.AttemptState_ATTEMPT_STATE_SUCCEEDED {
				succeeded++
			}
		}
		if tr.GetState() != batonv1.TaskState_TASK_STATE_SUCCEEDED || succeeded != 1 {
			t.Errorf("%s = %v with %d succeeded attempts, want SUCCEEDED by exactly one: %v", name, tr.GetState(), succeeded, atts)
		}
		lostID, wasCut := onCut[name]
		if !wasCut {
			if len(atts) != 1 || atts[0].GetAgent() != "steady" {
				t.Errorf("%s (on the steady agent) attempts = %v, want one on steady", name, atts)
			}
			continue
		}
		if len(atts) != 2 {
			t.Errorf("%s attempts = %v, want the lost one and its replacement", name, atts)
			continue
		}
		lost, repl := atts[0], atts[1]
		if lost.GetId() != lostID || lost.GetAgent() != "cut" || lost.GetState() != batonv1.AttemptState_ATTEMPT_STATE_LOST ||
			lost.GetLateState() != batonv1.AttemptState_ATTEMPT_STATE_CANCELLED {
			t.Errorf("%s first attempt = id %d on %s %v late %v, want id %d on cut LOST, late CANCELLED (stopped by the agent)",
				name, lost.GetId(), lost.GetAgent(), lost.GetState(), lost.GetLateState(), lostID)
		}
		if repl.GetKind() != batonv1.AttemptKind_ATTEMPT_KIND_REPLACEMENT || repl.GetAgent() != "steady" ||
			repl.GetState() != batonv1.AttemptState_ATTEMPT_STATE_SUCCEEDED {
			t.Errorf("%s second attempt = %v on %s %v, want REPLACEMENT on steady SUCCEEDED",
				name, repl.GetKind(), repl.GetAgent(), repl.GetState())
		}
	}

	// The late outcomes show in the history the CLI prints.
	stdout, stderr, code := c.cli("run", "history", fmt.Sprint(id))
	if code != 0 || strings.Count(stdout, "late") < len(onCut) {
		t.Errorf("baton run history = exit %d, stdout:\n%s\nstderr: %s\nwant 0 and %d late outcomes noted", code, stdout, stderr, len(onCut))
	}
}
