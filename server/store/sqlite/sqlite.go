// Package sqlite is the embedded SQLite backend of [store.Store], the
// default state store of a single-machine batond.
//
// A [Store] keeps two connection pools on one database file in WAL mode: a
// write pool of exactly one connection, whose transactions begin IMMEDIATE,
// for every write and every [Store.InTx]; and a read-only pool for reads
// made outside a transaction, which WAL lets run beside the writer. Because
// SQLite serializes writers, every guarded transition, claim and overlap
// check runs alone, and event ids are assigned in commit order.
//
// Leases are compared against the clock of the process that embeds the
// database, in unix milliseconds UTC.
//
// A function passed to InTx must use the transaction's Store it is given:
// the write connection is held for the whole transaction, so a write
// through the outer Store from inside fn waits until ctx is done.
package sqlite

import (
	"cmp"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"

	"github.com/batonhq/baton/server/store"
)

// Config configures [Open].
type Config struct {
	// Path is the database file. Required. It is created when missing.
	Path string
	// Synchronous is the SQLite synchronous level: "normal" (the default:
	// survives a process crash; the last commits may be lost on power loss
	// in WAL mode) or "full" (an fsync per commit).
	Synchronous string
	// BusyTimeout is how long a writer waits for another process's lock
	// before the transaction is retried. Defaults to 5s.
	BusyTimeout time.Duration
	// Logger receives the store's log records. Defaults to discarding them.
	Logger *slog.Logger
	// Clock tells the time the store records (created, started, finished
	// times and leases). Defaults to time.Now; tests inject their own.
	Clock func() time.Time
}

const defaultBusyTimeout = 5 * time.Second

// retryBase is the first backoff of a transaction retried after
// SQLITE_BUSY; see [store.Retry].
const retryBase = 20 * time.Millisecond

// Store is a [store.Store] on a SQLite database file. It is safe for
// concurrent use.
type Store struct {
	db *handles
	// tx is set on the Store an InTx function receives; its methods then run
	// in that transaction.
	tx *txn
}

var _ store.Store = (*Store)(nil)

// handles are the pools and prepared statements a Store and the Stores of
// its transactions share.
type handles struct {
	clock  func() time.Time
	w, r   *sql.DB
	wStmts stmtCache // prepared on w; bound to a transaction per use
	rStmts stmtCache // prepared on r
	log    *slog.Logger

	// pending lists statements first prepared inside a transaction. They
	// join wStmts once the write connection is free again: preparing on w
	// while a transaction holds its only connection would wait forever.
	mu      sync.Mutex
	pending map[string]struct{}
}

// txn is one write transaction and the statements bound to it.
type txn struct {
	tx    *sql.Tx
	mu    sync.Mutex
	stmts map[string]*sql.Stmt // query text -> statement bound to tx
}

// Open opens (creating when missing) the database file cfg.Path. It does
// not migrate: call [Store.Migrate] before using the store.
func Open(ctx context.Context, cfg Config) (*Store, error) {
	if cfg.Path == "" {
		return nil, errors.New("sqlite: config: Path is required")
	}
	syncLevel, err := synchronousLevel(cfg.Synchronous)
	if err != nil {
		return nil, err
	}
	if cfg.BusyTimeout < 0 {
		return nil, fmt.Errorf("sqlite: config: BusyTimeout %s is negative", cfg.BusyTimeout)
	}
	busy := cmp.Or(cfg.BusyTimeout, defaultBusyTimeout)
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	path, err := filepath.Abs(cfg.Path)
	if err != nil {
		return nil, fmt.Errorf("sqlite: config: Path: %w", err)
	}

	// A file URI keeps characters such as '?' and '#' in the path intact.
	uriPath := filepath.ToSlash(path)
	if !strings.HasPrefix(uriPath, "/") {
		uriPath = "/" + uriPath // Windows: file:///C:/...
	}
	file := (&url.URL{Scheme: "file", Path: uriPath}).String()
	busyMS := strconv.FormatInt(busy.Milliseconds(), 10)
	wdsn := file + "?_txlock=immediate" +
		"&_pragma=busy_timeout(" + busyMS + ")" +
		"&_pragma=journal_mode(WAL)" +
		"&_pragma=synchronous(" + syncLevel + ")" +
		"&_pragma=foreign_keys(1)"
	rdsn := file + "?_pragma=busy_timeout(" + busyMS + ")" +
		"&_pragma=query_only(1)"

	w, err := sql.Open("sqlite", wdsn)
	if err != nil {
		return nil, fmt.Errorf("sqlite: open %s: %w", path, err)
	}
	// One writer: SQLite allows no more, and queueing in the pool is cheaper
	// than contending for the file lock.
	w.SetMaxOpenConns(1)
	w.SetMaxIdleConns(1)
	w.SetConnMaxLifetime(0)
	w.SetConnMaxIdleTime(0)
	// The first connection creates the file and switches it to WAL before
	// any reader opens it.
	if err := w.PingContext(ctx); err != nil {
		return nil, errors.Join(fmt.Errorf("sqlite: open %s: %w", path, err), w.Close())
	}
	r, err := sql.Open("sqlite", rdsn)
	if err != nil {
		return nil, errors.Join(fmt.Errorf("sqlite: open %s: %w", path, err), w.Close())
	}
	n := max(4, runtime.GOMAXPROCS(0))
	r.SetMaxOpenConns(n)
	r.SetMaxIdleConns(n)
	r.SetConnMaxLifetime(0)
	r.SetConnMaxIdleTime(0)
	if err := r.PingContext(ctx); err != nil {
		return nil, errors.Join(fmt.Errorf("sqlite: open %s: %w", path, err), r.Close(), w.Close())
	}
	clock := cfg.Clock
	if clock == nil {
		clock = time.Now
	}
	h := &handles{w: w, r: r, log: log.With(slog.String("component", "store.sqlite")), clock: clock}
	h.wStmts.db = w
	h.rStmts.db = r
	return &Store{db: h}, nil
}

