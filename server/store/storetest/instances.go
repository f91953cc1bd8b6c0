package storetest

import (
	"fmt"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/batonhq/baton/server/store"
)

func testInstance(t *testing.T, h Harness) {
	b := setup(t, h)
	r := b.run(t, b.job(t, "j"), store.OverlapForbid, ready("list", store.NoItem))

	// For-each expansion adds instances to the run.
	created, err := b.s.InstanceCreate(b.ctx, &store.InstanceCreateParams{RunID: r.ID, Instances: []store.InstanceInit{
		{Task: "each", Item: 0, ItemValue: "a", State: store.InstanceReady},
		{Task: "each", Item: 1, ItemValue: "b", State: store.InstancePending},
	}})
	if err != nil {
		t.Fatalf("InstanceCreate() = %v", err)
	}
	want := []*store.Instance{
		{RunID: r.ID, Task: "each", Item: 0, ItemValue: "a", State: store.InstanceReady},
		{RunID: r.ID, Task: "each", Item: 1, ItemValue: "b", State: store.InstancePending},
	}
	ignore := cmpopts.IgnoreFields(store.Instance{}, "ID", "ReadyAt")
	if diff := cmp.Diff(want, created, ignore, cmpopts.EquateEmpty()); diff != "" {
		t.Fatalf("InstanceCreate() mismatch (-want +got):\n%s", diff)
	}
	checkTime(t, "ReadyAt", created[0].ReadyAt)
	list, err := b.s.InstanceList(b.ctx, &store.InstanceListParams{RunID: r.ID})
	if err != nil {
		t.Fatalf("InstanceList() = %v", err)
	}
	if len(list) != 3 || list[0].Task != "list" {
		t.Fatalf("InstanceList() = %d instances starting with %q, want 3 starting with list", len(list), list[0].Task)
	}
	if diff := cmp.Diff(created, list[1:]); diff != "" {
		t.Fatalf("InstanceList() mismatch (-created +listed):\n%s", diff)
	}

	// A large batch (more than one statement's worth in a store that
	// inserts many rows at once) comes back in order, with the ids
	// InstanceList shows.
	var many []store.InstanceInit
	for i := range 150 {
		many = append(many, store.InstanceInit{Task: "many", Item: i, ItemValue: fmt.Sprint("v", i), State: store.InstancePending})
	}
	bulk, err := b.s.InstanceCreate(b.ctx, &store.InstanceCreateParams{RunID: r.ID, Instances: many})
	if err != nil {
		t.Fatalf("InstanceCreate(150) = %v", err)
	}
	for i, in := range bulk {
		if in.Task != "many" || in.Item != i || in.ItemValue != fmt.Sprint("v", i) {
			t.Fatalf("InstanceCreate(150)[%d] = %+v, want item %d", i, in, i)
		}
	}
	list, err = b.s.InstanceList(b.ctx, &store.InstanceListParams{RunID: r.ID})
	if err != nil {
		t.Fatalf("InstanceList() = %v", err)
	}
	if diff := cmp.Diff(bulk, list[3:]); diff != "" {
		t.Fatalf("InstanceList() after InstanceCreate(150) mismatch (-created +listed):\n%s", diff)
	}

	// A batch with one existing (task, item) adds nothing.
	_, err = b.s.InstanceCreate(b.ctx, &store.InstanceCreateParams{RunID: r.ID, Instances: []store.InstanceInit{
		{Task: "each", Item: 2, State: store.InstancePending},
		{Task: "each", Item: 1, State: store.InstancePending},
	}})
	wantErr(t, "InstanceCreate(duplicate)", err, store.ErrConflict)
	if after, err := b.s.InstanceList(b.ctx, &store.InstanceListParams{RunID: r.ID}); err != nil || len(after) != 153 {
		t.Fatalf("InstanceList() after a refused create = %d instances, %v; want 153", len(after), err)
	}
	_, err = b.s.InstanceCreate(b.ctx, &store.InstanceCreateParams{RunID: r.ID + 1000, Instances: []store.InstanceInit{
		{Task: "each", Item: 0, State: store.InstancePending},
	}})
	wantErr(t, "InstanceCreate(unknown run)", err, store.ErrNotFound)
	_, err = b.s.InstanceCreate(b.ctx, &store.InstanceCreateParams{RunID: r.ID, Instances: []store.InstanceInit{
		{Task: "", Item: 5, State: store.InstancePending},
	}})
	wantBadInput(t, "InstanceCreate(empty task)", err)
	if none, err := b.s.InstanceList(b.ctx, &store.InstanceListParams{RunID: r.ID + 1000}); err != nil || len(none) != 0 {
		t.Fatalf("InstanceList(unknown run) = %v, %v; want none", none, err)
	}
}

