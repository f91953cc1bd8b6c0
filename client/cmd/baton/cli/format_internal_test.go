package cli

import (
	"slices"
	"testing"
	"time"
)

func TestHumanDuration(t *testing.T) {
	t.Parallel()
	tests := []struct {
		d    time.Duration
		want string
	}{
		{0, "0ms"},
		{42 * time.Millisecond, "42ms"},
		{350 * time.Millisecond, "0.4s"},
		{1200 * time.Millisecond, "1.2s"},
		{59940 * time.Millisecond, "59.9s"},
		{59960 * time.Millisecond, "1m00s"},
		{184 * time.Second, "3m04s"},
		{time.Hour - 400*time.Millisecond, "1h00m"},
		{2*time.Hour + 5*time.Minute + 10*time.Second, "2h05m"},
		{26 * time.Hour, "1d02h"},
		{-1500 * time.Millisecond, "-1.5s"},
	}
	for _, tc := range tests {
		if got := humanDuration(tc.d); got != tc.want {
			t.Errorf("humanDuration(%v) = %q, want %q", tc.d, got, tc.want)
		}
	}
}

func TestLastLines(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in   string
		n    int
		want []string
	}{
		{"", 3, nil},
		{"\n", 3, nil},
		{"a\nb\nc\n", 2, []string{"b", "c"}},
		{"a\nb", 5, []string{"a", "b"}},
	}
	for _, tc := range tests {
		if got := lastLines(tc.in, tc.n); !slices.Equal(got, tc.want) {
			t.Errorf("lastLines(%q, %d) = %q, want %q", tc.in, tc.n, got, tc.want)
		}
	}
}
