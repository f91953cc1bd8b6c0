package e2e

import (
	"testing"

	batonv1 "github.com/batonhq/baton/gen/baton/v1"
)

// branchJob branches on count-rows' RowCount twice: with edge conditions
// (notify-empty, load-rows) and with task conditions (report-empty,
// report-rows). after-load waits on load-rows, so it is skipped with it;
// finish joins both edge branches with trigger: any.
const branchJob = `
name: branch
params: {rows: "0"}
tasks:
  - name: count-rows
    run: [TASK, output, 'RowCount=${{ params.rows }}']
  - name: notify-empty
    needs: [{task: count-rows, when: 'int(tasks["count-rows"].outputs.RowCount) == 0'}]
    run: [TASK, ok]
  - name: load-rows
    needs: [{task: count-rows, when: 'int(tasks["count-rows"].outputs.RowCount) > 0'}]
    run: [TASK, ok]
  - name: after-load
    needs: [load-rows]
    run: [TASK, ok]
  - name: report-empty
    needs: [count-rows]
    when: int(tasks["count-rows"].outputs.RowCount) == 0
    run: [TASK, ok]
  - name: report-rows
    needs: [count-rows]
    when: int(tasks["count-rows"].outputs.RowCount) > 0
    run: [TASK, ok]
  - name: finish
    needs: [notify-empty, load-rows]
    trigger: any
    run: [TASK, ok]
`

// TestBranchOnOutput runs the branch job with RowCount 0 and then 7: each
// time exactly the tasks of the matching branch run (as the children
// record), the others are skipped, and the run succeeds.
func TestBranchOnOutput(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	c.agent("solo", 4)
	c.waitAgents(1)
	c.apply(branchJob)

	const (
		ran     = batonv1.TaskState_TASK_STATE_SUCCEEDED
		skipped = batonv1.TaskState_TASK_STATE_SKIPPED
	)
	tests := []struct {
		rows string
		want map[string]batonv1.TaskState
	}{
		{"0", map[string]batonv1.TaskState{
			"count-rows": ran, "notify-empty": ran, "load-rows": skipped, "after-load": skipped,
			"report-empty": ran, "report-rows": skipped, "finish": ran,
		}},
		{"7", map[string]batonv1.TaskState{
			"count-rows": ran, "notify-empty": skipped, "load-rows": ran, "after-load": ran,
			"report-empty": skipped, "report-rows": ran, "finish": ran,
		}},
	}
	for _, tc := range tests {
		started := c.startRun("branch", map[string]string{"rows": tc.rows})
		run := c.wait(started.GetId())
		if run.GetState() != batonv1.RunState_RUN_STATE_SUCCEEDED {
			t.Errorf("rows=%s: run = %v (%s), want SUCCEEDED", tc.rows, run.GetState(), run.GetError())
		}
		if got := task(run, "count-rows").GetOutputs()["RowCount"]; got != tc.rows {
			t.Errorf("rows=%s: count-rows RowCount = %q, want %q", tc.rows, got, tc.rows)
		}
		for name, want := range tc.want {
			tr := task(run, name)
			if tr == nil {
				t.Errorf("rows=%s: run has no task %s", tc.rows, name)
				continue
			}
			if tr.GetState() != want {
				t.Errorf("rows=%s: %s = %v, want %v", tc.rows, name, tr.GetState(), want)
			}
			wantRuns := 0
			if want == ran {
				wantRuns = 1
			}
			if got := c.ranIn(name, run.GetId()); len(got) != wantRuns {
				t.Errorf("rows=%s: %s ran %d times (%v), want %d", tc.rows, name, len(got), got, wantRuns)
			}
		}
	}
}