func testInstanceTransition(t *testing.T, h Harness) {
	b := setup(t, h)
	r := b.run(t, b.job(t, "j"), store.OverlapAllow,
		store.InstanceInit{Task: "t", Item: store.NoItem, State: store.InstancePending})
	id := mustList(t, b, r.ID)[0].ID

	step := func(p store.InstanceTransitionParams) *store.Instance {
		t.Helper()
		p.ID = id
		if err := b.s.InstanceTransition(b.ctx, &p); err != nil {
			t.Fatalf("InstanceTransition(%v -> %s) = %v", p.From, p.To, err)
		}
		got := b.instance(t, r.ID, id)
		if got.State != p.To {
			t.Fatalf("instance state after InstanceTransition(-> %s) = %s", p.To, got.State)
		}
		return got
	}
	refused := func(p store.InstanceTransitionParams, want error) {
		t.Helper()
		before := b.instance(t, r.ID, p.ID)
		err := b.s.InstanceTransition(b.ctx, &p)
		wantErr(t, fmt.Sprintf("InstanceTransition(%+v)", p), err, want)
		if diff := cmp.Diff(before, b.instance(t, r.ID, p.ID)); diff != "" {
			t.Fatalf("refused InstanceTransition() changed the instance (-before +after):\n%s", diff)
		}
	}
	from := func(s ...store.InstanceState) []store.InstanceState { return s }

	got := step(store.InstanceTransitionParams{From: from(store.InstancePending), To: store.InstanceReady})
	checkTime(t, "ReadyAt", got.ReadyAt)
	refused(store.InstanceTransitionParams{ID: id, From: from(store.InstancePending, store.InstanceRunning), To: store.InstanceSkipped}, store.ErrConflict)
	err := b.s.InstanceTransition(b.ctx, &store.InstanceTransitionParams{ID: id + 1000, From: from(store.InstanceReady), To: store.InstanceSkipped})
	wantErr(t, "InstanceTransition(unknown)", err, store.ErrNotFound)
	wantBadInput(t, "InstanceTransition(no From)",
		b.s.InstanceTransition(b.ctx, &store.InstanceTransitionParams{ID: id, To: store.InstanceSkipped}))
	wantBadInput(t, "InstanceTransition(unknown To)",
		b.s.InstanceTransition(b.ctx, &store.InstanceTransitionParams{ID: id, From: from(store.InstanceReady), To: "sleeping"}))

	// The attempt id fences: only the latest attempt's outcome applies.
	a1 := b.claim(t, got, "agent", longTTL)
	refused(store.InstanceTransitionParams{ID: id, From: from(store.InstanceDispatched), To: store.InstanceRunning, AttemptID: a1.ID + 1000}, store.ErrConflict)
	got = step(store.InstanceTransitionParams{From: from(store.InstanceDispatched), To: store.InstanceRunning, AttemptID: a1.ID})
	checkTime(t, "StartedAt", got.StartedAt)
	got = step(store.InstanceTransitionParams{From: from(store.InstanceRunning), To: store.InstanceFailed, AttemptID: a1.ID, Error: "exit 3"})
	checkTime(t, "FinishedAt", got.FinishedAt)
	if got.Error != "exit 3" || got.Attempts != 1 || got.AttemptID != a1.ID {
		t.Fatalf("failed instance = %+v, want error exit 3 and attempt %d", got, a1.ID)
	}

	// A retry: the new attempt becomes the fence and the old one is stale.
	a2, err := b.s.AttemptClaim(b.ctx, &store.AttemptClaimParams{
		InstanceID: id, From: from(store.InstanceFailed), Agent: "agent", Kind: store.AttemptRetry, LeaseTTL: longTTL,
	})
	if err != nil {
		t.Fatalf("AttemptClaim(retry) = %v", err)
	}
	refused(store.InstanceTransitionParams{ID: id, From: from(store.InstanceDispatched), To: store.InstanceSucceeded, AttemptID: a1.ID}, store.ErrConflict)
	got = step(store.InstanceTransitionParams{
		From: from(store.InstanceDispatched, store.InstanceRunning), To: store.InstanceSucceeded, AttemptID: a2.ID,
		Outputs: map[string]string{"RowCount": "42"},
	})
	if diff := cmp.Diff(map[string]string{"RowCount": "42"}, got.Outputs); diff != "" || got.Error != "" {
		t.Fatalf("succeeded instance outputs mismatch (-want +got):\n%s error %q", diff, got.Error)
	}

	// Nil Outputs keep them; Error is replaced, also by ""; a state that is
	// not done clears FinishedAt.
	got = step(store.InstanceTransitionParams{From: from(store.InstanceSucceeded), To: store.InstanceBlocked, Error: "upstream"})
	if got.Outputs["RowCount"] != "42" || got.Error != "upstream" {
		t.Fatalf("blocked instance = %+v, want outputs kept and error upstream", got)
	}
	got = step(store.InstanceTransitionParams{From: from(store.InstanceBlocked), To: store.InstancePending})
	if !got.FinishedAt.IsZero() || got.Error != "" {
		t.Fatalf("reset instance = %+v, want no FinishedAt and no error", got)
	}
	got = step(store.InstanceTransitionParams{From: from(store.InstancePending), To: store.InstanceSkipped, Outputs: map[string]string{}})
	if len(got.Outputs) != 0 {
		t.Fatalf("outputs after an empty Outputs map = %v, want none", got.Outputs)
	}
}

func mustList(t *testing.T, b *bundle, runID int64) []*store.Instance {
	t.Helper()
	list, err := b.s.InstanceList(b.ctx, &store.InstanceListParams{RunID: runID})
	if err != nil || len(list) == 0 {
		t.Fatalf("InstanceList(%d) = %v, %v; want instances", runID, list, err)
	}
	return list
}