func synchronousLevel(s string) (string, error) {
	switch strings.ToLower(s) {
	case "", "normal":
		return "NORMAL", nil
	case "full":
		return "FULL", nil
	}
	return "", fmt.Errorf("sqlite: config: Synchronous %q: want normal or full", s)
}

// ConfigFromURL parses a store URL of the form
// "sqlite:///abs/path.db?synchronous=full&busy_timeout=10s" (or
// "sqlite:relative/path.db", or "sqlite:///C:/path.db" on Windows). The
// query parameters synchronous and busy_timeout set the Config fields of
// the same name; any other parameter is an error naming it.
func ConfigFromURL(u *url.URL) (Config, error) {
	var cfg Config
	if u.Scheme != "sqlite" {
		return cfg, fmt.Errorf("sqlite url: scheme %q: want sqlite", u.Scheme)
	}
	if u.User != nil || u.Host != "" {
		return cfg, fmt.Errorf("sqlite url: host %q: want sqlite:///absolute/path or sqlite:relative/path", u.Host)
	}
	cfg.Path = cmp.Or(u.Opaque, u.Path)
	if len(cfg.Path) >= 3 && cfg.Path[0] == '/' && cfg.Path[2] == ':' && isLetter(cfg.Path[1]) {
		cfg.Path = cfg.Path[1:] // sqlite:///C:/baton/baton.db names C:/baton/baton.db
	}
	if cfg.Path == "" {
		return cfg, errors.New("sqlite url: path is empty")
	}
	if u.Fragment != "" {
		return cfg, fmt.Errorf("sqlite url: unexpected fragment %q", u.Fragment)
	}
	q, err := url.ParseQuery(u.RawQuery)
	if err != nil {
		return cfg, fmt.Errorf("sqlite url: query: %w", err)
	}
	for k, vs := range q {
		if len(vs) != 1 {
			return cfg, fmt.Errorf("sqlite url: parameter %s given %d times", k, len(vs))
		}
		v := vs[0]
		switch k {
		case "synchronous":
			if _, err := synchronousLevel(v); err != nil || v == "" {
				return cfg, fmt.Errorf("sqlite url: synchronous %q: want normal or full", v)
			}
			cfg.Synchronous = strings.ToLower(v)
		case "busy_timeout":
			d, err := time.ParseDuration(v)
			if err != nil || d <= 0 {
				return cfg, fmt.Errorf("sqlite url: busy_timeout %q: want a positive duration such as 10s", v)
			}
			cfg.BusyTimeout = d
		default:
			return cfg, fmt.Errorf("sqlite url: unknown parameter %q", k)
		}
	}
	return cfg, nil
}

