package cli_test

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/batonhq/baton/client/cmd/baton/cli"
	"github.com/batonhq/baton/client/internal/fakeserver"
	batonv1 "github.com/batonhq/baton/gen/baton/v1"
)

func TestRunHistory(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.srv.AddRun(fakeserver.NightlyRun(batonv1.RunState_RUN_STATE_FAILED).Finished())
	b.srv.SetAttempts(1, fakeserver.NightlyAttempts())

	b.run(t, "run", "history", "1").want(t, cli.ExitOK, lines(
		"ATTEMPT  TASK             #  KIND     AGENT   STATE      EXIT  STARTED                  DURATION  RESTART  NOTE",
		"1        stage-customers  1  first    etl-01  succeeded  0     2026-11-21 02:00:01 UTC  1.2s      0",
		"2        stage-orders     1  first    etl-02  succeeded  0     2026-11-21 02:00:01 UTC  3m04s     0",
		"3        per-client[0]    1  first    etl-01  succeeded  0     2026-11-21 02:00:03 UTC  0.4s      0",
		"4        per-client[1]    1  first    etl-01  failed     3     2026-11-21 02:00:03 UTC  1.0s      0        exit status 3",
		"5        per-client[1]    2  restart  etl-02  succeeded  0     2026-11-21 03:00:01 UTC  1.5s      1",
		"6        cleanup          1  first    etl-02  succeeded  0     2026-11-21 03:00:03 UTC  0.5s      1",
	), "")

	b.run(t, "run", "history", "1", "--task", "per-client").want(t, cli.ExitOK, lines(
		"ATTEMPT  TASK           #  KIND     AGENT   STATE      EXIT  STARTED                  DURATION  RESTART  NOTE",
		"3        per-client[0]  1  first    etl-01  succeeded  0     2026-11-21 02:00:03 UTC  0.4s      0",
		"4        per-client[1]  1  first    etl-01  failed     3     2026-11-21 02:00:03 UTC  1.0s      0        exit status 3",
		"5        per-client[1]  2  restart  etl-02  succeeded  0     2026-11-21 03:00:01 UTC  1.5s      1",
	), "")
	want := []*batonv1.ListAttemptsRequest{{RunId: 1}, {RunId: 1, Task: "per-client"}}
	if diff := cmp.Diff(want, b.srv.AttemptRequests(), protocmp.Transform()); diff != "" {
		t.Errorf("ListAttempts requests (-want +got):\n%s", diff)
	}

	var resp batonv1.ListAttemptsResponse
	decode(t, b.run(t, "run", "history", "1", "-o", "json"), &resp)
	if diff := cmp.Diff(fakeserver.NightlyAttempts(), resp.GetAttempts(), protocmp.Transform()); diff != "" {
		t.Errorf("run history -o json (-want +got):\n%s", diff)
	}
}

