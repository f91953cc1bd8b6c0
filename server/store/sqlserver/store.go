package sqlserver

import (
	"cmp"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	mssql "github.com/microsoft/go-mssqldb"
	"github.com/microsoft/go-mssqldb/msdsn"

	"github.com/batonhq/baton/server/store"
)

// Config configures [Open].
type Config struct {
	// DSN is a go-mssqldb URL: sqlserver://user:pass@host:1433?database=baton
	// (the driver's ADO and odbc: forms are accepted too). Required.
	// Percent-encode the password, or build the URL with net/url.
	DSN string
	// Schema is the SQL Server schema holding Baton's tables. Defaults to
	// "baton". It must match [A-Za-z_][A-Za-z0-9_]{0,127}.
	Schema string
	// MaxOpenConns caps the connection pool. Defaults to 32. The pool keeps
	// as many idle connections as open ones, so a busy control plane does
	// not reconnect; see [Open].
	MaxOpenConns int
	// Logger receives the store's log records. Defaults to discarding them.
	Logger *slog.Logger
}

// Defaults of [Config] and of the pool [Open] builds.
const (
	// DefaultSchema is the schema used when Config.Schema is empty.
	DefaultSchema = "baton"
	// DefaultMaxOpenConns is the pool size used when Config.MaxOpenConns
	// is zero.
	DefaultMaxOpenConns = 32
	// connMaxLifetime makes pooled connections reconnect now and then, so
	// they re-resolve an availability group listener after a failover.
	connMaxLifetime = 30 * time.Minute
	// connMaxIdleTime closes connections idle this long.
	connMaxIdleTime = 5 * time.Minute
	// retryBase is the first backoff of a transaction retried after a
	// deadlock, lock timeout or Azure transient error; see [store.Retry].
	retryBase = 25 * time.Millisecond
)

// sessionInitSQL runs on every new and every reset pooled session.
// XACT_ABORT ON makes the server roll the whole transaction back on any
// error and on a client cancel (TDS attention), instead of leaving it, and
// its locks, open on a pooled connection.
const sessionInitSQL = "SET XACT_ABORT ON"

func (c Config) withDefaults() (Config, error) {
	if c.DSN == "" {
		return c, errors.New("sqlserver: config: DSN is required")
	}
	c.Schema = cmp.Or(c.Schema, DefaultSchema)
	if err := validateSchema(c.Schema); err != nil {
		return c, err
	}
	if c.MaxOpenConns < 0 {
		return c, fmt.Errorf("sqlserver: config: MaxOpenConns %d is negative", c.MaxOpenConns)
	}
	c.MaxOpenConns = cmp.Or(c.MaxOpenConns, DefaultMaxOpenConns)
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c, nil
}

// connector parses the DSN into a driver connector whose sessions run
// sessionInitSQL. The error never repeats the DSN, which holds a password.
func connector(dsn string) (*mssql.Connector, error) {
	p, err := msdsn.Parse(dsn)
	if err != nil {
		return nil, fmt.Errorf("sqlserver: config: DSN: %w", err)
	}
	// The driver reads DATETIME2 values as wall times in this zone; the
	// store's are UTC.
	if tz := p.Encoding.Timezone; tz != nil && tz.String() != "UTC" {
		return nil, fmt.Errorf("sqlserver: config: DSN: timezone %q: Baton stores UTC times; leave timezone unset", tz)
	}
	c, err := mssql.NewConnector(dsn)
	if err != nil {
		return nil, fmt.Errorf("sqlserver: config: DSN: %w", err)
	}
	c.SessionInitSQL = sessionInitSQL
	return c, nil
}

// Store is a [store.Store] on a SQL Server database. It is safe for
// concurrent use. The Store an InTx function receives is bound to that
// transaction and must not be used by several goroutines at once.
type Store struct {
	db     *sql.DB
	schema string
	sql    []string // rendered statements, by stmt id
	log    *slog.Logger
	// tx is set on the Store an InTx function receives; its methods then
	// run in that transaction.
	tx *txn
}

