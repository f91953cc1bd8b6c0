//go:build windows

package runner

import (
	"fmt"
	"io"
)

// Main reports that there is no runner on Windows: there the agent runs
// children directly, in job objects that end with it. It returns 2.
func Main(_ []string, stderr io.Writer) int {
	// Best effort: the exit code reports the failure.
	_, _ = fmt.Fprintln(stderr, "runner: not used on Windows; the agent runs children itself")
	return 2
}
