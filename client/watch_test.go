package client_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/batonhq/baton/client"
	"github.com/batonhq/baton/client/internal/fakeserver"
	batonv1 "github.com/batonhq/baton/gen/baton/v1"
)

// fastWait keeps reconnect backoffs short so tests finish quickly.
func fastWait(o *client.WaitOptions) *client.WaitOptions {
	o.MinBackoff, o.MaxBackoff = time.Millisecond, 5*time.Millisecond
	return o
}

func cursors(n int) []int64 {
	var cs []int64
	for i := range n {
		cs = append(cs, int64(i+1))
	}
	return cs
}

func TestWatchRun(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	b := setup(t)
	f := fakeserver.NightlyRun(batonv1.RunState_RUN_STATE_FAILED)
	id := b.srv.AddRun(f)

	var got []int64
	for ev, err := range b.client.WatchRun(ctx, id, 4) {
		if err != nil {
			t.Fatalf("WatchRun: %v", err)
		}
		got = append(got, ev.GetCursor())
	}
	if diff := cmp.Diff(cursors(len(f.Events))[4:], got); diff != "" {
		t.Errorf("WatchRun(after 4) cursors (-want +got):\n%s", diff)
	}

	_, err := func() (*batonv1.RunEvent, error) {
		for ev, err := range b.client.WatchRun(ctx, 999, 0) {
			return ev, err
		}
		return nil, nil
	}()
	if status.Code(err) != codes.NotFound {
		t.Errorf("WatchRun(unknown run) code = %v (%v), want NotFound", status.Code(err), err)
	}
}

func TestWatchRunBreakReleasesStream(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	b := setup(t)
	// A run that never ends: the stream would stay open for ever unless
	// leaving the loop closes it. goleak in TestMain catches a leak.
	id := b.srv.AddRun(fakeserver.RunFixture{
		Run:    &batonv1.Run{Job: "a", State: batonv1.RunState_RUN_STATE_RUNNING},
		Events: []*batonv1.RunEvent{{RunState: batonv1.RunState_RUN_STATE_RUNNING}, {Task: "t", TaskState: batonv1.TaskState_TASK_STATE_RUNNING}},
	})
	n := 0
	for _, err := range b.client.WatchRun(ctx, id, 0) {
		if err != nil {
			t.Fatalf("WatchRun: %v", err)
		}
		n++
		if n == 2 {
			break
		}
	}
	if n != 2 {
		t.Errorf("saw %d events, want 2", n)
	}
}

func TestWaitRun(t *testing.T) {
	t.Parallel()

	tests := []struct {
		name   string
		breaks []fakeserver.Break
		replay bool
		// wantAfter is the after_cursor of each WatchRun request, when the
		// breaks make it deterministic.
		wantAfter []int64
	}{
		{name: "no break", wantAfter: []int64{0}},
		{
			name:      "unavailable mid-stream",
			breaks:    []fakeserver.Break{{After: 5}},
			wantAfter: []int64{0, 5},
		},
		{
			name:      "unavailable twice, once before any event",
			breaks:    []fakeserver.Break{{After: 3}, {After: 0}, {After: 4}},
			wantAfter: []int64{0, 3, 3, 7},
		},
		{
			name:   "connection dropped",
			breaks: []fakeserver.Break{{After: 6, Drop: true}},
		},
		{
			name:      "server replays old events",
			breaks:    []fakeserver.Break{{After: 8}},
			replay:    true,
			wantAfter: []int64{0, 8},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx := testContext(t)
			b := setup(t)
			f := fakeserver.NightlyRun(batonv1.RunState_RUN_STATE_FAILED)
			id := b.srv.AddRun(f)
			for _, br := range tc.breaks {
				b.srv.BreakWatch(id, br)
			}
			b.srv.SetReplayAll(tc.replay)

			var got []int64
			reconnects := 0
			run, err := b.client.WaitRun(ctx, id, fastWait(&client.WaitOptions{
				OnEvent: func(ev *batonv1.RunEvent) error {
					got = append(got, ev.GetCursor())
					return nil
				},
				OnReconnect: func(err error) {
					reconnects++
					if status.Code(err) != codes.Unavailable {
						t.Errorf("OnReconnect(%v): code %v, want Unavailable", err, status.Code(err))
					}
				},
			}))
			if err != nil {
				t.Fatalf("WaitRun: %v", err)
			}
			if diff := cmp.Diff(cursors(len(f.Events)), got); diff != "" {
				t.Errorf("events seen (-want +got):\n%s", diff)
			}
			if !proto.Equal(run, withID(f.FinalRun(), id)) {
				t.Errorf("WaitRun = %v, want the final run %v", run, f.FinalRun())
			}
			if reconnects != len(tc.breaks) {
				t.Errorf("OnReconnect calls = %d, want %d", reconnects, len(tc.breaks))
			}
			if n := len(b.srv.WatchRequests()); n != len(tc.breaks)+1 {
				t.Errorf("WatchRun requests = %d, want %d (one per break, plus the last)", n, len(tc.breaks)+1)
			}
			if tc.wantAfter != nil {
				var after []int64
				for _, r := range b.srv.WatchRequests() {
					after = append(after, r.GetAfterCursor())
				}
				if diff := cmp.Diff(tc.wantAfter, after); diff != "" {
					t.Errorf("WatchRun after_cursor per request (-want +got):\n%s", diff)
				}
			}
		})
	}
}

