package storetest

import (
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/batonhq/baton/server/store"
)

func testRunCreate(t *testing.T, h Harness) {
	t.Run("Fields", func(t *testing.T) {
		t.Parallel()
		b := setup(t, h)
		j := b.job(t, "j")
		res, err := b.s.RunCreate(b.ctx, &store.RunCreateParams{
			JobID: j.ID, JobName: j.Name, JobVersion: j.Version, Overlap: store.OverlapForbid,
			Params: map[string]string{"load_date": "2026-11-21", "empty": ""}, RequestID: "req-1",
			Instances: []store.InstanceInit{
				{Task: "a", Item: store.NoItem, State: store.InstanceReady},
				{Task: "b", Item: store.NoItem, State: store.InstancePending},
				{Task: "each", Item: 0, ItemValue: `"x"`, State: store.InstancePending},
				{Task: "each", Item: 1, ItemValue: `{"k":1}`, State: store.InstancePending},
			},
		})
		if err != nil {
			t.Fatalf("RunCreate() = %v", err)
		}
		r := res.Run
		if !res.Created {
			t.Fatal("RunCreate() Created = false, want true")
		}
		want := &store.Run{ID: r.ID, JobID: j.ID, JobName: "j", JobVersion: 1, State: store.RunRunning,
			Overlap: store.OverlapForbid, Params: map[string]string{"load_date": "2026-11-21", "empty": ""},
			RequestID: "req-1", CreatedAt: r.CreatedAt, StartedAt: r.StartedAt}
		if diff := cmp.Diff(want, r); diff != "" {
			t.Fatalf("RunCreate() run mismatch (-want +got):\n%s", diff)
		}
		if r.ID <= 0 {
			t.Fatalf("run ID = %d, want positive", r.ID)
		}
		checkTime(t, "CreatedAt", r.CreatedAt)
		checkTime(t, "StartedAt", r.StartedAt)
		if diff := cmp.Diff(r, b.getRun(t, r.ID)); diff != "" {
			t.Fatalf("RunGet() mismatch (-want +got):\n%s", diff)
		}

		ins, err := b.s.InstanceList(b.ctx, &store.InstanceListParams{RunID: r.ID})
		if err != nil {
			t.Fatalf("InstanceList() = %v", err)
		}
		wantIns := []*store.Instance{
			{RunID: r.ID, Task: "a", Item: store.NoItem, State: store.InstanceReady},
			{RunID: r.ID, Task: "b", Item: store.NoItem, State: store.InstancePending},
			{RunID: r.ID, Task: "each", Item: 0, ItemValue: `"x"`, State: store.InstancePending},
			{RunID: r.ID, Task: "each", Item: 1, ItemValue: `{"k":1}`, State: store.InstancePending},
		}
		if diff := cmp.Diff(wantIns, ins, cmpopts.IgnoreFields(store.Instance{}, "ID", "ReadyAt"), cmpopts.EquateEmpty()); diff != "" {
			t.Fatalf("InstanceList() mismatch (-want +got):\n%s", diff)
		}
		checkTime(t, "ready instance's ReadyAt", ins[0].ReadyAt)
		if !ins[1].ReadyAt.IsZero() {
			t.Fatalf("pending instance's ReadyAt = %v, want zero", ins[1].ReadyAt)
		}
		for i := 1; i < len(ins); i++ {
			if ins[i].ID <= ins[i-1].ID {
				t.Fatalf("InstanceList() ids %d, %d not ascending", ins[i-1].ID, ins[i].ID)
			}
		}

		_, err = b.s.RunGet(b.ctx, &store.RunGetParams{ID: r.ID + 1000})
		wantErr(t, "RunGet(unknown)", err, store.ErrNotFound)
		_, err = b.s.RunCreate(b.ctx, &store.RunCreateParams{JobID: j.ID + 1000, JobVersion: 1, Overlap: store.OverlapAllow})
		wantErr(t, "RunCreate(unknown job)", err, store.ErrNotFound)
		_, err = b.s.RunCreate(b.ctx, &store.RunCreateParams{JobID: j.ID, JobVersion: 1, Overlap: "sometimes"})
		wantBadInput(t, "RunCreate(bad overlap)", err)
		_, err = b.s.RunCreate(b.ctx, &store.RunCreateParams{JobID: j.ID, JobVersion: 1, Overlap: store.OverlapAllow,
			Instances: []store.InstanceInit{{Task: "a", Item: store.NoItem, State: store.InstanceRunning}}})
		wantBadInput(t, "RunCreate(instance state running)", err)
	})

	t.Run("Overlap", func(t *testing.T) {
		t.Parallel()
		b := setup(t, h)
		forbid, queue, allow := b.job(t, "forbid"), b.job(t, "queue"), b.job(t, "allow")

		f1 := b.run(t, forbid, store.OverlapForbid)
		_, err := b.tryRun(forbid, store.OverlapForbid, "")
		wantErr(t, "second forbid RunCreate()", err, store.ErrAlreadyActive)

		q1 := b.run(t, queue, store.OverlapQueue)
		q2 := b.run(t, queue, store.OverlapQueue)
		q3 := b.run(t, queue, store.OverlapQueue)
		if q1.State != store.RunRunning || q2.State != store.RunQueued || q3.State != store.RunQueued {
			t.Fatalf("queue runs are %s, %s, %s; want running, queued, queued", q1.State, q2.State, q3.State)
		}
		if !q2.StartedAt.IsZero() {
			t.Fatalf("queued run StartedAt = %v, want zero", q2.StartedAt)
		}
		// Queued runs keep their turn: with the active run over but runs
		// still queued, a new run queues behind them.
		if _, err := b.s.RunTransition(b.ctx, &store.RunTransitionParams{
			ID: q1.ID, From: []store.RunState{store.RunRunning}, To: store.RunSucceeded,
		}); err != nil {
			t.Fatalf("RunTransition() = %v", err)
		}
		if q4 := b.run(t, queue, store.OverlapQueue); q4.State != store.RunQueued {
			t.Fatalf("queue run created behind queued runs is %s, want queued", q4.State)
		}

		a1 := b.run(t, allow, store.OverlapAllow)
		a2 := b.run(t, allow, store.OverlapAllow)
		if a1.State != store.RunRunning || a2.State != store.RunRunning {
			t.Fatalf("allow runs are %s, %s; want running, running", a1.State, a2.State)
		}

		// Once the active run ends, forbid may start again.
		if _, err := b.s.RunTransition(b.ctx, &store.RunTransitionParams{
			ID: f1.ID, From: []store.RunState{store.RunRunning}, To: store.RunFailed,
		}); err != nil {
			t.Fatalf("RunTransition() = %v", err)
		}
		f2 := b.run(t, forbid, store.OverlapForbid)
		if f2.State != store.RunRunning {
			t.Fatalf("forbid run after the first failed is %s, want running", f2.State)
		}

		// A cancelling run still holds the slot.
		if _, err := b.s.RunTransition(b.ctx, &store.RunTransitionParams{
			ID: f2.ID, From: []store.RunState{store.RunRunning}, To: store.RunCancelling,
		}); err != nil {
			t.Fatalf("RunTransition(cancelling) = %v", err)
		}
		_, err = b.tryRun(forbid, store.OverlapForbid, "")
		wantErr(t, "forbid RunCreate() while one is cancelling", err, store.ErrAlreadyActive)
		// So does an active run of another policy: forbid starts no second
		// active run of the job at all.
		if _, err := b.tryRun(allow, store.OverlapForbid, ""); !errors.Is(err, store.ErrAlreadyActive) {
			t.Fatalf("forbid RunCreate() beside active allow runs = %v, want ErrAlreadyActive", err)
		}
	})

	t.Run("RequestID", func(t *testing.T) {
		t.Parallel()
		b := setup(t, h)
		j, other := b.job(t, "j"), b.job(t, "other")
		first, err := b.s.RunCreate(b.ctx, &store.RunCreateParams{
			JobID: j.ID, JobVersion: j.Version, Overlap: store.OverlapForbid, RequestID: "r1",
			Params: map[string]string{"p": "1"}, Instances: []store.InstanceInit{ready("t", store.NoItem)},
		})
		if err != nil || !first.Created {
			t.Fatalf("RunCreate(r1) = %+v, %v; want created", first, err)
		}
		// A repeat returns the same run, also where forbid would refuse a
		// new one, and creates no instances.
		again, err := b.s.RunCreate(b.ctx, &store.RunCreateParams{
			JobID: j.ID, JobVersion: j.Version, Overlap: store.OverlapForbid, RequestID: "r1",
			Params: map[string]string{"p": "1"}, Instances: []store.InstanceInit{ready("t", store.NoItem)},
		})
		if err != nil || again.Created {
			t.Fatalf("RunCreate(r1 again) = %+v, %v; want the existing run, not created", again, err)
		}
		if diff := cmp.Diff(first.Run, again.Run); diff != "" {
			t.Fatalf("RunCreate(r1 again) run mismatch (-want +got):\n%s", diff)
		}
		if ins, err := b.s.InstanceList(b.ctx, &store.InstanceListParams{RunID: first.Run.ID}); err != nil || len(ins) != 1 {
			t.Fatalf("InstanceList() = %d instances, %v; want 1", len(ins), err)
		}
		// The same request id is another run for another job.
		o, err := b.tryRun(other, store.OverlapForbid, "r1")
		if err != nil || o.ID == first.Run.ID {
			t.Fatalf("RunCreate(other job, r1) = %+v, %v; want a new run", o, err)
		}
		// A new request id on the forbid job is refused as usual.
		_, err = b.tryRun(j, store.OverlapForbid, "r2")
		wantErr(t, "RunCreate(r2)", err, store.ErrAlreadyActive)
	})
}

