package agent

import (
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/batonhq/baton/agent/allow"
	batonv1 "github.com/batonhq/baton/gen/baton/v1"
)

const (
	succeeded    = batonv1.AttemptOutcome_ATTEMPT_OUTCOME_SUCCEEDED
	failed       = batonv1.AttemptOutcome_ATTEMPT_OUTCOME_FAILED
	startFailed  = batonv1.AttemptOutcome_ATTEMPT_OUTCOME_START_FAILED
	timedOut     = batonv1.AttemptOutcome_ATTEMPT_OUTCOME_TIMED_OUT
	cancelled    = batonv1.AttemptOutcome_ATTEMPT_OUTCOME_CANCELLED
	rejected     = batonv1.AttemptOutcome_ATTEMPT_OUTCOME_REJECTED
	streamStdout = batonv1.LogStream_LOG_STREAM_STDOUT
	streamStderr = batonv1.LogStream_LOG_STREAM_STDERR
)

func TestHello(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.start(t, b.config())
	s := b.srv.session(t)
	hostname, _ := os.Hostname()
	want := &batonv1.Hello{
		Name:     "test-agent",
		Labels:   map[string]string{"role": "ssis", "dc": "east"},
		Slots:    4,
		Version:  "v-test",
		Hostname: hostname,
		Os:       runtime.GOOS,
	}
	if s.hello.GetBootId() == "" {
		t.Error("Hello.boot_id is empty")
	}
	if diff := cmp.Diff(want, s.hello, protocmp.Transform(), protocmp.IgnoreFields(&batonv1.Hello{}, "boot_id")); diff != "" {
		t.Errorf("Hello mismatch (-want +got):\n%s", diff)
	}
}

func TestNameDefaultsToHostname(t *testing.T) {
	t.Parallel()
	b := setup(t)
	cfg := b.config()
	cfg.Name = ""
	cfg.Slots = 0
	b.start(t, cfg)
	s := b.srv.session(t)
	hostname, _ := os.Hostname()
	if s.hello.GetName() != hostname {
		t.Errorf("Hello.name = %q, want the host name %q", s.hello.GetName(), hostname)
	}
	if s.hello.GetSlots() != int32(runtime.NumCPU()) {
		t.Errorf("Hello.slots = %d, want runtime.NumCPU() = %d", s.hello.GetSlots(), runtime.NumCPU())
	}
}

func TestTaskOutcome(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		exit     string
		outcome  batonv1.AttemptOutcome
		exitCode int32
		err      string
	}{
		{name: "exit 0 succeeds", exit: "0", outcome: succeeded, exitCode: 0},
		{name: "exit 3 fails", exit: "3", outcome: failed, exitCode: 3, err: "exit status 3"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			b.start(t, b.config())
			s := b.srv.session(t)
			s.startTask(t, b.task(7, "exit", "BATON_TEST_EXIT", tc.exit,
				"BATON_TEST_STDOUT", "to stdout\n", "BATON_TEST_STDERR", "something broke\n"))
			started := s.started(t, 7)
			if started.GetPid() <= 0 || started.GetStartTime() == nil {
				t.Errorf("TaskStarted = %v, want a pid and a start time", started)
			}
			tf, _ := s.finished(t, 7)
			if tf.GetOutcome() != tc.outcome || tf.GetExitCode() != tc.exitCode || tf.GetError() != tc.err {
				t.Errorf("TaskFinished = {%v, %d, %q}, want {%v, %d, %q}",
					tf.GetOutcome(), tf.GetExitCode(), tf.GetError(), tc.outcome, tc.exitCode, tc.err)
			}
			if got := string(tf.GetStderrTail()); got != "something broke\n" {
				t.Errorf("stderr_tail = %q, want %q", got, "something broke\n")
			}
			if got := string(tf.GetStdoutTail()); got != "to stdout\n" {
				t.Errorf("stdout_tail = %q, want %q", got, "to stdout\n")
			}
			if !tf.GetEndTime().AsTime().After(tf.GetStartTime().AsTime()) {
				t.Errorf("end_time %v is not after start_time %v", tf.GetEndTime().AsTime(), tf.GetStartTime().AsTime())
			}
		})
	}
}

