package agent

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/timestamppb"

	batonv1 "github.com/batonhq/baton/gen/baton/v1"
)

// fakeClock is a settable time source.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

type journalBundle struct {
	dir   string
	clock *fakeClock
	logs  *logStore
}

func setupJournal(t *testing.T) (*journalBundle, func(t *testing.T) *journal) {
	t.Helper()
	logger, logs := newTestLog(t)
	b := &journalBundle{
		dir:   filepath.Join(t.TempDir(), "journal"),
		clock: &fakeClock{now: time.Date(2026, 11, 21, 2, 0, 0, 0, time.UTC)},
		logs:  logs,
	}
	open := func(t *testing.T) *journal {
		t.Helper()
		j, err := openJournal(b.dir, false, logger, b.clock.Now)
		if err != nil {
			t.Fatalf("openJournal: %v", err)
		}
		return j
	}
	return b, open
}

func outcome(id int64, o batonv1.AttemptOutcome) *batonv1.TaskFinished {
	return &batonv1.TaskFinished{
		AttemptId:  id,
		Outcome:    o,
		ExitCode:   3,
		Error:      "exit status 3",
		Outputs:    map[string]string{"RowCount": "42"},
		StdoutTail: []byte("out\xff"), // raw bytes survive the round trip
		StderrTail: []byte("err"),
		StartTime:  timestamppb.New(time.Date(2026, 11, 21, 1, 0, 0, 0, time.UTC)),
		EndTime:    timestamppb.New(time.Date(2026, 11, 21, 1, 5, 0, 0, time.UTC)),
	}
}

func TestJournalLifecycleSurvivesReopen(t *testing.T) {
	t.Parallel()
	b, open := setupJournal(t)
	j := open(t)
	start := b.clock.Now()
	for _, id := range []int64{1, 2, 3} {
		if err := j.begin(id, start); err != nil {
			t.Fatalf("begin(%d): %v", id, err)
		}
	}
	if err := j.begin(1, start); err != errAttemptSeen {
		t.Errorf("begin(1) again = %v, want errAttemptSeen", err)
	}
	tf1, tf2 := outcome(1, failed), outcome(2, succeeded)
	for _, tf := range []*batonv1.TaskFinished{tf1, tf2} {
		if err := j.finish(tf); err != nil {
			t.Fatalf("finish: %v", err)
		}
	}
	if err := j.ack([]int64{2, 99}); err != nil {
		t.Fatalf("ack: %v", err)
	}

	// Attempt 3 was running when "the agent stopped", and no runner
	// knows of it.
	j = open(t)
	j.abandonStarted(func(int64) bool { return false })
	b.logs.wait(t, "journal: attempt was running when the agent stopped; its outcome is unknown", "attempt_id", "3")
	if diff := cmp.Diff([]*batonv1.TaskFinished{tf1}, j.unacked(), protocmp.Transform()); diff != "" {
		t.Errorf("unacked after reopen mismatch (-want +got):\n%s", diff)
	}
	for _, id := range []int64{1, 2, 3} {
		if !seen(j, id) {
			t.Errorf("seen(%d) = false after reopen, want true", id)
		}
		if err := j.begin(id, start); err != errAttemptSeen {
			t.Errorf("begin(%d) after reopen = %v, want errAttemptSeen", id, err)
		}
	}
	if seen(j, 4) {
		t.Error("seen(4) = true, want false")
	}
}

func TestJournalRejectedIsNotSeen(t *testing.T) {
	t.Parallel()
	b, open := setupJournal(t)
	j := open(t)
	tf := outcome(5, rejected)
	if err := j.finish(tf); err != nil {
		t.Fatal(err)
	}
	if seen(j, 5) {
		t.Error("seen(5) = true for a rejected attempt, want false")
	}
	j = open(t)
	if got := j.unacked(); len(got) != 1 || got[0].GetOutcome() != rejected {
		t.Errorf("unacked after reopen = %v, want the REJECTED outcome", got)
	}
	if err := j.ack([]int64{5}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(b.dir, "5.json")); !os.IsNotExist(err) {
		t.Errorf("acked rejection still on disk: %v", err)
	}
	// Placed here again later, it may start.
	if err := j.begin(5, b.clock.Now()); err != nil {
		t.Errorf("begin(5) after an acked rejection = %v, want nil", err)
	}
}

