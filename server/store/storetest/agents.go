package storetest

import (
	"errors"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/batonhq/baton/server/store"
)

func testAgent(t *testing.T, h Harness) {
	b := setup(t, h)
	upsert := func(a *store.Agent) {
		t.Helper()
		if err := b.s.AgentUpsert(b.ctx, &store.AgentUpsertParams{Agent: a}); err != nil {
			t.Fatalf("AgentUpsert(%s) = %v", a.Name, err)
		}
	}
	list := func() []*store.Agent {
		t.Helper()
		got, err := b.s.AgentList(b.ctx, &store.AgentListParams{})
		if err != nil {
			t.Fatalf("AgentList() = %v", err)
		}
		return got
	}
	if got := list(); len(got) != 0 {
		t.Fatalf("AgentList() on a new store = %v, want none", got)
	}
	now := ms(time.Now())
	etl2 := &store.Agent{Name: "etl-02", Labels: map[string]string{"role": "ssis", "dc": "east"}, Slots: 4,
		Version: "1.2.3", Hostname: "etl-02.corp", OS: "windows", State: store.AgentConnected,
		ConnectedAt: now, LastSeenAt: now}
	etl1 := &store.Agent{Name: "etl-01", Slots: 1, State: store.AgentDisconnected}
	upsert(etl2)
	upsert(etl1)
	if diff := cmp.Diff([]*store.Agent{etl1, etl2}, list()); diff != "" {
		t.Fatalf("AgentList() mismatch (-want +got):\n%s", diff)
	}

	// An upsert replaces every field.
	etl2b := &store.Agent{Name: "etl-02", Labels: map[string]string{"role": "sql"}, Slots: 8,
		Version: "1.3.0", Hostname: "etl-02.corp", OS: "linux", State: store.AgentLost,
		ConnectedAt: now, LastSeenAt: now.Add(time.Minute)}
	upsert(etl2b)
	if diff := cmp.Diff([]*store.Agent{etl1, etl2b}, list()); diff != "" {
		t.Fatalf("AgentList() after update mismatch (-want +got):\n%s", diff)
	}

	for _, bad := range []*store.Agent{
		{Name: "", Slots: 1, State: store.AgentConnected},
		{Name: "x", Slots: -1, State: store.AgentConnected},
		{Name: "x", Slots: 1, State: "asleep"},
	} {
		wantBadInput(t, "AgentUpsert(bad)", b.s.AgentUpsert(b.ctx, &store.AgentUpsertParams{Agent: bad}))
	}
	if got := list(); len(got) != 2 {
		t.Fatalf("AgentList() after refused upserts = %d agents, want 2", len(got))
	}
}

