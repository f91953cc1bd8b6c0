package runner

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestFrameRoundTrip(t *testing.T) {
	t.Parallel()
	want := &frame{Start: &StartRequest{ID: 7, Argv: []string{"dtexec", "/F", "a b"}, Env: []string{"A=1"}, Dir: "/", Timeout: time.Minute}}
	b, err := encodeJSON(want)
	if err != nil {
		t.Fatal(err)
	}
	data := append(b, encodeOutput(7, Stderr, 1<<33, []byte("line\n\x00\xff"))...)
	r := bufio.NewReader(bytes.NewReader(data))

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

func TestRecords(t *testing.T) {
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
		if err := writeRecord(dir, rec, true); err != nil {
			t.Fatal(err)
		}
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
	recs, errs := readRecords(dir)
	if diff := cmp.Diff(map[int64]*Record{12: exited, 16: running}, recs); diff != "" {
		t.Errorf("readRecords mismatch (-want +got):\n%s", diff)
	}
	if len(errs) != 3 {
		t.Errorf("readRecords errors = %v, want one for each bad record", errs)
	}
	if _, err := os.Stat(filepath.Join(dir, "15.exit.123.tmp")); !os.IsNotExist(err) {
		t.Errorf("temp file not removed: %v", err)
	}
	if got, err := readRecordOf(dir, 12); err != nil || !got.Exited {
		t.Errorf("readRecordOf(12) = %+v, %v; want the exit record", got, err)
	}
	if err := removeRun(dir, 12); err != nil {
		t.Fatal(err)
	}
	if !hasRecord(dir, 12) {
		t.Error("hasRecord(12) = false with its exit record left")
	}
	if err := removeRecord(dir, 12); err != nil {
		t.Fatal(err)
	}
	if err := removeRecord(dir, 12); err != nil {
		t.Errorf("removing a removed record = %v, want nil", err)
	}
	if hasRecord(dir, 12) {
		t.Error("hasRecord(12) = true after removeRecord")
	}
	if _, err := readRecordOf(dir, 12); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("readRecordOf(12) after removal = %v, want ErrNotExist", err)
	}
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
	if got := versionDir("/state", 3); got != filepath.Join("/state", "r3") {
		t.Errorf("versionDir = %q", got)
	}
}
