package cli_test

import (
	"bufio"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/batonhq/baton/client/cmd/baton/cli"
	"github.com/batonhq/baton/client/internal/fakeserver"
	batonv1 "github.com/batonhq/baton/gen/baton/v1"
)

// watchFailed is what run watch prints for fakeserver.NightlyRun(FAILED)
// with run id 1.
var watchFailed = lines(
	"watching run 1: nightly-dw-load version 3, 3 tasks",
	"02:00:00  [0/3]  run              running",
	"02:00:00  [0/3]  stage-customers  dispatched  etl-01",
	"02:00:00  [0/3]  stage-orders     dispatched  etl-02",
	"02:00:01  [0/3]  stage-customers  running     etl-01",
	"02:00:01  [0/3]  stage-orders     running     etl-02",
	"02:00:02  [1/3]  stage-customers  succeeded   etl-01  1.2s",
	"02:00:02  [1/5]  per-client[0]    ready",
	"02:00:02  [1/5]  per-client[1]    ready",
	"02:00:03  [1/5]  per-client[0]    running     etl-01",
	"02:00:03  [1/5]  per-client[1]    running     etl-01",
	"02:00:03  [2/5]  per-client[0]    succeeded   etl-01  0.4s",
	"02:00:04  [3/5]  per-client[1]    failed      etl-01  1.0s    exit 3: exit status 3",
	"02:03:05  [4/5]  stage-orders     succeeded   etl-02  3m04s",
	"02:03:05  [5/5]  cleanup          blocked                     upstream per-client failed",
	"02:03:05  [5/5]  run              failed                      task per-client[1] failed",
	"run 1 failed in 3m05s: 3 succeeded, 1 failed, 1 blocked",
)

// watchSucceeded is what run watch prints for
// fakeserver.NightlyRun(SUCCEEDED) with run id 1.
var watchSucceeded = lines(
	"watching run 1: nightly-dw-load version 3, 3 tasks",
	"02:00:00  [0/3]  run              running",
	"02:00:00  [0/3]  stage-customers  dispatched  etl-01",
	"02:00:00  [0/3]  stage-orders     dispatched  etl-02",
	"02:00:01  [0/3]  stage-customers  running     etl-01",
	"02:00:01  [0/3]  stage-orders     running     etl-02",
	"02:00:02  [1/3]  stage-customers  succeeded   etl-01  1.2s",
	"02:00:02  [1/5]  per-client[0]    ready",
	"02:00:02  [1/5]  per-client[1]    ready",
	"02:00:03  [1/5]  per-client[0]    running     etl-01",
	"02:00:03  [1/5]  per-client[1]    running     etl-01",
	"02:00:03  [2/5]  per-client[0]    succeeded   etl-01  0.4s",
	"02:00:04  [3/5]  per-client[1]    succeeded   etl-01  1.0s",
	"02:03:05  [4/5]  stage-orders     succeeded   etl-02  3m04s",
	"02:03:05  [4/5]  cleanup          dispatched  etl-02",
	"02:03:06  [4/5]  cleanup          running     etl-02",
	"02:03:06  [5/5]  cleanup          succeeded   etl-02  0.5s",
	"02:03:06  [5/5]  run              succeeded",
	"run 1 succeeded in 3m07s: 5 succeeded",
)