func testRunCreateConcurrent(t *testing.T, h Harness) {
	const n = 8
	t.Run("Forbid", func(t *testing.T) {
		t.Parallel()
		b := setup(t, h)
		j := b.job(t, "j")
		var (
			wg      sync.WaitGroup
			mu      sync.Mutex
			created int
			refused int
		)
		for range n {
			wg.Go(func() {
				_, err := b.tryRun(j, store.OverlapForbid, "", ready("t", store.NoItem))
				mu.Lock()
				defer mu.Unlock()
				switch {
				case err == nil:
					created++
				case errors.Is(err, store.ErrAlreadyActive):
					refused++
				default:
					t.Errorf("RunCreate() = %v, want nil or ErrAlreadyActive", err)
				}
			})
		}
		wg.Wait()
		if created != 1 || refused != n-1 {
			t.Fatalf("concurrent forbid RunCreate(): %d created, %d refused; want 1, %d", created, refused, n-1)
		}
		runs, err := b.s.RunList(b.ctx, &store.RunListParams{JobName: "j"})
		if err != nil || len(runs) != 1 {
			t.Fatalf("RunList() = %d runs, %v; want 1", len(runs), err)
		}
	})

	t.Run("RequestID", func(t *testing.T) {
		t.Parallel()
		b := setup(t, h)
		j := b.job(t, "j")
		var (
			wg      sync.WaitGroup
			mu      sync.Mutex
			created int
			ids     = map[int64]int{}
		)
		for range n {
			wg.Go(func() {
				res, err := b.s.RunCreate(b.ctx, &store.RunCreateParams{
					JobID: j.ID, JobVersion: j.Version, Overlap: store.OverlapAllow, RequestID: "same",
					Instances: []store.InstanceInit{ready("t", store.NoItem)},
				})
				if err != nil {
					t.Errorf("RunCreate() = %v", err)
					return
				}
				mu.Lock()
				defer mu.Unlock()
				ids[res.Run.ID]++
				if res.Created {
					created++
				}
			})
		}
		wg.Wait()
		if created != 1 || len(ids) != 1 {
			t.Fatalf("concurrent RunCreate(same request id): %d created, run ids %v; want 1 run created once", created, ids)
		}
		for id := range ids {
			if ins, err := b.s.InstanceList(b.ctx, &store.InstanceListParams{RunID: id}); err != nil || len(ins) != 1 {
				t.Fatalf("InstanceList() = %d instances, %v; want 1", len(ins), err)
			}
		}
	})
}

