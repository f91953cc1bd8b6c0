package agent

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
)

// killRunners kills every runner process of stateDir (any protocol
// version), found by its command line: runners run detached, outlive the
// agent that started them and, holding an exit no agent collected, never
// exit by themselves.
func killRunners(t testing.TB, stateDir string) {
	t.Helper()
	dirs, err := filepath.Glob("/proc/[0-9]*")
	if err != nil {
		t.Errorf("list processes: %v", err)
		return
	}
	want := []byte("\x00--state-dir\x00" + stateDir + "\x00")
	for _, d := range dirs {
		cmdline, err := os.ReadFile(filepath.Join(d, "cmdline"))
		if err != nil || !bytes.Contains(cmdline, want) || !bytes.Contains(cmdline, []byte("\x00runner\x00")) {
			continue
		}
		pid, err := strconv.Atoi(filepath.Base(d))
		if err != nil || pid == os.Getpid() {
			continue
		}
		if err := syscall.Kill(pid, syscall.SIGKILL); err == nil {
			t.Logf("killed runner %d of %s", pid, stateDir)
		}
	}
}
