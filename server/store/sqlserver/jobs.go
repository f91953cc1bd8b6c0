package sqlserver

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	mssql "github.com/microsoft/go-mssqldb"

	"github.com/batonhq/baton/server/store"
)

// jobCols are the columns scanJob reads, from jobs j joined to
// job_versions v.
const jobCols = `j.id, j.name, v.version, v.description, v.spec, v.source, j.created_at, v.created_at`

var (
	// The name is read with UPDLOCK, HOLDLOCK: an absent name is
	// range-locked, so concurrent applies of one name run one after the
	// other and the guarded insert below never hits the unique key.
	qJobApplyLookup = register("job_apply_lookup", `
SELECT j.id, j.current_version, CAST(CASE WHEN j.deleted_at IS NULL THEN 0 ELSE 1 END AS BIT), v.spec, j.created_at
FROM {{schema}}.jobs j WITH (UPDLOCK, HOLDLOCK)
JOIN {{schema}}.job_versions v ON v.job_id = j.id AND v.version = j.current_version
WHERE j.name = @name`)

	qJobInsert = register("job_insert", `
INSERT INTO {{schema}}.jobs (name, current_version)
OUTPUT inserted.id, inserted.created_at
SELECT @name, 1
WHERE NOT EXISTS (SELECT 1 FROM {{schema}}.jobs WITH (UPDLOCK, HOLDLOCK) WHERE name = @name)`)

	qJobBump = register("job_bump", `
UPDATE {{schema}}.jobs SET current_version = @version, deleted_at = NULL
WHERE id = @id AND current_version = @version - 1`)

	qJobVersionInsert = register("job_version_insert", `
INSERT INTO {{schema}}.job_versions (job_id, version, description, spec, source, created_at)
OUTPUT inserted.created_at
VALUES (@id, @version, @description, @spec, @source, COALESCE(@at, CAST(SYSUTCDATETIME() AS DATETIME2(3))))`)

	qJobGetByID = register("job_get_by_id", `
SELECT `+jobCols+`
FROM {{schema}}.jobs j
JOIN {{schema}}.job_versions v ON v.job_id = j.id
WHERE j.id = @id AND v.version = CASE WHEN @version = 0 THEN j.current_version ELSE @version END`)

	qJobGetByName = register("job_get_by_name", `
SELECT `+jobCols+`
FROM {{schema}}.jobs j
JOIN {{schema}}.job_versions v ON v.job_id = j.id
WHERE j.name = @name AND j.deleted_at IS NULL
  AND v.version = CASE WHEN @version = 0 THEN j.current_version ELSE @version END`)

	qJobList = register("job_list", `
SELECT `+jobCols+`
FROM {{schema}}.jobs j
JOIN {{schema}}.job_versions v ON v.job_id = j.id AND v.version = j.current_version
WHERE j.deleted_at IS NULL
ORDER BY j.name`)

	// The runs check takes range locks, so a run cannot be created between
	// the check and the commit; RunCreate reads the job row with UPDLOCK,
	// so it waits for this update and then sees the job deleted.
	qJobDelete = register("job_delete", `
UPDATE j SET deleted_at = SYSUTCDATETIME()
FROM {{schema}}.jobs j
WHERE j.name = @name AND j.deleted_at IS NULL
  AND NOT EXISTS (SELECT 1 FROM {{schema}}.runs r WITH (UPDLOCK, HOLDLOCK)
                  WHERE r.job_id = j.id AND r.state IN (N'queued', N'running', N'cancelling'))`)

	qJobLive = register("job_live", `
SELECT COUNT(*) FROM {{schema}}.jobs WHERE name = @name AND deleted_at IS NULL`)
)

func scanJob(sc interface{ Scan(...any) error }) (*store.Job, error) {
	var j store.Job
	var spec string
	if err := sc.Scan(&j.ID, &j.Name, &j.Version, &j.Description, &spec, &j.Source,
		utcTime{&j.CreatedAt}, utcTime{&j.UpdatedAt}); err != nil {
		return nil, err
	}
	j.Spec = []byte(spec)
	return &j, nil
}

