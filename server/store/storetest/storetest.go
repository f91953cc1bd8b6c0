// Package storetest is the conformance suite every [store.Store] backend
// runs. All behavioural tests of the store contract live here; a backend's
// own tests only build a [Harness]:
//
//	func TestConformance(t *testing.T) {
//		storetest.Run(t, storetest.Harness{NewDB: newDB})
//	}
//
// The suite never fakes the store's clock (SQL Server compares leases with
// SYSUTCDATETIME()): lease tests use TTLs of tens of milliseconds and poll
// with a deadline.
package storetest

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/batonhq/baton/server/store"
)

// Harness builds databases for the suite.
type Harness struct {
	// NewDB creates a fresh, empty database for one test and returns a function that
	// opens a new, un-migrated handle on it. The database is removed when t ends.
	// The suite calls Migrate itself and closes every handle it opens.
	NewDB func(t *testing.T) func(ctx context.Context) (store.Store, error)
}

// Run runs every conformance test against the backend h builds. The tests
// run in parallel, each on its own database.
func Run(t *testing.T, h Harness) {
	t.Helper()
	if h.NewDB == nil {
		t.Fatal("storetest: Harness.NewDB is nil")
	}
	tests := []struct {
		name string
		run  func(t *testing.T, h Harness)
	}{
		{"Migrate", testMigrate},
		{"InTx", testInTx},
		{"Job", testJob},
		{"RunCreate", testRunCreate},
		{"RunCreateConcurrent", testRunCreateConcurrent},
		{"RunTransition", testRunTransition},
		{"RunList", testRunList},
		{"Instance", testInstance},
		{"InstanceTransition", testInstanceTransition},
		{"AttemptClaim", testAttemptClaim},
		{"AttemptClaimConcurrent", testAttemptClaimConcurrent},
		{"AttemptOutcome", testAttemptOutcome},
		{"AttemptRejected", testAttemptRejected},
		{"AttemptHeartbeat", testAttemptHeartbeat},
		{"AttemptLeaseExpiry", testAttemptLeaseExpiry},
		{"AttemptExtendLeases", testAttemptExtendLeases},
		{"TaskDurations", testTaskDurations},
		{"Event", testEvent},
		{"EventTailConcurrent", testEventTailConcurrent},
		{"Log", testLog},
		{"Agent", testAgent},
		{"AgentApproval", testAgentApproval},
		{"Leader", testLeader},
		{"LeaderFencing", testLeaderFencing},
		{"Token", testToken},
		{"Audit", testAudit},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.run(t, h)
		})
	}
}

// bundle is what a test works with: a migrated store on a fresh database.
type bundle struct {
	ctx  context.Context
	s    store.Store
	open func() store.Store // another migrated handle on the same database
}

func setup(t *testing.T, h Harness) *bundle {
	t.Helper()
	ctx := t.Context()
	opener := h.NewDB(t)
	b := &bundle{ctx: ctx}
	b.open = func() store.Store {
		t.Helper()
		s := openRaw(t, ctx, opener)
		if err := s.Migrate(ctx); err != nil {
			t.Fatalf("Migrate() = %v", err)
		}
		return s
	}
	b.s = b.open()
	return b
}

// openRaw opens an un-migrated handle and closes it when t ends.
func openRaw(t *testing.T, ctx context.Context, opener func(context.Context) (store.Store, error)) store.Store {
	t.Helper()
	s, err := opener(ctx)
	if err != nil {
		t.Fatalf("open store: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close() = %v", err)
		}
	})
	return s
}

var errBoom = errors.New("boom")

// wantErr fails t unless errors.Is(err, want); want nil means no error.
func wantErr(t *testing.T, what string, err, want error) {
	t.Helper()
	switch {
	case want == nil && err != nil:
		t.Fatalf("%s = %v, want no error", what, err)
	case want != nil && !errors.Is(err, want):
		t.Fatalf("%s = %v, want %v", what, err, want)
	}
}

// wantBadInput fails t unless err is a plain error: bad input must be
// refused, and not as one of the sentinels callers branch on.
func wantBadInput(t *testing.T, what string, err error) {
	t.Helper()
	if err == nil {
		t.Fatalf("%s = nil, want an error", what)
	}
	for _, s := range []error{store.ErrNotFound, store.ErrConflict, store.ErrAlreadyActive,
		store.ErrStaleAttempt, store.ErrNotLeader, store.ErrExists} {
		if errors.Is(err, s) {
			t.Fatalf("%s = %v, want a bad-input error, not %v", what, err, s)
		}
	}
}

// checkTime fails t unless tm is set and in UTC.
func checkTime(t *testing.T, what string, tm time.Time) {
	t.Helper()
	if tm.IsZero() {
		t.Fatalf("%s is zero, want set", what)
	}
	if tm.Location() != time.UTC {
		t.Fatalf("%s = %v, want UTC", what, tm)
	}
}

// waitFor polls cond until it returns true, failing t after timeout. Lease
// tests use it because the store's clock cannot be faked.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-deadline.C:
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		case <-tick.C:
		}
	}
}

const waitTimeout = 10 * time.Second

// shortTTL is the lease of attempts a test waits to expire.
const shortTTL = 40 * time.Millisecond

