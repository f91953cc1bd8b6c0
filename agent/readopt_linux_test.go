package agent

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/batonhq/baton/agent/runner"
	batonv1 "github.com/batonhq/baton/gen/baton/v1"
)

// agentProcess is an agent running as a process of its own (the test
// binary with BATON_TEST_AGENT), so that it can be killed with SIGKILL.
type agentProcess struct {
	cmd  *exec.Cmd
	done chan struct{}
}

// startProcess starts an agent process for the bundle's server and state
// dir, with env added to its environment (and its runner's, should it
// start one); runnerVersion 0 is the current protocol version.
func (b *testBundle) startProcess(t *testing.T, runnerVersion int, env ...string) *agentProcess {
	t.Helper()
	return b.startProcessSpec(t, agentSpec{RunnerVersion: runnerVersion}, env...)
}

// startProcessSpec is startProcess with more of the agent's settings.
func (b *testBundle) startProcessSpec(t *testing.T, spec agentSpec, env ...string) *agentProcess {
	t.Helper()
	spec.Server, spec.StateDir = b.srv.addr, b.stateDir
	specJSON, err := json.Marshal(spec)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(b.exe)
	cmd.Env = append(os.Environ(), "GORACE=atexit_sleep_ms=0", "BATON_TEST_AGENT="+string(specJSON))
	cmd.Env = append(cmd.Env, env...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &agentProcess{cmd: cmd, done: make(chan struct{})}
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			t.Log("agent process: " + sc.Text())
		}
		_ = cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() { p.kill(t) })
	return p
}

// kill kills the agent process with SIGKILL and waits until it is gone.
func (p *agentProcess) kill(t *testing.T) {
	t.Helper()
	_ = p.cmd.Process.Kill()
	p.wait(t)
}

// wait waits until the agent process has exited.
func (p *agentProcess) wait(t *testing.T) {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(waitTimeout):
		t.Fatalf("agent process %d still running after %s", p.cmd.Process.Pid, waitTimeout)
	}
}

// runnerPids returns the pids of the runner processes of stateDir.
func runnerPids(t *testing.T, stateDir string) []int {
	t.Helper()
	entries, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cmdline, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err != nil {
			continue
		}
		args := strings.Split(string(cmdline), "\x00")
		if len(args) > 1 && args[1] == "runner" && strings.Contains(string(cmdline), "\x00--detached") &&
			strings.Contains(string(cmdline), "\x00"+stateDir+"\x00") && alive(pid) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// oneRunner returns the pid of the state dir's only runner.
func oneRunner(t *testing.T, stateDir string) int {
	t.Helper()
	pids := runnerPids(t, stateDir)
	if len(pids) != 1 {
		t.Fatalf("runner processes of %s: %v, want exactly one", stateDir, pids)
	}
	return pids[0]
}

// waitFor polls cond until it holds.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, waitTimeout)
		}
		time.Sleep(10 * time.Millisecond) // polling a condition, not synchronising
	}
}

// exitRecorded reports whether the runner of version v has recorded the
// exit of attempt id, and not had it confirmed yet.
func exitRecorded(stateDir string, v int, id int64) bool {
	recs, _ := runner.Recorded(stateDir, v)
	rec, ok := recs[id]
	return ok && rec.Exited
}

// pidOf returns the pid from a TaskStarted and makes sure the process is
// gone when the test ends.
func pidOf(t *testing.T, ts *batonv1.TaskStarted) int {
	t.Helper()
	pid := int(ts.GetPid())
	if pid <= 0 {
		t.Fatalf("TaskStarted %v has no pid", ts)
	}
	t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGKILL) })
	return pid
}

