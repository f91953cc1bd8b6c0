package storetest

import (
	"context"
	"errors"
	"sync"
	"testing"

	"github.com/batonhq/baton/server/store"
)

func testMigrate(t *testing.T, h Harness) {
	ctx := t.Context()
	opener := h.NewDB(t)
	const handles = 4
	stores := make([]store.Store, handles)
	for i := range stores {
		stores[i] = openRaw(t, ctx, opener)
	}

	// Several handles migrate one fresh database at once.
	var wg sync.WaitGroup
	errs := make([]error, handles)
	for i, s := range stores {
		wg.Go(func() { errs[i] = s.Migrate(ctx) })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("concurrent Migrate() on handle %d = %v", i, err)
		}
	}

	// The schema works from every handle.
	b := &bundle{ctx: ctx, s: stores[0]}
	j := b.job(t, "migrated")
	r := b.run(t, j, store.OverlapForbid, ready("t", store.NoItem))

	// Migrating again, concurrently and on a used database, changes nothing.
	for i, s := range stores {
		wg.Go(func() { errs[i] = s.Migrate(ctx) })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("second Migrate() on handle %d = %v", i, err)
		}
	}
	late := openRaw(t, ctx, opener)
	if err := late.Migrate(ctx); err != nil {
		t.Fatalf("Migrate() on a migrated database = %v", err)
	}
	for i, s := range append(stores, late) {
		got, err := s.RunGet(ctx, &store.RunGetParams{ID: r.ID})
		if err != nil {
			t.Fatalf("handle %d: RunGet() = %v", i, err)
		}
		if got.JobName != "migrated" || got.State != store.RunRunning {
			t.Fatalf("handle %d: RunGet() = %+v, want the running run of job migrated", i, got)
		}
	}
}

