package sqlserver

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/batonhq/baton/server/store"
)

// attemptCols are the columns scanAttempt reads; outAttemptCols the same
// from OUTPUT.
const (
	attemptCols = `id, instance_id, run_id, task, item, attempt_no, run_restart, kind, agent, state, exit_code,
    error, outputs, stdout_tail, stderr_tail, dispatched_at, started_at, finished_at, lease_expires_at, late_state`
	outAttemptCols = `inserted.id, inserted.instance_id, inserted.run_id, inserted.task, inserted.item,
    inserted.attempt_no, inserted.run_restart, inserted.kind, inserted.agent, inserted.state, inserted.exit_code,
    inserted.error, inserted.outputs, inserted.stdout_tail, inserted.stderr_tail, inserted.dispatched_at,
    inserted.started_at, inserted.finished_at, inserted.lease_expires_at, inserted.late_state`
)

var (
	// qAttemptClaim claims one instance by id. The instance row is read
	// with UPDLOCK, ROWLOCK: a second claimer waits for the first to commit
	// and then finds the instance no longer in @from, so it inserts
	// nothing. Under READ_COMMITTED_SNAPSHOT the UPDLOCK also makes the read
	// a locking one, of the latest committed row.
	qAttemptClaim = register("attempt_claim", `
DECLARE @a TABLE (id BIGINT NOT NULL, instance_id BIGINT NOT NULL, attempt_no INT NOT NULL);
INSERT INTO {{schema}}.attempts (instance_id, run_id, task, item, attempt_no, run_restart, kind, agent, state,
    lease_expires_at, dispatched_at)
OUTPUT inserted.id, inserted.instance_id, inserted.attempt_no INTO @a
SELECT i.id, i.run_id, i.task, i.item, i.attempts + 1, @restart, @kind, @agent, N'dispatched',
       DATEADD(millisecond, @lease_ms, t.now), t.now
FROM {{schema}}.task_instances i WITH (UPDLOCK, ROWLOCK)
CROSS APPLY (SELECT CAST(SYSUTCDATETIME() AS DATETIME2(3)) AS now) t
WHERE i.id = @id AND CHARINDEX(N'|' + i.state + N'|', @from) > 0;
UPDATE i SET state = N'dispatched', attempts = a.attempt_no, attempt_id = a.id, error = N'', finished_at = NULL
FROM {{schema}}.task_instances i
JOIN @a a ON a.instance_id = i.id;
SELECT `+attemptCols+` FROM {{schema}}.attempts WHERE id IN (SELECT id FROM @a);`)

	qInstanceStateOnly = register("instance_state_only", `
SELECT state FROM {{schema}}.task_instances WHERE id = @id`)

	qAttemptOwner = register("attempt_owner", `
SELECT agent, state FROM {{schema}}.attempts WHERE id = @id`)

	qAttemptStarted = register("attempt_started", `
UPDATE {{schema}}.attempts
SET state = N'running', started_at = COALESCE(@started, started_at, CAST(SYSUTCDATETIME() AS DATETIME2(3))),
    lease_expires_at = DATEADD(millisecond, @lease_ms, SYSUTCDATETIME())
WHERE id = @id AND agent = @agent AND state IN (N'dispatched', N'running') AND lease_expires_at > SYSUTCDATETIME()`)

	// The ids travel as one JSON array, so one statement and one plan serve
	// any number of them.
	qAttemptHeartbeat = register("attempt_heartbeat", `
UPDATE {{schema}}.attempts
SET lease_expires_at = DATEADD(millisecond, @lease_ms, SYSUTCDATETIME())
OUTPUT inserted.id
WHERE id IN (SELECT CAST(value AS BIGINT) FROM OPENJSON(@ids))
  AND agent = @agent AND state IN (N'dispatched', N'running') AND lease_expires_at > SYSUTCDATETIME()`)

	qAttemptExtendLeases = register("attempt_extend_leases", `
UPDATE {{schema}}.attempts
SET lease_expires_at = DATEADD(millisecond, @lease_ms, SYSUTCDATETIME())
WHERE state IN (N'dispatched', N'running') AND lease_expires_at < DATEADD(millisecond, @lease_ms, SYSUTCDATETIME())`)

	qAttemptFinish = register("attempt_finish", `
UPDATE {{schema}}.attempts
SET state = @state, exit_code = @exit, error = @error, outputs = @outputs,
    stdout_tail = @stdout, stderr_tail = @stderr,
    started_at = COALESCE(@started, started_at),
    finished_at = COALESCE(@finished, CAST(SYSUTCDATETIME() AS DATETIME2(3)))
OUTPUT `+outAttemptCols+`
WHERE id = @id AND agent = @agent AND state IN (N'dispatched', N'running') AND lease_expires_at > SYSUTCDATETIME()`)

	// qAttemptRecordLate keeps an outcome that arrived after the attempt
	// was lost or its lease expired; only the first such outcome is kept.
	qAttemptRecordLate = register("attempt_record_late", `
UPDATE {{schema}}.attempts
SET late_state = @state, exit_code = @exit, error = @error, outputs = @outputs,
    stdout_tail = @stdout, stderr_tail = @stderr
WHERE id = @id AND agent = @agent AND late_state = N''
  AND (state = N'lost' OR (state IN (N'dispatched', N'running') AND lease_expires_at <= SYSUTCDATETIME()))`)

	qAttemptLose = register("attempt_lose", `
UPDATE {{schema}}.attempts
SET state = N'lost', error = @error, finished_at = SYSUTCDATETIME()
OUTPUT `+outAttemptCols+`
WHERE id = @id AND state IN (N'dispatched', N'running')`)

	qAttemptState = register("attempt_state", `
SELECT state FROM {{schema}}.attempts WHERE id = @id`)

	qAttemptGet = register("attempt_get", `
SELECT `+attemptCols+` FROM {{schema}}.attempts WHERE id = @id`)

	qAttemptListRun = register("attempt_list_run", `
SELECT `+attemptCols+` FROM {{schema}}.attempts WHERE run_id = @run ORDER BY id`)

	qAttemptListInstance = register("attempt_list_instance", `
SELECT `+attemptCols+` FROM {{schema}}.attempts
WHERE instance_id = @instance AND (@run = 0 OR run_id = @run)
ORDER BY id`)
)

