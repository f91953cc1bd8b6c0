package sqlite

import (
	"strings"
	"testing"
)

// TestMigrateAttemptRejected checks version 6's in-place edit of the
// attempts table: both CHECK constraints allow 'rejected' and still
// refuse anything else, and the database is intact.
func TestMigrateAttemptRejected(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	s := openTest(t)
	if err := s.Migrate(ctx); err != nil {
		t.Fatalf("Migrate() = %v", err)
	}
	err := s.write(ctx, func(tx *Store) error {
		stx := tx.tx.tx
		var def string
		if err := stx.QueryRowContext(ctx, `SELECT sql FROM sqlite_schema WHERE type = 'table' AND name = 'attempts'`).Scan(&def); err != nil {
			return err
		}
		for _, want := range []string{"state = 'lost' OR state = 'rejected')", "late_state = 'rejected')"} {
			if !strings.Contains(def, want) {
				t.Errorf("attempts table definition lacks %q:\n%s", want, def)
			}
		}
		var check string
		if err := stx.QueryRowContext(ctx, `PRAGMA integrity_check`).Scan(&check); err != nil {
			return err
		}
		if check != "ok" {
			t.Errorf("integrity_check = %q, want ok", check)
		}
		// The constraint still holds for other values (the insert fails on
		// the CHECK before any foreign key is looked at).
		_, err := stx.ExecContext(ctx, `INSERT INTO attempts (instance_id, run_id, task, item, no, kind, agent, state, lease_expires_at, dispatched_at)
			VALUES (1, 1, 't', -1, 1, 'first', 'a', 'bogus', 0, 0)`)
		if err == nil || !strings.Contains(err.Error(), "CHECK") {
			t.Errorf("insert of state 'bogus' = %v, want a CHECK constraint failure", err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