// longTTL is a lease no test outlives.
const longTTL = 10 * time.Minute

// expiryMarker returns a function that blocks until a lease of ttl taken
// now, by the store's clock, has expired. The marker is a leader lease of a
// name only this call uses, so anything the store gave a lease of ttl
// before the call has expired too once it returns.
func (b *bundle) expiryMarker(t *testing.T, ttl time.Duration) func() {
	t.Helper()
	name := fmt.Sprintf("marker-%d", markerSeq.Add(1))
	if _, err := b.s.LeaderAcquire(b.ctx, &store.LeaderAcquireParams{Name: name, Holder: "marker", TTL: ttl}); err != nil {
		t.Fatalf("LeaderAcquire(marker) = %v", err)
	}
	return func() {
		t.Helper()
		waitFor(t, waitTimeout, "the marker lease to expire", func() bool {
			_, err := b.s.LeaderAcquire(b.ctx, &store.LeaderAcquireParams{Name: name, Holder: "probe", TTL: time.Minute})
			if err != nil && !errors.Is(err, store.ErrNotLeader) {
				t.Fatalf("LeaderAcquire(probe) = %v", err)
			}
			return err == nil
		})
	}
}

var markerSeq atomic.Int64

// Fixtures.

func spec(name string, n int) []byte {
	return fmt.Appendf(nil, `{"name":%q,"tasks":[{"name":"t","run":["echo","%d"]}]}`, name, n)
}

func (b *bundle) job(t *testing.T, name string) *store.Job {
	t.Helper()
	res, err := b.s.JobApply(b.ctx, &store.JobApplyParams{Name: name, Spec: spec(name, 1), Source: "name: " + name})
	if err != nil {
		t.Fatalf("JobApply(%s) = %v", name, err)
	}
	return res.Job
}

func (b *bundle) run(t *testing.T, j *store.Job, overlap store.Overlap, ins ...store.InstanceInit) *store.Run {
	t.Helper()
	r, err := b.tryRun(j, overlap, "", ins...)
	if err != nil {
		t.Fatalf("RunCreate(%s, %s) = %v", j.Name, overlap, err)
	}
	return r
}

func (b *bundle) tryRun(j *store.Job, overlap store.Overlap, requestID string, ins ...store.InstanceInit) (*store.Run, error) {
	res, err := b.s.RunCreate(b.ctx, &store.RunCreateParams{
		JobID: j.ID, JobName: j.Name, JobVersion: j.Version, Overlap: overlap, RequestID: requestID, Instances: ins,
	})
	if err != nil {
		return nil, err
	}
	return res.Run, nil
}

func ready(task string, item int) store.InstanceInit {
	return store.InstanceInit{Task: task, Item: item, State: store.InstanceReady}
}

// readyInstances creates a job and a run with n ready instances.
func (b *bundle) readyInstances(t *testing.T, job string, n int) (*store.Run, []*store.Instance) {
	t.Helper()
	ins := make([]store.InstanceInit, n)
	for i := range ins {
		ins[i] = ready("t", i)
		ins[i].ItemValue = fmt.Sprint("item-", i)
	}
	r := b.run(t, b.job(t, job), store.OverlapAllow, ins...)
	list, err := b.s.InstanceList(b.ctx, &store.InstanceListParams{RunID: r.ID})
	if err != nil {
		t.Fatalf("InstanceList() = %v", err)
	}
	if len(list) != n {
		t.Fatalf("InstanceList() returned %d instances, want %d", len(list), n)
	}
	return r, list
}

func (b *bundle) claim(t *testing.T, in *store.Instance, agent string, ttl time.Duration) *store.Attempt {
	t.Helper()
	a, err := b.s.AttemptClaim(b.ctx, &store.AttemptClaimParams{
		InstanceID: in.ID, Agent: agent, Kind: store.AttemptFirst, LeaseTTL: ttl,
	})
	if err != nil {
		t.Fatalf("AttemptClaim(%d) = %v", in.ID, err)
	}
	return a
}

func (b *bundle) attempt(t *testing.T, id int64) *store.Attempt {
	t.Helper()
	a, err := b.s.AttemptGet(b.ctx, &store.AttemptGetParams{ID: id})
	if err != nil {
		t.Fatalf("AttemptGet(%d) = %v", id, err)
	}
	return a
}

func (b *bundle) getRun(t *testing.T, id int64) *store.Run {
	t.Helper()
	r, err := b.s.RunGet(b.ctx, &store.RunGetParams{ID: id})
	if err != nil {
		t.Fatalf("RunGet(%d) = %v", id, err)
	}
	return r
}

func (b *bundle) instance(t *testing.T, runID, id int64) *store.Instance {
	t.Helper()
	list, err := b.s.InstanceList(b.ctx, &store.InstanceListParams{RunID: runID})
	if err != nil {
		t.Fatalf("InstanceList(%d) = %v", runID, err)
	}
	for _, in := range list {
		if in.ID == id {
			return in
		}
	}
	t.Fatalf("instance %d not in run %d", id, runID)
	return nil
}

func intp(i int) *int { return &i }

// ms returns a time at whole milliseconds, which every backend stores
// exactly.
func ms(t time.Time) time.Time { return t.UTC().Truncate(time.Millisecond) }
