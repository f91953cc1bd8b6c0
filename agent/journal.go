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
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/batonhq/baton/agent/internal/recordlog"
	"github.com/batonhq/baton/agent/runner"
	batonv1 "github.com/batonhq/baton/gen/baton/v1"
)

// journalRetention is how long the journal remembers an acknowledged or
// abandoned attempt id, so that a StartTask repeated within that window is
// still ignored.
const journalRetention = 24 * time.Hour

// journalMaxTombstones bounds the tombstones of acknowledged attempts the
// journal keeps, in memory and in its log: beyond it the oldest go before
// their retention ends, so that a sustained high rate of attempts cannot
// grow the journal without limit. That weakens nothing: the control plane
// sends a StartTask again only for an attempt it holds as dispatched and
// not started, never for one whose outcome it acknowledged. Tombstones of
// abandoned attempts, which it may still send, are not bounded by count
// (there are at most a few per agent restart).
const journalMaxTombstones = 200_000

// journalPruneEvery limits how often acknowledgements trigger a prune.
const journalPruneEvery = time.Minute

// journalLogName is the journal's record log in the journal directory.
const journalLogName = "log"

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
	// an earlier agent process stopped while it ran.
	stateAbandoned recordState = "abandoned"
)

// record is where one attempt stands, in memory.
type record struct {
	state   recordState
	start   time.Time
	updated time.Time
	outcome *batonv1.TaskFinished // finished and rejected only
	// runner identifies the runner process the attempt was handed to
	// (runner.Client.Instance) for a started record; empty when the
	// children run in the agent process (Windows), or for a record of an
	// earlier version.
	runner string
	// written says the write that carries the record has ended,
	// successfully or not (a failed outcome is still reported by this
	// process). Only written outcomes are listed by unacked: an outcome
	// reaches the control plane only once it is on disk.
	written bool
}

// journal is the agent's on-disk memory of attempts: a record log in dir
// of the states attempts go through (begin, finish, ack), replayed on
// open. It records an attempt before its child starts (so a restarted
// agent never starts it twice) and keeps each outcome from the moment it
// is known until the control plane acknowledges it.
//
// A state change is an append to one open file; appends that arrive
// together go out in one write (group commit), and the log is compacted
// once it has grown well past what is live (package recordlog). Without
// fsync a record survives an agent crash once its write returned; with
// fsync it also survives a power loss. A journal is safe for concurrent
// use.
//
// Tombstones (acknowledged and abandoned attempts) are kept for
// journalRetention; tombstones of acknowledged attempts are also bounded
// by count (journalMaxTombstones), the oldest going first.
type journal struct {
	fsync    bool
	log      *slog.Logger
	now      func() time.Time
	rlog     *recordlog.Log
	maxTombs int
	// evicted is the latest update time (Unix nanoseconds) of an
	// acknowledged attempt's tombstone evicted by count; every tombstone
	// of an acknowledged attempt updated at or before it is evicted, so
	// compaction drops such records from the log. Zero: none.
	evicted atomic.Int64

	// mu orders state changes: a change and the queueing of its record
	// happen under it, so the log holds them in the same order.
	mu        sync.Mutex
	recs      map[int64]*record
	lastPrune time.Time
	closed    bool
	// tombs indexes the tombstones of acknowledged attempts by update
	// time, oldest first from tombHead on; an entry whose attempt's
	// record has gone or changed since is skipped. nTombs counts those
	// tombstones in recs.
	tombs    []tomb
	tombHead int
	nTombs   int
	// abandoned holds the ids of abandoned attempts, for the prune; an id
	// whose record is no longer abandoned is skipped.
	abandoned map[int64]struct{}
}

// tomb is an entry of journal.tombs.
type tomb struct {
	id      int64
	updated int64 // Unix nanoseconds
}

