//go:build unix

package runner

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/batonhq/baton/agent/internal/recordlog"
)

// load opens the record log and takes over the records of an earlier
// runner process: exits not yet confirmed, and children that were running
// when it was killed.
func (s *server) load() error {
	recs := recordSet{}
	rl, err := recordlog.Open(filepath.Join(s.dir, recordsName), recordlog.Options{
		Header:   recordsHeader,
		Classify: classifyRecord,
		Logger:   s.log,
	}, recs.replay)
	if err != nil {
		return fmt.Errorf("open records: %w", err)
	}
	s.records = rl
	ids, next, err := readConfirmed(filepath.Join(s.dir, confirmedName), 0)
	if err != nil {
		s.log.Warn("cannot read confirmations of other agent versions", slog.Any("error", err))
	}
	s.confirmedOff = next
	for _, id := range ids {
		if _, ok := recs[id]; ok {
			delete(recs, id)
			s.recordConfirmed(id)
		}
	}
	s.records.Flush()
	for id, rec := range recs {
		a := &ratt{id: id, rec: *rec, state: attExited}
		if !rec.Exited {
			a.state = attOrphan
			s.log.Warn("child of a killed runner: its outcome is unknown", slog.Int64("attempt_id", id), slog.Int("pid", rec.Pid))
		}
		s.atts[id] = a
	}
	return nil
}

// record appends rec's record of the given kind to the record log and
// waits until it is written (and flushed, with fsync).
func (s *server) record(kind byte, rec *Record, fsync bool) error {
	body, err := encodeRecord(kind, rec.ID, rec)
	if err != nil {
		return err
	}
	return s.records.Queue(fsync, body).Wait()
}

// recordConfirmed queues the record that forgets attempt id; nobody waits
// for it (a lost confirmation only makes the exit be listed once more).
func (s *server) recordConfirmed(id int64) {
	body, err := encodeRecord(recConfirmed, id, nil)
	if err == nil {
		s.records.Queue(false, body)
	}
}

// foreignConfirms applies the confirmations agents of other versions
// appended to the confirmation file since it was last read.
func (s *server) foreignConfirms() {
	path := filepath.Join(s.dir, confirmedName)
	if st, err := os.Stat(path); err != nil || st.Size() == s.confirmedOff {
		return
	}
	ids, next, err := readConfirmed(path, s.confirmedOff)
	if err != nil {
		s.log.Warn("cannot read confirmations of other agent versions", slog.Any("error", err))
		return
	}
	s.confirmedOff = next
	if len(ids) > 0 {
		s.confirm(ids)
	}
}
