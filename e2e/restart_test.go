package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	batonv1 "github.com/batonhq/baton/gen/baton/v1"
)

// nightlyLoad is a nightly-load style job in which stage-products fails on
// the first run only (fail-once), which blocks count-rows and load-facts.
const nightlyLoad = `
name: nightly-load
params: {load_date: "2026-11-21"}
tasks:
  - {name: stage-customers, stage: 1, run: [TASK, ok]}
  - {name: stage-orders, stage: 1, run: [TASK, ok]}
  - {name: stage-products, stage: 1, run: [TASK, fail-once]}
  - {name: count-rows, stage: 2, run: [TASK, output, RowCount=3]}
  - {name: load-facts, needs: [count-rows], run: [TASK, ok]}
  - {name: audit, run: [TASK, ok]}
`

// TestRestartResumesFailedWork restarts a failed run with the CLI: the run
// keeps its id, restart_count becomes 1, the tasks that succeeded do not
// run again, the failed task and its blocked downstream do, the run
// succeeds, and the history shows both attempts of the failed task.
func TestRestartResumesFailedWork(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	c.agent("etl-1", 3)
	c.agent("etl-2", 3)
	c.waitAgents(2)
	c.apply(nightlyLoad)

	id := c.startRun("nightly-load", nil).GetId()
	run := c.wait(id)
	if run.GetState() != batonv1.RunState_RUN_STATE_FAILED {
		t.Fatalf("first run = %v (%s), want FAILED", run.GetState(), run.GetError())
	}
	for name, want := range map[string]batonv1.TaskState{
		"stage-customers": batonv1.TaskState_TASK_STATE_SUCCEEDED,
		"stage-orders":    batonv1.TaskState_TASK_STATE_SUCCEEDED,
		"stage-products":  batonv1.TaskState_TASK_STATE_FAILED,
		"count-rows":      batonv1.TaskState_TASK_STATE_BLOCKED,
		"load-facts":      batonv1.TaskState_TASK_STATE_BLOCKED,
		"audit":           batonv1.TaskState_TASK_STATE_SUCCEEDED,
	} {
		if got := task(run, name).GetState(); got != want {
			t.Errorf("first run: %s = %v, want %v", name, got, want)
		}
	}

	stdout, stderr, code := c.cli("run", "restart", fmt.Sprint(id), "--wait")
	if code != 0 {
		t.Fatalf("baton run restart --wait exited %d, want 0; stdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}
	run = c.getRun(id)
	if run.GetId() != id || run.GetState() != batonv1.RunState_RUN_STATE_SUCCEEDED || run.GetRestartCount() != 1 {
		t.Fatalf("restarted run = id %d %v restart_count %d (%s), want id %d SUCCEEDED restart_count 1",
			run.GetId(), run.GetState(), run.GetRestartCount(), run.GetError(), id)
	}
	if runs, err := c.c.ListRuns(context.Background(), "nightly-load", 10); err != nil || len(runs) != 1 {
		t.Errorf("ListRuns = %d runs, %v; want the one run, restarted in place", len(runs), err)
	}
	// Kept tasks ran once; stage-products failed and ran again; the tasks
	// it blocked ran once, after the restart.
	for name, want := range map[string]int{
		"stage-customers": 1,
		"stage-orders":    1,
		"audit":           1,
		"stage-products":  2,
		"count-rows":      1,
		"load-facts":      1,
	} {
		lines := c.ran(name)
		if len(lines) != want {
			t.Errorf("%s ran %d times (%v), want %d", name, len(lines), lines, want)
		}
		for _, l := range lines {
			if markField(l, "run") != fmt.Sprint(id) {
				t.Errorf("%s ran as %q, want BATON_RUN_ID %d", name, l, id)
			}
		}
	}
	if got := task(run, "count-rows").GetOutputs()["RowCount"]; got != "3" {
		t.Errorf("count-rows RowCount after restart = %q, want 3", got)
	}

	// The history through the API: both attempts of the failed task.
	atts := c.attempts(id, "stage-products")
	if len(atts) != 2 {
		t.Fatalf("stage-products has %d attempts, want 2: %v", len(atts), atts)
	}
	wantKinds := []batonv1.AttemptKind{batonv1.AttemptKind_ATTEMPT_KIND_FIRST, batonv1.AttemptKind_ATTEMPT_KIND_RESTART}
	wantStates := []batonv1.AttemptState{batonv1.AttemptState_ATTEMPT_STATE_FAILED, batonv1.AttemptState_ATTEMPT_STATE_SUCCEEDED}
	for i, a := range atts {
		if a.GetKind() != wantKinds[i] || a.GetState() != wantStates[i] || a.GetRestart() != int32(i) {
			t.Errorf("stage-products attempt %d = %v %v restart %d, want %v %v restart %d",
				i+1, a.GetKind(), a.GetState(), a.GetRestart(), wantKinds[i], wantStates[i], i)
		}
	}
	// The kept tasks have only their first attempt.
	for _, name := range []string{"stage-customers", "stage-orders", "audit"} {
		if atts := c.attempts(id, name); len(atts) != 1 || atts[0].GetKind() != batonv1.AttemptKind_ATTEMPT_KIND_FIRST {
			t.Errorf("%s attempts = %v, want only its first", name, atts)
		}
	}

	// And through the CLI.
	stdout, stderr, code = c.cli("run", "history", fmt.Sprint(id), "-o", "json")
	if code != 0 {
		t.Fatalf("baton run history -o json exited %d; stderr: %s", code, stderr)
	}
	var hist struct {
		Attempts []struct {
			Task  string `json:"task"`
			Kind  string `json:"kind"`
			State string `json:"state"`
		} `json:"attempts"`
	}
	if err := json.Unmarshal([]byte(stdout), &hist); err != nil {
		t.Fatalf("baton run history -o json: %v\n%s", err, stdout)
	}
	var kinds []string
	for _, a := range hist.Attempts {
		if a.Task == "stage-products" {
			kinds = append(kinds, a.Kind+"/"+a.State)
		}
	}
	if want := "ATTEMPT_KIND_FIRST/ATTEMPT_STATE_FAILED ATTEMPT_KIND_RESTART/ATTEMPT_STATE_SUCCEEDED"; strings.Join(kinds, " ") != want {
		t.Errorf("baton run history: stage-products attempts %v, want %s", kinds, want)
	}
	stdout, stderr, code = c.cli("run", "history", fmt.Sprint(id), "--task", "stage-products")
	if code != 0 || strings.Count(stdout, "stage-products") != 2 {
		t.Errorf("baton run history --task stage-products = exit %d, stdout:\n%s\nstderr: %s\nwant 0 and two attempts", code, stdout, stderr)
	}
}

// TestRestartActiveRunRefused restarts a run that is still running: the
// API refuses with FAILED_PRECONDITION and the CLI exits 2.
func TestRestartActiveRunRefused(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	c.agent("solo", 2)
	c.waitAgents(1)
	c.apply(`
name: busy
tasks: [{name: hold, run: [TASK, wait-file, release]}]
`)
	id := c.startRun("busy", nil).GetId()
	ctx, cancel := context.WithTimeout(context.Background(), rpcTimeout)
	defer cancel()
	_, err := c.runs().RestartRun(ctx, &batonv1.RestartRunRequest{RunId: id})
	if status.Code(err) != codes.FailedPrecondition {
		t.Errorf("RestartRun(active run) = %v, want FAILED_PRECONDITION", err)
	}
	_, stderr, code := c.cli("run", "restart", fmt.Sprint(id))
	if code != 2 {
		t.Errorf("baton run restart (active run) exited %d, want 2; stderr: %s", code, stderr)
	}
	c.touch("release")
	run := c.wait(id)
	if run.GetState() != batonv1.RunState_RUN_STATE_SUCCEEDED || run.GetRestartCount() != 0 {
		t.Errorf("run = %v restart_count %d, want SUCCEEDED, never restarted", run.GetState(), run.GetRestartCount())
	}
	if got := c.ran("hold"); len(got) != 1 {
		t.Errorf("hold ran %d times, want once", len(got))
	}
}