func TestChildSeesArgvEnvAndDir(t *testing.T) {
	t.Parallel()
	b := setup(t)
	cfg := b.config()
	cfg.Env = append(cfg.Env, "TEST_FROM_AGENT=agent", "TEST_OVERRIDDEN=agent")
	b.start(t, cfg)
	s := b.srv.session(t)
	dir := t.TempDir()
	st := b.task(42, "env",
		"TEST_FROM_TASK", "task value with spaces",
		"TEST_OVERRIDDEN", "task",
		"BATON_PARAM_LOAD_DATE", "2026-11-21",
		"BATON_JOB", "the task cannot override this")
	st.Argv = append(st.Argv, "one", "two words", "")
	st.WorkingDir = dir
	st.Attempt = 2
	st.Item = "client-17"
	s.startTask(t, st)
	tf, _ := s.finished(t, 42)
	if tf.GetOutcome() != succeeded {
		t.Fatalf("outcome = %v (%s), want SUCCEEDED; stderr: %s", tf.GetOutcome(), tf.GetError(), tf.GetStderrTail())
	}
	out := tf.GetOutputs()
	outputFile := out["ENV_BATON_OUTPUT"]
	if filepath.Dir(outputFile) != filepath.Join(b.stateDir, "output") {
		t.Errorf("BATON_OUTPUT = %q, want a file in %s", outputFile, filepath.Join(b.stateDir, "output"))
	}
	// Removed before the attempt's last log line.
	b.logs.wait(t, "attempt finished", "attempt_id", "42")
	if _, err := os.Stat(outputFile); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("output file %s still exists after the attempt: %v", outputFile, err)
	}
	want := map[string]string{
		"args":                      `["one","two words",""]`,
		"cwd":                       dir,
		"ENV_BATON_TEST_CHILD":      "env",
		"ENV_TEST_FROM_AGENT":       "agent",
		"ENV_TEST_FROM_TASK":        "task value with spaces",
		"ENV_TEST_OVERRIDDEN":       "task",
		"ENV_BATON_PARAM_LOAD_DATE": "2026-11-21",
		"ENV_BATON_RUN_ID":          "1042",
		"ENV_BATON_JOB":             "nightly-dw-load",
		"ENV_BATON_TASK":            "stage-customers",
		"ENV_BATON_ATTEMPT":         "2",
		"ENV_BATON_ATTEMPT_ID":      "42",
		"ENV_BATON_ITEM":            "client-17",
		"ENV_BATON_OUTPUT":          outputFile,
	}
	if diff := cmp.Diff(want, out); diff != "" {
		t.Errorf("child's argv/env/dir mismatch (-want +got):\n%s", diff)
	}
}

func TestPlainTaskHasEmptyItem(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.start(t, b.config())
	s := b.srv.session(t)
	s.startTask(t, b.task(1, "env"))
	tf, _ := s.finished(t, 1)
	if v, ok := tf.GetOutputs()["ENV_BATON_ITEM"]; !ok || v != "" {
		t.Errorf("BATON_ITEM = %q (set: %v), want set and empty", v, ok)
	}
}

func TestOutputs(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name        string
		behaviour   string
		content     string
		want        map[string]string
		stderrNotes []string
	}{
		{
			name:      "name=value lines",
			behaviour: "outputs",
			content:   "RowCount=42\r\n\n# a comment\nClientIds=[1,2,3]\nEmpty=\nEquals=a=b\nRowCount=43\n",
			want:      map[string]string{"RowCount": "43", "ClientIds": "[1,2,3]", "Empty": "", "Equals": "a=b"},
		},
		{
			name:        "malformed lines are skipped and noted",
			behaviour:   "outputs",
			content:     "good=1\nno equals sign\n=no name\nalso=fine",
			want:        map[string]string{"good": "1", "also": "fine"},
			stderrNotes: []string{"line 2: no '='", "line 3: empty name"},
		},
		{
			name:        "a file over the cap is truncated",
			behaviour:   "big-outputs",
			want:        map[string]string{"first": "1"},
			stderrNotes: []string{"larger than 65536 bytes", "cut by the cap"},
		},
		{
			name:      "no output file content",
			behaviour: "outputs",
			content:   "",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			b.start(t, b.config())
			s := b.srv.session(t)
			s.startTask(t, b.task(5, tc.behaviour, "BATON_TEST_OUTPUTS", tc.content))
			tf, _ := s.finished(t, 5)
			if tf.GetOutcome() != succeeded {
				t.Errorf("outcome = %v (%s), want SUCCEEDED whatever the output file holds", tf.GetOutcome(), tf.GetError())
			}
			if diff := cmp.Diff(tc.want, tf.GetOutputs()); diff != "" {
				t.Errorf("outputs mismatch (-want +got):\n%s", diff)
			}
			for _, note := range tc.stderrNotes {
				if !strings.Contains(string(tf.GetStderrTail()), note) {
					t.Errorf("stderr_tail = %q, want a note containing %q", tf.GetStderrTail(), note)
				}
			}
		})
	}
}

