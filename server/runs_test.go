package server_test

import (
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/testing/protocmp"

	batonv1 "github.com/batonhq/baton/gen/baton/v1"
)

// applyJob applies a job file or fails the test.
func applyJob(t *testing.T, b *testBundle, src string) *batonv1.Job {
	t.Helper()
	res, err := b.jobs.ApplyJob(testContext(t), &batonv1.ApplyJobRequest{Source: src})
	if err != nil {
		t.Fatalf("ApplyJob: %v", err)
	}
	return res.GetJob()
}

// startRun starts a run of job or fails the test.
func startRun(t *testing.T, b *testBundle, job string) *batonv1.Run {
	t.Helper()
	res, err := b.runs.StartRun(testContext(t), &batonv1.StartRunRequest{Job: job})
	if err != nil {
		t.Fatalf("StartRun(%s): %v", job, err)
	}
	if !res.GetCreated() {
		t.Fatalf("StartRun(%s) created = false, want true", job)
	}
	return res.GetRun()
}

// waitEnded follows WatchRun until the server ends the stream, which it
// does once the run is over, and returns the events and the run.
func waitEnded(t *testing.T, runs batonv1.RunServiceClient, id int64) ([]*batonv1.RunEvent, *batonv1.Run) {
	t.Helper()
	ctx := testContext(t)
	stream, err := runs.WatchRun(ctx, &batonv1.WatchRunRequest{RunId: id})
	if err != nil {
		t.Fatalf("WatchRun(%d): %v", id, err)
	}
	var evs []*batonv1.RunEvent
	for {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("WatchRun(%d) after %d events: %v", id, len(evs), err)
		}
		evs = append(evs, resp.GetEvent())
	}
	run, err := runs.GetRun(ctx, &batonv1.GetRunRequest{RunId: id})
	if err != nil {
		t.Fatalf("GetRun(%d): %v", id, err)
	}
	return evs, run.GetRun()
}

// cancelAndWait cancels a run and waits until it is over.
func cancelAndWait(t *testing.T, b *testBundle, id int64) *batonv1.Run {
	t.Helper()
	if _, err := b.runs.CancelRun(testContext(t), &batonv1.CancelRunRequest{RunId: id, Reason: "test"}); err != nil {
		t.Fatalf("CancelRun(%d): %v", id, err)
	}
	_, run := waitEnded(t, b.runs, id)
	if run.GetState() != batonv1.RunState_RUN_STATE_CANCELLED {
		t.Fatalf("run %d after cancel = %v, want RUN_STATE_CANCELLED", id, run.GetState())
	}
	return run
}

// countRuns returns how many runs ListRuns lists for job.
func countRuns(t *testing.T, b *testBundle, job string) int {
	t.Helper()
	res, err := b.runs.ListRuns(testContext(t), &batonv1.ListRunsRequest{Job: job, PageSize: 1000})
	if err != nil {
		t.Fatalf("ListRuns(%s): %v", job, err)
	}
	return len(res.GetRuns())
}

// TestStartRunInvalid: a StartRun the API refuses gets the documented code,
// names the field at fault, and creates no run.
func TestStartRunInvalid(t *testing.T) {
	t.Parallel()
	b := setup(t)
	applyJob(t, b, etlJob)
	applyJob(t, b, "name: plain\ntasks:\n  - name: a\n    run: [/bin/true]\n")
	tests := []struct {
		name  string
		req   *batonv1.StartRunRequest
		code  codes.Code
		field string
	}{
		{"no job", &batonv1.StartRunRequest{}, codes.InvalidArgument, "job"},
		{"unknown job", &batonv1.StartRunRequest{Job: "nope"}, codes.NotFound, ""},
		{"undeclared param", &batonv1.StartRunRequest{Job: "etl", Params: map[string]string{"dya": "tue"}}, codes.InvalidArgument, "params.dya"},
		{"param of a job without params", &batonv1.StartRunRequest{Job: "plain", Params: map[string]string{"day": "tue"}}, codes.InvalidArgument, "params.day"},
		{"param value too long", &batonv1.StartRunRequest{Job: "etl", Params: map[string]string{"day": strings.Repeat("x", 64<<10+1)}}, codes.InvalidArgument, "params.day"},
		{"request_id too long", &batonv1.StartRunRequest{Job: "etl", RequestId: strings.Repeat("r", 201)}, codes.InvalidArgument, "request_id"},
		{"request_id of too many characters", &batonv1.StartRunRequest{Job: "etl", RequestId: strings.Repeat("é", 201)}, codes.InvalidArgument, "request_id"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := b.runs.StartRun(testContext(t), tc.req)
			if tc.field != "" {
				wantInvalid(t, "StartRun", err, tc.field)
				return
			}
			wantCode(t, "StartRun", err, tc.code)
		})
	}
	if n := countRuns(t, b, ""); n != 0 {
		t.Errorf("ListRuns after refused StartRuns = %d runs, want 0", n)
	}
	// The longest request id allowed is accepted: 200 characters, however
	// many bytes they take.
	long := strings.Repeat("é", 200)
	res, err := b.runs.StartRun(testContext(t), &batonv1.StartRunRequest{Job: "etl", RequestId: long})
	if err != nil {
		t.Fatalf("StartRun with a 200-character (400-byte) request_id: %v", err)
	}
	if got := res.GetRun().GetRequestId(); got != long {
		t.Errorf("run request_id = %q, want %q", got, long)
	}
}

