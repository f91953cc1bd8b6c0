// Package redact replaces the values of secrets in a child's output with
// [secret:NAME] before anything leaves the host or reaches a disk: the
// streamed logs, the tails kept for the outcome, the outputs.
//
// Values shorter than [MinLen] bytes are not redacted: replacing every
// "1" or "ab" in a log would turn ordinary text into noise while
// protecting nothing (a value that short is guessed in a few tries
// anyway). Redaction catches a child that prints a secret by accident;
// it cannot stop one that means to leak it (encoded, reversed, split by
// other output).
package redact

import (
	"bytes"
	"cmp"
	"slices"
)

// MinLen is the shortest value that is redacted.
const MinLen = 4

// Secret is a secret's name and value.
type Secret struct {
	Name  string `json:"name"`
	Value string `json:"value"`
}

// Set is the secrets of one child, ready to redact. A nil *Set redacts
// nothing.
type Set struct {
	secrets []Secret // longest value first, only those of at least MinLen
	maxLen  int
}

// New returns the Set for secrets, or nil when none is long enough to
// redact.
func New(secrets []Secret) *Set {
	var keep []Secret
	for _, s := range secrets {
		if len(s.Value) >= MinLen {
			keep = append(keep, s)
		}
	}
	if len(keep) == 0 {
		return nil
	}
	// Longest first: of two values that start at the same place, the
	// longer one is replaced whole.
	slices.SortStableFunc(keep, func(a, b Secret) int { return cmp.Compare(len(b.Value), len(a.Value)) })
	return &Set{secrets: keep, maxLen: len(keep[0].Value)}
}

func placeholder(name string) string { return "[secret:" + name + "]" }

// String returns s with every secret value replaced.
func (r *Set) String(s string) string {
	if r == nil {
		return s
	}
	if !r.any([]byte(s)) {
		return s
	}
	return string(r.Bytes([]byte(s)))
}

// Bytes returns b with every secret value replaced; b itself is returned
// when nothing is.
func (r *Set) Bytes(b []byte) []byte {
	if r == nil || !r.any(b) {
		return b
	}
	var out []byte
	r.scan(nil, b, func(p []byte) { out = append(out, p...) }, true)
	return out
}

// scan redacts carry+p, emitting the result in pieces. Unless final, it
// keeps back (returns) the last maxLen-1 bytes after the last replacement,
// which may be the start of a value that the next write completes.
func (r *Set) scan(carry, p []byte, emit func([]byte), final bool) []byte {
	buf := p
	if len(carry) > 0 {
		carry = append(carry, p...)
		buf = carry
	}
	// next[i] is where secret i occurs next at or after pos (-1: never).
	next := make([]int, len(r.secrets))
	for i, s := range r.secrets {
		next[i] = bytes.Index(buf, []byte(s.Value))
	}
	pos := 0
	for {
		best := -1
		for i, s := range r.secrets {
			if next[i] >= 0 && next[i] < pos {
				if j := bytes.Index(buf[pos:], []byte(s.Value)); j >= 0 {
					next[i] = pos + j
				} else {
					next[i] = -1
				}
			}
			if next[i] >= 0 && (best < 0 || next[i] < next[best]) {
				best = i // ties keep the earlier, longer value
			}
		}
		if best < 0 {
			break
		}
		at := next[best]
		if at > pos {
			emit(buf[pos:at])
		}
		emit([]byte(placeholder(r.secrets[best].Name)))
		pos = at + len(r.secrets[best].Value)
	}
	if final {
		if pos < len(buf) {
			emit(buf[pos:])
		}
		return nil
	}
	// Bytes before keep cannot start a value that ends in a later write:
	// every value is at most maxLen long and none occurs complete here.
	keep := max(pos, len(buf)-(r.maxLen-1))
	if keep > pos {
		emit(buf[pos:keep])
	}
	return append([]byte(nil), buf[keep:]...)
}

// Writer redacts a stream written in pieces: a value split across writes
// is still replaced, because the last len(longest value)-1 bytes of each
// write are held back until the next one (or Flush) shows whether they
// start a value. Its methods are not safe for concurrent use.
type Writer struct {
	set   *Set
	emit  func([]byte)
	carry []byte
}

// NewWriter returns a Writer that passes the redacted stream to emit,
// which must not keep the slice it is given. With a nil set it passes
// everything through at once.
func NewWriter(set *Set, emit func([]byte)) *Writer {
	return &Writer{set: set, emit: emit}
}

// Write redacts p; it never fails. emit may get less than p now and the
// rest with a later Write or Flush.
func (w *Writer) Write(p []byte) (int, error) {
	if w.set == nil {
		if len(p) > 0 {
			w.emit(p)
		}
		return len(p), nil
	}
	w.carry = w.set.scan(w.carry, p, w.emit, false)
	return len(p), nil
}

// Flush emits what is held back; call it at the end of the stream.
func (w *Writer) Flush() {
	if len(w.carry) > 0 {
		c := w.carry
		w.carry = nil
		w.emit(c)
	}
}

// any reports whether b holds a secret value.
func (r *Set) any(b []byte) bool {
	for _, x := range r.secrets {
		if bytes.Contains(b, []byte(x.Value)) {
			return true
		}
	}
	return false
}
