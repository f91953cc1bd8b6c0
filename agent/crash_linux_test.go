package agent

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/batonhq/baton/agent/internal/crashpoint"
	"github.com/batonhq/baton/agent/runner"
	batonv1 "github.com/batonhq/baton/gen/baton/v1"
)

// What the next agent process makes of an attempt whose agent was killed
// at a crash point.
const (
	// neverStarted: nothing lists it; the repeated StartTask starts it.
	neverStarted = "never started"
	// readopted: the Hello lists it as running; its real exit follows.
	readopted = "re-adopted"
	// journaled: the Hello lists its real outcome.
	journaled = "outcome in the hello"
)

// crashTask is the StartTask of the crash tests: a child that counts its
// starts in ran, waits for release and exits 3 with an output.
func (b *testBundle) crashTask(id int64, ran, release string) *batonv1.StartTask {
	return b.task(id, "wait-file", "BATON_TEST_RELEASE", release, "BATON_TEST_RAN", ran,
		"BATON_TEST_STDOUT", "ran\n", "BATON_TEST_OUTPUTS", "RowCount=42\n", "BATON_TEST_EXIT", "3")
}

// checkRealExit checks that tf is the crash task's real exit.
func checkRealExit(t *testing.T, tf *batonv1.TaskFinished) {
	t.Helper()
	if tf.GetOutcome() != failed || tf.GetExitCode() != 3 || tf.GetError() != "exit status 3" ||
		tf.GetOutputs()["RowCount"] != "42" || string(tf.GetStdoutTail()) != "ran\n" {
		t.Errorf("TaskFinished = %v, want the real exit: FAILED, exit 3, RowCount=42, stdout tail %q", tf, "ran\n")
	}
}

// fileExists reports whether path exists.
func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// runnerLog returns the runner's own log.
func runnerLog(stateDir string) string {
	b, _ := os.ReadFile(filepath.Join(stateDir, "r"+strconv.Itoa(runner.ProtocolVersion), "log"))
	return string(b)
}

// TestAgentKilledWhileStarting kills an agent process at each step of
// handing an attempt to its runner (holding the runner where the step is
// the runner's), starts the next agent process on the same state
// directory, and checks that nothing is lost: an attempt that never
// started starts when the control plane sends it again, one that did has
// its real exit reported, and no child runs twice.
func TestAgentKilledWhileStarting(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		point string
		hold  bool // the point is the runner's: hold the runner there while the agent is killed
		idle  bool // let the runner exit on its own before the next agent starts
		want  string
	}{
		{name: "before the journal", point: crashpoint.AgentAccepted, want: neverStarted},
		{name: "journaled, request not sent", point: crashpoint.AgentBegun, want: neverStarted},
		{name: "journaled, request not sent, runner gone idle", point: crashpoint.AgentBegun, idle: true, want: neverStarted},
		{name: "request not yet read by the runner", point: crashpoint.RunnerReceived, hold: true, want: neverStarted},
		{name: "runner forking the child", point: crashpoint.RunnerForking, hold: true, want: readopted},
		{name: "child started, not announced", point: crashpoint.AgentStarted, want: readopted},
		{name: "outcome journaled, not reported", point: crashpoint.AgentFinished, want: journaled},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			const id = 501
			b := setup(t)
			ran := filepath.Join(t.TempDir(), "ran")
			release, done := releaseFile(t)
			if tc.want != readopted {
				done() // the child exits at once
			}
			spec := crashSpec{Point: tc.point, ID: id}
			if tc.hold {
				spec.HoldDir = t.TempDir()
			}
			first := b.startProcess(t, 0, spec.env(t))
			s1 := b.srv.session(t)
			st := b.crashTask(id, ran, release)
			s1.startTask(t, st)
			runnerPid := oneRunner(t, b.stateDir)
			if tc.hold {
				waitFor(t, "the runner holds at "+tc.point, func() bool { return fileExists(filepath.Join(spec.HoldDir, "held")) })
				first.kill(t)
			} else {
				first.wait(t)
			}
			if tc.idle {
				waitGone(t, runnerPid)
			}

			b.start(t, b.config())
			s2 := b.srv.session(t)
			if tc.hold {
				if err := os.WriteFile(filepath.Join(spec.HoldDir, "release"), nil, 0o600); err != nil {
					t.Fatal(err)
				}
			}
			var running, unacked []int64
			for _, r := range s2.hello.GetRunning() {
				running = append(running, r.GetAttemptId())
			}
			for _, tf := range s2.hello.GetUnacked() {
				unacked = append(unacked, tf.GetAttemptId())
			}
			switch tc.want {
			case neverStarted:
				if len(running) != 0 || len(unacked) != 0 {
					t.Fatalf("Hello lists running %v, unacked %v; want neither for an attempt that never started", running, unacked)
				}
				if tc.point == crashpoint.RunnerReceived {
					waitFor(t, "the runner drops the request of the dead agent", func() bool {
						return strings.Contains(runnerLog(b.stateDir), "dropping a start request")
					})
				}
				// The control plane sends it again: it starts now.
				s2.startTask(t, st)
				pidOf(t, s2.started(t, id))
				tf, _ := s2.finished(t, id)
				checkRealExit(t, tf)
			case readopted:
				if diff := cmp.Diff([]int64{id}, running); diff != "" || len(unacked) != 0 {
					t.Fatalf("Hello lists running %v, unacked %v; want %d running", running, unacked, id)
				}
				// Announced once its pid is known, also when the runner
				// was still forking it.
				pidOf(t, s2.started(t, id))
				done()
				tf, _ := s2.finished(t, id)
				checkRealExit(t, tf)
			case journaled:
				if len(running) != 0 || len(s2.hello.GetUnacked()) != 1 {
					t.Fatalf("Hello lists running %v, unacked %v; want the outcome of %d", running, unacked, id)
				}
				checkRealExit(t, s2.hello.GetUnacked()[0])
			}
			// Once more, as a control plane that missed all this would:
			// nothing starts again.
			s2.startTask(t, st)
			tf, _ := s2.finished(t, id)
			checkRealExit(t, tf)
			s2.ack(t, id)
			s2.startTask(t, st)
			b.logs.wait(t, "ignoring repeated start_task", "attempt_id", "501", "state", "acked")
			if n := markerCount(t, ran); n != 1 {
				t.Errorf("the child started %d times, want once", n)
			}
			waitFor(t, "the runner forgets the exit", func() bool {
				recs, err := runner.Recorded(b.stateDir, runner.ProtocolVersion)
				return err == nil && recs[id] == nil
			})
		})
	}
}

