package recordlog

import (
	"cmp"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
)

// DefaultCompactMin is the default for Options.CompactMin.
const DefaultCompactMin = 1 << 20

// ErrClosed is returned for records queued after Close.
var ErrClosed = errors.New("record log is closed")

// Action says what compaction does with a record.
type Action int

const (
	// Keep means the record is its key's latest state so far.
	Keep Action = iota
	// Drop means the record ends its key; the key's records all go.
	Drop
	// Skip means the record is invalid; it goes, its key's earlier
	// records stay.
	Skip
)

// Options configures a Log.
type Options struct {
	// Header starts the file and names its format and version. Required.
	Header string
	// Classify returns a record's key and what compaction does with it;
	// it must return Skip for every record Open's replay rejects. It may
	// be called from any goroutine, with no lock of the caller's held.
	// Required.
	Classify func(body []byte) (key int64, a Action)
	// CompactMin is the log size below which it is never compacted.
	// Above it, the log is compacted once it has doubled since the last
	// compaction. Defaults to DefaultCompactMin.
	CompactMin int64
	// Logger receives reports of damage and of failed background writes.
	// Defaults to discarding them.
	Logger *slog.Logger
}

// Log is an open record log. Its methods are safe for concurrent use.
type Log struct {
	path string
	opts Options
	log  *slog.Logger

	mu        sync.Mutex
	cond      *sync.Cond // broadcast when a write ends or a flusher stops
	f         *os.File   // used by the writer only
	size      int64      // bytes of f that hold the header and records
	compacted int64      // size after the last compaction, or when it failed
	queue     []byte     // framed records waiting for a writer
	spare     []byte     // a written queue, reused
	queued    *Pending   // the write the queue goes out in; nil when empty
	writing   bool       // a writer holds f
	flushing  bool       // a background flusher runs
	compact   bool       // a compaction is due
	closed    bool
	hook      func(n int) error
	wg        sync.WaitGroup // background flushers
}

// Pending is a write records were queued for.
type Pending struct {
	l    *Log
	sync bool
	done bool
	err  error
}

// Open opens the log at path, creating it when missing, and calls replay
// with the body of every whole record, in order (the body is only valid
// during the call). A stretch that holds no whole record, or a record
// replay returns an error for, is logged and skipped, and the log is
// rewritten without it before Open returns; so is a log that has grown
// past Options.CompactMin. Open fails when the log cannot be read or
// written.
func Open(path string, opts Options, replay func(body []byte) error) (*Log, error) {
	if opts.Header == "" || opts.Classify == nil {
		return nil, errors.New("record log: Header and Classify are required")
	}
	opts.CompactMin = cmp.Or(opts.CompactMin, DefaultCompactMin)
	l := &Log{path: path, opts: opts, log: cmp.Or(opts.Logger, slog.New(slog.DiscardHandler))}
	l.cond = sync.NewCond(&l.mu)
	if err := os.Remove(l.tmpPath()); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("remove unfinished compaction: %w", err)
	}
	rewrite := false
	data, err := os.ReadFile(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		rewrite = true
	case err != nil:
		return nil, fmt.Errorf("read %s: %w", path, err)
	default:
		body := data
		if len(data) >= len(opts.Header) && string(data[:len(opts.Header)]) == opts.Header {
			body = data[len(opts.Header):]
		} else {
			rewrite = true
			if len(data) > 0 {
				l.log.Error("record log: the file does not start with the expected header; reading what records it holds",
					slog.String("path", path))
			}
		}
		base := len(data) - len(body)
		for _, d := range Scan(body, func(b []byte, off int) {
			if err := replay(b); err != nil {
				rewrite = true
				l.log.Error("record log: skipping an invalid record", slog.String("path", path),
					slog.Int("offset", base+off), slog.Any("error", err))
			}
		}) {
			rewrite = true
			if d.Tail {
				l.log.Warn("record log: dropping a torn record at the end (a write cut short by a crash)",
					slog.String("path", path), slog.Int("offset", base+d.Off), slog.Int("bytes", d.Len))
			} else {
				l.log.Error("record log: skipping damaged bytes; what was recorded there is lost",
					slog.String("path", path), slog.Int("offset", base+d.Off), slog.Int("bytes", d.Len))
			}
		}
		f, err := os.OpenFile(path, os.O_RDWR, 0)
		if err != nil {
			return nil, fmt.Errorf("open %s: %w", path, err)
		}
		l.f, l.size = f, int64(len(data))
	}
	l.compacted = l.size
	if rewrite || l.size >= opts.CompactMin {
		l.mu.Lock()
		err := l.compactLocked()
		l.mu.Unlock()
		if err != nil {
			if l.f != nil {
				// Nothing was written through l.f yet; the compaction's
				// error is the one to report.
				_ = l.f.Close()
			}
			return nil, err
		}
	}
	return l, nil
}

