package e2e

import (
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	batonv1 "github.com/batonhq/baton/gen/baton/v1"
)

// TestAgentCutOff stops an agent with SIGSTOP while it runs children. With
// --agent-timeout 2s its attempts are lost and replaced on the other agent;
// after SIGCONT the stopped agent reports its children's outcomes, which
// are kept as late history and decide nothing: every task instance is
// decided by exactly one attempt and the run's result does not change.
func TestAgentCutOff(t *testing.T) {
	t.Parallel()
	c := newCluster(t, withBatondFlags("--agent-timeout", "2s"))
	cut := c.agent("cut", 3)
	c.agent("steady", 3)
	c.waitAgents(2)
	const tasks = 6
	var src strings.Builder
	src.WriteString("name: cutoff\ntasks:\n")
	for i := range tasks {
		fmt.Fprintf(&src, "  - {name: t%d, run: [TASK, span, sleep, '1.5']}\n", i)
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
	stopped := true
	t.Cleanup(func() {
		if stopped {
			_ = cut.cmd.Process.Signal(syscall.SIGCONT)
		}
	})

	// The lost attempts are replaced on the other agent.
	waitFor(t, 30*time.Second, "the stopped agent's attempts to be replaced", func() bool {
		for name := range onCut {
			atts := c.attempts(id, name)
			if len(atts) < 2 || atts[len(atts)-1].GetKind() != batonv1.AttemptKind_ATTEMPT_KIND_REPLACEMENT {
				return false
			}
		}
		return true
	})
	// The stopped agent's children have finished meanwhile (they sleep
	// 1.5 s); their outcomes wait in the agent.
	waitFor(t, 30*time.Second, "the stopped agent's children to finish", func() bool {
		n := 0
		for name := range onCut {
			closed, _ := c.readSpans(name)
			for _, s := range closed {
				if s.agent == "cut" {
					n++
				}
			}
		}
		return n == len(onCut)
	})
	decided := c.wait(id)
	if decided.GetState() != batonv1.RunState_RUN_STATE_SUCCEEDED {
		t.Fatalf("run = %v (%s), want SUCCEEDED", decided.GetState(), decided.GetError())
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
		if tr.GetState() != batonv1.TaskState_TASK_STATE_SUCCEEDED || tr.GetAttemptId() != task(decided, name).GetAttemptId() {
			t.Errorf("%s after the late outcomes = %v by attempt %d, want SUCCEEDED by attempt %d",
				name, tr.GetState(), tr.GetAttemptId(), task(decided, name).GetAttemptId())
		}
		atts := c.attempts(id, name)
		succeeded := 0
		for _, a := range atts {
			if a.GetState() == batonv1.AttemptState_ATTEMPT_STATE_SUCCEEDED {
				succeeded++
				if a.GetId() != tr.GetAttemptId() {
					t.Errorf("%s: attempt %d succeeded but attempt %d decided the task", name, a.GetId(), tr.GetAttemptId())
				}
			}
		}
		if succeeded != 1 {
			t.Errorf("%s has %d succeeded attempts, want exactly 1: %v", name, succeeded, atts)
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
			lost.GetLateState() != batonv1.AttemptState_ATTEMPT_STATE_SUCCEEDED {
			t.Errorf("%s first attempt = id %d on %s %v late %v, want id %d on cut LOST late SUCCEEDED",
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

// runningOn counts a run's task instances running on agent.
func runningOn(r *batonv1.Run, agent string) int {
	n := 0
	for _, tr := range r.GetTasks() {
		if tr.GetAgent() == agent && tr.GetState() == batonv1.TaskState_TASK_STATE_RUNNING {
			n++
		}
	}
	return n
}