func testLeader(t *testing.T, h Harness) {
	b := setup(t, h)
	acquire := func(name, holder string, ttl time.Duration) (*store.Lease, error) {
		return b.s.LeaderAcquire(b.ctx, &store.LeaderAcquireParams{Name: name, Holder: holder, TTL: ttl})
	}
	check := func(name, holder string, token int64) error {
		return b.s.LeaderCheck(b.ctx, &store.LeaderCheckParams{Name: name, Holder: holder, Token: token})
	}

	// Acquire, renew (the token stays), refuse a second holder.
	l1, err := acquire("scheduler", "a", longTTL)
	if err != nil {
		t.Fatalf("LeaderAcquire(a) = %v", err)
	}
	if l1.Name != "scheduler" || l1.Holder != "a" || l1.Token <= 0 {
		t.Fatalf("LeaderAcquire(a) = %+v, want scheduler held by a with a positive token", l1)
	}
	checkTime(t, "ExpiresAt", l1.ExpiresAt)
	renewed, err := acquire("scheduler", "a", 2*longTTL)
	if err != nil || renewed.Token != l1.Token || !renewed.ExpiresAt.After(l1.ExpiresAt) {
		t.Fatalf("LeaderAcquire(a, renew) = %+v, %v; want token %d and a later expiry", renewed, err, l1.Token)
	}
	_, err = acquire("scheduler", "b", longTTL)
	wantErr(t, "LeaderAcquire(b) while a holds it", err, store.ErrNotLeader)
	wantErr(t, "LeaderCheck(a)", check("scheduler", "a", l1.Token), nil)
	wantErr(t, "LeaderCheck(b)", check("scheduler", "b", l1.Token), store.ErrNotLeader)
	wantErr(t, "LeaderCheck(a, wrong token)", check("scheduler", "a", l1.Token+1), store.ErrNotLeader)
	wantErr(t, "LeaderCheck(unknown lease)", check("other", "a", l1.Token), store.ErrNotLeader)

	// Leases are independent by name.
	if _, err := acquire("other", "b", longTTL); err != nil {
		t.Fatalf("LeaderAcquire(other, b) = %v", err)
	}

	// A release by a non-holder or with a stale token does nothing; the
	// holder's release lets another take over at once, with the next token.
	wantErr(t, "LeaderRelease(b)", b.s.LeaderRelease(b.ctx, &store.LeaderReleaseParams{Name: "scheduler", Holder: "b", Token: l1.Token}), nil)
	wantErr(t, "LeaderRelease(a, wrong token)", b.s.LeaderRelease(b.ctx, &store.LeaderReleaseParams{Name: "scheduler", Holder: "a", Token: l1.Token + 1}), nil)
	wantErr(t, "LeaderCheck(a) after foreign releases", check("scheduler", "a", l1.Token), nil)
	wantErr(t, "LeaderRelease(a)", b.s.LeaderRelease(b.ctx, &store.LeaderReleaseParams{Name: "scheduler", Holder: "a", Token: l1.Token}), nil)
	wantErr(t, "LeaderCheck(a) after release", check("scheduler", "a", l1.Token), store.ErrNotLeader)
	lb, err := acquire("scheduler", "b", shortTTL)
	if err != nil || lb.Token != l1.Token+1 || lb.Holder != "b" {
		t.Fatalf("LeaderAcquire(b) after release = %+v, %v; want token %d", lb, err, l1.Token+1)
	}

	// After expiry another holder takes over and the token grows; the old
	// holder is refused while the new lease is unexpired.
	var lc *store.Lease
	waitFor(t, waitTimeout, "b's lease to expire", func() bool {
		var err error
		lc, err = acquire("scheduler", "c", longTTL)
		if err != nil && !errors.Is(err, store.ErrNotLeader) {
			t.Fatalf("LeaderAcquire(c) = %v", err)
		}
		return err == nil
	})
	if lc.Token != lb.Token+1 || lc.Holder != "c" {
		t.Fatalf("LeaderAcquire(c) after expiry = %+v, want token %d", lc, lb.Token+1)
	}
	wantErr(t, "LeaderCheck(b) after takeover", check("scheduler", "b", lb.Token), store.ErrNotLeader)
	_, err = acquire("scheduler", "b", longTTL)
	wantErr(t, "LeaderAcquire(b) after takeover", err, store.ErrNotLeader)

	// A holder renewing its own expired lease gets a new token too: writes
	// made under the old one may have raced a takeover.
	ld, err := acquire("solo", "d", shortTTL)
	if err != nil {
		t.Fatalf("LeaderAcquire(solo, d) = %v", err)
	}
	b.expiryMarker(t, shortTTL)()
	wantErr(t, "LeaderCheck(d, expired)", check("solo", "d", ld.Token), store.ErrNotLeader)
	ld2, err := acquire("solo", "d", longTTL)
	if err != nil || ld2.Token != ld.Token+1 {
		t.Fatalf("LeaderAcquire(solo, d) after expiry = %+v, %v; want token %d", ld2, err, ld.Token+1)
	}

	for _, p := range []store.LeaderAcquireParams{{Name: "", Holder: "a", TTL: time.Second}, {Name: "x", Holder: "", TTL: time.Second}, {Name: "x", Holder: "a"}} {
		_, err := b.s.LeaderAcquire(b.ctx, &p)
		wantBadInput(t, "LeaderAcquire(bad)", err)
	}
}

// testLeaderFencing: a deposed leader's transaction fails at LeaderCheck
// and none of its writes land.
func testLeaderFencing(t *testing.T, h Harness) {
	b := setup(t, h)
	old, err := b.s.LeaderAcquire(b.ctx, &store.LeaderAcquireParams{Name: "scheduler", Holder: "old", TTL: shortTTL})
	if err != nil {
		t.Fatalf("LeaderAcquire(old) = %v", err)
	}
	// While the lease holds, fenced writes commit.
	err = b.s.InTx(b.ctx, func(tx store.Store) error {
		if err := tx.LeaderCheck(b.ctx, &store.LeaderCheckParams{Name: "scheduler", Holder: "old", Token: old.Token}); err != nil {
			return err
		}
		_, err := tx.JobApply(b.ctx, &store.JobApplyParams{Name: "while-leader", Spec: spec("while-leader", 1)})
		return err
	})
	// The short lease may already have expired on a slow machine; only a
	// fencing refusal is acceptable then.
	if err != nil && !errors.Is(err, store.ErrNotLeader) {
		t.Fatalf("fenced InTx() while leader = %v", err)
	}

	waitFor(t, waitTimeout, "the new leader's takeover", func() bool {
		_, err := b.s.LeaderAcquire(b.ctx, &store.LeaderAcquireParams{Name: "scheduler", Holder: "new", TTL: longTTL})
		if err != nil && !errors.Is(err, store.ErrNotLeader) {
			t.Fatalf("LeaderAcquire(new) = %v", err)
		}
		return err == nil
	})

	for _, checkFirst := range []bool{true, false} {
		name := "stale-check-last"
		if checkFirst {
			name = "stale-check-first"
		}
		err := b.s.InTx(b.ctx, func(tx store.Store) error {
			fence := func() error {
				return tx.LeaderCheck(b.ctx, &store.LeaderCheckParams{Name: "scheduler", Holder: "old", Token: old.Token})
			}
			if checkFirst {
				if err := fence(); err != nil {
					return err
				}
			}
			if _, err := tx.JobApply(b.ctx, &store.JobApplyParams{Name: name, Spec: spec(name, 1)}); err != nil {
				return err
			}
			return fence()
		})
		wantErr(t, "fenced InTx() with a stale token", err, store.ErrNotLeader)
		_, err = b.s.JobGet(b.ctx, &store.JobGetParams{Name: name})
		wantErr(t, "JobGet("+name+")", err, store.ErrNotFound)
	}
}
