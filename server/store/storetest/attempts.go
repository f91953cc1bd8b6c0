package storetest

import (
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/batonhq/baton/server/store"
)

func testAttemptClaim(t *testing.T, h Harness) {
	b := setup(t, h)
	r, ins := b.readyInstances(t, "j", 3)
	in := ins[1]

	a, err := b.s.AttemptClaim(b.ctx, &store.AttemptClaimParams{
		InstanceID: in.ID, Agent: "etl-01", Kind: store.AttemptFirst, LeaseTTL: longTTL,
	})
	if err != nil {
		t.Fatalf("AttemptClaim() = %v", err)
	}
	want := &store.Attempt{ID: a.ID, InstanceID: in.ID, RunID: r.ID, Task: "t", Item: 1, No: 1,
		Kind: store.AttemptFirst, Agent: "etl-01", State: store.AttemptDispatched,
		DispatchedAt: a.DispatchedAt, LeaseExpiresAt: a.LeaseExpiresAt}
	if diff := cmp.Diff(want, a, cmpopts.EquateEmpty()); diff != "" {
		t.Fatalf("AttemptClaim() attempt mismatch (-want +got):\n%s", diff)
	}
	checkTime(t, "DispatchedAt", a.DispatchedAt)
	checkTime(t, "LeaseExpiresAt", a.LeaseExpiresAt)
	if d := a.LeaseExpiresAt.Sub(a.DispatchedAt); d < longTTL-time.Second || d > longTTL+time.Second {
		t.Fatalf("lease = DispatchedAt + %s, want about %s", d, longTTL)
	}
	if diff := cmp.Diff(a, b.attempt(t, a.ID)); diff != "" {
		t.Fatalf("AttemptGet() mismatch (-claimed +stored):\n%s", diff)
	}
	got := b.instance(t, r.ID, in.ID)
	if got.State != store.InstanceDispatched || got.Attempts != 1 || got.AttemptID != a.ID {
		t.Fatalf("claimed instance = %+v, want dispatched with attempt %d", got, a.ID)
	}

	// A claimed instance is not ready any more.
	_, err = b.s.AttemptClaim(b.ctx, &store.AttemptClaimParams{InstanceID: in.ID, Agent: "etl-02", Kind: store.AttemptFirst, LeaseTTL: longTTL})
	wantErr(t, "AttemptClaim(dispatched)", err, store.ErrConflict)
	if diff := cmp.Diff(got, b.instance(t, r.ID, in.ID)); diff != "" {
		t.Fatalf("refused AttemptClaim() changed the instance (-before +after):\n%s", diff)
	}
	_, err = b.s.AttemptClaim(b.ctx, &store.AttemptClaimParams{InstanceID: in.ID + 1000, Agent: "etl-02", Kind: store.AttemptFirst, LeaseTTL: longTTL})
	wantErr(t, "AttemptClaim(unknown)", err, store.ErrNotFound)
	_, err = b.s.AttemptClaim(b.ctx, &store.AttemptClaimParams{InstanceID: ins[0].ID, Kind: store.AttemptFirst, LeaseTTL: longTTL})
	wantBadInput(t, "AttemptClaim(no agent)", err)
	_, err = b.s.AttemptClaim(b.ctx, &store.AttemptClaimParams{InstanceID: ins[0].ID, Agent: "x", Kind: store.AttemptFirst})
	wantBadInput(t, "AttemptClaim(no lease ttl)", err)
	over := int64(store.MaxRestart) + 1 // an int64 so the suite builds where int has 32 bits
	for _, restart := range []int{-1, int(over)} {
		_, err = b.s.AttemptClaim(b.ctx, &store.AttemptClaimParams{
			InstanceID: ins[0].ID, Agent: "x", Kind: store.AttemptRestart, LeaseTTL: longTTL, Restart: restart,
		})
		wantBadInput(t, fmt.Sprintf("AttemptClaim(restart %d)", restart), err)
	}

	// Claiming from another state (a retry of a failed instance) numbers
	// the attempt on and moves the fence.
	if _, err := b.s.AttemptFinish(b.ctx, &store.AttemptFinishParams{ID: a.ID, Agent: "etl-01", State: store.AttemptFailed, ExitCode: intp(1)}); err != nil {
		t.Fatalf("AttemptFinish() = %v", err)
	}
	if err := b.s.InstanceTransition(b.ctx, &store.InstanceTransitionParams{
		ID: in.ID, From: []store.InstanceState{store.InstanceDispatched}, To: store.InstanceFailed, AttemptID: a.ID, Error: "exit 1",
	}); err != nil {
		t.Fatalf("InstanceTransition() = %v", err)
	}
	a2, err := b.s.AttemptClaim(b.ctx, &store.AttemptClaimParams{
		InstanceID: in.ID, From: []store.InstanceState{store.InstanceFailed, store.InstanceLost},
		Agent: "etl-02", Kind: store.AttemptRetry, LeaseTTL: longTTL,
	})
	if err != nil {
		t.Fatalf("AttemptClaim(retry) = %v", err)
	}
	if a2.No != 2 || a2.Kind != store.AttemptRetry || a2.Agent != "etl-02" || a2.ID <= a.ID {
		t.Fatalf("retry attempt = %+v, want No 2, kind retry, agent etl-02, id above %d", a2, a.ID)
	}
	got = b.instance(t, r.ID, in.ID)
	if got.State != store.InstanceDispatched || got.Attempts != 2 || got.AttemptID != a2.ID || !got.FinishedAt.IsZero() {
		t.Fatalf("retried instance = %+v, want dispatched, 2 attempts, fence %d, not finished", got, a2.ID)
	}

	// An attempt records the run's restart count passed to the claim.
	a3, err := b.s.AttemptClaim(b.ctx, &store.AttemptClaimParams{
		InstanceID: ins[0].ID, Agent: "etl-01", Kind: store.AttemptRestart, LeaseTTL: longTTL, Restart: 2,
	})
	if err != nil {
		t.Fatalf("AttemptClaim(restart 2) = %v", err)
	}
	if a3.Restart != 2 || a3.Kind != store.AttemptRestart {
		t.Fatalf("AttemptClaim(restart 2) = %+v, want Restart 2, kind restart", a3)
	}
	if got := b.attempt(t, a3.ID); got.Restart != 2 {
		t.Fatalf("AttemptGet(%d).Restart = %d, want 2", a3.ID, got.Restart)
	}

	// AttemptList: by run and by instance, ordered by id.
	all, err := b.s.AttemptList(b.ctx, &store.AttemptListParams{RunID: r.ID})
	if err != nil {
		t.Fatalf("AttemptList() = %v", err)
	}
	ids := func(as []*store.Attempt) []int64 {
		out := []int64{}
		for _, a := range as {
			out = append(out, a.ID)
		}
		return out
	}
	if diff := cmp.Diff([]int64{a.ID, a2.ID, a3.ID}, ids(all)); diff != "" {
		t.Fatalf("AttemptList(run) ids mismatch (-want +got):\n%s", diff)
	}
	var restarts []int
	for _, x := range all {
		restarts = append(restarts, x.Restart)
	}
	if diff := cmp.Diff([]int{0, 0, 2}, restarts); diff != "" {
		t.Fatalf("AttemptList(run) restarts mismatch (-want +got):\n%s", diff)
	}
	one, err := b.s.AttemptList(b.ctx, &store.AttemptListParams{RunID: r.ID, InstanceID: in.ID})
	if err != nil {
		t.Fatalf("AttemptList(instance) = %v", err)
	}
	if diff := cmp.Diff([]int64{a.ID, a2.ID}, ids(one)); diff != "" {
		t.Fatalf("AttemptList(instance) ids mismatch (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(b.attempt(t, a2.ID), one[1]); diff != "" {
		t.Fatalf("AttemptList() attempt mismatch (-AttemptGet +AttemptList):\n%s", diff)
	}
	_, err = b.s.AttemptGet(b.ctx, &store.AttemptGetParams{ID: a3.ID + 1000})
	wantErr(t, "AttemptGet(unknown)", err, store.ErrNotFound)

	// The largest restart count round-trips.
	top, err := b.s.AttemptClaim(b.ctx, &store.AttemptClaimParams{
		InstanceID: ins[2].ID, Agent: "etl-01", Kind: store.AttemptRestart, LeaseTTL: longTTL, Restart: store.MaxRestart,
	})
	if err != nil {
		t.Fatalf("AttemptClaim(restart %d) = %v", store.MaxRestart, err)
	}
	if got := b.attempt(t, top.ID); got.Restart != store.MaxRestart || top.Restart != store.MaxRestart {
		t.Fatalf("AttemptClaim(restart %d) = %d, stored %d", store.MaxRestart, top.Restart, got.Restart)
	}
}

// testAttemptClaimConcurrent: many goroutines claim the same ready
// instances; each is claimed exactly once.
func testAttemptClaimConcurrent(t *testing.T, h Harness) {
	b := setup(t, h)
	const instances, claimers = 16, 8
	r, ins := b.readyInstances(t, "j", instances)
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		wins = map[int64][]string{} // instance id -> agents that won it
	)
	for c := range claimers {
		agent := fmt.Sprint("agent-", c)
		wg.Go(func() {
			// Each claimer walks the instances from its own starting point.
			for k := range instances {
				in := ins[(k+c*3)%instances]
				a, err := b.s.AttemptClaim(b.ctx, &store.AttemptClaimParams{
					InstanceID: in.ID, Agent: agent, Kind: store.AttemptFirst, LeaseTTL: longTTL,
				})
				if errors.Is(err, store.ErrConflict) {
					continue
				}
				if err != nil {
					t.Errorf("AttemptClaim(%d) = %v", in.ID, err)
					return
				}
				mu.Lock()
				wins[a.InstanceID] = append(wins[a.InstanceID], agent)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	for _, in := range ins {
		if n := len(wins[in.ID]); n != 1 {
			t.Errorf("instance %d claimed %d times (%v), want once", in.ID, n, wins[in.ID])
		}
	}
	all, err := b.s.AttemptList(b.ctx, &store.AttemptListParams{RunID: r.ID})
	if err != nil || len(all) != instances {
		t.Fatalf("AttemptList() = %d attempts, %v; want %d", len(all), err, instances)
	}
	for _, a := range all {
		if got := b.instance(t, r.ID, a.InstanceID); got.AttemptID != a.ID || got.Attempts != 1 {
			t.Fatalf("instance %+v does not point at its only attempt %d", got, a.ID)
		}
	}
}

func testAttemptOutcome(t *testing.T, h Harness) {
	b := setup(t, h)
	_, ins := b.readyInstances(t, "j", 4)
	a := b.claim(t, ins[0], "etl-01", longTTL)
	unchanged := func(what string, id int64, before *store.Attempt) {
		t.Helper()
		if diff := cmp.Diff(before, b.attempt(t, id)); diff != "" {
			t.Fatalf("%s changed the attempt (-before +after):\n%s", what, diff)
		}
	}

	// Reports by another agent are stale and change nothing.
	err := b.s.AttemptStarted(b.ctx, &store.AttemptStartedParams{ID: a.ID, Agent: "etl-02", LeaseTTL: longTTL})
	wantErr(t, "AttemptStarted(wrong agent)", err, store.ErrStaleAttempt)
	unchanged("AttemptStarted(wrong agent)", a.ID, a)
	_, err = b.s.AttemptFinish(b.ctx, &store.AttemptFinishParams{ID: a.ID, Agent: "etl-02", State: store.AttemptSucceeded, ExitCode: intp(0)})
	wantErr(t, "AttemptFinish(wrong agent)", err, store.ErrStaleAttempt)
	unchanged("AttemptFinish(wrong agent)", a.ID, a)
	err = b.s.AttemptStarted(b.ctx, &store.AttemptStartedParams{ID: a.ID + 1000, Agent: "etl-01", LeaseTTL: longTTL})
	wantErr(t, "AttemptStarted(unknown)", err, store.ErrNotFound)
	_, err = b.s.AttemptFinish(b.ctx, &store.AttemptFinishParams{ID: a.ID + 1000, Agent: "etl-01", State: store.AttemptSucceeded})
	wantErr(t, "AttemptFinish(unknown)", err, store.ErrNotFound)
	_, err = b.s.AttemptFinish(b.ctx, &store.AttemptFinishParams{ID: a.ID, Agent: "etl-01", State: store.AttemptRunning})
	wantBadInput(t, "AttemptFinish(state running)", err)
	unchanged("AttemptFinish(state running)", a.ID, a)

	// An agent that stopped the child when the attempt's lease expired
	// (self-fencing) reports it lost, with what the child left.
	fenced := b.claim(t, ins[3], "etl-01", longTTL)
	if _, err := b.s.AttemptFinish(b.ctx, &store.AttemptFinishParams{
		ID: fenced.ID, Agent: "etl-01", State: store.AttemptLost, ExitCode: intp(-1),
		Error: "lease expired", StderrTail: "stopping",
	}); err != nil {
		t.Fatalf("AttemptFinish(lost) = %v", err)
	}
	if got := b.attempt(t, fenced.ID); got.State != store.AttemptLost || got.Error != "lease expired" ||
		got.StderrTail != "stopping" || got.ExitCode == nil || *got.ExitCode != -1 || got.FinishedAt.IsZero() {
		t.Fatalf("self-fenced attempt = %+v; want lost with its error, tail, exit code and end", got)
	}

	// Started: running, StartedAt as reported, lease renewed.
	startedAt := ms(time.Now().Add(-time.Second))
	err = b.s.AttemptStarted(b.ctx, &store.AttemptStartedParams{ID: a.ID, Agent: "etl-01", StartedAt: startedAt, LeaseTTL: 2 * longTTL})
	wantErr(t, "AttemptStarted()", err, nil)
	got := b.attempt(t, a.ID)
	if got.State != store.AttemptRunning || !got.StartedAt.Equal(startedAt) || !got.LeaseExpiresAt.After(a.LeaseExpiresAt) {
		t.Fatalf("started attempt = %+v; want running, started %v, lease after %v", got, startedAt, a.LeaseExpiresAt)
	}
	checkTime(t, "StartedAt", got.StartedAt)
	// A re-sent report renews the lease and keeps the start time.
	err = b.s.AttemptStarted(b.ctx, &store.AttemptStartedParams{ID: a.ID, Agent: "etl-01", LeaseTTL: 3 * longTTL})
	wantErr(t, "AttemptStarted(again)", err, nil)
	if again := b.attempt(t, a.ID); again.State != store.AttemptRunning || !again.StartedAt.Equal(startedAt) ||
		!again.LeaseExpiresAt.After(got.LeaseExpiresAt) {
		t.Fatalf("attempt after a re-sent start = %+v; want running, started %v, lease after %v", again, startedAt, got.LeaseExpiresAt)
	}
	got = b.attempt(t, a.ID)

	// Finish: the outcome is recorded.
	finishedAt := ms(time.Now())
	fin, err := b.s.AttemptFinish(b.ctx, &store.AttemptFinishParams{
		ID: a.ID, Agent: "etl-01", State: store.AttemptSucceeded, ExitCode: intp(0),
		Outputs: map[string]string{"RowCount": "7"}, StdoutTail: "out\n", StderrTail: "err\n", FinishedAt: finishedAt,
	})
	if err != nil {
		t.Fatalf("AttemptFinish() = %v", err)
	}
	want := *got
	want.State, want.ExitCode, want.Outputs = store.AttemptSucceeded, intp(0), map[string]string{"RowCount": "7"}
	want.StdoutTail, want.StderrTail, want.FinishedAt = "out\n", "err\n", finishedAt
	if diff := cmp.Diff(&want, fin); diff != "" {
		t.Fatalf("AttemptFinish() mismatch (-want +got):\n%s", diff)
	}
	unchanged("AttemptFinish()", a.ID, fin)

	// A re-delivered outcome, a late start and a loss are stale and change
	// nothing.
	_, err = b.s.AttemptFinish(b.ctx, &store.AttemptFinishParams{ID: a.ID, Agent: "etl-01", State: store.AttemptFailed, ExitCode: intp(9)})
	wantErr(t, "AttemptFinish(again)", err, store.ErrStaleAttempt)
	unchanged("AttemptFinish(again)", a.ID, fin)
	err = b.s.AttemptStarted(b.ctx, &store.AttemptStartedParams{ID: a.ID, Agent: "etl-01", LeaseTTL: longTTL})
	wantErr(t, "AttemptStarted(finished)", err, store.ErrStaleAttempt)
	_, err = b.s.AttemptLose(b.ctx, &store.AttemptLoseParams{ID: a.ID, Error: "agent lost"})
	wantErr(t, "AttemptLose(finished)", err, store.ErrStaleAttempt)
	unchanged("AttemptLose(finished)", a.ID, fin)

	// Finishing straight from dispatched, with a start time: StartedAt and
	// FinishedAt are recorded; a zero FinishedAt means now.
	a2 := b.claim(t, ins[1], "etl-01", longTTL)
	fin2, err := b.s.AttemptFinish(b.ctx, &store.AttemptFinishParams{
		ID: a2.ID, Agent: "etl-01", State: store.AttemptTimedOut, Error: "timeout 30m", StartedAt: startedAt,
	})
	if err != nil {
		t.Fatalf("AttemptFinish(from dispatched) = %v", err)
	}
	if fin2.State != store.AttemptTimedOut || fin2.ExitCode != nil || fin2.Error != "timeout 30m" || !fin2.StartedAt.Equal(startedAt) {
		t.Fatalf("timed out attempt = %+v", fin2)
	}
	checkTime(t, "FinishedAt", fin2.FinishedAt)

	// Lose: a live attempt becomes lost whatever its lease; a late outcome
	// is then kept once, as history, and the state stays lost.
	a3 := b.claim(t, ins[2], "etl-02", longTTL)
	lost, err := b.s.AttemptLose(b.ctx, &store.AttemptLoseParams{ID: a3.ID, Error: "agent lost"})
	if err != nil {
		t.Fatalf("AttemptLose() = %v", err)
	}
	if lost.State != store.AttemptLost || lost.Error != "agent lost" {
		t.Fatalf("lost attempt = %+v, want lost with error", lost)
	}
	checkTime(t, "FinishedAt", lost.FinishedAt)
	unchanged("AttemptLose()", a3.ID, lost)
	_, err = b.s.AttemptLose(b.ctx, &store.AttemptLoseParams{ID: a3.ID})
	wantErr(t, "AttemptLose(lost)", err, store.ErrStaleAttempt)
	_, err = b.s.AttemptLose(b.ctx, &store.AttemptLoseParams{ID: a3.ID + 1000})
	wantErr(t, "AttemptLose(unknown)", err, store.ErrNotFound)

	_, err = b.s.AttemptFinish(b.ctx, &store.AttemptFinishParams{
		ID: a3.ID, Agent: "etl-02", State: store.AttemptSucceeded, ExitCode: intp(0),
		Outputs: map[string]string{"k": "v"}, StdoutTail: "late out",
	})
	wantErr(t, "AttemptFinish(lost)", err, store.ErrStaleAttempt)
	late := b.attempt(t, a3.ID)
	if late.State != store.AttemptLost || late.LateState != store.AttemptSucceeded || late.ExitCode == nil ||
		*late.ExitCode != 0 || late.Outputs["k"] != "v" || late.StdoutTail != "late out" || !late.FinishedAt.Equal(lost.FinishedAt) {
		t.Fatalf("lost attempt after a late outcome = %+v; want lost, late succeeded with its outcome", late)
	}
	_, err = b.s.AttemptFinish(b.ctx, &store.AttemptFinishParams{ID: a3.ID, Agent: "etl-02", State: store.AttemptFailed, ExitCode: intp(2)})
	wantErr(t, "AttemptFinish(lost, again)", err, store.ErrStaleAttempt)
	unchanged("a second late outcome", a3.ID, late)
}

// testAttemptRejected: an attempt its agent's allowlist refused is
// recorded rejected, with the agent's message and no exit code; a late
// refusal of a lost attempt is kept as late history.
func testAttemptRejected(t *testing.T, h Harness) {
	b := setup(t, h)
	_, ins := b.readyInstances(t, "j", 2)
	a := b.claim(t, ins[0], "etl-01", longTTL)
	msg := "program /bin/sh is not allowed on agent etl-01: it matches none of --allow /opt/etl/bin/*"
	fin, err := b.s.AttemptFinish(b.ctx, &store.AttemptFinishParams{ID: a.ID, Agent: "etl-01", State: store.AttemptRejected, Error: msg})
	if err != nil {
		t.Fatalf("AttemptFinish(rejected) = %v", err)
	}
	if got := b.attempt(t, a.ID); got.State != store.AttemptRejected || got.Error != msg || got.ExitCode != nil || got.FinishedAt.IsZero() {
		t.Fatalf("rejected attempt = %+v; want rejected with the agent's message, no exit code, finished", got)
	}
	if fin.State != store.AttemptRejected {
		t.Fatalf("AttemptFinish(rejected) returned state %q", fin.State)
	}

	lost := b.claim(t, ins[1], "etl-02", longTTL)
	if _, err := b.s.AttemptLose(b.ctx, &store.AttemptLoseParams{ID: lost.ID, Error: "agent lost"}); err != nil {
		t.Fatalf("AttemptLose() = %v", err)
	}
	_, err = b.s.AttemptFinish(b.ctx, &store.AttemptFinishParams{ID: lost.ID, Agent: "etl-02", State: store.AttemptRejected, Error: msg})
	wantErr(t, "AttemptFinish(lost, rejected)", err, store.ErrStaleAttempt)
	if got := b.attempt(t, lost.ID); got.State != store.AttemptLost || got.LateState != store.AttemptRejected {
		t.Fatalf("lost attempt after a late refusal = %+v; want lost, late rejected", got)
	}
}

func testAttemptHeartbeat(t *testing.T, h Harness) {
	b := setup(t, h)
	_, ins := b.readyInstances(t, "j", 4)
	a1 := b.claim(t, ins[0], "etl-01", longTTL)
	a2 := b.claim(t, ins[1], "etl-01", longTTL)
	done := b.claim(t, ins[2], "etl-01", longTTL)
	other := b.claim(t, ins[3], "etl-02", longTTL)
	if _, err := b.s.AttemptFinish(b.ctx, &store.AttemptFinishParams{ID: done.ID, Agent: "etl-01", State: store.AttemptSucceeded}); err != nil {
		t.Fatalf("AttemptFinish() = %v", err)
	}
	if err := b.s.AttemptStarted(b.ctx, &store.AttemptStartedParams{ID: a2.ID, Agent: "etl-01", LeaseTTL: longTTL}); err != nil {
		t.Fatalf("AttemptStarted() = %v", err)
	}

	// Only the agent's own live attempts are renewed; the rest are stale.
	renewed, err := b.s.AttemptHeartbeat(b.ctx, &store.AttemptHeartbeatParams{
		Agent: "etl-01", AttemptIDs: []int64{other.ID, a2.ID, done.ID, a1.ID, other.ID + 1000}, LeaseTTL: 2 * longTTL,
	})
	if err != nil {
		t.Fatalf("AttemptHeartbeat() = %v", err)
	}
	if diff := cmp.Diff([]int64{a1.ID, a2.ID}, renewed, cmpopts.SortSlices(func(x, y int64) bool { return x < y })); diff != "" {
		t.Fatalf("AttemptHeartbeat() renewed mismatch (-want +got):\n%s", diff)
	}
	for _, a := range []*store.Attempt{a1, a2} {
		if got := b.attempt(t, a.ID); !got.LeaseExpiresAt.After(a.LeaseExpiresAt) {
			t.Fatalf("attempt %d lease %v not renewed past %v", a.ID, got.LeaseExpiresAt, a.LeaseExpiresAt)
		}
	}
	for _, a := range []*store.Attempt{other} {
		if got := b.attempt(t, a.ID); !got.LeaseExpiresAt.Equal(a.LeaseExpiresAt) {
			t.Fatalf("attempt %d of another agent: lease %v changed from %v", a.ID, got.LeaseExpiresAt, a.LeaseExpiresAt)
		}
	}
	if got := b.attempt(t, done.ID); got.State != store.AttemptSucceeded {
		t.Fatalf("finished attempt is %s after a heartbeat, want succeeded", got.State)
	}
	none, err := b.s.AttemptHeartbeat(b.ctx, &store.AttemptHeartbeatParams{Agent: "etl-01", LeaseTTL: longTTL})
	if err != nil || len(none) != 0 {
		t.Fatalf("AttemptHeartbeat(no ids) = %v, %v; want none", none, err)
	}
}

// testAttemptLeaseExpiry: an attempt whose lease expired is stale: late
// reports for it renew and decide nothing but are kept, also once it is
// declared lost.
func testAttemptLeaseExpiry(t *testing.T, h Harness) {
	b := setup(t, h)
	_, ins := b.readyInstances(t, "j", 3)
	keep := b.claim(t, ins[0], "etl-01", longTTL)
	short := b.claim(t, ins[1], "etl-01", shortTTL)
	expired := b.claim(t, ins[2], "etl-01", shortTTL)
	b.expiryMarker(t, shortTTL)()

	// An expired attempt, still dispatched, is already stale: a heartbeat
	// skips it and its outcome is kept as late, the state unchanged.
	renewed, err := b.s.AttemptHeartbeat(b.ctx, &store.AttemptHeartbeatParams{
		Agent: "etl-01", AttemptIDs: []int64{keep.ID, short.ID, expired.ID}, LeaseTTL: longTTL,
	})
	if err != nil {
		t.Fatalf("AttemptHeartbeat() = %v", err)
	}
	if diff := cmp.Diff([]int64{keep.ID}, renewed); diff != "" {
		t.Fatalf("AttemptHeartbeat() after expiry renewed mismatch (-want +got):\n%s", diff)
	}
	err = b.s.AttemptStarted(b.ctx, &store.AttemptStartedParams{ID: expired.ID, Agent: "etl-01", LeaseTTL: longTTL})
	wantErr(t, "AttemptStarted(expired)", err, store.ErrStaleAttempt)
	_, err = b.s.AttemptFinish(b.ctx, &store.AttemptFinishParams{ID: expired.ID, Agent: "etl-01", State: store.AttemptFailed, ExitCode: intp(4)})
	wantErr(t, "AttemptFinish(expired)", err, store.ErrStaleAttempt)
	if got := b.attempt(t, expired.ID); got.State != store.AttemptDispatched || got.LateState != store.AttemptFailed ||
		got.ExitCode == nil || *got.ExitCode != 4 {
		t.Fatalf("expired attempt after a late outcome = %+v; want dispatched, late failed, exit 4", got)
	}

	// Declaring the expired attempts lost (AttemptLose, whatever the
	// lease) keeps the late outcome already recorded.
	lost, err := b.s.AttemptLose(b.ctx, &store.AttemptLoseParams{ID: expired.ID, Error: "lease expired"})
	if err != nil {
		t.Fatalf("AttemptLose(expired) = %v", err)
	}
	if lost.State != store.AttemptLost || lost.LateState != store.AttemptFailed {
		t.Fatalf("AttemptLose(expired) = %+v; want lost, late failed", lost)
	}
	checkTime(t, "lost FinishedAt", lost.FinishedAt)
	if _, err := b.s.AttemptLose(b.ctx, &store.AttemptLoseParams{ID: short.ID, Error: "lease expired"}); err != nil {
		t.Fatalf("AttemptLose(short) = %v", err)
	}
	if got := b.attempt(t, keep.ID); got.State != store.AttemptDispatched {
		t.Fatalf("attempt with a long lease is %s, want dispatched", got.State)
	}

	// Late reports for an expired attempt declared lost.
	renewed, err = b.s.AttemptHeartbeat(b.ctx, &store.AttemptHeartbeatParams{Agent: "etl-01", AttemptIDs: []int64{short.ID}, LeaseTTL: longTTL})
	if err != nil || len(renewed) != 0 {
		t.Fatalf("AttemptHeartbeat(lost) = %v, %v; want nothing renewed", renewed, err)
	}
	before := b.attempt(t, short.ID)
	_, err = b.s.AttemptFinish(b.ctx, &store.AttemptFinishParams{
		ID: short.ID, Agent: "etl-01", State: store.AttemptSucceeded, ExitCode: intp(0), StderrTail: "done late",
	})
	wantErr(t, "AttemptFinish(lost)", err, store.ErrStaleAttempt)
	got := b.attempt(t, short.ID)
	if got.State != store.AttemptLost || got.LateState != store.AttemptSucceeded || got.StderrTail != "done late" ||
		!got.LeaseExpiresAt.Equal(before.LeaseExpiresAt) || !got.FinishedAt.Equal(before.FinishedAt) {
		t.Fatalf("lost attempt after a late outcome = %+v; want lost, late succeeded, lease and FinishedAt unchanged", got)
	}
}

func testAttemptExtendLeases(t *testing.T, h Harness) {
	b := setup(t, h)
	_, ins := b.readyInstances(t, "j", 3)
	expiring := b.claim(t, ins[0], "etl-01", shortTTL)
	long := b.claim(t, ins[1], "etl-01", longTTL)
	done := b.claim(t, ins[2], "etl-01", longTTL)
	if _, err := b.s.AttemptFinish(b.ctx, &store.AttemptFinishParams{ID: done.ID, Agent: "etl-01", State: store.AttemptSucceeded}); err != nil {
		t.Fatalf("AttemptFinish() = %v", err)
	}
	b.expiryMarker(t, shortTTL)()

	// A takeover extends every live lease shorter than the TTL, also an
	// expired one.
	n, err := b.s.AttemptExtendLeases(b.ctx, &store.AttemptExtendLeasesParams{LeaseTTL: longTTL / 2})
	if err != nil || n != 1 {
		t.Fatalf("AttemptExtendLeases(%s) = %d, %v; want 1", longTTL/2, n, err)
	}
	if got := b.attempt(t, long.ID); !got.LeaseExpiresAt.Equal(long.LeaseExpiresAt) {
		t.Fatalf("a longer lease changed: %v, want %v", got.LeaseExpiresAt, long.LeaseExpiresAt)
	}
	// A heartbeat skips an expired lease: renewing it shows it is live.
	renewed, err := b.s.AttemptHeartbeat(b.ctx, &store.AttemptHeartbeatParams{Agent: "etl-01", AttemptIDs: []int64{expiring.ID}, LeaseTTL: longTTL})
	if err != nil || len(renewed) != 1 {
		t.Fatalf("AttemptHeartbeat(extended) = %v, %v; want it renewed", renewed, err)
	}
	n, err = b.s.AttemptExtendLeases(b.ctx, &store.AttemptExtendLeasesParams{LeaseTTL: 3 * longTTL})
	if err != nil || n != 2 {
		t.Fatalf("AttemptExtendLeases(%s) = %d, %v; want 2", 3*longTTL, n, err)
	}
	if got := b.attempt(t, done.ID); !got.LeaseExpiresAt.Equal(done.LeaseExpiresAt) {
		t.Fatalf("a finished attempt's lease changed: %v, want %v", got.LeaseExpiresAt, done.LeaseExpiresAt)
	}
	_, err = b.s.AttemptExtendLeases(b.ctx, &store.AttemptExtendLeasesParams{})
	wantBadInput(t, "AttemptExtendLeases(no ttl)", err)
}
