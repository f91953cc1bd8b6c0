//go:build !linux

package main

import (
	"errors"
	"runtime"
	"syscall"
	"time"
)

// procStat is what /proc says about a process at one moment.
type procStat struct {
	CPU      time.Duration
	RSS, HWM int64
}

// errNoProc says the benchmark needs Linux's /proc.
var errNoProc = errors.New("the benchmark reads batond's CPU time and RSS from /proc: it runs on Linux only")

func readProcStat(int) (procStat, error) { return procStat{}, errNoProc }

func pidsMentioning(string) ([]int, error) { return nil, errNoProc }

func loadAverage() string { return "unknown" }

func sysProcAttr() *syscall.SysProcAttr { return nil }

func fsType(string) string { return "unknown" }

func machineInfo() (cpu string, memBytes int64, kernel string) {
	return "unknown", 0, runtime.GOOS
}
