package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"

	batonv1 "github.com/batonhq/baton/gen/baton/v1"
)

// TestAgentKilledWhileStarting kills an agent with SIGKILL six times while
// it starts many short children, and starts it again each time with the
// same name and state directory. Every task must succeed: a child that
// never started can be started, and one that ran has a real outcome.
func TestAgentKilledWhileStarting(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	c.agent("victim", 8)
	c.waitAgents(1)
	var b strings.Builder
	b.WriteString("name: churn\ntasks:\n")
	const tasks = 300
	for i := range tasks {
		fmt.Fprintf(&b, "  - {name: t%03d, run: [TASK, sleep, '0.05']}\n", i)
	}
	c.apply(b.String())
	id := c.startRun("churn", nil).GetId()
	for k := range 6 {
		waitFor(t, time.Minute, fmt.Sprintf("%d tasks done", 30*(k+1)), func() bool {
			r, err := c.c.GetRun(t.Context(), id)
			return err == nil && doneTasks(r) >= 30*(k+1)
		})
		c.agents["victim"].kill()
		c.agent("victim", 8)
	}
	run := c.waitState(id, 2*time.Minute, batonv1.RunState_RUN_STATE_SUCCEEDED, batonv1.RunState_RUN_STATE_FAILED)
	for _, tr := range run.GetTasks() {
		if tr.GetState() != batonv1.TaskState_TASK_STATE_SUCCEEDED {
			t.Errorf("%s = %v after %d attempts (%s); the child ran %d times",
				tr.GetTask(), tr.GetState(), tr.GetAttempts(), tr.GetError(), len(c.markLines(tr.GetTask())))
		}
	}
	if run.GetState() != batonv1.RunState_RUN_STATE_SUCCEEDED {
		t.Errorf("run = %v (%s), want SUCCEEDED", run.GetState(), run.GetError())
	}
}
