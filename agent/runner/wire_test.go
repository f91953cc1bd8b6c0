package runner

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/batonhq/baton/agent/internal/recordlog"
)

func TestFrameRoundTrip(t *testing.T) {
	t.Parallel()
	want := &frame{Start: &startMsg{
		StartRequest: &StartRequest{ID: 7, Argv: []string{"dtexec", "/F", "a b"}, Env: []string{"A=1"}, Dir: "/", Timeout: time.Minute},
		EnvBase:      true,
	}}
	b, err := encodeJSON(want)
	if err != nil {
		t.Fatal(err)
	}
	b = append(b, encodeOutput(7, Stderr, 1<<33, []byte("line\n\x00\xff"))...)
	r := bufio.NewReader(bytes.NewReader(b))

	kind, body, err := readFrame(r)
	if err != nil || kind != kindJSON {
		t.Fatalf("readFrame = %q, %v; want a JSON frame", kind, err)
	}
	got, err := decodeJSON(body)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("JSON frame mismatch (-want +got):\n%s", diff)
	}

	kind, body, err = readFrame(r)
	if err != nil || kind != kindOutput {
		t.Fatalf("readFrame = %q, %v; want an output frame", kind, err)
	}
	o, err := decodeOutput(body)
	if err != nil {
		t.Fatal(err)
	}
	if o.id != 7 || o.stream != Stderr || o.offset != 1<<33 || string(o.data) != "line\n\x00\xff" {
		t.Errorf("output frame = %+v, want attempt 7, stderr, offset 2^33, the data", o)
	}
}

func TestReadFrameRejects(t *testing.T) {
	t.Parallel()
	frameOf := func(n uint32, rest string) []byte {
		b := binary.BigEndian.AppendUint32(nil, n)
		return append(b, rest...)
	}
	tests := []struct {
		name    string
		data    []byte
		wantErr string
	}{
		{name: "empty frame", data: frameOf(0, ""), wantErr: "empty frame"},
		{name: "over the limit", data: frameOf(maxFrame+1, ""), wantErr: "frame too large"},
		{name: "truncated body", data: frameOf(10, "jab"), wantErr: "unexpected EOF"},
		{name: "truncated header", data: []byte{0, 0}, wantErr: "unexpected EOF"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, _, err := readFrame(bufio.NewReader(bytes.NewReader(tc.data)))
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("readFrame = %v, want an error containing %q", err, tc.wantErr)
			}
		})
	}
}

func TestDecodeOutputRejects(t *testing.T) {
	t.Parallel()
	good := encodeOutput(1, Stdout, 0, []byte("x"))[5:]
	badStream := bytes.Clone(good)
	badStream[8] = 9
	negative := encodeOutput(1, Stdout, -1, nil)[5:]
	tests := []struct {
		name    string
		body    []byte
		wantErr string
	}{
		{name: "short", body: good[:5], wantErr: "short output frame"},
		{name: "unknown stream", body: badStream, wantErr: "unknown stream 9"},
		{name: "negative offset", body: negative, wantErr: "negative offset"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if _, err := decodeOutput(tc.body); err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("decodeOutput = %v, want an error containing %q", err, tc.wantErr)
			}
		})
	}
}

// FuzzFrames feeds arbitrary bytes to the frame reader and decoders: they
// may fail, never panic.
func FuzzFrames(f *testing.F) {
	b, _ := encodeJSON(&frame{Welcome: &welcome{Version: 1, Running: []*Record{{ID: 1, Pid: 2}}}})
	f.Add(b)
	f.Add(encodeOutput(3, Stdout, 5, []byte("data")))
	f.Add([]byte{0, 0, 0, 1, 'o'})
	f.Fuzz(func(t *testing.T, data []byte) {
		r := bufio.NewReader(bytes.NewReader(data))
		for {
			kind, body, err := readFrame(r)
			if err != nil {
				return
			}
			switch kind {
			case kindJSON:
				_, _ = decodeJSON(body)
			case kindOutput:
				_, _ = decodeOutput(body)
			}
		}
	})
}