func scanAttempt(sc interface{ Scan(...any) error }) (*store.Attempt, error) {
	var a store.Attempt
	if err := sc.Scan(&a.ID, &a.InstanceID, &a.RunID, &a.Task, &a.Item, &a.No, &a.Restart, &a.Kind,
		&a.Agent, &a.State,
		nullInt{&a.ExitCode}, &a.Error, jsonMap{&a.Outputs}, &a.StdoutTail, &a.StderrTail,
		utcTime{&a.DispatchedAt}, nullTime{&a.StartedAt}, nullTime{&a.FinishedAt}, utcTime{&a.LeaseExpiresAt},
		&a.LateState); err != nil {
		return nil, err
	}
	return &a, nil
}

// attempts runs q and collects the attempts it returns.
func (s *Store) attempts(ctx context.Context, q *stmt, args ...any) ([]*store.Attempt, error) {
	var out []*store.Attempt
	err := s.each(ctx, q, args, func(r *sql.Rows) error {
		a, err := scanAttempt(r)
		if err == nil {
			out = append(out, a)
		}
		return err
	})
	return out, err
}

// attempt runs q and returns the one attempt it returns, or sql.ErrNoRows.
func (s *Store) attempt(ctx context.Context, q *stmt, args ...any) (*store.Attempt, error) {
	out, err := s.attempts(ctx, q, args...)
	if err != nil {
		return nil, err
	}
	if len(out) == 0 {
		return nil, sql.ErrNoRows
	}
	return out[0], nil
}

