package cli_test

import (
	"bufio"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/testing/protocmp"

	"github.com/batonhq/baton/client"
	"github.com/batonhq/baton/client/cmd/baton/cli"
	"github.com/batonhq/baton/client/internal/fakeserver"
	batonv1 "github.com/batonhq/baton/gen/baton/v1"
)

// watchRestarted is what run watch prints for run 1, a
// fakeserver.NightlyRun(FAILED) restarted with
// fakeserver.NightlyRestart(SUCCEEDED) for reason "PK_Client duplicates
// removed": the restart's events only, counting the three instances it
// kept as done.
var watchRestarted = lines(
	"watching run 1: nightly-dw-load version 3, restart 1, 5 tasks",
	"03:00:00  [3/5]  run              running               restart 1: PK_Client duplicates removed",
	"03:00:00  [3/5]  per-client[1]    pending               restart",
	"03:00:00  [3/5]  cleanup          pending               restart",
	"03:00:01  [3/5]  per-client[1]    running     etl-02",
	"03:00:02  [4/5]  per-client[1]    succeeded   etl-02  1.5s",
	"03:00:02  [4/5]  cleanup          dispatched  etl-02",
	"03:00:03  [4/5]  cleanup          running     etl-02",
	"03:00:03  [5/5]  cleanup          succeeded   etl-02  0.5s",
	"03:00:03  [5/5]  run              succeeded",
	"run 1 succeeded in 3.5s after restart 1: 5 succeeded",
)

// watchRestartFailed is watchRestarted for a restart that fails again.
var watchRestartFailed = lines(
	"watching run 1: nightly-dw-load version 3, restart 1, 5 tasks",
	"03:00:00  [3/5]  run              running               restart 1: PK_Client duplicates removed",
	"03:00:00  [3/5]  per-client[1]    pending               restart",
	"03:00:00  [3/5]  cleanup          pending               restart",
	"03:00:01  [3/5]  per-client[1]    running     etl-02",
	"03:00:02  [4/5]  per-client[1]    failed      etl-02  1.5s    exit 3: exit status 3",
	"03:00:02  [5/5]  cleanup          blocked                     upstream per-client failed",
	"03:00:02  [5/5]  run              failed                      task per-client[1] failed",
	"run 1 failed in 2.5s after restart 1: 3 succeeded, 1 failed, 1 blocked",
)

// addFailed adds a failed nightly run, over, whose next restart is
// fakeserver.NightlyRestart(end).
func (b *testBundle) addFailed(end batonv1.RunState) int64 {
	id := b.srv.AddRun(fakeserver.NightlyRun(batonv1.RunState_RUN_STATE_FAILED).Finished())
	b.srv.QueueRestart(id, fakeserver.NightlyRestart(end))
	return id
}

