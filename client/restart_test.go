package client_test

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/testing/protocmp"

	"github.com/batonhq/baton/client"
	"github.com/batonhq/baton/client/internal/fakeserver"
	batonv1 "github.com/batonhq/baton/gen/baton/v1"
)

// failedRun adds a nightly run that has failed and returns its id.
func failedRun(b *testBundle) int64 {
	return b.srv.AddRun(fakeserver.NightlyRun(batonv1.RunState_RUN_STATE_FAILED).Finished())
}

func TestRestartRun(t *testing.T) {
	t.Parallel()

	tests := []struct {
		name string
		p    client.RestartRunParams
		want *batonv1.RestartRunRequest
	}{
		{
			name: "from failures",
			p:    client.RestartRunParams{Reason: "PK_Client duplicates removed"},
			want: &batonv1.RestartRunRequest{Mode: batonv1.RestartMode_RESTART_MODE_FAILED, Reason: "PK_Client duplicates removed"},
		},
		{
			name: "from a task",
			p:    client.RestartRunParams{From: "per-client"},
			want: &batonv1.RestartRunRequest{Mode: batonv1.RestartMode_RESTART_MODE_FROM_TASK, FromTask: "per-client"},
		},
		{
			name: "all",
			p:    client.RestartRunParams{All: true},
			want: &batonv1.RestartRunRequest{Mode: batonv1.RestartMode_RESTART_MODE_ALL},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx := testContext(t)
			b := setup(t)
			id := failedRun(b)
			p := tc.p
			p.RunID = id
			run, err := b.client.RestartRun(ctx, &p)
			if err != nil {
				t.Fatalf("RestartRun: %v", err)
			}
			if run.GetId() != id || run.GetRestartCount() != 1 || run.GetState() != batonv1.RunState_RUN_STATE_RUNNING {
				t.Errorf("RestartRun = run %d restart %d %v, want run %d restart 1 RUNNING",
					run.GetId(), run.GetRestartCount(), run.GetState(), id)
			}
			want := tc.want
			want.RunId = id
			if diff := cmp.Diff([]*batonv1.RestartRunRequest{want}, b.srv.RestartRequests(), protocmp.Transform()); diff != "" {
				t.Errorf("RestartRun requests (-want +got):\n%s", diff)
			}
		})
	}
}

func TestRestartRunErrors(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	b := setup(t)
	failed := failedRun(b)
	running := b.srv.AddRun(fakeserver.RunFixture{Run: &batonv1.Run{Job: "hourly", State: batonv1.RunState_RUN_STATE_RUNNING}})

	tests := []struct {
		name     string
		p        *client.RestartRunParams
		wantCode codes.Code
		wantErr  string
	}{
		{
			name:     "still active",
			p:        &client.RestartRunParams{RunID: running},
			wantCode: codes.FailedPrecondition,
			wantErr:  "restart run 2: run 2 is still active (RUN_STATE_RUNNING)",
		},
		{
			name:     "unknown run",
			p:        &client.RestartRunParams{RunID: 99},
			wantCode: codes.NotFound,
			wantErr:  "restart run 99: run 99 not found",
		},
		{
			name:     "unknown task",
			p:        &client.RestartRunParams{RunID: failed, From: "per-clients"},
			wantCode: codes.InvalidArgument,
			wantErr:  `restart run 1: from_task: job "nightly-dw-load" version 3 has no task "per-clients"`,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := b.client.RestartRun(ctx, tc.p)
			if status.Code(err) != tc.wantCode || err.Error() != tc.wantErr {
				t.Errorf("RestartRun(%+v) = %v (code %v), want %q (code %v)", *tc.p, err, status.Code(err), tc.wantErr, tc.wantCode)
			}
		})
	}

	t.Run("refused before a request", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		for _, tc := range []struct {
			p    *client.RestartRunParams
			want string
		}{
			{p: nil, want: "restart run: run id must be positive"},
			{p: &client.RestartRunParams{}, want: "restart run: run id must be positive"},
			{p: &client.RestartRunParams{RunID: 1, From: "cleanup", All: true}, want: "restart run 1: From and All cannot be combined"},
		} {
			if _, err := b.client.RestartRun(ctx, tc.p); err == nil || err.Error() != tc.want {
				t.Errorf("RestartRun(%+v) = %v, want %q", tc.p, err, tc.want)
			}
		}
		if n := len(b.srv.RestartRequests()); n != 0 {
			t.Errorf("RestartRun requests = %d, want none", n)
		}
	})
}

func TestListAttempts(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	b := setup(t)
	id := failedRun(b)
	all := fakeserver.NightlyAttempts()
	b.srv.SetAttempts(id, all)

	got, err := b.client.ListAttempts(ctx, id, "")
	if err != nil {
		t.Fatalf("ListAttempts: %v", err)
	}
	if diff := cmp.Diff(all, got, protocmp.Transform()); diff != "" {
		t.Errorf("ListAttempts(all) (-want +got):\n%s", diff)
	}

	got, err = b.client.ListAttempts(ctx, id, "per-client")
	if err != nil {
		t.Fatalf("ListAttempts(per-client): %v", err)
	}
	var ids []int64
	for _, a := range got {
		ids = append(ids, a.GetId())
	}
	if diff := cmp.Diff([]int64{3, 4, 5}, ids); diff != "" {
		t.Errorf("ListAttempts(per-client) ids (-want +got):\n%s", diff)
	}
	want := []*batonv1.ListAttemptsRequest{{RunId: id}, {RunId: id, Task: "per-client"}}
	if diff := cmp.Diff(want, b.srv.AttemptRequests(), protocmp.Transform()); diff != "" {
		t.Errorf("ListAttempts requests (-want +got):\n%s", diff)
	}

	_, err = b.client.ListAttempts(ctx, 42, "cleanup")
	if status.Code(err) != codes.NotFound || !strings.HasPrefix(err.Error(), `list attempts of run 42 task "cleanup": `) {
		t.Errorf("ListAttempts(unknown run) = %v (code %v), want NotFound naming the run and task", err, status.Code(err))
	}
}
