package agent

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	batonv1 "github.com/batonhq/baton/gen/baton/v1"
)

// journalRetention is how long the journal remembers an acknowledged or
// abandoned attempt id, so that a StartTask repeated within that window is
// still ignored.
const journalRetention = 24 * time.Hour

// journalPruneEvery limits how often acknowledgements trigger a prune.
const journalPruneEvery = time.Minute

// errAttemptSeen is returned by journal.begin for an attempt id the journal
// already holds.
var errAttemptSeen = errors.New("attempt already seen")

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

// record is one attempt's journal file.
type record struct {
	AttemptID int64       `json:"attempt_id"`
	State     recordState `json:"state"`
	StartTime time.Time   `json:"start_time,omitzero"`
	// Outcome is the TaskFinished in protojson, kept until acked.
	Outcome json.RawMessage `json:"outcome,omitempty"`
	// Updated is when the record last changed; tombstones are pruned
	// journalRetention after it.
	Updated time.Time `json:"updated"`

	outcome *batonv1.TaskFinished
}

// journal is the agent's on-disk memory of attempts, one JSON file per
// attempt id in dir. It records an attempt before its child starts (so a
// restarted agent never starts it twice) and keeps each outcome from the
// moment it is known until the control plane acknowledges it.
//
// Files are replaced atomically (temp file + rename). Without fsync a
// record survives an agent crash; with fsync it also survives a power
// loss. A journal is safe for concurrent use.
type journal struct {
	dir   string
	fsync bool
	log   *slog.Logger
	now   func() time.Time

	mu        sync.Mutex
	recs      map[int64]*record
	lastPrune time.Time
}

// openJournal loads the journal in dir, creating dir if needed. Temp files
// left by a crash are removed; unreadable records are logged and kept as
// tombstones when their file name still names the attempt. Records of
// attempts that were running when the previous agent process stopped stay
// as they are until abandonStarted: the runner may still run them.
func openJournal(dir string, fsync bool, log *slog.Logger, now func() time.Time) (*journal, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create journal dir: %w", err)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("read journal dir: %w", err)
	}
	j := &journal{dir: dir, fsync: fsync, log: log, now: now, recs: make(map[int64]*record)}
	for _, e := range entries {
		name := e.Name()
		path := filepath.Join(dir, name)
		if strings.HasSuffix(name, ".tmp") {
			if err := os.Remove(path); err != nil {
				log.Warn("journal: cannot remove temp file", slog.String("path", path), slog.Any("error", err))
			}
			continue
		}
		idText, ok := strings.CutSuffix(name, ".json")
		id, err := strconv.ParseInt(idText, 10, 64)
		if !ok || err != nil || id <= 0 || e.IsDir() {
			log.Warn("journal: skipping unknown entry", slog.String("path", path))
			continue
		}
		rec, err := readRecord(path, id)
		if err != nil {
			log.Error("journal: unreadable record; the attempt is kept as abandoned and its outcome is lost",
				slog.Int64("attempt_id", id), slog.String("path", path), slog.Any("error", err))
			rec = &record{AttemptID: id, State: stateAbandoned, Updated: now()}
			if err := j.write(rec); err != nil {
				log.Warn("journal: cannot rewrite unreadable record", slog.Int64("attempt_id", id), slog.Any("error", err))
			}
		}
		j.recs[id] = rec
	}
	j.mu.Lock()
	j.pruneLocked()
	j.mu.Unlock()
	return j, nil
}

// readRecord reads and checks one record file.
func readRecord(path string, id int64) (*record, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read: %w", err)
	}
	var rec record
	if err := json.Unmarshal(data, &rec); err != nil {
		return nil, fmt.Errorf("decode: %w", err)
	}
	if rec.AttemptID != id {
		return nil, fmt.Errorf("record names attempt %d, file name says %d", rec.AttemptID, id)
	}
	switch rec.State {
	case stateStarted, stateAcked, stateAbandoned:
	case stateFinished, stateRejected:
		var tf batonv1.TaskFinished
		if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(rec.Outcome, &tf); err != nil {
			return nil, fmt.Errorf("decode outcome: %w", err)
		}
		if tf.GetAttemptId() != id {
			return nil, fmt.Errorf("outcome names attempt %d, file name says %d", tf.GetAttemptId(), id)
		}
		rec.outcome = &tf
	default:
		return nil, fmt.Errorf("unknown state %q", rec.State)
	}
	return &rec, nil
}

// abandonStarted turns the record of every attempt still marked started,
// except those running reports true for, into a tombstone: an earlier
// agent process stopped while it ran and no runner knows of it, so its
// outcome is unknown, and it must not start again.
func (j *journal) abandonStarted(running func(id int64) bool) {
	j.mu.Lock()
	defer j.mu.Unlock()
	for id, rec := range j.recs {
		if rec.State != stateStarted || running(id) {
			continue
		}
		j.log.Warn("journal: attempt was running when the agent stopped; its outcome is unknown",
			slog.Int64("attempt_id", id))
		tomb := &record{AttemptID: id, State: stateAbandoned, StartTime: rec.StartTime, Updated: j.now()}
		if err := j.write(tomb); err != nil {
			j.log.Warn("journal: cannot record abandoned attempt", slog.Int64("attempt_id", id), slog.Any("error", err))
		}
		j.recs[id] = tomb
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
	return rec.State, rec.outcome, true
}

// begin records that the attempt is about to start. It returns
// errAttemptSeen when the id is already known, and an error when the record
// could not be written; the child must not start in either case.
func (j *journal) begin(id int64, start time.Time) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if rec, ok := j.recs[id]; ok && rec.State != stateRejected {
		return errAttemptSeen
	}
	rec := &record{AttemptID: id, State: stateStarted, StartTime: start, Updated: j.now()}
	if err := j.write(rec); err != nil {
		return err
	}
	j.recs[id] = rec
	return nil
}

