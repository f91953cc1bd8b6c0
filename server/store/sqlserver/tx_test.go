package sqlserver

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"

	mssql "github.com/microsoft/go-mssqldb"

	"github.com/batonhq/baton/server/store"
)

// The transaction logic of Store (retry, the unusable-after-error rule,
// commit only on success) is tested here against a scripted database/sql
// driver: the driver is the seam, and no SQL Server runs on the test
// machine. TestSQLServer covers the same against a real server.

// fakeDriver records transactions and answers each Exec with the next
// scripted error (nil: success, one row affected).
type fakeDriver struct {
	mu        sync.Mutex
	script    []error
	execs     []string // statement texts, in order
	begins    int
	commits   int
	rollbacks int
	isolation []driver.IsolationLevel
}

func (d *fakeDriver) Open(string) (driver.Conn, error) { return &fakeConn{d: d}, nil }
func (d *fakeDriver) Connect(context.Context) (driver.Conn, error) {
	return &fakeConn{d: d}, nil
}
func (d *fakeDriver) Driver() driver.Driver { return d }

type fakeConn struct{ d *fakeDriver }

func (c *fakeConn) Prepare(string) (driver.Stmt, error) {
	return nil, errors.New("fake driver: Prepare is not used")
}
func (c *fakeConn) Close() error              { return nil }
func (c *fakeConn) Begin() (driver.Tx, error) { return nil, errors.New("fake driver: use BeginTx") }

func (c *fakeConn) BeginTx(_ context.Context, opts driver.TxOptions) (driver.Tx, error) {
	c.d.mu.Lock()
	defer c.d.mu.Unlock()
	c.d.begins++
	c.d.isolation = append(c.d.isolation, opts.Isolation)
	return fakeTx{c.d}, nil
}

func (c *fakeConn) ExecContext(_ context.Context, query string, _ []driver.NamedValue) (driver.Result, error) {
	c.d.mu.Lock()
	defer c.d.mu.Unlock()
	c.d.execs = append(c.d.execs, query)
	if len(c.d.script) > 0 {
		err := c.d.script[0]
		c.d.script = c.d.script[1:]
		if err != nil {
			return nil, err
		}
	}
	return driver.RowsAffected(1), nil
}

func (c *fakeConn) QueryContext(context.Context, string, []driver.NamedValue) (driver.Rows, error) {
	return fakeRows{}, nil
}

// CheckNamedValue accepts the driver-specific parameter types.
func (c *fakeConn) CheckNamedValue(*driver.NamedValue) error { return nil }

type fakeRows struct{}

func (fakeRows) Columns() []string         { return nil }
func (fakeRows) Close() error              { return nil }
func (fakeRows) Next([]driver.Value) error { return io.EOF }

type fakeTx struct{ d *fakeDriver }

func (t fakeTx) Commit() error {
	t.d.mu.Lock()
	defer t.d.mu.Unlock()
	t.d.commits++
	return nil
}

func (t fakeTx) Rollback() error {
	t.d.mu.Lock()
	defer t.d.mu.Unlock()
	t.d.rollbacks++
	return nil
}

type txBundle struct {
	d *fakeDriver
	s *Store
}

func setupTx(t *testing.T, script ...error) *txBundle {
	t.Helper()
	d := &fakeDriver{script: script}
	db := sql.OpenDB(d)
	t.Cleanup(func() {
		if err := db.Close(); err != nil {
			t.Errorf("close the fake database: %v", err)
		}
	})
	return &txBundle{d: d, s: &Store{db: db, schema: "baton", sql: renderAll("baton"), log: slog.New(slog.DiscardHandler)}}
}

func (b *txBundle) counts() (begins, commits, rollbacks, execs int) {
	b.d.mu.Lock()
	defer b.d.mu.Unlock()
	return b.d.begins, b.d.commits, b.d.rollbacks, len(b.d.execs)
}

var (
	errDeadlock = mssql.Error{Number: 1205, Message: "Transaction was deadlocked"}
	errFK       = mssql.Error{Number: 547, Message: "conflicted with the FOREIGN KEY constraint"}
)

func TestInTxCommitsOnce(t *testing.T) {
	t.Parallel()
	b := setupTx(t)
	err := b.s.InTx(t.Context(), func(tx store.Store) error {
		_, err := tx.(*Store).exec(t.Context(), qJobBump)
		return err
	})
	if err != nil {
		t.Fatalf("InTx() = %v", err)
	}
	begins, commits, _, execs := b.counts()
	if begins != 1 || commits != 1 || execs != 1 {
		t.Fatalf("InTx(): %d begins, %d commits, %d execs; want 1 each", begins, commits, execs)
	}
	if got := b.d.isolation[0]; got != driver.IsolationLevel(sql.LevelReadCommitted) {
		t.Fatalf("InTx() began isolation %v, want READ COMMITTED", got)
	}
}

func TestInTxRetriesDeadlock(t *testing.T) {
	t.Parallel()
	b := setupTx(t, errDeadlock, nil)
	calls := 0
	err := b.s.InTx(t.Context(), func(tx store.Store) error {
		calls++
		_, err := tx.(*Store).exec(t.Context(), qJobBump)
		return err
	})
	if err != nil {
		t.Fatalf("InTx() = %v, want success on the second try", err)
	}
	begins, commits, rollbacks, _ := b.counts()
	if calls != 2 || begins != 2 || commits != 1 || rollbacks != 1 {
		t.Fatalf("InTx(): %d calls, %d begins, %d commits, %d rollbacks; want 2, 2, 1, 1", calls, begins, commits, rollbacks)
	}
}