func TestRunWatch(t *testing.T) {
	t.Parallel()

	tests := []struct {
		name       string
		end        batonv1.RunState
		breaks     []fakeserver.Break
		wantCode   int
		wantStdout string
		wantStderr string
	}{
		{
			name:       "succeeded",
			end:        batonv1.RunState_RUN_STATE_SUCCEEDED,
			wantCode:   cli.ExitOK,
			wantStdout: watchSucceeded,
		},
		{
			name:       "failed",
			end:        batonv1.RunState_RUN_STATE_FAILED,
			wantCode:   cli.ExitRunFailed,
			wantStdout: watchFailed,
			wantStderr: "baton: run 1 failed: task per-client[1] failed\n",
		},
		{
			name:       "stream breaks with UNAVAILABLE",
			end:        batonv1.RunState_RUN_STATE_FAILED,
			breaks:     []fakeserver.Break{{After: 4}, {After: 0}, {After: 6}},
			wantCode:   cli.ExitRunFailed,
			wantStdout: watchFailed,
			wantStderr: "baton: run 1 failed: task per-client[1] failed\n",
		},
		{
			name:       "connection dropped",
			end:        batonv1.RunState_RUN_STATE_SUCCEEDED,
			breaks:     []fakeserver.Break{{After: 9, Drop: true}},
			wantCode:   cli.ExitOK,
			wantStdout: watchSucceeded,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			id := b.srv.AddRun(fakeserver.NightlyRun(tc.end))
			for _, br := range tc.breaks {
				b.srv.BreakWatch(id, br)
			}
			r := b.run(t, "run", "watch", "1")
			// Each break is reported on stderr before the run's outcome.
			var notes []string
			for _, l := range strings.SplitAfter(r.stderr, "\n") {
				if strings.HasPrefix(l, "baton: watch interrupted, reconnecting: ") {
					notes = append(notes, l)
					r.stderr = strings.Replace(r.stderr, l, "", 1)
				}
			}
			if len(notes) != len(tc.breaks) {
				t.Errorf("reconnect notes = %q, want %d", notes, len(tc.breaks))
			}
			r.want(t, tc.wantCode, tc.wantStdout, tc.wantStderr)
			if n, want := len(b.srv.WatchRequests()), len(tc.breaks)+1; n != want {
				t.Errorf("WatchRun requests = %d, want %d", n, want)
			}
		})
	}
}

func TestRunWatchCancelled(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.srv.AddRun(fakeserver.RunFixture{
		Run: &batonv1.Run{Job: "hourly", JobVersion: 1, State: batonv1.RunState_RUN_STATE_RUNNING,
			Tasks: []*batonv1.TaskRun{{Task: "load"}}},
		Events: []*batonv1.RunEvent{
			{RunState: batonv1.RunState_RUN_STATE_RUNNING, Time: timestamppb.New(fakeserver.Base)},
			{RunState: batonv1.RunState_RUN_STATE_CANCELLED, Message: "cancelled by ops: wrong date", Time: timestamppb.New(fakeserver.Base)},
		},
		Updates: []fakeserver.RunUpdate{{AtCursor: 2, Run: &batonv1.Run{Job: "hourly", JobVersion: 1,
			State: batonv1.RunState_RUN_STATE_CANCELLED, Error: "cancelled by ops: wrong date",
			Tasks: []*batonv1.TaskRun{{Task: "load", State: batonv1.TaskState_TASK_STATE_CANCELLED}}}}},
	})
	b.run(t, "run", "watch", "1").want(t, cli.ExitRunFailed, lines(
		"watching run 1: hourly version 1, 1 task",
		"02:00:00  [0/1]  run   running",
		"02:00:00  [0/1]  run   cancelled             cancelled by ops: wrong date",
		"run 1 cancelled: 1 cancelled",
	), "baton: run 1 cancelled: cancelled by ops: wrong date\n")
}

func TestRunWatchJSON(t *testing.T) {
	t.Parallel()
	b := setup(t)
	f := fakeserver.NightlyRun(batonv1.RunState_RUN_STATE_FAILED)
	b.srv.AddRun(f)
	b.srv.BreakWatch(1, fakeserver.Break{After: 5})

	r := b.run(t, "run", "watch", "1", "-o", "json")
	if r.code != cli.ExitRunFailed {
		t.Errorf("exit code = %d, want 1; stderr: %s", r.code, r.stderr)
	}
	var got []*batonv1.RunEvent
	sc := bufio.NewScanner(strings.NewReader(r.stdout))
	for sc.Scan() {
		ev := &batonv1.RunEvent{}
		if err := protojson.Unmarshal(sc.Bytes(), ev); err != nil {
			t.Fatalf("line %q is not a JSON event: %v", sc.Text(), err)
		}
		got = append(got, ev)
	}
	if len(got) != len(f.Events) {
		t.Fatalf("got %d JSON events, want %d (one per line, none twice):\n%s", len(got), len(f.Events), r.stdout)
	}
	for i, ev := range got {
		want := proto.Clone(f.Events[i]).(*batonv1.RunEvent)
		want.Cursor, want.RunId = int64(i+1), 1
		if diff := cmp.Diff(want, ev, protocmp.Transform()); diff != "" {
			t.Errorf("event %d (-want +got):\n%s", i+1, diff)
		}
	}
}