func withID(r *batonv1.Run, id int64) *batonv1.Run {
	r = proto.Clone(r).(*batonv1.Run)
	r.Id = id
	return r
}

func TestWaitRunFromCursor(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	b := setup(t)
	f := fakeserver.NightlyRun(batonv1.RunState_RUN_STATE_SUCCEEDED)
	id := b.srv.AddRun(f)

	n := 0
	run, err := b.client.WaitRun(ctx, id, &client.WaitOptions{
		AfterCursor: int64(len(f.Events) - 2),
		OnEvent:     func(*batonv1.RunEvent) error { n++; return nil },
	})
	if err != nil {
		t.Fatalf("WaitRun: %v", err)
	}
	if n != 2 || run.GetState() != batonv1.RunState_RUN_STATE_SUCCEEDED {
		t.Errorf("WaitRun(after all but 2) = %v after %d events, want SUCCEEDED after 2", run.GetState(), n)
	}
}

func TestWaitRunLive(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	b := setup(t)
	f := fakeserver.NightlyRun(batonv1.RunState_RUN_STATE_SUCCEEDED)
	// Only the first event exists when the wait starts; each event the
	// client sees releases the next one, as a live run would.
	id := b.srv.AddRun(fakeserver.RunFixture{Run: f.Run, Events: f.Events[:1]})

	var got []int64
	run, err := b.client.WaitRun(ctx, id, &client.WaitOptions{
		OnEvent: func(ev *batonv1.RunEvent) error {
			got = append(got, ev.GetCursor())
			next := int(ev.GetCursor())
			if next == len(f.Events)-1 {
				b.srv.SetRun(id, f.FinalRun())
			}
			if next < len(f.Events) {
				b.srv.AppendEvents(id, f.Events[next])
			}
			return nil
		},
	})
	if err != nil {
		t.Fatalf("WaitRun: %v", err)
	}
	if diff := cmp.Diff(cursors(len(f.Events)), got); diff != "" {
		t.Errorf("events seen (-want +got):\n%s", diff)
	}
	if run.GetState() != batonv1.RunState_RUN_STATE_SUCCEEDED {
		t.Errorf("WaitRun state = %v, want SUCCEEDED", run.GetState())
	}
	if n := len(b.srv.WatchRequests()); n != 1 {
		t.Errorf("WatchRun requests = %d, want 1 (one live stream)", n)
	}
}