func testRunTransition(t *testing.T, h Harness) {
	b := setup(t, h)
	transition := func(id int64, from []store.RunState, to store.RunState, msg string) (*store.Run, error) {
		return b.s.RunTransition(b.ctx, &store.RunTransitionParams{ID: id, From: from, To: to, Error: msg})
	}
	must := func(id int64, from store.RunState, to store.RunState, msg string) *store.Run {
		t.Helper()
		r, err := transition(id, []store.RunState{from}, to, msg)
		if err != nil {
			t.Fatalf("RunTransition(%d, %s -> %s) = %v", id, from, to, err)
		}
		if r.State != to {
			t.Fatalf("RunTransition(%d, %s -> %s) returned state %s", id, from, to, r.State)
		}
		if diff := cmp.Diff(r, b.getRun(t, id)); diff != "" {
			t.Fatalf("RunGet() after RunTransition() mismatch (-returned +stored):\n%s", diff)
		}
		return r
	}
	// refused checks that a transition fails with want and changes nothing.
	refused := func(id int64, from []store.RunState, to store.RunState, want error) {
		t.Helper()
		before := b.getRun(t, id)
		_, err := transition(id, from, to, "nope")
		wantErr(t, fmt.Sprintf("RunTransition(%d, %v -> %s)", id, from, to), err, want)
		if diff := cmp.Diff(before, b.getRun(t, id)); diff != "" {
			t.Fatalf("refused RunTransition() changed the run (-before +after):\n%s", diff)
		}
	}

	q := b.job(t, "q")
	active := b.run(t, q, store.OverlapQueue)
	queued := b.run(t, q, store.OverlapQueue)

	// A queued run cannot start while another is active.
	refused(queued.ID, []store.RunState{store.RunQueued}, store.RunRunning, store.ErrAlreadyActive)
	// Wrong From, unknown run.
	refused(active.ID, []store.RunState{store.RunQueued, store.RunSucceeded}, store.RunFailed, store.ErrConflict)
	_, err := transition(active.ID+1000, []store.RunState{store.RunRunning}, store.RunFailed, "")
	wantErr(t, "RunTransition(unknown)", err, store.ErrNotFound)
	_, err = transition(active.ID, nil, store.RunFailed, "")
	wantBadInput(t, "RunTransition(no From)", err)
	_, err = transition(active.ID, []store.RunState{store.RunRunning}, "paused", "")
	wantBadInput(t, "RunTransition(unknown To)", err)

	// An active run may move between active states.
	c := must(active.ID, store.RunRunning, store.RunCancelling, "")
	if !c.StartedAt.Equal(active.StartedAt) || !c.FinishedAt.IsZero() {
		t.Fatalf("cancelling run times: started %v finished %v; want started %v, not finished", c.StartedAt, c.FinishedAt, active.StartedAt)
	}
	done := must(active.ID, store.RunCancelling, store.RunCancelled, "cancelled by test")
	checkTime(t, "FinishedAt", done.FinishedAt)
	if done.Error != "cancelled by test" || !done.StartedAt.Equal(active.StartedAt) {
		t.Fatalf("cancelled run = %+v; want error %q and the original StartedAt", done, "cancelled by test")
	}

	// Now the queued run may start: StartedAt is set.
	started := must(queued.ID, store.RunQueued, store.RunRunning, "")
	checkTime(t, "StartedAt", started.StartedAt)
	failed := must(queued.ID, store.RunRunning, store.RunFailed, "task x failed")
	if failed.Error != "task x failed" || failed.RestartCount != 0 {
		t.Fatalf("failed run = %+v, want error and restart count 0", failed)
	}
	// An empty Error keeps the stored one.
	if _, err := transition(queued.ID, []store.RunState{store.RunFailed}, store.RunFailed, ""); err != nil {
		t.Fatalf("RunTransition(failed -> failed) = %v", err)
	}
	if r := b.getRun(t, queued.ID); r.Error != "task x failed" {
		t.Fatalf("run error after a transition with no Error = %q, want kept", r.Error)
	}

	// Leaving a terminal state is a restart: the count grows, FinishedAt
	// and Error clear, StartedAt stays.
	restarted := must(queued.ID, store.RunFailed, store.RunRunning, "")
	if restarted.RestartCount != 1 || !restarted.FinishedAt.IsZero() || restarted.Error != "" ||
		!restarted.StartedAt.Equal(started.StartedAt) || restarted.ID != queued.ID {
		t.Fatalf("restarted run = %+v; want restart count 1, not finished, no error, first StartedAt", restarted)
	}
	// The restart's own start is recorded: the run timeout counts from it,
	// also for a control plane that loads the run afresh.
	if restarted.RestartedAt.IsZero() || restarted.RestartedAt.Before(failed.FinishedAt) ||
		!restarted.LastStart().Equal(restarted.RestartedAt) {
		t.Fatalf("restarted run RestartedAt = %v (failed at %v), LastStart %v; want the restart's time",
			restarted.RestartedAt, failed.FinishedAt, restarted.LastStart())
	}
	if started.LastStart() != started.StartedAt || !started.RestartedAt.IsZero() {
		t.Fatalf("never restarted run: RestartedAt %v, LastStart %v; want zero and StartedAt", started.RestartedAt, started.LastStart())
	}
	if got := b.getRun(t, queued.ID); !got.RestartedAt.Equal(restarted.RestartedAt) {
		t.Fatalf("run after restart = %+v; want RestartedAt %v", got, restarted.RestartedAt)
	}
	must(queued.ID, store.RunRunning, store.RunSucceeded, "")

	// A forbid run cannot be restarted while another run is active; an
	// allow run can.
	f := b.job(t, "f")
	old := b.run(t, f, store.OverlapForbid)
	must(old.ID, store.RunRunning, store.RunSucceeded, "")
	b.run(t, f, store.OverlapForbid)
	refused(old.ID, []store.RunState{store.RunSucceeded}, store.RunRunning, store.ErrAlreadyActive)

	a := b.job(t, "a")
	a1 := b.run(t, a, store.OverlapAllow)
	b.run(t, a, store.OverlapAllow)
	must(a1.ID, store.RunRunning, store.RunFailed, "x")
	if r := must(a1.ID, store.RunFailed, store.RunRunning, ""); r.RestartCount != 1 {
		t.Fatalf("restarted allow run restart count = %d, want 1", r.RestartCount)
	}
}

