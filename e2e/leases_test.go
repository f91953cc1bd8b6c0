package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"

	batonv1 "github.com/batonhq/baton/gen/baton/v1"
)

// TestBatondRestartKeepsChildren kills batond (SIGKILL) while agents run
// children and starts it again within the attempts' lease: no child is
// stopped, every child runs its full course, and each task is decided by
// its one and only attempt.
func TestBatondRestartKeepsChildren(t *testing.T) {
	t.Parallel()
	c := newCluster(t, withBatondFlags("--agent-timeout", "6s", "--kill-grace", "1s"))
	c.agent("a1", 3)
	c.agent("a2", 3)
	c.waitAgents(2)
	const tasks = 6
	var src strings.Builder
	src.WriteString("name: keep\ntasks:\n")
	for i := range tasks {
		fmt.Fprintf(&src, "  - {name: t%d, run: [TASK, span, sleep, '4']}\n", i)
	}
	c.apply(src.String())
	id := c.startRun("keep", nil).GetId()
	c.waitTasks(id, 30*time.Second, "every task to run", func(r *batonv1.Run) bool {
		return runningOn(r, "a1")+runningOn(r, "a2") == tasks
	})
	down := time.Now()
	c.restartBatond()
	t.Logf("batond back after %v", time.Since(down).Round(time.Millisecond))

	done := c.waitState(id, 60*time.Second, batonv1.RunState_RUN_STATE_SUCCEEDED, batonv1.RunState_RUN_STATE_FAILED)
	if done.GetState() != batonv1.RunState_RUN_STATE_SUCCEEDED {
		t.Fatalf("run = %v (%s), want SUCCEEDED", done.GetState(), done.GetError())
	}
	for i := range tasks {
		name := fmt.Sprintf("t%d", i)
		spans := c.spans(name)
		if len(spans) != 1 {
			t.Errorf("%s ran %d children, want 1: %+v", name, len(spans), spans)
			continue
		}
		if ran := time.Duration(spans[0].end - spans[0].start); ran < 4*time.Second {
			t.Errorf("%s: the child ran %v, less than its 4 s: it was stopped across the batond restart", name, ran)
		}
		atts := c.attempts(id, name)
		if len(atts) != 1 || atts[0].GetState() != batonv1.AttemptState_ATTEMPT_STATE_SUCCEEDED {
			t.Errorf("%s attempts = %v, want exactly one, SUCCEEDED", name, atts)
		}
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