func TestRunStart(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.srv.SetRunTemplate("nightly-dw-load", fakeserver.NightlyRun(batonv1.RunState_RUN_STATE_SUCCEEDED))

	b.run(t, "run", "start", "nightly-dw-load").want(t, cli.ExitOK, "1\n", "")
	b.run(t, "run", "start", "nightly-dw-load", "--param", "load_date=2026-11-22", "--param", "filter=a=b,c",
		"--param", "empty=", "--request-id", "nightly-2026-11-22").want(t, cli.ExitOK, "2\n", "")
	b.run(t, "run", "start", "nightly-dw-load", "--request-id", "nightly-2026-11-22").want(t, cli.ExitOK, "2\n",
		"baton: request id \"nightly-2026-11-22\" already started run 2; not started again\n")

	want := []*batonv1.StartRunRequest{
		{Job: "nightly-dw-load"},
		{Job: "nightly-dw-load", Params: map[string]string{"load_date": "2026-11-22", "filter": "a=b,c", "empty": ""}, RequestId: "nightly-2026-11-22"},
		{Job: "nightly-dw-load", RequestId: "nightly-2026-11-22"},
	}
	if diff := cmp.Diff(want, b.srv.StartRequests(), protocmp.Transform()); diff != "" {
		t.Errorf("StartRun requests (-want +got):\n%s", diff)
	}

	var resp batonv1.StartRunResponse
	decode(t, b.run(t, "-o", "json", "run", "start", "nightly-dw-load"), &resp)
	if resp.GetRun().GetId() != 3 || !resp.GetCreated() {
		t.Errorf("start -o json = %v, want run 3 created", &resp)
	}

	b.run(t, "run", "start", "no-such-job").want(t, cli.ExitError, "",
		"baton: start run of job \"no-such-job\": job \"no-such-job\" not found\n")
}

func TestRunStartBadParam(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.srv.SetRunTemplate("nightly-dw-load", fakeserver.NightlyRun(batonv1.RunState_RUN_STATE_SUCCEEDED))

	tests := []struct {
		name  string
		param string
		want  string
	}{
		{name: "no equals", param: "load_date", want: "baton: invalid --param \"load_date\": want key=value\n"},
		{name: "empty key", param: "=x", want: "baton: invalid --param \"=x\": the key before '=' is empty\n"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b.run(t, "run", "start", "nightly-dw-load", "--param", tc.param).want(t, cli.ExitError, "",
				tc.want+"Run 'baton run start --help' for usage.\n")
		})
	}
	t.Run("twice", func(t *testing.T) {
		t.Parallel()
		b.run(t, "run", "start", "nightly-dw-load", "--param", "a=1", "--param", "a=2").want(t, cli.ExitError, "",
			"baton: invalid --param \"a=2\": a is given twice\nRun 'baton run start --help' for usage.\n")
	})
	t.Cleanup(func() {
		if n := len(b.srv.StartRequests()); n != 0 {
			t.Errorf("StartRun requests = %d, want none for bad params", n)
		}
	})
}

