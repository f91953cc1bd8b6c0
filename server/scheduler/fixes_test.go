package scheduler

import (
	"context"
	"database/sql"
	"errors"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/batonhq/baton/server/engine"
	"github.com/batonhq/baton/server/job"
	"github.com/batonhq/baton/server/store"
	"github.com/batonhq/baton/server/store/sqlite"
)

// openStore opens a migrated SQLite store in a temp dir and returns its path.
func openStore(t *testing.T) (store.Store, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "baton.db")
	st, err := sqlite.Open(context.Background(), sqlite.Config{Path: path, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := st.Close(); err != nil {
			t.Error(err)
		}
	})
	if err := st.Migrate(context.Background()); err != nil {
		t.Fatal(err)
	}
	return st, path
}

// applyJob stores a job from YAML and returns it.
func applyJob(t *testing.T, st store.Store, src string) *store.Job {
	t.Helper()
	spec, err := job.Parse([]byte(src))
	if err != nil {
		t.Fatal(err)
	}
	canonical, err := spec.Canonical()
	if err != nil {
		t.Fatal(err)
	}
	res, err := st.JobApply(context.Background(), &store.JobApplyParams{Name: spec.Name, Spec: canonical, Source: src})
	if err != nil {
		t.Fatal(err)
	}
	return res.Job
}

// startWith runs a scheduler with the given leader lease TTL until the
// test ends or stop is called.
func startWith(t *testing.T, st store.Store, holder string, leaseTTL time.Duration) (s *Scheduler, stop func()) {
	t.Helper()
	s, err := New(Config{Store: st, Logger: slog.New(slog.DiscardHandler), Holder: holder, LeaseTTL: leaseTTL})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = s.Run(ctx) }()
	stopped := false
	stop = func() {
		if !stopped {
			stopped = true
			cancel()
			<-done
		}
	}
	t.Cleanup(stop)
	select {
	case <-s.Settled():
	case <-time.After(10 * time.Second):
		t.Fatalf("scheduler %s never settled", holder)
	}
	return s, stop
}

// roundTrip returns once the loop has finished every iteration begun
// before the call: two inputs, each answered by a later iteration than the
// one before, so the timers and commit of the first have happened.
func roundTrip(t *testing.T, s *Scheduler) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for range 2 {
		if _, err := s.Agents(ctx); err != nil {
			t.Fatal(err)
		}
	}
}

