package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	batonv1 "github.com/batonhq/baton/gen/baton/v1"
)

// legacyRecord is one attempt's file in the journal format before the log:
// <id>.json in the journal directory, replaced atomically on every change.
type legacyRecord struct {
	AttemptID int64       `json:"attempt_id"`
	State     recordState `json:"state"`
	StartTime time.Time   `json:"start_time,omitzero"`
	// Outcome is the TaskFinished in protojson, kept until acked.
	Outcome json.RawMessage `json:"outcome,omitempty"`
	Updated time.Time       `json:"updated"`
}

// legacyEntry is one journal file of the earlier format.
type legacyEntry struct {
	id  int64
	rec *record // nil when the log holds the attempt already
}

// loadLegacy reads the journal files of the format before the log, by
// file name. Attempts the log holds already (a migration that did not get
// to remove the files) are left as the log has them. Temp files of that
// format are removed; an unreadable record is logged and becomes an
// abandoned tombstone when its file name still names the attempt.
func (j *journal) loadLegacy() (map[string]legacyEntry, error) {
	entries, err := os.ReadDir(j.dir)
	if err != nil {
		return nil, fmt.Errorf("read journal dir: %w", err)
	}
	legacy := make(map[string]legacyEntry)
	for _, e := range entries {
		name := e.Name()
		path := filepath.Join(j.dir, name)
		if name == journalLogName {
			continue
		}
		if strings.HasSuffix(name, ".tmp") {
			if err := os.Remove(path); err != nil {
				j.log.Warn("journal: cannot remove temp file", slog.String("path", path), slog.Any("error", err))
			}
			continue
		}
		idText, ok := strings.CutSuffix(name, ".json")
		id, err := strconv.ParseInt(idText, 10, 64)
		if !ok || err != nil || id <= 0 || e.IsDir() {
			j.log.Warn("journal: skipping unknown entry", slog.String("path", path))
			continue
		}
		if _, inLog := j.recs[id]; inLog {
			legacy[name] = legacyEntry{id: id}
			continue
		}
		rec, err := readLegacyRecord(path, id)
		if err != nil {
			j.log.Error("journal: unreadable record; the attempt is kept as abandoned and its outcome is lost",
				slog.Int64("attempt_id", id), slog.String("path", path), slog.Any("error", err))
			rec = &record{state: stateAbandoned, updated: j.now()}
		}
		rec.written = true
		legacy[name] = legacyEntry{id: id, rec: rec}
	}
	if len(legacy) > 0 {
		j.log.Info("journal: migrating records of the earlier journal format into the log", slog.Int("records", len(legacy)))
	}
	return legacy, nil
}

// removeLegacy removes migrated journal files; the log holds their
// attempts now.
func (j *journal) removeLegacy(legacy map[string]legacyEntry) error {
	for name := range legacy {
		if err := os.Remove(filepath.Join(j.dir, name)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("remove migrated journal file: %w", err)
		}
	}
	if j.fsync {
		if err := syncDir(j.dir); err != nil {
			return fmt.Errorf("sync journal dir: %w", err)
		}
	}
	return nil
}

// readLegacyRecord reads and checks one record file of the earlier format.
func readLegacyRecord(path string, id int64) (*record, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read: %w", err)
	}
	var lr legacyRecord
	if err := json.Unmarshal(data, &lr); err != nil {
		return nil, fmt.Errorf("decode: %w", err)
	}
	if lr.AttemptID != id {
		return nil, fmt.Errorf("record names attempt %d, file name says %d", lr.AttemptID, id)
	}
	rec := &record{state: lr.State, start: lr.StartTime, updated: lr.Updated}
	switch lr.State {
	case stateStarted, stateAcked, stateAbandoned:
	case stateFinished, stateRejected:
		var tf batonv1.TaskFinished
		if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(lr.Outcome, &tf); err != nil {
			return nil, fmt.Errorf("decode outcome: %w", err)
		}
		if tf.GetAttemptId() != id {
			return nil, fmt.Errorf("outcome names attempt %d, file name says %d", tf.GetAttemptId(), id)
		}
		rec.outcome = &tf
	default:
		return nil, fmt.Errorf("unknown state %q", lr.State)
	}
	return rec, nil
}