func TestChildOutlivesKilledAgentAndIsReadopted(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ran := filepath.Join(t.TempDir(), "ran")
	release, done := releaseFile(t)
	first := b.startProcess(t, 0)
	s1 := b.srv.session(t)
	s1.startTask(t, b.task(201, "wait-file", "BATON_TEST_RELEASE", release, "BATON_TEST_RAN", ran,
		"BATON_TEST_STDOUT", "working\n", "BATON_TEST_STDERR", "before the agent died\n",
		"BATON_TEST_AFTER", "after the agent died\n", "BATON_TEST_OUTPUTS", "RowCount=42\n", "BATON_TEST_EXIT", "3"))
	started := s1.started(t, 201)
	child := pidOf(t, started)
	s1.startTask(t, b.task(202, "sleep"))
	other := pidOf(t, s1.started(t, 202))
	runnerPid := oneRunner(t, b.stateDir)
	// The stderr line is through the runner before the agent dies.
	s1.until(t, "stderr of 201", func(m *batonv1.ConnectRequest) bool {
		return strings.Contains(string(m.GetLogChunk().GetData()), "before the agent died")
	})

	first.kill(t)
	if !alive(child) || !alive(other) {
		t.Fatalf("children died with the agent: %d alive %v, %d alive %v", child, alive(child), other, alive(other))
	}

	second := b.start(t, b.config())
	s2 := b.srv.session(t)
	var running []int64
	for _, r := range s2.hello.GetRunning() {
		running = append(running, r.GetAttemptId())
		if r.GetAttemptId() == 201 && !r.GetStartTime().AsTime().Equal(started.GetStartTime().AsTime()) {
			t.Errorf("Hello.running start_time of 201 = %v, want the original %v", r.GetStartTime().AsTime(), started.GetStartTime().AsTime())
		}
	}
	if diff := cmp.Diff([]int64{201, 202}, running); diff != "" {
		t.Errorf("Hello.running after the restart mismatch (-want +got):\n%s", diff)
	}
	if again := s2.started(t, 201); int(again.GetPid()) != child {
		t.Errorf("re-announced TaskStarted pid = %d, want %d", again.GetPid(), child)
	}
	if got := oneRunner(t, b.stateDir); got != runnerPid {
		t.Errorf("runner pid = %d after the restart, want the same runner %d", got, runnerPid)
	}

	// A repeated StartTask must not start a second child.
	s2.startTask(t, b.task(201, "wait-file", "BATON_TEST_RELEASE", release, "BATON_TEST_RAN", ran))
	b.logs.wait(t, "ignoring repeated start_task", "attempt_id", "201", "state", "running")
	done()
	tf, _ := s2.finished(t, 201)
	if tf.GetOutcome() != failed || tf.GetExitCode() != 3 || tf.GetError() != "exit status 3" {
		t.Errorf("TaskFinished = {%v, %d, %q}, want {FAILED, 3, exit status 3}", tf.GetOutcome(), tf.GetExitCode(), tf.GetError())
	}
	if diff := cmp.Diff(map[string]string{"RowCount": "42"}, tf.GetOutputs()); diff != "" {
		t.Errorf("outputs mismatch (-want +got):\n%s", diff)
	}
	if got, want := string(tf.GetStderrTail()), "before the agent died\nafter the agent died\n"; got != want {
		t.Errorf("stderr_tail = %q, want %q", got, want)
	}
	if got := string(tf.GetStdoutTail()); got != "working\n" {
		t.Errorf("stdout_tail = %q, want %q", got, "working\n")
	}
	waitFor(t, "the output file of 201 is removed", func() bool {
		_, err := os.Stat(filepath.Join(b.stateDir, "output", "201"))
		return errors.Is(err, os.ErrNotExist)
	})

	// The other re-adopted child obeys a cancel.
	s2.cancelTask(t, &batonv1.CancelTask{AttemptId: 202, Reason: "bye"})
	tf, _ = s2.finished(t, 202)
	if tf.GetOutcome() != cancelled || tf.GetError() != "cancelled (bye): signal: terminated" {
		t.Errorf("TaskFinished = {%v, %q}, want {CANCELLED, cancelled (bye): signal: terminated}", tf.GetOutcome(), tf.GetError())
	}
	s2.ack(t, 201, 202)
	second.cancel()
	if err := second.wait(t); err != nil {
		t.Errorf("Run = %v, want nil", err)
	}
	if n := markerCount(t, ran); n != 1 {
		t.Errorf("attempt 201 started %d times, want once", n)
	}
	waitGone(t, child)
	waitGone(t, other)
	waitGone(t, runnerPid)
}