func TestWaitRunErrors(t *testing.T) {
	t.Parallel()

	type testBundleWait struct {
		*testBundle
		id int64
	}
	setupWait := func(t *testing.T) *testBundleWait {
		t.Helper()
		b := setup(t)
		id := b.srv.AddRun(fakeserver.NightlyRun(batonv1.RunState_RUN_STATE_FAILED))
		return &testBundleWait{testBundle: b, id: id}
	}

	t.Run("not retryable", func(t *testing.T) {
		t.Parallel()
		ctx := testContext(t)
		b := setupWait(t)
		b.srv.BreakWatch(b.id, fakeserver.Break{After: 2, Err: status.Error(codes.PermissionDenied, "no")})
		_, err := b.client.WaitRun(ctx, b.id, fastWait(&client.WaitOptions{}))
		if status.Code(err) != codes.PermissionDenied {
			t.Errorf("WaitRun code = %v (%v), want PermissionDenied", status.Code(err), err)
		}
		if n := len(b.srv.WatchRequests()); n != 1 {
			t.Errorf("WatchRun requests = %d, want 1 (no reconnect)", n)
		}
	})

	t.Run("gives up", func(t *testing.T) {
		t.Parallel()
		ctx := testContext(t)
		b := setupWait(t)
		for range 10 {
			b.srv.BreakWatch(b.id, fakeserver.Break{After: 0})
		}
		_, err := b.client.WaitRun(ctx, b.id, fastWait(&client.WaitOptions{MaxReconnects: 3}))
		if status.Code(err) != codes.Unavailable {
			t.Errorf("WaitRun code = %v (%v), want Unavailable", status.Code(err), err)
		}
		if n := len(b.srv.WatchRequests()); n != 4 {
			t.Errorf("WatchRun requests = %d, want 4 (1 + 3 reconnects)", n)
		}
	})

	t.Run("progress resets the count", func(t *testing.T) {
		t.Parallel()
		ctx := testContext(t)
		b := setupWait(t)
		// Each stream sends one event before it breaks: never two fruitless
		// reconnects in a row, so MaxReconnects 1 is enough.
		for range 20 {
			b.srv.BreakWatch(b.id, fakeserver.Break{After: 1})
		}
		run, err := b.client.WaitRun(ctx, b.id, fastWait(&client.WaitOptions{MaxReconnects: 1}))
		if err != nil {
			t.Fatalf("WaitRun: %v", err)
		}
		if run.GetState() != batonv1.RunState_RUN_STATE_FAILED {
			t.Errorf("WaitRun state = %v, want FAILED", run.GetState())
		}
	})

	t.Run("event callback error", func(t *testing.T) {
		t.Parallel()
		ctx := testContext(t)
		b := setupWait(t)
		errStop := errors.New("stop here")
		_, err := b.client.WaitRun(ctx, b.id, &client.WaitOptions{
			OnEvent: func(ev *batonv1.RunEvent) error {
				if ev.GetCursor() == 3 {
					return errStop
				}
				return nil
			},
		})
		if !errors.Is(err, errStop) {
			t.Errorf("WaitRun = %v, want the callback's error", err)
		}
	})

	t.Run("context cancelled", func(t *testing.T) {
		t.Parallel()
		ctx := testContext(t)
		b := setup(t)
		id := b.srv.AddRun(fakeserver.RunFixture{
			Run:    &batonv1.Run{Job: "a", State: batonv1.RunState_RUN_STATE_RUNNING},
			Events: []*batonv1.RunEvent{{RunState: batonv1.RunState_RUN_STATE_RUNNING}},
		})
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		_, err := b.client.WaitRun(ctx, id, &client.WaitOptions{
			OnEvent: func(*batonv1.RunEvent) error { cancel(); return nil },
		})
		if status.Code(err) != codes.Canceled {
			t.Errorf("WaitRun code = %v (%v), want Canceled", status.Code(err), err)
		}
	})

	t.Run("unknown run", func(t *testing.T) {
		t.Parallel()
		ctx := testContext(t)
		b := setup(t)
		_, err := b.client.WaitRun(ctx, 77, nil)
		if status.Code(err) != codes.NotFound {
			t.Errorf("WaitRun code = %v (%v), want NotFound", status.Code(err), err)
		}
	})
}