// TestRestartTimeoutCountsFromRestart: a run whose first start is two
// hours old, with a one-hour timeout, is restarted; a control plane that
// loads it afresh from the store (after a restart or failover) must count
// the timeout from the restart and keep the run going. Before the restart
// time was stored, the new control plane counted from the first start and
// failed the run at once.
func TestRestartTimeoutCountsFromRestart(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st, path := openStore(t)
	j := applyJob(t, st, "name: slow\ntimeout: 1h\ntasks:\n  - {name: a, run: [x]}\n")
	res, err := st.RunCreate(ctx, &store.RunCreateParams{
		JobID: j.ID, JobName: j.Name, JobVersion: j.Version, Overlap: store.OverlapForbid,
		Instances: []store.InstanceInit{{Task: "a", Item: store.NoItem, State: store.InstancePending}},
	})
	if err != nil {
		t.Fatal(err)
	}
	id := res.Run.ID
	insts, err := st.InstanceList(ctx, &store.InstanceListParams{RunID: id})
	if err != nil {
		t.Fatal(err)
	}
	if err := st.InstanceTransition(ctx, &store.InstanceTransitionParams{
		ID: insts[0].ID, From: []store.InstanceState{store.InstancePending}, To: store.InstanceFailed, Error: "exit 1",
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := st.RunTransition(ctx, &store.RunTransitionParams{
		ID: id, From: []store.RunState{store.RunRunning}, To: store.RunFailed, Error: "task \"a\" failed",
	}); err != nil {
		t.Fatal(err)
	}
	// The first run started two hours ago.
	raw, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = raw.Close() }() // its one update is committed by then
	old := time.Now().Add(-2 * time.Hour).UnixMilli()
	if _, err := raw.ExecContext(ctx, `UPDATE runs SET started_at = ?, created_at = ? WHERE id = ?`, old, old, id); err != nil {
		t.Fatal(err)
	}

	first, stopFirst := startWith(t, st, "first", time.Minute)
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := first.Restart(rctx, id, engine.RestartFailed, "", "test"); err != nil {
		t.Fatalf("Restart: %v", err)
	}
	roundTrip(t, first)
	stopFirst()

	run, err := st.RunGet(ctx, &store.RunGetParams{ID: id})
	if err != nil {
		t.Fatal(err)
	}
	if run.RestartedAt.IsZero() || time.Since(run.RestartedAt) > time.Minute {
		t.Fatalf("stored RestartedAt = %v, want the restart's time", run.RestartedAt)
	}

	// A new control plane loads the run from the store.
	second, _ := startWith(t, st, "first", time.Minute)
	if !second.Leader() {
		t.Fatal("second scheduler is not the leader")
	}
	roundTrip(t, second)
	run, err = st.RunGet(ctx, &store.RunGetParams{ID: id})
	if err != nil {
		t.Fatal(err)
	}
	if run.State != store.RunRunning {
		t.Fatalf("restarted run after a control plane restart = %s (%s), want running: the 1h timeout counts from the restart",
			run.State, run.Error)
	}
}

// TestDeposedLeaderCannotCreateRuns: a scheduler that still believes it
// leads, but whose lease another process has taken, must not create a run
// (no leader would schedule it: it would stay pending for ever).
func TestDeposedLeaderCannotCreateRuns(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st, _ := openStore(t)
	j := applyJob(t, st, "name: j\ntasks:\n  - {name: a, run: [x]}\n")
	// A long lease: the scheduler does not renew (and so notice) during
	// the test.
	s, _ := startWith(t, st, "old", time.Hour)
	if !s.Leader() {
		t.Fatal("scheduler is not the leader")
	}
	params := &store.RunCreateParams{
		JobID: j.ID, JobName: j.Name, JobVersion: j.Version, Overlap: store.OverlapAllow,
		Instances: []store.InstanceInit{{Task: "a", Item: store.NoItem, State: store.InstancePending}},
	}
	// The leader creates runs while it holds the lease.
	res, err := s.CreateRun(ctx, params)
	if err != nil || !res.Created {
		t.Fatalf("CreateRun as leader = %+v, %v", res, err)
	}

	// Another batond takes the lease over (as after the old leader's
	// lease expired during a pause).
	lease, err := st.LeaderAcquire(ctx, &store.LeaderAcquireParams{Name: leaseName, Holder: "old", TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if err := st.LeaderRelease(ctx, &store.LeaderReleaseParams{Name: leaseName, Holder: "old", Token: lease.Token}); err != nil {
		t.Fatal(err)
	}
	if _, err := st.LeaderAcquire(ctx, &store.LeaderAcquireParams{Name: leaseName, Holder: "new", TTL: time.Hour}); err != nil {
		t.Fatal(err)
	}
	if !s.Leader() {
		t.Fatal("the old scheduler noticed the takeover already; the test needs it unaware")
	}
	_, err = s.CreateRun(ctx, params)
	if !errors.Is(err, store.ErrNotLeader) {
		t.Fatalf("CreateRun by a deposed leader = %v, want store.ErrNotLeader", err)
	}
	runs, err := st.RunList(ctx, &store.RunListParams{JobName: j.Name})
	if err != nil {
		t.Fatal(err)
	}
	if len(runs) != 1 {
		t.Fatalf("runs after a deposed leader's CreateRun = %d, want 1 (nothing written)", len(runs))
	}
}

// TestRestartOfDeletedJobRefused: a job with no active run may be deleted;
// restarting one of its finished runs must not make it active again.
func TestRestartOfDeletedJobRefused(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st, _ := openStore(t)
	j := applyJob(t, st, "name: gone\ntasks:\n  - {name: a, run: [x]}\n")
	s, _ := startWith(t, st, "a", time.Minute)
	res, err := s.CreateRun(ctx, &store.RunCreateParams{
		JobID: j.ID, JobName: j.Name, JobVersion: j.Version, Overlap: store.OverlapForbid,
		Instances: []store.InstanceInit{{Task: "a", Item: store.NoItem, State: store.InstancePending}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Cancel(ctx, res.Run.ID, "done with it"); err != nil {
		t.Fatal(err)
	}
	if err := st.JobDelete(ctx, &store.JobDeleteParams{Name: "gone"}); err != nil {
		t.Fatal(err)
	}
	err = s.Restart(ctx, res.Run.ID, engine.RestartFailed, "", "")
	if !errors.Is(err, store.ErrConflict) {
		t.Fatalf("Restart of a deleted job's run = %v, want store.ErrConflict", err)
	}
	run, err := st.RunGet(ctx, &store.RunGetParams{ID: res.Run.ID})
	if err != nil || run.State != store.RunCancelled || run.RestartCount != 0 {
		t.Fatalf("run after the refused restart = %+v, %v; want cancelled, never restarted", run, err)
	}
	// Applied again, the job's runs restart.
	applyJob(t, st, "name: gone\ntasks:\n  - {name: a, run: [x]}\n")
	if err := s.Restart(ctx, res.Run.ID, engine.RestartFailed, "", ""); err != nil {
		t.Fatalf("Restart after the job was applied again: %v", err)
	}
}
