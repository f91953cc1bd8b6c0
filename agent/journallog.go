package agent

import (
	"encoding/binary"
	"fmt"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/batonhq/baton/agent/internal/recordlog"
	"github.com/batonhq/baton/agent/runner"
	batonv1 "github.com/batonhq/baton/gen/baton/v1"
)

// The journal is a record log (package recordlog) whose file starts with
// journalHeader. Each record body is one attempt's new state:
//
//	kind     1 byte   what happened to the attempt (a recordState, or forget)
//	id       8 bytes  attempt id, big-endian
//	start    8 bytes  when the attempt started, Unix nanoseconds (0: unknown)
//	updated  8 bytes  when the record was written, Unix nanoseconds
//	tail     the rest: for finished and rejected records the TaskFinished
//	         in protobuf binary; for started records the identity of the
//	         runner process the attempt was handed to (at most
//	         runner.MaxInstanceLen bytes, none when unknown: records of
//	         earlier versions have none); nothing for the others
//
// Replaying the log in order, the last record of an attempt wins and a
// forget record drops the attempt.
const (
	// journalHeader starts the journal file: its format and version.
	journalHeader = "BATONJ\x00\x01"
	// recFixedLen is the size of a record body without an outcome.
	recFixedLen = 1 + 8 + 8 + 8
)

// kindForget drops an attempt from the journal: its REJECTED outcome was
// acknowledged and nothing ran, or it was recorded as started but its
// runner never took it over (journal.settleStarted).
const kindForget = 'D'

// Record kinds on disk, by state.
var kindOf = map[recordState]byte{
	stateStarted:   'B',
	stateFinished:  'F',
	stateRejected:  'R',
	stateAcked:     'A',
	stateAbandoned: 'X',
}

var stateOf = map[byte]recordState{
	'B': stateStarted,
	'F': stateFinished,
	'R': stateRejected,
	'A': stateAcked,
	'X': stateAbandoned,
}

// journalEntry is one decoded record body.
type journalEntry struct {
	kind    byte
	id      int64
	start   time.Time
	updated time.Time
	outcome *batonv1.TaskFinished // finished and rejected only
	runner  string                // started only
}

// encodeEntry returns the record body of an attempt's state; tail is the
// encoded TaskFinished or the runner identity, if any.
func encodeEntry(kind byte, id int64, start, updated time.Time, tail []byte) []byte {
	buf := make([]byte, 0, recFixedLen+len(tail))
	buf = append(buf, kind)
	buf = binary.BigEndian.AppendUint64(buf, uint64(id))
	buf = binary.BigEndian.AppendUint64(buf, uint64(unixNano(start)))
	buf = binary.BigEndian.AppendUint64(buf, uint64(unixNano(updated)))
	return append(buf, tail...)
}

// decodeEntry decodes and checks a record body.
func decodeEntry(body []byte) (journalEntry, error) {
	if len(body) < recFixedLen {
		return journalEntry{}, fmt.Errorf("record of %d bytes is too short", len(body))
	}
	e := journalEntry{
		kind:    body[0],
		id:      int64(binary.BigEndian.Uint64(body[1:])),
		start:   fromUnixNano(int64(binary.BigEndian.Uint64(body[9:]))),
		updated: fromUnixNano(int64(binary.BigEndian.Uint64(body[17:]))),
	}
	rest := body[recFixedLen:]
	if e.id <= 0 {
		return journalEntry{}, fmt.Errorf("record names attempt %d", e.id)
	}
	state, known := stateOf[e.kind]
	switch {
	case e.kind == kindForget:
		if len(rest) != 0 {
			return journalEntry{}, fmt.Errorf("attempt %d: forget record with an outcome", e.id)
		}
	case !known:
		return journalEntry{}, fmt.Errorf("attempt %d: unknown record kind %q", e.id, e.kind)
	case state == stateFinished || state == stateRejected:
		var tf batonv1.TaskFinished
		if err := proto.Unmarshal(rest, &tf); err != nil {
			return journalEntry{}, fmt.Errorf("attempt %d: decode outcome: %w", e.id, err)
		}
		if tf.GetAttemptId() != e.id {
			return journalEntry{}, fmt.Errorf("attempt %d: the outcome names attempt %d", e.id, tf.GetAttemptId())
		}
		e.outcome = &tf
	case state == stateStarted:
		if len(rest) > runner.MaxInstanceLen {
			return journalEntry{}, fmt.Errorf("attempt %d: runner identity of %d bytes is too long", e.id, len(rest))
		}
		e.runner = string(rest)
	default:
		if len(rest) != 0 {
			return journalEntry{}, fmt.Errorf("attempt %d: %s record with an outcome", e.id, state)
		}
	}
	return e, nil
}

// classify tells the record log's compaction what a record body is worth:
// its attempt, kept unless it forgets the attempt or is a tombstone past
// the retention or evicted by count; an invalid record is skipped.
func (j *journal) classify(body []byte) (int64, recordlog.Action) {
	e, err := decodeEntry(body)
	if err != nil {
		return 0, recordlog.Skip
	}
	acked := e.kind == kindOf[stateAcked]
	switch cut := j.evicted.Load(); {
	case e.kind == kindForget:
		return e.id, recordlog.Drop
	case acked && cut > 0 && unixNano(e.updated) <= cut:
		return e.id, recordlog.Drop
	case (acked || e.kind == kindOf[stateAbandoned]) && j.now().Sub(e.updated) >= journalRetention:
		return e.id, recordlog.Drop
	}
	return e.id, recordlog.Keep
}

func unixNano(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

func fromUnixNano(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n).UTC()
}
