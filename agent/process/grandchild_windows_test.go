//go:build windows

package process_test

import "syscall"

func grandchildAttr(bool) *syscall.SysProcAttr { return nil }
