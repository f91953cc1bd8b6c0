package runner

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/batonhq/baton/agent/internal/crashpoint"
	"github.com/batonhq/baton/agent/process"
)

// waitTimeout bounds every wait in these tests.
const waitTimeout = 20 * time.Second

// captured is a Sink that keeps what it receives.
type captured struct {
	mu     sync.Mutex
	chunks map[Stream][]string
	offs   map[Stream][]int64
}

func (c *captured) Output(stream Stream, offset int64, data []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.chunks == nil {
		c.chunks, c.offs = map[Stream][]string{}, map[Stream][]int64{}
	}
	c.chunks[stream] = append(c.chunks[stream], string(data))
	c.offs[stream] = append(c.offs[stream], offset)
}

func (c *captured) text(stream Stream) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return strings.Join(c.chunks[stream], "")
}

type testBundle struct {
	stateDir string
	exe      string
	attached chan *Attachment
	env      []string // the runner's environment; nil is the test's
}

func setup(t *testing.T) *testBundle {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return &testBundle{stateDir: t.TempDir(), exe: exe, attached: make(chan *Attachment, 8)}
}

// open opens a client that starts the test binary as its runner.
func (b *testBundle) open(t *testing.T) *Client {
	t.Helper()
	env := b.env
	if env == nil {
		env = append(os.Environ(), "GORACE=atexit_sleep_ms=0")
	}
	c, err := Open(t.Context(), ClientConfig{
		StateDir: b.stateDir,
		Command:  []string{b.exe, "runner"},
		Env:      env,
		IdleExit: 100 * time.Millisecond,
		Attached: func(_ *Client, at *Attachment) { b.attached <- at },
	})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(c.Close)
	return c
}

// attachment returns what the last attach reported.
func (b *testBundle) attachment(t *testing.T) *Attachment {
	t.Helper()
	select {
	case at := <-b.attached:
		return at
	case <-time.After(waitTimeout):
		t.Fatal("no attach within the timeout")
		return nil
	}
}

// runnerPid returns the pid of the process holding the runner's lock.
func (b *testBundle) runnerPid(t *testing.T) int {
	t.Helper()
	f, err := os.Open(filepath.Join(versionDir(b.stateDir, ProtocolVersion), lockName))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = f.Close() }() // opened only to test the lock
	lk := syscall.Flock_t{Type: syscall.F_WRLCK}
	if err := syscall.FcntlFlock(f.Fd(), syscall.F_GETLK, &lk); err != nil {
		t.Fatal(err)
	}
	if lk.Type == syscall.F_UNLCK {
		t.Fatal("no runner holds the lock")
	}
	return int(lk.Pid)
}

// result waits for p's outcome.
func result(t *testing.T, p *Proc) Result {
	t.Helper()
	select {
	case <-p.Done():
		return p.Result()
	case <-time.After(waitTimeout):
		t.Fatalf("attempt %d not done within %s", p.ID(), waitTimeout)
		return Result{}
	}
}

// waitGone waits until pid has exited (a zombie counts as gone).
func waitGone(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		if _, err := procStart(pid); err != nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("process %d still alive after %s", pid, waitTimeout)
		}
		time.Sleep(10 * time.Millisecond) // polling a condition, not synchronising
	}
}

func shell(id int64, script string) *StartRequest {
	return &StartRequest{ID: id, Argv: []string{"/bin/sh", "-c", script}, Env: []string{"PATH=/usr/bin:/bin"}, Dir: "/", Grace: time.Second}
}

