package agent

import (
	"cmp"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"

	batonv1 "github.com/batonhq/baton/gen/baton/v1"
)

// journalRetention is how long the journal remembers an acknowledged or
// abandoned attempt id, so that a StartTask repeated within that window is
// still ignored.
const journalRetention = 24 * time.Hour

// journalPruneEvery limits how often acknowledgements trigger a prune.
const journalPruneEvery = time.Minute

// compactMinSize is the log size below which the journal never compacts.
const compactMinSize = 1 << 20

// Journal file names in the journal directory.
const (
	journalLogName     = "log"
	journalCompactName = "log.compact"
)

// errAttemptSeen is returned by journal.begin for an attempt id the journal
// already holds.
var errAttemptSeen = errors.New("attempt already seen")

// errJournalClosed is returned for writes after journal.close.
var errJournalClosed = errors.New("journal is closed")

// recordState is where an attempt stands in the journal.
type recordState string

const (
	// stateStarted is written before the child starts.
	stateStarted recordState = "started"
	// stateFinished holds an outcome the control plane has not acked.
	stateFinished recordState = "finished"
	// stateRejected holds an unacked REJECTED outcome. Nothing ran, so the
	// attempt id does not count as seen.
	stateRejected recordState = "rejected"
	// stateAcked is a tombstone: the outcome was acked and dropped.
	stateAcked recordState = "acked"
	// stateAbandoned is a tombstone for an attempt whose outcome is unknown:
	// an earlier agent process stopped while it ran, or its record was
	// unreadable.
	stateAbandoned recordState = "abandoned"
)

// record is where one attempt stands, in memory.
type record struct {
	state   recordState
	start   time.Time
	updated time.Time
	outcome *batonv1.TaskFinished // finished and rejected only
	// size is the record's length in the log, for the live-size estimate.
	size int
	// written says the write that carries the record has completed,
	// successfully or not (a failed outcome is still reported by this
	// process). Only written outcomes are listed by unacked: an outcome
	// reaches the control plane only once it is on disk.
	written bool
}

// batch is records queued for one write to the log.
type batch struct {
	recs []*record // marked written when the write completes
	done bool
	err  error
}

// journal is the agent's on-disk memory of attempts: an append-only log in
// dir of the states attempts go through (begin, finish, ack), replayed on
// open. It records an attempt before its child starts (so a restarted
// agent never starts it twice) and keeps each outcome from the moment it
// is known until the control plane acknowledges it.
//
// A write is an append to one open file; writes that arrive together go
// out as one (group commit), written by whichever caller finds the log
// idle, or, for acknowledgements nobody waits for, by a short-lived
// background goroutine. Once the log holds more than twice what is live
// (and at least compactMinSize), the live records are rewritten to a new
// file that replaces the log atomically. Without fsync a record survives
// an agent crash once its write returned; with fsync it also survives a
// power loss. A journal is safe for concurrent use.
type journal struct {
	dir   string
	fsync bool
	log   *slog.Logger
	now   func() time.Time
	// compactMin is compactMinSize; tests lower it.
	compactMin int64

	mu sync.Mutex
	// testHookWrite, when set, runs before each write of n bytes (with mu
	// released); tests set it under mu.
	testHookWrite func(n int)
	cond          *sync.Cond // broadcast when a write ends or a flusher stops
	recs          map[int64]*record
	live          int64 // bytes the live records take in the log
	lastPrune     time.Time
	f             *os.File // the log; only the writer uses it
	size          int64    // bytes of the log that hold records
	queue         []byte   // encoded records waiting for a writer
	spare         []byte   // a written queue, reused
	queued        *batch   // the batch queue belongs to; nil when empty
	writing       bool     // a writer holds f
	flushing      bool     // a background flusher runs
	compact       bool     // the log should be compacted
	// compactFailed is the log size when a compaction last failed: the
	// next one waits until the log has grown by compactMin again.
	compactFailed int64
	closed        bool
	wg            sync.WaitGroup // background flushers
}

