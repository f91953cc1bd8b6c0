package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"

	"github.com/batonhq/baton/server/store"
)

const runCols = `id, job_id, job_name, job_version, state, overlap, params, restart_count,
	request_id, error, created_at, started_at, finished_at, restarted_at`

func scanRun(sc scanner) (*store.Run, error) {
	var r store.Run
	var created int64
	if err := sc.Scan(&r.ID, &r.JobID, &r.JobName, &r.JobVersion, &r.State, &r.Overlap,
		jsonMap{&r.Params}, &r.RestartCount, &r.RequestID, &r.Error, &created,
		nullTime{&r.StartedAt}, nullTime{&r.FinishedAt}, nullTime{&r.RestartedAt}); err != nil {
		return nil, err
	}
	r.CreatedAt = fromMS(created)
	return &r, nil
}

// insertRun creates the run in the state its overlap policy allows. Its
// guard is the overlap rule itself, so a refused run is an insert of no
// rows rather than a unique violation: forbid yields no state while
// another run of the job is active; queue yields queued while another is
// active or queued; allow always yields running.
const insertRun = `
	INSERT INTO runs (job_id, job_name, job_version, state, overlap, params, request_id, created_at, started_at)
	SELECT j.id, j.name, @version, x.state, @overlap, @params, @request, @at,
	       CASE WHEN x.state = 'running' THEN @at END
	FROM jobs j, (SELECT CASE
	    WHEN @overlap = 'allow' THEN 'running'
	    WHEN EXISTS (SELECT 1 FROM runs WHERE job_id = @job AND state IN ('running', 'cancelling'))
	        THEN CASE WHEN @overlap = 'queue' THEN 'queued' END
	    WHEN @overlap = 'queue' AND EXISTS (SELECT 1 FROM runs WHERE job_id = @job AND state = 'queued')
	        THEN 'queued'
	    ELSE 'running' END AS state) x
	WHERE j.id = @job AND j.deleted_at IS NULL AND x.state IS NOT NULL
	RETURNING ` + runCols