func TestChildLifecycleAcrossClients(t *testing.T) {
	t.Parallel()
	b := setup(t)
	c := b.open(t)
	if at := b.attachment(t); len(at.Running)+len(at.Exited)+len(at.Orphaned) != 0 {
		t.Errorf("a fresh runner holds %+v, want nothing", at)
	}
	out := &captured{}
	p, err := c.Start(t.Context(), shell(1, "echo out; echo err >&2; exit 3"), out)
	if err != nil {
		t.Fatal(err)
	}
	res := result(t, p)
	if res.ExitCode != 3 || res.Err != "exit status 3" || string(res.StdoutTail) != "out\n" ||
		string(res.StderrTail) != "err\n" || res.StdoutBytes != 4 || res.Lost != "" {
		t.Errorf("Result = %+v, want exit 3 with the tails", res)
	}
	if got := out.text(Stdout); got != "out\n" {
		t.Errorf("stdout forwarded = %q, want %q", got, "out\n")
	}
	sleeper, err := c.Start(t.Context(), shell(2, "exec sleep 60"), &captured{})
	if err != nil {
		t.Fatal(err)
	}
	pid := sleeper.Pid()
	runner := b.runnerPid(t)
	c.Close() // without confirming attempt 1

	c2 := b.open(t)
	at := b.attachment(t)
	if len(at.Exited) != 1 || at.Exited[0].ID != 1 || at.Exited[0].ExitCode != 3 {
		t.Errorf("Attachment.Exited = %+v, want attempt 1's exit", at.Exited)
	}
	if len(at.Running) != 1 || at.Running[0].ID() != 2 || at.Running[0].Pid() != pid {
		t.Fatalf("Attachment.Running = %+v, want attempt 2 with pid %d", at.Running, pid)
	}
	if got := b.runnerPid(t); got != runner {
		t.Errorf("runner pid = %d, want the same runner %d", got, runner)
	}
	c2.Confirm(1)
	adopted := at.Running[0]
	if err := adopted.Kill("stopped by the test"); err != nil {
		t.Fatal(err)
	}
	res = result(t, adopted)
	if res.ExitCode != -1 || res.Err != "signal: killed" || res.Reason != "stopped by the test" {
		t.Errorf("Result = {%d, %q, reason %q}, want {-1, signal: killed, stopped by the test}", res.ExitCode, res.Err, res.Reason)
	}
	c2.Confirm(2)
	c2.Close()
	waitGone(t, runner)
	recs, err := Recorded(b.stateDir, ProtocolVersion)
	if len(recs) != 0 || err != nil {
		t.Errorf("records left after confirming: %v %v", recs, err)
	}
}

func TestTimeoutAndStartErrors(t *testing.T) {
	t.Parallel()
	b := setup(t)
	c := b.open(t)
	req := shell(1, "exec sleep 60")
	req.Timeout, req.Grace = 100*time.Millisecond, 50*time.Millisecond
	p, err := c.Start(t.Context(), req, &captured{})
	if err != nil {
		t.Fatal(err)
	}
	if res := result(t, p); !res.TimedOut || res.Err != "signal: terminated" || res.Timeout != req.Timeout {
		t.Errorf("Result = %+v, want timed out after %s by SIGTERM", res, req.Timeout)
	}
	if _, err := c.Start(t.Context(), &StartRequest{ID: 2, Argv: []string{"/no/such/binary"}}, &captured{}); err == nil ||
		!strings.Contains(err.Error(), "no such file") {
		t.Errorf("Start of a missing binary = %v, want a start error", err)
	}
	if _, err := c.Start(t.Context(), &StartRequest{ID: 3}, &captured{}); err == nil || !strings.Contains(err.Error(), "argv is empty") {
		t.Errorf("Start without argv = %v, want an argv error", err)
	}
	if _, err := c.Start(t.Context(), shell(1, "true"), &captured{}); err == nil || !strings.Contains(err.Error(), "already known") {
		t.Errorf("second Start of attempt 1 = %v, want a refusal", err)
	}
	c.Confirm(1) // so that the runner exits once idle
}

func TestKilledRunnerLosesAndKillsChildren(t *testing.T) {
	t.Parallel()
	b := setup(t)
	c := b.open(t)
	b.attachment(t)
	p, err := c.Start(t.Context(), shell(1, "exec sleep 60"), &captured{})
	if err != nil {
		t.Fatal(err)
	}
	child, runner := p.Pid(), b.runnerPid(t)
	if err := syscall.Kill(runner, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if res := result(t, p); res.Lost != LostRunnerKilled {
		t.Errorf("Result.Lost = %q, want %q", res.Lost, LostRunnerKilled)
	}
	waitGone(t, child)
	b.attachment(t) // the new runner
	c.Confirm(1)    // the orphan's record
	if got := b.runnerPid(t); got == runner {
		t.Errorf("runner pid %d is the killed one", got)
	}
	p2, err := c.Start(t.Context(), shell(2, "true"), &captured{})
	if err != nil {
		t.Fatalf("Start after the runner died = %v, want nil", err)
	}
	if res := result(t, p2); res.ExitCode != 0 || res.Lost != "" {
		t.Errorf("Result after the runner died = %+v, want exit 0", res)
	}
	c.Confirm(2)
}

func TestSecondRunnerIsBusy(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.open(t)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = r.Close() }() // read only
	cmd := exec.Command(b.exe, "runner", "--state-dir", b.stateDir, "--detached")
	cmd.Env = append(os.Environ(), "GORACE=atexit_sleep_ms=0")
	cmd.ExtraFiles = []*os.File{w}
	err = cmd.Start()
	_ = w.Close() // the runner has its own copy; closing ours lets ReadAll see its end
	if err != nil {
		t.Fatal(err)
	}
	msg, _ := io.ReadAll(r)
	if err := cmd.Wait(); err != nil {
		t.Errorf("busy runner exited with %v, want 0", err)
	}
	if got := strings.TrimSpace(string(msg)); got != "busy" {
		t.Errorf("second runner reported %q, want busy", got)
	}
}