// testContext returns a context for the test's own calls, bounded so a
// stuck call fails the test instead of hanging it.
func testContext(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// client returns a client library connection to the fake server, for a
// test to act on the server while baton runs.
func (b *testBundle) client(t *testing.T) *client.Client {
	t.Helper()
	conn, err := client.Dial(client.DialConfig{Addr: b.srv.Addr()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return client.New(conn)
}

func TestRunRestart(t *testing.T) {
	t.Parallel()

	tests := []struct {
		name string
		args []string
		want *batonv1.RestartRunRequest
	}{
		{
			name: "from failures",
			want: &batonv1.RestartRunRequest{RunId: 1, Mode: batonv1.RestartMode_RESTART_MODE_FAILED},
		},
		{
			name: "from a task, with a reason",
			args: []string{"--from", "per-client", "--reason", "client list fixed"},
			want: &batonv1.RestartRunRequest{RunId: 1, Mode: batonv1.RestartMode_RESTART_MODE_FROM_TASK,
				FromTask: "per-client", Reason: "client list fixed"},
		},
		{
			name: "all",
			args: []string{"--all"},
			want: &batonv1.RestartRunRequest{RunId: 1, Mode: batonv1.RestartMode_RESTART_MODE_ALL},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			b.addFailed(batonv1.RunState_RUN_STATE_SUCCEEDED)
			b.run(t, append([]string{"run", "restart", "1"}, tc.args...)...).want(t, cli.ExitOK,
				"run 1 restarted (restart 1): running\n", "")
			if diff := cmp.Diff([]*batonv1.RestartRunRequest{tc.want}, b.srv.RestartRequests(), protocmp.Transform()); diff != "" {
				t.Errorf("RestartRun requests (-want +got):\n%s", diff)
			}
		})
	}

	t.Run("json", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		b.addFailed(batonv1.RunState_RUN_STATE_SUCCEEDED)
		var resp batonv1.RestartRunResponse
		decode(t, b.run(t, "run", "restart", "1", "-o", "json"), &resp)
		if resp.GetRun().GetRestartCount() != 1 || resp.GetRun().GetState() != batonv1.RunState_RUN_STATE_RUNNING {
			t.Errorf("run restart -o json = %v, want the run running, restart 1", &resp)
		}
	})
}

func TestRunRestartErrors(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.addFailed(batonv1.RunState_RUN_STATE_SUCCEEDED)
	b.srv.AddRun(fakeserver.NightlyRun(batonv1.RunState_RUN_STATE_SUCCEEDED)) // run 2, running

	tests := []struct {
		name       string
		args       []string
		wantStderr string
	}{
		{
			name: "still running",
			args: []string{"run", "restart", "2"},
			wantStderr: "baton: restart run 2: run 2 is still active (RUN_STATE_RUNNING)\n" +
				"hint: 'baton run watch 2' follows it to its end; 'baton run cancel 2' stops it\n",
		},
		{
			name:       "unknown run",
			args:       []string{"run", "restart", "9"},
			wantStderr: "baton: restart run 9: run 9 not found\n",
		},
		{
			name:       "unknown task",
			args:       []string{"run", "restart", "1", "--from", "per-clients", "--wait"},
			wantStderr: "baton: restart run 1: from_task: job \"nightly-dw-load\" version 3 has no task \"per-clients\"\n",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b.run(t, tc.args...).want(t, cli.ExitError, "", tc.wantStderr)
		})
	}
}

func TestRunRestartUsage(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.addFailed(batonv1.RunState_RUN_STATE_SUCCEEDED)

	tests := []struct {
		name string
		args []string
		want string
	}{
		{
			name: "from and all",
			args: []string{"run", "restart", "1", "--from", "per-client", "--all"},
			want: "baton: --from and --all cannot be combined: --all already runs every task again\n",
		},
		{
			name: "all and empty from",
			args: []string{"run", "restart", "1", "--all", "--from="},
			want: "baton: --from and --all cannot be combined: --all already runs every task again\n",
		},
		{
			name: "empty from",
			args: []string{"run", "restart", "1", "--from", ""},
			want: "baton: invalid --from \"\": want a task name\n",
		},
		{
			name: "no run",
			args: []string{"run", "restart", "--all"},
			want: "baton: baton run restart needs RUN\n",
		},
		{
			name: "bad run id",
			args: []string{"run", "restart", "last"},
			want: "baton: invalid run id \"last\": want a positive integer\n",
		},
		{
			name: "from without a task",
			args: []string{"run", "restart", "1", "--from"},
			want: "baton: flag needs an argument: --from\n",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b.run(t, tc.args...).want(t, cli.ExitError, "", tc.want+"Run 'baton run restart --help' for usage.\n")
		})
	}
	t.Cleanup(func() {
		if n := len(b.srv.RestartRequests()); n != 0 {
			t.Errorf("RestartRun requests = %d, want none for usage errors", n)
		}
	})
}