// A function that swallows a deadlock must not commit what is left of the
// transaction (the server rolled it back), and the whole function runs
// again.
func TestInTxSwallowedDeadlockIsRetried(t *testing.T) {
	t.Parallel()
	b := setupTx(t, errDeadlock, nil)
	var after []error
	calls := 0
	err := b.s.InTx(t.Context(), func(tx store.Store) error {
		calls++
		s := tx.(*Store)
		_, _ = s.exec(t.Context(), qJobBump) // error ignored
		_, err := s.exec(t.Context(), qJobBump)
		after = append(after, err)
		return nil
	})
	if err != nil {
		t.Fatalf("InTx() = %v, want success on the second try", err)
	}
	begins, commits, _, execs := b.counts()
	if calls != 2 || begins != 2 || commits != 1 {
		t.Fatalf("InTx(): %d calls, %d begins, %d commits; want 2, 2, 1", calls, begins, commits)
	}
	// First try: the statement after the deadlock never reached the server.
	if !isRetryable(after[0]) || !strings.Contains(after[0].Error(), "aborted") {
		t.Fatalf("statement after a deadlock = %v, want the aborted transaction's deadlock", after[0])
	}
	if after[1] != nil {
		t.Fatalf("second try's statement = %v, want success", after[1])
	}
	if execs != 3 {
		t.Fatalf("driver saw %d execs, want 3 (1 + 2)", execs)
	}
}

func TestInTxSwallowedErrorIsNotCommitted(t *testing.T) {
	t.Parallel()
	b := setupTx(t, errFK)
	calls := 0
	err := b.s.InTx(t.Context(), func(tx store.Store) error {
		calls++
		_, _ = tx.(*Store).exec(t.Context(), qJobBump)
		// Every later call on the transaction's store fails without
		// reaching the server.
		_, err := tx.JobGet(t.Context(), &store.JobGetParams{ID: 1})
		if err == nil {
			t.Errorf("JobGet() after a failed statement = nil, want the earlier error")
		}
		return nil
	})
	if err == nil || !strings.Contains(err.Error(), "aborted") {
		t.Fatalf("InTx() = %v, want the transaction reported aborted", err)
	}
	var me mssql.Error
	if !errors.As(err, &me) || me.Number != 547 {
		t.Fatalf("InTx() = %v, want the 547 error in the chain", err)
	}
	begins, commits, rollbacks, execs := b.counts()
	if calls != 1 || begins != 1 || commits != 0 || rollbacks != 1 || execs != 1 {
		t.Fatalf("InTx(): %d calls, %d begins, %d commits, %d rollbacks, %d execs; want 1, 1, 0, 1, 1",
			calls, begins, commits, rollbacks, execs)
	}
}

func TestInTxGivesUp(t *testing.T) {
	t.Parallel()
	script := make([]error, store.MaxTxTries)
	for i := range script {
		script[i] = errDeadlock
	}
	b := setupTx(t, script...)
	err := b.s.InTx(t.Context(), func(tx store.Store) error {
		_, err := tx.(*Store).exec(t.Context(), qJobBump)
		return err
	})
	if !isRetryable(err) {
		t.Fatalf("InTx() = %v, want the deadlock after the last try", err)
	}
	if begins, commits, _, _ := b.counts(); begins != store.MaxTxTries || commits != 0 {
		t.Fatalf("InTx(): %d begins, %d commits; want %d, 0", begins, commits, store.MaxTxTries)
	}
}

func TestInTxNestedRunsInPlace(t *testing.T) {
	t.Parallel()
	b := setupTx(t)
	err := b.s.InTx(t.Context(), func(tx store.Store) error {
		return tx.InTx(t.Context(), func(inner store.Store) error {
			if inner != tx {
				t.Errorf("nested InTx() got another store")
			}
			_, err := inner.(*Store).exec(t.Context(), qJobBump)
			return err
		})
	})
	if err != nil {
		t.Fatalf("InTx() = %v", err)
	}
	if begins, commits, _, _ := b.counts(); begins != 1 || commits != 1 {
		t.Fatalf("nested InTx(): %d begins, %d commits; want 1, 1", begins, commits)
	}
	if err := b.s.InTx(t.Context(), func(tx store.Store) error { return tx.Close() }); err == nil {
		t.Fatal("Close() inside InTx = nil, want an error")
	}
}

// A panicking function rolls its transaction back and the panic goes on
// to the caller unchanged.
func TestInTxPanicRollsBack(t *testing.T) {
	t.Parallel()
	b := setupTx(t)
	boom := errors.New("boom")
	func() {
		defer func() {
			if p := recover(); p != boom {
				t.Fatalf("recover() = %v, want %v", p, boom)
			}
		}()
		_ = b.s.InTx(t.Context(), func(tx store.Store) error {
			if _, err := tx.(*Store).exec(t.Context(), qJobBump); err != nil {
				return err
			}
			panic(boom)
		})
	}()
	if begins, commits, rollbacks, _ := b.counts(); begins != 1 || commits != 0 || rollbacks != 1 {
		t.Fatalf("InTx(panic): %d begins, %d commits, %d rollbacks; want 1, 0, 1", begins, commits, rollbacks)
	}
}