func TestTerminal(t *testing.T) {
	t.Parallel()
	for s := range batonv1.RunState_name {
		st := batonv1.RunState(s)
		want := st == batonv1.RunState_RUN_STATE_SUCCEEDED || st == batonv1.RunState_RUN_STATE_FAILED ||
			st == batonv1.RunState_RUN_STATE_CANCELLED
		if got := client.Terminal(st); got != want {
			t.Errorf("Terminal(%v) = %t, want %t", st, got, want)
		}
	}
}

// cursorRange returns the cursors from..to.
func cursorRange(from, to int64) []int64 {
	var cs []int64
	for c := from; c <= to; c++ {
		cs = append(cs, c)
	}
	return cs
}

// A failed nightly run has 15 events; NightlyRestart(SUCCEEDED) adds the
// restart event (16) and 8 more; NightlyRestart(FAILED) adds the restart
// event and 6 more.
const (
	firstEnd        = 15
	restartEnd      = 24
	restartFailEnd  = 22
	secondRestarted = restartFailEnd + 1
)

func TestWaitRunRestarted(t *testing.T) {
	t.Parallel()

	type restartBundle struct {
		*testBundle
		id int64
	}
	// setupRestarted adds a failed run restarted restarts times, every
	// restart already over: the first ones fail again, the last succeeds.
	setupRestarted := func(t *testing.T, restarts int, through bool) *restartBundle {
		t.Helper()
		ctx := testContext(t)
		b := setup(t)
		b.srv.SetStreamThroughRestarts(through)
		id := b.srv.AddRun(fakeserver.NightlyRun(batonv1.RunState_RUN_STATE_FAILED).Finished())
		for i := range restarts {
			end := batonv1.RunState_RUN_STATE_FAILED
			if i == restarts-1 {
				end = batonv1.RunState_RUN_STATE_SUCCEEDED
			}
			b.srv.QueueRestart(id, fakeserver.NightlyRestart(end).Finished())
			if _, err := b.client.RestartRun(ctx, &client.RestartRunParams{RunID: id}); err != nil {
				t.Fatalf("RestartRun: %v", err)
			}
		}
		return &restartBundle{testBundle: b, id: id}
	}

	tests := []struct {
		name     string
		restarts int
		opts     client.WaitOptions
		want     []int64
		// wantAfter is the after_cursor of each WatchRun request: a server
		// that ends a stream at every terminal event, then one that streams
		// on through restarts.
		wantAfter, wantAfterThrough []int64
	}{
		{
			name:             "every generation",
			restarts:         1,
			want:             cursorRange(1, restartEnd),
			wantAfter:        []int64{0, firstEnd},
			wantAfterThrough: []int64{0},
		},
		{
			name:             "latest generation",
			restarts:         1,
			opts:             client.WaitOptions{FromRestart: 1},
			want:             cursorRange(firstEnd+1, restartEnd),
			wantAfter:        []int64{0, firstEnd},
			wantAfterThrough: []int64{0},
		},
		{
			name:             "latest of three",
			restarts:         2,
			opts:             client.WaitOptions{FromRestart: 2},
			want:             cursorRange(secondRestarted, secondRestarted+restartEnd-firstEnd-1),
			wantAfter:        []int64{0, firstEnd, restartFailEnd},
			wantAfterThrough: []int64{0},
		},
		{
			// From a cursor WaitRun cannot count restarts; it watches once
			// more to learn that nothing follows.
			name:             "resumed in an earlier generation",
			restarts:         1,
			opts:             client.WaitOptions{AfterCursor: 5},
			want:             cursorRange(6, restartEnd),
			wantAfter:        []int64{5, firstEnd, restartEnd},
			wantAfterThrough: []int64{5, restartEnd},
		},
		{
			name:             "resumed in the latest generation",
			restarts:         1,
			opts:             client.WaitOptions{AfterCursor: 20},
			want:             cursorRange(21, restartEnd),
			wantAfter:        []int64{20, restartEnd},
			wantAfterThrough: []int64{20, restartEnd},
		},
	}
	for _, tc := range tests {
		for _, through := range []bool{false, true} {
			name := tc.name
			if through {
				name += ", streamed through restarts"
			}
			t.Run(name, func(t *testing.T) {
				t.Parallel()
				ctx := testContext(t)
				b := setupRestarted(t, tc.restarts, through)
				var got []int64
				opts := tc.opts
				opts.OnEvent = func(ev *batonv1.RunEvent) error {
					got = append(got, ev.GetCursor())
					return nil
				}
				opts.OnReconnect = func(err error) { t.Errorf("OnReconnect(%v), want no reconnect", err) }
				run, err := b.client.WaitRun(ctx, b.id, &opts)
				if err != nil {
					t.Fatalf("WaitRun: %v", err)
				}
				if run.GetState() != batonv1.RunState_RUN_STATE_SUCCEEDED || run.GetRestartCount() != int32(tc.restarts) {
					t.Errorf("WaitRun = %v restart %d, want SUCCEEDED restart %d", run.GetState(), run.GetRestartCount(), tc.restarts)
				}
				if diff := cmp.Diff(tc.want, got); diff != "" {
					t.Errorf("events seen (-want +got):\n%s", diff)
				}
				var after []int64
				for _, r := range b.srv.WatchRequests() {
					after = append(after, r.GetAfterCursor())
				}
				want := tc.wantAfter
				if through {
					want = tc.wantAfterThrough
				}
				if diff := cmp.Diff(want, after); diff != "" {
					t.Errorf("WatchRun after_cursor per request (-want +got):\n%s", diff)
				}
			})
		}
	}
}