func TestRunnerRefusesOtherVersions(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.open(t)
	nc, err := net.Dial("unix", filepath.Join(versionDir(b.stateDir, ProtocolVersion), sockName))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = nc.Close() }() // a failed write or read fails the test first
	hi, err := encodeJSON(&frame{Hello: &hello{Version: ProtocolVersion + 1}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := nc.Write(hi); err != nil {
		t.Fatal(err)
	}
	_ = nc.SetDeadline(time.Now().Add(waitTimeout))
	_, body, err := readFrame(bufio.NewReader(nc))
	if err != nil {
		t.Fatal(err)
	}
	f, err := decodeJSON(body)
	if err != nil || !strings.Contains(f.Error, "protocol version mismatch") {
		t.Errorf("answer to another version = %+v, %v; want a version mismatch error", f, err)
	}
}

func TestLongStateDirUsesATempSocket(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.stateDir = filepath.Join(b.stateDir, strings.Repeat("d", 60), strings.Repeat("e", 60))
	c := b.open(t)
	b.attachment(t)
	sockDir, err := os.ReadFile(filepath.Join(versionDir(b.stateDir, ProtocolVersion), sockDirName))
	if err != nil {
		t.Fatalf("no socket dir recorded for a long state dir: %v", err)
	}
	p, err := c.Start(t.Context(), shell(1, "echo hi"), &captured{})
	if err != nil {
		t.Fatal(err)
	}
	if res := result(t, p); res.ExitCode != 0 || string(res.StdoutTail) != "hi\n" {
		t.Errorf("Result = %+v, want exit 0 with hi", res)
	}
	c.Confirm(1)
	runner := b.runnerPid(t)
	c.Close()
	waitGone(t, runner)
	if _, err := os.Stat(string(sockDir)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket dir %s left behind: %v", sockDir, err)
	}
}

func TestKillTreeChecksIdentity(t *testing.T) {
	t.Parallel()
	p, err := process.Start(process.Spec{Argv: []string{"/bin/sleep", "60"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Kill(); <-p.Done() })
	st, err := procStart(p.Pid())
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		start uint64
		boot  string
	}{
		{"another start time (a reused pid)", st + 1, bootID()},
		{"another boot", st, "not-this-boot"},
		{"unknown start time", 0, bootID()},
	} {
		if killed, err := killTree(p.Pid(), tc.start, tc.boot); killed || err != nil {
			t.Errorf("killTree with %s = %v, %v; want false, nil", tc.name, killed, err)
		}
	}
	select {
	case <-p.Done():
		t.Fatal("the child was killed without a matching identity")
	default:
	}
	if killed, err := killTree(p.Pid(), st, bootID()); !killed || err != nil {
		t.Errorf("killTree with the child's identity = %v, %v; want true, nil", killed, err)
	}
	select {
	case <-p.Done():
		if got := p.Result().Err; got == nil || got.Error() != "signal: killed" {
			t.Errorf("child ended with %v, want signal: killed", got)
		}
	case <-time.After(waitTimeout):
		t.Fatal("the child was not killed")
	}
}

func TestMainUsage(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		args    []string
		wantErr string
	}{
		{name: "no state dir", args: nil, wantErr: "--state-dir must be an absolute path"},
		{name: "relative state dir", args: []string{"--state-dir", "state"}, wantErr: "--state-dir must be an absolute path"},
		{name: "bad idle", args: []string{"--state-dir", "/s", "--idle-exit", "0s"}, wantErr: "--idle-exit must be positive"},
		{name: "extra argument", args: []string{"--state-dir", "/s", "extra"}, wantErr: `unexpected argument "extra"`},
		{name: "unknown flag", args: []string{"--bogus"}, wantErr: "flag provided but not defined"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var stderr bytes.Buffer
			if code := Main(tc.args, &stderr); code != 2 || !strings.Contains(stderr.String(), tc.wantErr) {
				t.Errorf("Main(%q) = %d, %q; want 2 and %q", tc.args, code, stderr.String(), tc.wantErr)
			}
		})
	}
}