func TestJournalPrunesOldTombstones(t *testing.T) {
	t.Parallel()
	b, open := setupJournal(t)
	j := open(t)
	for _, id := range []int64{1, 2} {
		if err := j.begin(id, b.clock.Now()); err != nil {
			t.Fatal(err)
		}
		if err := j.finish(outcome(id, succeeded)); err != nil {
			t.Fatal(err)
		}
	}
	if err := j.ack([]int64{1}); err != nil {
		t.Fatal(err)
	}
	b.clock.Add(journalRetention - time.Minute)
	if j = open(t); !seen(j, 1) {
		t.Error("acked attempt forgotten before the retention ended")
	}
	b.clock.Add(2 * time.Minute)
	j = open(t)
	if seen(j, 1) {
		t.Error("acked attempt still remembered after the retention")
	}
	if _, err := os.Stat(filepath.Join(b.dir, "1.json")); !os.IsNotExist(err) {
		t.Errorf("pruned record still on disk: %v", err)
	}
	// Unacked outcomes are never pruned.
	if got := j.unacked(); len(got) != 1 || got[0].GetAttemptId() != 2 {
		t.Errorf("unacked = %v, want attempt 2", got)
	}
}

func TestJournalToleratesDamage(t *testing.T) {
	t.Parallel()
	b, open := setupJournal(t)
	j := open(t)
	if err := j.begin(10, b.clock.Now()); err != nil {
		t.Fatal(err)
	}
	if err := j.finish(outcome(10, succeeded)); err != nil {
		t.Fatal(err)
	}
	good, err := os.ReadFile(filepath.Join(b.dir, "10.json"))
	if err != nil {
		t.Fatal(err)
	}
	files := map[string]string{
		"11.json":                   "{not json",
		"12.json":                   string(good[:len(good)/2]), // cut mid-write by a crash without rename
		"13.json":                   "",
		"14.json":                   strings.Replace(string(good), `"attempt_id":10`, `"attempt_id":99`, 1),
		"15.json":                   `{"attempt_id":15,"state":"exploded","updated":"2026-11-21T00:00:00Z"}`,
		"16.json":                   `{"attempt_id":16,"state":"finished","outcome":{"attemptId":"17"},"updated":"2026-11-21T00:00:00Z"}`,
		"17.json":                   `{"attempt_id":17,"state":"finished","outcome":"garbage","updated":"2026-11-21T00:00:00Z"}`,
		"18.json.123.tmp":           "half a record",
		"notanid.json":              "{}",
		"-5.json":                   "{}",
		"README":                    "left alone",
		"99999999999999999999.json": "{}",
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(b.dir, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Mkdir(filepath.Join(b.dir, "19.json"), 0o700); err != nil {
		t.Fatal(err)
	}

	j = open(t)
	if got := j.unacked(); len(got) != 1 || got[0].GetAttemptId() != 10 {
		t.Errorf("unacked = %v, want only the intact attempt 10", got)
	}
	// Damaged records still name their attempt: never start those again.
	for _, id := range []int64{11, 12, 13, 14, 15, 16, 17} {
		if !seen(j, id) {
			t.Errorf("seen(%d) = false for a damaged record, want true", id)
		}
	}
	if _, err := os.Stat(filepath.Join(b.dir, "18.json.123.tmp")); !os.IsNotExist(err) {
		t.Errorf("temp file left behind: %v", err)
	}
	if _, err := os.Stat(filepath.Join(b.dir, "README")); err != nil {
		t.Errorf("unrelated file touched: %v", err)
	}
	b.logs.wait(t, "journal: unreadable record; the attempt is kept as abandoned and its outcome is lost", "attempt_id", "11")
	b.logs.wait(t, "journal: skipping unknown entry")

	// The rewritten tombstones read cleanly next time.
	j = open(t)
	for _, id := range []int64{11, 17} {
		if !seen(j, id) {
			t.Errorf("seen(%d) = false after a second reopen, want true", id)
		}
	}
}

func TestJournalFsync(t *testing.T) {
	t.Parallel()
	logger, _ := newTestLog(t)
	dir := filepath.Join(t.TempDir(), "journal")
	j, err := openJournal(dir, true, logger, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	if err := j.begin(1, time.Now()); err != nil {
		t.Fatal(err)
	}
	if err := j.finish(outcome(1, succeeded)); err != nil {
		t.Fatal(err)
	}
	if err := j.ack([]int64{1}); err != nil {
		t.Fatal(err)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if !slices.Equal(names, []string{"1.json"}) {
		t.Errorf("journal dir holds %v, want only 1.json (no temp files)", names)
	}
}

// seen reports whether the journal holds attempt id as started, finished
// or a tombstone: an attempt that must not start again.
func seen(j *journal, id int64) bool {
	state, _, ok := j.lookup(id)
	return ok && state != stateRejected
}
