package sqlite

import (
	"context"
	"database/sql"
	"path/filepath"
	"strings"
	"testing"

	"github.com/batonhq/baton/server/store"
)

func openTest(t *testing.T) *Store {
	t.Helper()
	s, err := Open(t.Context(), Config{Path: filepath.Join(t.TempDir(), "baton.db")})
	if err != nil {
		t.Fatalf("Open() = %v", err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close() = %v", err)
		}
	})
	return s
}

// TestTaskDurationsPlan checks that TaskDurations reads only the job's
// newest runs through runs_job_name and seeks their succeeded attempts in
// attempts_succeeded, task by task: no table scan, so its cost grows
// neither with the job's history nor with a for-each task's items.
func TestTaskDurationsPlan(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	s := openTest(t)
	if err := s.Migrate(ctx); err != nil {
		t.Fatalf("Migrate() = %v", err)
	}
	rows, err := s.db.r.QueryContext(ctx, "EXPLAIN QUERY PLAN "+taskDurations,
		sql.Named("job", "j"), sql.Named("runs", store.TaskDurationsRuns), sql.Named("last", 3))
	if err != nil {
		t.Fatalf("EXPLAIN QUERY PLAN = %v", err)
	}
	defer rows.Close()
	var plan []string
	for rows.Next() {
		var id, parent, unused int
		var detail string
		if err := rows.Scan(&id, &parent, &unused, &detail); err != nil {
			t.Fatalf("scan plan: %v", err)
		}
		plan = append(plan, detail)
	}
	if err := rows.Err(); err != nil {
		t.Fatalf("read plan: %v", err)
	}
	text := strings.Join(plan, "\n")
	for _, want := range []string{
		// The job's newest runs.
		"SEARCH runs USING COVERING INDEX runs_job_name (job_name=?)",
		// The skip scan from task to task.
		"SEARCH a USING COVERING INDEX attempts_succeeded (run_id=? AND task>?)",
		// Each task's newest attempts of a run.
		"SEARCH x USING INDEX attempts_succeeded (run_id=? AND task=?",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("plan lacks %q:\n%s", want, text)
		}
	}
	for _, line := range plan {
		for _, table := range []string{"runs", "attempts", "a", "x"} {
			if strings.HasPrefix(line, "SCAN "+table) && (len(line) == len("SCAN "+table) || line[len("SCAN "+table)] == ' ') {
				t.Errorf("plan scans table %s (%q):\n%s", table, line, text)
			}
		}
	}
}

// TestMigrateAttemptRestart checks the upgrade from schema version 1: the
// attempts recorded before it read with Restart 0 and count in
// TaskDurations.
func TestMigrateAttemptRestart(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	s := openTest(t)
	ms, err := loadMigrations()
	if err != nil {
		t.Fatalf("loadMigrations() = %v", err)
	}
	if len(ms) < 2 || ms[0].version != 1 || ms[1].version != 2 {
		t.Fatalf("migrations = %d, want versions 1 and 2 first", len(ms))
	}
	v1 := func(ctx context.Context, tx *Store) error {
		stx := tx.tx.tx
		if _, err := stx.ExecContext(ctx, `CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)`); err != nil {
			return err
		}
		if _, err := stx.ExecContext(ctx, ms[0].sql); err != nil {
			return err
		}
		_, err := stx.ExecContext(ctx, `INSERT INTO schema_migrations (version, applied_at) VALUES (1, 0)`)
		return err
	}
	if err := s.write(ctx, func(tx *Store) error { return v1(ctx, tx) }); err != nil {
		t.Fatalf("apply version 1: %v", err)
	}
	// Version 1's tables, written as a version 1 build wrote them.
	job, err := s.JobApply(ctx, &store.JobApplyParams{Name: "j", Spec: []byte(`{}`)})
	if err != nil {
		t.Fatalf("JobApply() = %v", err)
	}
	// The run and its instance in version 1's columns (today's RunCreate
	// reads columns of later versions back).
	var runID, id int64
	err = s.write(ctx, func(tx *Store) error {
		stx := tx.tx.tx
		if err := stx.QueryRowContext(ctx, `
			INSERT INTO runs (job_id, job_name, job_version, state, overlap, params, created_at, started_at)
			VALUES (?, 'j', 1, 'running', 'allow', '{}', 1000, 1000) RETURNING id`, job.Job.ID).Scan(&runID); err != nil {
			return err
		}
		if _, err := stx.ExecContext(ctx, `
			INSERT INTO task_instances (run_id, task, item, state) VALUES (?, 't', -1, 'ready')`, runID); err != nil {
			return err
		}
		return stx.QueryRowContext(ctx, `
			INSERT INTO attempts (instance_id, run_id, task, item, no, kind, agent, state, lease_expires_at,
			                      dispatched_at, started_at, finished_at)
			SELECT id, run_id, task, item, 1, 'first', 'etl-01', 'succeeded', 0, 1000, 1000, 5000
			FROM task_instances WHERE run_id = ? RETURNING id`, runID).Scan(&id)
	})
	if err != nil {
		t.Fatalf("insert a version 1 attempt: %v", err)
	}

	if err := s.Migrate(ctx); err != nil {
		t.Fatalf("Migrate() from version 1 = %v", err)
	}
	a, err := s.AttemptGet(ctx, &store.AttemptGetParams{ID: id})
	if err != nil {
		t.Fatalf("AttemptGet() = %v", err)
	}
	if a.Restart != 0 || a.State != store.AttemptSucceeded || a.No != 1 {
		t.Fatalf("version 1 attempt after migrating = %+v, want Restart 0, succeeded, No 1", a)
	}
	d, err := s.TaskDurations(ctx, &store.TaskDurationsParams{JobName: "j"})
	if err != nil {
		t.Fatalf("TaskDurations() = %v", err)
	}
	if got := d["t"]; len(d) != 1 || got.Seconds() != 4 {
		t.Fatalf("TaskDurations() = %v, want t: 4s", d)
	}
}