func TestRunHistoryNotes(t *testing.T) {
	t.Parallel()
	b := setup(t)
	id := b.srv.AddRun(fakeserver.RunFixture{Run: &batonv1.Run{Job: "hourly", JobVersion: 2, State: batonv1.RunState_RUN_STATE_RUNNING}})
	at := func(d time.Duration) *timestamppb.Timestamp { return timestamppb.New(fakeserver.Base.Add(d)) }
	const (
		retry       = batonv1.AttemptKind_ATTEMPT_KIND_RETRY
		replacement = batonv1.AttemptKind_ATTEMPT_KIND_REPLACEMENT
		first       = batonv1.AttemptKind_ATTEMPT_KIND_FIRST
	)
	b.srv.SetAttempts(id, []*batonv1.Attempt{
		{
			Id: 10, Task: "load", Number: 1, Kind: first, Agent: "etl-01", State: batonv1.AttemptState_ATTEMPT_STATE_FAILED,
			ExitCode: proto.Int32(1), StartTime: at(0), EndTime: at(2 * time.Second),
			Error: "Msg 2627, Level 14, State 1, Server DW01, Line 12\nViolation of PRIMARY KEY constraint 'PK_Client'.\n",
		},
		{
			Id: 11, Task: "load", Number: 2, Kind: retry, Agent: "etl-01", State: batonv1.AttemptState_ATTEMPT_STATE_TIMED_OUT,
			StartTime: at(5 * time.Second), EndTime: at(65 * time.Second),
			Error: "timed out after 1m0s; the child tree was killed (SIGTERM, then SIGKILL after 10s)",
		},
		{
			Id: 12, Task: "load", Number: 3, Kind: retry, Agent: "etl-03", State: batonv1.AttemptState_ATTEMPT_STATE_LOST,
			StartTime: at(70 * time.Second), EndTime: at(3 * time.Minute),
			LateState: batonv1.AttemptState_ATTEMPT_STATE_SUCCEEDED, ExitCode: proto.Int32(0),
			Error: "agent etl-03 not heard from for 30s",
		},
		{
			Id: 13, Task: "load", Number: 4, Kind: replacement, Agent: "etl-02", State: batonv1.AttemptState_ATTEMPT_STATE_RUNNING,
			DispatchTime: at(3 * time.Minute), StartTime: at(9 * time.Minute),
		},
		{
			Id: 14, Task: "per-client", ItemIndex: proto.Int32(2), Number: 1, Kind: first, Agent: "etl-02",
			State: batonv1.AttemptState_ATTEMPT_STATE_DISPATCHED, DispatchTime: at(9 * time.Minute),
		},
		{
			Id: 15, Task: "per-client", ItemIndex: proto.Int32(0), Number: 1, Kind: first, Agent: "etl-04",
			State: batonv1.AttemptState_ATTEMPT_STATE_LOST, StartTime: at(time.Minute), Restart: 2,
		},
	})

	b.run(t, "run", "history", "1").want(t, cli.ExitOK, lines(
		"ATTEMPT  TASK           #  KIND         AGENT   STATE       EXIT  STARTED                  DURATION  RESTART  NOTE",
		"10       load           1  first        etl-01  failed      1     2026-11-21 02:00:00 UTC  2.0s      0        Msg 2627, Level 14, State 1, Server DW01, Line 12...",
		"11       load           2  retry        etl-01  timed-out         2026-11-21 02:00:05 UTC  1m00s     0        timed out after 1m0s; the child tree was killed (SIGTERM,...",
		"12       load           3  retry        etl-03  lost        0     2026-11-21 02:01:10 UTC  1m50s     0        late: succeeded; agent etl-03 not heard from for 30s",
		"13       load           4  replacement  etl-02  running           2026-11-21 02:09:00 UTC  1m00s+    0",
		"14       per-client[2]  1  first        etl-02  dispatched        -                        -         0",
		"15       per-client[0]  1  first        etl-04  lost              2026-11-21 02:01:00 UTC  -         2",
	), "")
}

func TestRunHistoryErrors(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.srv.AddRun(fakeserver.RunFixture{Run: &batonv1.Run{Job: "hourly", State: batonv1.RunState_RUN_STATE_QUEUED}})

	header := "ATTEMPT  TASK  #  KIND  AGENT  STATE  EXIT  STARTED  DURATION  RESTART  NOTE\n"
	b.run(t, "run", "history", "1").want(t, cli.ExitOK, header, "baton: run 1 has no attempts yet\n")
	b.run(t, "run", "history", "1", "--task", "lod").want(t, cli.ExitOK, header, "baton: run 1 has no attempts of task \"lod\"\n")
	b.run(t, "run", "history", "9").want(t, cli.ExitError, "", "baton: list attempts of run 9: run 9 not found\n")
	b.run(t, "run", "history", "1", "--task", "").want(t, cli.ExitError, "",
		"baton: invalid --task \"\": want a task name\nRun 'baton run history --help' for usage.\n")
	b.run(t, "run", "history").want(t, cli.ExitError, "",
		"baton: baton run history needs RUN\nRun 'baton run history --help' for usage.\n")
}