func (l *Log) tmpPath() string { return l.path + ".compact" }

// Queue adds a record to the log's next write and returns that write; sync
// asks for the write to be flushed to stable storage. Records queued
// earlier are written earlier. Nothing is written until someone waits for
// the write or calls Flush.
func (l *Log) Queue(sync bool, body []byte) *Pending {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(body) > MaxBody {
		return &Pending{l: l, done: true, err: ErrTooLarge}
	}
	if l.closed {
		return &Pending{l: l, done: true, err: ErrClosed}
	}
	l.queue = AppendRecord(l.queue, body)
	if l.queued == nil {
		l.queued = &Pending{l: l}
	}
	l.queued.sync = l.queued.sync || sync
	return l.queued
}

// Wait waits until the write is done and returns its error. When no write
// is in progress it makes the write itself, with everything queued by
// then.
func (p *Pending) Wait() error {
	l := p.l
	l.mu.Lock()
	defer l.mu.Unlock()
	for !p.done {
		if !l.writing {
			_ = l.writeLocked()
			continue
		}
		l.cond.Wait()
	}
	return p.err
}

// Flush makes sure what is queued gets written without the caller
// waiting: a background goroutine writes it (and compacts the log when
// due). A failed background write is logged.
func (l *Log) Flush() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.flushLocked()
}

// Compact rewrites the log with the last record of each live key now,
// waiting for a write in progress first.
func (l *Log) Compact() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	for l.writing {
		l.cond.Wait()
	}
	if l.closed {
		return ErrClosed
	}
	return l.compactLocked()
}

// Sync waits until every record queued so far is written, writing them
// itself when nobody else does. It returns the error of that write when
// records were still queued, nil otherwise.
func (l *Log) Sync() error {
	l.mu.Lock()
	if p := l.queued; p != nil {
		l.mu.Unlock()
		return p.Wait()
	}
	defer l.mu.Unlock()
	for l.writing {
		l.cond.Wait()
	}
	return nil
}

// Settle waits until nothing is queued, no write is in progress and no
// background flusher runs, so that a compaction that was due is done.
func (l *Log) Settle() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for l.writing || l.flushing || l.queued != nil {
		if !l.writing && !l.flushing {
			_ = l.writeLocked()
			continue
		}
		l.cond.Wait()
	}
}

// SetWriteHook makes fn run before each write of n bytes (appends and
// compactions), with no lock held; an error from fn fails the write
// without touching the file. Nil removes it. Tests use it to hold or fail
// writes.
func (l *Log) SetWriteHook(fn func(n int) error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.hook = fn
}

// Close writes what is queued, waits for background work and closes the
// file. Records queued later fail with ErrClosed.
func (l *Log) Close() error {
	l.mu.Lock()
	l.closed = true
	for l.writing || l.flushing {
		l.cond.Wait()
	}
	var err error
	if l.queued != nil {
		err = l.writeLocked()
	}
	f := l.f
	l.f = nil
	l.mu.Unlock()
	l.wg.Wait()
	if f != nil {
		err = errors.Join(err, f.Close())
	}
	return err
}

func (l *Log) flushLocked() {
	if l.flushing || (l.closed && l.queued == nil) {
		return
	}
	l.flushing = true
	l.wg.Add(1)
	go l.flusher()
}

// flusher writes queued records until none are left, compacting the log
// when due.
func (l *Log) flusher() {
	defer l.wg.Done()
	l.mu.Lock()
	defer l.mu.Unlock()
	for {
		switch {
		case l.writing:
			l.cond.Wait()
			continue
		case l.queued != nil:
			if err := l.writeLocked(); err != nil {
				l.log.Warn("record log: cannot write records", slog.String("path", l.path), slog.Any("error", err))
			}
			continue
		case l.compact && !l.closed:
			if err := l.compactLocked(); err != nil {
				l.log.Warn("record log: cannot compact", slog.String("path", l.path), slog.Any("error", err))
			}
			continue
		}
		break
	}
	l.flushing = false
	l.cond.Broadcast()
}