var _ store.Store = (*Store)(nil)

// txn is one transaction. After its first error it is unusable: with
// XACT_ABORT ON the server has already rolled it back, and a later
// statement would run outside any transaction.
type txn struct {
	tx  *sql.Tx
	mu  sync.Mutex
	err error
}

func (t *txn) failed() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.err
}

func (t *txn) fail(err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.err == nil {
		t.err = err
	}
}

// Open connects to the database cfg.DSN names and checks the connection.
// It does not migrate: call [Store.Migrate] (as a principal that may
// create tables in cfg.Schema) before using the store.
//
// The pool holds up to cfg.MaxOpenConns connections and as many idle ones,
// recycles each after 30 minutes (so a failover's new primary is found
// through the listener) and closes those idle for 5 minutes. Every session
// runs with XACT_ABORT ON. Writes run under READ COMMITTED, with or without
// READ_COMMITTED_SNAPSHOT: every check that gates a write takes a lock or
// sits in the write's WHERE clause.
func Open(ctx context.Context, cfg Config) (*Store, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	c, err := connector(cfg.DSN)
	if err != nil {
		return nil, err
	}
	db := sql.OpenDB(c)
	db.SetMaxOpenConns(cfg.MaxOpenConns)
	db.SetMaxIdleConns(cfg.MaxOpenConns)
	db.SetConnMaxLifetime(connMaxLifetime)
	db.SetConnMaxIdleTime(connMaxIdleTime)
	if err := db.PingContext(ctx); err != nil {
		return nil, errors.Join(fmt.Errorf("sqlserver: connect: %w", err), db.Close())
	}
	return &Store{
		db:     db,
		schema: cfg.Schema,
		sql:    renderAll(cfg.Schema),
		log:    cfg.Logger.With(slog.String("component", "store.sqlserver"), slog.String("schema", cfg.Schema)),
	}, nil
}

// Close releases the store's connections. Close on the Store of a
// transaction returns an error and closes nothing.
func (s *Store) Close() error {
	if s.tx != nil {
		return errors.New("sqlserver: close: called inside a transaction")
	}
	return s.db.Close()
}

// InTx runs fn in one READ COMMITTED transaction and commits it when fn
// returns nil; see [store.Store.InTx]. After a deadlock, lock timeout or
// Azure transient error the whole function runs again, also when fn
// returned a different error after the failed statement. A statement that
// fails makes the transaction unusable: every later method call on its
// Store returns that error, and InTx does not commit.
func (s *Store) InTx(ctx context.Context, fn func(tx store.Store) error) error {
	return s.write(ctx, func(tx *Store) error { return fn(tx) })
}

// write runs fn in the current transaction, or in a new one that is
// retried as InTx describes.
func (s *Store) write(ctx context.Context, fn func(tx *Store) error) error {
	if s.tx != nil {
		return fn(s)
	}
	var last *txn
	retryable := func(err error) bool {
		ok := isRetryable(err) || (last != nil && isRetryable(last.failed()))
		if ok {
			s.log.DebugContext(ctx, "transaction failed with a retryable error", slog.Any("error", err))
		}
		return ok
	}
	return store.Retry(ctx, retryBase, retryable, func() error {
		last = nil
		tx, err := s.db.BeginTx(ctx, &sql.TxOptions{Isolation: sql.LevelReadCommitted})
		if err != nil {
			return fmt.Errorf("begin: %w", err)
		}
		// After Commit a no-op (sql.ErrTxDone); on any other path the error
		// to return is fn's, not the rollback's.
		defer func() { _ = tx.Rollback() }()
		t := &txn{tx: tx}
		last = t
		ferr := fn(&Store{db: s.db, schema: s.schema, sql: s.sql, log: s.log, tx: t})
		if aborted := t.failed(); aborted != nil && ferr == nil {
			ferr = fmt.Errorf("transaction aborted: %w", aborted)
		}
		if ferr != nil {
			return ferr
		}
		if err := tx.Commit(); err != nil {
			return fmt.Errorf("commit: %w", err)
		}
		return nil
	})
}