func TestRunStartWait(t *testing.T) {
	t.Parallel()

	t.Run("failed", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		b.srv.SetRunTemplate("nightly-dw-load", fakeserver.NightlyRun(batonv1.RunState_RUN_STATE_FAILED))
		b.srv.BreakWatch(1, fakeserver.Break{After: 7})
		b.run(t, "run", "start", "nightly-dw-load", "--wait").want(t, cli.ExitRunFailed, "1\n"+watchFailed,
			"baton: watch interrupted, reconnecting: watch run 1: fake: stream broken\n"+
				"baton: run 1 failed: task per-client[1] failed\n")
	})
	t.Run("succeeded", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		b.srv.SetRunTemplate("nightly-dw-load", fakeserver.NightlyRun(batonv1.RunState_RUN_STATE_SUCCEEDED))
		b.run(t, "run", "start", "nightly-dw-load", "--wait").want(t, cli.ExitOK, "1\n"+watchSucceeded, "")
	})
	t.Run("json", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		f := fakeserver.NightlyRun(batonv1.RunState_RUN_STATE_SUCCEEDED)
		b.srv.SetRunTemplate("nightly-dw-load", f)
		r := b.run(t, "run", "start", "nightly-dw-load", "--wait", "-o", "json")
		if r.code != cli.ExitOK {
			t.Fatalf("exit code = %d, want 0; stderr: %s", r.code, r.stderr)
		}
		ls := strings.Split(strings.TrimSuffix(r.stdout, "\n"), "\n")
		if len(ls) != 1+len(f.Events) {
			t.Fatalf("got %d lines, want the start response and %d events:\n%s", len(ls), len(f.Events), r.stdout)
		}
		var resp batonv1.StartRunResponse
		if err := protojson.Unmarshal([]byte(ls[0]), &resp); err != nil || resp.GetRun().GetId() != 1 {
			t.Errorf("first line = %q (%v), want the StartRunResponse of run 1", ls[0], err)
		}
		for _, l := range ls[1:] {
			var ev batonv1.RunEvent
			if err := protojson.Unmarshal([]byte(l), &ev); err != nil || ev.GetRunId() != 1 {
				t.Errorf("line %q (%v), want a RunEvent of run 1", l, err)
			}
		}
	})
}

func TestRunGet(t *testing.T) {
	t.Parallel()
	b := setup(t)
	f := fakeserver.NightlyRun(batonv1.RunState_RUN_STATE_FAILED)
	final := proto.Clone(f.FinalRun()).(*batonv1.Run)
	final.RestartCount = 2
	final.RequestId = "nightly-2026-11-21"
	b.srv.AddRun(fakeserver.RunFixture{Run: final})
	running := proto.Clone(f.Updates[0].Run).(*batonv1.Run)
	b.srv.AddRun(fakeserver.RunFixture{Run: running})

	b.run(t, "run", "get", "1").want(t, cli.ExitOK, lines(
		"run 1: nightly-dw-load version 3, failed",
		"created     2026-11-21 02:00:00 UTC",
		"started     2026-11-21 02:00:00 UTC",
		"ended       2026-11-21 02:03:05 UTC (took 3m05s)",
		"params      load_date=2026-11-21",
		"restarts    2",
		"request id  nightly-2026-11-21",
		"error       task per-client[1] failed",
		"",
		"TASK             ITEM        STATE      AGENT   ATTEMPTS  EXIT  DURATION",
		"stage-customers              succeeded  etl-01  1         0     1.2s",
		"stage-orders                 succeeded  etl-02  1         0     3m04s",
		"per-client       0 (acme)    succeeded  etl-01  1         0     0.4s",
		"per-client       1 (globex)  failed     etl-01  1         3     1.0s",
		"cleanup                      blocked",
		"",
		"per-client[1] failed: exit status 3",
		"  stderr, last 4 lines:",
		"    loading globex",
		"    connecting to dw01",
		"    ERROR: violation of PRIMARY KEY constraint 'PK_Client'",
		"    rolled back 1204 rows",
	), "")

	// A running run shows how long it has been going (the test clock is
	// ten minutes after the start).
	b.run(t, "run", "get", "2").want(t, cli.ExitOK, lines(
		"run 2: nightly-dw-load version 3, running",
		"created  2026-11-21 02:00:00 UTC",
		"started  2026-11-21 02:00:00 UTC",
		"running  for 10m00s+",
		"params   load_date=2026-11-21",
		"",
		"TASK             ITEM        STATE      AGENT   ATTEMPTS  EXIT  DURATION",
		"stage-customers              succeeded  etl-01  1         0     1.2s",
		"stage-orders                 running    etl-02  1               9m59s+",
		"per-client       0 (acme)    pending",
		"per-client       1 (globex)  pending",
		"cleanup                      pending",
	), "")

	var resp batonv1.GetRunResponse
	decode(t, b.run(t, "run", "get", "1", "-o", "json"), &resp)
	if diff := cmp.Diff(final, resp.GetRun(), protocmp.Transform(), protocmp.IgnoreFields(&batonv1.Run{}, "id")); diff != "" {
		t.Errorf("run get -o json (-want +got):\n%s", diff)
	}

	b.run(t, "run", "get", "9").want(t, cli.ExitError, "", "baton: get run 9: run 9 not found\n")
}