func TestStartFailed(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		modify  func(st *batonv1.StartTask)
		wantErr string
	}{
		{name: "not in PATH", modify: func(st *batonv1.StartTask) { st.Argv = []string{"baton-no-such-command-xyz"} }, wantErr: "executable file not found"},
		// Both inside what the test policy allows, so that the start
		// itself fails.
		{name: "no such file", modify: func(st *batonv1.StartTask) {
			st.Argv = []string{filepath.Join(filepath.Dir(st.Argv[0]), "no-such-baton-binary")}
		}, wantErr: "no such file"},
		{name: "bad working dir", modify: func(st *batonv1.StartTask) {
			st.WorkingDir = filepath.Join(os.TempDir(), "no-such-baton-dir", strconv.FormatInt(st.GetRunId(), 10))
		}, wantErr: "no such file"},
		{name: "empty argv", modify: func(st *batonv1.StartTask) { st.Argv = nil }, wantErr: "start_task.argv is empty"},
		{name: "empty argv[0]", modify: func(st *batonv1.StartTask) { st.Argv = []string{""} }, wantErr: "start_task.argv[0] is empty"},
		{name: "bad env name", modify: func(st *batonv1.StartTask) { st.Env["A=B"] = "x" }, wantErr: `start_task.env: invalid variable name "A=B"`},
		{name: "negative timeout", modify: func(st *batonv1.StartTask) { st.Timeout = durationpb.New(-time.Second) }, wantErr: "start_task.timeout"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			b.start(t, b.config())
			s := b.srv.session(t)
			st := b.task(9, "exit")
			tc.modify(st)
			s.startTask(t, st)
			tf, msgs := s.finished(t, 9)
			if tf.GetOutcome() != startFailed || tf.GetExitCode() != -1 || !strings.Contains(tf.GetError(), tc.wantErr) {
				t.Errorf("TaskFinished = {%v, %d, %q}, want {START_FAILED, -1, ...%q...}",
					tf.GetOutcome(), tf.GetExitCode(), tf.GetError(), tc.wantErr)
			}
			for _, m := range msgs {
				if m.GetTaskStarted() != nil {
					t.Errorf("got TaskStarted %v for a child that never started", m.GetTaskStarted())
				}
			}
		})
	}
}

// markerCount returns how many times the "count" child ran.
func markerCount(t *testing.T, path string) int {
	t.Helper()
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return 0
	}
	if err != nil {
		t.Fatal(err)
	}
	return strings.Count(string(data), "\n")
}

func TestRepeatedStartTask(t *testing.T) {
	t.Parallel()
	b := setup(t)
	marker := filepath.Join(t.TempDir(), "marker")
	release, done := releaseFile(t)
	b.start(t, b.config())
	s := b.srv.session(t)
	st := b.task(11, "count", "BATON_TEST_MARKER", marker, "BATON_TEST_RELEASE", release)
	st.Env["BATON_TEST_CHILD"] = "wait-file"
	s.startTask(t, st)
	s.started(t, 11)

	// Running: the duplicate is ignored.
	s.startTask(t, st)
	b.logs.wait(t, "ignoring repeated start_task", "attempt_id", "11", "state", "running")
	done()
	tf, _ := s.finished(t, 11)
	if tf.GetOutcome() != succeeded {
		t.Fatalf("outcome = %v (%s), want SUCCEEDED", tf.GetOutcome(), tf.GetError())
	}

	// Finished, not acked: the control plane evidently lacks the outcome,
	// so it is sent again and nothing runs.
	s.startTask(t, st)
	again, msgs := s.finished(t, 11)
	if diff := cmp.Diff(tf, again, protocmp.Transform()); diff != "" {
		t.Errorf("repeated outcome differs (-first +again):\n%s", diff)
	}
	for _, m := range msgs {
		if m.GetTaskStarted() != nil {
			t.Errorf("repeated StartTask started the attempt again: %v", m)
		}
	}

	// Acked: ignored.
	s.ack(t, 11)
	s.startTask(t, st)
	b.logs.wait(t, "ignoring repeated start_task", "attempt_id", "11", "state", "acked")

	// A later attempt runs, so the agent has processed the duplicates.
	s.startTask(t, b.task(12, "count", "BATON_TEST_MARKER", marker))
	msgs = s.until(t, "TaskFinished for 12", func(m *batonv1.ConnectRequest) bool {
		return m.GetTaskFinished().GetAttemptId() == 12
	})
	for _, m := range msgs {
		if m.GetTaskStarted().GetAttemptId() == 11 || m.GetTaskFinished().GetAttemptId() == 11 {
			t.Errorf("acked attempt repeated: %v", m)
		}
	}
	if n := markerCount(t, marker); n != 1 {
		t.Errorf("the count child ran %d times, want once (attempt 12; attempt 11 waited for a file)", n)
	}
}