// read runs fn on the current transaction, or outside any transaction
// (each statement on its own), retried like a transaction: a locking read
// can be chosen as a deadlock victim too.
func (s *Store) read(ctx context.Context, fn func(s *Store) error) error {
	if s.tx != nil {
		return fn(s)
	}
	return store.Retry(ctx, retryBase, isRetryable, func() error { return fn(s) })
}

// aborted returns, on the Store of a transaction that already failed, an
// error wrapping that first failure, for every call made after it.
func (s *Store) aborted() error {
	if s.tx == nil {
		return nil
	}
	if err := s.tx.failed(); err != nil {
		return fmt.Errorf("transaction aborted by an earlier error: %w", err)
	}
	return nil
}

// check records err as the transaction's first error, unless it is nil or
// sql.ErrNoRows, and returns it.
func (s *Store) check(err error) error {
	if err != nil && s.tx != nil && !errors.Is(err, sql.ErrNoRows) {
		s.tx.fail(err)
	}
	return err
}

// exec runs st and returns the number of rows it affected. Use it only
// for single-statement batches: the count sums every statement.
func (s *Store) exec(ctx context.Context, st *stmt, args ...any) (int64, error) {
	if err := s.aborted(); err != nil {
		return 0, err
	}
	var res sql.Result
	var err error
	if s.tx != nil {
		res, err = s.tx.tx.ExecContext(ctx, s.sql[st.id], args...)
	} else {
		res, err = s.db.ExecContext(ctx, s.sql[st.id], args...)
	}
	if err != nil {
		return 0, s.check(fmt.Errorf("%s: %w", st.name, err))
	}
	n, err := res.RowsAffected()
	if err != nil {
		return 0, s.check(fmt.Errorf("%s: rows affected: %w", st.name, err))
	}
	return n, nil
}

// each runs st and calls scan for every row of its first result set. The
// rows are closed before each returns: without MARS a transaction's next
// statement cannot start while a result set is open.
func (s *Store) each(ctx context.Context, st *stmt, args []any, scan func(*sql.Rows) error) error {
	if err := s.aborted(); err != nil {
		return err
	}
	var rows *sql.Rows
	var err error
	if s.tx != nil {
		rows, err = s.tx.tx.QueryContext(ctx, s.sql[st.id], args...)
	} else {
		rows, err = s.db.QueryContext(ctx, s.sql[st.id], args...)
	}
	if err != nil {
		return s.check(fmt.Errorf("%s: %w", st.name, err))
	}
	defer rows.Close()
	for rows.Next() {
		if err := scan(rows); err != nil {
			return s.check(fmt.Errorf("%s: %w", st.name, err))
		}
	}
	// Reading past the last row also surfaces errors the server raised
	// after it, such as a failed statement later in the batch.
	if err := rows.Err(); err != nil {
		return s.check(fmt.Errorf("%s: %w", st.name, err))
	}
	if err := rows.Close(); err != nil {
		return s.check(fmt.Errorf("%s: %w", st.name, err))
	}
	return nil
}

// one runs st and scans its first row into dest. It returns an error
// wrapping sql.ErrNoRows when there is none.
func (s *Store) one(ctx context.Context, st *stmt, args []any, dest ...any) error {
	found := false
	err := s.each(ctx, st, args, func(r *sql.Rows) error {
		if found {
			return nil
		}
		found = true
		return r.Scan(dest...)
	})
	if err != nil {
		return err
	}
	if !found {
		return fmt.Errorf("%s: %w", st.name, sql.ErrNoRows)
	}
	return nil
}