// TestAgentAndRunnerKilledWhileForking kills the runner too while it
// forks the child of the killed agent: nobody can tell whether the child
// ran, so the attempt never starts again and its outcome is unknown.
func TestAgentAndRunnerKilledWhileForking(t *testing.T) {
	t.Parallel()
	const id = 511
	b := setup(t)
	ran := filepath.Join(t.TempDir(), "ran")
	release, done := releaseFile(t)
	done()
	spec := crashSpec{Point: crashpoint.RunnerForking, ID: id, HoldDir: t.TempDir()}
	first := b.startProcess(t, 0, spec.env(t))
	s1 := b.srv.session(t)
	st := b.crashTask(id, ran, release)
	s1.startTask(t, st)
	waitFor(t, "the runner holds while forking", func() bool { return fileExists(filepath.Join(spec.HoldDir, "held")) })
	runnerPid := oneRunner(t, b.stateDir)
	first.kill(t)
	if err := syscall.Kill(runnerPid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitGone(t, runnerPid)

	b.start(t, b.config())
	s2 := b.srv.session(t)
	if len(s2.hello.GetRunning()) != 0 || len(s2.hello.GetUnacked()) != 0 {
		t.Errorf("Hello lists running %v, unacked %v; want neither", s2.hello.GetRunning(), s2.hello.GetUnacked())
	}
	s2.startTask(t, st)
	tf, msgs := s2.finished(t, id)
	if tf.GetOutcome() != failed || tf.GetError() != "the agent stopped while the attempt ran; its outcome is unknown" {
		t.Errorf("TaskFinished = {%v, %q}, want {FAILED, the agent stopped while the attempt ran; its outcome is unknown}",
			tf.GetOutcome(), tf.GetError())
	}
	for _, m := range msgs {
		if m.GetTaskStarted() != nil {
			t.Errorf("the attempt started again: %v", m)
		}
	}
	if n := markerCount(t, ran); n != 0 {
		t.Errorf("the child started %d times, want never", n)
	}
}