func TestOpenValidates(t *testing.T) {
	t.Parallel()
	for _, cfg := range []ClientConfig{
		{Command: []string{"x"}},
		{StateDir: t.TempDir()},
		{StateDir: t.TempDir(), Command: []string{"x"}, ProtocolVersion: -1},
	} {
		if _, err := Open(context.Background(), cfg); err == nil {
			t.Errorf("Open(%+v) = nil error, want one", cfg)
		}
	}
}

// TestChildEnvironment checks that a child gets exactly the environment
// asked for, whether the start sends only what follows the runner's own
// environment (a runner started with the client's) or all of it (a
// runner started by a client with another environment).
func TestChildEnvironment(t *testing.T) {
	t.Parallel()
	envPath, err := exec.LookPath("env")
	if err != nil {
		t.Skip("no env command")
	}
	b := setup(t)
	// A name given twice: the runner gets the last one only.
	b.env = append(os.Environ(), "GORACE=atexit_sleep_ms=0", "TEST_BASE=zero", "TEST_BASE=first")
	run := func(t *testing.T, c *Client, id int64, env []string) (sentBase bool) {
		t.Helper()
		req := &StartRequest{ID: id, Path: envPath, Argv: []string{"env"}, Env: env, Dir: "/"}
		c.mu.Lock()
		sentBase = c.startMsg(req, c.conn).EnvBase
		c.mu.Unlock()
		out := &captured{}
		p, err := c.Start(t.Context(), req, out)
		if err != nil {
			t.Fatal(err)
		}
		if res := result(t, p); res.ExitCode != 0 {
			t.Fatalf("env exited %d: %s", res.ExitCode, res.Err)
		}
		got := strings.Split(strings.TrimSuffix(out.text(Stdout), "\n"), "\n")
		if diff := cmp.Diff(dedupEnv(env), got); diff != "" {
			t.Errorf("child environment mismatch (-want +got):\n%s", diff)
		}
		c.Confirm(id)
		return sentBase
	}

	c := b.open(t)
	b.attachment(t)
	if !run(t, c, 1, append(slices.Clip(b.env), "TEST_TASK=one")) {
		t.Error("a start on the runner this client started sent the whole environment, want only the rest")
	}
	if run(t, c, 2, []string{"ONLY=this"}) {
		t.Error("a start whose environment does not begin with the base sent only a part")
	}
	// Kept busy, the runner is still there for a client with another
	// environment.
	sleeper, err := c.Start(t.Context(), shell(3, "exec sleep 60"), &captured{})
	if err != nil {
		t.Fatal(err)
	}
	runner := b.runnerPid(t)
	c.Close()
	b.env = append(slices.Clip(b.env), "TEST_OTHER=second")
	c2 := b.open(t)
	at := b.attachment(t)
	if got := b.runnerPid(t); got != runner {
		t.Fatalf("runner pid %d, want the same runner %d", got, runner)
	}
	if run(t, c2, 4, append(slices.Clip(b.env), "TEST_TASK=four")) {
		t.Error("a start on a runner with another environment sent only a part")
	}
	if len(at.Running) != 1 || at.Running[0].ID() != sleeper.ID() {
		t.Fatalf("Attachment.Running = %+v, want the sleeper", at.Running)
	}
	if err := at.Running[0].Kill(""); err != nil {
		t.Fatal(err)
	}
	result(t, at.Running[0])
	c2.Confirm(3)
}

// waitFile waits until path exists.
func waitFile(t *testing.T, path string) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		if _, err := os.Stat(path); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not created within %s", path, waitTimeout)
		}
		time.Sleep(10 * time.Millisecond) // polling a condition, not synchronising
	}
}

