package sqlite

import (
	"context"
	"embed"
	"fmt"
	"io/fs"
	"log/slog"
	"slices"
	"strconv"
	"strings"
)

// migrations holds the schema versions, one file each, named
// NNNN_description.sql. The SQL Server backend uses the same numbers.
//
//go:embed migrations/*.sql
var migrations embed.FS

type migration struct {
	version int
	name    string
	sql     string
}

// loadMigrations returns the embedded migrations ordered by version.
func loadMigrations() ([]migration, error) {
	files, err := fs.Glob(migrations, "migrations/*.sql")
	if err != nil {
		return nil, err
	}
	var ms []migration
	for _, f := range files {
		name := strings.TrimPrefix(f, "migrations/")
		num, _, ok := strings.Cut(name, "_")
		v, err := strconv.Atoi(num)
		if !ok || err != nil || v <= 0 {
			return nil, fmt.Errorf("migration %s: name must start with a positive number and '_'", name)
		}
		b, err := migrations.ReadFile(f)
		if err != nil {
			return nil, err
		}
		ms = append(ms, migration{version: v, name: name, sql: string(b)})
	}
	slices.SortFunc(ms, func(a, b migration) int { return a.version - b.version })
	for i := 1; i < len(ms); i++ {
		if ms[i].version == ms[i-1].version {
			return nil, fmt.Errorf("migration version %d appears twice", ms[i].version)
		}
	}
	return ms, nil
}

// Migrate brings the schema up to date; see [store.Store.Migrate]. Each
// version is applied in its own IMMEDIATE transaction that re-reads
// schema_migrations first, so concurrent migrators (other handles or
// processes) apply every version exactly once. A database migrated by a
// newer build (a version this build does not know) is an error.
func (s *Store) Migrate(ctx context.Context) error {
	ms, err := loadMigrations()
	if err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	latest := ms[len(ms)-1].version
	for _, m := range ms {
		var applied bool
		err := s.write(ctx, func(tx *Store) error {
			applied = false
			t := tx.tx.tx
			if _, err := t.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (
				version    INTEGER PRIMARY KEY,
				applied_at INTEGER NOT NULL
			)`); err != nil {
				return err
			}
			var have int
			if err := t.QueryRowContext(ctx, `SELECT coalesce(max(version), 0) FROM schema_migrations`).Scan(&have); err != nil {
				return err
			}
			if have > latest {
				return fmt.Errorf("database schema version %d is newer than this build supports (%d)", have, latest)
			}
			var done bool
			if err := t.QueryRowContext(ctx, `SELECT EXISTS (SELECT 1 FROM schema_migrations WHERE version = ?)`, m.version).Scan(&done); err != nil {
				return err
			}
			if done {
				return nil
			}
			if _, err := t.ExecContext(ctx, m.sql); err != nil {
				return fmt.Errorf("apply %s: %w", m.name, err)
			}
			if _, err := t.ExecContext(ctx, `INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)`, m.version, s.now()); err != nil {
				return err
			}
			applied = true
			return nil
		})
		if err != nil {
			return fmt.Errorf("migrate: %w", err)
		}
		if applied && s.tx == nil {
			s.db.log.InfoContext(ctx, "schema migration applied", slog.Int("version", m.version), slog.String("name", m.name))
		}
	}
	return nil
}