func TestRunRestartWait(t *testing.T) {
	t.Parallel()

	tests := []struct {
		name       string
		end        batonv1.RunState
		through    bool
		wantCode   int
		wantStdout string
		wantStderr string
	}{
		{
			name:       "succeeded",
			end:        batonv1.RunState_RUN_STATE_SUCCEEDED,
			wantCode:   cli.ExitOK,
			wantStdout: watchRestarted,
		},
		{
			name:       "succeeded, streamed through restarts",
			end:        batonv1.RunState_RUN_STATE_SUCCEEDED,
			through:    true,
			wantCode:   cli.ExitOK,
			wantStdout: watchRestarted,
		},
		{
			name:       "failed again",
			end:        batonv1.RunState_RUN_STATE_FAILED,
			wantCode:   cli.ExitRunFailed,
			wantStdout: watchRestartFailed,
			wantStderr: "baton: run 1 failed: task per-client[1] failed\n",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			b.srv.SetStreamThroughRestarts(tc.through)
			b.addFailed(tc.end)
			b.run(t, "run", "restart", "1", "--reason", "PK_Client duplicates removed", "--wait").want(t, tc.wantCode,
				"run 1 restarted (restart 1): running\n"+tc.wantStdout, tc.wantStderr)
		})
	}

	t.Run("json", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		b.addFailed(batonv1.RunState_RUN_STATE_SUCCEEDED)
		r := b.run(t, "run", "restart", "1", "--wait", "-o", "json")
		if r.code != cli.ExitOK {
			t.Fatalf("exit code = %d, want 0; stderr: %s", r.code, r.stderr)
		}
		sc := bufio.NewScanner(strings.NewReader(r.stdout))
		if !sc.Scan() {
			t.Fatalf("no output, want the RestartRunResponse first")
		}
		var resp batonv1.RestartRunResponse
		if err := protojson.Unmarshal(sc.Bytes(), &resp); err != nil || resp.GetRun().GetRestartCount() != 1 {
			t.Errorf("first line = %q (%v), want the RestartRunResponse of restart 1", sc.Text(), err)
		}
		// Only the restart's events: cursors 16 (the restart) to 24.
		var cursors []int64
		for sc.Scan() {
			var ev batonv1.RunEvent
			if err := protojson.Unmarshal(sc.Bytes(), &ev); err != nil {
				t.Fatalf("line %q is not a JSON event: %v", sc.Text(), err)
			}
			cursors = append(cursors, ev.GetCursor())
		}
		if diff := cmp.Diff([]int64{16, 17, 18, 19, 20, 21, 22, 23, 24}, cursors); diff != "" {
			t.Errorf("event cursors (-want +got):\n%s", diff)
		}
	})
}

func TestRunWatchRestarted(t *testing.T) {
	t.Parallel()

	for _, tc := range []struct {
		name string
		// through: the server streams on through restarts.
		through bool
		// over: the restart is over when the watch starts, so the run's
		// instances are in their final states then; the count still starts
		// from those the restart kept.
		over bool
	}{
		{name: "stream ends at each run end"},
		{name: "stream goes through restarts", through: true},
		{name: "restart over", over: true},
		{name: "restart over, stream goes through restarts", through: true, over: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx := testContext(t)
			b := setup(t)
			b.srv.SetStreamThroughRestarts(tc.through)
			b.srv.AddRun(fakeserver.NightlyRun(batonv1.RunState_RUN_STATE_FAILED).Finished())
			r := fakeserver.NightlyRestart(batonv1.RunState_RUN_STATE_SUCCEEDED)
			if tc.over {
				r = r.Finished()
			}
			b.srv.QueueRestart(1, r)
			if _, err := b.client(t).RestartRun(ctx, &client.RestartRunParams{RunID: 1, Reason: "PK_Client duplicates removed"}); err != nil {
				t.Fatalf("RestartRun: %v", err)
			}
			b.run(t, "run", "watch", "1").want(t, cli.ExitOK, watchRestarted, "")
		})
	}

	t.Run("json", func(t *testing.T) {
		t.Parallel()
		ctx := testContext(t)
		b := setup(t)
		b.addFailed(batonv1.RunState_RUN_STATE_SUCCEEDED)
		if _, err := b.client(t).RestartRun(ctx, &client.RestartRunParams{RunID: 1}); err != nil {
			t.Fatalf("RestartRun: %v", err)
		}
		r := b.run(t, "run", "watch", "1", "-o", "json")
		if r.code != cli.ExitOK {
			t.Fatalf("exit code = %d, want 0; stderr: %s", r.code, r.stderr)
		}
		var first batonv1.RunEvent
		if err := protojson.Unmarshal([]byte(strings.SplitN(r.stdout, "\n", 2)[0]), &first); err != nil ||
			first.GetCursor() != 16 || first.GetMessage() != "restart 1: restarted by request" {
			t.Errorf("first event = %v (%v), want the restart event, cursor 16", &first, err)
		}
		if n := strings.Count(r.stdout, "\n"); n != 9 {
			t.Errorf("got %d events, want the restart's 9:\n%s", n, r.stdout)
		}
	})
}

