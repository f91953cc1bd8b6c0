package runner

import (
	"testing"
	"time"
)

// TestGraceLeft: a lease enforced late (a paused host, a late timer) leaves
// the child only what remains of its grace, so SIGKILL never comes after
// the lease's end plus the grace the control plane waits for.
func TestGraceLeft(t *testing.T) {
	t.Parallel()
	end := time.Date(2026, 12, 7, 3, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		late, grace, want time.Duration
	}{
		{0, 10 * time.Second, 10 * time.Second},
		{3 * time.Second, 10 * time.Second, 7 * time.Second},
		{10 * time.Second, 10 * time.Second, 0},
		{45 * time.Second, 10 * time.Second, 0},
		{0, 0, 0},
		{-time.Second, 2 * time.Second, 3 * time.Second}, // checked early: never more than until end+grace
	} {
		if got := GraceLeft(end, end.Add(tc.late), tc.grace); got != tc.want {
			t.Errorf("GraceLeft(late %v, grace %v) = %v, want %v", tc.late, tc.grace, got, tc.want)
		}
	}
}
