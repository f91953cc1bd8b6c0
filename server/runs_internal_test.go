package server

import "testing"

// TestCutIncomplete: only the first bytes of a character cut short are
// held back; complete characters and bytes that can never be UTF-8 are not.
func TestCutIncomplete(t *testing.T) {
	t.Parallel()
	tests := []struct{ in, whole, rest string }{
		{"", "", ""},
		{"abc", "abc", ""},
		{"ab\xc3", "ab", "\xc3"},
		{"ab\xc3\xa9", "ab\xc3\xa9", ""},
		{"\xe2\x82", "", "\xe2\x82"},
		{"x\xf0\x9f\x99", "x", "\xf0\x9f\x99"},
		{"x\xf0\x9f\x99\x82", "x\xf0\x9f\x99\x82", ""},
		{"a\xff", "a\xff", ""},
		{"a\x82", "a\x82", ""},
		{"\xc3\xc3", "\xc3", "\xc3"},
		{"a\x82\x82\x82", "a\x82\x82\x82", ""},
	}
	for _, tc := range tests {
		whole, rest := cutIncomplete([]byte(tc.in))
		if string(whole) != tc.whole || string(rest) != tc.rest {
			t.Errorf("cutIncomplete(%q) = %q, %q, want %q, %q", tc.in, whole, rest, tc.whole, tc.rest)
		}
	}
}
