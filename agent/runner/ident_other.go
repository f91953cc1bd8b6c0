//go:build !linux

package runner

import "errors"

// procStart is unknown here: without it a pid cannot be told from a later
// process that reuses it, so children of a killed runner are not killed.
func procStart(int) (uint64, error) {
	return 0, errors.New("process start times are not supported on this platform")
}

// bootID is unknown here.
func bootID() string { return "" }
