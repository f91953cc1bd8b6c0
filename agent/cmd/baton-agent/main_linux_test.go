package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/batonhq/baton/agent/runner"
	batonv1 "github.com/batonhq/baton/gen/baton/v1"
)

// agentProcess is baton-agent running as a process of its own.
type agentProcess struct {
	cmd    *exec.Cmd
	stderr *syncBuffer
	done   chan struct{}
}

func startAgentProcess(t *testing.T, addr, state string) *agentProcess {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, "--server", addr, "--name", "etl-01", "--state-dir", state, "--log-level", "debug", "--allow", exe)
	cmd.Env = append(os.Environ(), "BATON_TEST_MAIN=1", "GORACE=atexit_sleep_ms=0")
	p := &agentProcess{cmd: cmd, stderr: &syncBuffer{}, done: make(chan struct{})}
	cmd.Stderr = p.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		_ = cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-p.done
		if t.Failed() {
			t.Logf("agent process %d stderr:\n%s", cmd.Process.Pid, p.stderr.String())
		}
	})
	return p
}

// processAlive reports whether pid runs (a zombie counts as gone).
func processAlive(pid int) bool {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	i := strings.LastIndexByte(string(stat), ')')
	return i < 0 || i+2 >= len(stat) || stat[i+2] != 'Z'
}

// runnerPid returns the pid of the runner of state: the holder of its lock.
func runnerPid(t *testing.T, state string) int {
	t.Helper()
	f, err := os.Open(filepath.Join(state, "r"+strconv.Itoa(runner.ProtocolVersion), "lock"))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = f.Close() }() // read only, to ask about the lock
	lk := syscall.Flock_t{Type: syscall.F_WRLCK}
	if err := syscall.FcntlFlock(f.Fd(), syscall.F_GETLK, &lk); err != nil || lk.Type == syscall.F_UNLCK {
		t.Fatalf("no runner holds %s: %v", f.Name(), err)
	}
	return int(lk.Pid)
}

func waitGone(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for processAlive(pid) {
		if time.Now().After(deadline) {
			t.Fatalf("process %d still alive after %s", pid, waitTimeout)
		}
		time.Sleep(10 * time.Millisecond) // polling a condition, not synchronising
	}
}

// TestKilledAgentsChildIsReadopted kills baton-agent with SIGKILL while its
// child runs and starts it again with the same name and state dir: the
// child keeps running and its real outcome reaches the control plane.
func TestKilledAgentsChildIsReadopted(t *testing.T) {
	t.Parallel()
	cp, addr := startControlPlane(t)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	state := t.TempDir()
	release := filepath.Join(t.TempDir(), "release")
	first := startAgentProcess(t, addr, state)
	select {
	case <-cp.hellos:
	case <-time.After(waitTimeout):
		t.Fatal("agent did not connect")
	}
	cp.send <- &batonv1.ConnectResponse{Msg: &batonv1.ConnectResponse_StartTask{StartTask: &batonv1.StartTask{
		AttemptId: 1, Argv: []string{exe}, Env: map[string]string{"BATON_TEST_CHILD": "wait-file", "BATON_TEST_RELEASE": release},
	}}}
	var pid int
	for pid == 0 {
		select {
		case m := <-cp.recv:
			pid = int(m.GetTaskStarted().GetPid())
		case <-time.After(waitTimeout):
			t.Fatal("no TaskStarted")
		}
	}
	t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGKILL) })
	runner := runnerPid(t, state)
	_ = first.cmd.Process.Kill()
	<-first.done
	if !processAlive(pid) {
		t.Fatal("the child died with baton-agent")
	}

	second := startAgentProcess(t, addr, state)
	select {
	case hello := <-cp.hellos:
		if got := hello.GetRunning(); len(got) != 1 || got[0].GetAttemptId() != 1 {
			t.Errorf("Hello.running = %v, want attempt 1", got)
		}
	case <-time.After(waitTimeout):
		t.Fatal("restarted agent did not connect")
	}
	if err := os.WriteFile(release, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	var tf *batonv1.TaskFinished
	for tf == nil {
		select {
		case m := <-cp.recv:
			tf = m.GetTaskFinished()
		case <-time.After(waitTimeout):
			t.Fatal("no TaskFinished")
		}
	}
	if tf.GetExitCode() != 5 || tf.GetOutputs()["Answer"] != "42" || string(tf.GetStderrTail()) != "waiting\nreleased\n" {
		t.Errorf("TaskFinished = %v, want exit 5, Answer=42 and stderr tail %q", tf, "waiting\nreleased\n")
	}
	cp.send <- &batonv1.ConnectResponse{Msg: &batonv1.ConnectResponse_Ack{Ack: &batonv1.Ack{AttemptIds: []int64{1}}}}
	if err := second.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-second.done:
		if code := second.cmd.ProcessState.ExitCode(); code != 0 {
			t.Errorf("baton-agent exited %d after SIGTERM, want 0", code)
		}
	case <-time.After(waitTimeout):
		t.Fatal("baton-agent did not stop after SIGTERM")
	}
	waitGone(t, pid)
	waitGone(t, runner) // idle once no agent needs it
}