// openJournal loads the journal in dir, creating dir if needed. Damaged
// records are skipped with a log line and the log is rewritten without
// them; journal files of the format before the log (one JSON file per
// attempt) are migrated into the log and removed. Records of attempts
// that were running when the previous agent process stopped stay as they
// are until abandonStarted: the runner may still run them.
func openJournal(dir string, fsync bool, log *slog.Logger, now func() time.Time) (*journal, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create journal dir: %w", err)
	}
	j := &journal{dir: dir, fsync: fsync, log: log, now: now, compactMin: compactMinSize, recs: make(map[int64]*record)}
	j.cond = sync.NewCond(&j.mu)
	rewrite, err := j.load()
	if err != nil {
		return nil, err
	}
	legacy, err := j.loadLegacy()
	if err != nil {
		return nil, err
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	j.pruneLocked()
	if rewrite || len(legacy) > 0 || j.compactDueLocked() {
		if err := j.compactLocked(); err != nil {
			if j.f != nil {
				j.f.Close()
			}
			return nil, fmt.Errorf("rewrite journal: %w", err)
		}
	}
	if err := j.removeLegacy(legacy); err != nil {
		j.f.Close()
		return nil, err
	}
	return j, nil
}

// load replays the log, if there is one, and opens it for appending. It
// reports whether the log must be rewritten: it is damaged, or has no
// valid header.
func (j *journal) load() (rewrite bool, err error) {
	path := filepath.Join(j.dir, journalLogName)
	if err := os.Remove(filepath.Join(j.dir, journalCompactName)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return false, fmt.Errorf("remove unfinished journal rewrite: %w", err)
	}
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("read journal: %w", err)
	}
	body := data
	if len(data) >= len(logHeader) && string(data[:len(logHeader)]) == logHeader {
		body = data[len(logHeader):]
	} else {
		rewrite = true
		if len(data) > 0 {
			j.log.Error("journal: the log does not start with the journal header; reading what records it holds",
				slog.String("path", path))
		}
	}
	base := len(data) - len(body)
	damage := scanLog(body, j.replay, func(off int, err error) {
		rewrite = true
		j.log.Error("journal: skipping an invalid record", slog.Int("offset", base+off), slog.Any("error", err))
	})
	for _, d := range damage {
		rewrite = true
		if d.tail {
			j.log.Warn("journal: dropping a torn record at the end of the log (a write cut short by a crash)",
				slog.Int("offset", base+d.off), slog.Int("bytes", d.len))
		} else {
			j.log.Error("journal: skipping damaged bytes in the log; an attempt recorded there may be forgotten",
				slog.Int("offset", base+d.off), slog.Int("bytes", d.len))
		}
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return false, fmt.Errorf("open journal: %w", err)
	}
	j.f, j.size = f, int64(len(data))
	return rewrite, nil
}

// replay applies one record read from the log.
func (j *journal) replay(r journalEntry, _ int) error {
	if r.kind == kindForget {
		j.dropLocked(r.id)
		return nil
	}
	rec := &record{state: stateOf[r.kind], start: r.start, updated: r.updated, written: true, size: recordLen(len(r.outcome))}
	if len(r.outcome) > 0 {
		var tf batonv1.TaskFinished
		if err := proto.Unmarshal(r.outcome, &tf); err != nil {
			return fmt.Errorf("attempt %d: decode outcome: %w", r.id, err)
		}
		if tf.GetAttemptId() != r.id {
			return fmt.Errorf("attempt %d: the outcome names attempt %d", r.id, tf.GetAttemptId())
		}
		rec.outcome = &tf
	}
	j.setLocked(r.id, rec)
	return nil
}

// setLocked makes rec attempt id's record.
func (j *journal) setLocked(id int64, rec *record) {
	if old, ok := j.recs[id]; ok {
		j.live -= int64(old.size)
	}
	j.recs[id] = rec
	j.live += int64(rec.size)
}

// dropLocked forgets attempt id.
func (j *journal) dropLocked(id int64) {
	if old, ok := j.recs[id]; ok {
		j.live -= int64(old.size)
		delete(j.recs, id)
	}
}

// abandonStarted turns the record of every attempt still marked started,
// except those running reports true for, into a tombstone: an earlier
// agent process stopped while it ran and no runner knows of it, so its
// outcome is unknown, and it must not start again.
func (j *journal) abandonStarted(running func(id int64) bool) {
	j.mu.Lock()
	defer j.mu.Unlock()
	var b *batch
	for id, rec := range j.recs {
		if rec.state != stateStarted || running(id) {
			continue
		}
		j.log.Warn("journal: attempt was running when the agent stopped; its outcome is unknown",
			slog.Int64("attempt_id", id))
		tomb := &record{state: stateAbandoned, start: rec.start, updated: j.now()}
		b = j.queueLocked(id, tomb, nil)
	}
	if b == nil {
		return
	}
	if err := j.waitLocked(b); err != nil {
		j.log.Warn("journal: cannot record abandoned attempts", slog.Any("error", err))
	}
}

