package recordlog

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const testHeader = "TESTLOG\x01"

// The test records are an 8-byte key and a payload; the payload "drop"
// drops the key, "bad" is invalid.
func rec(key int64, payload string) []byte {
	return append(binary.BigEndian.AppendUint64(nil, uint64(key)), payload...)
}

func classify(body []byte) (int64, Action) {
	if len(body) < 8 || string(body[8:]) == "bad" {
		return 0, Skip
	}
	key := int64(binary.BigEndian.Uint64(body))
	if string(body[8:]) == "drop" {
		return key, Drop
	}
	return key, Keep
}

// state replays bodies as the owner of a log would: the last record of a
// key wins, "drop" removes it, "bad" is refused.
type state map[int64]string

func (s state) replay(body []byte) error {
	key, a := classify(body)
	switch a {
	case Skip:
		return errors.New("bad record")
	case Drop:
		delete(s, key)
	default:
		s[key] = string(body[8:])
	}
	return nil
}

type testBundle struct {
	path string
	min  int64
}

func setup(t *testing.T) *testBundle {
	t.Helper()
	return &testBundle{path: filepath.Join(t.TempDir(), "log")}
}

// open opens the bundle's log, returns what it replayed, and closes it
// when the test ends.
func (b *testBundle) open(t *testing.T) (*Log, state) {
	t.Helper()
	st := state{}
	l, err := Open(b.path, Options{Header: testHeader, Classify: classify, CompactMin: b.min}, st.replay)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { _ = l.Close() })
	return l, st
}

func write(t *testing.T, l *Log, bodies ...[]byte) {
	t.Helper()
	var p *Pending
	for _, b := range bodies {
		p = l.Queue(false, b)
	}
	if err := p.Wait(); err != nil {
		t.Fatalf("write: %v", err)
	}
}

func TestFramesRoundTrip(t *testing.T) {
	t.Parallel()
	bodies := [][]byte{{}, []byte("x"), bytes.Repeat([]byte{magic0, magic1}, 3000)}
	var data []byte
	for _, b := range bodies {
		data = AppendRecord(data, b)
	}
	var got [][]byte
	var offs []int
	damage := Scan(data, func(body []byte, off int) {
		got = append(got, slices.Clone(body))
		offs = append(offs, off)
	})
	if len(damage) != 0 {
		t.Errorf("Scan damage = %v, want none", damage)
	}
	if diff := cmp.Diff(bodies, got); diff != "" {
		t.Errorf("bodies mismatch (-want +got):\n%s", diff)
	}
	if want := []int{0, FrameLen, 2*FrameLen + 1}; !slices.Equal(offs, want) {
		t.Errorf("offsets = %v, want %v", offs, want)
	}
}