func TestExitWhileNoAgentIsReportedByTheNextOne(t *testing.T) {
	t.Parallel()
	b := setup(t)
	release, done := releaseFile(t)
	first := b.startProcess(t, 0)
	s1 := b.srv.session(t)
	s1.startTask(t, b.task(211, "wait-file", "BATON_TEST_RELEASE", release,
		"BATON_TEST_AFTER", "finished alone\n", "BATON_TEST_OUTPUTS", "Status=done\n"))
	child := pidOf(t, s1.started(t, 211))
	runnerPid := oneRunner(t, b.stateDir)
	first.kill(t)

	done()
	waitGone(t, child)
	waitFor(t, "the runner records the exit", func() bool { return exitRecorded(b.stateDir, runner.ProtocolVersion, 211) })

	b.start(t, b.config())
	s2 := b.srv.session(t)
	if len(s2.hello.GetRunning()) != 0 {
		t.Errorf("Hello.running = %v, want none", s2.hello.GetRunning())
	}
	unacked := s2.hello.GetUnacked()
	if len(unacked) != 1 {
		t.Fatalf("Hello.unacked = %v, want the outcome of 211", unacked)
	}
	tf := unacked[0]
	if tf.GetAttemptId() != 211 || tf.GetOutcome() != succeeded || tf.GetExitCode() != 0 ||
		tf.GetOutputs()["Status"] != "done" || string(tf.GetStderrTail()) != "finished alone\n" {
		t.Errorf("Hello.unacked[0] = %v, want 211 SUCCEEDED with Status=done and stderr tail %q", tf, "finished alone\n")
	}
	// Journaled: the runner forgot it and exits once idle.
	waitFor(t, "the exit record is removed", func() bool { return !exitRecorded(b.stateDir, runner.ProtocolVersion, 211) })
	s2.ack(t, 211)
	b.logs.wait(t, "outcomes acknowledged")
	if pids := runnerPids(t, b.stateDir); len(pids) != 1 || pids[0] != runnerPid {
		t.Errorf("runner pids %v, want the runner %d that saw the exit", pids, runnerPid)
	}
}

// TestSecretRedactedAfterAgentRestart: a child that prints its secret
// after its agent was killed has it redacted by the runner, and the next
// agent process, which learns the child's secrets from the runner, redacts
// them from the outputs; nothing under the state directory holds the
// value.
func TestSecretRedactedAfterAgentRestart(t *testing.T) {
	t.Parallel()
	const secret = "after-restart-s3cr3t"
	b := setup(t)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "dbpass"), []byte(secret), 0o600); err != nil {
		t.Fatal(err)
	}
	release, done := releaseFile(t)
	first := b.startProcessSpec(t, agentSpec{SecretsDir: dir})
	s1 := b.srv.session(t)
	st := b.task(411, "secret", "BATON_TEST_RELEASE", release, "TEST_WANT", secret)
	st.SecretEnv = map[string]string{"TEST_SECRET": "dbpass"}
	s1.startTask(t, st)
	child := pidOf(t, s1.started(t, 411))
	first.kill(t)

	done()
	waitGone(t, child)
	waitFor(t, "the runner records the exit", func() bool { return exitRecorded(b.stateDir, runner.ProtocolVersion, 411) })

	// The next agent has no secrets of its own: the runner tells it.
	b.start(t, b.config())
	s2 := b.srv.session(t)
	unacked := s2.hello.GetUnacked()
	if len(unacked) != 1 {
		t.Fatalf("Hello.unacked = %v, want the outcome of 411", unacked)
	}
	tf := unacked[0]
	if tf.GetOutcome() != succeeded || tf.GetOutputs()["match"] != "true" || tf.GetOutputs()["pw"] != "[secret:dbpass]" {
		t.Errorf("outcome = %v, outputs %q; want SUCCEEDED, match=true, pw=[secret:dbpass]", tf.GetOutcome(), tf.GetOutputs())
	}
	if want := "connecting with password [secret:dbpass]\n"; string(tf.GetStderrTail()) != want {
		t.Errorf("stderr tail = %q, want %q", tf.GetStderrTail(), want)
	}
	if bytes.Contains(tf.GetStdoutTail(), []byte(secret)) {
		t.Error("stdout tail holds the secret")
	}
	noSecretUnder(t, b.stateDir, secret)
}