// lookup returns the state of the attempt's record and its unacknowledged
// outcome, if any. ok is false when the journal holds no record.
func (j *journal) lookup(id int64) (state recordState, outcome *batonv1.TaskFinished, ok bool) {
	j.mu.Lock()
	defer j.mu.Unlock()
	rec, ok := j.recs[id]
	if !ok {
		return "", nil, false
	}
	return rec.state, rec.outcome, true
}

// begin records that the attempt is about to start and returns once the
// record is written (and flushed, with fsync). It returns errAttemptSeen
// when the id is already known, and an error when the record could not be
// written; the child must not start in either case.
func (j *journal) begin(id int64, start time.Time) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	old, ok := j.recs[id]
	if ok && old.state != stateRejected {
		return errAttemptSeen
	}
	if j.closed {
		return errJournalClosed
	}
	rec := &record{state: stateStarted, start: start, updated: j.now()}
	err := j.waitLocked(j.queueLocked(id, rec, nil))
	if err != nil && j.recs[id] == rec {
		// Not recorded: the attempt does not start, and may start later.
		if ok {
			j.setLocked(id, old)
		} else {
			j.dropLocked(id)
		}
	}
	return err
}

// finish keeps tf until ack and returns once it is written (and flushed,
// with fsync). The outcome is held in memory even when writing it fails,
// so this process still reports it after a reconnect; the returned error
// says it would not survive a restart.
func (j *journal) finish(tf *batonv1.TaskFinished) error {
	return j.finishLater(tf)()
}