// TestStartRunGetRun: a started run has the job's parameter defaults with
// the request's overrides, and GetRun shows it with every task instance: a
// run no agent can take stays running with its first task ready.
func TestStartRunGetRun(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := testContext(t)
	applyJob(t, b, etlJob)
	res, err := b.runs.StartRun(ctx, &batonv1.StartRunRequest{Job: "etl", Params: map[string]string{"day": "tue"}})
	if err != nil {
		t.Fatalf("StartRun: %v", err)
	}
	run := res.GetRun()
	if run.GetId() <= 0 || run.GetJob() != "etl" || run.GetJobVersion() != 1 || run.GetState() != batonv1.RunState_RUN_STATE_RUNNING {
		t.Errorf("StartRun = id %d job %s v%d %v, want a positive id, etl v1 running", run.GetId(), run.GetJob(), run.GetJobVersion(), run.GetState())
	}
	if diff := cmp.Diff(map[string]string{"day": "tue", "region": "eu"}, run.GetParams()); diff != "" {
		t.Errorf("run params (-want +got):\n%s", diff)
	}
	if run.GetCreateTime() == nil || run.GetStartTime() == nil || run.GetEndTime() != nil {
		t.Errorf("run times = create %v start %v end %v, want create and start set, no end", run.GetCreateTime(), run.GetStartTime(), run.GetEndTime())
	}

	got, err := b.runs.GetRun(ctx, &batonv1.GetRunRequest{RunId: run.GetId()})
	if err != nil {
		t.Fatalf("GetRun: %v", err)
	}
	var tasks []string
	for _, tr := range got.GetRun().GetTasks() {
		tasks = append(tasks, tr.GetTask()+"="+tr.GetState().String())
	}
	want := []string{"extract=TASK_STATE_READY", "load=TASK_STATE_PENDING"}
	if diff := cmp.Diff(want, tasks); diff != "" {
		t.Errorf("GetRun tasks (-want +got):\n%s", diff)
	}
	got.GetRun().Tasks = nil
	if diff := cmp.Diff(run, got.GetRun(), protocmp.Transform()); diff != "" {
		t.Errorf("GetRun differs from what StartRun returned (-start +get):\n%s", diff)
	}

	for _, id := range []int64{0, -1, run.GetId() + 1} {
		_, err := b.runs.GetRun(ctx, &batonv1.GetRunRequest{RunId: id})
		wantCode(t, "GetRun of an unknown run", err, codes.NotFound)
		_, err = b.runs.CancelRun(ctx, &batonv1.CancelRunRequest{RunId: id})
		wantCode(t, "CancelRun of an unknown run", err, codes.NotFound)
		_, err = b.runs.RestartRun(ctx, &batonv1.RestartRunRequest{RunId: id})
		wantCode(t, "RestartRun of an unknown run", err, codes.NotFound)
		_, err = b.runs.ListAttempts(ctx, &batonv1.ListAttemptsRequest{RunId: id})
		wantCode(t, "ListAttempts of an unknown run", err, codes.NotFound)
		_, err = b.runs.GetTaskLogs(ctx, &batonv1.GetTaskLogsRequest{RunId: id, Task: "extract"})
		wantCode(t, "GetTaskLogs of an unknown run", err, codes.NotFound)
		stream, err := b.runs.WatchRun(ctx, &batonv1.WatchRunRequest{RunId: id})
		if err == nil {
			_, err = stream.Recv()
		}
		wantCode(t, "WatchRun of an unknown run", err, codes.NotFound)
	}
}

