package runner

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/batonhq/baton/agent/internal/recordlog"
)

// A runner of protocol version 2 or later keeps its children's records in
// a record log (package recordlog), the file recordsName in its version's
// directory, which starts with recordsHeader. Each record body is
//
//	kind  1 byte   recStarted, recExited or recConfirmed
//	id    8 bytes  attempt id, big-endian
//	rest           the Record in JSON (started and exited only)
//
// Replaying the log, the last record of an attempt wins and a confirmation
// drops it. Agents of other versions do not write to the log: they append
// confirmation records to the file confirmedName, a record log without a
// header, which the runner reads.
const recordsHeader = "BATONR\x00\x01"

// Record kinds.
const (
	recStarted   = 'S'
	recExited    = 'E'
	recConfirmed = 'C'
)

// encodeRecord returns the record body for rec of the given kind; rec is
// nil for a confirmation.
func encodeRecord(kind byte, id int64, rec *Record) ([]byte, error) {
	buf := make([]byte, 9, 256)
	buf[0] = kind
	binary.BigEndian.PutUint64(buf[1:], uint64(id))
	if rec == nil {
		return buf, nil
	}
	data, err := json.Marshal(rec)
	if err != nil {
		return nil, fmt.Errorf("encode record %d: %w", id, err)
	}
	return append(buf, data...), nil
}

// decodeRecord decodes and checks a record body; rec is nil for a
// confirmation.
func decodeRecord(body []byte) (kind byte, id int64, rec *Record, err error) {
	if len(body) < 9 {
		return 0, 0, nil, fmt.Errorf("record of %d bytes is too short", len(body))
	}
	kind, id = body[0], int64(binary.BigEndian.Uint64(body[1:]))
	if id <= 0 {
		return 0, 0, nil, fmt.Errorf("record names attempt %d", id)
	}
	switch kind {
	case recConfirmed:
		if len(body) != 9 {
			return 0, 0, nil, fmt.Errorf("attempt %d: confirmation with a body", id)
		}
		return kind, id, nil, nil
	case recStarted, recExited:
	default:
		return 0, 0, nil, fmt.Errorf("attempt %d: unknown record kind %q", id, kind)
	}
	var r Record
	if err := json.Unmarshal(body[9:], &r); err != nil {
		return 0, 0, nil, fmt.Errorf("attempt %d: decode record: %w", id, err)
	}
	if r.ID != id {
		return 0, 0, nil, fmt.Errorf("attempt %d: the record names attempt %d", id, r.ID)
	}
	if r.Exited != (kind == recExited) {
		return 0, 0, nil, fmt.Errorf("attempt %d: %q record with exited %v", id, kind, r.Exited)
	}
	return kind, id, &r, nil
}

// classifyRecord tells the log's compaction what a record body is worth.
func classifyRecord(body []byte) (int64, recordlog.Action) {
	kind, id, _, err := decodeRecord(body)
	switch {
	case err != nil:
		return 0, recordlog.Skip
	case kind == recConfirmed:
		return id, recordlog.Drop
	}
	return id, recordlog.Keep
}

// recordSet is what a record log holds: the children running and the
// exits not yet confirmed, by attempt id.
type recordSet map[int64]*Record

// replay applies one record body.
func (s recordSet) replay(body []byte) error {
	kind, id, rec, err := decodeRecord(body)
	if err != nil {
		return err
	}
	if kind == recConfirmed {
		delete(s, id)
		return nil
	}
	s[id] = rec
	return nil
}

// readConfirmed returns the attempts confirmed in the confirmation file at
// path from offset off on, and the offset up to which it read whole
// records. A missing file confirms nothing.
func readConfirmed(path string, off int64) (ids []int64, next int64, err error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, 0, nil
	}
	if err != nil {
		return nil, off, err
	}
	if int64(len(data)) < off {
		off = 0 // replaced meanwhile
	}
	next = off
	recordlog.Scan(data[off:], func(body []byte, at int) {
		next = off + int64(at+recordlog.FrameLen+len(body))
		if kind, id, _, err := decodeRecord(body); err == nil && kind == recConfirmed {
			ids = append(ids, id)
		}
	})
	return ids, next, nil
}

// store is where an agent finds the records of a runner of another
// protocol version, and confirms the exits it collects from them.
type store interface {
	// read returns the records, with an error for each one that could
	// not be read.
	read() (map[int64]*Record, []error)
	// confirm says the exit or orphan of attempt id is journaled.
	confirm(id int64) error
}

// storeOf returns the store of the runner whose version directory is dir,
// by the layout it finds there; nil when dir holds no records.
func storeOf(dir string) store {
	if _, err := os.Stat(filepath.Join(dir, recordsName)); err == nil {
		return logStore{dir: dir}
	}
	if _, err := os.Stat(filepath.Join(dir, attDirName)); err == nil {
		return fileStore{attDir: filepath.Join(dir, attDirName)}
	}
	return nil
}

// logStore reads the record log of a runner of version 2 or later.
type logStore struct{ dir string }

func (s logStore) read() (map[int64]*Record, []error) {
	path := filepath.Join(s.dir, recordsName)
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, []error{fmt.Errorf("read %s: %w", path, err)}
	}
	if len(data) < len(recordsHeader) || string(data[:len(recordsHeader)]) != recordsHeader {
		return nil, []error{fmt.Errorf("%s is not a record log of a known format", path)}
	}
	set := recordSet{}
	var errs []error
	recordlog.Scan(data[len(recordsHeader):], func(body []byte, off int) {
		if err := set.replay(body); err != nil {
			errs = append(errs, fmt.Errorf("%s at %d: %w", path, len(recordsHeader)+off, err))
		}
	})
	confirmed, _, err := readConfirmed(filepath.Join(s.dir, confirmedName), 0)
	if err != nil {
		errs = append(errs, fmt.Errorf("read confirmations: %w", err))
	}
	for _, id := range confirmed {
		delete(set, id)
	}
	return set, errs
}

func (s logStore) confirm(id int64) error {
	body, err := encodeRecord(recConfirmed, id, nil)
	if err != nil {
		return err
	}
	f, err := os.OpenFile(filepath.Join(s.dir, confirmedName), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("confirm attempt %d: %w", id, err)
	}
	_, err = f.Write(recordlog.AppendRecord(nil, body))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("confirm attempt %d: %w", id, err)
	}
	return nil
}

// fileStore reads the record files of a version 1 runner.
type fileStore struct{ attDir string }

func (s fileStore) read() (map[int64]*Record, []error) { return readRecords(s.attDir) }

func (s fileStore) confirm(id int64) error { return removeRecord(s.attDir, id) }

// Recorded returns the records the runner of protocol version v keeps in
// stateDir: its children still running and the exits not yet confirmed,
// by attempt id. It reads them as an agent of another version does,
// whether that runner runs or not, and is meant for diagnosis and tests.
func Recorded(stateDir string, v int) (map[int64]*Record, error) {
	st := storeOf(versionDir(stateDir, v))
	if st == nil {
		return nil, nil
	}
	recs, errs := st.read()
	return recs, errors.Join(errs...)
}