// replaceAgent attaches a bare connection to the runner, as another agent
// process would, which replaces the client's, and closes it.
func replaceAgent(t *testing.T, c *Client) {
	t.Helper()
	path, err := c.sockPath()
	if err != nil {
		t.Fatal(err)
	}
	nc, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = nc.Close() }() // a failed write or read fails the test first
	hi, err := encodeJSON(&frame{Hello: &hello{Version: ProtocolVersion}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := nc.Write(hi); err != nil {
		t.Fatal(err)
	}
	_ = nc.SetReadDeadline(time.Now().Add(waitTimeout))
	kind, body, err := readFrame(bufio.NewReader(nc))
	if err != nil || kind != kindJSON {
		t.Fatalf("welcome: kind %q, %v", kind, err)
	}
	f, err := decodeJSON(body)
	if err != nil || f.Welcome == nil || f.Welcome.Instance == "" {
		t.Fatalf("welcome = %+v, %v; want a runner's welcome", f, err)
	}
}

// TestStartOfAReplacedConnectionNeverRuns holds the runner after it read a
// start request and before it took it over, while another connection
// replaces the client's: the client, attached again to the same runner,
// finds the attempt unlisted and reports it unavailable (nothing ran), and
// the runner drops the request when it goes on. The attempt then starts
// once.
func TestStartOfAReplacedConnectionNeverRuns(t *testing.T) {
	t.Parallel()
	b := setup(t)
	hold := holdSpec{Point: crashpoint.RunnerReceived, ID: 1, Dir: t.TempDir()}
	b.env = append(os.Environ(), "GORACE=atexit_sleep_ms=0", hold.env(t))
	c := b.open(t)
	first := b.attachment(t)
	if first.Instance == "" || c.Instance() != first.Instance {
		t.Fatalf("Attachment.Instance = %q, Client.Instance = %q; want the same runner identity", first.Instance, c.Instance())
	}
	marker := filepath.Join(t.TempDir(), "ran")
	req := shell(1, "echo ran >> "+marker)
	started := make(chan error, 1)
	go func() {
		_, err := c.Start(t.Context(), req, &captured{})
		started <- err
	}()
	waitFile(t, filepath.Join(hold.Dir, "held"))
	replaceAgent(t, c)

	// The client attaches again; the runner is the same and does not list
	// the attempt.
	if again := b.attachment(t); again.Instance != first.Instance || len(again.Running) != 0 {
		t.Errorf("second Attachment = {instance %q, running %d}, want {%q, 0}", again.Instance, len(again.Running), first.Instance)
	}
	select {
	case err := <-started:
		if !errors.Is(err, ErrUnavailable) {
			t.Errorf("Start while its connection was replaced = %v, want ErrUnavailable", err)
		}
	case <-time.After(waitTimeout):
		t.Fatal("Start did not return")
	}
	hold.release(t)
	logPath := filepath.Join(versionDir(b.stateDir, ProtocolVersion), logName)
	deadline := time.Now().Add(waitTimeout)
	for {
		data, _ := os.ReadFile(logPath)
		if bytes.Contains(data, []byte("dropping a start request of a replaced agent connection")) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the runner did not drop the request within %s:\n%s", waitTimeout, data)
		}
		time.Sleep(10 * time.Millisecond) // polling a condition, not synchronising
	}

	p, err := c.Start(t.Context(), req, &captured{})
	if err != nil {
		t.Fatalf("Start after the dropped request = %v, want nil", err)
	}
	if res := result(t, p); res.ExitCode != 0 {
		t.Errorf("Result = %+v, want exit 0", res)
	}
	c.Confirm(1)
	data, err := os.ReadFile(marker)
	if err != nil || string(data) != "ran\n" {
		t.Errorf("the child ran %q (%v), want once", data, err)
	}
}

