package process

import (
	"errors"

	"golang.org/x/sys/unix"
)

// waitExited blocks until the child pid has exited without reaping it
// (WNOWAIT), so its process group id cannot be reused yet.
func (*sysState) waitExited(pid int) error {
	var info unix.Siginfo
	for {
		err := unix.Waitid(unix.P_PID, pid, &info, unix.WEXITED|unix.WNOWAIT, nil)
		if !errors.Is(err, unix.EINTR) {
			return err
		}
	}
}
