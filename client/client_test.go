package client_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/goleak"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/batonhq/baton/client"
	"github.com/batonhq/baton/client/internal/fakeserver"
	batonv1 "github.com/batonhq/baton/gen/baton/v1"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

type testBundle struct {
	srv    *fakeserver.Server
	client *client.Client
}

func setup(t *testing.T) *testBundle {
	t.Helper()
	srv := fakeserver.Start(t)
	conn, err := client.Dial(client.DialConfig{Addr: srv.Addr()})
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return &testBundle{srv: srv, client: client.New(conn)}
}

func testContext(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestJobs(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	b := setup(t)

	job, created, err := b.client.ApplyJob(ctx, fakeserver.NightlyJob)
	if err != nil {
		t.Fatalf("ApplyJob: %v", err)
	}
	if !created || job.GetName() != "nightly-dw-load" || job.GetVersion() != 1 {
		t.Errorf("ApplyJob = %s v%d created=%t, want nightly-dw-load v1 created=true", job.GetName(), job.GetVersion(), created)
	}
	job, created, err = b.client.ApplyJob(ctx, fakeserver.NightlyJob)
	if err != nil {
		t.Fatalf("ApplyJob again: %v", err)
	}
	if created || job.GetVersion() != 1 {
		t.Errorf("ApplyJob(same file) = v%d created=%t, want v1 created=false", job.GetVersion(), created)
	}

	v, err := b.client.ValidateJob(ctx, fakeserver.NightlyJob)
	if err != nil {
		t.Fatalf("ValidateJob: %v", err)
	}
	if got := len(v.GetTasks()); got != 4 {
		t.Errorf("ValidateJob tasks = %d, want 4", got)
	}

	got, err := b.client.GetJob(ctx, "nightly-dw-load", 1)
	if err != nil {
		t.Fatalf("GetJob: %v", err)
	}
	if got.GetSource() != fakeserver.NightlyJob {
		t.Errorf("GetJob source = %q, want the applied file", got.GetSource())
	}
	jobs, err := b.client.ListJobs(ctx)
	if err != nil {
		t.Fatalf("ListJobs: %v", err)
	}
	if len(jobs) != 1 {
		t.Errorf("ListJobs = %d jobs, want 1", len(jobs))
	}
	if err := b.client.DeleteJob(ctx, "nightly-dw-load"); err != nil {
		t.Fatalf("DeleteJob: %v", err)
	}
	_, err = b.client.GetJob(ctx, "nightly-dw-load", 0)
	if status.Code(err) != codes.NotFound {
		t.Errorf("GetJob after delete: code %v (%v), want NotFound", status.Code(err), err)
	}
}

func TestErrorsKeepStatus(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	b := setup(t)

	problems := "line 9: task \"stage-orders\": run: must not be empty\nline 12: task \"per-client\": needs[0]: unknown task \"stage-customer\""
	b.srv.SetApplyError(status.Error(codes.InvalidArgument, problems))
	_, _, err := b.client.ApplyJob(ctx, fakeserver.NightlyJob)
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("ApplyJob code = %v, want InvalidArgument", status.Code(err))
	}
	if want := "apply job: " + problems; err.Error() != want {
		t.Errorf("ApplyJob error = %q, want %q", err, want)
	}
	var se interface{ GRPCStatus() *status.Status }
	if !errors.As(err, &se) {
		t.Errorf("errors.As(ApplyJob error, GRPCStatus) = false, want true")
	}

	_, err = b.client.GetRun(ctx, 404)
	if got, want := err.Error(), "get run 404: run 404 not found"; got != want {
		t.Errorf("GetRun error = %q, want %q", got, want)
	}
}

func TestListRunsFollowsPages(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	b := setup(t)

	for range 7 {
		b.srv.AddRun(fakeserver.RunFixture{Run: &batonv1.Run{Job: "a", State: batonv1.RunState_RUN_STATE_SUCCEEDED}})
	}
	b.srv.AddRun(fakeserver.RunFixture{Run: &batonv1.Run{Job: "b", State: batonv1.RunState_RUN_STATE_RUNNING}})
	b.srv.SetMaxPageSize(3)

	tests := []struct {
		name  string
		job   string
		limit int
		want  []int64
	}{
		{name: "all", want: []int64{8, 7, 6, 5, 4, 3, 2, 1}},
		{name: "limit", limit: 5, want: []int64{8, 7, 6, 5, 4}},
		{name: "limit above total", limit: 50, want: []int64{8, 7, 6, 5, 4, 3, 2, 1}},
		{name: "one job", job: "a", limit: 4, want: []int64{7, 6, 5, 4}},
		{name: "unknown job", job: "c"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			runs, err := b.client.ListRuns(ctx, tc.job, tc.limit)
			if err != nil {
				t.Fatalf("ListRuns: %v", err)
			}
			var ids []int64
			for _, r := range runs {
				ids = append(ids, r.GetId())
			}
			if diff := cmp.Diff(tc.want, ids); diff != "" {
				t.Errorf("ListRuns(%q, %d) ids (-want +got):\n%s", tc.job, tc.limit, diff)
			}
		})
	}
}