// TestStartBeingForkedIsListed holds the runner after it took a start
// request over and before it forked the child, while another connection
// replaces the client's: the client, attached again, finds the attempt
// listed as running and learns its pid and exit.
func TestStartBeingForkedIsListed(t *testing.T) {
	t.Parallel()
	b := setup(t)
	hold := holdSpec{Point: crashpoint.RunnerForking, ID: 1, Dir: t.TempDir()}
	b.env = append(os.Environ(), "GORACE=atexit_sleep_ms=0", hold.env(t))
	c := b.open(t)
	b.attachment(t)
	type startResult struct {
		p   *Proc
		err error
	}
	started := make(chan startResult, 1)
	go func() {
		p, err := c.Start(t.Context(), shell(1, "echo out; exit 4"), &captured{})
		started <- startResult{p, err}
	}()
	waitFile(t, filepath.Join(hold.Dir, "held"))
	replaceAgent(t, c)
	// The client's own child, still being started, is not adopted again.
	if again := b.attachment(t); len(again.Running) != 0 {
		t.Errorf("second Attachment.Running = %d children, want none: the client has a Proc for it", len(again.Running))
	}
	hold.release(t)
	var sr startResult
	select {
	case sr = <-started:
	case <-time.After(waitTimeout):
		t.Fatal("Start did not return")
	}
	if sr.err != nil {
		t.Fatalf("Start = %v, want the child started", sr.err)
	}
	if res := result(t, sr.p); res.ExitCode != 4 || string(res.StdoutTail) != "out\n" || res.Lost != "" {
		t.Errorf("Result = %+v, want exit 4 with stdout tail %q", res, "out\n")
	}
	c.Confirm(1)
}

// TestCleanExitIsRecorded lets a runner exit on its own: the next
// attachment names it as CleanExit, and a start meant for it is not sent
// to its successor.
func TestCleanExitIsRecorded(t *testing.T) {
	t.Parallel()
	b := setup(t)
	c := b.open(t)
	first := b.attachment(t)
	if first.CleanExit != "" {
		t.Errorf("CleanExit of a fresh state dir = %q, want none", first.CleanExit)
	}
	pid := b.runnerPid(t)
	c.Close()
	waitGone(t, pid)

	c2 := b.open(t)
	second := b.attachment(t)
	if second.CleanExit != first.Instance || second.Instance == first.Instance || second.Instance == "" {
		t.Errorf("second attachment: instance %q, clean exit %q; want a new instance and clean exit %q",
			second.Instance, second.CleanExit, first.Instance)
	}
	req := shell(1, "true")
	req.Instance = first.Instance
	if _, err := c2.Start(t.Context(), req, &captured{}); !errors.Is(err, ErrUnavailable) {
		t.Errorf("Start for the runner that exited = %v, want ErrUnavailable", err)
	}
	req.Instance = second.Instance
	p, err := c2.Start(t.Context(), req, &captured{})
	if err != nil {
		t.Fatalf("Start for the attached runner = %v, want nil", err)
	}
	if res := result(t, p); res.ExitCode != 0 {
		t.Errorf("Result = %+v, want exit 0", res)
	}
	c2.Confirm(1)
}

// TestLeaseExpiryStopsTheChild runs children with leases side by side: the
// one whose lease is never renewed is stopped once it has passed (SIGKILL
// after the grace, as it ignores SIGTERM) and its exit record says so;
// those renewed past their first lease, once for long or again and again
// for short, and the one without a lease keep running.
func TestLeaseExpiryStopsTheChild(t *testing.T) {
	t.Parallel()
	b := setup(t)
	c := b.open(t)
	b.attachment(t)
	start := func(id int64, script string, lease time.Duration) *Proc {
		t.Helper()
		req := shell(id, script)
		req.Lease, req.LeaseTerm = lease, lease
		p, err := c.Start(t.Context(), req, &captured{})
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	const first = 300 * time.Millisecond
	renewedOnce := start(1, "exec sleep 60", first)
	c.Renew([]int64{1}, time.Now().Add(time.Hour), time.Hour)
	c.Renew([]int64{1}, time.Now().Add(time.Millisecond), time.Millisecond) // never shortens
	renewedOften := start(2, "exec sleep 60", first)
	stopRenewing := make(chan struct{})
	renewing := make(chan struct{})
	go func() {
		defer close(renewing)
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-tick.C:
				c.Renew([]int64{2, 99}, time.Now().Add(time.Second), time.Second) // 99 is unknown: ignored
			case <-stopRenewing:
				return
			}
		}
	}()
	noLease := start(3, "exec sleep 60", 0)
	// Started last with a longer lease: when it expires the others'
	// first leases have passed.
	started := time.Now()
	fenced := start(4, `trap "" TERM; echo before; exec sleep 60`, 3*first)

	res := result(t, fenced)
	close(stopRenewing)
	<-renewing
	if elapsed := time.Since(started); elapsed < 3*first {
		t.Errorf("the child was stopped %s after it started, before its lease of %s ended", elapsed, 3*first)
	}
	if !res.LeaseExpired || res.LeaseExpiredAt.IsZero() || res.LeaseTerm != 3*first || res.Err != "signal: killed" ||
		res.TimedOut || string(res.StdoutTail) != "before\n" {
		t.Errorf("Result = %+v, want lease expired (term %s), killed after the grace, stdout tail kept", res, 3*first)
	}
	for _, p := range []*Proc{renewedOnce, renewedOften, noLease} {
		select {
		case <-p.Done():
			t.Errorf("attempt %d ended (%+v), want it running", p.ID(), p.Result())
			continue
		default:
		}
		if err := p.Kill("stopped by the test"); err != nil {
			t.Fatal(err)
		}
		if res := result(t, p); res.LeaseExpired || res.Reason != "stopped by the test" {
			t.Errorf("attempt %d: Result = %+v, want stopped by the test, lease not expired", p.ID(), res)
		}
	}
	for id := int64(1); id <= 4; id++ {
		c.Confirm(id)
	}
}

