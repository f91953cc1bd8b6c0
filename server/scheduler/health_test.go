package scheduler

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/batonhq/baton/server/store"
)

// flakyStore fails every new transaction and lease call while err is set,
// as a store on a full disk does; calls inside a transaction already begun
// go to the real store.
type flakyStore struct {
	store.Store
	err atomic.Pointer[error]
}

func (f *flakyStore) failing() error {
	if p := f.err.Load(); p != nil {
		return *p
	}
	return nil
}

func (f *flakyStore) set(err error) {
	if err == nil {
		f.err.Store(nil)
		return
	}
	f.err.Store(&err)
}

func (f *flakyStore) LeaderAcquire(ctx context.Context, p *store.LeaderAcquireParams) (*store.Lease, error) {
	if err := f.failing(); err != nil {
		return nil, err
	}
	return f.Store.LeaderAcquire(ctx, p)
}

func (f *flakyStore) InTx(ctx context.Context, fn func(tx store.Store) error) error {
	if err := f.failing(); err != nil {
		return err
	}
	return f.Store.InTx(ctx, fn)
}

// waitRole waits for the scheduler to report role.
func waitRole(t *testing.T, s *Scheduler, role Role) Status {
	t.Helper()
	deadline := time.After(20 * time.Second)
	for {
		ch := s.StatusChanged()
		if st := s.Status(); st.Role == role {
			return st
		}
		select {
		case <-ch:
		case <-deadline:
			t.Fatalf("scheduler role = %s (%v), want %s", s.Status().Role, s.Status().Err, role)
		}
	}
}

// TestStoreUnavailableReported: when the store fails (here: a full disk)
// the scheduler says so, with the store's error, instead of claiming that
// another batond leads; API calls are refused with that error; once the
// store answers again it leads again and nothing was lost.
func TestStoreUnavailableReported(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	real, _ := openStore(t)
	j := applyJob(t, real, "name: j\ntasks:\n  - {name: a, run: [x]}\n")
	st := &flakyStore{Store: real}
	s, _ := startWith(t, st, "a", 300*time.Millisecond)
	waitRole(t, s, RoleLeader)
	params := &store.RunCreateParams{
		JobID: j.ID, JobName: j.Name, JobVersion: j.Version, Overlap: store.OverlapForbid,
		Instances: []store.InstanceInit{{Task: "a", Item: store.NoItem, State: store.InstancePending}},
	}
	res, err := s.CreateRun(ctx, params)
	if err != nil {
		t.Fatal(err)
	}

	full := errors.New("database or disk is full")
	st.set(full)
	// The next lease renewal (or commit) fails.
	got := waitRole(t, s, RoleStoreUnavailable)
	if !errors.Is(got.Err, full) {
		t.Fatalf("status error = %v, want the store's error", got.Err)
	}
	if got.Ready() {
		t.Fatal("a scheduler whose store fails reports ready")
	}
	for what, err := range map[string]error{
		"CreateRun": func() error { _, err := s.CreateRun(ctx, params); return err }(),
		"Cancel":    s.Cancel(ctx, res.Run.ID, "x"),
	} {
		if !errors.Is(err, ErrStoreUnavailable) || !strings.Contains(err.Error(), "disk is full") ||
			strings.Contains(err.Error(), "another") {
			t.Errorf("%s while the store fails = %v; want ErrStoreUnavailable naming the store's error", what, err)
		}
	}

	st.set(nil)
	waitRole(t, s, RoleLeader)
	if err := s.Cancel(ctx, res.Run.ID, "after recovery"); err != nil {
		t.Fatalf("Cancel after the store recovered: %v", err)
	}
	run, err := real.RunGet(ctx, &store.RunGetParams{ID: res.Run.ID})
	if err != nil {
		t.Fatal(err)
	}
	if run.State != store.RunCancelled || run.Error != "after recovery" {
		t.Fatalf("run after recovery = %s (%q), want cancelled by the request made after recovery", run.State, run.Error)
	}
}

// TestStandbyStatus: a second scheduler on a store whose lease is held
// reports standby, not a store failure.
func TestStandbyStatus(t *testing.T) {
	t.Parallel()
	st, _ := openStore(t)
	leader, _ := startWith(t, st, "a", time.Minute)
	waitRole(t, leader, RoleLeader)
	standby, _ := startWith(t, st, "b", time.Minute)
	got := waitRole(t, standby, RoleStandby)
	if got.Err != nil || got.Ready() {
		t.Fatalf("standby status = %+v, want standby, not ready, no error", got)
	}
	if err := got.Error(); !errors.Is(err, store.ErrNotLeader) || errors.Is(err, ErrStoreUnavailable) {
		t.Fatalf("standby's refusal = %v, want store.ErrNotLeader", err)
	}
}