func TestRestartedAgentReportsUnackedAndNeverRestarts(t *testing.T) {
	t.Parallel()
	b := setup(t)
	marker := filepath.Join(t.TempDir(), "marker")
	cfg := b.config()
	cfg.ReportTimeout = 50 * time.Millisecond
	first := b.start(t, cfg)
	s := b.srv.session(t)
	st := b.task(21, "count", "BATON_TEST_MARKER", marker, "BATON_TEST_STDOUT", "done\n")
	s.startTask(t, st)
	tf, _ := s.finished(t, 21)
	// Never acked: the agent stops with the outcome still in its journal.
	first.cancel()
	if err := first.wait(t); err != nil {
		t.Fatalf("Run = %v, want nil", err)
	}
	b.logs.wait(t, "outcomes not acknowledged before shutdown; they are reported after the next start")

	second := b.start(t, cfg)
	s2 := b.srv.session(t)
	if s2.hello.GetBootId() == s.hello.GetBootId() {
		t.Errorf("restarted agent kept boot_id %q, want a new one", s2.hello.GetBootId())
	}
	if diff := cmp.Diff([]*batonv1.TaskFinished{tf}, s2.hello.GetUnacked(), protocmp.Transform()); diff != "" {
		t.Errorf("Hello.unacked after restart mismatch (-want +got):\n%s", diff)
	}
	// Repeated to the new process: the known outcome comes back, nothing
	// runs.
	s2.startTask(t, st)
	again, _ := s2.finished(t, 21)
	if diff := cmp.Diff(tf, again, protocmp.Transform()); diff != "" {
		t.Errorf("repeated outcome differs (-first +again):\n%s", diff)
	}
	s2.ack(t, 21)
	second.cancel()
	if err := second.wait(t); err != nil {
		t.Fatalf("Run = %v, want nil", err)
	}
	if n := markerCount(t, marker); n != 1 {
		t.Errorf("attempt 21 ran %d times, want once", n)
	}

	// Acked: a third agent neither reports nor starts it.
	b.start(t, cfg)
	s3 := b.srv.session(t)
	if len(s3.hello.GetUnacked()) != 0 {
		t.Errorf("Hello.unacked = %v after ack, want none", s3.hello.GetUnacked())
	}
	s3.startTask(t, st)
	b.logs.wait(t, "ignoring repeated start_task", "attempt_id", "21", "state", "acked")
	if n := markerCount(t, marker); n != 1 {
		t.Errorf("attempt 21 ran %d times, want once", n)
	}
}

func TestReconnectResendsUnackedUntilAcked(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.start(t, b.config())
	s1 := b.srv.session(t)
	s1.startTask(t, b.task(31, "exit", "BATON_TEST_EXIT", "3"))
	tf, _ := s1.finished(t, 31)

	s1.hangUp(t, status.Error(codes.Unavailable, "control plane restarting"))
	s2 := b.srv.session(t)
	if s2.hello.GetBootId() != s1.hello.GetBootId() {
		t.Errorf("boot_id changed across a reconnect: %q -> %q", s1.hello.GetBootId(), s2.hello.GetBootId())
	}
	if diff := cmp.Diff([]*batonv1.TaskFinished{tf}, s2.hello.GetUnacked(), protocmp.Transform()); diff != "" {
		t.Errorf("Hello.unacked after reconnect mismatch (-want +got):\n%s", diff)
	}

	s2.ack(t, 31)
	b.logs.wait(t, "outcomes acknowledged")
	s2.hangUp(t, nil) // a clean end of stream is a reconnect too
	s3 := b.srv.session(t)
	if len(s3.hello.GetUnacked()) != 0 {
		t.Errorf("Hello.unacked = %v after ack, want none", s3.hello.GetUnacked())
	}
}