// journalLimits are the journal's sizes; a zero field takes its default.
// Tests lower them.
type journalLimits struct {
	// compactMin is the log's compaction threshold
	// (recordlog.Options.CompactMin).
	compactMin int64
	// maxTombstones defaults to journalMaxTombstones.
	maxTombstones int
}

// openJournal loads the journal in dir, creating dir if needed. Damaged
// records are skipped with a log line and the log is rewritten without
// them. Records of attempts that were running when the previous agent
// process stopped stay as they are until settleStarted: the runner may
// still run them.
func openJournal(dir string, fsync bool, log *slog.Logger, now func() time.Time) (*journal, error) {
	return openJournalWith(dir, fsync, log, now, journalLimits{})
}

// openJournalWith is openJournal with other limits.
func openJournalWith(dir string, fsync bool, log *slog.Logger, now func() time.Time, lim journalLimits) (*journal, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create journal dir: %w", err)
	}
	j := &journal{
		fsync: fsync, log: log, now: now,
		maxTombs:  cmp.Or(lim.maxTombstones, journalMaxTombstones),
		recs:      make(map[int64]*record),
		abandoned: make(map[int64]struct{}),
	}
	rlog, err := recordlog.Open(filepath.Join(dir, journalLogName), recordlog.Options{
		Header:     journalHeader,
		Classify:   j.classify,
		CompactMin: lim.compactMin,
		Logger:     log.With(slog.String("component", "journal")),
	}, j.replay)
	if err != nil {
		return nil, fmt.Errorf("open journal: %w", err)
	}
	j.rlog = rlog
	j.mu.Lock()
	j.pruneLocked()
	j.evictLocked()
	j.mu.Unlock()
	return j, nil
}

// replay applies one record read from the log.
func (j *journal) replay(body []byte) error {
	e, err := decodeEntry(body)
	if err != nil {
		return err
	}
	if e.kind == kindForget {
		j.dropLocked(e.id)
		return nil
	}
	j.setLocked(e.id, &record{state: stateOf[e.kind], start: e.start, updated: e.updated, outcome: e.outcome,
		runner: e.runner, written: true})
	return nil
}