func TestRunGetLongStderr(t *testing.T) {
	t.Parallel()
	b := setup(t)
	var tail strings.Builder
	for i := range 25 {
		tail.WriteString(strings.Repeat("x", i) + "\n")
	}
	b.srv.AddRun(fakeserver.RunFixture{Run: &batonv1.Run{Job: "j", JobVersion: 1, State: batonv1.RunState_RUN_STATE_FAILED,
		Tasks: []*batonv1.TaskRun{{Task: "t", State: batonv1.TaskState_TASK_STATE_LOST, StderrTail: tail.String()}}}})
	r := b.run(t, "run", "get", "1")
	want := "t lost: no error message\n  stderr, last 10 lines:\n    " + strings.Repeat("x", 15) + "\n"
	if r.code != cli.ExitOK || !strings.Contains(r.stdout, want) || strings.Contains(r.stdout, "    "+strings.Repeat("x", 14)+"\n") {
		t.Errorf("run get = %d:\n%s\nwant the last 10 stderr lines only, starting:\n%s", r.code, r.stdout, want)
	}
}

// TestRunGetRejected: a failed instance whose attempt the agent's
// allowlist refused shows as rejected, with the agent's message.
func TestRunGetRejected(t *testing.T) {
	t.Parallel()
	b := setup(t)
	msg := "program /bin/sh is not allowed on agent a1: it matches none of --allow /opt/etl/bin/*"
	b.srv.AddRun(fakeserver.RunFixture{Run: &batonv1.Run{Job: "j", JobVersion: 1, State: batonv1.RunState_RUN_STATE_FAILED,
		Tasks: []*batonv1.TaskRun{{Task: "shell", State: batonv1.TaskState_TASK_STATE_FAILED, Attempts: 1, Agent: "a1",
			AttemptState: batonv1.AttemptState_ATTEMPT_STATE_REJECTED, Error: msg}}}})
	r := b.run(t, "run", "get", "1")
	for _, want := range []string{"shell        rejected  a1     1", "\nshell rejected: " + msg + "\n"} {
		if r.code != cli.ExitOK || !strings.Contains(r.stdout, want) {
			t.Errorf("run get = %d:\n%s\nwant it to contain %q", r.code, r.stdout, want)
		}
	}
}

func TestRunList(t *testing.T) {
	t.Parallel()
	b := setup(t)
	f := fakeserver.NightlyRun(batonv1.RunState_RUN_STATE_FAILED)
	b.srv.AddRun(fakeserver.RunFixture{Run: f.FinalRun()})
	b.srv.AddRun(fakeserver.RunFixture{Run: &batonv1.Run{Job: "hourly", JobVersion: 7, State: batonv1.RunState_RUN_STATE_QUEUED,
		CreateTime: f.Run.GetCreateTime()}})
	b.srv.AddRun(fakeserver.RunFixture{Run: f.Updates[0].Run})
	b.srv.SetMaxPageSize(2)

	b.run(t, "run", "list").want(t, cli.ExitOK, lines(
		"RUN  JOB              VERSION  STATE    STARTED                  DURATION  RESTARTS",
		"3    nightly-dw-load  3        running  2026-11-21 02:00:00 UTC  10m00s+   0",
		"2    hourly           7        queued   2026-11-21 02:00:00 UTC  10m00s+   0",
		"1    nightly-dw-load  3        failed   2026-11-21 02:00:00 UTC  3m05s     0",
	), "")
	b.run(t, "run", "list", "--job", "nightly-dw-load", "--limit", "1").want(t, cli.ExitOK, lines(
		"RUN  JOB              VERSION  STATE    STARTED                  DURATION  RESTARTS",
		"3    nightly-dw-load  3        running  2026-11-21 02:00:00 UTC  10m00s+   0",
	), "")

	var resp batonv1.ListRunsResponse
	decode(t, b.run(t, "run", "list", "-o", "json"), &resp)
	if len(resp.GetRuns()) != 3 {
		t.Errorf("run list -o json = %d runs, want 3", len(resp.GetRuns()))
	}
	b.run(t, "run", "list", "--limit", "0").want(t, cli.ExitError, "",
		"baton: invalid --limit 0: must be positive\nRun 'baton run list --help' for usage.\n")
}

