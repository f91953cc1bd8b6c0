package agent

import (
	"bytes"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"unicode/utf16"
	"unicode/utf8"

	"github.com/google/go-cmp/cmp"

	"github.com/batonhq/baton/agent/internal/redact"
)

func utf16Bytes(s string, bigEndian bool) []byte {
	out := []byte{0xFF, 0xFE}
	if bigEndian {
		out = []byte{0xFE, 0xFF}
	}
	for _, u := range utf16.Encode([]rune(s)) {
		if bigEndian {
			out = append(out, byte(u>>8), byte(u))
		} else {
			out = append(out, byte(u), byte(u>>8))
		}
	}
	return out
}

func TestParseOutputs(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		data      []byte
		truncated bool
		want      map[string]string
		notes     []string
	}{
		{
			name: "lines, CRLF, comments, blanks, later wins",
			data: []byte("a=1\r\n\r\n  \n# comment\n  # indented comment\nb = two words \na=3\n"),
			want: map[string]string{"a": "3", "b": " two words "},
		},
		{
			name: "value keeps every '=' after the first",
			data: []byte("conn=Server=x;Database=y"),
			want: map[string]string{"conn": "Server=x;Database=y"},
		},
		{
			name:  "malformed lines",
			data:  []byte("ok=1\nnoequals\n=novalue\n  =x\n"),
			want:  map[string]string{"ok": "1"},
			notes: []string{"output file line 2: no '=' in the line; skipped", "output file line 3: empty name; skipped", "output file line 4: empty name; skipped"},
		},
		{
			name:  "invalid UTF-8 is replaced",
			data:  []byte("bad=\xff\xfe\n"),
			want:  map[string]string{"bad": "\uFFFD"},
			notes: []string{"output file line 1: invalid UTF-8 replaced with U+FFFD"},
		},
		{
			name: "UTF-8 byte order mark",
			data: append([]byte{0xEF, 0xBB, 0xBF}, "RowCount=5\n"...),
			want: map[string]string{"RowCount": "5"},
		},
		{
			name:  "a byte order mark inside the file (appended files) is no part of a name",
			data:  []byte("\ufeffa=1\n\ufeffRowCount=5\n\ufeff\ufeff=x\n"),
			want:  map[string]string{"a": "1", "RowCount": "5"},
			notes: []string{"output file line 3: empty name; skipped"},
		},
		{
			name: "UTF-16LE as PowerShell writes it",
			data: utf16Bytes("RowCount=5\r\nName=Zürich\r\n", false),
			want: map[string]string{"RowCount": "5", "Name": "Zürich"},
		},
		{
			name: "UTF-16BE",
			data: utf16Bytes("x=y\n", true),
			want: map[string]string{"x": "y"},
		},
		{
			name:      "truncated drops the cut last line",
			data:      []byte("a=1\nb=2\nc=partial"),
			truncated: true,
			want:      map[string]string{"a": "1", "b": "2"},
			notes:     []string{"output file: the last line was cut by the cap and is skipped"},
		},
		{
			name:      "truncated inside the first line",
			data:      []byte("a=12345"),
			truncated: true,
			notes:     []string{"output file: the first line was cut by the cap and is skipped"},
		},
		{
			name: "empty",
			data: nil,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, notes := parseOutputs(tc.data, tc.truncated, nil)
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("parseOutputs(%q) outputs mismatch (-want +got):\n%s", tc.data, diff)
			}
			if diff := cmp.Diff(tc.notes, notes); diff != "" {
				t.Errorf("parseOutputs(%q) notes mismatch (-want +got):\n%s", tc.data, diff)
			}
		})
	}
}

func TestParseOutputsBoundsNotes(t *testing.T) {
	t.Parallel()
	_, notes := parseOutputs([]byte(strings.Repeat("garbage\n", 1000)), false, nil)
	if len(notes) != maxOutputNotes+1 {
		t.Errorf("got %d notes for 1000 bad lines, want %d", len(notes), maxOutputNotes+1)
	}
}

func TestParseOutputsBoundsCount(t *testing.T) {
	t.Parallel()
	var b strings.Builder
	for i := range maxOutputs + 10 {
		fmt.Fprintf(&b, "k%d=%d\n", i, i)
	}
	b.WriteString("k0=again\n") // an existing name is still updated
	got, notes := parseOutputs([]byte(b.String()), false, nil)
	if len(got) != maxOutputs || got["k0"] != "again" {
		t.Errorf("got %d outputs, k0=%q; want %d and k0=again", len(got), got["k0"], maxOutputs)
	}
	want := []string{fmt.Sprintf("output file line %d: more than %d outputs; this and later new names are dropped", maxOutputs+1, maxOutputs)}
	if diff := cmp.Diff(want, notes); diff != "" {
		t.Errorf("notes mismatch (-want +got):\n%s", diff)
	}
}