// TestStartRunIdempotent: a repeated request_id returns the run it created
// (created=false), also while that run is active under overlap: forbid,
// and starts nothing; another request_id is a new request.
func TestStartRunIdempotent(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := testContext(t)
	applyJob(t, b, etlJob)
	first, err := b.runs.StartRun(ctx, &batonv1.StartRunRequest{Job: "etl", RequestId: "nightly-2026-12-07"})
	if err != nil {
		t.Fatalf("StartRun: %v", err)
	}
	second, err := b.runs.StartRun(ctx, &batonv1.StartRunRequest{Job: "etl", RequestId: "nightly-2026-12-07"})
	if err != nil {
		t.Fatalf("StartRun(same request_id): %v", err)
	}
	if !first.GetCreated() || second.GetCreated() {
		t.Errorf("StartRun created = %t then %t, want true then false", first.GetCreated(), second.GetCreated())
	}
	if diff := cmp.Diff(first.GetRun(), second.GetRun(), protocmp.Transform()); diff != "" {
		t.Errorf("StartRun(same request_id) returned another run (-first +second):\n%s", diff)
	}
	if second.GetRun().GetRequestId() != "nightly-2026-12-07" {
		t.Errorf("run request_id = %q, want nightly-2026-12-07", second.GetRun().GetRequestId())
	}
	if n := countRuns(t, b, "etl"); n != 1 {
		t.Errorf("ListRuns(etl) = %d runs, want 1", n)
	}
	_, err = b.runs.StartRun(ctx, &batonv1.StartRunRequest{Job: "etl", RequestId: "nightly-2026-12-08"})
	wantCode(t, "StartRun(new request_id) while the first run is active", err, codes.AlreadyExists)
}

// TestOverlap: with overlap: forbid (the default) a second StartRun while a
// run is active is ALREADY_EXISTS and creates nothing, and is accepted
// once the run is over; overlap: queue queues the second run and allow
// runs it at once.
func TestOverlap(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := testContext(t)
	applyJob(t, b, etlJob)
	applyJob(t, b, overlap(withName(etlJob, "queued"), "queue"))
	applyJob(t, b, overlap(withName(etlJob, "allowed"), "allow"))

	first := startRun(t, b, "etl")
	_, err := b.runs.StartRun(ctx, &batonv1.StartRunRequest{Job: "etl"})
	st := wantCode(t, "second StartRun(etl)", err, codes.AlreadyExists)
	if !strings.Contains(st.Message(), "overlap") {
		t.Errorf("ALREADY_EXISTS message %q does not say why (overlap)", st.Message())
	}
	if n := countRuns(t, b, "etl"); n != 1 {
		t.Errorf("ListRuns(etl) after a refused StartRun = %d runs, want 1", n)
	}
	cancelAndWait(t, b, first.GetId())
	if second := startRun(t, b, "etl"); second.GetState() != batonv1.RunState_RUN_STATE_RUNNING {
		t.Errorf("StartRun(etl) after the first run ended = %v, want running", second.GetState())
	}

	startRun(t, b, "queued")
	if q := startRun(t, b, "queued"); q.GetState() != batonv1.RunState_RUN_STATE_QUEUED {
		t.Errorf("second StartRun(queued) = %v, want RUN_STATE_QUEUED", q.GetState())
	}
	startRun(t, b, "allowed")
	if a := startRun(t, b, "allowed"); a.GetState() != batonv1.RunState_RUN_STATE_RUNNING {
		t.Errorf("second StartRun(allowed) = %v, want RUN_STATE_RUNNING", a.GetState())
	}
}

