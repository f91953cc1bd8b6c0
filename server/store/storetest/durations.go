package storetest

import (
	"fmt"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/batonhq/baton/server/store"
)

// testTaskDurations: the mean of each task's newest succeeded attempts, by
// finish time, across runs and job versions, within the newest runs only.
func testTaskDurations(t *testing.T, h Harness) {
	b := setup(t, h)
	base := ms(time.Now().Add(-time.Hour))
	at := func(m int) time.Time { return base.Add(time.Duration(m) * time.Minute) }
	durations := func(p store.TaskDurationsParams) map[string]time.Duration {
		t.Helper()
		got, err := b.s.TaskDurations(b.ctx, &p)
		if err != nil {
			t.Fatalf("TaskDurations(%+v) = %v", p, err)
		}
		return got
	}
	check := func(p store.TaskDurationsParams, want map[string]time.Duration) {
		t.Helper()
		if diff := cmp.Diff(want, durations(p), cmpopts.EquateEmpty()); diff != "" {
			t.Fatalf("TaskDurations(%+v) mismatch (-want +got):\n%s", p, diff)
		}
	}

	// Nothing to measure yet.
	check(store.TaskDurationsParams{JobName: "load"}, nil)
	if got := durations(store.TaskDurationsParams{JobName: "load"}); got == nil {
		t.Fatal("TaskDurations(unknown job) = nil map, want an empty one")
	}

	v1 := b.job(t, "load")
	res, err := b.s.JobApply(b.ctx, &store.JobApplyParams{Name: "load", Spec: spec("load", 2), Source: "name: load"})
	if err != nil || res.Job.Version != 2 {
		t.Fatalf("JobApply(load, changed) = %+v, %v; want version 2", res, err)
	}
	v2 := res.Job
	other := b.job(t, "other")

	// newRun creates a run of j and returns its instances by "task/item".
	newRun := func(j *store.Job, ins ...store.InstanceInit) map[string]*store.Instance {
		t.Helper()
		r := b.run(t, j, store.OverlapAllow, ins...)
		out := map[string]*store.Instance{}
		if len(ins) == 0 {
			return out
		}
		for _, in := range mustList(t, b, r.ID) {
			out[fmt.Sprint(in.Task, "/", in.Item)] = in
		}
		return out
	}
	// finish claims in and records an outcome started at start (none when
	// zero) and finished at end.
	finish := func(in *store.Instance, state store.AttemptState, start, end time.Time) *store.Attempt {
		t.Helper()
		a := b.claim(t, in, "etl-01", longTTL)
		if _, err := b.s.AttemptFinish(b.ctx, &store.AttemptFinishParams{
			ID: a.ID, Agent: "etl-01", State: state, ExitCode: intp(0), StartedAt: start, FinishedAt: end,
		}); err != nil {
			t.Fatalf("AttemptFinish(%d) = %v", a.ID, err)
		}
		return a
	}
	ok := store.AttemptSucceeded
	plain := func(task string) store.InstanceInit { return ready(task, store.NoItem) }

	// Run 1 (version 1): its extract finished last of all runs.
	r1 := newRun(v1, plain("extract"), plain("load"), plain("quick"), plain("notify"))
	finish(r1["extract/-1"], ok, at(40).Add(-100*time.Second), at(40))
	finish(r1["load/-1"], ok, at(41).Add(-7*time.Second), at(41))
	// A succeeded attempt without a start time has no duration.
	finish(r1["quick/-1"], ok, time.Time{}, at(42))
	// Failed and timed-out attempts never count.
	finish(r1["notify/-1"], store.AttemptFailed, at(43), at(44))

	// Run 2: its extract is the oldest by finish time, so it drops out of
	// the last three.
	r2 := newRun(v2, plain("extract"), plain("notify"), plain("skewed"), plain("tiny"))
	finish(r2["extract/-1"], ok, at(10).Add(-time.Second), at(10))
	finish(r2["notify/-1"], store.AttemptTimedOut, at(11), at(45))
	// A start after the finish (clock skew) counts as zero.
	finish(r2["skewed/-1"], ok, at(12).Add(5*time.Second), at(12))
	// Means keep sub-millisecond precision.
	finish(r2["tiny/-1"], ok, at(13).Add(-time.Millisecond), at(13))

	// Run 3.
	r3 := newRun(v2, plain("extract"), plain("skewed"), plain("tiny"), plain("load"))
	finish(r3["extract/-1"], ok, at(20).Add(-200*time.Second), at(20))
	finish(r3["skewed/-1"], ok, at(21).Add(-4*time.Second), at(21))
	finish(r3["tiny/-1"], ok, at(22).Add(-2*time.Millisecond), at(22))
	// A lost attempt's late success is history, not a success.
	lost := b.claim(t, r3["load/-1"], "etl-01", longTTL)
	if _, err := b.s.AttemptLose(b.ctx, &store.AttemptLoseParams{ID: lost.ID, Error: "agent lost"}); err != nil {
		t.Fatalf("AttemptLose() = %v", err)
	}
	_, err = b.s.AttemptFinish(b.ctx, &store.AttemptFinishParams{
		ID: lost.ID, Agent: "etl-01", State: ok, ExitCode: intp(0), StartedAt: at(46).Add(-time.Hour), FinishedAt: at(46),
	})
	wantErr(t, "AttemptFinish(lost)", err, store.ErrStaleAttempt)

	// Run 4: extract fails once (a long attempt, finished recently) and
	// succeeds on retry; per-client is a for-each task whose items count
	// as attempts of the task.
	r4 := newRun(v2, plain("extract"), ready("per-client", 0), ready("per-client", 1), ready("per-client", 2),
		ready("per-client", 3), ready("per-client", 4))
	failed := finish(r4["extract/-1"], store.AttemptFailed, at(25).Add(-time.Hour), at(25))
	if err := b.s.InstanceTransition(b.ctx, &store.InstanceTransitionParams{
		ID: failed.InstanceID, From: []store.InstanceState{store.InstanceDispatched}, To: store.InstanceFailed, AttemptID: failed.ID,
	}); err != nil {
		t.Fatalf("InstanceTransition(failed) = %v", err)
	}
	retry, err := b.s.AttemptClaim(b.ctx, &store.AttemptClaimParams{
		InstanceID: failed.InstanceID, From: []store.InstanceState{store.InstanceFailed},
		Agent: "etl-01", Kind: store.AttemptRetry, LeaseTTL: longTTL,
	})
	if err != nil {
		t.Fatalf("AttemptClaim(retry) = %v", err)
	}
	if _, err := b.s.AttemptFinish(b.ctx, &store.AttemptFinishParams{
		ID: retry.ID, Agent: "etl-01", State: ok, ExitCode: intp(0), StartedAt: at(30).Add(-300 * time.Second), FinishedAt: at(30),
	}); err != nil {
		t.Fatalf("AttemptFinish(retry) = %v", err)
	}
	// The items finish in the reverse of their claim order.
	for i := range 5 {
		finish(r4[fmt.Sprint("per-client/", i)], ok, at(5-i).Add(-time.Duration(i+1)*time.Second), at(5-i))
	}

	// Another job's attempts never count.
	o := newRun(other, plain("extract"))
	finish(o["extract/-1"], ok, at(50).Add(-999*time.Second), at(50))

	// Newest three by finish time: extract 100s (run 1), 300s (run 4),
	// 200s (run 3); per-client items 0, 1 and 2: 1s, 2s, 3s.
	want := map[string]time.Duration{
		"extract":    200 * time.Second,
		"load":       7 * time.Second,
		"per-client": 2 * time.Second,
		"skewed":     2 * time.Second,
		"tiny":       1500 * time.Microsecond,
	}
	check(store.TaskDurationsParams{JobName: "load"}, want)
	check(store.TaskDurationsParams{JobName: "load", Last: 3}, want)
	check(store.TaskDurationsParams{JobName: "load", Last: 1}, map[string]time.Duration{
		"extract": 100 * time.Second, "load": 7 * time.Second, "per-client": time.Second,
		"skewed": 4 * time.Second, "tiny": 2 * time.Millisecond,
	})
	check(store.TaskDurationsParams{JobName: "load", Last: 2}, map[string]time.Duration{
		"extract": 200 * time.Second, "load": 7 * time.Second, "per-client": 1500 * time.Millisecond,
		"skewed": 2 * time.Second, "tiny": 1500 * time.Microsecond,
	})
	check(store.TaskDurationsParams{JobName: "load", Last: store.MaxTaskDurationsLast}, map[string]time.Duration{
		"extract": 150250 * time.Millisecond, "load": 7 * time.Second, "per-client": 3 * time.Second,
		"skewed": 2 * time.Second, "tiny": 1500 * time.Microsecond,
	})
	check(store.TaskDurationsParams{JobName: "other"}, map[string]time.Duration{"extract": 999 * time.Second})
	check(store.TaskDurationsParams{JobName: "no-such-job"}, nil)

	// Inside a transaction it reads the same.
	err = b.s.InTx(b.ctx, func(tx store.Store) error {
		got, err := tx.TaskDurations(b.ctx, &store.TaskDurationsParams{JobName: "load"})
		if err != nil {
			return err
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("TaskDurations() in InTx mismatch (-want +got):\n%s", diff)
		}
		return nil
	})
	wantErr(t, "InTx(TaskDurations)", err, nil)

	for _, p := range []store.TaskDurationsParams{
		{},
		{JobName: "load", Last: -1},
		{JobName: "load", Last: store.MaxTaskDurationsLast + 1},
	} {
		_, err := b.s.TaskDurations(b.ctx, &p)
		wantBadInput(t, fmt.Sprintf("TaskDurations(%+v)", p), err)
	}

	// Only the job's newest TaskDurationsRuns runs count: with run 4 the
	// oldest of them, runs 1 to 3 drop out; one more run and run 4 does.
	for range store.TaskDurationsRuns - 1 {
		newRun(v2)
	}
	check(store.TaskDurationsParams{JobName: "load"}, map[string]time.Duration{
		"extract": 300 * time.Second, "per-client": 2 * time.Second,
	})
	newRun(v2)
	check(store.TaskDurationsParams{JobName: "load"}, nil)
}