func TestTimeoutHoldsWhileTheAgentIsDown(t *testing.T) {
	t.Parallel()
	b := setup(t)
	first := b.startProcess(t, 0)
	s1 := b.srv.session(t)
	st := b.task(221, "grandchild")
	st.Timeout = durationpb.New(time.Second)
	st.KillGrace = durationpb.New(100 * time.Millisecond)
	s1.startTask(t, st)
	child := pidOf(t, s1.started(t, 221))
	gc := grandchildPid(t, s1, 221)
	first.kill(t)

	// Nobody but the runner is there to stop the tree.
	waitGone(t, child)
	waitGone(t, gc)
	waitFor(t, "the runner records the exit", func() bool { return exitRecorded(b.stateDir, runner.ProtocolVersion, 221) })

	b.start(t, b.config())
	s2 := b.srv.session(t)
	unacked := s2.hello.GetUnacked()
	if len(unacked) != 1 || unacked[0].GetOutcome() != timedOut || unacked[0].GetExitCode() != -1 ||
		unacked[0].GetError() != "timed out after 1s: signal: terminated" {
		t.Errorf("Hello.unacked = %v, want 221 TIMED_OUT (timed out after 1s: signal: terminated)", unacked)
	}
}

func TestRunnerKilledWhileAgentRuns(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.start(t, b.config())
	s := b.srv.session(t)
	s.startTask(t, b.task(231, "grandchild"))
	child := pidOf(t, s.started(t, 231))
	gc := grandchildPid(t, s, 231)
	runnerPid := oneRunner(t, b.stateDir)
	if err := syscall.Kill(runnerPid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}

	tf, _ := s.finished(t, 231)
	if tf.GetOutcome() != failed || tf.GetExitCode() != -1 || tf.GetError() != "outcome unknown: the agent's runner was killed" {
		t.Errorf("TaskFinished = {%v, %d, %q}, want {FAILED, -1, outcome unknown: the agent's runner was killed}",
			tf.GetOutcome(), tf.GetExitCode(), tf.GetError())
	}
	waitGone(t, child)
	waitGone(t, gc)

	// A new runner took over; new work runs.
	s.startTask(t, b.task(232, "exit"))
	if tf, _ := s.finished(t, 232); tf.GetOutcome() != succeeded {
		t.Errorf("attempt after the runner died: outcome = %v (%s), want SUCCEEDED", tf.GetOutcome(), tf.GetError())
	}
	if got := oneRunner(t, b.stateDir); got == runnerPid {
		t.Errorf("runner pid %d is the killed one", got)
	}
}