// TestCancelRun: cancelling an active run ends it cancelled with its
// instances cancelled and the reason recorded; cancelling it again is
// FAILED_PRECONDITION. A queued run is cancelled without ever running.
func TestCancelRun(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := testContext(t)
	applyJob(t, b, overlap(etlJob, "queue"))
	run := startRun(t, b, "etl")
	queued := startRun(t, b, "etl")

	res, err := b.runs.CancelRun(ctx, &batonv1.CancelRunRequest{RunId: run.GetId(), Reason: "wrong day"})
	if err != nil {
		t.Fatalf("CancelRun: %v", err)
	}
	if s := res.GetRun().GetState(); s != batonv1.RunState_RUN_STATE_CANCELLING && s != batonv1.RunState_RUN_STATE_CANCELLED {
		t.Errorf("CancelRun = %v, want cancelling or cancelled", s)
	}
	evs, got := waitEnded(t, b.runs, run.GetId())
	if got.GetState() != batonv1.RunState_RUN_STATE_CANCELLED || got.GetEndTime() == nil || !strings.Contains(got.GetError(), "wrong day") {
		t.Errorf("cancelled run = %v end %v error %q, want cancelled with an end time and the reason", got.GetState(), got.GetEndTime(), got.GetError())
	}
	for _, tr := range got.GetTasks() {
		if tr.GetState() != batonv1.TaskState_TASK_STATE_CANCELLED {
			t.Errorf("task %s of the cancelled run = %v, want TASK_STATE_CANCELLED", tr.GetTask(), tr.GetState())
		}
	}
	if last := evs[len(evs)-1]; last.GetRunState() != batonv1.RunState_RUN_STATE_CANCELLED || last.GetTask() != "" {
		t.Errorf("last event = %v, want the run-level RUN_STATE_CANCELLED event", last)
	}
	for i := 1; i < len(evs); i++ {
		if evs[i].GetCursor() <= evs[i-1].GetCursor() || evs[i].GetRunId() != run.GetId() {
			t.Errorf("event %d = cursor %d run %d after cursor %d, want increasing cursors of run %d",
				i, evs[i].GetCursor(), evs[i].GetRunId(), evs[i-1].GetCursor(), run.GetId())
		}
	}

	_, err = b.runs.CancelRun(ctx, &batonv1.CancelRunRequest{RunId: run.GetId()})
	wantCode(t, "CancelRun of a cancelled run", err, codes.FailedPrecondition)

	// The queued run took the first one's place; cancel it, then watch
	// from the last cursor: nothing more is sent and the stream ends.
	cancelAndWait(t, b, queued.GetId())
	stream, err := b.runs.WatchRun(ctx, &batonv1.WatchRunRequest{RunId: run.GetId(), AfterCursor: evs[len(evs)-1].GetCursor()})
	if err != nil {
		t.Fatalf("WatchRun(after last cursor): %v", err)
	}
	if ev, err := stream.Recv(); !errors.Is(err, io.EOF) {
		t.Errorf("WatchRun(after last cursor) = %v, %v, want the stream to end", ev, err)
	}
}