func testInTx(t *testing.T, h Harness) {
	t.Run("Commit", func(t *testing.T) {
		t.Parallel()
		b := setup(t, h)
		var runID int64
		err := b.s.InTx(b.ctx, func(tx store.Store) error {
			res, err := tx.JobApply(b.ctx, &store.JobApplyParams{Name: "j", Spec: spec("j", 1)})
			if err != nil {
				return err
			}
			// Reads through the transaction see its own writes.
			j, err := tx.JobGet(b.ctx, &store.JobGetParams{Name: "j"})
			if err != nil {
				return err
			}
			if j.ID != res.Job.ID {
				t.Errorf("JobGet() in tx = job %d, want %d", j.ID, res.Job.ID)
			}
			rc, err := tx.RunCreate(b.ctx, &store.RunCreateParams{
				JobID: j.ID, JobVersion: j.Version, Overlap: store.OverlapForbid,
				Instances: []store.InstanceInit{ready("t", store.NoItem)},
			})
			if err != nil {
				return err
			}
			runID = rc.Run.ID
			return nil
		})
		wantErr(t, "InTx()", err, nil)
		if r := b.getRun(t, runID); r.JobName != "j" {
			t.Fatalf("RunGet() after commit = %+v, want a run of j", r)
		}
	})

	t.Run("RollbackOnError", func(t *testing.T) {
		t.Parallel()
		b := setup(t, h)
		j := b.job(t, "kept")
		var runID, attemptID int64
		err := b.s.InTx(b.ctx, func(tx store.Store) error {
			if _, err := tx.JobApply(b.ctx, &store.JobApplyParams{Name: "gone", Spec: spec("gone", 1)}); err != nil {
				return err
			}
			rc, err := tx.RunCreate(b.ctx, &store.RunCreateParams{
				JobID: j.ID, JobVersion: j.Version, Overlap: store.OverlapForbid,
				Instances: []store.InstanceInit{ready("t", store.NoItem)},
			})
			if err != nil {
				return err
			}
			runID = rc.Run.ID
			ins, err := tx.InstanceList(b.ctx, &store.InstanceListParams{RunID: runID})
			if err != nil {
				return err
			}
			a, err := tx.AttemptClaim(b.ctx, &store.AttemptClaimParams{
				InstanceID: ins[0].ID, Agent: "a", Kind: store.AttemptFirst, LeaseTTL: longTTL,
			})
			if err != nil {
				return err
			}
			attemptID = a.ID
			if err := tx.EventAppend(b.ctx, &store.EventAppendParams{Events: []*store.Event{
				{RunID: runID, Item: store.NoItem, RunState: store.RunRunning},
			}}); err != nil {
				return err
			}
			if err := tx.AgentUpsert(b.ctx, &store.AgentUpsertParams{Agent: &store.Agent{
				Name: "a", Slots: 1, State: store.AgentConnected,
			}}); err != nil {
				return err
			}
			if _, err := tx.LeaderAcquire(b.ctx, &store.LeaderAcquireParams{Name: "l", Holder: "a", TTL: longTTL}); err != nil {
				return err
			}
			return errBoom
		})
		wantErr(t, "InTx()", err, errBoom)

		_, err = b.s.JobGet(b.ctx, &store.JobGetParams{Name: "gone"})
		wantErr(t, "JobGet(gone)", err, store.ErrNotFound)
		_, err = b.s.RunGet(b.ctx, &store.RunGetParams{ID: runID})
		wantErr(t, "RunGet()", err, store.ErrNotFound)
		_, err = b.s.AttemptGet(b.ctx, &store.AttemptGetParams{ID: attemptID})
		wantErr(t, "AttemptGet()", err, store.ErrNotFound)
		if ev, err := b.s.EventList(b.ctx, &store.EventListParams{RunID: runID}); err != nil || len(ev) != 0 {
			t.Fatalf("EventList() = %v, %v; want no events", ev, err)
		}
		if ag, err := b.s.AgentList(b.ctx, &store.AgentListParams{}); err != nil || len(ag) != 0 {
			t.Fatalf("AgentList() = %v, %v; want no agents", ag, err)
		}
		// The lease was never taken, so another holder gets it at once.
		if _, err := b.s.LeaderAcquire(b.ctx, &store.LeaderAcquireParams{Name: "l", Holder: "b", TTL: longTTL}); err != nil {
			t.Fatalf("LeaderAcquire(b) after rollback = %v", err)
		}
		// The forbid slot was never taken either.
		b.run(t, j, store.OverlapForbid)
	})

	t.Run("Nested", func(t *testing.T) {
		t.Parallel()
		b := setup(t, h)
		apply := func(s store.Store, name string) error {
			_, err := s.JobApply(b.ctx, &store.JobApplyParams{Name: name, Spec: spec(name, 1)})
			return err
		}
		// The nested InTx runs in the outer transaction: its writes are
		// visible there and roll back with it.
		err := b.s.InTx(b.ctx, func(tx store.Store) error {
			if err := apply(tx, "outer"); err != nil {
				return err
			}
			if err := tx.InTx(b.ctx, func(inner store.Store) error {
				if _, err := inner.JobGet(b.ctx, &store.JobGetParams{Name: "outer"}); err != nil {
					return err
				}
				return apply(inner, "inner")
			}); err != nil {
				return err
			}
			if _, err := tx.JobGet(b.ctx, &store.JobGetParams{Name: "inner"}); err != nil {
				return err
			}
			return errBoom
		})
		wantErr(t, "InTx()", err, errBoom)
		for _, name := range []string{"outer", "inner"} {
			_, err := b.s.JobGet(b.ctx, &store.JobGetParams{Name: name})
			wantErr(t, "JobGet("+name+") after rollback", err, store.ErrNotFound)
		}

		// An error from the nested function reaches the outer one unchanged.
		err = b.s.InTx(b.ctx, func(tx store.Store) error {
			return tx.InTx(b.ctx, func(store.Store) error { return errBoom })
		})
		wantErr(t, "nested InTx()", err, errBoom)

		err = b.s.InTx(b.ctx, func(tx store.Store) error {
			if err := apply(tx, "outer"); err != nil {
				return err
			}
			return tx.InTx(b.ctx, func(inner store.Store) error { return apply(inner, "inner") })
		})
		wantErr(t, "InTx()", err, nil)
		jobs, err := b.s.JobList(b.ctx, &store.JobListParams{})
		if err != nil || len(jobs) != 2 {
			t.Fatalf("JobList() after commit = %d jobs, %v; want 2", len(jobs), err)
		}
	})

	t.Run("Panic", func(t *testing.T) {
		t.Parallel()
		b := setup(t, h)
		// A panicking function rolls back and leaves the store usable; its
		// writes (and the locks they took) are gone.
		func() {
			defer func() {
				if p := recover(); p != errBoom {
					t.Fatalf("recover() = %v, want the panic value %v", p, errBoom)
				}
			}()
			_ = b.s.InTx(b.ctx, func(tx store.Store) error {
				if _, err := tx.JobApply(b.ctx, &store.JobApplyParams{Name: "p", Spec: spec("p", 1)}); err != nil {
					return err
				}
				panic(errBoom)
			})
		}()
		_, err := b.s.JobGet(b.ctx, &store.JobGetParams{Name: "p"})
		wantErr(t, "JobGet() after a panic", err, store.ErrNotFound)
		// A transaction left open would block this write; fail, not hang.
		ctx, cancel := context.WithTimeout(b.ctx, waitTimeout)
		defer cancel()
		_, err = b.s.JobApply(ctx, &store.JobApplyParams{Name: "p", Spec: spec("p", 1)})
		wantErr(t, "JobApply() after a panic", err, nil)
	})

	t.Run("ErrorIsNotRetried", func(t *testing.T) {
		t.Parallel()
		b := setup(t, h)
		calls := 0
		err := b.s.InTx(b.ctx, func(store.Store) error {
			calls++
			return errors.Join(errBoom, store.ErrConflict)
		})
		wantErr(t, "InTx()", err, store.ErrConflict)
		if calls != 1 {
			t.Fatalf("InTx() ran fn %d times, want 1", calls)
		}
	})
}