func TestRunnerKilledWhileAgentIsDown(t *testing.T) {
	t.Parallel()
	b := setup(t)
	first := b.startProcess(t, 0)
	s1 := b.srv.session(t)
	s1.startTask(t, b.task(241, "sleep"))
	child := pidOf(t, s1.started(t, 241))
	runnerPid := oneRunner(t, b.stateDir)
	first.kill(t)
	if err := syscall.Kill(runnerPid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitGone(t, runnerPid)
	if !alive(child) {
		t.Fatal("the child died with its runner; it should have been left running")
	}

	b.start(t, b.config())
	s2 := b.srv.session(t)
	unacked := s2.hello.GetUnacked()
	if len(s2.hello.GetRunning()) != 0 || len(unacked) != 1 || unacked[0].GetAttemptId() != 241 ||
		unacked[0].GetOutcome() != failed || unacked[0].GetError() != "outcome unknown: the agent's runner was killed" {
		t.Errorf("Hello running %v, unacked %v; want 241 FAILED (outcome unknown: the agent's runner was killed)",
			s2.hello.GetRunning(), unacked)
	}
	waitGone(t, child)
}

func TestChildOfAnOlderRunnerIsReported(t *testing.T) {
	t.Parallel()
	b := setup(t)
	const oldVersion = 7
	release, done := releaseFile(t)
	first := b.startProcess(t, oldVersion)
	s1 := b.srv.session(t)
	s1.startTask(t, b.task(251, "wait-file", "BATON_TEST_RELEASE", release,
		"BATON_TEST_AFTER", "old runner\n", "BATON_TEST_OUTPUTS", "Version=old\n", "BATON_TEST_EXIT", "4"))
	child := pidOf(t, s1.started(t, 251))
	oldRunner := oneRunner(t, b.stateDir)
	first.kill(t)

	// The upgraded agent speaks another protocol version: it starts a
	// runner of its own and watches the old runner's child.
	b.start(t, b.config())
	s2 := b.srv.session(t)
	if len(s2.hello.GetRunning()) != 1 || s2.hello.GetRunning()[0].GetAttemptId() != 251 {
		t.Errorf("Hello.running = %v, want 251", s2.hello.GetRunning())
	}
	s2.startTask(t, b.task(252, "exit"))
	if tf, _ := s2.finished(t, 252); tf.GetOutcome() != succeeded {
		t.Errorf("new work: outcome = %v (%s), want SUCCEEDED", tf.GetOutcome(), tf.GetError())
	}
	if pids := runnerPids(t, b.stateDir); len(pids) != 2 {
		t.Errorf("runner pids = %v, want the old and a new one", pids)
	}

	done()
	tf, _ := s2.finished(t, 251)
	if tf.GetOutcome() != failed || tf.GetExitCode() != 4 || tf.GetOutputs()["Version"] != "old" ||
		string(tf.GetStderrTail()) != "old runner\n" {
		t.Errorf("TaskFinished = %v, want FAILED exit 4 with Version=old and stderr tail %q", tf, "old runner\n")
	}
	// Its exit collected, the old runner has nothing left and exits.
	waitGone(t, child)
	waitGone(t, oldRunner)
}

// TestLocalChildren runs children in the agent process, the way the agent
// works on Windows, where no runner outlives it.
func TestLocalChildren(t *testing.T) {
	t.Parallel()
	t.Run("outcome", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		b.localChildren = true
		b.start(t, b.config())
		s := b.srv.session(t)
		s.startTask(t, b.task(301, "outputs", "BATON_TEST_OUTPUTS", "RowCount=7\n", "BATON_TEST_STDERR", "note\n"))
		tf, _ := s.finished(t, 301)
		if tf.GetOutcome() != succeeded || tf.GetOutputs()["RowCount"] != "7" || string(tf.GetStderrTail()) != "note\n" {
			t.Errorf("TaskFinished = %v, want SUCCEEDED with RowCount=7 and stderr tail %q", tf, "note\n")
		}
		if len(runnerPids(t, b.stateDir)) != 0 {
			t.Errorf("a runner was started for local children")
		}
	})
	t.Run("timeout kills the tree", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		b.localChildren = true
		b.start(t, b.config())
		s := b.srv.session(t)
		st := b.task(302, "grandchild")
		st.Timeout = durationpb.New(300 * time.Millisecond)
		st.KillGrace = durationpb.New(100 * time.Millisecond)
		s.startTask(t, st)
		gc := grandchildPid(t, s, 302)
		tf, _ := s.finished(t, 302)
		if tf.GetOutcome() != timedOut || tf.GetError() != "timed out after 300ms: signal: terminated" {
			t.Errorf("TaskFinished = {%v, %q}, want {TIMED_OUT, timed out after 300ms: signal: terminated}", tf.GetOutcome(), tf.GetError())
		}
		waitGone(t, gc)
	})
	t.Run("lease expiry stops the tree", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		b.localChildren = true
		b.srv.setLease(time.Second, nil)
		b.start(t, b.config())
		s := b.srv.session(t)
		st := b.task(304, "grandchild")
		st.KillGrace = durationpb.New(100 * time.Millisecond)
		s.startTask(t, st)
		gc := grandchildPid(t, s, 304)
		tf, _ := s.finished(t, 304)
		expiredAt(t, tf, time.Second)
		waitGone(t, gc)
	})
	t.Run("cancel", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		b.localChildren = true
		b.start(t, b.config())
		s := b.srv.session(t)
		st := b.task(303, "sleep")
		st.Timeout = durationpb.New(time.Hour)
		s.startTask(t, st)
		s.started(t, 303)
		s.cancelTask(t, &batonv1.CancelTask{AttemptId: 303, Reason: "stop"})
		tf, _ := s.finished(t, 303)
		if tf.GetOutcome() != cancelled || tf.GetError() != "cancelled (stop): signal: terminated" {
			t.Errorf("TaskFinished = {%v, %q}, want {CANCELLED, cancelled (stop): signal: terminated}", tf.GetOutcome(), tf.GetError())
		}
	})
}