// TestRestartRun: an active run is not restarted (FAILED_PRECONDITION); a
// bad mode or from_task is INVALID_ARGUMENT naming the field; a cancelled
// run restarts under the same id with restart_count 1.
func TestRestartRun(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := testContext(t)
	applyJob(t, b, etlJob)
	run := startRun(t, b, "etl")

	_, err := b.runs.RestartRun(ctx, &batonv1.RestartRunRequest{RunId: run.GetId()})
	wantCode(t, "RestartRun of an active run", err, codes.FailedPrecondition)

	cancelAndWait(t, b, run.GetId())
	fromTask := batonv1.RestartMode_RESTART_MODE_FROM_TASK
	tests := []struct {
		name  string
		req   *batonv1.RestartRunRequest
		field string
	}{
		{"from an unknown task", &batonv1.RestartRunRequest{RunId: run.GetId(), Mode: fromTask, FromTask: "nope"}, "from_task"},
		{"from_task missing", &batonv1.RestartRunRequest{RunId: run.GetId(), Mode: fromTask}, "from_task"},
		{"from_task without its mode", &batonv1.RestartRunRequest{RunId: run.GetId(), FromTask: "load"}, "from_task"},
		{"from_task with mode all", &batonv1.RestartRunRequest{RunId: run.GetId(), Mode: batonv1.RestartMode_RESTART_MODE_ALL, FromTask: "load"}, "from_task"},
		{"unknown mode", &batonv1.RestartRunRequest{RunId: run.GetId(), Mode: 42}, "mode"},
	}
	for _, tc := range tests {
		_, err := b.runs.RestartRun(ctx, tc.req)
		wantInvalid(t, "RestartRun "+tc.name, err, tc.field)
	}
	if got, _ := b.runs.GetRun(ctx, &batonv1.GetRunRequest{RunId: run.GetId()}); got.GetRun().GetState() != batonv1.RunState_RUN_STATE_CANCELLED || got.GetRun().GetRestartCount() != 0 {
		t.Errorf("run after refused restarts = %v restart_count %d, want cancelled, 0", got.GetRun().GetState(), got.GetRun().GetRestartCount())
	}

	res, err := b.runs.RestartRun(ctx, &batonv1.RestartRunRequest{RunId: run.GetId(), Mode: fromTask, FromTask: "load", Reason: "again"})
	if err != nil {
		t.Fatalf("RestartRun: %v", err)
	}
	got := res.GetRun()
	if got.GetId() != run.GetId() || got.GetState() != batonv1.RunState_RUN_STATE_RUNNING || got.GetRestartCount() != 1 ||
		got.GetRestartTime() == nil || got.GetEndTime() != nil {
		t.Errorf("RestartRun = id %d %v restart_count %d restart_time %v end %v, want id %d running, 1, a restart time, no end",
			got.GetId(), got.GetState(), got.GetRestartCount(), got.GetRestartTime(), got.GetEndTime(), run.GetId())
	}
	_, err = b.runs.RestartRun(ctx, &batonv1.RestartRunRequest{RunId: run.GetId()})
	wantCode(t, "RestartRun of the restarted (active) run", err, codes.FailedPrecondition)
}

// TestTaskLogsAndAttempts: before any agent ran a task, ListAttempts is
// empty and GetTaskLogs returns attempt 0 with no output; a task the run
// does not have is NOT_FOUND and a missing task INVALID_ARGUMENT.
func TestTaskLogsAndAttempts(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := testContext(t)
	applyJob(t, b, etlJob)
	run := startRun(t, b, "etl")

	atts, err := b.runs.ListAttempts(ctx, &batonv1.ListAttemptsRequest{RunId: run.GetId()})
	if err != nil {
		t.Fatalf("ListAttempts: %v", err)
	}
	if len(atts.GetAttempts()) != 0 {
		t.Errorf("ListAttempts = %v, want none", atts.GetAttempts())
	}
	logs, err := b.runs.GetTaskLogs(ctx, &batonv1.GetTaskLogsRequest{RunId: run.GetId(), Task: "extract"})
	if err != nil {
		t.Fatalf("GetTaskLogs: %v", err)
	}
	if logs.GetAttemptId() != 0 || len(logs.GetChunks()) != 0 {
		t.Errorf("GetTaskLogs(extract) = attempt %d, %d chunks, want attempt 0 and no output", logs.GetAttemptId(), len(logs.GetChunks()))
	}
	_, err = b.runs.GetTaskLogs(ctx, &batonv1.GetTaskLogsRequest{RunId: run.GetId(), Task: "nope"})
	wantCode(t, "GetTaskLogs(nope)", err, codes.NotFound)
	item := int32(0)
	_, err = b.runs.GetTaskLogs(ctx, &batonv1.GetTaskLogsRequest{RunId: run.GetId(), Task: "extract", ItemIndex: &item})
	wantCode(t, "GetTaskLogs(extract[0]) of a task without items", err, codes.NotFound)
	_, err = b.runs.GetTaskLogs(ctx, &batonv1.GetTaskLogsRequest{RunId: run.GetId(), Task: "extract", AttemptId: 99})
	wantCode(t, "GetTaskLogs(extract, attempt 99)", err, codes.NotFound)
	_, err = b.runs.GetTaskLogs(ctx, &batonv1.GetTaskLogsRequest{RunId: run.GetId()})
	wantInvalid(t, "GetTaskLogs()", err, "task")

	agents, err := b.admin.ListAgents(ctx, &batonv1.ListAgentsRequest{})
	if err != nil {
		t.Fatalf("ListAgents: %v", err)
	}
	if len(agents.GetAgents()) != 0 {
		t.Errorf("ListAgents = %v, want none", agents.GetAgents())
	}
}