// TestLeaseHoldsWhileNoAgentIsAttached lets a child's lease run out while
// no agent is attached: the runner alone stops it, and the next agent
// learns from the exit record that its lease expired. A start whose lease
// has already ended starts nothing.
func TestLeaseHoldsWhileNoAgentIsAttached(t *testing.T) {
	t.Parallel()
	b := setup(t)
	c := b.open(t)
	b.attachment(t)
	req := shell(1, "exec sleep 60")
	req.LeaseUntil, req.LeaseTerm = time.Now().Add(-time.Millisecond), 30*time.Second
	if _, err := c.Start(t.Context(), req, &captured{}); !errors.Is(err, ErrLeaseExpired) {
		t.Fatalf("Start with a lease that ended = %v, want ErrLeaseExpired", err)
	}
	req.LeaseUntil = time.Now().Add(300 * time.Millisecond)
	p, err := c.Start(t.Context(), req, &captured{})
	if err != nil {
		t.Fatal(err)
	}
	pid := p.Pid()
	c.Close()
	waitGone(t, pid)

	c2 := b.open(t)
	at := b.attachment(t)
	var res Result
	switch {
	case len(at.Exited) == 1:
		res = Result{Record: *at.Exited[0]}
	case len(at.Running) == 1: // attached before the runner reaped it
		res = result(t, at.Running[0])
	default:
		t.Fatalf("Attachment = %+v, want attempt 1", at)
	}
	if !res.LeaseExpired || res.LeaseTerm != 30*time.Second || res.Err != "signal: terminated" {
		t.Errorf("Result = %+v, want lease expired (term 30s), terminated", res)
	}
	c2.Confirm(1)
}

// TestStartReadAfterItsLeaseIsRefused holds the runner after it read a
// start request until the request's lease has ended, as a runner that was
// stopped or starved would be: the runner takes the delay off the lease,
// so nothing starts and Start says why.
func TestStartReadAfterItsLeaseIsRefused(t *testing.T) {
	t.Parallel()
	b := setup(t)
	hold := holdSpec{Point: crashpoint.RunnerReceived, ID: 1, Dir: t.TempDir()}
	b.env = append(os.Environ(), "GORACE=atexit_sleep_ms=0", hold.env(t))
	c := b.open(t)
	b.attachment(t)
	marker := filepath.Join(t.TempDir(), "ran")
	req := shell(1, "echo ran >> "+marker)
	req.LeaseUntil, req.LeaseTerm = time.Now().Add(500*time.Millisecond), time.Second
	started := make(chan error, 1)
	go func() {
		_, err := c.Start(t.Context(), req, &captured{})
		started <- err
	}()
	waitFile(t, filepath.Join(hold.Dir, "held"))
	for time.Now().Before(req.LeaseUntil.Add(10 * time.Millisecond)) {
		time.Sleep(10 * time.Millisecond) // waiting for the lease to end, the condition under test
	}
	hold.release(t)
	select {
	case err := <-started:
		if !errors.Is(err, ErrLeaseExpired) {
			t.Errorf("Start read after its lease ended = %v, want ErrLeaseExpired", err)
		}
	case <-time.After(waitTimeout):
		t.Fatal("Start did not return")
	}
	if _, err := os.Stat(marker); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the child ran (%v), want never", err)
	}
}