func TestReadOutputs(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	tests := []struct {
		name      string
		content   *string
		want      map[string]string
		wantNotes int
	}{
		{name: "missing file", content: nil},
		{name: "exactly the cap", content: ptr("k=" + strings.Repeat("v", outputCap-3) + "\n"), want: map[string]string{"k": strings.Repeat("v", outputCap-3)}},
		{name: "one byte over the cap", content: ptr("a=1\nk=" + strings.Repeat("v", outputCap-6) + "\n"), want: map[string]string{"a": "1"}, wantNotes: 2},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			path := filepath.Join(dir, string(rune('a'+i)))
			if tc.content != nil {
				if err := os.WriteFile(path, []byte(*tc.content), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			got, notes, err := readOutputs(path, nil)
			if err != nil {
				t.Fatalf("readOutputs: %v", err)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("outputs mismatch (-want +got):\n%s", diff)
			}
			if len(notes) != tc.wantNotes {
				t.Errorf("notes = %q, want %d", notes, tc.wantNotes)
			}
		})
	}
}

func ptr[T any](v T) *T { return &v }

// FuzzOutputs checks the $BATON_OUTPUT parser on any bytes: it never
// panics; it keeps at most maxOutputs outputs and a bounded number of
// notes; every name is non-empty, trimmed, valid UTF-8 and holds no '=' or
// line break, every value is valid UTF-8 without a line break; written
// back as name=value lines the outputs parse to themselves; a line added
// at the end wins over earlier ones of its name; and a secret's value
// appears in no name or value once redacted, wherever the child put it.
func FuzzOutputs(f *testing.F) {
	for _, s := range []string{
		"", "RowCount=1532\n", "a=1\r\nb = 2 \n# c=3\n\n=x\nnoequals\n", "\xEF\xBB\xBFk=v\n", "\xFF\xFEk\x00=\x00v\x00",
		"\xFE\xFF\x00k\x00=\x00v", "k=\xff\n", "k=v1\nk=v2\n", " spaced name =  value  \n", "k=a=b=c\n",
	} {
		f.Add([]byte(s), false)
	}
	f.Add([]byte("first=1\nsecond=2 cut"), true)
	const secret = "fuzz-s3cret"
	red := redact.New([]redact.Secret{{Name: "pw", Value: secret}})
	f.Fuzz(func(t *testing.T, data []byte, truncated bool) {
		outputs, notes := parseOutputs(data, truncated, nil)
		if len(outputs) > maxOutputs {
			t.Fatalf("%d outputs, more than %d", len(outputs), maxOutputs)
		}
		if len(notes) > maxOutputNotes+1 {
			t.Fatalf("%d notes, more than %d", len(notes), maxOutputNotes+1)
		}
		for k, v := range outputs {
			if k == "" || k != strings.TrimSpace(k) || !utf8.ValidString(k) || strings.ContainsAny(k, "=\n") {
				t.Fatalf("bad name %q", k)
			}
			if !utf8.ValidString(v) || strings.Contains(v, "\n") {
				t.Fatalf("bad value %q of %q", v, k)
			}
		}

		// Written back, the outputs parse to themselves (names that would
		// read as comments, and values whose trailing \r a line ending
		// would take, cannot be written back).
		var b strings.Builder
		writable := true
		for k, v := range outputs {
			if strings.HasPrefix(k, "#") || strings.HasSuffix(v, "\r") {
				writable = false
			}
			b.WriteString(k + "=" + v + "\n")
		}
		if again, _ := parseOutputs([]byte(b.String()), false, nil); writable && !maps.Equal(again, outputs) {
			t.Fatalf("outputs %q written back parse as %q", outputs, again)
		}

		// A later line wins.
		if !truncated && utf8.Valid(data) && !bytes.HasPrefix(data, []byte{0xFF, 0xFE}) && !bytes.HasPrefix(data, []byte{0xFE, 0xFF}) &&
			len(outputs) < maxOutputs {
			more := append(append(slices.Clone(data), '\n'), "zz_last=the end\n"...)
			if got, _ := parseOutputs(more, false, nil); got["zz_last"] != "the end" {
				t.Fatalf("a last line zz_last=the end after %q gives %q", data, got["zz_last"])
			}
		}

		// The secret, inserted in the middle, is redacted.
		mid := len(data) / 2
		with := append(append(slices.Clone(data[:mid]), secret...), data[mid:]...)
		got, _ := parseOutputs(with, truncated, red)
		for k, v := range got {
			if strings.Contains(k, secret) || strings.Contains(v, secret) {
				t.Fatalf("secret left in output %q=%q", k, v)
			}
		}
	})
}
