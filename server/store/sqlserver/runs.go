package sqlserver

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math"

	"github.com/batonhq/baton/server/store"
)

// runCols are the columns scanRun reads; outRunCols the same from OUTPUT.
const (
	runCols = `id, job_id, job_name, job_version, state, overlap, params, restart_count,
    request_id, error, created_at, started_at, finished_at, restarted_at`
	outRunCols = `inserted.id, inserted.job_id, inserted.job_name, inserted.job_version, inserted.state,
    inserted.overlap, inserted.params, inserted.restart_count, inserted.request_id, inserted.error,
    inserted.created_at, inserted.started_at, inserted.finished_at, inserted.restarted_at`
)

var (
	// The range lock on (job_id, request_id) keeps a concurrent create with
	// the same request id out until this transaction ends. The literal
	// request_id <> N'' lets the filtered index UX_runs_request serve it.
	qRunByRequest = register("run_by_request", `
SELECT `+runCols+`
FROM {{schema}}.runs WITH (UPDLOCK, HOLDLOCK)
WHERE job_id = @job AND request_id = @request AND request_id <> N''`)

	// qRunInsert creates the run in the state its overlap policy allows.
	// Its guard is the overlap rule itself, so a refused run is an insert
	// of no rows, not a unique violation (which would abort the whole
	// transaction): forbid yields no state while another run of the job is
	// active; queue yields queued while another is active or queued; allow
	// always yields running. The job row is read with UPDLOCK, so creates
	// of one job, and JobDelete, run one after the other; the run checks
	// take range locks, so a concurrent transition cannot slip in between.
	qRunInsert = register("run_insert", `
INSERT INTO {{schema}}.runs (job_id, job_name, job_version, state, overlap, params, request_id, created_at, started_at)
OUTPUT `+outRunCols+`
SELECT j.id, j.name, v.version, x.state, @overlap, @params, @request, t.now,
       CASE WHEN x.state = N'running' THEN t.now END
FROM {{schema}}.jobs j WITH (UPDLOCK)
JOIN {{schema}}.job_versions v ON v.job_id = j.id AND v.version = @version
CROSS APPLY (SELECT CAST(SYSUTCDATETIME() AS DATETIME2(3)) AS now) t
CROSS APPLY (SELECT CASE
    WHEN @overlap = N'allow' THEN N'running'
    WHEN EXISTS (SELECT 1 FROM {{schema}}.runs r WITH (UPDLOCK, HOLDLOCK)
                 WHERE r.job_id = j.id AND r.state IN (N'running', N'cancelling'))
        THEN CASE WHEN @overlap = N'queue' THEN N'queued' END
    WHEN @overlap = N'queue' AND EXISTS (SELECT 1 FROM {{schema}}.runs r WITH (UPDLOCK, HOLDLOCK)
                                         WHERE r.job_id = j.id AND r.state = N'queued')
        THEN N'queued'
    ELSE N'running' END AS state) x
WHERE j.id = @job AND j.deleted_at IS NULL AND x.state IS NOT NULL`)

	// qRunCreateRefused says why qRunInsert inserted nothing: the job is
	// missing or deleted, the version is missing, or the overlap rule.
	qRunCreateRefused = register("run_create_refused", `
SELECT CAST(CASE WHEN EXISTS (SELECT 1 FROM {{schema}}.jobs WHERE id = @job AND deleted_at IS NULL) THEN 1 ELSE 0 END AS BIT),
       CAST(CASE WHEN EXISTS (SELECT 1 FROM {{schema}}.job_versions WHERE job_id = @job AND version = @version) THEN 1 ELSE 0 END AS BIT)`)

	qRunGet = register("run_get", `
SELECT `+runCols+` FROM {{schema}}.runs WHERE id = @id`)

	// One statement serves every filter combination; OPTION (RECOMPILE)
	// plans each call for the filters actually set, so each can seek its
	// index. RunList is an operator query, not a hot path.
	qRunList = register("run_list", `
SELECT TOP (@limit) `+runCols+`
FROM {{schema}}.runs
WHERE (@job = N'' OR job_name = @job)
  AND (@states = N'' OR CHARINDEX(N'|' + state + N'|', @states) > 0)
  AND (@before = 0 OR id < @before)
ORDER BY id DESC
OPTION (RECOMPILE)`)

	// qRunTransition is the guarded run transition. A transition from a
	// terminal state to a non-terminal one is a restart: it increments
	// restart_count and clears finished_at and (unless a new one is given)
	// the error. The NOT EXISTS term, with range locks, refuses to make an
	// exclusive run active while another run of its job is active.
	qRunTransition = register("run_transition", `
UPDATE r SET
    state = @to,
    restart_count = r.restart_count
        + CASE WHEN r.state IN (N'succeeded', N'failed', N'cancelled') AND @terminal = 0 THEN 1 ELSE 0 END,
    error = CASE WHEN @error <> N'' THEN @error
                 WHEN r.state IN (N'succeeded', N'failed', N'cancelled') AND @terminal = 0 THEN N''
                 ELSE r.error END,
    started_at = CASE WHEN @to = N'running' THEN COALESCE(r.started_at, t.now) ELSE r.started_at END,
    restarted_at = CASE WHEN r.state IN (N'succeeded', N'failed', N'cancelled') AND @terminal = 0 THEN t.now
                        ELSE r.restarted_at END,
    finished_at = CASE WHEN @terminal = 1 THEN t.now END
OUTPUT `+outRunCols+`
FROM {{schema}}.runs r
CROSS APPLY (SELECT CAST(SYSUTCDATETIME() AS DATETIME2(3)) AS now) t
WHERE r.id = @id AND CHARINDEX(N'|' + r.state + N'|', @from) > 0
  AND NOT (@active = 1 AND r.overlap IN (N'forbid', N'queue') AND EXISTS (
      SELECT 1 FROM {{schema}}.runs o WITH (UPDLOCK, HOLDLOCK)
      WHERE o.job_id = r.job_id AND o.id <> r.id AND o.state IN (N'running', N'cancelling')))`)

	qRunState = register("run_state", `
SELECT state FROM {{schema}}.runs WHERE id = @id`)
)