func TestRunningAttemptSurvivesReconnect(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.start(t, b.config())
	s1 := b.srv.session(t)
	s1.startTask(t, b.task(41, "sleep"))
	started := s1.started(t, 41)
	s1.hangUp(t, status.Error(codes.Unavailable, "bye"))

	s2 := b.srv.session(t)
	want := []*batonv1.RunningAttempt{{AttemptId: 41, StartTime: started.GetStartTime()}}
	if diff := cmp.Diff(want, s2.hello.GetRunning(), protocmp.Transform()); diff != "" {
		t.Errorf("Hello.running mismatch (-want +got):\n%s", diff)
	}
	s2.cancelTask(t, &batonv1.CancelTask{AttemptId: 41, Reason: "run cancelled"})
	tf, _ := s2.finished(t, 41)
	if tf.GetOutcome() != cancelled || tf.GetError() != "cancelled (run cancelled): signal: terminated" {
		t.Errorf("TaskFinished = {%v, %q}, want {CANCELLED, cancelled (run cancelled): signal: terminated}", tf.GetOutcome(), tf.GetError())
	}
}

func TestHeartbeat(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.srv.heartbeat = 20 * time.Millisecond
	b.start(t, b.config())
	s := b.srv.session(t)
	s.startTask(t, b.task(51, "sleep"))
	s.started(t, 51)
	msgs := s.until(t, "Heartbeat listing attempt 51", func(m *batonv1.ConnectRequest) bool {
		return cmp.Equal(m.GetHeartbeat().GetRunning(), []int64{51})
	})
	if hb := msgs[len(msgs)-1].GetHeartbeat(); hb.GetDraining() {
		t.Errorf("Heartbeat = %v, want draining false", hb)
	}
	s.drain(t, "maintenance")
	s.until(t, "Heartbeat with draining", func(m *batonv1.ConnectRequest) bool {
		return m.GetHeartbeat().GetDraining()
	})
}

