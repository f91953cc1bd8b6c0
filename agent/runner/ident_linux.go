package runner

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
)

// procStart returns when process pid started, in clock ticks after boot
// (field 22 of /proc/<pid>/stat). Together with the boot id it tells a
// process from a later one that reuses its pid.
func procStart(pid int) (uint64, error) {
	// One read into a buffer on the stack: it runs for every child, and
	// the line is well below 2 KiB (a 16-byte name and 52 numbers).
	var buf [2048]byte
	fd, err := syscall.Open("/proc/"+strconv.Itoa(pid)+"/stat", syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
	if err != nil {
		return 0, err
	}
	n, err := syscall.Read(fd, buf[:])
	_ = syscall.Close(fd) // read only: the read reports any error
	if err != nil {
		return 0, err
	}
	data := buf[:max(n, 0)]
	// The command name (field 2) is in parentheses and may hold spaces or
	// parentheses itself: the fields after it start at the last ')'.
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return 0, errors.New("malformed stat")
	}
	fields := strings.Fields(string(data[i+1:]))
	// fields[0] is field 3 (state), so field 22 is fields[19].
	if len(fields) < 20 {
		return 0, errors.New("malformed stat")
	}
	if fields[0] == "Z" {
		return 0, fmt.Errorf("process %d has exited", pid)
	}
	return strconv.ParseUint(fields[19], 10, 64)
}

var bootIDOnce = sync.OnceValue(func() string {
	data, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(data))
})

// bootID identifies the current boot; empty where unknown.
func bootID() string { return bootIDOnce() }
