package sqlite

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/batonhq/baton/server/store"
)

const jobCols = `j.id, j.name, v.version, v.description, v.spec, v.source, j.created_at, v.created_at`

func scanJob(sc scanner) (*store.Job, error) {
	var j store.Job
	var created, updated int64
	if err := sc.Scan(&j.ID, &j.Name, &j.Version, &j.Description, &j.Spec, &j.Source, &created, &updated); err != nil {
		return nil, err
	}
	j.CreatedAt, j.UpdatedAt = fromMS(created), fromMS(updated)
	return &j, nil
}

// JobApply stores a job definition; see [store.Store.JobApply]. Spec must
// be valid JSON.
func (s *Store) JobApply(ctx context.Context, p *store.JobApplyParams) (*store.JobApplyResult, error) {
	if p.Name == "" {
		return nil, errors.New("job apply: name is empty")
	}
	if !json.Valid(p.Spec) {
		return nil, fmt.Errorf("job apply %s: spec is not valid JSON", p.Name)
	}
	var res *store.JobApplyResult
	err := s.write(ctx, func(tx *Store) error {
		res = nil
		at := s.now()
		var (
			id, createdAt int64
			version       int
			deleted       sql.NullInt64
			spec          []byte
		)
		err := tx.queryRow(ctx, `
			SELECT j.id, j.current_version, j.created_at, j.deleted_at, v.spec
			FROM jobs j JOIN job_versions v ON v.job_id = j.id AND v.version = j.current_version
			WHERE j.name = @name`,
			[]any{sql.Named("name", p.Name)}, &id, &version, &createdAt, &deleted, &spec)
		switch {
		case errors.Is(err, sql.ErrNoRows):
			version = 1
			createdAt = at
			if err := tx.queryRow(ctx, `
				INSERT INTO jobs (name, current_version, created_at) VALUES (@name, 1, @at) RETURNING id`,
				[]any{sql.Named("name", p.Name), sql.Named("at", at)}, &id); err != nil {
				return err
			}
		case err != nil:
			return err
		case !deleted.Valid && bytes.Equal(spec, p.Spec):
			j, err := tx.jobVersion(ctx, id, version)
			if err != nil {
				return err
			}
			res = &store.JobApplyResult{Job: j}
			return nil
		default: // a changed spec, or the revival of a deleted job
			version++
			if _, err := tx.exec(ctx, `
				UPDATE jobs SET current_version = @v, deleted_at = NULL WHERE id = @id`,
				sql.Named("v", version), sql.Named("id", id)); err != nil {
				return err
			}
		}
		if _, err := tx.exec(ctx, `
			INSERT INTO job_versions (job_id, version, description, spec, source, created_at)
			VALUES (@id, @v, @d, @spec, @src, @at)`,
			sql.Named("id", id), sql.Named("v", version), sql.Named("d", p.Description),
			sql.Named("spec", string(p.Spec)), sql.Named("src", p.Source), sql.Named("at", at)); err != nil {
			return err
		}
		res = &store.JobApplyResult{Created: true, Job: &store.Job{
			ID: id, Name: p.Name, Version: version, Description: p.Description,
			Spec: bytes.Clone(p.Spec), Source: p.Source,
			CreatedAt: fromMS(createdAt), UpdatedAt: fromMS(at),
		}}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("job apply %s: %w", p.Name, err)
	}
	return res, nil
}

// jobVersion returns version v of job id, or store.ErrNotFound.
func (s *Store) jobVersion(ctx context.Context, id int64, v int) (*store.Job, error) {
	st, err := s.stmt(ctx, `SELECT `+jobCols+`
		FROM jobs j JOIN job_versions v ON v.job_id = j.id
		WHERE j.id = @id AND v.version = (CASE WHEN @v = 0 THEN j.current_version ELSE @v END)`)
	if err != nil {
		return nil, err
	}
	j, err := scanJob(st.QueryRowContext(ctx, sql.Named("id", id), sql.Named("v", v)))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, store.ErrNotFound
	}
	return j, err
}

// JobGet returns one version of a job; see [store.Store.JobGet]. With both
// ID and Name set, both must match.
func (s *Store) JobGet(ctx context.Context, p *store.JobGetParams) (*store.Job, error) {
	if p.Version < 0 {
		return nil, fmt.Errorf("job get: version %d is negative", p.Version)
	}
	id := p.ID
	if id == 0 {
		if p.Name == "" {
			return nil, errors.New("job get: set id or name")
		}
		err := s.queryRow(ctx, `SELECT id FROM jobs WHERE name = @name AND deleted_at IS NULL`,
			[]any{sql.Named("name", p.Name)}, &id)
		if errors.Is(err, sql.ErrNoRows) {
			return nil, fmt.Errorf("job get %s: %w", p.Name, store.ErrNotFound)
		}
		if err != nil {
			return nil, fmt.Errorf("job get %s: %w", p.Name, err)
		}
	}
	j, err := s.jobVersion(ctx, id, p.Version)
	if err == nil && p.Name != "" && j.Name != p.Name {
		err = store.ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("job get %d: %w", id, err)
	}
	return j, nil
}

// JobList returns the current version of every job not deleted, ordered by
// name.
func (s *Store) JobList(ctx context.Context, _ *store.JobListParams) ([]*store.Job, error) {
	jobs, err := collect(scanJob)(s.query(ctx, `SELECT `+jobCols+`
		FROM jobs j JOIN job_versions v ON v.job_id = j.id AND v.version = j.current_version
		WHERE j.deleted_at IS NULL ORDER BY j.name`))
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
		res, err := tx.exec(ctx, `
			UPDATE jobs SET deleted_at = @at
			WHERE name = @name AND deleted_at IS NULL
			  AND NOT EXISTS (SELECT 1 FROM runs r
			                  WHERE r.job_id = jobs.id AND r.state IN ('queued', 'running', 'cancelling'))`,
			sql.Named("at", s.now()), sql.Named("name", p.Name))
		if err != nil {
			return err
		}
		if n, err := res.RowsAffected(); err != nil || n == 1 {
			return err
		}
		var exists bool
		if err := tx.queryRow(ctx, `SELECT EXISTS (SELECT 1 FROM jobs WHERE name = @name AND deleted_at IS NULL)`,
			[]any{sql.Named("name", p.Name)}, &exists); err != nil {
			return err
		}
		if exists {
			return fmt.Errorf("job has a run that is not finished: %w", store.ErrConflict)
		}
		return store.ErrNotFound
	})
	if err != nil {
		return fmt.Errorf("job delete %s: %w", p.Name, err)
	}
	return nil
}
