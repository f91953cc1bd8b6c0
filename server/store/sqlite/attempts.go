package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"time"

	"github.com/batonhq/baton/server/store"
)

const attemptCols = `id, instance_id, run_id, task, item, no, run_restart, kind, agent, state, exit_code,
	error, outputs, stdout_tail, stderr_tail, dispatched_at, started_at, finished_at, lease_expires_at, late_state`

func scanAttempt(sc scanner) (*store.Attempt, error) {
	var a store.Attempt
	var dispatched, lease int64
	if err := sc.Scan(&a.ID, &a.InstanceID, &a.RunID, &a.Task, &a.Item, &a.No, &a.Restart, &a.Kind,
		&a.Agent, &a.State,
		nullInt{&a.ExitCode}, &a.Error, jsonMap{&a.Outputs}, &a.StdoutTail, &a.StderrTail,
		&dispatched, nullTime{&a.StartedAt}, nullTime{&a.FinishedAt}, &lease, &a.LateState); err != nil {
		return nil, err
	}
	a.DispatchedAt, a.LeaseExpiresAt = fromMS(dispatched), fromMS(lease)
	return &a, nil
}

func checkTTL(ttl time.Duration) error {
	if ttl <= 0 {
		return fmt.Errorf("lease ttl %s is not positive", ttl)
	}
	return nil
}

// claimAttempt records the attempt only while the instance is in one of
// @from (the claim's guard); claimInstance then moves the instance to
// dispatched and makes the attempt its fence. Both run in one IMMEDIATE
// transaction, and SQLite runs one writer at a time, so nothing can change
// the instance in between: of concurrent claims, the first inserts and
// every later one finds the instance dispatched.
const claimAttempt = `
	INSERT INTO attempts (instance_id, run_id, task, item, no, run_restart, kind, agent, state,
	                      lease_expires_at, dispatched_at)
	SELECT id, run_id, task, item, attempts + 1, @restart, @kind, @agent, 'dispatched', @lease, @at
	FROM task_instances WHERE id = @id AND instr(@from, '|' || state || '|') > 0
	RETURNING id, run_id, task, item, no`

const claimInstance = `
	UPDATE task_instances
	SET state = 'dispatched', attempts = @no, attempt_id = @attempt, error = '', finished_at = NULL
	WHERE id = @id`

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
		st, err := tx.stmt(ctx, claimAttempt)
		if err != nil {
			return err
		}
		at := s.now()
		lease := at + p.LeaseTTL.Milliseconds()
		// Only what the instance row supplies comes back; the rest of a
		// new attempt is the claim's own values and the columns' defaults.
		a = &store.Attempt{
			InstanceID: p.InstanceID, Restart: p.Restart, Kind: p.Kind, Agent: p.Agent,
			State: store.AttemptDispatched, DispatchedAt: fromMS(at), LeaseExpiresAt: fromMS(lease),
		}
		err = st.QueryRowContext(ctx, sql.Named("id", p.InstanceID), sql.Named("from", from),
			sql.Named("kind", string(p.Kind)), sql.Named("agent", p.Agent), sql.Named("restart", p.Restart),
			sql.Named("lease", lease), sql.Named("at", at)).Scan(&a.ID, &a.RunID, &a.Task, &a.Item, &a.No)
		if errors.Is(err, sql.ErrNoRows) {
			var state store.InstanceState
			err := tx.queryRow(ctx, `SELECT state FROM task_instances WHERE id = @id`,
				[]any{sql.Named("id", p.InstanceID)}, &state)
			if errors.Is(err, sql.ErrNoRows) {
				return store.ErrNotFound
			}
			if err != nil {
				return err
			}
			return fmt.Errorf("instance is %s: %w", state, store.ErrConflict)
		}
		if err != nil {
			return err
		}
		_, err = tx.exec(ctx, claimInstance,
			sql.Named("id", p.InstanceID), sql.Named("no", a.No), sql.Named("attempt", a.ID))
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("attempt claim of instance %d: %w", p.InstanceID, err)
	}
	return a, nil
}