// restartOnWrite restarts run 1 when baton prints the line that says the
// run failed: WaitRun calls baton's event handler before it looks at the
// run again, so the restart is in place by then.
type restartOnWrite struct {
	strings.Builder
	ctx     context.Context
	c       *client.Client
	err     error
	started bool
}

func (w *restartOnWrite) Write(p []byte) (int, error) {
	n, err := w.Builder.Write(p)
	if !w.started && strings.Contains(w.String(), "  run              failed") {
		w.started = true
		_, w.err = w.c.RestartRun(w.ctx, &client.RestartRunParams{RunID: 1, Reason: "PK_Client duplicates removed"})
	}
	return n, err
}

func TestRunWatchFollowsRestart(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	b := setup(t)
	b.srv.AddRun(fakeserver.NightlyRun(batonv1.RunState_RUN_STATE_FAILED))
	b.srv.QueueRestart(1, fakeserver.NightlyRestart(batonv1.RunState_RUN_STATE_SUCCEEDED))

	stdout := &restartOnWrite{ctx: ctx, c: b.client(t)}
	var stderr strings.Builder
	env := &cli.Env{Stdout: stdout, Stderr: &stderr, Now: func() time.Time { return now }, Location: time.UTC}
	code := env.Run(ctx, []string{"--addr", b.srv.Addr(), "run", "watch", "1"})
	if stdout.err != nil {
		t.Fatalf("RestartRun: %v", stdout.err)
	}
	// The first generation as usual, then the restart, counted from where
	// the first one left off.
	want := strings.TrimSuffix(watchFailed, "run 1 failed in 3m05s: 3 succeeded, 1 failed, 1 blocked\n") + lines(
		"03:00:00  [5/5]  run              running                     restart 1: PK_Client duplicates removed",
		"03:00:00  [4/5]  per-client[1]    pending                     restart",
		"03:00:00  [3/5]  cleanup          pending                     restart",
		"03:00:01  [3/5]  per-client[1]    running     etl-02",
		"03:00:02  [4/5]  per-client[1]    succeeded   etl-02  1.5s",
		"03:00:02  [4/5]  cleanup          dispatched  etl-02",
		"03:00:03  [4/5]  cleanup          running     etl-02",
		"03:00:03  [5/5]  cleanup          succeeded   etl-02  0.5s",
		"03:00:03  [5/5]  run              succeeded",
		"run 1 succeeded in 3.5s after restart 1: 5 succeeded",
	)
	result{code: code, stdout: stdout.String(), stderr: stderr.String()}.want(t, cli.ExitOK, want, "")
}

func TestRunStartWaitRestarted(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	b := setup(t)
	// A request id that started a run before: baton follows that run, at
	// its latest restart.
	b.srv.SetRunTemplate("nightly-dw-load", fakeserver.NightlyRun(batonv1.RunState_RUN_STATE_FAILED).Finished())
	b.run(t, "run", "start", "nightly-dw-load", "--request-id", "nightly-2026-11-21").want(t, cli.ExitOK, "1\n", "")
	b.srv.QueueRestart(1, fakeserver.NightlyRestart(batonv1.RunState_RUN_STATE_SUCCEEDED))
	if _, err := b.client(t).RestartRun(ctx, &client.RestartRunParams{RunID: 1, Reason: "PK_Client duplicates removed"}); err != nil {
		t.Fatalf("RestartRun: %v", err)
	}
	b.run(t, "run", "start", "nightly-dw-load", "--request-id", "nightly-2026-11-21", "--wait").want(t, cli.ExitOK,
		"1\n"+watchRestarted,
		"baton: request id \"nightly-2026-11-21\" already started run 1; not started again\n")
}
