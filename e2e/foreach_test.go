package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"

	batonv1 "github.com/batonhq/baton/gen/baton/v1"
)

const (
	// forEachItems is how many items the for-each job loops over.
	forEachItems = 1000
	// forEachParallel is the job's max_parallel for its items; the agents
	// have more slots than that, so it is the limit that binds.
	forEachParallel = 20
)

// poisonItems always fail until the test "fixes" them (the fixed mark).
var poisonItems = []string{"3", "141", "500", "777", "999"}

// forEachJob loops over forEachItems items, at most forEachParallel at
// once, each child recording its lifetime; the poison items fail.
func forEachJob() string {
	return fmt.Sprintf(`
name: foreach
tasks:
  - name: per-item
    for_each: {items: %s}
    max_parallel: %d
    retries: 2
    run: [TASK, span, fail-items, '%s', sleep, '0.05']
`, itemsYAML(forEachItems), forEachParallel, strings.Join(poisonItems, ","))
}

// runForEach runs the for-each job over three agents until it ends, and
// checks what the first run must show: the poison items failed after three
// attempts each, every other item succeeded once, and never more than
// forEachParallel children ran at once.
func runForEach(t *testing.T) (*cluster, *batonv1.Run) {
	c := newCluster(t)
	for _, name := range []string{"etl-1", "etl-2", "etl-3"} {
		c.agent(name, 12)
	}
	c.waitAgents(3)
	c.apply(forEachJob())

	began := time.Now()
	run := c.wait(c.startRun("foreach", nil).GetId())
	t.Logf("%d items over 3 agents took %s", forEachItems, time.Since(began).Round(time.Millisecond))
	if run.GetState() != batonv1.RunState_RUN_STATE_FAILED {
		t.Fatalf("run = %v (%s), want FAILED (poison items)", run.GetState(), run.GetError())
	}
	if got := task(run, "per-item").GetState(); got != batonv1.TaskState_TASK_STATE_FAILED {
		t.Errorf("per-item = %v, want FAILED", got)
	}
	poison := map[string]bool{}
	for _, it := range poisonItems {
		poison[it] = true
	}
	items := 0
	for _, tr := range run.GetTasks() {
		if tr.GetTask() != "per-item" || tr.ItemIndex == nil {
			continue
		}
		items++
		want, wantAttempts := batonv1.TaskState_TASK_STATE_SUCCEEDED, int32(1)
		if poison[tr.GetItem()] {
			want, wantAttempts = batonv1.TaskState_TASK_STATE_FAILED, 3
		}
		if tr.GetState() != want || tr.GetAttempts() != wantAttempts {
			t.Errorf("item %q = %v after %d attempts, want %v after %d", tr.GetItem(), tr.GetState(), tr.GetAttempts(), want, wantAttempts)
		}
	}
	if items != forEachItems {
		t.Errorf("run has %d items, want %d", items, forEachItems)
	}
	if n := countItems(run, "per-item", batonv1.TaskState_TASK_STATE_SUCCEEDED); n != forEachItems-len(poisonItems) {
		t.Errorf("%d items succeeded, want %d", n, forEachItems-len(poisonItems))
	}

	// What the children recorded: each good item ran once, each poison
	// item three times.
	counts := itemRuns(c.ranIn("per-item", run.GetId()))
	for i := range forEachItems {
		it := fmt.Sprint(i)
		want := 1
		if poison[it] {
			want = 3
		}
		if counts[it] != want {
			t.Errorf("item %s ran %d times, want %d", it, counts[it], want)
		}
	}
	spans := c.spans("per-item")
	if len(spans) != forEachItems+2*len(poisonItems) {
		t.Errorf("%d children recorded their lifetime, want %d", len(spans), forEachItems+2*len(poisonItems))
	}
	most := maxConcurrent(spans)
	t.Logf("at most %d children ran at once (max_parallel %d)", most, forEachParallel)
	if most > forEachParallel {
		t.Errorf("%d children ran at once, want at most max_parallel %d", most, forEachParallel)
	}
	// The bound must also be reached, or the test proves nothing about it:
	// 36 slots are free, so a scheduler that respects the bound fills it.
	if most < forEachParallel/2 {
		t.Errorf("at most %d children ran at once, want close to max_parallel %d", most, forEachParallel)
	}
	return c, run
}

// itemRuns counts marker lines by item.
func itemRuns(lines []string) map[string]int {
	counts := map[string]int{}
	for _, l := range lines {
		counts[markField(l, "item")]++
	}
	return counts
}

// TestForEach runs 1,000 items over three agents with max_parallel 20 and
// five items that always fail (see runForEach), then fixes those five and
// restarts the run with the CLI: exactly those five items run again, the
// other 995 are kept, and the run succeeds.
func TestForEach(t *testing.T) {
	t.Parallel()
	c, run := runForEach(t)
	id := run.GetId()
	c.touch("fixed")
	if _, stderr, code := c.cli("run", "restart", fmt.Sprint(id)); code != 0 {
		t.Fatalf("baton run restart exited %d; stderr: %s", code, stderr)
	}
	run = c.wait(id)
	if run.GetState() != batonv1.RunState_RUN_STATE_SUCCEEDED || run.GetRestartCount() != 1 {
		t.Fatalf("restarted run = %v restart_count %d (%s), want SUCCEEDED, 1", run.GetState(), run.GetRestartCount(), run.GetError())
	}
	if n := countItems(run, "per-item", batonv1.TaskState_TASK_STATE_SUCCEEDED); n != forEachItems {
		t.Errorf("%d items succeeded after the restart, want all %d", n, forEachItems)
	}
	counts := itemRuns(c.ranIn("per-item", id))
	total := 0
	for _, n := range counts {
		total += n
	}
	if want := forEachItems + 3*len(poisonItems); total != want {
		t.Errorf("children ran %d times in all, want %d (the five fixed items once more)", total, want)
	}
	for _, it := range poisonItems {
		if counts[it] != 4 {
			t.Errorf("poison item %s ran %d times, want 4 (3 before the restart, 1 after)", it, counts[it])
		}
	}
	restarted := 0
	for _, a := range c.attempts(id, "per-item") {
		if a.GetKind() == batonv1.AttemptKind_ATTEMPT_KIND_RESTART {
			restarted++
			if a.GetState() != batonv1.AttemptState_ATTEMPT_STATE_SUCCEEDED || a.GetRestart() != 1 {
				t.Errorf("restart attempt %d of item %d = %v restart %d, want SUCCEEDED in generation 1",
					a.GetId(), a.GetItemIndex(), a.GetState(), a.GetRestart())
			}
		}
	}
	if restarted != len(poisonItems) {
		t.Errorf("%d RESTART attempts, want %d", restarted, len(poisonItems))
	}
}