// finishLater records tf in memory and queues its write without waiting
// for it; the returned func waits for the write, writing the queue itself
// if nobody else does, and returns what finish would. Until the write has
// ended, unacked does not list tf.
func (j *journal) finishLater(tf *batonv1.TaskFinished) (wait func() error) {
	id := tf.GetAttemptId()
	data, encErr := proto.Marshal(tf)
	if encErr == nil && recFixedLen+len(data) > maxRecordBody {
		encErr = fmt.Errorf("outcome is %d bytes, more than the journal takes", len(data))
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	state := stateFinished
	old, ok := j.recs[id]
	if tf.GetOutcome() == batonv1.AttemptOutcome_ATTEMPT_OUTCOME_REJECTED {
		// Nothing ran for a rejected attempt, also when it was recorded
		// as starting first.
		if !ok || old.state == stateRejected || old.state == stateStarted {
			state = stateRejected
		}
	}
	rec := &record{state: state, updated: j.now(), outcome: tf}
	if ok {
		rec.start = old.start
	}
	if encErr != nil || j.closed {
		rec.written = true
		j.setLocked(id, rec)
		err := cmp.Or(encErr, errJournalClosed)
		return func() error { return fmt.Errorf("journal outcome of attempt %d: %w", id, err) }
	}
	b := j.queueLocked(id, rec, data)
	return func() error {
		j.mu.Lock()
		defer j.mu.Unlock()
		return j.waitLocked(b)
	}
}

// ack forgets the outcomes of ids, keeping tombstones for attempts that
// ran. Unknown ids and ids without an outcome are ignored. It does not
// wait for the disk: the records are written in the background (a lost
// acknowledgement only makes the outcome be reported once more).
func (j *journal) ack(ids []int64) {
	j.mu.Lock()
	defer j.mu.Unlock()
	queued := false
	for _, id := range ids {
		rec, ok := j.recs[id]
		if !ok {
			continue
		}
		switch rec.state {
		case stateRejected:
			j.dropLocked(id)
			j.queueForgetLocked(id)
			queued = true
		case stateFinished:
			tomb := &record{state: stateAcked, start: rec.start, updated: j.now()}
			j.queueLocked(id, tomb, nil)
			queued = true
		}
	}
	if j.now().Sub(j.lastPrune) >= journalPruneEvery {
		j.pruneLocked()
	}
	if queued {
		j.flushLocked()
	}
}

// unacked returns the written outcomes not yet acknowledged, by attempt
// id.
func (j *journal) unacked() []*batonv1.TaskFinished {
	j.mu.Lock()
	defer j.mu.Unlock()
	var out []*batonv1.TaskFinished
	for _, rec := range j.recs {
		if rec.outcome != nil && rec.written {
			out = append(out, rec.outcome)
		}
	}
	slices.SortFunc(out, func(a, b *batonv1.TaskFinished) int { return cmp.Compare(a.GetAttemptId(), b.GetAttemptId()) })
	return out
}

// unackedCount returns how many outcomes wait for an acknowledgement,
// written or not.
func (j *journal) unackedCount() int {
	j.mu.Lock()
	defer j.mu.Unlock()
	n := 0
	for _, rec := range j.recs {
		if rec.outcome != nil {
			n++
		}
	}
	return n
}

// close writes what is queued and closes the log. Later writes fail with
// errJournalClosed; reads still work.
func (j *journal) close() error {
	j.mu.Lock()
	j.closed = true
	for j.writing || j.flushing {
		j.cond.Wait()
	}
	var err error
	if j.queued != nil {
		err = j.writeQueuedLocked()
	}
	f := j.f
	j.f = nil
	j.mu.Unlock()
	j.wg.Wait()
	if f != nil {
		err = errors.Join(err, f.Close())
	}
	if err != nil {
		return fmt.Errorf("close journal: %w", err)
	}
	return nil
}

// pruneLocked forgets tombstones older than journalRetention. Their
// records leave the log with the next compaction.
func (j *journal) pruneLocked() {
	now := j.now()
	j.lastPrune = now
	for id, rec := range j.recs {
		if rec.state != stateAcked && rec.state != stateAbandoned {
			continue
		}
		if now.Sub(rec.updated) >= journalRetention {
			j.dropLocked(id)
		}
	}
}

// queueLocked makes rec attempt id's record and queues its write; data is
// the encoded outcome, if any. It returns the batch that will carry it.
func (j *journal) queueLocked(id int64, rec *record, data []byte) *batch {
	before := len(j.queue)
	j.queue = appendRecord(j.queue, kindOf[rec.state], id, rec.start, rec.updated, data)
	rec.size = len(j.queue) - before
	j.setLocked(id, rec)
	if j.queued == nil {
		j.queued = &batch{}
	}
	j.queued.recs = append(j.queued.recs, rec)
	return j.queued
}

// queueForgetLocked queues a record that drops attempt id.
func (j *journal) queueForgetLocked(id int64) {
	j.queue = appendRecord(j.queue, kindForget, id, time.Time{}, j.now(), nil)
	if j.queued == nil {
		j.queued = &batch{}
	}
}

// waitLocked waits until b is written and returns its error. When no
// write is in progress it writes the queue itself: the first of several
// callers writes everybody's records at once.
func (j *journal) waitLocked(b *batch) error {
	for !b.done {
		if !j.writing {
			_ = j.writeQueuedLocked()
			continue
		}
		j.cond.Wait()
	}
	return b.err
}

// flushLocked makes sure what is queued is written without the caller
// waiting: a background flusher writes it (and compacts, when due).
func (j *journal) flushLocked() {
	if j.flushing || j.closed {
		return
	}
	j.flushing = true
	j.wg.Add(1)
	go j.flusher()
}

// flusher writes queued records until none are left, compacting the log
// when due.
func (j *journal) flusher() {
	defer j.wg.Done()
	j.mu.Lock()
	defer j.mu.Unlock()
	for {
		switch {
		case j.writing:
			j.cond.Wait()
			continue
		case j.queued != nil:
			if err := j.writeQueuedLocked(); err != nil {
				j.log.Warn("journal: cannot write records", slog.Any("error", err))
			}
			continue
		case j.compact && !j.closed:
			if err := j.compactLocked(); err != nil {
				j.log.Warn("journal: cannot compact the log", slog.Any("error", err))
			}
			continue
		}
		break
	}
	j.flushing = false
	j.cond.Broadcast()
}

// writeQueuedLocked writes the queue as one batch. The caller holds mu and
// no write is in progress; mu is released during the write.
func (j *journal) writeQueuedLocked() error {
	b, buf := j.queued, j.queue
	if b == nil {
		return nil
	}
	j.queued, j.queue, j.spare = nil, j.spare[:0], nil
	j.writing = true
	f, off, hook := j.f, j.size, j.testHookWrite
	j.mu.Unlock()
	if hook != nil {
		hook(len(buf))
	}
	err := j.append(f, off, buf)
	j.mu.Lock()
	j.writing = false
	if err == nil {
		j.size += int64(len(buf))
	}
	j.spare = buf[:0]
	b.done, b.err = true, err
	for _, rec := range b.recs {
		rec.written = true
	}
	if j.compactDueLocked() {
		j.compact = true
		j.flushLocked()
	}
	j.cond.Broadcast()
	return err
}

// append writes buf at off, the end of the records, and flushes it with
// fsync. A failed write leaves off where it was: the next write goes over
// whatever part of buf reached the file.
func (j *journal) append(f *os.File, off int64, buf []byte) error {
	if f == nil {
		return errors.New("write journal: the log is not open")
	}
	if _, err := f.WriteAt(buf, off); err != nil {
		return fmt.Errorf("write journal: %w", err)
	}
	if j.fsync {
		if err := f.Sync(); err != nil {
			return fmt.Errorf("sync journal: %w", err)
		}
	}
	return nil
}

// compactDueLocked reports whether the log holds more than twice what is
// live, and at least compactMin bytes.
func (j *journal) compactDueLocked() bool {
	return !j.closed && j.size >= j.compactMin && j.size > 2*(j.live+int64(len(logHeader))) &&
		(j.compactFailed == 0 || j.size >= j.compactFailed+j.compactMin)
}

// compactLocked rewrites the live records to a new log that replaces the
// old one. The caller holds mu and no write is in progress; mu is released
// during the rewrite. Records still queued are appended after it as
// usual: they repeat states the rewrite holds already.
func (j *journal) compactLocked() error {
	j.compact = false
	ids := make([]int64, 0, len(j.recs))
	for id := range j.recs {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	buf := make([]byte, 0, int(j.live)+len(logHeader))
	buf = append(buf, logHeader...)
	var live int64
	for _, id := range ids {
		rec := j.recs[id]
		var data []byte
		if rec.outcome != nil {
			d, err := proto.Marshal(rec.outcome)
			if err != nil {
				return fmt.Errorf("encode outcome of attempt %d: %w", id, err)
			}
			data = d
		}
		before := len(buf)
		buf = appendRecord(buf, kindOf[rec.state], id, rec.start, rec.updated, data)
		rec.size = len(buf) - before
		live += int64(rec.size)
	}
	j.live = live
	j.writing = true
	old, hook := j.f, j.testHookWrite
	j.mu.Unlock()
	if hook != nil {
		hook(len(buf))
	}
	f, err := j.replace(old, buf)
	j.mu.Lock()
	j.writing = false
	j.cond.Broadcast()
	j.f = f
	if err != nil {
		j.compactFailed = j.size
		return err
	}
	j.size, j.compactFailed = int64(len(buf)), 0
	return nil
}

// replace writes data to a new file and renames it over the log. The old
// log is closed first (Windows cannot rename over an open file) and
// reopened if the rename fails. It returns the open log.
func (j *journal) replace(old *os.File, data []byte) (*os.File, error) {
	path := filepath.Join(j.dir, journalLogName)
	tmp := filepath.Join(j.dir, journalCompactName)
	if err := writeFileSync(tmp, data, j.fsync); err != nil {
		_ = os.Remove(tmp)
		return old, fmt.Errorf("write compacted journal: %w", err)
	}
	if old != nil {
		old.Close()
	}
	if err := os.Rename(tmp, path); err != nil {
		_ = os.Remove(tmp)
		f, _ := os.OpenFile(path, os.O_RDWR, 0)
		return f, fmt.Errorf("replace journal: %w", err)
	}
	if j.fsync {
		if err := syncDir(j.dir); err != nil {
			f, _ := os.OpenFile(path, os.O_RDWR, 0)
			return f, fmt.Errorf("sync journal dir: %w", err)
		}
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("open journal: %w", err)
	}
	return f, nil
}

// writeFileSync writes data to a new file at path, flushing it with fsync.
func writeFileSync(path string, data []byte, fsync bool) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if fsync {
		if err := f.Sync(); err != nil {
			f.Close()
			return err
		}
	}
	return f.Close()
}