func TestScanFindsRecordsAfterDamage(t *testing.T) {
	t.Parallel()
	a, b, c := AppendRecord(nil, []byte("a")), AppendRecord(nil, []byte("b")), AppendRecord(nil, []byte("c"))
	flipped := slices.Clone(b)
	flipped[len(flipped)-1] ^= 1
	huge := slices.Clone(b)
	binary.BigEndian.PutUint32(huge[2:], MaxBody+1)
	tests := []struct {
		name   string
		data   []byte
		want   []string
		damage []Damage
	}{
		{name: "torn tail", data: slices.Concat(a, b[:len(b)-1]), want: []string{"a"},
			damage: []Damage{{Off: len(a), Len: len(b) - 1, Tail: true}}},
		{name: "flipped bit", data: slices.Concat(a, flipped, c), want: []string{"a", "c"},
			damage: []Damage{{Off: len(a), Len: len(b)}}},
		{name: "length beyond the bound", data: slices.Concat(a, huge, c), want: []string{"a", "c"},
			damage: []Damage{{Off: len(a), Len: len(b)}}},
		{name: "garbage with a magic", data: slices.Concat([]byte{magic0, magic1, 1}, a), want: []string{"a"},
			damage: []Damage{{Off: 0, Len: 3}}},
		{name: "only garbage", data: []byte("garbage"), damage: []Damage{{Off: 0, Len: 7, Tail: true}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var got []string
			damage := Scan(tc.data, func(body []byte, _ int) { got = append(got, string(body)) })
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("records mismatch (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tc.damage, damage); diff != "" {
				t.Errorf("damage mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

func TestLogReplaysAcrossOpens(t *testing.T) {
	t.Parallel()
	b := setup(t)
	l, st := b.open(t)
	if len(st) != 0 {
		t.Errorf("a new log replayed %v", st)
	}
	write(t, l, rec(1, "one"), rec(2, "two"), rec(1, "uno"), rec(3, "three"), rec(3, "drop"))
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	_, st = b.open(t)
	if diff := cmp.Diff(state{1: "uno", 2: "two"}, st); diff != "" {
		t.Errorf("replayed state mismatch (-want +got):\n%s", diff)
	}
}

func TestOpenRewritesADamagedLog(t *testing.T) {
	t.Parallel()
	b := setup(t)
	l, _ := b.open(t)
	write(t, l, rec(1, "one"), rec(2, "bad"), rec(3, "three"))
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(b.path)
	if err != nil {
		t.Fatal(err)
	}
	// Damage the first record and cut the last short.
	data[len(testHeader)+FrameLen+2] ^= 0xFF
	if err := os.WriteFile(b.path, data[:len(data)-2], 0o600); err != nil {
		t.Fatal(err)
	}
	l, st := b.open(t)
	if len(st) != 0 {
		t.Errorf("replayed %v, want nothing whole and valid", st)
	}
	fixed, err := os.ReadFile(b.path)
	if err != nil {
		t.Fatal(err)
	}
	if string(fixed) != testHeader {
		t.Errorf("rewritten log = %q, want only the header", fixed)
	}
	write(t, l, rec(4, "four"))
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if _, st := b.open(t); !cmp.Equal(st, state{4: "four"}) {
		t.Errorf("replayed %v after appending to the rewritten log, want {4: four}", st)
	}
}

func TestCompaction(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.min = 1 << 10
	l, _ := b.open(t)
	want := state{}
	for i := range 500 {
		key := int64(i % 7)
		payload := string(bytes.Repeat([]byte{byte('a' + i%26)}, 40))
		if i%11 == 0 {
			payload = "drop"
			delete(want, key)
		} else {
			want[key] = payload
		}
		write(t, l, rec(key, payload), rec(99, "bad"))
		l.Settle()
		info, err := os.Stat(b.path)
		if err != nil {
			t.Fatal(err)
		}
		// Live: at most 7 records of 58 bytes (and the bad ones left
		// since the last compaction); the log may double from there,
		// and never stays above CompactMin for long.
		if limit := int64(2*(len(testHeader)+7*58) + 2*68 + 1<<10); info.Size() > limit {
			t.Fatalf("log is %d bytes after %d writes, want at most %d", info.Size(), i+1, limit)
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if _, st := b.open(t); !cmp.Equal(want, st) {
		t.Errorf("replayed %v after compactions, want %v", st, want)
	}
}

// TestFailedWriteIsOverwritten fails a write after it reached the file:
// the next write goes where it went, and a reopen reads only what
// succeeded.
func TestFailedWriteIsOverwritten(t *testing.T) {
	t.Parallel()
	b := setup(t)
	l, _ := b.open(t)
	write(t, l, rec(1, "one"))
	fail := errors.New("disk on fire")
	l.SetWriteHook(func(int) error { return fail })
	if err := l.Queue(false, rec(2, "two")).Wait(); !errors.Is(err, fail) {
		t.Errorf("write with a failing disk = %v, want %v", err, fail)
	}
	l.SetWriteHook(nil)
	write(t, l, rec(3, "three"))
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if _, st := b.open(t); !cmp.Equal(st, state{1: "one", 3: "three"}) {
		t.Errorf("replayed %v, want {1: one, 3: three}", st)
	}
}

func TestGroupCommitAndFlush(t *testing.T) {
	t.Parallel()
	b := setup(t)
	l, _ := b.open(t)
	var mu sync.Mutex
	var sizes []int
	entered, release := make(chan struct{}), make(chan struct{})
	l.SetWriteHook(func(n int) error {
		mu.Lock()
		sizes = append(sizes, n)
		first := len(sizes) == 1
		mu.Unlock()
		if first {
			close(entered)
			<-release
		}
		return nil
	})
	first := make(chan error, 1)
	go func() { first <- l.Queue(true, rec(1, "x")).Wait() }()
	<-entered
	// Queued while the first write is held: nobody waits for these, the
	// background flusher writes them in one go once the log is free.
	for key := int64(2); key <= 4; key++ {
		l.Queue(false, rec(key, "x"))
	}
	l.Flush()
	close(release)
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	l.Settle()
	mu.Lock()
	got := slices.Clone(sizes)
	mu.Unlock()
	one := FrameLen + 9
	if want := []int{one, 3 * one}; !slices.Equal(got, want) {
		t.Errorf("write sizes = %v, want %v", got, want)
	}
	if err := l.Sync(); err != nil {
		t.Errorf("Sync with nothing queued = %v, want nil", err)
	}
}

func TestCloseWritesTheQueueAndRefusesMore(t *testing.T) {
	t.Parallel()
	b := setup(t)
	l, _ := b.open(t)
	l.Queue(false, rec(1, "queued"))
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if err := l.Queue(false, rec(2, "late")).Wait(); !errors.Is(err, ErrClosed) {
		t.Errorf("Queue after Close = %v, want ErrClosed", err)
	}
	if err := l.Compact(); !errors.Is(err, ErrClosed) {
		t.Errorf("Compact after Close = %v, want ErrClosed", err)
	}
	if _, st := b.open(t); !cmp.Equal(st, state{1: "queued"}) {
		t.Errorf("replayed %v, want the record queued before Close", st)
	}
}

func TestQueueRefusesTooLarge(t *testing.T) {
	t.Parallel()
	b := setup(t)
	l, _ := b.open(t)
	if err := l.Queue(false, make([]byte, MaxBody+1)).Wait(); !errors.Is(err, ErrTooLarge) {
		t.Errorf("Queue of %d bytes = %v, want ErrTooLarge", MaxBody+1, err)
	}
}

func TestOpenValidates(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "log")
	if _, err := Open(path, Options{Classify: classify}, state{}.replay); err == nil {
		t.Error("Open without a header = nil error")
	}
	if _, err := Open(path, Options{Header: testHeader}, state{}.replay); err == nil {
		t.Error("Open without Classify = nil error")
	}
}

// FuzzScan feeds arbitrary bytes to Scan: it never panics, and the
// records and damage it reports cover the data exactly.
func FuzzScan(f *testing.F) {
	f.Add(AppendRecord(AppendRecord(nil, []byte("a")), []byte("bc")))
	f.Add([]byte{magic0, magic1, 0, 0, 0, 1, 0, 0, 0, 0, 'x'})
	f.Fuzz(func(t *testing.T, data []byte) {
		covered := 0
		damage := Scan(data, func(body []byte, off int) {
			covered += FrameLen + len(body)
			if off < 0 || off+FrameLen+len(body) > len(data) {
				t.Fatalf("record at %d of %d bytes lies outside the data", off, len(body))
			}
		})
		for _, d := range damage {
			covered += d.Len
		}
		if covered != len(data) {
			t.Errorf("records and damage cover %d bytes of %d", covered, len(data))
		}
	})
}
