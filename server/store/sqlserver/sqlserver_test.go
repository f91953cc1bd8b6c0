package sqlserver

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/batonhq/baton/server/store"
	"github.com/batonhq/baton/server/store/storetest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// testDSN returns the DSN of the SQL Server the live tests use, or skips t.
func testDSN(t *testing.T) string {
	t.Helper()
	dsn := os.Getenv("BATON_TEST_SQLSERVER_DSN")
	if dsn == "" {
		t.Skip("BATON_TEST_SQLSERVER_DSN not set")
	}
	return dsn
}

// testLogger sends log records to t.Log.
func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

// newTestDB makes a fresh schema baton_t<random> on the test server, dropped
// when t ends, and returns an opener of un-migrated handles on it.
func newTestDB(t *testing.T, dsn string) func(ctx context.Context) (store.Store, error) {
	t.Helper()
	cfg := Config{DSN: dsn, Schema: "baton_t" + randomSuffix(), MaxOpenConns: 8, Logger: testLogger(t)}
	t.Cleanup(func() {
		// t.Context is already cancelled when cleanups run.
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		s, err := Open(ctx, cfg)
		if err != nil {
			t.Errorf("open store to drop schema %s: %v", cfg.Schema, err)
			return
		}
		defer func() {
			if err := s.Close(); err != nil {
				t.Errorf("close store of schema %s: %v", cfg.Schema, err)
			}
		}()
		if err := s.DropSchema(ctx); err != nil {
			t.Errorf("DropSchema(%s) = %v", cfg.Schema, err)
		}
	})
	return func(ctx context.Context) (store.Store, error) { return Open(ctx, cfg) }
}

func randomSuffix() string {
	b := make([]byte, 6)
	_, _ = rand.Read(b) // crypto/rand.Read never fails
	return hex.EncodeToString(b)
}

// TestSQLServer runs the store conformance suite against a real SQL
// Server. CI runs it twice: with READ_COMMITTED_SNAPSHOT off and on.
func TestSQLServer(t *testing.T) {
	dsn := testDSN(t)
	t.Parallel()
	storetest.Run(t, storetest.Harness{NewDB: func(t *testing.T) func(ctx context.Context) (store.Store, error) {
		return newTestDB(t, dsn)
	}})
}

// openMigrated opens a migrated store on a fresh schema.
func openMigrated(t *testing.T) *Store {
	t.Helper()
	st, err := newTestDB(t, testDSN(t))(t.Context())
	if err != nil {
		t.Fatalf("Open() = %v", err)
	}
	t.Cleanup(func() {
		if err := st.Close(); err != nil {
			t.Errorf("Close() = %v", err)
		}
	})
	if err := st.Migrate(t.Context()); err != nil {
		t.Fatalf("Migrate() = %v", err)
	}
	return st.(*Store)
}

// TestSQLServerAbortedTx checks, on a real server, that a failed statement
// rolls the whole transaction back (XACT_ABORT ON), that the transaction's
// store refuses further work, and that InTx reports it.
func TestSQLServerAbortedTx(t *testing.T) {
	t.Parallel()
	s := openMigrated(t)
	ctx := t.Context()
	err := s.InTx(ctx, func(tx store.Store) error {
		if _, err := tx.JobApply(ctx, &store.JobApplyParams{Name: "gone", Spec: []byte(`{}`)}); err != nil {
			return err
		}
		// Violates CK_jobs_name: error 547, not retryable.
		_, err := tx.(*Store).tx.tx.ExecContext(ctx, render(`INSERT INTO {{schema}}.jobs (name, current_version) VALUES (N'', 1)`, s.schema))
		err = tx.(*Store).check(err) // records the failure on the transaction
		if err == nil {
			t.Errorf("insert of an empty name succeeded, want a CHECK violation")
		}
		if _, err := tx.JobList(ctx, &store.JobListParams{}); err == nil {
			t.Errorf("JobList() after the failed statement = nil, want the earlier error")
		}
		return nil // swallow: InTx must still not commit
	})
	if err == nil {
		t.Fatal("InTx() = nil, want the transaction reported aborted")
	}
	_, err = s.JobGet(ctx, &store.JobGetParams{Name: "gone"})
	if !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("JobGet(gone) after the aborted transaction = %v, want ErrNotFound", err)
	}
}

// TestSQLServerDropSchema checks that DropSchema removes the schema, may be
// repeated, and that Migrate then builds it again.
func TestSQLServerDropSchema(t *testing.T) {
	t.Parallel()
	s := openMigrated(t)
	ctx := t.Context()
	if _, err := s.JobApply(ctx, &store.JobApplyParams{Name: "j", Spec: []byte(`{}`)}); err != nil {
		t.Fatalf("JobApply() = %v", err)
	}
	for i := range 2 {
		if err := s.DropSchema(ctx); err != nil {
			t.Fatalf("DropSchema() #%d = %v", i+1, err)
		}
	}
	var present int
	if err := s.db.QueryRowContext(ctx, `SELECT COUNT(*) FROM sys.schemas WHERE name = @p1`, s.schema).Scan(&present); err != nil {
		t.Fatalf("look up schema: %v", err)
	}
	if present != 0 {
		t.Fatalf("schema %s still exists after DropSchema", s.schema)
	}
	if err := s.Migrate(ctx); err != nil {
		t.Fatalf("Migrate() after DropSchema = %v", err)
	}
	if jobs, err := s.JobList(ctx, &store.JobListParams{}); err != nil || len(jobs) != 0 {
		t.Fatalf("JobList() on the rebuilt schema = %v, %v; want none", jobs, err)
	}
}
