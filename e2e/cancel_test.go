package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"

	batonv1 "github.com/batonhq/baton/gen/baton/v1"
)

// TestCancelStopsChildren cancels a run with the CLI while two of its tasks
// run children with grandchildren: every one of those processes is gone,
// the instances are cancelled (also the one that had not started), the run
// ends CANCELLED, and a run watch that was following it exits 1.
func TestCancelStopsChildren(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	c.agent("solo", 4)
	c.waitAgents(1)
	c.apply(`
name: cancel-me
tasks:
  - {name: a, run: [TASK, spawn, '2', '60']}
  - {name: b, run: [TASK, spawn, '2', '60']}
  - {name: c, needs: [a], run: [TASK, ok]}
`)
	id := c.startRun("cancel-me", nil).GetId()
	// Each shell records itself, two grandchildren and its own sleep.
	waitFor(t, 30*time.Second, "a and b to start their process trees", func() bool {
		return len(c.markLines("a.pids")) == 4 && len(c.markLines("b.pids")) == 4
	})
	c.waitTasks(id, 30*time.Second, "a and b to be running", func(r *batonv1.Run) bool {
		return task(r, "a").GetState() == batonv1.TaskState_TASK_STATE_RUNNING &&
			task(r, "b").GetState() == batonv1.TaskState_TASK_STATE_RUNNING
	})
	pids := append(c.pids("a"), c.pids("b")...)

	watch := c.cliBackground("run", "watch", fmt.Sprint(id))
	waitFor(t, 30*time.Second, "run watch to start following", func() bool {
		return strings.Contains(watch.stdout.String(), fmt.Sprintf("watching run %d", id))
	})

	stdout, stderr, code := c.cli("run", "cancel", fmt.Sprint(id), "--reason", "wrong load date")
	if code != 0 {
		t.Fatalf("baton run cancel exited %d; stderr: %s", code, stderr)
	}
	if !strings.Contains(stdout, fmt.Sprintf("run %d", id)) {
		t.Errorf("baton run cancel printed %q, want the run named", stdout)
	}

	if code := watch.wait(t, 30*time.Second); code != 1 {
		t.Errorf("run watch exited %d, want 1 (run cancelled); stdout:\n%s\nstderr:\n%s", code, watch.stdout.String(), watch.stderr.String())
	}
	run := c.wait(id)
	if run.GetState() != batonv1.RunState_RUN_STATE_CANCELLED {
		t.Errorf("run = %v, want CANCELLED", run.GetState())
	}
	if !strings.Contains(run.GetError(), "wrong load date") {
		t.Errorf("run error = %q, want the reason given", run.GetError())
	}
	for _, name := range []string{"a", "b", "c"} {
		if got := task(run, name).GetState(); got != batonv1.TaskState_TASK_STATE_CANCELLED {
			t.Errorf("task %s = %v, want CANCELLED", name, got)
		}
	}
	if got := c.ran("c"); got != nil {
		t.Errorf("c ran %v, want never", got)
	}
	waitGone(t, 5*time.Second, "the cancelled run's children", pids)

	// A finished run cannot be cancelled again.
	_, stderr, code = c.cli("run", "cancel", fmt.Sprint(id))
	if code != 2 {
		t.Errorf("baton run cancel (finished run) exited %d, want 2; stderr: %s", code, stderr)
	}
}