func isLetter(c byte) bool { return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' }

// Close releases the store's connections. Close on the Store of a
// transaction returns an error and closes nothing.
func (s *Store) Close() error {
	if s.tx != nil {
		return errors.New("sqlite: close: called inside a transaction")
	}
	return errors.Join(s.db.wStmts.close(), s.db.rStmts.close(), s.db.r.Close(), s.db.w.Close())
}

// InTx runs fn in one IMMEDIATE write transaction and commits it when fn
// returns nil; see [store.Store.InTx]. On SQLITE_BUSY (another process held
// the database longer than the busy timeout) the whole function is retried.
func (s *Store) InTx(ctx context.Context, fn func(tx store.Store) error) error {
	return s.write(ctx, func(tx *Store) error { return fn(tx) })
}

// write runs fn in the current transaction, or in a new one retried on
// SQLITE_BUSY.
func (s *Store) write(ctx context.Context, fn func(tx *Store) error) error {
	if s.tx != nil {
		return fn(s)
	}
	return store.Retry(ctx, retryBase, isRetryable, func() error {
		tx, err := s.db.w.BeginTx(ctx, nil)
		if err != nil {
			return fmt.Errorf("begin: %w", err)
		}
		done := false
		defer func() {
			if !done {
				// fn failed or panicked: release the write connection.
				_ = tx.Rollback()
			}
			s.db.preparePending(ctx)
		}()
		if err := fn(&Store{db: s.db, tx: &txn{tx: tx}}); err != nil {
			return err
		}
		done = true // Commit ends the transaction also when it fails
		if err := tx.Commit(); err != nil {
			return fmt.Errorf("commit: %w", err)
		}
		return nil
	})
}

// stmt returns the prepared statement for q: bound to the transaction on a
// transaction's Store, else on the read pool. Write methods call it only
// inside write.
func (s *Store) stmt(ctx context.Context, q string) (*sql.Stmt, error) {
	if s.tx == nil {
		return s.db.rStmts.get(ctx, q)
	}
	t := s.tx
	t.mu.Lock()
	defer t.mu.Unlock()
	if ts, ok := t.stmts[q]; ok {
		return ts, nil
	}
	var ts *sql.Stmt
	if st, ok := s.db.wStmts.load(q); ok {
		ts = t.tx.StmtContext(ctx, st) // reuses st's prepared handle; closed with the transaction
	} else {
		var err error
		if ts, err = t.tx.PrepareContext(ctx, q); err != nil {
			return nil, fmt.Errorf("prepare: %w", err)
		}
		s.db.mu.Lock()
		if s.db.pending == nil {
			s.db.pending = make(map[string]struct{})
		}
		s.db.pending[q] = struct{}{}
		s.db.mu.Unlock()
	}
	if t.stmts == nil {
		t.stmts = make(map[string]*sql.Stmt)
	}
	t.stmts[q] = ts
	return ts, nil
}

// preparePending prepares on the write pool the statements first used
// inside a transaction. It must run while no transaction holds the write
// connection. A statement that fails to prepare is left to the next use.
func (h *handles) preparePending(ctx context.Context) {
	h.mu.Lock()
	qs := h.pending
	h.pending = nil
	h.mu.Unlock()
	for q := range qs {
		if _, err := h.wStmts.get(ctx, q); err != nil {
			h.log.DebugContext(ctx, "prepare statement", slog.Any("error", err))
		}
	}
}

func (s *Store) exec(ctx context.Context, q string, args ...any) (sql.Result, error) {
	st, err := s.stmt(ctx, q)
	if err != nil {
		return nil, err
	}
	return st.ExecContext(ctx, args...)
}

func (s *Store) query(ctx context.Context, q string, args ...any) (*sql.Rows, error) {
	st, err := s.stmt(ctx, q)
	if err != nil {
		return nil, err
	}
	return st.QueryContext(ctx, args...)
}

// queryRow runs q and scans its first row into dest. It returns
// sql.ErrNoRows when there is none.
func (s *Store) queryRow(ctx context.Context, q string, args []any, dest ...any) error {
	st, err := s.stmt(ctx, q)
	if err != nil {
		return err
	}
	return st.QueryRowContext(ctx, args...).Scan(dest...)
}

// stmtCache prepares each query once per pool.
type stmtCache struct {
	db *sql.DB
	m  sync.Map // query text -> *sql.Stmt
	mu sync.Mutex
}

func (c *stmtCache) load(q string) (*sql.Stmt, bool) {
	st, ok := c.m.Load(q)
	if !ok {
		return nil, false
	}
	return st.(*sql.Stmt), true
}

func (c *stmtCache) get(ctx context.Context, q string) (*sql.Stmt, error) {
	if st, ok := c.load(q); ok {
		return st, nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if st, ok := c.m.Load(q); ok {
		return st.(*sql.Stmt), nil
	}
	st, err := c.db.PrepareContext(ctx, q)
	if err != nil {
		return nil, fmt.Errorf("prepare: %w", err)
	}
	c.m.Store(q, st)
	return st, nil
}

func (c *stmtCache) close() error {
	var errs []error
	c.m.Range(func(k, v any) bool {
		errs = append(errs, v.(*sql.Stmt).Close())
		c.m.Delete(k)
		return true
	})
	return errors.Join(errs...)
}

// sqliteCode returns the extended result code of a SQLite error, or 0.
func sqliteCode(err error) int {
	var e *sqlite.Error
	if errors.As(err, &e) {
		return e.Code()
	}
	return 0
}

// isRetryable reports whether err means another connection held a lock
// too long, so the whole transaction may be tried again.
func isRetryable(err error) bool {
	switch sqliteCode(err) & 0xff {
	case sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED:
		return true
	}
	return false
}

// isUnique reports whether err is a UNIQUE or PRIMARY KEY violation.
func isUnique(err error) bool {
	switch sqliteCode(err) {
	case sqlite3.SQLITE_CONSTRAINT_UNIQUE, sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY:
		return true
	}
	return false
}

// isForeignKey reports whether err is a FOREIGN KEY violation: a
// referenced row does not exist.
func isForeignKey(err error) bool {
	return sqliteCode(err) == sqlite3.SQLITE_CONSTRAINT_FOREIGNKEY
}

// now is the store's clock, in unix milliseconds.
// now is the store's clock in the milliseconds the tables hold.
func (s *Store) now() int64 { return s.db.clock().UnixMilli() }
