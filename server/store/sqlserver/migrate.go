package sqlserver

import (
	"context"
	"database/sql"
	"embed"
	"fmt"
	"io/fs"
	"log/slog"
	"path"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/microsoft/go-mssqldb/batch"
)

// migrationFS holds the schema migrations, one file per version, named
// NNNN_description.sql with the same version numbers as the SQLite
// backend's. Batches inside a file are separated by GO lines.
//
//go:embed migrations/*.sql
var migrationFS embed.FS

// migrationLockTimeout is how long Migrate waits for another migrating
// process to finish one version.
const migrationLockTimeout = 60 * time.Second

// migration is one schema version.
type migration struct {
	version int
	name    string
	// batches are the file's batches, still holding the placeholders.
	batches []string
}

// loadMigrations reads and splits the embedded migrations, ordered by
// version. Versions must start at 1 and have no gaps.
func loadMigrations(fsys fs.FS) ([]migration, error) {
	names, err := fs.Glob(fsys, "migrations/*.sql")
	if err != nil {
		return nil, err
	}
	var ms []migration
	for _, name := range names {
		base := path.Base(name)
		num, _, ok := strings.Cut(base, "_")
		v, err := strconv.Atoi(num)
		if !ok || err != nil || v <= 0 {
			return nil, fmt.Errorf("migration %s: name must start with a positive version number and '_'", base)
		}
		b, err := fs.ReadFile(fsys, name)
		if err != nil {
			return nil, fmt.Errorf("migration %s: %w", base, err)
		}
		batches := splitBatches(string(b))
		if len(batches) == 0 {
			return nil, fmt.Errorf("migration %s: no statements", base)
		}
		ms = append(ms, migration{version: v, name: base, batches: batches})
	}
	slices.SortFunc(ms, func(a, b migration) int { return a.version - b.version })
	for i, m := range ms {
		if m.version != i+1 {
			return nil, fmt.Errorf("migration %s: version %d, want %d (versions start at 1 and have no gaps)", m.name, m.version, i+1)
		}
	}
	return ms, nil
}

// splitBatches splits a script on GO lines, as sqlcmd does, and drops
// batches that hold only whitespace and comments.
func splitBatches(script string) []string {
	var out []string
	for _, b := range batch.Split(script, "GO") {
		if hasStatement(b) {
			out = append(out, b)
		}
	}
	return out
}

// hasStatement reports whether b holds anything but whitespace and
// comments.
func hasStatement(b string) bool {
	for len(b) > 0 {
		b = strings.TrimLeft(b, " \t\r\n")
		switch {
		case b == "":
			return false
		case strings.HasPrefix(b, "--"):
			i := strings.IndexByte(b, '\n')
			if i < 0 {
				return false
			}
			b = b[i+1:]
		case strings.HasPrefix(b, "/*"):
			i := strings.Index(b, "*/")
			if i < 0 {
				return false
			}
			b = b[i+2:]
		default:
			return true
		}
	}
	return false
}

// Statements of the migration runner.
var (
	// The table is referenced only in the branch that runs when it
	// exists: deferred name resolution compiles that statement only then.
	qMigrationVersion = register("migration_version", `
IF OBJECT_ID(N'{{schema}}.schema_migrations', N'U') IS NULL
    SELECT CAST(0 AS INT);
ELSE
    SELECT ISNULL(MAX(version), 0) FROM {{schema}}.schema_migrations;`)

	// The lock is per schema: migrators of one schema wait for each other;
	// those of different schemas (tests) do not. sp_getapplock returns
	// < 0 when the lock was not granted (timeout, cancel, deadlock).
	qMigrationLock = register("migration_lock", `
DECLARE @rc INT;
EXEC @rc = sys.sp_getapplock @Resource = N'baton:migrations:{{schema_name}}', @LockMode = N'Exclusive',
    @LockOwner = N'Transaction', @LockTimeout = @timeout_ms;
SELECT @rc;`)

	// CREATE SCHEMA must be the only statement of its batch, hence EXEC.
	qMigrationCreateSchema = register("migration_create_schema", `
IF SCHEMA_ID(N'{{schema_name}}') IS NULL EXEC (N'CREATE SCHEMA {{schema}}');`)

	qMigrationCreateTable = register("migration_create_table", `
IF OBJECT_ID(N'{{schema}}.schema_migrations', N'U') IS NULL
    CREATE TABLE {{schema}}.schema_migrations (
        version    INT NOT NULL CONSTRAINT PK_schema_migrations PRIMARY KEY CLUSTERED,
        name       NVARCHAR(400) NOT NULL,
        applied_at DATETIME2(3) NOT NULL CONSTRAINT DF_schema_migrations_applied_at DEFAULT SYSUTCDATETIME()
    );`)

	// Read under the lock, with a locking read: the decision to apply a
	// version must see the latest committed row.
	qMigrationApplied = register("migration_applied", `
SELECT COUNT(*) FROM {{schema}}.schema_migrations WITH (READCOMMITTEDLOCK) WHERE version = @version`)

	qMigrationRecord = register("migration_record", `
INSERT INTO {{schema}}.schema_migrations (version, name) VALUES (@version, @name)`)
)

