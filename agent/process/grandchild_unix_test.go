//go:build unix

package process_test

import "syscall"

func grandchildAttr(setsid bool) *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setsid: setsid}
}
