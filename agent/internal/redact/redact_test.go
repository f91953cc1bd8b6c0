package redact

import (
	"bytes"
	"strings"
	"testing"
)

func TestString(t *testing.T) {
	t.Parallel()
	set := New([]Secret{{Name: "dbpass", Value: "hunter22"}, {Name: "short", Value: "abc"}, {Name: "long", Value: "hunter22-and-more"}})
	tests := []struct{ in, want string }{
		{"", ""},
		{"no secret here", "no secret here"},
		{"pw=hunter22.", "pw=[secret:dbpass]."},
		{"hunter22hunter22", "[secret:dbpass][secret:dbpass]"},
		{"x hunter22-and-more y", "x [secret:long] y"},
		{"abc is too short to redact", "abc is too short to redact"},
		{"hunter2", "hunter2"},
	}
	for _, tc := range tests {
		if got := set.String(tc.in); got != tc.want {
			t.Errorf("String(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
	var none *Set
	if got := none.String("hunter22"); got != "hunter22" {
		t.Errorf("nil Set: String = %q", got)
	}
	if New([]Secret{{Name: "a", Value: "123"}}) != nil {
		t.Error("New with only short values is not nil")
	}
}

// TestWriterAcrossWrites writes a stream holding secrets in every split
// into two and three pieces and checks the result is the same as the
// whole redacted at once.
func TestWriterAcrossWrites(t *testing.T) {
	t.Parallel()
	set := New([]Secret{{Name: "a", Value: "s3cr3t-value"}, {Name: "b", Value: "tick"}})
	in := []byte("start s3cr3t-value mid s3cr3t-values3cr3t-value ticktock s3cr3t-valu end tick")
	want := set.Bytes(in)
	if bytes.Contains(want, []byte("s3cr3t-value")) || bytes.Contains(want, []byte("tick")) {
		t.Fatalf("Bytes left a value in: %q", want)
	}
	for i := 0; i <= len(in); i++ {
		for j := i; j <= len(in); j++ {
			var out []byte
			w := NewWriter(set, func(p []byte) { out = append(out, p...) })
			for _, piece := range [][]byte{in[:i], in[i:j], in[j:]} {
				_, _ = w.Write(piece)
			}
			w.Flush()
			if !bytes.Equal(out, want) {
				t.Fatalf("split at %d and %d: got %q, want %q", i, j, out, want)
			}
		}
	}
}

func TestWriterHoldsBackLittle(t *testing.T) {
	t.Parallel()
	set := New([]Secret{{Name: "a", Value: "0123456789"}})
	var out []byte
	w := NewWriter(set, func(p []byte) { out = append(out, p...) })
	_, _ = w.Write([]byte(strings.Repeat("x", 100)))
	if len(out) != 100-9 {
		t.Errorf("after 100 bytes, %d emitted; want all but 9 (the longest value's length - 1)", len(out))
	}
	w.Flush()
	if len(out) != 100 {
		t.Errorf("after Flush, %d emitted; want 100", len(out))
	}
}