func checkTTL(ttl time.Duration) error {
	if ttl <= 0 {
		return fmt.Errorf("lease ttl %s is not positive", ttl)
	}
	if ttl > maxTTL {
		return fmt.Errorf("lease ttl %s exceeds %s", ttl, maxTTL)
	}
	return nil
}

// maxTTL is the longest lease DATEADD(millisecond, ...) can express.
const maxTTL = (1<<31 - 1) * time.Millisecond

var readyOnly = stateSet([]store.InstanceState{store.InstanceReady})

// AttemptClaim moves an instance to dispatched and records a new attempt
// for it; see [store.Store.AttemptClaim]. It returns [store.ErrNotFound]
// for an unknown instance.
func (s *Store) AttemptClaim(ctx context.Context, p *store.AttemptClaimParams) (*store.Attempt, error) {
	from := readyOnly
	if len(p.From) > 0 {
		if err := store.CheckStates("from", p.From); err != nil {
			return nil, fmt.Errorf("attempt claim of instance %d: %w", p.InstanceID, err)
		}
		from = stateSet(p.From)
	}
	if err := checkClaim(p); err != nil {
		return nil, fmt.Errorf("attempt claim of instance %d: %w", p.InstanceID, err)
	}
	var a *store.Attempt
	err := s.write(ctx, func(tx *Store) error {
		var err error
		a, err = tx.attempt(ctx, qAttemptClaim, sql.Named("id", p.InstanceID), sql.Named("from", from),
			sql.Named("kind", string(p.Kind)), sql.Named("agent", p.Agent), sql.Named("restart", int32(p.Restart)),
			sql.Named("lease_ms", ms(p.LeaseTTL)))
		if !errors.Is(err, sql.ErrNoRows) {
			return interpretError(err, store.ErrConflict)
		}
		var state store.InstanceState
		err = tx.one(ctx, qInstanceStateOnly, []any{sql.Named("id", p.InstanceID)}, &state)
		if errors.Is(err, sql.ErrNoRows) {
			return store.ErrNotFound
		}
		if err != nil {
			return err
		}
		return fmt.Errorf("instance is %s: %w", state, store.ErrConflict)
	})
	if err != nil {
		return nil, fmt.Errorf("attempt claim of instance %d: %w", p.InstanceID, err)
	}
	return a, nil
}

func checkClaim(p *store.AttemptClaimParams) error {
	if err := checkKey("agent", p.Agent, false); err != nil {
		return err
	}
	if !p.Kind.Valid() {
		return fmt.Errorf("kind %q: want first, retry, restart or replacement", p.Kind)
	}
	if p.Restart < 0 || p.Restart > store.MaxRestart {
		return fmt.Errorf("restart %d: want 0 to %d", p.Restart, store.MaxRestart)
	}
	return checkTTL(p.LeaseTTL)
}

// staleReason explains why a statement guarded on a live, unexpired
// attempt of agent changed nothing: store.ErrNotFound or
// store.ErrStaleAttempt.
func (s *Store) staleReason(ctx context.Context, id int64, agent string) error {
	var (
		owner string
		state store.AttemptState
	)
	err := s.one(ctx, qAttemptOwner, []any{sql.Named("id", id)}, &owner, &state)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return store.ErrNotFound
	case err != nil:
		return err
	case owner != agent:
		return fmt.Errorf("attempt belongs to agent %s: %w", owner, store.ErrStaleAttempt)
	case !state.Live():
		return fmt.Errorf("attempt is %s: %w", state, store.ErrStaleAttempt)
	}
	return fmt.Errorf("lease expired: %w", store.ErrStaleAttempt)
}

