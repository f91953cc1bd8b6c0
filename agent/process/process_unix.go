//go:build unix

package process

import (
	"errors"
	"syscall"
)

// sysState is the per-OS state of a child. On Unix the process group id is
// the child's pid, so nothing more is kept.
type sysState struct{}

func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}

func (*sysState) started(int) error { return nil }

func (*sysState) release() {}

func (*sysState) interrupt(pid int) error { return signalGroup(pid, syscall.SIGTERM) }

func (*sysState) kill(pid int) error { return signalGroup(pid, syscall.SIGKILL) }

// signalGroup sends sig to the process group pid leads. A group that is
// already gone is not an error.
func signalGroup(pid int, sig syscall.Signal) error {
	err := syscall.Kill(-pid, sig)
	if errors.Is(err, syscall.ESRCH) {
		return nil
	}
	return err
}