// writeLocked writes the queue as one write. The caller holds mu and no
// write is in progress; mu is released during the write. A failed write
// leaves the end of the log where it was: the next write goes over
// whatever part of this one reached the file.
func (l *Log) writeLocked() error {
	p, buf := l.queued, l.queue
	if p == nil {
		return nil
	}
	l.queued, l.queue, l.spare = nil, l.spare[:0], nil
	l.writing = true
	f, off, hook := l.f, l.size, l.hook
	l.mu.Unlock()
	var err error
	if hook != nil {
		err = hook(len(buf))
	}
	if err == nil {
		err = appendAt(f, off, buf, p.sync)
	}
	l.mu.Lock()
	l.writing = false
	if err == nil {
		l.size += int64(len(buf))
	} else {
		err = fmt.Errorf("write %s: %w", l.path, err)
	}
	l.spare = buf[:0]
	p.done, p.err = true, err
	if !l.closed && l.size >= l.opts.CompactMin && l.size >= 2*l.compacted {
		l.compact = true
		l.flushLocked()
	}
	l.cond.Broadcast()
	return err
}

func appendAt(f *os.File, off int64, buf []byte, sync bool) error {
	if f == nil {
		return errors.New("the file is not open")
	}
	if _, err := f.WriteAt(buf, off); err != nil {
		return err
	}
	if sync {
		return f.Sync()
	}
	return nil
}

// compactLocked rewrites the log with the last record of each live key,
// read back from the file, and replaces the log with it, flushed to
// stable storage. The caller holds mu and no write is in progress; mu is
// released during the rewrite. On failure the old log stays.
func (l *Log) compactLocked() error {
	l.compact = false
	l.writing = true
	f, size, hook := l.f, l.size, l.hook
	l.mu.Unlock()
	nf, newSize, err := l.rewrite(f, size, hook)
	l.mu.Lock()
	l.writing = false
	l.cond.Broadcast()
	l.f = nf
	if err != nil {
		l.compacted = max(l.size, l.opts.CompactMin)
		return fmt.Errorf("compact %s: %w", l.path, err)
	}
	l.size, l.compacted = newSize, newSize
	return nil
}

// rewrite does the work of a compaction and returns the open log.
func (l *Log) rewrite(f *os.File, size int64, hook func(int) error) (*os.File, int64, error) {
	var data []byte
	if f != nil {
		data = make([]byte, size)
		if _, err := f.ReadAt(data, 0); err != nil {
			return f, 0, fmt.Errorf("read: %w", err)
		}
		if len(data) >= len(l.opts.Header) && string(data[:len(l.opts.Header)]) == l.opts.Header {
			data = data[len(l.opts.Header):]
		}
	}
	type last struct{ off, n int }
	latest := make(map[int64]last)
	Scan(data, func(body []byte, off int) {
		key, a := l.opts.Classify(body)
		switch a {
		case Keep:
			latest[key] = last{off, FrameLen + len(body)}
		case Drop:
			delete(latest, key)
		}
	})
	keep := make([]last, 0, len(latest))
	for _, r := range latest {
		keep = append(keep, r)
	}
	slices.SortFunc(keep, func(a, b last) int { return cmp.Compare(a.off, b.off) })
	out := make([]byte, 0, len(l.opts.Header)+len(data)/2)
	out = append(out, l.opts.Header...)
	for _, r := range keep {
		out = append(out, data[r.off:r.off+r.n]...)
	}
	if hook != nil {
		if err := hook(len(out)); err != nil {
			return f, 0, err
		}
	}
	tmp := l.tmpPath()
	if err := writeSynced(tmp, out); err != nil {
		_ = os.Remove(tmp)
		return f, 0, err
	}
	// Windows cannot rename over an open file. Its Close error is
	// dropped: the live records were read back from it and are flushed
	// in tmp, which replaces it; on a failed rename it is opened again.
	if f != nil {
		_ = f.Close()
	}
	if err := os.Rename(tmp, l.path); err != nil {
		_ = os.Remove(tmp)
		nf, _ := os.OpenFile(l.path, os.O_RDWR, 0)
		return nf, 0, fmt.Errorf("replace: %w", err)
	}
	nf, err := os.OpenFile(l.path, os.O_RDWR, 0)
	if err != nil {
		return nil, 0, fmt.Errorf("open: %w", err)
	}
	if err := syncDir(filepath.Dir(l.path)); err != nil {
		return nf, 0, fmt.Errorf("sync dir: %w", err)
	}
	return nf, int64(len(out)), nil
}

// writeSynced writes data to a new file at path and flushes it.
func writeSynced(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	// On failure the caller removes the file: the write's error is the
	// one to report, not Close's.
	if _, err := f.Write(data); err != nil {
		_ = f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		_ = f.Close()
		return err
	}
	return f.Close()
}