// writeV1Record writes rec's record file as a runner of protocol version
// 1 did: <id>.run while running, <id>.exit once exited.
func writeV1Record(t *testing.T, attDir string, rec *Record) {
	t.Helper()
	data, err := json.Marshal(rec)
	if err != nil {
		t.Fatal(err)
	}
	path := runPath(attDir, rec.ID)
	if rec.Exited {
		path = exitPath(attDir, rec.ID)
	}
	if err := os.MkdirAll(attDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestV1RecordFiles(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	start := time.Date(2026, 11, 21, 1, 0, 0, 0, time.UTC)
	exited := &Record{ID: 12, Pid: 345, PidStart: 678, BootID: "boot", Start: start,
		Exited: true, ExitCode: 3, Err: "exit status 3", StdoutTail: []byte("o\xff"), StdoutBytes: 2}
	running := &Record{ID: 16, Pid: 400, Start: start, Timeout: time.Minute}
	for _, rec := range []*Record{
		exited, running,
		{ID: 12, Pid: 345, Start: start}, // the running record an exit record overrides
	} {
		writeV1Record(t, dir, rec)
	}
	// Leftovers of a crash and foreign files.
	for name, content := range map[string]string{
		"13.exit":         "{not json",
		"14.run":          `{"id": 99}`,
		"17.run":          `{"id": 17, "exited": true}`,
		"15.exit.123.tmp": "partial",
		"18.json":         `{"id": 18}`,
		"notes.txt":       "x",
	} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	st := fileStore{attDir: dir}
	recs, errs := st.read()
	if diff := cmp.Diff(map[int64]*Record{12: exited, 16: running}, recs); diff != "" {
		t.Errorf("read mismatch (-want +got):\n%s", diff)
	}
	if len(errs) != 3 {
		t.Errorf("read errors = %v, want one for each bad record", errs)
	}
	if _, err := os.Stat(filepath.Join(dir, "15.exit.123.tmp")); !os.IsNotExist(err) {
		t.Errorf("temp file not removed: %v", err)
	}
	for range 2 {
		if err := st.confirm(12); err != nil {
			t.Errorf("confirm(12) = %v, want nil also the second time", err)
		}
	}
	if recs, _ := st.read(); recs[12] != nil {
		t.Errorf("record 12 still read after confirm: %+v", recs[12])
	}
}

func TestRecordLog(t *testing.T) {
	t.Parallel()
	start := time.Date(2026, 11, 21, 1, 0, 0, 0, time.UTC)
	running := &Record{ID: 5, Pid: 50, PidStart: 9, BootID: "boot", Start: start, Timeout: time.Minute}
	exited := &Record{ID: 6, Pid: 60, Start: start, Exited: true, ExitCode: 1, Err: "exit status 1", StderrTail: []byte("e\xff")}
	body := func(kind byte, id int64, rec *Record) []byte {
		b, err := encodeRecord(kind, id, rec)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	t.Run("replay", func(t *testing.T) {
		t.Parallel()
		set := recordSet{}
		for _, b := range [][]byte{
			body(recStarted, 5, running),
			body(recStarted, 6, &Record{ID: 6, Pid: 60, Start: start}),
			body(recExited, 6, exited),
			body(recStarted, 7, &Record{ID: 7}),
			body(recConfirmed, 7, nil),
		} {
			if err := set.replay(b); err != nil {
				t.Fatalf("replay: %v", err)
			}
		}
		if diff := cmp.Diff(recordSet{5: running, 6: exited}, set); diff != "" {
			t.Errorf("replayed set mismatch (-want +got):\n%s", diff)
		}
	})
	t.Run("invalid records", func(t *testing.T) {
		t.Parallel()
		for name, b := range map[string][]byte{
			"short":                  {recStarted, 0, 0},
			"zero id":                body(recConfirmed, 0, nil)[:9],
			"unknown kind":           append([]byte{'Q'}, body(recConfirmed, 1, nil)[1:]...),
			"not json":               append(body(recConfirmed, 1, nil)[:9:9], "{"...),
			"id mismatch":            body(recStarted, 2, &Record{ID: 3}),
			"exit without exited":    body(recExited, 4, &Record{ID: 4}),
			"confirmation with body": append(body(recConfirmed, 1, nil), '{'),
		} {
			if err := (recordSet{}).replay(b); err == nil {
				t.Errorf("replay of the %s record = nil, want an error", name)
			}
			if _, a := classifyRecord(b); a != recordlog.Skip {
				t.Errorf("classifyRecord of the %s record = %v, want Skip", name, a)
			}
		}
	})
	t.Run("store of another version", func(t *testing.T) {
		t.Parallel()
		stateDir := t.TempDir()
		dir := versionDir(stateDir, 9)
		if err := os.MkdirAll(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		data := []byte(recordsHeader)
		for _, b := range [][]byte{body(recStarted, 5, running), body(recExited, 6, exited), []byte("junk")} {
			data = recordlog.AppendRecord(data, b)
		}
		if err := os.WriteFile(filepath.Join(dir, recordsName), data, 0o600); err != nil {
			t.Fatal(err)
		}
		recs, err := Recorded(stateDir, 9)
		if err == nil {
			t.Error("Recorded with an invalid record = nil error, want one")
		}
		if diff := cmp.Diff(map[int64]*Record{5: running, 6: exited}, recs); diff != "" {
			t.Errorf("Recorded mismatch (-want +got):\n%s", diff)
		}
		st := storeOf(dir)
		if _, ok := st.(logStore); !ok {
			t.Fatalf("storeOf = %T, want logStore", st)
		}
		if err := st.confirm(6); err != nil {
			t.Fatal(err)
		}
		recs, _ = st.read()
		if _, ok := recs[6]; ok || recs[5] == nil {
			t.Errorf("after confirming 6, read = %v, want only 5", recs)
		}
		ids, next, err := readConfirmed(filepath.Join(dir, confirmedName), 0)
		if err != nil || len(ids) != 1 || ids[0] != 6 {
			t.Errorf("readConfirmed = %v, %v; want [6]", ids, err)
		}
		if ids, _, _ := readConfirmed(filepath.Join(dir, confirmedName), next); len(ids) != 0 {
			t.Errorf("readConfirmed from %d = %v, want nothing new", next, ids)
		}
		if recs, err := Recorded(stateDir, 10); recs != nil || err != nil {
			t.Errorf("Recorded of a version without a directory = %v, %v; want nothing", recs, err)
		}
	})
}

func TestAppendTail(t *testing.T) {
	t.Parallel()
	var tail []byte
	var all []byte
	for i := range 5000 {
		p := bytes.Repeat([]byte{byte('a' + i%26)}, i%17)
		tail = appendTail(tail, p)
		all = append(all, p...)
	}
	if got, want := lastBytes(tail), all[len(all)-TailSize:]; !bytes.Equal(got, want) {
		t.Error("lastBytes is not the last TailSize bytes written")
	}
	if len(tail) > 2*TailSize {
		t.Errorf("tail holds %d bytes, want at most %d", len(tail), 2*TailSize)
	}
	big := bytes.Repeat([]byte("z"), 3*TailSize)
	if got := lastBytes(appendTail(tail, big)); !bytes.Equal(got, big[:TailSize]) {
		t.Error("a write over TailSize does not leave its own end")
	}
}

func TestVersionOf(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		v    int
		ok   bool
	}{
		{"r1", 1, true}, {"r12", 12, true}, {"r0", 0, true},
		{"r", 0, false}, {"r01", 0, false}, {"r-1", 0, false}, {"rx", 0, false}, {"output", 0, false}, {"1", 0, false},
	}
	for _, tc := range tests {
		if v, ok := versionOf(tc.name); v != tc.v || ok != tc.ok {
			t.Errorf("versionOf(%q) = %d, %v; want %d, %v", tc.name, v, ok, tc.v, tc.ok)
		}
	}
	if got := versionDir("/state", 3); got != filepath.FromSlash("/state/r3") {
		t.Errorf("versionDir = %q", got)
	}
}

func TestDedupEnv(t *testing.T) {
	t.Parallel()
	got := dedupEnv([]string{"A=1", "B=2", "A=3", "=C", "junk", "B=", "D=4"})
	if want := []string{"A=3", "=C", "junk", "B=", "D=4"}; !cmp.Equal(want, got) {
		t.Errorf("dedupEnv = %q, want %q", got, want)
	}
}

func TestLeaseLeft(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		sentAgo  time.Duration // how long before the call the lease was measured
		noSentAt bool
		max      time.Duration
		min      time.Duration
	}{
		{name: "no send time", noSentAt: true, max: time.Second, min: time.Second},
		{name: "sent 300ms ago", sentAgo: 300 * time.Millisecond, max: 700 * time.Millisecond, min: 0},
		{name: "sent after the runner's now (a clock step)", sentAgo: -time.Hour, max: time.Second, min: time.Second},
		{name: "sent before the lease ended", sentAgo: 2 * time.Second, max: -time.Second, min: -time.Hour},
	}
	for _, tc := range tests {
		var sentAt time.Time
		if !tc.noSentAt {
			sentAt = time.Now().Round(0).Add(-tc.sentAgo)
		}
		if got := leaseLeft(time.Second, sentAt); got > tc.max || got < tc.min {
			t.Errorf("%s: leaseLeft(1s, %v) = %s, want between %s and %s", tc.name, sentAt, got, tc.min, tc.max)
		}
	}
}