// RunCreate creates a run and its initial task instances; see
// [store.Store.RunCreate]. It returns [store.ErrNotFound] when the job (or
// the version) does not exist or is deleted.
func (s *Store) RunCreate(ctx context.Context, p *store.RunCreateParams) (*store.RunCreateResult, error) {
	if err := checkRunCreate(p); err != nil {
		return nil, fmt.Errorf("run create: %w", err)
	}
	params := encodeMap(p.Params)
	var res *store.RunCreateResult
	err := s.write(ctx, func(tx *Store) error {
		res = nil
		if p.RequestID != "" {
			st, err := tx.stmt(ctx, `SELECT `+runCols+` FROM runs WHERE job_id = @job AND request_id = @request`)
			if err != nil {
				return err
			}
			r, err := scanRun(st.QueryRowContext(ctx, sql.Named("job", p.JobID), sql.Named("request", p.RequestID)))
			if err == nil {
				res = &store.RunCreateResult{Run: r}
				return nil
			}
			if !errors.Is(err, sql.ErrNoRows) {
				return err
			}
		}
		st, err := tx.stmt(ctx, insertRun)
		if err != nil {
			return err
		}
		r, err := scanRun(st.QueryRowContext(ctx,
			sql.Named("job", p.JobID), sql.Named("version", p.JobVersion), sql.Named("overlap", string(p.Overlap)),
			sql.Named("params", params), sql.Named("request", p.RequestID), sql.Named("at", s.now())))
		switch {
		case errors.Is(err, sql.ErrNoRows):
			var live bool
			if err := tx.queryRow(ctx, `SELECT EXISTS (SELECT 1 FROM jobs WHERE id = @job AND deleted_at IS NULL)`,
				[]any{sql.Named("job", p.JobID)}, &live); err != nil {
				return err
			}
			if !live {
				return fmt.Errorf("job %d: %w", p.JobID, store.ErrNotFound)
			}
			return store.ErrAlreadyActive
		case isUnique(err): // the guard above makes this unreachable; the index backs it
			return store.ErrAlreadyActive
		case isForeignKey(err):
			return fmt.Errorf("job %d version %d: %w", p.JobID, p.JobVersion, store.ErrNotFound)
		case err != nil:
			return err
		}
		if p.JobName != "" && p.JobName != r.JobName {
			return fmt.Errorf("job name %q does not match job %d (%s)", p.JobName, p.JobID, r.JobName)
		}
		if _, err := tx.insertInstances(ctx, r.ID, p.Instances); err != nil {
			return err
		}
		res = &store.RunCreateResult{Run: r, Created: true}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("run create for job %d: %w", p.JobID, err)
	}
	return res, nil
}

func checkRunCreate(p *store.RunCreateParams) error {
	if p.JobID <= 0 {
		return fmt.Errorf("job id %d is not positive", p.JobID)
	}
	if p.JobVersion <= 0 {
		return fmt.Errorf("job version %d is not positive", p.JobVersion)
	}
	switch p.Overlap {
	case store.OverlapForbid, store.OverlapQueue, store.OverlapAllow:
	default:
		return fmt.Errorf("overlap %q: want forbid, queue or allow", p.Overlap)
	}
	return checkInstances(p.Instances)
}

// RunGet returns one run.
func (s *Store) RunGet(ctx context.Context, p *store.RunGetParams) (*store.Run, error) {
	st, err := s.stmt(ctx, `SELECT `+runCols+` FROM runs WHERE id = @id`)
	if err != nil {
		return nil, fmt.Errorf("run get %d: %w", p.ID, err)
	}
	r, err := scanRun(st.QueryRowContext(ctx, sql.Named("id", p.ID)))
	if errors.Is(err, sql.ErrNoRows) {
		err = store.ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("run get %d: %w", p.ID, err)
	}
	return r, nil
}

// RunList returns runs newest first; see [store.RunListParams].
func (s *Store) RunList(ctx context.Context, p *store.RunListParams) ([]*store.Run, error) {
	if p.Limit < 0 {
		return nil, fmt.Errorf("run list: limit %d is negative", p.Limit)
	}
	// The query text varies only with which filters are set, so the
	// statement cache holds a handful of variants, each able to use its index.
	var (
		q    strings.Builder
		args []any
	)
	q.WriteString(`SELECT ` + runCols + ` FROM runs WHERE 1`)
	if p.JobName != "" {
		q.WriteString(` AND job_name = @job`)
		args = append(args, sql.Named("job", p.JobName))
	}
	if len(p.States) > 0 {
		if err := store.CheckStates("states", p.States); err != nil {
			return nil, fmt.Errorf("run list: %w", err)
		}
		q.WriteString(` AND state IN (`)
		for i, st := range p.States {
			if i > 0 {
				q.WriteString(", ")
			}
			name := fmt.Sprintf("s%d", i)
			q.WriteString("@" + name)
			args = append(args, sql.Named(name, string(st)))
		}
		q.WriteString(`)`)
	}
	if p.BeforeID != 0 {
		q.WriteString(` AND id < @before`)
		args = append(args, sql.Named("before", p.BeforeID))
	}
	q.WriteString(` ORDER BY id DESC`)
	if p.Limit > 0 {
		q.WriteString(` LIMIT @limit`)
		args = append(args, sql.Named("limit", p.Limit))
	}
	runs, err := collect(scanRun)(s.query(ctx, q.String(), args...))
	if err != nil {
		return nil, fmt.Errorf("run list: %w", err)
	}
	return runs, nil
}

// transitionRun is the guarded run transition. A transition from a
// terminal state to a non-terminal one is a restart: it increments
// restart_count and clears finished_at and (unless a new one is given) the
// error. The NOT EXISTS term refuses to make an exclusive run active while
// another run of its job is active.
const transitionRun = `
	UPDATE runs SET
	    state = @to,
	    restart_count = restart_count + (state IN ('succeeded', 'failed', 'cancelled') AND NOT @terminal),
	    error = CASE WHEN @error <> '' THEN @error
	                 WHEN state IN ('succeeded', 'failed', 'cancelled') AND NOT @terminal THEN ''
	                 ELSE error END,
	    started_at = CASE WHEN @to = 'running' THEN coalesce(started_at, @at) ELSE started_at END,
	    restarted_at = CASE WHEN state IN ('succeeded', 'failed', 'cancelled') AND NOT @terminal THEN @at
	                        ELSE restarted_at END,
	    finished_at = CASE WHEN @terminal THEN @at END
	WHERE id = @id AND instr(@from, '|' || state || '|') > 0
	  AND NOT (@active AND overlap IN ('forbid', 'queue') AND EXISTS (
	      SELECT 1 FROM runs o WHERE o.job_id = runs.job_id AND o.id <> runs.id
	                             AND o.state IN ('running', 'cancelling')))
	RETURNING ` + runCols

// RunTransition moves a run between states; see [store.Store.RunTransition].
func (s *Store) RunTransition(ctx context.Context, p *store.RunTransitionParams) (*store.Run, error) {
	if err := store.CheckStates("from", p.From); err != nil {
		return nil, fmt.Errorf("run transition %d: %w", p.ID, err)
	}
	if !p.To.Valid() {
		return nil, fmt.Errorf("run transition %d: to: unknown state %q", p.ID, p.To)
	}
	var r *store.Run
	err := s.write(ctx, func(tx *Store) error {
		st, err := tx.stmt(ctx, transitionRun)
		if err != nil {
			return err
		}
		r, err = scanRun(st.QueryRowContext(ctx,
			sql.Named("id", p.ID), sql.Named("from", stateSet(p.From)), sql.Named("to", string(p.To)),
			sql.Named("terminal", p.To.Terminal()), sql.Named("active", p.To.Active()),
			sql.Named("error", p.Error), sql.Named("at", s.now())))
		switch {
		case errors.Is(err, sql.ErrNoRows):
			var state store.RunState
			err := tx.queryRow(ctx, `SELECT state FROM runs WHERE id = @id`, []any{sql.Named("id", p.ID)}, &state)
			if errors.Is(err, sql.ErrNoRows) {
				return store.ErrNotFound
			}
			if err != nil {
				return err
			}
			for _, f := range p.From {
				if f == state {
					return store.ErrAlreadyActive
				}
			}
			return fmt.Errorf("run is %s: %w", state, store.ErrConflict)
		case isUnique(err):
			return store.ErrAlreadyActive
		}
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("run transition %d to %s: %w", p.ID, p.To, err)
	}
	return r, nil
}