func checkClaim(p *store.AttemptClaimParams) error {
	if p.Agent == "" {
		return errors.New("agent is empty")
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
	err := s.queryRow(ctx, `SELECT agent, state FROM attempts WHERE id = @id`, []any{sql.Named("id", id)}, &owner, &state)
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
		at := s.now()
		res, err := tx.exec(ctx, `
			UPDATE attempts SET state = 'running', started_at = coalesce(@started, started_at, @at),
			    lease_expires_at = @lease
			WHERE id = @id AND agent = @agent AND state IN ('dispatched', 'running') AND lease_expires_at > @at`,
			sql.Named("id", p.ID), sql.Named("agent", p.Agent), sql.Named("started", msOrNil(p.StartedAt)),
			sql.Named("lease", at+p.LeaseTTL.Milliseconds()), sql.Named("at", at))
		if err != nil {
			return err
		}
		if n, err := res.RowsAffected(); err != nil || n == 1 {
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
	// The ids travel as one JSON array, so one prepared statement serves
	// any number of them.
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
		at := s.now()
		rows, err := tx.query(ctx, `
			UPDATE attempts SET lease_expires_at = @lease
			WHERE id IN (SELECT value FROM json_each(@ids))
			  AND agent = @agent AND state IN ('dispatched', 'running') AND lease_expires_at > @at
			RETURNING id`,
			sql.Named("ids", string(ids)), sql.Named("agent", p.Agent),
			sql.Named("lease", at+p.LeaseTTL.Milliseconds()), sql.Named("at", at))
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var id int64
			if err := rows.Scan(&id); err != nil {
				return err
			}
			renewed = append(renewed, id)
		}
		return rows.Err()
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
	err := s.write(ctx, func(tx *Store) error {
		res, err := tx.exec(ctx, `
			UPDATE attempts SET lease_expires_at = @lease
			WHERE state IN ('dispatched', 'running') AND lease_expires_at < @lease`,
			sql.Named("lease", s.now()+p.LeaseTTL.Milliseconds()))
		if err != nil {
			return err
		}
		n, err = res.RowsAffected()
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("attempt extend leases: %w", err)
	}
	return int(n), nil
}

const finishAttempt = `
	UPDATE attempts SET state = @state, exit_code = @exit, error = @error, outputs = @outputs,
	    stdout_tail = @stdout, stderr_tail = @stderr,
	    started_at = coalesce(@started, started_at), finished_at = @finished
	WHERE id = @id AND agent = @agent AND state IN ('dispatched', 'running') AND lease_expires_at > @at
	RETURNING id, instance_id, run_id, task, item, no, run_restart, kind, dispatched_at, started_at,
	    lease_expires_at, late_state`

// recordLate keeps an outcome that arrived after the attempt was lost or
// its lease expired; only the first such outcome is kept.
const recordLate = `
	UPDATE attempts SET late_state = @state, exit_code = @exit, error = @error, outputs = @outputs,
	    stdout_tail = @stdout, stderr_tail = @stderr
	WHERE id = @id AND agent = @agent AND late_state = ''
	  AND (state = 'lost' OR (state IN ('dispatched', 'running') AND lease_expires_at <= @at))`

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
	outputs := encodeMap(p.Outputs)
	var (
		a     *store.Attempt
		stale error
	)
	err := s.write(ctx, func(tx *Store) error {
		a, stale = nil, nil
		st, err := tx.stmt(ctx, finishAttempt)
		if err != nil {
			return err
		}
		at := s.now()
		finished := msOr(p.FinishedAt, at)
		args := []any{
			sql.Named("id", p.ID), sql.Named("agent", p.Agent), sql.Named("state", string(p.State)),
			sql.Named("exit", intOrNil(p.ExitCode)), sql.Named("error", p.Error), sql.Named("outputs", outputs),
			sql.Named("stdout", p.StdoutTail), sql.Named("stderr", p.StderrTail), sql.Named("at", at),
			// finishAttempt only:
			sql.Named("started", msOrNil(p.StartedAt)), sql.Named("finished", finished),
		}
		a, err = finishedAttempt(st.QueryRowContext(ctx, args...), p, finished)
		if !errors.Is(err, sql.ErrNoRows) {
			return err
		}
		if _, err := tx.exec(ctx, recordLate, args[:len(args)-2]...); err != nil {
			return err
		}
		// The stale outcome is not a failure of this transaction: the late
		// record must commit.
		stale = tx.staleReason(ctx, p.ID, p.Agent)
		if !errors.Is(stale, store.ErrStaleAttempt) {
			return stale // not found, or a database error
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

// finishedAttempt scans what finishAttempt returns and fills in the rest
// from the outcome it wrote: the outcome's columns are not read back (the
// outputs would be decoded again and the tails copied).
func finishedAttempt(sc scanner, p *store.AttemptFinishParams, finished int64) (*store.Attempt, error) {
	a := &store.Attempt{
		Agent: p.Agent, State: p.State, Error: p.Error,
		StdoutTail: p.StdoutTail, StderrTail: p.StderrTail, FinishedAt: fromMS(finished),
	}
	if p.ExitCode != nil {
		code := *p.ExitCode
		a.ExitCode = &code
	}
	if len(p.Outputs) > 0 {
		a.Outputs = maps.Clone(p.Outputs)
	}
	var dispatched, lease int64
	if err := sc.Scan(&a.ID, &a.InstanceID, &a.RunID, &a.Task, &a.Item, &a.No, &a.Restart, &a.Kind,
		&dispatched, nullTime{&a.StartedAt}, &lease, &a.LateState); err != nil {
		return nil, err
	}
	a.DispatchedAt, a.LeaseExpiresAt = fromMS(dispatched), fromMS(lease)
	return a, nil
}

// AttemptLose marks a live attempt lost; see [store.Store.AttemptLose].
func (s *Store) AttemptLose(ctx context.Context, p *store.AttemptLoseParams) (*store.Attempt, error) {
	var a *store.Attempt
	err := s.write(ctx, func(tx *Store) error {
		st, err := tx.stmt(ctx, `
			UPDATE attempts SET state = 'lost', error = @error, finished_at = @at
			WHERE id = @id AND state IN ('dispatched', 'running')
			RETURNING `+attemptCols)
		if err != nil {
			return err
		}
		a, err = scanAttempt(st.QueryRowContext(ctx, sql.Named("id", p.ID), sql.Named("error", p.Error), sql.Named("at", s.now())))
		if !errors.Is(err, sql.ErrNoRows) {
			return err
		}
		var state store.AttemptState
		err = tx.queryRow(ctx, `SELECT state FROM attempts WHERE id = @id`, []any{sql.Named("id", p.ID)}, &state)
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
	st, err := s.stmt(ctx, `SELECT `+attemptCols+` FROM attempts WHERE id = @id`)
	if err != nil {
		return nil, fmt.Errorf("attempt get %d: %w", p.ID, err)
	}
	a, err := scanAttempt(st.QueryRowContext(ctx, sql.Named("id", p.ID)))
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
	var (
		out []*store.Attempt
		err error
	)
	if p.InstanceID != 0 {
		out, err = collect(scanAttempt)(s.query(ctx, `SELECT `+attemptCols+` FROM attempts
			WHERE instance_id = @instance AND (@run = 0 OR run_id = @run) ORDER BY id`,
			sql.Named("instance", p.InstanceID), sql.Named("run", p.RunID)))
	} else {
		out, err = collect(scanAttempt)(s.query(ctx,
			`SELECT `+attemptCols+` FROM attempts WHERE run_id = @run ORDER BY id`, sql.Named("run", p.RunID)))
	}
	if err != nil {
		return nil, fmt.Errorf("attempt list of run %d: %w", p.RunID, err)
	}
	return out, nil
}
