//go:build unix

package runner

import (
	"errors"
	"fmt"
	"os"
	"syscall"
)

// errBusy says another runner process holds the lock.
var errBusy = errors.New("another runner holds the lock")

// lockFile takes an exclusive POSIX record lock on f without blocking. It
// ends when f is closed or the process exits; a forked child does not
// inherit it.
func lockFile(f *os.File) error {
	lk := syscall.Flock_t{Type: syscall.F_WRLCK}
	err := syscall.FcntlFlock(f.Fd(), syscall.F_SETLK, &lk)
	if errors.Is(err, syscall.EAGAIN) || errors.Is(err, syscall.EACCES) {
		return errBusy
	}
	if err != nil {
		return fmt.Errorf("lock %s: %w", f.Name(), err)
	}
	return nil
}

// lockHeld reports whether another process holds the lock file at path.
// A missing file is not held.
func lockHeld(path string) (bool, error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	defer func() { _ = f.Close() }() // opened only to test the lock
	lk := syscall.Flock_t{Type: syscall.F_WRLCK}
	if err := syscall.FcntlFlock(f.Fd(), syscall.F_GETLK, &lk); err != nil {
		return false, fmt.Errorf("test lock %s: %w", path, err)
	}
	return lk.Type != syscall.F_UNLCK, nil
}

// killTree kills the process group of a child of a runner that is gone,
// when it can tell that the group is that child's: the leader (pid) must
// still run, with the start time and boot recorded for it. A leader that
// has exited, or a pid that now names another process, is left alone,
// and so is whatever remains of the group: it cannot be identified
// safely. It reports whether it signalled the group.
func killTree(pid int, pidStart uint64, boot string) (bool, error) {
	if pid <= 0 || pidStart == 0 || boot == "" || boot != bootID() {
		return false, nil
	}
	st, err := procStart(pid)
	if err != nil || st != pidStart {
		return false, nil
	}
	err = syscall.Kill(-pid, syscall.SIGKILL)
	if errors.Is(err, syscall.ESRCH) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("kill process group %d: %w", pid, err)
	}
	return true, nil
}

// signalTree sends sig to the process group of a child whose runner is of
// another version, after the same identity check as killTree.
func signalTree(pid int, pidStart uint64, boot string, sig syscall.Signal) error {
	if pid <= 0 || pidStart == 0 || boot == "" || boot != bootID() {
		return errors.New("the child cannot be identified safely")
	}
	if st, err := procStart(pid); err != nil || st != pidStart {
		return nil // it has exited
	}
	if err := syscall.Kill(-pid, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("signal process group %d: %w", pid, err)
	}
	return nil
}
