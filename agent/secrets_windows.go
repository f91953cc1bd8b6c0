//go:build windows

package agent

import (
	"slices"
	"unsafe"

	"golang.org/x/sys/windows"
)

var (
	kernel32                = windows.NewLazySystemDLL("kernel32.dll")
	procWideCharToMultiByte = kernel32.NewProc("WideCharToMultiByte")
	procGetOEMCP            = kernel32.NewProc("GetOEMCP")
)

// secretVariants returns the byte sequences other than its UTF-8 text in
// which a child may print the secret value v. A Windows child gets its
// environment as UTF-16 and writes text to a pipe or file in a code page:
// cmd.exe, PowerShell and most console programs use the console's (the OEM
// code page unless changed) or the ANSI code page, some write UTF-16LE.
// A value with characters outside ASCII then reaches the agent as bytes
// its UTF-8 text does not match, and would not be redacted.
func secretVariants(v string) []string {
	u, err := windows.UTF16FromString(v)
	if err != nil || len(u) < 2 {
		return nil // a NUL byte (refused before) or empty
	}
	u = u[:len(u)-1]
	var out []string
	add := func(s string) {
		if s != v && len(s) > 0 && !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	cps := []uint32{windows.GetACP()}
	if oem, _, _ := procGetOEMCP.Call(); oem != 0 {
		cps = append(cps, uint32(oem))
	}
	if cp, err := windows.GetConsoleOutputCP(); err == nil && cp != 0 {
		cps = append(cps, cp)
	}
	for _, cp := range cps {
		add(toCodePage(cp, u))
	}
	b := make([]byte, 2*len(u))
	for i, c := range u {
		b[2*i], b[2*i+1] = byte(c), byte(c>>8)
	}
	add(string(b))
	return out
}

// toCodePage converts UTF-16 text to code page cp as Windows converts a
// program's console output (best fit, '?' for what has no mapping); ""
// when it cannot.
func toCodePage(cp uint32, u []uint16) string {
	n, _, _ := procWideCharToMultiByte.Call(uintptr(cp), 0, uintptr(unsafe.Pointer(&u[0])), uintptr(len(u)), 0, 0, 0, 0)
	if n == 0 {
		return ""
	}
	buf := make([]byte, n)
	n, _, _ = procWideCharToMultiByte.Call(uintptr(cp), 0, uintptr(unsafe.Pointer(&u[0])), uintptr(len(u)), uintptr(unsafe.Pointer(&buf[0])), n, 0, 0)
	return string(buf[:n])
}
