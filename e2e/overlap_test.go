package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	batonv1 "github.com/batonhq/baton/gen/baton/v1"
)

// TestOverlap starts a second run of a job while its first one is active,
// under each overlap policy. Every task waits for a release file, so the
// first run stays active until the test lets it end.
func TestOverlap(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	c.agent("solo", 4)
	c.waitAgents(1)
	c.apply(`
name: ov-forbid
tasks: [{name: hold-forbid, run: [TASK, wait-file, release-forbid]}]
`)
	c.apply(`
name: ov-queue
overlap: queue
tasks: [{name: hold-queue, run: [TASK, wait-file, release-queue]}]
`)
	c.apply(`
name: ov-allow
overlap: allow
tasks: [{name: hold-allow, run: [TASK, wait-file, release-allow]}]
`)

	t.Run("forbid", func(t *testing.T) {
		first := c.startRun("ov-forbid", nil)
		ctx, cancel := context.WithTimeout(context.Background(), rpcTimeout)
		defer cancel()
		_, err := c.runs().StartRun(ctx, &batonv1.StartRunRequest{Job: "ov-forbid"})
		if status.Code(err) != codes.AlreadyExists {
			t.Fatalf("second StartRun = %v, want ALREADY_EXISTS", err)
		}
		_, stderr, code := c.cli("run", "start", "ov-forbid")
		if code != 2 || !strings.Contains(stderr, "ov-forbid") || !strings.Contains(stderr, "already has an active run") {
			t.Errorf("baton run start (second) = exit %d, stderr %q; want 2 and a message naming the job and its active run", code, stderr)
		}
		runs, err := c.c.ListRuns(ctx, "ov-forbid", 10)
		if err != nil || len(runs) != 1 {
			t.Errorf("ListRuns(ov-forbid) = %d runs, %v; want only the first", len(runs), err)
		}

		c.touch("release-forbid")
		if run := c.wait(first.GetId()); run.GetState() != batonv1.RunState_RUN_STATE_SUCCEEDED {
			t.Fatalf("first run = %v (%s), want SUCCEEDED", run.GetState(), run.GetError())
		}
		// Once the first run is over, the job may run again.
		if run := c.wait(c.startRun("ov-forbid", nil).GetId()); run.GetState() != batonv1.RunState_RUN_STATE_SUCCEEDED {
			t.Errorf("run after the first ended = %v (%s), want SUCCEEDED", run.GetState(), run.GetError())
		}
	})

	t.Run("queue", func(t *testing.T) {
		first := c.startRun("ov-queue", nil)
		c.waitTasks(first.GetId(), 30*time.Second, "the first run's task to run", func(r *batonv1.Run) bool {
			return task(r, "hold-queue").GetState() == batonv1.TaskState_TASK_STATE_RUNNING
		})
		second := c.startRun("ov-queue", nil)
		if second.GetState() != batonv1.RunState_RUN_STATE_QUEUED {
			t.Fatalf("second run = %v, want QUEUED", second.GetState())
		}
		// Still queued while the first holds on, and nothing of it ran.
		if got := c.getRun(second.GetId()); got.GetState() != batonv1.RunState_RUN_STATE_QUEUED {
			t.Errorf("second run while the first is active = %v, want QUEUED", got.GetState())
		}
		if got := c.ranIn("hold-queue", second.GetId()); got != nil {
			t.Errorf("the queued run's task ran %v while the first was active", got)
		}

		c.touch("release-queue")
		r1 := c.wait(first.GetId())
		r2 := c.wait(second.GetId())
		for _, r := range []*batonv1.Run{r1, r2} {
			if r.GetState() != batonv1.RunState_RUN_STATE_SUCCEEDED {
				t.Errorf("run %d = %v (%s), want SUCCEEDED", r.GetId(), r.GetState(), r.GetError())
			}
		}
		end1, start2 := r1.GetEndTime().AsTime(), r2.GetStartTime().AsTime()
		if r1.GetEndTime() == nil || r2.GetStartTime() == nil || start2.Before(end1) {
			t.Errorf("queued run started at %v, want at or after the first run's end %v", start2, end1)
		}
		if got := c.ranIn("hold-queue", second.GetId()); len(got) != 1 {
			t.Errorf("the queued run's task ran %d times, want once", len(got))
		}
	})

	t.Run("allow", func(t *testing.T) {
		r1 := c.startRun("ov-allow", nil)
		r2 := c.startRun("ov-allow", nil)
		// Neither child can end before the release, so seeing both proves
		// both runs were running at once.
		waitFor(t, 30*time.Second, "both runs' tasks to run at once", func() bool {
			return len(c.ranIn("hold-allow", r1.GetId())) == 1 && len(c.ranIn("hold-allow", r2.GetId())) == 1
		})
		for _, r := range []*batonv1.Run{r1, r2} {
			if got := c.getRun(r.GetId()); got.GetState() != batonv1.RunState_RUN_STATE_RUNNING {
				t.Errorf("run %d = %v, want RUNNING", r.GetId(), got.GetState())
			}
		}
		c.touch("release-allow")
		for _, r := range []*batonv1.Run{r1, r2} {
			if got := c.wait(r.GetId()); got.GetState() != batonv1.RunState_RUN_STATE_SUCCEEDED {
				t.Errorf("run %d = %v (%s), want SUCCEEDED", r.GetId(), got.GetState(), got.GetError())
			}
		}
	})
}