// releaseFile returns a path for the "wait-file" child and a func that
// lets the child exit.
func releaseFile(t *testing.T) (string, func()) {
	path := filepath.Join(t.TempDir(), "release")
	return path, func() {
		if err := os.WriteFile(path, nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

func TestDrainRejectsNewWorkAndLetsChildrenFinish(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name        string
		byCtx       bool // drain by cancelling Run's context instead of a Drain message
		rejectError string
	}{
		{name: "control plane Drain", rejectError: "agent is draining"},
		{name: "Run context done", byCtx: true, rejectError: "agent is draining"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			r := b.start(t, b.config())
			s := b.srv.session(t)
			release, done := releaseFile(t)
			s.startTask(t, b.task(61, "wait-file", "BATON_TEST_RELEASE", release))
			s.started(t, 61)

			if tc.byCtx {
				r.cancel()
			} else {
				s.drain(t, "maintenance")
			}
			b.logs.wait(t, "draining: no new work")
			s.startTask(t, b.task(62, "exit"))
			tf, _ := s.finished(t, 62)
			if tf.GetOutcome() != rejected || tf.GetError() != tc.rejectError {
				t.Errorf("TaskFinished = {%v, %q}, want {REJECTED, %q}", tf.GetOutcome(), tf.GetError(), tc.rejectError)
			}
			s.ack(t, 62)

			done()
			if tf, _ := s.finished(t, 61); tf.GetOutcome() != succeeded {
				t.Errorf("running child's outcome = %v (%s), want SUCCEEDED", tf.GetOutcome(), tf.GetError())
			}
			if !tc.byCtx {
				return
			}
			select {
			case err := <-r.done:
				t.Fatalf("Run returned %v before the outcome was acknowledged", err)
			default:
			}
			s.ack(t, 61)
			if err := r.wait(t); err != nil {
				t.Errorf("Run = %v, want nil", err)
			}
		})
	}
}

func TestSlotsFullRejects(t *testing.T) {
	t.Parallel()
	b := setup(t)
	cfg := b.config()
	cfg.Slots = 1
	b.start(t, cfg)
	s := b.srv.session(t)
	release, done := releaseFile(t)
	s.startTask(t, b.task(71, "wait-file", "BATON_TEST_RELEASE", release))
	s.started(t, 71)

	s.startTask(t, b.task(72, "exit"))
	tf, _ := s.finished(t, 72)
	if tf.GetOutcome() != rejected || tf.GetError() != "all 1 slots are busy" || tf.GetExitCode() != -1 {
		t.Errorf("TaskFinished = {%v, %d, %q}, want {REJECTED, -1, all 1 slots are busy}", tf.GetOutcome(), tf.GetExitCode(), tf.GetError())
	}
	done()
	if tf, _ := s.finished(t, 71); tf.GetOutcome() != succeeded {
		t.Fatalf("outcome = %v (%s), want SUCCEEDED", tf.GetOutcome(), tf.GetError())
	}
	// Nothing ran for a rejected attempt, so it may be placed here again.
	s.startTask(t, b.task(72, "exit"))
	if tf, _ := s.finished(t, 72); tf.GetOutcome() != succeeded {
		t.Errorf("re-sent rejected attempt: outcome = %v (%s), want SUCCEEDED", tf.GetOutcome(), tf.GetError())
	}
}

func TestLogChunks(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.start(t, b.config())
	s := b.srv.session(t)
	const stdoutBytes = logStreamCap + logStreamCap/2
	const stderrBytes = 20000
	s.startTask(t, b.task(81, "flood",
		"BATON_TEST_FLOOD_STDOUT", "1572864",
		"BATON_TEST_FLOOD_STDERR", "20000"))
	tf, msgs := s.finished(t, 81)
	if tf.GetOutcome() != succeeded {
		t.Fatalf("outcome = %v (%s), want SUCCEEDED", tf.GetOutcome(), tf.GetError())
	}
	next := map[batonv1.LogStream]int64{}
	sawStarted := false
	for _, m := range msgs {
		if m.GetTaskStarted() != nil {
			sawStarted = true
		}
		c := m.GetLogChunk()
		if c == nil {
			continue
		}
		if !sawStarted {
			t.Fatalf("LogChunk at offset %d before TaskStarted", c.GetOffset())
		}
		if c.GetOffset() != next[c.GetStream()] {
			t.Fatalf("%v chunk at offset %d, want %d (in order, no gaps)", c.GetStream(), c.GetOffset(), next[c.GetStream()])
		}
		if n := len(c.GetData()); n == 0 || n > logChunkSize {
			t.Fatalf("%v chunk of %d bytes, want 1..%d", c.GetStream(), n, logChunkSize)
		}
		for i, got := range c.GetData() {
			if want := floodPattern(c.GetOffset() + int64(i)); got != want {
				t.Fatalf("%v byte %d = %q, want %q", c.GetStream(), c.GetOffset()+int64(i), got, want)
			}
		}
		next[c.GetStream()] += int64(len(c.GetData()))
	}
	if next[streamStdout] != logStreamCap {
		t.Errorf("streamed %d bytes of stdout, want the %d byte cap", next[streamStdout], logStreamCap)
	}
	if next[streamStderr] != stderrBytes {
		t.Errorf("streamed %d bytes of stderr, want all %d", next[streamStderr], stderrBytes)
	}
	wantTail := make([]byte, logTailSize)
	for i := range wantTail {
		wantTail[i] = floodPattern(stdoutBytes - logTailSize + int64(i))
	}
	if string(tf.GetStdoutTail()) != string(wantTail) {
		t.Errorf("stdout_tail is not the last %d bytes of stdout", logTailSize)
	}
	if len(tf.GetStderrTail()) != logTailSize {
		t.Errorf("stderr_tail has %d bytes, want %d", len(tf.GetStderrTail()), logTailSize)
	}
}

func TestAlreadyExistsIsRetried(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.srv.refuseNext(status.Error(codes.AlreadyExists, "agent test-agent is connected"))
	b.start(t, b.config())
	b.srv.session(t) // refused
	b.logs.wait(t, "another live agent holds this name; retrying in case it is a stale session")
	s := b.srv.session(t)
	s.startTask(t, b.task(91, "exit"))
	if tf, _ := s.finished(t, 91); tf.GetOutcome() != succeeded {
		t.Errorf("outcome = %v (%s), want SUCCEEDED", tf.GetOutcome(), tf.GetError())
	}
}

func TestFatalCodesEndRun(t *testing.T) {
	t.Parallel()
	for _, code := range []codes.Code{codes.Unauthenticated, codes.PermissionDenied, codes.Unimplemented} {
		t.Run(code.String(), func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			b.srv.refuseNext(status.Error(code, "no"))
			r := b.start(t, b.config())
			err := r.wait(t)
			if status.Code(errors.Unwrap(err)) != code {
				t.Errorf("Run = %v, want a %v error", err, code)
			}
		})
	}
}