func TestWaitRunFollowsRestart(t *testing.T) {
	t.Parallel()
	for _, through := range []bool{false, true} {
		t.Run(fmt.Sprintf("through=%t", through), func(t *testing.T) {
			t.Parallel()
			ctx := testContext(t)
			b := setup(t)
			b.srv.SetStreamThroughRestarts(through)
			id := b.srv.AddRun(fakeserver.NightlyRun(batonv1.RunState_RUN_STATE_FAILED))
			b.srv.QueueRestart(id, fakeserver.NightlyRestart(batonv1.RunState_RUN_STATE_SUCCEEDED))

			// The run is restarted the moment its first generation ends,
			// before WaitRun can look at it.
			var got []int64
			run, err := b.client.WaitRun(ctx, id, &client.WaitOptions{
				OnEvent: func(ev *batonv1.RunEvent) error {
					got = append(got, ev.GetCursor())
					if ev.GetCursor() == firstEnd {
						_, err := b.client.RestartRun(ctx, &client.RestartRunParams{RunID: id, Reason: "fixed"})
						return err
					}
					return nil
				},
				OnReconnect: func(err error) { t.Errorf("OnReconnect(%v), want no reconnect", err) },
			})
			if err != nil {
				t.Fatalf("WaitRun: %v", err)
			}
			if run.GetState() != batonv1.RunState_RUN_STATE_SUCCEEDED || run.GetRestartCount() != 1 {
				t.Errorf("WaitRun = %v restart %d, want SUCCEEDED restart 1", run.GetState(), run.GetRestartCount())
			}
			if diff := cmp.Diff(cursorRange(1, restartEnd), got); diff != "" {
				t.Errorf("events seen (-want +got):\n%s", diff)
			}
		})
	}
}

func TestWaitRunOptionErrors(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	b := setup(t)
	for _, tc := range []struct {
		opts client.WaitOptions
		want string
	}{
		{client.WaitOptions{FromRestart: -1}, "wait for run 1: FromRestart -1 is negative"},
		{client.WaitOptions{FromRestart: 1, AfterCursor: 3}, "wait for run 1: FromRestart needs AfterCursor 0, got 3"},
	} {
		if _, err := b.client.WaitRun(ctx, 1, &tc.opts); err == nil || err.Error() != tc.want {
			t.Errorf("WaitRun(%+v) = %v, want %q", tc.opts, err, tc.want)
		}
	}
	if n := len(b.srv.WatchRequests()); n != 0 {
		t.Errorf("WatchRun requests = %d, want none", n)
	}
}
