package e2e

import (
	"strings"
	"testing"
	"time"

	batonv1 "github.com/batonhq/baton/gen/baton/v1"
)

// TestTaskTimeoutKillsTree gives a task that spawned grandchildren a 1 s
// timeout: the attempt ends TIMED_OUT, the task fails, and no process of
// its tree is left running.
func TestTaskTimeoutKillsTree(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	c.agent("solo", 2)
	c.waitAgents(1)
	c.apply(`
name: task-timeout
tasks:
  - name: hang
    timeout: 1s
    run: [TASK, spawn, '3', '60']
  - name: after
    needs: [hang]
    run: [TASK, ok]
`)
	run := c.wait(c.startRun("task-timeout", nil).GetId())
	if run.GetState() != batonv1.RunState_RUN_STATE_FAILED {
		t.Errorf("run = %v (%s), want FAILED", run.GetState(), run.GetError())
	}
	hang := task(run, "hang")
	if hang.GetState() != batonv1.TaskState_TASK_STATE_FAILED {
		t.Errorf("hang = %v (%s), want FAILED", hang.GetState(), hang.GetError())
	}
	if got := c.ran("after"); got != nil {
		t.Errorf("after ran %v, want never (its upstream timed out)", got)
	}

	// The shell, its three grandchildren and its own sleep: five pids.
	pids := c.pids("hang")
	if len(pids) != 5 {
		t.Fatalf("hang recorded pids %v, want 5", pids)
	}
	waitGone(t, 5*time.Second, "the timed-out task's process tree", pids)

	atts := c.attempts(run.GetId(), "hang")
	if len(atts) != 1 {
		t.Fatalf("hang has %d attempts, want 1: %v", len(atts), atts)
	}
	a := atts[0]
	if a.GetState() != batonv1.AttemptState_ATTEMPT_STATE_TIMED_OUT {
		t.Errorf("hang attempt = %v (%s), want TIMED_OUT", a.GetState(), a.GetError())
	}
	if took := a.GetEndTime().AsTime().Sub(a.GetStartTime().AsTime()); took < time.Second || took > 3*time.Second {
		t.Errorf("hang attempt ran %s, want about its 1s timeout", took)
	}
}

// TestRunTimeout gives a run a 2 s time limit: what is still running is
// stopped, the run ends FAILED within the limit plus 2 s of its start, and
// no child is left running.
func TestRunTimeout(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	c.agent("solo", 2)
	c.waitAgents(1)
	c.apply(`
name: run-timeout
timeout: 2s
tasks:
  - name: quick
    run: [TASK, ok]
  - name: long
    run: [TASK, spawn, '1', '60']
  - name: after
    needs: [long]
    run: [TASK, ok]
`)
	run := c.wait(c.startRun("run-timeout", nil).GetId())
	if run.GetState() != batonv1.RunState_RUN_STATE_FAILED {
		t.Errorf("run = %v (%s), want FAILED", run.GetState(), run.GetError())
	}
	if !strings.Contains(run.GetError(), "timeout") {
		t.Errorf("run error = %q, want it to name the timeout", run.GetError())
	}
	took := run.GetEndTime().AsTime().Sub(run.GetStartTime().AsTime())
	t.Logf("run with a 2s timeout ended after %s", took)
	if took < 2*time.Second || took > 4*time.Second {
		t.Errorf("run ended %s after its start, want between its 2s timeout and 4s", took)
	}
	if got := task(run, "quick").GetState(); got != batonv1.TaskState_TASK_STATE_SUCCEEDED {
		t.Errorf("quick = %v, want SUCCEEDED (it finished before the limit)", got)
	}
	if got := task(run, "long").GetState(); got == batonv1.TaskState_TASK_STATE_SUCCEEDED || got == batonv1.TaskState_TASK_STATE_RUNNING {
		t.Errorf("long = %v, want stopped", got)
	}
	if got := c.ran("after"); got != nil {
		t.Errorf("after ran %v, want never", got)
	}
	pids := c.pids("long")
	if len(pids) != 3 {
		t.Fatalf("long recorded pids %v, want 3", pids)
	}
	waitGone(t, 5*time.Second, "the stopped task's process tree", pids)
}