// AttemptStarted marks a live attempt running and renews its lease; see
// [store.Store.AttemptStarted]. Called again for a running attempt (a
// re-sent report) it renews the lease and keeps the recorded start time
// unless StartedAt is given.
func (s *Store) AttemptStarted(ctx context.Context, p *store.AttemptStartedParams) error {
	if p.Agent == "" {
		return fmt.Errorf("attempt started %d: agent is empty", p.ID)
	}
	if err := checkTTL(p.LeaseTTL); err != nil {
		return fmt.Errorf("attempt started %d: %w", p.ID, err)
	}
	err := s.write(ctx, func(tx *Store) error {
		n, err := tx.exec(ctx, qAttemptStarted, sql.Named("id", p.ID), sql.Named("agent", p.Agent),
			sql.Named("started", timeOrNil(p.StartedAt)), sql.Named("lease_ms", ms(p.LeaseTTL)))
		if err != nil || n == 1 {
			return err
		}
		return tx.staleReason(ctx, p.ID, p.Agent)
	})
	if err != nil {
		return fmt.Errorf("attempt started %d: %w", p.ID, err)
	}
	return nil
}

// AttemptHeartbeat renews the unexpired leases of the listed live attempts
// of Agent and returns the ids it renewed, in ascending order.
func (s *Store) AttemptHeartbeat(ctx context.Context, p *store.AttemptHeartbeatParams) ([]int64, error) {
	if p.Agent == "" {
		return nil, errors.New("attempt heartbeat: agent is empty")
	}
	if err := checkTTL(p.LeaseTTL); err != nil {
		return nil, fmt.Errorf("attempt heartbeat of %s: %w", p.Agent, err)
	}
	if len(p.AttemptIDs) == 0 {
		return nil, nil
	}
	ids := make([]byte, 0, 2+len(p.AttemptIDs)*8)
	ids = append(ids, '[')
	for i, id := range p.AttemptIDs {
		if i > 0 {
			ids = append(ids, ',')
		}
		ids = strconv.AppendInt(ids, id, 10)
	}
	ids = append(ids, ']')
	var renewed []int64
	err := s.write(ctx, func(tx *Store) error {
		renewed = renewed[:0]
		return tx.each(ctx, qAttemptHeartbeat, []any{
			sql.Named("ids", nvarcharMax(string(ids))), sql.Named("agent", p.Agent), sql.Named("lease_ms", ms(p.LeaseTTL)),
		}, func(r *sql.Rows) error {
			var id int64
			if err := r.Scan(&id); err != nil {
				return err
			}
			renewed = append(renewed, id)
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("attempt heartbeat of %s: %w", p.Agent, err)
	}
	slices.Sort(renewed)
	return renewed, nil
}

// AttemptExtendLeases gives every live attempt a lease of at least
// LeaseTTL from now and returns how many it extended.
func (s *Store) AttemptExtendLeases(ctx context.Context, p *store.AttemptExtendLeasesParams) (int, error) {
	if err := checkTTL(p.LeaseTTL); err != nil {
		return 0, fmt.Errorf("attempt extend leases: %w", err)
	}
	var n int64
	err := s.write(ctx, func(tx *Store) (err error) {
		n, err = tx.exec(ctx, qAttemptExtendLeases, sql.Named("lease_ms", ms(p.LeaseTTL)))
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("attempt extend leases: %w", err)
	}
	return int(n), nil
}

// AttemptFinish records an attempt's outcome; see
// [store.Store.AttemptFinish]. An outcome for an attempt that is lost or
// whose lease expired is kept as late (once) and [store.ErrStaleAttempt]
// returned; inside InTx it is kept only if the transaction commits. An
// outcome for an attempt that already has one (a re-delivery) or from
// another agent changes nothing and returns [store.ErrStaleAttempt].
func (s *Store) AttemptFinish(ctx context.Context, p *store.AttemptFinishParams) (*store.Attempt, error) {
	if p.Agent == "" {
		return nil, fmt.Errorf("attempt finish %d: agent is empty", p.ID)
	}
	if !p.State.Outcome() && p.State != store.AttemptLost {
		return nil, fmt.Errorf("attempt finish %d: state %q: want succeeded, failed, timed_out, cancelled, rejected or lost", p.ID, p.State)
	}
	outcome := []any{
		sql.Named("id", p.ID), sql.Named("agent", p.Agent), sql.Named("state", string(p.State)),
		sql.Named("exit", intOrNil(p.ExitCode)), sql.Named("error", nvarcharMax(p.Error)),
		sql.Named("outputs", encodeMap(p.Outputs)),
		sql.Named("stdout", nvarcharMax(p.StdoutTail)), sql.Named("stderr", nvarcharMax(p.StderrTail)),
	}
	finish := append(slices.Clip(outcome),
		sql.Named("started", timeOrNil(p.StartedAt)), sql.Named("finished", timeOrNil(p.FinishedAt)))
	var (
		a     *store.Attempt
		stale error
	)
	err := s.write(ctx, func(tx *Store) error {
		a, stale = nil, nil
		var err error
		a, err = tx.attempt(ctx, qAttemptFinish, finish...)
		if !errors.Is(err, sql.ErrNoRows) {
			return err
		}
		if _, err := tx.exec(ctx, qAttemptRecordLate, outcome...); err != nil {
			return err
		}
		// The stale outcome is not a failure of this transaction: the late
		// record must commit.
		stale = tx.staleReason(ctx, p.ID, p.Agent)
		if !errors.Is(stale, store.ErrStaleAttempt) {
			return stale
		}
		return nil
	})
	if err == nil {
		err = stale
	}
	if err != nil {
		return nil, fmt.Errorf("attempt finish %d: %w", p.ID, err)
	}
	return a, nil
}

// AttemptLose marks a live attempt lost; see [store.Store.AttemptLose].
func (s *Store) AttemptLose(ctx context.Context, p *store.AttemptLoseParams) (*store.Attempt, error) {
	var a *store.Attempt
	err := s.write(ctx, func(tx *Store) error {
		var err error
		a, err = tx.attempt(ctx, qAttemptLose, sql.Named("id", p.ID), sql.Named("error", nvarcharMax(p.Error)))
		if !errors.Is(err, sql.ErrNoRows) {
			return err
		}
		var state store.AttemptState
		err = tx.one(ctx, qAttemptState, []any{sql.Named("id", p.ID)}, &state)
		if errors.Is(err, sql.ErrNoRows) {
			return store.ErrNotFound
		}
		if err != nil {
			return err
		}
		return fmt.Errorf("attempt is %s: %w", state, store.ErrStaleAttempt)
	})
	if err != nil {
		return nil, fmt.Errorf("attempt lose %d: %w", p.ID, err)
	}
	return a, nil
}

// AttemptGet returns one attempt.
func (s *Store) AttemptGet(ctx context.Context, p *store.AttemptGetParams) (*store.Attempt, error) {
	var a *store.Attempt
	err := s.read(ctx, func(s *Store) (err error) {
		a, err = s.attempt(ctx, qAttemptGet, sql.Named("id", p.ID))
		return err
	})
	if errors.Is(err, sql.ErrNoRows) {
		err = store.ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("attempt get %d: %w", p.ID, err)
	}
	return a, nil
}

// AttemptList returns a run's attempts, or one instance's, ordered by id.
func (s *Store) AttemptList(ctx context.Context, p *store.AttemptListParams) ([]*store.Attempt, error) {
	var out []*store.Attempt
	err := s.read(ctx, func(s *Store) (err error) {
		if p.InstanceID != 0 {
			out, err = s.attempts(ctx, qAttemptListInstance, sql.Named("instance", p.InstanceID), sql.Named("run", p.RunID))
		} else {
			out, err = s.attempts(ctx, qAttemptListRun, sql.Named("run", p.RunID))
		}
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("attempt list of run %d: %w", p.RunID, err)
	}
	return out, nil
}
