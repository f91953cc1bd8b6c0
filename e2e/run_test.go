package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/batonhq/baton/client"
	batonv1 "github.com/batonhq/baton/gen/baton/v1"
)

// fiveTasks has one task that exits with params.transform_exit, its
// downstream, a failure handler, and an independent sibling on the other
// agent.
const fiveTasks = `
name: five
params: {transform_exit: "3"}
tasks:
  - name: extract
    runs_on: {labels: {role: ssis}}
    run: [TASK, ok]
  - name: transform
    needs: [extract]
    runs_on: {labels: {role: ssis}}
    run: [TASK, exit, '${{ params.transform_exit }}']
  - name: load
    needs: [transform]
    run: [TASK, ok]
  - name: audit
    runs_on: {labels: {role: sql}}
    run: [TASK, ok]
  - name: on-failure
    needs: [{task: transform, status: failure}]
    run: [TASK, ok]
`

func TestRealOutcomeComesBack(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	c.agent("etl-ssis", 2, "role=ssis")
	c.agent("etl-sql", 2, "role=sql")
	c.waitAgents(2)
	c.apply(fiveTasks)

	_, stderr, code := c.cli("run", "start", "five", "--wait")
	if code != 1 {
		t.Fatalf("baton run start --wait exited %d, want 1 (run failed); stderr: %s", code, stderr)
	}
	run := c.getRun(c.latestRun("five").GetId())
	if run.GetState() != batonv1.RunState_RUN_STATE_FAILED {
		t.Fatalf("run state = %v, want FAILED", run.GetState())
	}

	tr := task(run, "transform")
	if tr.GetState() != batonv1.TaskState_TASK_STATE_FAILED || tr.ExitCode == nil || tr.GetExitCode() != 3 {
		t.Errorf("transform = %v exit %v, want FAILED with exit code 3", tr.GetState(), tr.ExitCode)
	}
	if !strings.Contains(tr.GetStderrTail(), "task transform failing with exit code 3") {
		t.Errorf("transform stderr tail = %q, want the child's message", tr.GetStderrTail())
	}
	for name, want := range map[string]batonv1.TaskState{
		"extract": batonv1.TaskState_TASK_STATE_SUCCEEDED, "load": batonv1.TaskState_TASK_STATE_BLOCKED,
		"audit": batonv1.TaskState_TASK_STATE_SUCCEEDED, "on-failure": batonv1.TaskState_TASK_STATE_SUCCEEDED,
	} {
		if got := task(run, name).GetState(); got != want {
			t.Errorf("task %s state = %v, want %v", name, got, want)
		}
	}

	// What really ran, as the children recorded it.
	if got := c.ran("load"); got != nil {
		t.Errorf("load ran %v, want never (its upstream failed)", got)
	}
	if got := c.ran("on-failure"); len(got) != 1 {
		t.Errorf("on-failure ran %d times, want once", len(got))
	}
	audit := c.ran("audit")
	if len(audit) != 1 || !strings.Contains(audit[0], "agent=etl-sql") {
		t.Errorf("audit ran as %v, want once on etl-sql", audit)
	}
	extract := c.ran("extract")
	if len(extract) != 1 || !strings.Contains(extract[0], "agent=etl-ssis") {
		t.Errorf("extract ran as %v, want once on etl-ssis", extract)
	}
	if got := task(run, "audit").GetAgent(); got != "etl-sql" {
		t.Errorf("GetRun: audit agent = %q, want etl-sql", got)
	}

	// The same through REST.
	var rest struct {
		Run struct {
			State string `json:"state"`
			Tasks []struct {
				Task       string `json:"task"`
				State      string `json:"state"`
				ExitCode   *int   `json:"exitCode"`
				StderrTail string `json:"stderrTail"`
			} `json:"tasks"`
		} `json:"run"`
	}
	if code := c.restGet(fmt.Sprintf("/v1/runs/%d", run.GetId()), &rest); code != 200 {
		t.Fatalf("GET /v1/runs/%d = %d", run.GetId(), code)
	}
	if rest.Run.State != "RUN_STATE_FAILED" {
		t.Errorf("REST run state = %q, want RUN_STATE_FAILED", rest.Run.State)
	}
	found := false
	for _, tr := range rest.Run.Tasks {
		if tr.Task == "transform" {
			found = true
			if tr.ExitCode == nil || *tr.ExitCode != 3 || !strings.Contains(tr.StderrTail, "failing with exit code 3") {
				t.Errorf("REST transform = exit %v stderr %q, want exit 3 and the child's message", tr.ExitCode, tr.StderrTail)
			}
		}
	}
	if !found {
		t.Errorf("REST run has no transform task: %+v", rest.Run.Tasks)
	}

	// Without the fault the same job succeeds and the CLI exits 0.
	_, stderr, code = c.cli("run", "start", "five", "--param", "transform_exit=0", "--wait")
	if code != 0 {
		t.Fatalf("baton run start --wait (no fault) exited %d, want 0; stderr: %s", code, stderr)
	}
	run = c.getRun(c.latestRun("five").GetId())
	if run.GetState() != batonv1.RunState_RUN_STATE_SUCCEEDED {
		t.Errorf("run without fault = %v, want SUCCEEDED", run.GetState())
	}
	if got := task(run, "on-failure").GetState(); got != batonv1.TaskState_TASK_STATE_SKIPPED {
		t.Errorf("on-failure without fault = %v, want SKIPPED", got)
	}
	if got := c.ran("load"); len(got) != 1 {
		t.Errorf("load ran %d times after the fix, want once", len(got))
	}
}

func TestOutputsAndRunID(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	c.agent("solo", 4)
	c.waitAgents(1)
	c.apply(`
name: outputs
tasks:
  - {name: count-rows, run: [TASK, output, RowCount=42, Note=hello world]}
  - {name: use-it, needs: [count-rows], run: [TASK, ok]}
  - {name: side, run: [TASK, ok]}
`)
	started, _, err := c.c.StartRun(context.Background(), &client.StartRunParams{Job: "outputs"})
	if err != nil {
		t.Fatal(err)
	}
	run := c.wait(started.GetId())
	if run.GetState() != batonv1.RunState_RUN_STATE_SUCCEEDED {
		t.Fatalf("run = %v (%s), want SUCCEEDED", run.GetState(), run.GetError())
	}
	outs := task(run, "count-rows").GetOutputs()
	if outs["RowCount"] != "42" || outs["Note"] != "hello world" {
		t.Errorf("count-rows outputs = %v, want RowCount=42 and Note=hello world", outs)
	}
	for _, name := range []string{"count-rows", "use-it", "side"} {
		lines := c.ran(name)
		if len(lines) != 1 {
			t.Errorf("%s ran %d times, want once", name, len(lines))
			continue
		}
		if want := fmt.Sprintf("run=%d ", run.GetId()); !strings.HasPrefix(lines[0], want) {
			t.Errorf("%s saw %q, want BATON_RUN_ID %d", name, lines[0], run.GetId())
		}
	}
}
