package agent

import (
	"encoding/binary"
	"fmt"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/batonhq/baton/agent/internal/recordlog"
	batonv1 "github.com/batonhq/baton/gen/baton/v1"
)

// The journal is a record log (package recordlog) whose file starts with
// journalHeader. Each record body is one attempt's new state:
//
//	kind     1 byte   what happened to the attempt (a recordState, or forget)
//	id       8 bytes  attempt id, big-endian
//	start    8 bytes  when the attempt started, Unix nanoseconds (0: unknown)
//	updated  8 bytes  when the record was written, Unix nanoseconds
//	outcome  the rest: the TaskFinished in protobuf binary, for finished
//	         and rejected records only
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
// acknowledged and nothing ran.
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
}

// encodeEntry returns the record body of an attempt's state; outcome is
// the encoded TaskFinished, if any.
func encodeEntry(kind byte, id int64, start, updated time.Time, outcome []byte) []byte {
	buf := make([]byte, 0, recFixedLen+len(outcome))
	buf = append(buf, kind)
	buf = binary.BigEndian.AppendUint64(buf, uint64(id))
	buf = binary.BigEndian.AppendUint64(buf, uint64(unixNano(start)))
	buf = binary.BigEndian.AppendUint64(buf, uint64(unixNano(updated)))
	return append(buf, outcome...)
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
	default:
		if len(rest) != 0 {
			return journalEntry{}, fmt.Errorf("attempt %d: %s record with an outcome", e.id, state)
		}
	}
	return e, nil
}

// classify tells the record log's compaction what a record body is worth:
// its attempt, kept unless it forgets the attempt or is a tombstone past
// the retention; an invalid record is skipped.
func classify(now func() time.Time) func(body []byte) (int64, recordlog.Action) {
	return func(body []byte) (int64, recordlog.Action) {
		e, err := decodeEntry(body)
		switch {
		case err != nil:
			return 0, recordlog.Skip
		case e.kind == kindForget:
			return e.id, recordlog.Drop
		case (e.kind == kindOf[stateAcked] || e.kind == kindOf[stateAbandoned]) && now().Sub(e.updated) >= journalRetention:
			return e.id, recordlog.Drop
		}
		return e.id, recordlog.Keep
	}
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