// JobApply stores a job definition; see [store.Store.JobApply]. Spec must
// be valid JSON.
func (s *Store) JobApply(ctx context.Context, p *store.JobApplyParams) (*store.JobApplyResult, error) {
	if err := checkKey("job apply: name", p.Name, false); err != nil {
		return nil, err
	}
	if !json.Valid(p.Spec) {
		return nil, fmt.Errorf("job apply %s: spec is not valid JSON", p.Name)
	}
	var res *store.JobApplyResult
	err := s.write(ctx, func(tx *Store) error {
		res = nil
		var (
			id        int64
			version   int
			deleted   bool
			spec      string
			createdAt time.Time
			at        any // the new version's time: the job's on creation
		)
		err := tx.one(ctx, qJobApplyLookup, []any{sql.Named("name", p.Name)}, &id, &version, &deleted, &spec, utcTime{&createdAt})
		switch {
		case errors.Is(err, sql.ErrNoRows):
			err := tx.one(ctx, qJobInsert, []any{sql.Named("name", p.Name)}, &id, utcTime{&createdAt})
			if errors.Is(err, sql.ErrNoRows) {
				return fmt.Errorf("job was created concurrently: %w", store.ErrConflict)
			}
			if err != nil {
				return err
			}
			version, at = 1, createdAt
		case err != nil:
			return err
		case !deleted && spec == string(p.Spec):
			j, err := tx.jobGet(ctx, qJobGetByID, sql.Named("id", id), 0)
			if err != nil {
				return err
			}
			res = &store.JobApplyResult{Job: j}
			return nil
		default: // a changed spec, or the revival of a deleted job
			version++
			n, err := tx.exec(ctx, qJobBump, sql.Named("id", id), sql.Named("version", int32(version)))
			if err != nil {
				return err
			}
			if n != 1 {
				return fmt.Errorf("job version moved concurrently: %w", store.ErrConflict)
			}
		}
		var updated time.Time
		if err := tx.one(ctx, qJobVersionInsert, []any{
			sql.Named("id", id), sql.Named("version", int32(version)),
			sql.Named("description", mssql.NVarCharMax(p.Description)),
			sql.Named("spec", mssql.NVarCharMax(p.Spec)), sql.Named("source", mssql.NVarCharMax(p.Source)),
			sql.Named("at", at),
		}, utcTime{&updated}); err != nil {
			return err
		}
		res = &store.JobApplyResult{Created: true, Job: &store.Job{
			ID: id, Name: p.Name, Version: version, Description: p.Description,
			Spec: bytes.Clone(p.Spec), Source: p.Source,
			CreatedAt: createdAt, UpdatedAt: updated,
		}}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("job apply %s: %w", p.Name, err)
	}
	return res, nil
}

// jobGet runs a job lookup; sql.ErrNoRows becomes store.ErrNotFound.
func (s *Store) jobGet(ctx context.Context, q *stmt, key sql.NamedArg, version int) (*store.Job, error) {
	var j *store.Job
	found := false
	err := s.each(ctx, q, []any{key, sql.Named("version", int32(version))}, func(r *sql.Rows) error {
		var err error
		j, err = scanJob(r)
		found = true
		return err
	})
	if err != nil {
		return nil, err
	}
	if !found {
		return nil, store.ErrNotFound
	}
	return j, nil
}

// JobGet returns one version of a job; see [store.Store.JobGet]. With both
// ID and Name set, both must match.
func (s *Store) JobGet(ctx context.Context, p *store.JobGetParams) (*store.Job, error) {
	if p.Version < 0 {
		return nil, fmt.Errorf("job get: version %d is negative", p.Version)
	}
	if p.ID == 0 && p.Name == "" {
		return nil, errors.New("job get: set id or name")
	}
	var j *store.Job
	err := s.read(ctx, func(s *Store) (err error) {
		if p.ID != 0 {
			j, err = s.jobGet(ctx, qJobGetByID, sql.Named("id", p.ID), p.Version)
		} else {
			j, err = s.jobGet(ctx, qJobGetByName, sql.Named("name", p.Name), p.Version)
		}
		return err
	})
	if err == nil && p.Name != "" && j.Name != p.Name {
		err = store.ErrNotFound
	}
	if err != nil {
		if p.ID != 0 {
			return nil, fmt.Errorf("job get %d: %w", p.ID, err)
		}
		return nil, fmt.Errorf("job get %s: %w", p.Name, err)
	}
	return j, nil
}

// JobList returns the current version of every job not deleted, ordered by
// name.
func (s *Store) JobList(ctx context.Context, _ *store.JobListParams) ([]*store.Job, error) {
	var jobs []*store.Job
	err := s.read(ctx, func(s *Store) error {
		jobs = nil
		return s.each(ctx, qJobList, nil, func(r *sql.Rows) error {
			j, err := scanJob(r)
			if err == nil {
				jobs = append(jobs, j)
			}
			return err
		})
	})
	if err != nil {
		return nil, fmt.Errorf("job list: %w", err)
	}
	return jobs, nil
}

// JobDelete marks a job deleted; see [store.Store.JobDelete].
func (s *Store) JobDelete(ctx context.Context, p *store.JobDeleteParams) error {
	if p.Name == "" {
		return errors.New("job delete: name is empty")
	}
	err := s.write(ctx, func(tx *Store) error {
		n, err := tx.exec(ctx, qJobDelete, sql.Named("name", p.Name))
		if err != nil || n == 1 {
			return err
		}
		var live int
		if err := tx.one(ctx, qJobLive, []any{sql.Named("name", p.Name)}, &live); err != nil {
			return err
		}
		if live > 0 {
			return fmt.Errorf("job has a run that is not finished: %w", store.ErrConflict)
		}
		return store.ErrNotFound
	})
	if err != nil {
		return fmt.Errorf("job delete %s: %w", p.Name, err)
	}
	return nil
}