func TestRunCancel(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.srv.AddRun(fakeserver.RunFixture{Run: &batonv1.Run{Job: "hourly", State: batonv1.RunState_RUN_STATE_RUNNING}})
	b.srv.AddRun(fakeserver.RunFixture{Run: &batonv1.Run{Job: "hourly", State: batonv1.RunState_RUN_STATE_SUCCEEDED}})

	b.run(t, "run", "cancel", "1", "--reason", "wrong load date").want(t, cli.ExitOK, "run 1: cancelling\n", "")
	if reqs := b.srv.CancelRequests(); len(reqs) != 1 || reqs[0].GetReason() != "wrong load date" || reqs[0].GetRunId() != 1 {
		t.Errorf("CancelRun requests = %v, want run 1 with the reason", reqs)
	}
	b.run(t, "run", "cancel", "2").want(t, cli.ExitError, "",
		"baton: cancel run 2: run 2 already ended (RUN_STATE_SUCCEEDED)\n")

	var resp batonv1.CancelRunResponse
	decode(t, b.run(t, "run", "cancel", "1", "-o", "json"), &resp)
	if resp.GetRun().GetState() != batonv1.RunState_RUN_STATE_CANCELLING {
		t.Errorf("run cancel -o json = %v, want CANCELLING", &resp)
	}
}

// cancelOnWrite cancels a context once something is written to it.
type cancelOnWrite struct {
	strings.Builder
	cancel context.CancelFunc
	after  string
}

func (w *cancelOnWrite) Write(p []byte) (int, error) {
	n, err := w.Builder.Write(p)
	if strings.Contains(w.String(), w.after) {
		w.cancel()
	}
	return n, err
}

func TestRunWatchInterrupted(t *testing.T) {
	t.Parallel()
	b := setup(t)
	// The run never ends; the interrupt (a cancelled context, as Ctrl-C
	// makes in main) arrives once the first event is printed.
	b.srv.AddRun(fakeserver.RunFixture{
		Run:    &batonv1.Run{Job: "hourly", JobVersion: 1, State: batonv1.RunState_RUN_STATE_RUNNING},
		Events: []*batonv1.RunEvent{{RunState: batonv1.RunState_RUN_STATE_RUNNING, Time: timestamppb.New(fakeserver.Base)}},
	})
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	stdout := &cancelOnWrite{cancel: cancel, after: "running\n"}
	var stderr strings.Builder
	env := &cli.Env{Stdout: stdout, Stderr: &stderr, Location: time.UTC}
	code := env.Run(ctx, []string{"--addr", b.srv.Addr(), "run", "watch", "1"})
	if code != cli.ExitError || !strings.HasPrefix(stderr.String(), "baton: interrupted: ") {
		t.Errorf("interrupted watch = %d, stderr %q; want exit 2 and \"baton: interrupted: …\"", code, stderr.String())
	}
	if want := "watching run 1: hourly version 1, 0 tasks\n02:00:00  [0/0]  run  running\n"; stdout.String() != want {
		t.Errorf("stdout = %q, want %q", stdout.String(), want)
	}
}
