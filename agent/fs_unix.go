//go:build unix

package agent

import (
	"errors"
	"fmt"
	"os"
	"syscall"
)

// lockFile takes an exclusive lock on the open file f without blocking.
// The lock ends when f is closed. It is a POSIX record lock rather than
// flock: a record lock is not inherited by children, so a child forked at
// the same moment cannot keep it alive after f is closed.
func lockFile(f *os.File) error {
	lk := syscall.Flock_t{Type: syscall.F_WRLCK, Whence: 0, Start: 0, Len: 0}
	err := syscall.FcntlFlock(f.Fd(), syscall.F_SETLK, &lk)
	if errors.Is(err, syscall.EAGAIN) || errors.Is(err, syscall.EACCES) {
		return errStateDirInUse
	}
	if err != nil {
		return fmt.Errorf("lock file: %w", err)
	}
	return nil
}
