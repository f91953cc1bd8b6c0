package server_test

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/testing/protocmp"

	batonv1 "github.com/batonhq/baton/gen/baton/v1"
)

// TestStandby: a second batond on the same store stands by while the first
// holds the leader lease. It serves reads from the store, refuses every
// call that needs the scheduler with UNAVAILABLE (changing nothing) and
// says so on /readyz; once the leader stops, it takes the lease, picks up
// the leader's active run and accepts work.
//
// batond's file lock keeps two processes off one SQLite file; two Servers
// in one process sharing a Store are what two batonds sharing a SQL Server
// database are.
func TestStandby(t *testing.T) {
	t.Parallel()
	st := openStore(t)
	// The leader keeps batond's 15s lease; the standby's 4s agent timeout
	// makes it retry taking the lease every 667ms.
	leader := startBatond(t, st, "node-a", 0)
	leader.waitServing(t)
	a := &testBundle{st: st, srv: leader, jobs: batonv1.NewJobServiceClient(leader.conn), runs: batonv1.NewRunServiceClient(leader.conn)}
	applyJob(t, a, etlJob)
	run := startRun(t, a, "etl")

	standby := startBatond(t, st, "node-b", 4*time.Second)
	standby.waitServing(t)
	runs := batonv1.NewRunServiceClient(standby.conn)
	admin := batonv1.NewAgentAdminServiceClient(standby.conn)
	ctx := testContext(t)

	if code, body := standby.do(t, "GET", "/readyz", ""); code != http.StatusServiceUnavailable || !strings.Contains(body, "standby") {
		t.Errorf("standby GET /readyz = %d %q, want 503 saying standby", code, body)
	}
	if code, body := leader.do(t, "GET", "/readyz", ""); code != http.StatusOK || !strings.Contains(body, "leader") {
		t.Errorf("leader GET /readyz = %d %q, want 200 saying leader", code, body)
	}

	_, err := runs.StartRun(ctx, &batonv1.StartRunRequest{Job: "etl"})
	if st := wantCode(t, "StartRun on the standby", err, codes.Unavailable); !strings.Contains(st.Message(), "standing by") {
		t.Errorf("StartRun on the standby: message %q does not say it is standing by", st.Message())
	}
	_, err = runs.StartRun(ctx, &batonv1.StartRunRequest{Job: "etl", RequestId: "r1"})
	wantCode(t, "StartRun with a request_id on the standby", err, codes.Unavailable)
	_, err = runs.CancelRun(ctx, &batonv1.CancelRunRequest{RunId: run.GetId()})
	wantCode(t, "CancelRun on the standby", err, codes.Unavailable)
	_, err = runs.RestartRun(ctx, &batonv1.RestartRunRequest{RunId: run.GetId()})
	wantCode(t, "RestartRun on the standby", err, codes.Unavailable)
	_, err = admin.ListAgents(ctx, &batonv1.ListAgentsRequest{})
	wantCode(t, "ListAgents on the standby", err, codes.Unavailable)

	// Reads answer from the store, the same on both.
	fromLeader, err := a.runs.GetRun(ctx, &batonv1.GetRunRequest{RunId: run.GetId()})
	if err != nil {
		t.Fatalf("GetRun on the leader: %v", err)
	}
	fromStandby, err := runs.GetRun(ctx, &batonv1.GetRunRequest{RunId: run.GetId()})
	if err != nil {
		t.Fatalf("GetRun on the standby: %v", err)
	}
	if diff := cmp.Diff(fromLeader, fromStandby, protocmp.Transform()); diff != "" {
		t.Errorf("GetRun (-leader +standby):\n%s", diff)
	}
	if fromStandby.GetRun().GetState() != batonv1.RunState_RUN_STATE_RUNNING {
		t.Errorf("run after the standby's refusals = %v, want still running", fromStandby.GetRun().GetState())
	}
	list, err := runs.ListRuns(ctx, &batonv1.ListRunsRequest{})
	if err != nil {
		t.Fatalf("ListRuns on the standby: %v", err)
	}
	if len(list.GetRuns()) != 1 {
		t.Errorf("ListRuns after refused StartRuns = %d runs, want 1", len(list.GetRuns()))
	}

	// The leader stops and gives its lease up; the standby takes over.
	leader.stop(t)
	waitReady(t, standby)
	b := &testBundle{st: st, srv: standby, jobs: batonv1.NewJobServiceClient(standby.conn), runs: runs}
	cancelAndWait(t, b, run.GetId())
	if next := startRun(t, b, "etl"); next.GetState() != batonv1.RunState_RUN_STATE_RUNNING {
		t.Errorf("StartRun on the new leader = %v, want running", next.GetState())
	}
}

// waitReady polls /readyz until it answers 200.
func waitReady(t *testing.T, b *batond) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		code, body := b.do(t, "GET", "/readyz", "")
		if code == http.StatusOK {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("/readyz still %d %q after %s", code, body, waitTimeout)
		}
		<-tick.C
	}
}