func TestRunTwice(t *testing.T) {
	t.Parallel()
	b := setup(t)
	r := b.start(t, b.config())
	b.srv.session(t)
	if err := r.Run(t.Context()); err == nil {
		t.Error("second Run = nil, want an error")
	}
}

func TestStateDirIsExclusive(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.start(t, b.config())
	b.srv.session(t)
	if _, err := New(b.config()); err == nil || !strings.Contains(err.Error(), "in use by another agent") {
		t.Errorf("New on a state dir in use = %v, want an in-use error", err)
	}
}

func TestConfigValidation(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		modify  func(*Config)
		wantErr string
	}{
		{name: "no state dir", modify: func(c *Config) { c.StateDir = "" }, wantErr: "StateDir is required"},
		{name: "negative slots", modify: func(c *Config) { c.Slots = -1 }, wantErr: "Slots must be between 1"},
		{name: "empty label key", modify: func(c *Config) { c.Labels = map[string]string{"": "x"} }, wantErr: "Labels has an empty key"},
		{name: "negative kill grace", modify: func(c *Config) { c.KillGrace = -time.Second }, wantErr: "KillGrace must not be negative"},
		{name: "negative report timeout", modify: func(c *Config) { c.ReportTimeout = -time.Second }, wantErr: "ReportTimeout must not be negative"},
		{name: "invalid UTF-8 name", modify: func(c *Config) { c.Name = "\xff" }, wantErr: "Name is not valid UTF-8"},
		{name: "long name", modify: func(c *Config) { c.Name = strings.Repeat("n", 129) }, wantErr: "Name is longer than 128 bytes"},
		{name: "long label", modify: func(c *Config) { c.Labels = map[string]string{"k": strings.Repeat("v", 257)} }, wantErr: "at most 256 bytes"},
		{name: "no policy", modify: func(c *Config) { c.Policy = nil }, wantErr: "config: Policy is required"},
		{name: "missing CA file", modify: func(c *Config) { c.Server.CAFile = "/no/such/ca.pem" }, wantErr: "config: Server: read CA file"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cfg := Config{StateDir: t.TempDir(), Name: "n", Policy: allow.Any()}
			tc.modify(&cfg)
			_, err := New(cfg)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("New() = %v, want an error containing %q", err, tc.wantErr)
			}
		})
	}
}

