package agent

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/batonhq/baton/agent/internal/recordlog"
	"github.com/batonhq/baton/agent/runner"
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
	dir        string
	clock      *fakeClock
	logs       *logStore
	logger     *slog.Logger
	fsync      bool
	compactMin int64
	maxTombs   int
}

// setupJournal returns a bundle and a func that opens the bundle's journal
// and closes it when the test ends.
func setupJournal(t *testing.T) (*journalBundle, func(t *testing.T) *journal) {
	t.Helper()
	logger, logs := newTestLog(t)
	b := &journalBundle{
		dir:    filepath.Join(t.TempDir(), "journal"),
		clock:  &fakeClock{now: time.Date(2026, 11, 21, 2, 0, 0, 0, time.UTC)},
		logs:   logs,
		logger: logger,
	}
	open := func(t *testing.T) *journal {
		t.Helper()
		j, err := openJournalWith(b.dir, b.fsync, b.logger, b.clock.Now,
			journalLimits{compactMin: b.compactMin, maxTombstones: b.maxTombs})
		if err != nil {
			t.Fatalf("openJournal: %v", err)
		}
		t.Cleanup(func() { _ = j.close() })
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

// flush waits until every queued record is written.
func flush(t *testing.T, j *journal) {
	t.Helper()
	if err := j.rlog.Sync(); err != nil {
		t.Fatalf("journal write: %v", err)
	}
}

// entryLen is the size in the log of a record with an outcome of n
// bytes.
func entryLen(n int) int { return recordlog.FrameLen + recFixedLen + n }

// closeJournal closes j, failing the test on an error.
func closeJournal(t *testing.T, j *journal) {
	t.Helper()
	if err := j.close(); err != nil {
		t.Fatalf("close: %v", err)
	}
}

// snapshot is a journal's state as a comparable value.
type snapshot map[int64]string

func stateOfJournal(j *journal) snapshot {
	j.mu.Lock()
	defer j.mu.Unlock()
	s := make(snapshot, len(j.recs))
	for id, rec := range j.recs {
		v := string(rec.state)
		if rec.outcome != nil {
			v += "/" + rec.outcome.GetOutcome().String()
		}
		s[id] = v
	}
	return s
}

// logFile reads the journal's log.
func logFile(t *testing.T, dir string) []byte {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dir, journalLogName))
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func TestJournalLifecycleSurvivesReopen(t *testing.T) {
	t.Parallel()
	b, open := setupJournal(t)
	j := open(t)
	start := b.clock.Now()
	for _, id := range []int64{1, 2, 3} {
		if err := j.begin(id, start, ""); err != nil {
			t.Fatalf("begin(%d): %v", id, err)
		}
	}
	if err := j.begin(1, start, ""); err != errAttemptSeen {
		t.Errorf("begin(1) again = %v, want errAttemptSeen", err)
	}
	tf1, tf2 := outcome(1, failed), outcome(2, succeeded)
	for _, tf := range []*batonv1.TaskFinished{tf1, tf2} {
		if err := j.finish(tf); err != nil {
			t.Fatalf("finish: %v", err)
		}
	}
	j.ack([]int64{2, 99})
	closeJournal(t, j)

	// Attempt 3 was running when "the agent stopped", and no runner
	// knows of it.
	j = open(t)
	j.settleStarted(func(int64) bool { return false }, "")
	b.logs.wait(t, "journal: attempt was running when the agent stopped; its outcome is unknown", "attempt_id", "3")
	if diff := cmp.Diff([]*batonv1.TaskFinished{tf1}, j.unacked(), protocmp.Transform()); diff != "" {
		t.Errorf("unacked after reopen mismatch (-want +got):\n%s", diff)
	}
	for _, id := range []int64{1, 2, 3} {
		if !seen(j, id) {
			t.Errorf("seen(%d) = false after reopen, want true", id)
		}
		if err := j.begin(id, start, ""); err != errAttemptSeen {
			t.Errorf("begin(%d) after reopen = %v, want errAttemptSeen", id, err)
		}
	}
	if seen(j, 4) {
		t.Error("seen(4) = true, want false")
	}
	want := snapshot{1: "finished/ATTEMPT_OUTCOME_FAILED", 2: "acked", 3: "abandoned"}
	if diff := cmp.Diff(want, stateOfJournal(j)); diff != "" {
		t.Errorf("state after reopen mismatch (-want +got):\n%s", diff)
	}
	closeJournal(t, j)
	if diff := cmp.Diff(want, stateOfJournal(open(t))); diff != "" {
		t.Errorf("abandoned tombstone not kept (-want +got):\n%s", diff)
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
	closeJournal(t, j)
	j = open(t)
	if got := j.unacked(); len(got) != 1 || got[0].GetOutcome() != rejected {
		t.Errorf("unacked after reopen = %v, want the REJECTED outcome", got)
	}
	j.ack([]int64{5})
	closeJournal(t, j)
	j = open(t)
	if _, _, ok := j.lookup(5); ok {
		t.Error("acked rejection still in the journal after reopen")
	}
	// Placed here again later, it may start.
	if err := j.begin(5, b.clock.Now(), ""); err != nil {
		t.Errorf("begin(5) after an acked rejection = %v, want nil", err)
	}
	// A rejection after the begin (the runner was unavailable) means
	// nothing ran either.
	if err := j.finish(outcome(5, rejected)); err != nil {
		t.Fatal(err)
	}
	if state, _, _ := j.lookup(5); state != stateRejected {
		t.Errorf("state after a rejection of a begun attempt = %q, want %q", state, stateRejected)
	}
}

func TestJournalPrunesOldTombstones(t *testing.T) {
	t.Parallel()
	b, open := setupJournal(t)
	j := open(t)
	for _, id := range []int64{1, 2} {
		if err := j.begin(id, b.clock.Now(), ""); err != nil {
			t.Fatal(err)
		}
		if err := j.finish(outcome(id, succeeded)); err != nil {
			t.Fatal(err)
		}
	}
	j.ack([]int64{1})
	closeJournal(t, j)
	b.clock.Add(journalRetention - time.Minute)
	j = open(t)
	if !seen(j, 1) {
		t.Error("acked attempt forgotten before the retention ended")
	}
	closeJournal(t, j)
	b.clock.Add(2 * time.Minute)
	j = open(t)
	if seen(j, 1) {
		t.Error("acked attempt still remembered after the retention")
	}
	// Unacked outcomes are never pruned.
	if got := j.unacked(); len(got) != 1 || got[0].GetAttemptId() != 2 {
		t.Errorf("unacked = %v, want attempt 2", got)
	}

	// A prune through ack, then a compaction: the record leaves the log.
	if err := j.begin(3, b.clock.Now(), ""); err != nil {
		t.Fatal(err)
	}
	if err := j.finish(outcome(3, succeeded)); err != nil {
		t.Fatal(err)
	}
	j.ack([]int64{3})
	b.clock.Add(journalRetention + time.Minute)
	j.ack([]int64{2})
	flush(t, j)
	if seen(j, 3) {
		t.Error("attempt 3 still remembered after the retention")
	}
	if err := j.rlog.Compact(); err != nil {
		t.Fatal(err)
	}
	closeJournal(t, j)
	if bytes.Contains(logFile(t, b.dir), encodeEntry(kindOf[stateAcked], 3, time.Time{}, time.Time{}, nil)[:9]) {
		t.Error("the pruned tombstone of attempt 3 is still in the log after a compaction")
	}
	j = open(t)
	if diff := cmp.Diff(snapshot{2: "acked"}, stateOfJournal(j)); diff != "" {
		t.Errorf("state after compaction mismatch (-want +got):\n%s", diff)
	}
}

func TestJournalFsync(t *testing.T) {
	t.Parallel()
	b, open := setupJournal(t)
	b.fsync = true
	j := open(t)
	if err := j.begin(1, time.Now(), ""); err != nil {
		t.Fatal(err)
	}
	if err := j.finish(outcome(1, succeeded)); err != nil {
		t.Fatal(err)
	}
	j.ack([]int64{1})
	closeJournal(t, j)
	entries, err := os.ReadDir(b.dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if !slices.Equal(names, []string{journalLogName}) {
		t.Errorf("journal dir holds %v, want only %s", names, journalLogName)
	}
	if diff := cmp.Diff(snapshot{1: "acked"}, stateOfJournal(open(t))); diff != "" {
		t.Errorf("state after reopen mismatch (-want +got):\n%s", diff)
	}
}

// journalOp is one step of a scripted journal history.
type journalOp struct {
	name string
	do   func(t *testing.T, j *journal)
}

// scriptedHistory returns a history touching every record kind, and the
// ids it begins.
func scriptedHistory(start time.Time) []journalOp {
	begin := func(id int64) journalOp {
		return journalOp{fmt.Sprintf("begin %d", id), func(t *testing.T, j *journal) {
			if err := j.begin(id, start, ""); err != nil {
				t.Fatalf("begin(%d): %v", id, err)
			}
		}}
	}
	finish := func(id int64, o batonv1.AttemptOutcome) journalOp {
		return journalOp{fmt.Sprintf("finish %d %v", id, o), func(t *testing.T, j *journal) {
			if err := j.finish(outcome(id, o)); err != nil {
				t.Fatalf("finish(%d): %v", id, err)
			}
		}}
	}
	ack := func(ids ...int64) journalOp {
		return journalOp{fmt.Sprintf("ack %v", ids), func(t *testing.T, j *journal) {
			j.ack(ids)
			flush(t, j)
		}}
	}
	return []journalOp{
		begin(1), begin(2), finish(1, succeeded), finish(9, rejected), begin(3),
		ack(1, 9), finish(2, failed), begin(4), finish(4, rejected),
		{"abandon 3", func(t *testing.T, j *journal) {
			j.settleStarted(func(id int64) bool { return id != 3 }, "")
		}},
		ack(2, 4), begin(5),
		{"begin 6 on runner r1", func(t *testing.T, j *journal) {
			if err := j.begin(6, start, "r1"); err != nil {
				t.Fatalf("begin(6): %v", err)
			}
		}},
		{"settle 6: never started on r1", func(t *testing.T, j *journal) {
			j.settleStarted(func(id int64) bool { return id != 6 }, "r1")
		}},
	}
}

// TestJournalCrashAtEveryByte replays a history, then opens every prefix
// of its log, as a crash at that point would leave it: the journal opens,
// every attempt whose begin record is whole counts as seen, and at each
// record boundary the state is exactly the state after those steps.
func TestJournalCrashAtEveryByte(t *testing.T) {
	t.Parallel()
	b, open := setupJournal(t)
	j := open(t)
	ops := scriptedHistory(b.clock.Now())
	type step struct {
		end   int // log size after the step
		state snapshot
		begun []int64
	}
	steps := []step{{end: len(journalHeader), state: snapshot{}}}
	var begun []int64
	for _, op := range ops {
		op.do(t, j)
		if id, ok := strings.CutPrefix(op.name, "begin "); ok {
			var n int64
			if _, err := fmt.Sscan(id, &n); err != nil {
				t.Fatalf("op %q: %v", op.name, err)
			}
			begun = append(begun, n)
		}
		steps = append(steps, step{end: len(logFile(t, b.dir)), state: stateOfJournal(j), begun: slices.Clone(begun)})
	}
	closeJournal(t, j)
	data := logFile(t, b.dir)
	if steps[len(steps)-1].end != len(data) {
		t.Fatalf("log is %d bytes after close, %d after the last step", len(data), steps[len(steps)-1].end)
	}

	logger := slog.New(slog.DiscardHandler)
	for n := 0; n <= len(data); n++ {
		// The last step whose records are all within the prefix.
		k := 0
		for k+1 < len(steps) && steps[k+1].end <= n {
			k++
		}
		dir := filepath.Join(t.TempDir(), "journal")
		if err := os.MkdirAll(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, journalLogName), data[:n], 0o600); err != nil {
			t.Fatal(err)
		}
		cj, err := openJournal(dir, false, logger, b.clock.Now)
		if err != nil {
			t.Fatalf("prefix %d: openJournal: %v", n, err)
		}
		// Every attempt that ran (begun, and not rejected since) stays
		// seen.
		for _, id := range steps[k].begun {
			if state, ok := steps[k].state[id]; ok && !strings.HasPrefix(state, string(stateRejected)) && !seen(cj, id) {
				t.Errorf("prefix %d (after %q): attempt %d, begun, is not seen: it could start twice", n, ops[k-1].name, id)
			}
		}
		got := stateOfJournal(cj)
		if n == steps[k].end {
			if diff := cmp.Diff(steps[k].state, got); diff != "" {
				t.Errorf("prefix %d (after step %d): state mismatch (-want +got):\n%s", n, k, diff)
			}
		}
		closeJournal(t, cj)
		// The torn tail is gone: the log reads cleanly and the same.
		if n > len(journalHeader) && n != steps[k].end {
			if fixed := logFile(t, dir); len(fixed) > n {
				t.Errorf("prefix %d: rewritten log is %d bytes, want at most %d", n, len(fixed), n)
			}
		}
		cj, err = openJournal(dir, false, logger, b.clock.Now)
		if err != nil {
			t.Fatalf("prefix %d: second openJournal: %v", n, err)
		}
		if diff := cmp.Diff(got, stateOfJournal(cj)); diff != "" {
			t.Errorf("prefix %d: state changed on the second open (-first +second):\n%s", n, diff)
		}
		closeJournal(t, cj)
	}
}

func TestJournalTornTailIsLogged(t *testing.T) {
	t.Parallel()
	b, open := setupJournal(t)
	j := open(t)
	if err := j.begin(1, b.clock.Now(), ""); err != nil {
		t.Fatal(err)
	}
	if err := j.finish(outcome(1, succeeded)); err != nil {
		t.Fatal(err)
	}
	closeJournal(t, j)
	data := logFile(t, b.dir)
	if err := os.WriteFile(filepath.Join(b.dir, journalLogName), data[:len(data)-7], 0o600); err != nil {
		t.Fatal(err)
	}
	j = open(t)
	b.logs.wait(t, "record log: dropping a torn record at the end (a write cut short by a crash)")
	if diff := cmp.Diff(snapshot{1: "started"}, stateOfJournal(j)); diff != "" {
		t.Errorf("state mismatch (-want +got):\n%s", diff)
	}
	// Appends after the rewrite are read back.
	if err := j.finish(outcome(1, failed)); err != nil {
		t.Fatal(err)
	}
	closeJournal(t, j)
	if diff := cmp.Diff(snapshot{1: "finished/ATTEMPT_OUTCOME_FAILED"}, stateOfJournal(open(t))); diff != "" {
		t.Errorf("state after appending to a repaired log mismatch (-want +got):\n%s", diff)
	}
}

func TestJournalSkipsCorruptRecords(t *testing.T) {
	t.Parallel()
	b, open := setupJournal(t)
	j := open(t)
	var ends []int
	for _, id := range []int64{1, 2, 3} {
		if err := j.begin(id, b.clock.Now(), ""); err != nil {
			t.Fatal(err)
		}
		ends = append(ends, len(logFile(t, b.dir)))
	}
	closeJournal(t, j)
	data := logFile(t, b.dir)

	tests := []struct {
		name    string
		damage  func(data []byte) []byte
		want    snapshot
		wantLog string
	}{
		{
			name:    "a flipped bit in the middle record",
			damage:  func(d []byte) []byte { d[ends[0]+recordlog.FrameLen+3] ^= 0x10; return d },
			want:    snapshot{1: "started", 3: "started"},
			wantLog: "record log: skipping damaged bytes; what was recorded there is lost",
		},
		{
			name:    "a broken length in the middle record",
			damage:  func(d []byte) []byte { d[ends[0]+2] = 0xFF; return d },
			want:    snapshot{1: "started", 3: "started"},
			wantLog: "record log: skipping damaged bytes; what was recorded there is lost",
		},
		{
			name: "a whole record of an unknown kind",
			damage: func(d []byte) []byte {
				bad := recordlog.AppendRecord(nil, encodeEntry('Z', 7, time.Time{}, time.Time{}, nil))
				return slices.Concat(d[:ends[0]], bad, d[ends[0]:])
			},
			want:    snapshot{1: "started", 2: "started", 3: "started"},
			wantLog: "record log: skipping an invalid record",
		},
		{
			name: "a finished record whose outcome is not a TaskFinished",
			damage: func(d []byte) []byte {
				bad := recordlog.AppendRecord(nil, encodeEntry('F', 7, time.Time{}, time.Time{}, []byte{0xFF, 0xFF, 0xFF}))
				return slices.Concat(d[:ends[0]], bad, d[ends[0]:])
			},
			want:    snapshot{1: "started", 2: "started", 3: "started"},
			wantLog: "record log: skipping an invalid record",
		},
		{
			name: "an outcome naming another attempt",
			damage: func(d []byte) []byte {
				tf := outcome(8, succeeded)
				raw, _ := proto.Marshal(tf)
				bad := recordlog.AppendRecord(nil, encodeEntry('F', 7, time.Time{}, time.Time{}, raw))
				return slices.Concat(d[:ends[0]], bad, d[ends[0]:])
			},
			want:    snapshot{1: "started", 2: "started", 3: "started"},
			wantLog: "record log: skipping an invalid record",
		},
		{
			name:    "garbage between records",
			damage:  func(d []byte) []byte { return slices.Concat(d[:ends[1]], []byte("\xb7J garbage \xb7"), d[ends[1]:]) },
			want:    snapshot{1: "started", 2: "started", 3: "started"},
			wantLog: "record log: skipping damaged bytes; what was recorded there is lost",
		},
		{
			name:    "a damaged file header",
			damage:  func(d []byte) []byte { d[0] = 'X'; return d },
			want:    snapshot{1: "started", 2: "started", 3: "started"},
			wantLog: "record log: the file does not start with the expected header; reading what records it holds",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cb, copen := setupJournal(t)
			if err := os.MkdirAll(cb.dir, 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(cb.dir, journalLogName), tc.damage(slices.Clone(data)), 0o600); err != nil {
				t.Fatal(err)
			}
			cj := copen(t)
			cb.logs.wait(t, tc.wantLog)
			if diff := cmp.Diff(tc.want, stateOfJournal(cj)); diff != "" {
				t.Errorf("state mismatch (-want +got):\n%s", diff)
			}
			closeJournal(t, cj)
			// Rewritten without the damage: nothing is logged again.
			clean, cleanLogs := newTestLog(t)
			cj, err := openJournal(cb.dir, false, clean, cb.clock.Now)
			if err != nil {
				t.Fatal(err)
			}
			defer closeJournal(t, cj)
			cleanLogs.mu.Lock()
			n := len(cleanLogs.records)
			cleanLogs.mu.Unlock()
			if n != 0 {
				t.Errorf("second open logged %d records, want none", n)
			}
			if diff := cmp.Diff(tc.want, stateOfJournal(cj)); diff != "" {
				t.Errorf("state after the rewrite mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

func TestJournalCompacts(t *testing.T) {
	t.Parallel()
	b, open := setupJournal(t)
	b.compactMin = 4 << 10
	j := open(t)
	big := outcome(0, succeeded)
	big.StdoutTail = []byte(strings.Repeat("x", 2000))
	const n = 200
	for id := int64(1); id <= n; id++ {
		if err := j.begin(id, b.clock.Now(), ""); err != nil {
			t.Fatal(err)
		}
		tf := outcome(id, succeeded)
		tf.StdoutTail = big.StdoutTail
		if err := j.finish(tf); err != nil {
			t.Fatal(err)
		}
		j.ack([]int64{id})
		j.rlog.Settle()
		// 2 KB outcomes go through the log; what stays live is a
		// tombstone per attempt.
		size := len(logFile(t, b.dir))
		if limit := 2*(int(id)*entryLen(0)+len(journalHeader)) + int(b.compactMin) + 2*entryLen(2100); size > limit {
			t.Fatalf("log is %d bytes after %d attempts, want at most %d", size, id, limit)
		}
	}
	closeJournal(t, j)
	j = open(t)
	if got := len(stateOfJournal(j)); got != n {
		t.Errorf("journal holds %d attempts after reopen, want %d", got, n)
	}
	for id := int64(1); id <= n; id++ {
		if state, _, _ := j.lookup(id); state != stateAcked {
			t.Fatalf("attempt %d is %q after compactions, want acked", id, state)
		}
	}
}

// TestJournalConcurrentUse runs many attempts at once through a journal
// that compacts often, with and without fsync, and checks what a reopen
// reads.
func TestJournalConcurrentUse(t *testing.T) {
	t.Parallel()
	for _, fsync := range []bool{false, true} {
		t.Run(fmt.Sprintf("fsync=%v", fsync), func(t *testing.T) {
			t.Parallel()
			b, open := setupJournal(t)
			b.fsync = fsync
			b.compactMin = 2 << 10
			j := open(t)
			const workers, per = 8, 40
			var wg sync.WaitGroup
			for w := range workers {
				wg.Go(func() {
					for i := range per {
						id := int64(w*per + i + 1)
						if err := j.begin(id, time.Now(), ""); err != nil {
							t.Errorf("begin(%d): %v", id, err)
							return
						}
						o := succeeded
						if i%5 == 0 {
							o = failed
						}
						if err := j.finish(outcome(id, o)); err != nil {
							t.Errorf("finish(%d): %v", id, err)
							return
						}
						if i%3 != 0 {
							j.ack([]int64{id})
						}
						_ = j.unacked()
						j.lookup(id - 1)
					}
				})
			}
			wg.Wait()
			want := stateOfJournal(j)
			closeJournal(t, j)
			if len(want) != workers*per {
				t.Fatalf("journal holds %d attempts, want %d", len(want), workers*per)
			}
			if diff := cmp.Diff(want, stateOfJournal(open(t))); diff != "" {
				t.Errorf("state after reopen mismatch (-before +after):\n%s", diff)
			}
		})
	}
}

// TestJournalGroupCommit holds the first write and begins several
// attempts meanwhile: they all go out in one more write.
func TestJournalGroupCommit(t *testing.T) {
	t.Parallel()
	b, open := setupJournal(t)
	b.fsync = true
	j := open(t)
	var mu sync.Mutex
	var writes []int
	entered := make(chan struct{})
	release := make(chan struct{})
	j.rlog.SetWriteHook(func(n int) error {
		mu.Lock()
		writes = append(writes, n)
		first := len(writes) == 1
		mu.Unlock()
		if first {
			close(entered)
			<-release
		}
		return nil
	})

	const n = 6
	errs := make(chan error, n+1)
	go func() { errs <- j.begin(1, time.Now(), "") }()
	<-entered
	for id := int64(2); id <= n+1; id++ {
		go func() { errs <- j.begin(id, time.Now(), "") }()
	}
	// A begin queues its record under the journal's lock, in the step
	// that makes its attempt known.
	deadline := time.After(waitTimeout)
	for {
		queued := len(stateOfJournal(j)) - 1
		if queued == n {
			break
		}
		select {
		case <-deadline:
			t.Fatalf("%d records queued within %s, want %d", queued, waitTimeout, n)
		case <-time.After(time.Millisecond):
		}
	}
	// An acknowledgement does not wait for the disk either.
	j.ack([]int64{1})
	close(release)
	for range n + 1 {
		if err := <-errs; err != nil {
			t.Errorf("begin: %v", err)
		}
	}
	mu.Lock()
	got := slices.Clone(writes)
	mu.Unlock()
	if want := []int{entryLen(0), n * entryLen(0)}; !slices.Equal(got, want) {
		t.Errorf("writes = %v bytes, want %v: the first begin, then the other %d in one", got, want, n)
	}
}

// TestJournalAckDoesNotWaitForTheDisk acknowledges an outcome while a
// write is held: ack returns at once, and the record is written after.
func TestJournalAckDoesNotWaitForTheDisk(t *testing.T) {
	t.Parallel()
	b, open := setupJournal(t)
	j := open(t)
	if err := j.begin(1, b.clock.Now(), ""); err != nil {
		t.Fatal(err)
	}
	if err := j.finish(outcome(1, succeeded)); err != nil {
		t.Fatal(err)
	}
	entered := make(chan struct{})
	release := make(chan struct{})
	var once sync.Once
	j.rlog.SetWriteHook(func(int) error {
		once.Do(func() {
			close(entered)
			<-release
		})
		return nil
	})
	began := make(chan error, 1)
	go func() { began <- j.begin(2, b.clock.Now(), "") }()
	<-entered
	j.ack([]int64{1}) // must not block behind the held write
	if state, _, _ := j.lookup(1); state != stateAcked {
		t.Errorf("state after ack = %q, want acked at once", state)
	}
	close(release)
	if err := <-began; err != nil {
		t.Fatal(err)
	}
	closeJournal(t, j)
	if diff := cmp.Diff(snapshot{1: "acked", 2: "started"}, stateOfJournal(open(t))); diff != "" {
		t.Errorf("state after reopen mismatch (-want +got):\n%s", diff)
	}
}

// TestJournalUnackedListsWrittenOutcomesOnly holds the write of an
// outcome: it is not listed until it is on disk.
func TestJournalUnackedListsWrittenOutcomesOnly(t *testing.T) {
	t.Parallel()
	_, open := setupJournal(t)
	j := open(t)
	entered := make(chan struct{})
	release := make(chan struct{})
	var once sync.Once
	j.rlog.SetWriteHook(func(int) error {
		once.Do(func() {
			close(entered)
			<-release
		})
		return nil
	})
	wait := j.finishLater(outcome(1, rejected))
	done := make(chan error, 1)
	go func() { done <- wait() }()
	<-entered
	if got := j.unacked(); len(got) != 0 {
		t.Errorf("unacked = %v while the outcome is being written, want none", got)
	}
	if n := j.unackedCount(); n != 1 {
		t.Errorf("unackedCount = %d, want 1", n)
	}
	close(release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if got := j.unacked(); len(got) != 1 {
		t.Errorf("unacked = %v after the write, want the outcome", got)
	}
}

func TestJournalWriteFailure(t *testing.T) {
	t.Parallel()
	b, open := setupJournal(t)
	j := open(t)
	if err := j.begin(1, b.clock.Now(), ""); err != nil {
		t.Fatal(err)
	}
	// The disk fails every write from now on.
	j.rlog.SetWriteHook(func(int) error { return errors.New("disk on fire") })
	if err := j.begin(2, b.clock.Now(), ""); err == nil {
		t.Fatal("begin(2) on a broken log = nil, want an error")
	}
	if seen(j, 2) {
		t.Error("seen(2) = true after a failed begin, want false: it was not recorded and must not start")
	}
	tf := outcome(1, succeeded)
	if err := j.finish(tf); err == nil {
		t.Fatal("finish on a broken log = nil, want an error")
	}
	// Kept in memory: this process still reports it.
	if diff := cmp.Diff([]*batonv1.TaskFinished{tf}, j.unacked(), protocmp.Transform()); diff != "" {
		t.Errorf("unacked after a failed finish mismatch (-want +got):\n%s", diff)
	}
}

// FuzzJournalReplay feeds arbitrary bytes to the journal's log reader: it
// never panics, and whatever it accepts re-encodes to a log it reads the
// same.
func FuzzJournalReplay(f *testing.F) {
	start := time.Date(2026, 11, 21, 1, 0, 0, 0, time.UTC)
	raw, err := proto.Marshal(outcome(3, succeeded))
	if err != nil {
		f.Fatal(err)
	}
	valid := recordlog.AppendRecord(nil, encodeEntry('B', 1, start, start, nil))
	valid = recordlog.AppendRecord(valid, encodeEntry('F', 3, start, start, raw))
	valid = recordlog.AppendRecord(valid, encodeEntry('A', 2, start, start, nil))
	valid = recordlog.AppendRecord(valid, encodeEntry(kindForget, 2, time.Time{}, start, nil))
	f.Add(valid)
	f.Add(valid[:len(valid)-3])
	f.Add([]byte{0xB7, 0x4A, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		j := &journal{recs: make(map[int64]*record)}
		recordlog.Scan(data, func(body []byte, _ int) { _ = j.replay(body) })
		var again []byte
		for id, rec := range j.recs {
			var d []byte
			if rec.outcome != nil {
				d, err = proto.Marshal(rec.outcome)
				if err != nil {
					t.Fatal(err)
				}
			}
			again = recordlog.AppendRecord(again, encodeEntry(kindOf[rec.state], id, rec.start, rec.updated, d))
		}
		j2 := &journal{recs: make(map[int64]*record)}
		damage := recordlog.Scan(again, func(body []byte, off int) {
			if err := j2.replay(body); err != nil {
				t.Errorf("re-encoded record at %d rejected: %v", off, err)
			}
		})
		if len(damage) != 0 {
			t.Errorf("re-encoded log has damage %v", damage)
		}
		if diff := cmp.Diff(stateOfJournal(j), stateOfJournal(j2)); diff != "" {
			t.Errorf("state differs after re-encoding (-first +second):\n%s", diff)
		}
	})
}

// seen reports whether the journal holds attempt id as started, finished
// or a tombstone: an attempt that must not start again.
func seen(j *journal, id int64) bool {
	state, _, ok := j.lookup(id)
	return ok && state != stateRejected
}

func TestJournalSettleStarted(t *testing.T) {
	t.Parallel()
	b, open := setupJournal(t)
	j := open(t)
	start := b.clock.Now()
	for id, r := range map[int64]string{1: "r1", 2: "r2", 3: "", 4: "r1", 6: "r0"} {
		if err := j.begin(id, start, r); err != nil {
			t.Fatalf("begin(%d): %v", id, err)
		}
	}
	// An identity longer than a runner's is not kept.
	if err := j.begin(5, start, strings.Repeat("x", runner.MaxInstanceLen+1)); err != nil {
		t.Fatalf("begin(5): %v", err)
	}
	closeJournal(t, j)

	// The next agent process attached to runner r1, which runs 4 and
	// does not list 1: 1 never started. r0 exited on its own with nothing
	// left, so 6 never started either. 2 was handed to a runner that is
	// gone, 3 and 5 to one whose identity is unknown: their outcome is
	// unknown.
	j = open(t)
	j.settleStarted(func(id int64) bool { return id == 4 }, "r1", "r0", "")
	b.logs.wait(t, "journal: attempt was recorded but never started; it starts when the control plane sends it again", "attempt_id", "1")
	b.logs.wait(t, "journal: attempt was recorded but never started; it starts when the control plane sends it again", "attempt_id", "6")
	want := snapshot{2: "abandoned", 3: "abandoned", 4: "started", 5: "abandoned"}
	if diff := cmp.Diff(want, stateOfJournal(j)); diff != "" {
		t.Errorf("state after settleStarted mismatch (-want +got):\n%s", diff)
	}
	closeJournal(t, j)
	j = open(t)
	if diff := cmp.Diff(want, stateOfJournal(j)); diff != "" {
		t.Errorf("state after reopen mismatch (-want +got):\n%s", diff)
	}
	// 1 may start now, the others not.
	if err := j.begin(1, b.clock.Now(), "r1"); err != nil {
		t.Errorf("begin(1) after it was found never started = %v, want nil", err)
	}
	for _, id := range []int64{2, 3, 4, 5} {
		if err := j.begin(id, b.clock.Now(), "r1"); err != errAttemptSeen {
			t.Errorf("begin(%d) = %v, want errAttemptSeen", id, err)
		}
	}
	// A settle without an attached exact runner abandons what is left.
	j.settleStarted(func(int64) bool { return false }, "")
	if state, _, _ := j.lookup(1); state != stateAbandoned {
		t.Errorf("attempt 1 after a settle with no runner identity = %q, want abandoned", state)
	}
}

// ackAttempt runs attempt id through begin, finish and ack, one second
// of the bundle's clock after the last.
func ackAttempt(t *testing.T, b *journalBundle, j *journal, id int64) {
	t.Helper()
	b.clock.Add(time.Second)
	if err := j.begin(id, b.clock.Now(), "r1"); err != nil {
		t.Fatalf("begin(%d): %v", id, err)
	}
	if err := j.finish(outcome(id, succeeded)); err != nil {
		t.Fatalf("finish(%d): %v", id, err)
	}
	j.ack([]int64{id})
}

func TestJournalBoundsTombstones(t *testing.T) {
	t.Parallel()
	b, open := setupJournal(t)
	b.maxTombs = 5
	j := open(t)
	// An abandoned attempt and an unacknowledged outcome are not
	// tombstones the bound may drop.
	if err := j.begin(100, b.clock.Now(), ""); err != nil {
		t.Fatal(err)
	}
	j.settleStarted(func(int64) bool { return false }, "")
	if err := j.begin(101, b.clock.Now(), ""); err != nil {
		t.Fatal(err)
	}
	if err := j.finish(outcome(101, failed)); err != nil {
		t.Fatal(err)
	}
	for id := int64(1); id <= 8; id++ {
		ackAttempt(t, b, j, id)
	}
	want := snapshot{4: "acked", 5: "acked", 6: "acked", 7: "acked", 8: "acked",
		100: "abandoned", 101: "finished/ATTEMPT_OUTCOME_FAILED"}
	if diff := cmp.Diff(want, stateOfJournal(j)); diff != "" {
		t.Errorf("state after 8 acks with room for 5 tombstones mismatch (-want +got):\n%s", diff)
	}
	// The evicted tombstones leave the log with its next compaction.
	flush(t, j)
	if err := j.rlog.Compact(); err != nil {
		t.Fatal(err)
	}
	for id := int64(1); id <= 3; id++ {
		if bytes.Contains(logFile(t, b.dir), encodeEntry(kindOf[stateAcked], id, time.Time{}, time.Time{}, nil)[:9]) {
			t.Errorf("the evicted tombstone of attempt %d is still in the log after a compaction", id)
		}
	}
	closeJournal(t, j)
	j = open(t)
	if diff := cmp.Diff(want, stateOfJournal(j)); diff != "" {
		t.Errorf("state after reopen mismatch (-want +got):\n%s", diff)
	}

	// A clock that went back: the new tombstone is kept, through a
	// compaction and a reopen, and the oldest goes instead.
	b.clock.Add(-time.Hour)
	ackAttempt(t, b, j, 9)
	flush(t, j)
	if err := j.rlog.Compact(); err != nil {
		t.Fatal(err)
	}
	closeJournal(t, j)
	j = open(t)
	want = snapshot{5: "acked", 6: "acked", 7: "acked", 8: "acked", 9: "acked",
		100: "abandoned", 101: "finished/ATTEMPT_OUTCOME_FAILED"}
	if diff := cmp.Diff(want, stateOfJournal(j)); diff != "" {
		t.Errorf("state after a clock step back mismatch (-want +got):\n%s", diff)
	}
	closeJournal(t, j)

	// Reopened with room for 2, the oldest go at once.
	b.maxTombs = 2
	j = open(t)
	want = snapshot{8: "acked", 9: "acked", 100: "abandoned", 101: "finished/ATTEMPT_OUTCOME_FAILED"}
	if diff := cmp.Diff(want, stateOfJournal(j)); diff != "" {
		t.Errorf("state after reopening with room for 2 mismatch (-want +got):\n%s", diff)
	}
}

// TestJournalPruneAndBoundAtScale keeps the tombstone index consistent
// over many attempts: the count stays at the bound, pruning by age takes
// what is old, and what is kept survives a reopen.
func TestJournalPruneAndBoundAtScale(t *testing.T) {
	t.Parallel()
	b, open := setupJournal(t)
	b.maxTombs = 1000
	j := open(t)
	for id := int64(1); id <= 5000; id++ {
		ackAttempt(t, b, j, id)
		if id%997 == 0 {
			// Now and then an ack arrives out of order in time.
			b.clock.Add(-3 * time.Second)
		}
	}
	j.mu.Lock()
	n, tombs := j.nTombs, len(j.recs)
	j.mu.Unlock()
	if n != 1000 || tombs != 1000 {
		t.Errorf("tombstones = %d (records %d) after 5000 acks, want 1000", n, tombs)
	}
	for id := int64(4001); id <= 5000; id++ {
		if !seen(j, id) {
			t.Fatalf("attempt %d, among the newest 1000, is not seen", id)
		}
	}
	// A day later they all go.
	b.clock.Add(journalRetention)
	j.mu.Lock()
	j.pruneLocked()
	n, tombs = j.nTombs, len(j.recs)
	j.mu.Unlock()
	if n != 0 || tombs != 0 {
		t.Errorf("tombstones = %d (records %d) after the retention, want none", n, tombs)
	}
}