func TestStartRunIdempotent(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	b := setup(t)
	b.srv.SetRunTemplate("nightly-dw-load", fakeserver.NightlyRun(batonv1.RunState_RUN_STATE_SUCCEEDED))

	p := &client.StartRunParams{Job: "nightly-dw-load", Params: map[string]string{"load_date": "2026-11-22"}, RequestID: "r-1"}
	run, created, err := b.client.StartRun(ctx, p)
	if err != nil {
		t.Fatalf("StartRun: %v", err)
	}
	again, createdAgain, err := b.client.StartRun(ctx, p)
	if err != nil {
		t.Fatalf("StartRun again: %v", err)
	}
	if !created || createdAgain || again.GetId() != run.GetId() {
		t.Errorf("StartRun twice = (%d, %t), (%d, %t); want the same run, created once", run.GetId(), created, again.GetId(), createdAgain)
	}
	reqs := b.srv.StartRequests()
	want := &batonv1.StartRunRequest{Job: "nightly-dw-load", Params: map[string]string{"load_date": "2026-11-22"}, RequestId: "r-1"}
	if len(reqs) != 2 || !proto.Equal(reqs[0], want) {
		t.Errorf("server got %v, want two of %v", reqs, want)
	}

	if _, _, err := b.client.StartRun(ctx, &client.StartRunParams{}); err == nil || !strings.Contains(err.Error(), "job name is required") {
		t.Errorf("StartRun(no job) = %v, want an error naming the job", err)
	}
}

func TestCancelRunAndLogs(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	b := setup(t)
	id := b.srv.AddRun(fakeserver.RunFixture{Run: &batonv1.Run{Job: "a", State: batonv1.RunState_RUN_STATE_RUNNING}})

	run, err := b.client.CancelRun(ctx, id, "wrong load date")
	if err != nil {
		t.Fatalf("CancelRun: %v", err)
	}
	if run.GetState() != batonv1.RunState_RUN_STATE_CANCELLING {
		t.Errorf("CancelRun state = %v, want CANCELLING", run.GetState())
	}
	if reqs := b.srv.CancelRequests(); len(reqs) != 1 || reqs[0].GetReason() != "wrong load date" {
		t.Errorf("server got cancel requests %v, want one with the reason", reqs)
	}

	b.srv.SetLogs(id, "per-client", proto.Int32(2), &batonv1.GetTaskLogsResponse{AttemptId: 9, StdoutTail: "ok\n"})
	logs, err := b.client.GetTaskLogs(ctx, &client.TaskLogsParams{RunID: id, Task: "per-client", ItemIndex: proto.Int32(2)})
	if err != nil {
		t.Fatalf("GetTaskLogs: %v", err)
	}
	if logs.GetAttemptId() != 9 {
		t.Errorf("GetTaskLogs attempt = %d, want 9", logs.GetAttemptId())
	}
	_, err = b.client.GetTaskLogs(ctx, &client.TaskLogsParams{RunID: id, Task: "per-client"})
	if status.Code(err) != codes.NotFound {
		t.Errorf("GetTaskLogs(no item) code = %v, want NotFound", status.Code(err))
	}
}

func TestListAgentsSeesAgentSessions(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	b := setup(t)

	stream, err := batonv1.NewAgentServiceClient(b.client.Conn()).Connect(ctx)
	if err != nil {
		t.Fatalf("Connect: %v", err)
	}
	hello := &batonv1.ConnectRequest{Msg: &batonv1.ConnectRequest_Hello{Hello: &batonv1.Hello{
		Name: "etl-01", Labels: map[string]string{"role": "ssis"}, Slots: 4, Version: "1.2.3",
	}}}
	if err := stream.Send(hello); err != nil {
		t.Fatalf("send hello: %v", err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatalf("recv welcome: %v", err)
	}
	agents, err := b.client.ListAgents(ctx)
	if err != nil {
		t.Fatalf("ListAgents: %v", err)
	}
	if len(agents) != 1 || agents[0].GetState() != batonv1.AgentState_AGENT_STATE_CONNECTED || agents[0].GetSlots() != 4 {
		t.Fatalf("ListAgents = %v, want etl-01 connected with 4 slots", agents)
	}

	// Closing the stream ends the session; wait for the server to see it.
	if err := stream.CloseSend(); err != nil {
		t.Fatalf("CloseSend: %v", err)
	}
	for {
		a, next := b.srv.Agent("etl-01")
		if a.GetState() == batonv1.AgentState_AGENT_STATE_DISCONNECTED {
			break
		}
		select {
		case <-next:
		case <-ctx.Done():
			t.Fatalf("agent still %v when the test timed out", a.GetState())
		}
	}
	agents, err = b.client.ListAgents(ctx)
	if err != nil {
		t.Fatalf("ListAgents: %v", err)
	}
	if agents[0].GetState() != batonv1.AgentState_AGENT_STATE_DISCONNECTED {
		t.Errorf("ListAgents after disconnect = %v, want DISCONNECTED", agents[0].GetState())
	}
}