func TestAttemptRunningAtCrashIsNeverRestarted(t *testing.T) {
	t.Parallel()
	b := setup(t)
	// An earlier agent process recorded attempt 111 and died while its
	// child ran.
	j, err := openJournal(filepath.Join(b.stateDir, "journal"), false, b.logger, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	if err := j.begin(111, time.Now(), ""); err != nil {
		t.Fatal(err)
	}
	if err := j.close(); err != nil {
		t.Fatal(err)
	}

	b.start(t, b.config())
	s := b.srv.session(t)
	if len(s.hello.GetRunning()) != 0 || len(s.hello.GetUnacked()) != 0 {
		t.Errorf("Hello lists running %v, unacked %v; want neither for an attempt whose outcome is unknown",
			s.hello.GetRunning(), s.hello.GetUnacked())
	}
	// The control plane never heard that it started and sends it again:
	// it must not run twice, and the control plane must not wait forever.
	marker := filepath.Join(t.TempDir(), "marker")
	s.startTask(t, b.task(111, "count", "BATON_TEST_MARKER", marker))
	tf, msgs := s.finished(t, 111)
	if tf.GetOutcome() != failed || tf.GetExitCode() != -1 || tf.GetError() != "the agent stopped while the attempt ran; its outcome is unknown" {
		t.Errorf("TaskFinished = {%v, %d, %q}, want {FAILED, -1, the agent stopped while the attempt ran; its outcome is unknown}",
			tf.GetOutcome(), tf.GetExitCode(), tf.GetError())
	}
	for _, m := range msgs {
		if m.GetTaskStarted() != nil {
			t.Errorf("the attempt started again: %v", m)
		}
	}
	if n := markerCount(t, marker); n != 0 {
		t.Errorf("the child ran %d times, want never", n)
	}
	s.ack(t, 111)
	s.startTask(t, b.task(111, "count", "BATON_TEST_MARKER", marker))
	b.logs.wait(t, "ignoring repeated start_task", "attempt_id", "111", "state", "acked")
}

func TestUnackedBeyondHelloBudgetFollowAsMessages(t *testing.T) {
	t.Parallel()
	b := setup(t)
	j, err := openJournal(filepath.Join(b.stateDir, "journal"), false, b.logger, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	const n = 24 // about 64 KiB each: well over the Hello budget
	for id := int64(1); id <= n; id++ {
		if err := j.begin(id, time.Now(), ""); err != nil {
			t.Fatal(err)
		}
		tf := outcome(id, succeeded)
		tf.Outputs = map[string]string{"big": strings.Repeat("x", 60<<10)}
		if err := j.finish(tf); err != nil {
			t.Fatal(err)
		}
	}
	if err := j.close(); err != nil {
		t.Fatal(err)
	}

	b.start(t, b.config())
	s := b.srv.session(t)
	if size := proto.Size(s.hello); size > helloBudget+(100<<10) {
		t.Errorf("Hello is %d bytes, want about %d at most", size, helloBudget)
	}
	got := map[int64]bool{}
	for _, tf := range s.hello.GetUnacked() {
		got[tf.GetAttemptId()] = true
	}
	inHello := len(got)
	if inHello == 0 || inHello == n {
		t.Fatalf("Hello lists %d of %d outcomes, want some but not all", inHello, n)
	}
	for len(got) < n {
		tf := s.next(t).GetTaskFinished()
		if tf == nil {
			continue
		}
		if got[tf.GetAttemptId()] {
			t.Errorf("attempt %d reported twice", tf.GetAttemptId())
		}
		got[tf.GetAttemptId()] = true
	}
}

// TestReceiveLoopDoesNotWaitForTheJournal holds the journal's writes: an
// Ack, and the messages after it, are still handled at once.
func TestReceiveLoopDoesNotWaitForTheJournal(t *testing.T) {
	t.Parallel()
	b := setup(t)
	release, done := releaseFile(t)
	a := b.start(t, b.config())
	s := b.srv.session(t)
	s.startTask(t, b.task(1, "wait-file", "BATON_TEST_RELEASE", release))
	s.started(t, 1)
	s.startTask(t, b.task(2, "exit"))
	s.finished(t, 2)

	entered := make(chan struct{})
	unblock := make(chan struct{})
	var once sync.Once
	a.journal.rlog.SetWriteHook(func(int) error {
		once.Do(func() {
			close(entered)
			<-unblock
		})
		return nil
	})
	s.startTask(t, b.task(3, "exit")) // its begin is held
	select {
	case <-entered:
	case <-time.After(waitTimeout):
		t.Fatal("the journal write of attempt 3 did not start")
	}
	s.ack(t, 2)
	s.startTask(t, b.task(1, "wait-file", "BATON_TEST_RELEASE", release))
	b.logs.wait(t, "ignoring repeated start_task", "attempt_id", "1", "state", "running")
	if state, _, _ := a.journal.lookup(2); state != stateAcked {
		t.Errorf("attempt 2 is %q while the journal is held, want acked", state)
	}
	close(unblock)
	done()
	outcomes := map[int64]batonv1.AttemptOutcome{}
	s.until(t, "TaskFinished of attempts 1 and 3", func(m *batonv1.ConnectRequest) bool {
		if tf := m.GetTaskFinished(); tf != nil {
			outcomes[tf.GetAttemptId()] = tf.GetOutcome()
		}
		return len(outcomes) == 2
	})
	if want := map[int64]batonv1.AttemptOutcome{1: succeeded, 3: succeeded}; !cmp.Equal(want, outcomes) {
		t.Errorf("outcomes = %v, want %v", outcomes, want)
	}
}