func scanRun(sc interface{ Scan(...any) error }) (*store.Run, error) {
	var r store.Run
	if err := sc.Scan(&r.ID, &r.JobID, &r.JobName, &r.JobVersion, &r.State, &r.Overlap,
		jsonMap{&r.Params}, &r.RestartCount, &r.RequestID, &r.Error, utcTime{&r.CreatedAt},
		nullTime{&r.StartedAt}, nullTime{&r.FinishedAt}, nullTime{&r.RestartedAt}); err != nil {
		return nil, err
	}
	return &r, nil
}

// runOne runs a statement that returns at most one run.
func (s *Store) runOne(ctx context.Context, q *stmt, args ...any) (*store.Run, error) {
	var r *store.Run
	err := s.each(ctx, q, args, func(rows *sql.Rows) error {
		var err error
		r, err = scanRun(rows)
		return err
	})
	if err != nil {
		return nil, err
	}
	if r == nil {
		return nil, sql.ErrNoRows
	}
	return r, nil
}

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
			r, err := tx.runOne(ctx, qRunByRequest, sql.Named("job", p.JobID), sql.Named("request", p.RequestID))
			if err == nil {
				res = &store.RunCreateResult{Run: r}
				return nil
			}
			if !errors.Is(err, sql.ErrNoRows) {
				return err
			}
		}
		r, err := tx.runOne(ctx, qRunInsert,
			sql.Named("job", p.JobID), sql.Named("version", int32(p.JobVersion)),
			sql.Named("overlap", string(p.Overlap)), sql.Named("params", params),
			sql.Named("request", p.RequestID))
		switch {
		case errors.Is(err, sql.ErrNoRows):
			var live, version bool
			if err := tx.one(ctx, qRunCreateRefused, []any{sql.Named("job", p.JobID), sql.Named("version", int32(p.JobVersion))},
				&live, &version); err != nil {
				return err
			}
			if !live {
				return fmt.Errorf("job %d: %w", p.JobID, store.ErrNotFound)
			}
			if !version {
				return fmt.Errorf("job %d version %d: %w", p.JobID, p.JobVersion, store.ErrNotFound)
			}
			return store.ErrAlreadyActive
		case err != nil:
			// The guard makes a unique violation unreachable; the index
			// backs it.
			return interpretError(err, store.ErrAlreadyActive)
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
	if p.JobVersion <= 0 || p.JobVersion > math.MaxInt32 {
		return fmt.Errorf("job version %d is out of range", p.JobVersion)
	}
	switch p.Overlap {
	case store.OverlapForbid, store.OverlapQueue, store.OverlapAllow:
	default:
		return fmt.Errorf("overlap %q: want forbid, queue or allow", p.Overlap)
	}
	if err := checkKey("request id", p.RequestID, true); err != nil {
		return err
	}
	return checkInstances(p.Instances)
}

// RunGet returns one run.
func (s *Store) RunGet(ctx context.Context, p *store.RunGetParams) (*store.Run, error) {
	var r *store.Run
	err := s.read(ctx, func(s *Store) (err error) {
		r, err = s.runOne(ctx, qRunGet, sql.Named("id", p.ID))
		return err
	})
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
	states := ""
	if len(p.States) > 0 {
		if err := store.CheckStates("states", p.States); err != nil {
			return nil, fmt.Errorf("run list: %w", err)
		}
		states = stateSet(p.States)
	}
	limit := int64(p.Limit)
	if limit == 0 {
		limit = math.MaxInt64
	}
	var runs []*store.Run
	err := s.read(ctx, func(s *Store) error {
		runs = nil
		return s.each(ctx, qRunList, []any{
			sql.Named("limit", limit), sql.Named("job", p.JobName),
			sql.Named("states", states), sql.Named("before", p.BeforeID),
		}, func(rows *sql.Rows) error {
			r, err := scanRun(rows)
			if err == nil {
				runs = append(runs, r)
			}
			return err
		})
	})
	if err != nil {
		return nil, fmt.Errorf("run list: %w", err)
	}
	return runs, nil
}

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
		var err error
		r, err = tx.runOne(ctx, qRunTransition,
			sql.Named("id", p.ID), sql.Named("from", stateSet(p.From)), sql.Named("to", string(p.To)),
			sql.Named("terminal", p.To.Terminal()), sql.Named("active", p.To.Active()),
			sql.Named("error", nvarcharMax(p.Error)))
		switch {
		case errors.Is(err, sql.ErrNoRows):
			var state store.RunState
			err := tx.one(ctx, qRunState, []any{sql.Named("id", p.ID)}, &state)
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
		case err != nil:
			return interpretError(err, store.ErrAlreadyActive)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("run transition %d to %s: %w", p.ID, p.To, err)
	}
	return r, nil
}