func TestRunFailsWithoutARunner(t *testing.T) {
	t.Parallel()
	b := setup(t)
	cfg := b.config()
	cfg.RunnerCommand = []string{"/bin/false"}
	a, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	err = a.Run(t.Context())
	if err == nil || !strings.Contains(err.Error(), "attach to the runner: runner exited without reporting") {
		t.Errorf("Run with a runner command that fails = %v, want an attach error", err)
	}
	// The state dir is released: another agent may take it.
	if a2, err := New(cfg); err != nil {
		t.Errorf("New after the failed Run = %v, want the state dir released", err)
	} else {
		a2.release()
	}
}

func init() {
	// hold-lock plays a live runner of protocol version 1: it holds the
	// lock file BATON_TEST_LOCK until BATON_TEST_RELEASE exists.
	platformChildren["hold-lock"] = func() int {
		f, err := os.OpenFile(os.Getenv("BATON_TEST_LOCK"), os.O_RDWR|os.O_CREATE, 0o600)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer func() { _ = f.Close() }() // a lock file, never written
		lk := syscall.Flock_t{Type: syscall.F_WRLCK}
		if err := syscall.FcntlFlock(f.Fd(), syscall.F_SETLK, &lk); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		fmt.Println("locked")
		for {
			if _, err := os.Stat(os.Getenv("BATON_TEST_RELEASE")); err == nil {
				return 0
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
}

// writeV1Record writes rec as a runner of protocol version 1 kept it: a
// file of its own in the attempt directory.
func writeV1Record(t *testing.T, stateDir string, rec *runner.Record) {
	t.Helper()
	attDir := filepath.Join(stateDir, "r1", "att")
	if err := os.MkdirAll(attDir, 0o700); err != nil {
		t.Fatal(err)
	}
	data, err := json.Marshal(rec)
	if err != nil {
		t.Fatal(err)
	}
	name := strconv.FormatInt(rec.ID, 10) + ".run"
	if rec.Exited {
		name = strconv.FormatInt(rec.ID, 10) + ".exit"
	}
	tmp := filepath.Join(attDir, name+".tmp")
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(attDir, name)); err != nil {
		t.Fatal(err)
	}
}

// TestChildrenOfAVersion1RunnerAreCollected upgrades from an agent whose
// runner kept a file per record: the new agent reports the exits and
// orphans of a dead version 1 runner, watches the child of a live one
// until its exit file appears, and confirms each by removing its files.
func TestChildrenOfAVersion1RunnerAreCollected(t *testing.T) {
	t.Parallel()
	b := setup(t)
	start := time.Now().Add(-time.Minute).UTC()
	// A dead version 1 runner left an exit and an orphan.
	writeV1Record(t, b.stateDir, &runner.Record{ID: 261, Pid: 1 << 22, Start: start, Exited: true, End: start.Add(time.Second),
		ExitCode: 4, Err: "exit status 4", StderrTail: []byte("old exit\n"), StderrBytes: 9})
	writeV1Record(t, b.stateDir, &runner.Record{ID: 262, Pid: 1 << 22, Start: start})

	b.start(t, b.config())
	s := b.srv.session(t)
	got := map[int64]string{}
	for _, tf := range s.hello.GetUnacked() {
		got[tf.GetAttemptId()] = fmt.Sprintf("%v %d %s %q", tf.GetOutcome(), tf.GetExitCode(), tf.GetError(), tf.GetStderrTail())
	}
	want := map[int64]string{
		261: fmt.Sprintf("%v 4 exit status 4 %q", failed, "old exit\n"),
		262: fmt.Sprintf("%v -1 %s %q", failed, runner.LostRunnerKilled, ""),
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Hello.unacked mismatch (-want +got):\n%s", diff)
	}
	waitFor(t, "the version 1 record files are removed", func() bool {
		recs, err := runner.Recorded(b.stateDir, 1)
		return err == nil && len(recs) == 0
	})
}

func TestChildOfALiveVersion1RunnerIsWatched(t *testing.T) {
	t.Parallel()
	b := setup(t)
	release, done := releaseFile(t)
	lockPath := filepath.Join(b.stateDir, "r1", "lock")
	if err := os.MkdirAll(filepath.Dir(lockPath), 0o700); err != nil {
		t.Fatal(err)
	}
	holder := exec.Command(b.exe)
	holder.Env = append(os.Environ(), "BATON_TEST_CHILD=hold-lock", "BATON_TEST_LOCK="+lockPath, "BATON_TEST_RELEASE="+release)
	out, err := holder.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		done()
		_ = holder.Wait()
	})
	if line, err := bufio.NewReader(out).ReadString('\n'); err != nil || line != "locked\n" {
		t.Fatalf("lock holder said %q, %v; want locked", line, err)
	}
	start := time.Now().Add(-time.Second).UTC()
	writeV1Record(t, b.stateDir, &runner.Record{ID: 271, Pid: holder.Process.Pid, Start: start})

	b.start(t, b.config())
	s := b.srv.session(t)
	if r := s.hello.GetRunning(); len(r) != 1 || r[0].GetAttemptId() != 271 {
		t.Fatalf("Hello.running = %v, want 271", r)
	}
	writeV1Record(t, b.stateDir, &runner.Record{ID: 271, Pid: holder.Process.Pid, Start: start, Exited: true,
		End: time.Now().UTC(), ExitCode: 0, StdoutTail: []byte("done\n"), StdoutBytes: 5})
	tf, _ := s.finished(t, 271)
	if tf.GetOutcome() != succeeded || string(tf.GetStdoutTail()) != "done\n" {
		t.Errorf("TaskFinished = %v, want SUCCEEDED with stdout tail %q", tf, "done\n")
	}
	waitFor(t, "the version 1 record files are removed", func() bool {
		_, err := os.Stat(filepath.Join(b.stateDir, "r1", "att", "271.exit"))
		return errors.Is(err, os.ErrNotExist)
	})
}