func testRunList(t *testing.T, h Harness) {
	b := setup(t, h)
	ja, jb := b.job(t, "a"), b.job(t, "b")
	var ids []int64 // in creation order
	mk := func(j *store.Job, end store.RunState) {
		r := b.run(t, j, store.OverlapAllow)
		if end != store.RunRunning {
			if _, err := b.s.RunTransition(b.ctx, &store.RunTransitionParams{
				ID: r.ID, From: []store.RunState{store.RunRunning}, To: end,
			}); err != nil {
				t.Fatalf("RunTransition() = %v", err)
			}
		}
		ids = append(ids, r.ID)
	}
	mk(ja, store.RunSucceeded) // 0
	mk(jb, store.RunFailed)    // 1
	mk(ja, store.RunRunning)   // 2
	mk(ja, store.RunFailed)    // 3
	mk(jb, store.RunRunning)   // 4
	mk(ja, store.RunSucceeded) // 5

	pick := func(is ...int) []int64 {
		out := []int64{}
		for _, i := range is {
			out = append(out, ids[i])
		}
		return out
	}
	for _, tc := range []struct {
		name string
		p    store.RunListParams
		want []int64
	}{
		{"All", store.RunListParams{}, pick(5, 4, 3, 2, 1, 0)},
		{"Job", store.RunListParams{JobName: "a"}, pick(5, 3, 2, 0)},
		{"UnknownJob", store.RunListParams{JobName: "zzz"}, pick()},
		{"State", store.RunListParams{States: []store.RunState{store.RunFailed}}, pick(3, 1)},
		{"States", store.RunListParams{States: []store.RunState{store.RunRunning, store.RunSucceeded}}, pick(5, 4, 2, 0)},
		{"JobAndState", store.RunListParams{JobName: "a", States: []store.RunState{store.RunSucceeded}}, pick(5, 0)},
		{"Limit", store.RunListParams{Limit: 2}, pick(5, 4)},
		{"Page2", store.RunListParams{Limit: 2, BeforeID: ids[4]}, pick(3, 2)},
		{"Page3", store.RunListParams{Limit: 2, BeforeID: ids[2]}, pick(1, 0)},
		{"PageEnd", store.RunListParams{Limit: 2, BeforeID: ids[0]}, pick()},
		{"JobPage", store.RunListParams{JobName: "a", Limit: 1, BeforeID: ids[3]}, pick(2)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			runs, err := b.s.RunList(b.ctx, &tc.p)
			if err != nil {
				t.Fatalf("RunList(%+v) = %v", tc.p, err)
			}
			got := []int64{}
			for _, r := range runs {
				got = append(got, r.ID)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Fatalf("RunList(%+v) ids mismatch (-want +got):\n%s", tc.p, diff)
			}
		})
	}
	runs, err := b.s.RunList(b.ctx, &store.RunListParams{Limit: 1})
	if err != nil || len(runs) != 1 {
		t.Fatalf("RunList(limit 1) = %v, %v", runs, err)
	}
	if diff := cmp.Diff(b.getRun(t, ids[5]), runs[0]); diff != "" {
		t.Fatalf("RunList() run mismatch (-RunGet +RunList):\n%s", diff)
	}
}
