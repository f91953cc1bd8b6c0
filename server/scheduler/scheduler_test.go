package scheduler

import (
	"context"
	"errors"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/batonhq/baton/server/store"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type testBundle struct {
	st  store.Store
	run *store.Run
}

// setup opens a migrated SQLite store holding one job and one run of it,
// with one task and no agent to run it.
func setup(t *testing.T) *testBundle {
	t.Helper()
	ctx := context.Background()
	st, _ := openStore(t)
	j := applyJob(t, st, "name: j\ntasks:\n  - {name: a, run: [x]}\n")
	res, err := st.RunCreate(ctx, &store.RunCreateParams{
		JobID: j.ID, JobName: "j", JobVersion: j.Version, Overlap: store.OverlapForbid,
		Instances: []store.InstanceInit{{Task: "a", Item: store.NoItem, State: store.InstancePending}},
	})
	if err != nil {
		t.Fatal(err)
	}
	return &testBundle{st: st, run: res.Run}
}

// start runs a scheduler with a short leader lease until the test ends,
// or until stop is called.
func start(t *testing.T, st store.Store, holder string) (s *Scheduler, stop func()) {
	t.Helper()
	return startWith(t, st, holder, 300*time.Millisecond)
}

// TestStandbyTakesOver: a second scheduler on the same store stands by
// and refuses work; when the leader stops it takes over and continues the
// active run.
func TestStandbyTakesOver(t *testing.T) {
	t.Parallel()
	b := setup(t)
	leader, stopLeader := start(t, b.st, "a")
	if !leader.Leader() {
		t.Fatalf("first scheduler is not the leader")
	}
	standby, _ := start(t, b.st, "b")
	if standby.Leader() {
		t.Fatalf("second scheduler is the leader while the first holds the lease")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := standby.Cancel(ctx, b.run.ID, "x"); err == nil {
		t.Fatalf("standby accepted a cancel; want it refused")
	}

	stopLeader()
	for !standby.Leader() {
		select {
		case <-ctx.Done():
			t.Fatalf("standby did not take over after the leader stopped")
		case <-time.After(10 * time.Millisecond):
		}
	}
	// The new leader owns the run: cancelling it ends it.
	if err := standby.Cancel(ctx, b.run.ID, "taken over"); err != nil {
		t.Fatalf("Cancel after takeover: %v", err)
	}
	run, err := b.st.RunGet(ctx, &store.RunGetParams{ID: b.run.ID})
	if err != nil {
		t.Fatal(err)
	}
	if run.State != store.RunCancelled {
		t.Errorf("run after cancel on the new leader = %s, want cancelled", run.State)
	}
}

// TestCancelUnknownAndFinished checks the errors Cancel reports.
func TestCancelUnknownAndFinished(t *testing.T) {
	t.Parallel()
	b := setup(t)
	s, _ := start(t, b.st, "a")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.Cancel(ctx, 9999, ""); err == nil || !isNotFound(err) {
		t.Errorf("Cancel(unknown) = %v, want store.ErrNotFound", err)
	}
	if err := s.Cancel(ctx, b.run.ID, ""); err != nil {
		t.Fatalf("Cancel(active) = %v", err)
	}
	if err := s.Cancel(ctx, b.run.ID, ""); !errors.Is(err, ErrNotActive) {
		t.Errorf("Cancel(finished) = %v, want ErrNotActive", err)
	}
}

func isNotFound(err error) bool { return errors.Is(err, store.ErrNotFound) }