// finish keeps tf until ack. The outcome is held in memory even when
// writing it fails, so this process still reports it after a reconnect;
// the returned error says it would not survive a restart.
func (j *journal) finish(tf *batonv1.TaskFinished) error {
	id := tf.GetAttemptId()
	state := stateFinished
	j.mu.Lock()
	defer j.mu.Unlock()
	if tf.GetOutcome() == batonv1.AttemptOutcome_ATTEMPT_OUTCOME_REJECTED {
		// Nothing ran for a rejected attempt, also when it was recorded
		// as starting first.
		if rec, ok := j.recs[id]; !ok || rec.State == stateRejected || rec.State == stateStarted {
			state = stateRejected
		}
	}
	rec := &record{AttemptID: id, State: state, Updated: j.now(), outcome: tf}
	if old, ok := j.recs[id]; ok {
		rec.StartTime = old.StartTime
	}
	j.recs[id] = rec
	data, err := protojson.Marshal(tf)
	if err != nil {
		return fmt.Errorf("encode outcome of attempt %d: %w", id, err)
	}
	rec.Outcome = data
	return j.write(rec)
}

// ack forgets the outcomes of ids, keeping tombstones for attempts that
// ran. Unknown ids and ids without an outcome are ignored.
func (j *journal) ack(ids []int64) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	var errs []error
	for _, id := range ids {
		rec, ok := j.recs[id]
		if !ok {
			continue
		}
		switch rec.State {
		case stateRejected:
			delete(j.recs, id)
			if err := j.remove(id); err != nil {
				errs = append(errs, err)
			}
		case stateFinished:
			tomb := &record{AttemptID: id, State: stateAcked, StartTime: rec.StartTime, Updated: j.now()}
			j.recs[id] = tomb
			if err := j.write(tomb); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if j.now().Sub(j.lastPrune) >= journalPruneEvery {
		j.pruneLocked()
	}
	return errors.Join(errs...)
}

// unacked returns the outcomes not yet acknowledged, by attempt id.
func (j *journal) unacked() []*batonv1.TaskFinished {
	j.mu.Lock()
	defer j.mu.Unlock()
	var out []*batonv1.TaskFinished
	for _, rec := range j.recs {
		if rec.outcome != nil {
			out = append(out, rec.outcome)
		}
	}
	slices.SortFunc(out, func(a, b *batonv1.TaskFinished) int { return cmp.Compare(a.GetAttemptId(), b.GetAttemptId()) })
	return out
}

// unackedCount returns how many outcomes wait for an acknowledgement.
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

// pruneLocked deletes tombstones older than journalRetention.
func (j *journal) pruneLocked() {
	now := j.now()
	j.lastPrune = now
	for id, rec := range j.recs {
		if rec.State != stateAcked && rec.State != stateAbandoned {
			continue
		}
		if now.Sub(rec.Updated) < journalRetention {
			continue
		}
		if err := j.remove(id); err != nil {
			j.log.Warn("journal: cannot prune record", slog.Int64("attempt_id", id), slog.Any("error", err))
			continue
		}
		delete(j.recs, id)
	}
}

func (j *journal) path(id int64) string {
	return filepath.Join(j.dir, strconv.FormatInt(id, 10)+".json")
}

// write replaces rec's file atomically.
func (j *journal) write(rec *record) error {
	data, err := json.Marshal(rec)
	if err != nil {
		return fmt.Errorf("encode journal record %d: %w", rec.AttemptID, err)
	}
	if err := writeFileAtomic(j.path(rec.AttemptID), data, j.fsync); err != nil {
		return fmt.Errorf("write journal record %d: %w", rec.AttemptID, err)
	}
	return nil
}

func (j *journal) remove(id int64) error {
	err := os.Remove(j.path(id))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove journal record %d: %w", id, err)
	}
	if j.fsync {
		if err := syncDir(j.dir); err != nil {
			return fmt.Errorf("sync journal dir: %w", err)
		}
	}
	return nil
}

// writeFileAtomic writes data to a temp file next to path and renames it
// over path, so a reader sees the old or the new content, never a mix.
// With fsync the data and the rename are flushed to stable storage.
func writeFileAtomic(path string, data []byte, fsync bool) (err error) {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, filepath.Base(path)+".*.tmp")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			_ = f.Close()
			_ = os.Remove(f.Name())
		}
	}()
	if _, err := f.Write(data); err != nil {
		return err
	}
	if fsync {
		if err := f.Sync(); err != nil {
			return err
		}
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return err
	}
	if fsync {
		return syncDir(dir)
	}
	return nil
}