// settleStarted decides, once the agent process has attached to its
// runner, what became of each attempt an earlier agent process recorded
// as started and running does not report true for (the runner did not
// list it). listing names the runners that account for every start they
// took over: the runner attached to (Attachment.Instance), which lists
// them, and the one that last exited on its own with none left
// (Attachment.CleanExit); empty names are ignored.
//
//   - An attempt recorded with a runner of listing was handed to that
//     runner only, and is not among what it accounts for: it never
//     started, and never will. Its record goes, and the attempt starts
//     when the control plane sends it again.
//   - Any other (recorded with a runner that was killed since, or with
//     none) may have started a child that nobody can report: its outcome
//     is unknown. Its record becomes a tombstone (abandoned), so that it
//     never starts, and a repeated StartTask is answered FAILED.
func (j *journal) settleStarted(running func(id int64) bool, listing ...string) {
	j.mu.Lock()
	var p *recordlog.Pending
	for id, rec := range j.recs {
		if rec.state != stateStarted || running(id) {
			continue
		}
		if rec.runner != "" && slices.Contains(listing, rec.runner) {
			j.log.Info("journal: attempt was recorded but never started; it starts when the control plane sends it again",
				slog.Int64("attempt_id", id))
			j.dropLocked(id)
			p = j.rlog.Queue(j.fsync, encodeEntry(kindForget, id, time.Time{}, j.now(), nil))
			continue
		}
		j.log.Warn("journal: attempt was running when the agent stopped; its outcome is unknown",
			slog.Int64("attempt_id", id))
		p = j.queueLocked(id, &record{state: stateAbandoned, start: rec.start, updated: j.now()})
	}
	j.mu.Unlock()
	if p == nil {
		return
	}
	if err := p.Wait(); err != nil {
		j.log.Warn("journal: cannot record what became of started attempts", slog.Any("error", err))
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

// begin records that the attempt is about to be handed to the runner
// identified by runnerID (runner.Client.Instance; empty when unknown) and
// returns once the record is written (and flushed, with fsync). It
// returns errAttemptSeen when the id is already known, and an error when
// the record could not be written; the child must not start in either
// case.
func (j *journal) begin(id int64, start time.Time, runnerID string) error {
	if len(runnerID) > runner.MaxInstanceLen {
		runnerID = ""
	}
	j.mu.Lock()
	old, ok := j.recs[id]
	if ok && old.state != stateRejected {
		j.mu.Unlock()
		return errAttemptSeen
	}
	if j.closed {
		j.mu.Unlock()
		return errJournalClosed
	}
	rec := &record{state: stateStarted, start: start, updated: j.now(), runner: runnerID}
	p := j.queueLocked(id, rec)
	j.mu.Unlock()
	err := p.Wait()
	j.mu.Lock()
	defer j.mu.Unlock()
	rec.written = true
	if err != nil && j.recs[id] == rec {
		// Not recorded: the attempt does not start, and may start later.
		if ok {
			j.setLocked(id, old)
		} else {
			j.dropLocked(id)
		}
	}
	if err != nil {
		return fmt.Errorf("journal start of attempt %d: %w", id, err)
	}
	return nil
}

// finish keeps tf until ack and returns once it is written (and flushed,
// with fsync). The outcome is held in memory even when writing it fails,
// so this process still reports it after a reconnect; the returned error
// says it would not survive a restart.
func (j *journal) finish(tf *batonv1.TaskFinished) error {
	return j.finishLater(tf)()
}

// finishLater records tf in memory and queues its write without waiting
// for it; the returned func waits for the write, making it itself if
// nobody else does, and returns what finish would. Until the write has
// ended, unacked does not list tf.
func (j *journal) finishLater(tf *batonv1.TaskFinished) (wait func() error) {
	id := tf.GetAttemptId()
	data, encErr := proto.Marshal(tf)
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
	p := j.queueDataLocked(id, rec, data)
	return func() error {
		err := p.Wait()
		j.mu.Lock()
		rec.written = true
		j.mu.Unlock()
		if err != nil {
			return fmt.Errorf("journal outcome of attempt %d: %w", id, err)
		}
		return nil
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
			j.rlog.Queue(j.fsync, encodeEntry(kindForget, id, time.Time{}, j.now(), nil))
			queued = true
		case stateFinished:
			j.queueLocked(id, &record{state: stateAcked, start: rec.start, updated: j.tombTimeLocked()})
			queued = true
		}
	}
	if j.now().Sub(j.lastPrune) >= journalPruneEvery {
		j.pruneLocked()
	}
	j.evictLocked()
	if queued {
		j.rlog.Flush()
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
	j.mu.Unlock()
	if err := j.rlog.Close(); err != nil {
		return fmt.Errorf("close journal: %w", err)
	}
	return nil
}

// pruneLocked forgets tombstones older than journalRetention. Their
// records leave the log with its next compaction.
func (j *journal) pruneLocked() {
	now := j.now()
	j.lastPrune = now
	// Tombstones of acknowledged attempts are in update order; stop at
	// the first that is young enough.
	limit := unixNano(now.Add(-journalRetention))
	for j.tombHead < len(j.tombs) && j.tombs[j.tombHead].updated <= limit {
		j.dropTombLocked(j.popTombLocked())
	}
	for id := range j.abandoned {
		rec, ok := j.recs[id]
		switch {
		case !ok || rec.state != stateAbandoned:
			delete(j.abandoned, id)
		case now.Sub(rec.updated) >= journalRetention:
			j.dropLocked(id)
			delete(j.abandoned, id)
		}
	}
}

// evictLocked forgets the oldest tombstones of acknowledged attempts
// beyond maxTombs, with any others of the same update time, and raises
// evicted so that the next compaction drops their records from the log.
func (j *journal) evictLocked() {
	cut := int64(0)
	for j.nTombs > j.maxTombs && j.tombHead < len(j.tombs) {
		t := j.popTombLocked()
		if j.dropTombLocked(t) {
			cut = t.updated
		}
	}
	if cut == 0 {
		return
	}
	for j.tombHead < len(j.tombs) && j.tombs[j.tombHead].updated <= cut {
		j.dropTombLocked(j.popTombLocked())
	}
	if cut > j.evicted.Load() {
		j.evicted.Store(cut)
	}
}

// tombTimeLocked returns the update time of a new tombstone of an
// acknowledged attempt: now, or the newest such tombstone's time if the
// clock went back since, so that tombstones are evicted in the order they
// were made and a new one is never among those already evicted.
func (j *journal) tombTimeLocked() time.Time {
	now := j.now()
	floor := j.evicted.Load() + 1
	if n := len(j.tombs); n > j.tombHead {
		floor = max(floor, j.tombs[n-1].updated)
	}
	if unixNano(now) < floor {
		return time.Unix(0, floor).UTC()
	}
	return now
}

// popTombLocked removes and returns the oldest entry of tombs.
func (j *journal) popTombLocked() tomb {
	t := j.tombs[j.tombHead]
	j.tombHead++
	if j.tombHead == len(j.tombs) {
		j.tombs, j.tombHead = j.tombs[:0], 0
	} else if j.tombHead >= 1024 && j.tombHead >= len(j.tombs)/2 {
		n := copy(j.tombs, j.tombs[j.tombHead:])
		j.tombs, j.tombHead = j.tombs[:n], 0
	}
	return t
}

// dropTombLocked forgets the tombstone t stands for, if it is still in
// recs, and reports whether it was.
func (j *journal) dropTombLocked(t tomb) bool {
	rec, ok := j.recs[t.id]
	if !ok || rec.state != stateAcked || unixNano(rec.updated) != t.updated {
		return false
	}
	j.dropLocked(t.id)
	return true
}

// setLocked makes rec attempt id's record, keeping the tombstone indexes.
func (j *journal) setLocked(id int64, rec *record) {
	j.dropLocked(id)
	j.recs[id] = rec
	switch rec.state {
	case stateAcked:
		j.nTombs++
		t := tomb{id: id, updated: unixNano(rec.updated)}
		live := j.tombs[j.tombHead:]
		if n := len(live); n == 0 || live[n-1].updated <= t.updated {
			j.tombs = append(j.tombs, t)
			break
		}
		// Out of order (a replayed log, or a clock that went back).
		i, _ := slices.BinarySearchFunc(live, t.updated, func(e tomb, u int64) int {
			return cmp.Compare(e.updated, u+1) // after equal times
		})
		j.tombs = slices.Insert(j.tombs, j.tombHead+i, t)
	case stateAbandoned:
		j.abandoned[id] = struct{}{}
	}
}

// dropLocked forgets attempt id's record; its index entries are skipped
// from now on.
func (j *journal) dropLocked(id int64) {
	if old, ok := j.recs[id]; ok {
		if old.state == stateAcked {
			j.nTombs--
		}
		delete(j.recs, id)
	}
}

// queueLocked makes rec attempt id's record and queues its write.
func (j *journal) queueLocked(id int64, rec *record) *recordlog.Pending {
	var data []byte
	switch {
	case rec.outcome != nil:
		d, err := proto.Marshal(rec.outcome)
		if err == nil {
			data = d
		}
	case rec.state == stateStarted:
		data = []byte(rec.runner)
	}
	return j.queueDataLocked(id, rec, data)
}

// queueDataLocked is queueLocked with the record's tail (the encoded
// outcome, or the runner of a started record) already encoded.
func (j *journal) queueDataLocked(id int64, rec *record, tail []byte) *recordlog.Pending {
	j.setLocked(id, rec)
	return j.rlog.Queue(j.fsync, encodeEntry(kindOf[rec.state], id, rec.start, rec.updated, tail))
}