// Migrate brings the schema up to date; see [store.Store.Migrate]. Each
// pending version runs in its own transaction, which first takes the
// exclusive app lock "baton:migrations:<schema>" (owned by the
// transaction, so a crashed migrator releases it), then re-reads the
// version table and applies the version only if no other process did
// meanwhile. The caller needs permission to create the schema (the first
// time) and tables in it.
func (s *Store) Migrate(ctx context.Context) error {
	if s.tx != nil {
		return fmt.Errorf("migrate: called inside a transaction")
	}
	ms, err := loadMigrations(migrationFS)
	if err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	return s.migrate(ctx, ms)
}

func (s *Store) migrate(ctx context.Context, ms []migration) error {
	var current int
	err := s.read(ctx, func(s *Store) error {
		return s.one(ctx, qMigrationVersion, nil, &current)
	})
	if err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	for _, m := range ms {
		if m.version <= current {
			continue
		}
		applied := false
		err := s.write(ctx, func(tx *Store) error {
			applied = false
			return tx.applyMigration(ctx, m, &applied)
		})
		if err != nil {
			return fmt.Errorf("migrate: version %d (%s): %w", m.version, m.name, err)
		}
		if applied {
			s.log.InfoContext(ctx, "schema migrated", slog.Int("version", m.version), slog.String("migration", m.name))
		}
	}
	return nil
}

// applyMigration runs in a transaction: lock, bootstrap, re-check, apply.
func (s *Store) applyMigration(ctx context.Context, m migration, applied *bool) error {
	var rc int
	if err := s.one(ctx, qMigrationLock, []any{sql.Named("timeout_ms", int32(migrationLockTimeout.Milliseconds()))}, &rc); err != nil {
		return err
	}
	if rc < 0 {
		return fmt.Errorf("migration lock not granted: sp_getapplock returned %d", rc)
	}
	if _, err := s.exec(ctx, qMigrationCreateSchema); err != nil {
		return err
	}
	if _, err := s.exec(ctx, qMigrationCreateTable); err != nil {
		return err
	}
	var n int
	if err := s.one(ctx, qMigrationApplied, []any{sql.Named("version", int32(m.version))}, &n); err != nil {
		return err
	}
	if n > 0 {
		return nil // another process applied it while we waited for the lock
	}
	for i, b := range m.batches {
		if err := s.aborted(); err != nil {
			return err
		}
		if _, err := s.tx.tx.ExecContext(ctx, render(b, s.schema)); err != nil {
			return s.check(fmt.Errorf("batch %d: %w", i+1, err))
		}
	}
	if _, err := s.exec(ctx, qMigrationRecord, sql.Named("version", int32(m.version)), sql.Named("name", m.name)); err != nil {
		return err
	}
	*applied = true
	return nil
}

// dropTables lists every table the migrations create, in an order that
// drops referencing tables first. A test checks it against the migration
// files.
var dropTables = []string{
	"log_chunks", "events", "attempts", "task_instances", "runs", "job_versions", "jobs",
	"agents", "agent_approvals", "leader_lease", "api_tokens", "audit_log", "schema_migrations",
}

var qDropSchema = register("drop_schema", `
IF OBJECT_ID(N'{{schema}}.task_instances', N'U') IS NOT NULL
    AND OBJECT_ID(N'{{schema}}.FK_task_instances_attempt', N'F') IS NOT NULL
    ALTER TABLE {{schema}}.task_instances DROP CONSTRAINT FK_task_instances_attempt;
DROP TABLE IF EXISTS {{schema}}.log_chunks;
DROP TABLE IF EXISTS {{schema}}.events;
DROP TABLE IF EXISTS {{schema}}.attempts;
DROP TABLE IF EXISTS {{schema}}.task_instances;
DROP TABLE IF EXISTS {{schema}}.runs;
DROP TABLE IF EXISTS {{schema}}.job_versions;
DROP TABLE IF EXISTS {{schema}}.jobs;
DROP TABLE IF EXISTS {{schema}}.agents;
DROP TABLE IF EXISTS {{schema}}.agent_approvals;
DROP TABLE IF EXISTS {{schema}}.leader_lease;
DROP PROCEDURE IF EXISTS {{schema}}.audit_purge;
DROP TABLE IF EXISTS {{schema}}.api_tokens;
DROP TABLE IF EXISTS {{schema}}.audit_log;
DROP TABLE IF EXISTS {{schema}}.schema_migrations;
IF SCHEMA_ID(N'{{schema_name}}') IS NOT NULL EXEC (N'DROP SCHEMA {{schema}}');`)

// DropSchema drops every Baton object in the store's schema and then the
// schema itself, in one transaction. It is meant for tests; the schema
// must hold nothing else. Dropping a schema that does not exist succeeds.
func (s *Store) DropSchema(ctx context.Context) error {
	err := s.write(ctx, func(tx *Store) error {
		_, err := tx.exec(ctx, qDropSchema)
		return err
	})
	if err != nil {
		return fmt.Errorf("drop schema: %w", err)
	}
	return nil
}
