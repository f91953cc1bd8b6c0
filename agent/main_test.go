package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/batonhq/baton/agent/allow"
	"github.com/batonhq/baton/agent/internal/crashpoint"
	"github.com/batonhq/baton/agent/runner"
	"github.com/batonhq/baton/client"
	batonv1 "github.com/batonhq/baton/gen/baton/v1"
)

// The test binary doubles as the child process: with BATON_TEST_CHILD set
// (the tests put it in StartTask.env), TestMain runs the named behaviour
// instead of the tests, like buildkite's internal/process/main_test.go.
// Started with the argument "runner" it is the agents' runner, as
// baton-agent is.
//
// An agent or runner process of a test stops at a crash point when
// BATON_TEST_CRASH says so (installCrashHook).
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == "runner" {
		installCrashHook()
		os.Exit(runner.Main(os.Args[2:], os.Stderr))
	}
	if b := os.Getenv("BATON_TEST_CHILD"); b != "" {
		os.Exit(child(b))
	}
	if spec := os.Getenv("BATON_TEST_AGENT"); spec != "" {
		installCrashHook()
		os.Exit(agentMain(spec))
	}
	goleak.VerifyTestMain(m)
}

// crashEnv names the variable holding a crashSpec in JSON.
const crashEnv = "BATON_TEST_CRASH"

// crashSpec stops a process of the test binary (an agent or a runner)
// when attempt ID reaches crash point Point: it kills itself with SIGKILL
// there or, with HoldDir, creates HoldDir/held and waits until
// HoldDir/release exists.
type crashSpec struct {
	Point   string
	ID      int64
	HoldDir string
}

// env returns the environment entry that passes spec on.
func (spec crashSpec) env(t testing.TB) string {
	t.Helper()
	b, err := json.Marshal(spec)
	if err != nil {
		t.Fatal(err)
	}
	return crashEnv + "=" + string(b)
}

// installCrashHook installs the crash hook BATON_TEST_CRASH describes, if
// any.
func installCrashHook() {
	v := os.Getenv(crashEnv)
	if v == "" {
		return
	}
	var spec crashSpec
	if err := json.Unmarshal([]byte(v), &spec); err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", crashEnv, err)
		os.Exit(2)
	}
	crashpoint.Set(func(point string, id int64) {
		if point != spec.Point || id != spec.ID {
			return
		}
		if spec.HoldDir == "" {
			fmt.Fprintf(os.Stderr, "crash point %s of attempt %d: killing this process\n", point, id)
			if p, err := os.FindProcess(os.Getpid()); err == nil {
				_ = p.Kill()
			}
			time.Sleep(time.Hour) // the signal is on its way
		}
		fmt.Fprintf(os.Stderr, "crash point %s of attempt %d: holding\n", point, id)
		if err := os.WriteFile(filepath.Join(spec.HoldDir, "held"), nil, 0o600); err != nil {
			fmt.Fprintln(os.Stderr, err)
		}
		for {
			if _, err := os.Stat(filepath.Join(spec.HoldDir, "release")); err == nil {
				return
			}
			time.Sleep(5 * time.Millisecond) // polling for the test's file
		}
	})
}

// child runs one test child behaviour and returns its exit code.
func child(behaviour string) int {
	fmt.Print(os.Getenv("BATON_TEST_STDOUT"))
	fmt.Fprint(os.Stderr, os.Getenv("BATON_TEST_STDERR"))
	switch behaviour {
	case "exit":
		code, _ := strconv.Atoi(os.Getenv("BATON_TEST_EXIT"))
		return code
	case "env":
		// Report what the child saw as outputs.
		args, _ := json.Marshal(os.Args[1:])
		cwd, _ := os.Getwd()
		lines := []string{"args=" + string(args), "cwd=" + cwd}
		for _, kv := range os.Environ() {
			if strings.HasPrefix(kv, "BATON_") || strings.HasPrefix(kv, "TEST_") {
				lines = append(lines, "ENV_"+kv)
			}
		}
		return writeOutput(strings.Join(lines, "\n") + "\n")
	case "outputs":
		return writeOutput(os.Getenv("BATON_TEST_OUTPUTS"))
	case "big-outputs":
		return writeOutput("first=1\npad=" + strings.Repeat("x", outputCap) + "\nlast=2\n")
	case "count":
		f, err := os.OpenFile(os.Getenv("BATON_TEST_MARKER"), os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		if _, err := fmt.Fprintln(f, os.Getenv("BATON_ATTEMPT_ID")); err != nil {
			fmt.Fprintln(os.Stderr, err)
			_ = f.Close() // the write error is the one to report
			return 1
		}
		if err := f.Close(); err != nil {
			return 1
		}
		return 0
	case "wait-file":
		// Exit once the test creates the release file: print
		// BATON_TEST_AFTER to stderr, write BATON_TEST_OUTPUTS and exit
		// with BATON_TEST_EXIT. BATON_TEST_RAN counts starts.
		if path := os.Getenv("BATON_TEST_RAN"); path != "" {
			if err := appendLine(path, os.Getenv("BATON_ATTEMPT_ID")); err != nil {
				fmt.Fprintln(os.Stderr, err)
				return 1
			}
		}
		for {
			if _, err := os.Stat(os.Getenv("BATON_TEST_RELEASE")); err == nil {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		fmt.Fprint(os.Stderr, os.Getenv("BATON_TEST_AFTER"))
		if out := os.Getenv("BATON_TEST_OUTPUTS"); out != "" {
			if code := writeOutput(out); code != 0 {
				return code
			}
		}
		code, _ := strconv.Atoi(os.Getenv("BATON_TEST_EXIT"))
		return code
	case "sleep":
		time.Sleep(time.Hour)
		return 0
	case "ignore-term":
		signal.Ignore(syscall.SIGTERM)
		fmt.Println("ignoring SIGTERM")
		time.Sleep(time.Hour)
		return 0
	case "grandchild":
		exe, err := os.Executable()
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		gc := exec.Command(exe)
		gc.Env = append(os.Environ(), "BATON_TEST_CHILD=sleep", "BATON_TEST_STDOUT=", "BATON_TEST_STDERR=")
		if err := gc.Start(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		fmt.Printf("grandchild=%d\n", gc.Process.Pid)
		time.Sleep(time.Hour)
		return 0
	case "flood":
		return flood()
	case "secret":
		// Leak TEST_SECRET every way: on stdout right across the first
		// 32 KiB read of the pipe (and the first log chunk), on stderr,
		// and in an output; say in another output whether it is the
		// value the test expects. With BATON_TEST_RELEASE, first wait
		// until the test creates that file.
		if release := os.Getenv("BATON_TEST_RELEASE"); release != "" {
			for {
				if _, err := os.Stat(release); err == nil {
					break
				}
				time.Sleep(10 * time.Millisecond)
			}
		}
		secret := os.Getenv("TEST_SECRET")
		half := len(secret) / 2
		fmt.Print(strings.Repeat("x", 32<<10-half) + secret + "\n")
		fmt.Fprintf(os.Stderr, "connecting with password %s\n", secret)
		return writeOutput(fmt.Sprintf("pw=%s\nmatch=%v\n", secret, secret == os.Getenv("TEST_WANT")))
	default:
		if fn := platformChildren[behaviour]; fn != nil {
			return fn()
		}
		fmt.Fprintf(os.Stderr, "unknown BATON_TEST_CHILD %q\n", behaviour)
		return 99
	}
}

// platformChildren are child behaviours of one platform's tests, set by
// their files' init functions.
var platformChildren = map[string]func() int{}

func appendLine(path, line string) error {
	f, err := os.OpenFile(path, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	if _, err := fmt.Fprintln(f, line); err != nil {
		_ = f.Close() // the write error is the one to report
		return err
	}
	return f.Close()
}

func writeOutput(content string) int {
	if err := os.WriteFile(os.Getenv("BATON_OUTPUT"), []byte(content), 0o600); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// agentSpec configures an agent the test binary runs as a process of its
// own (BATON_TEST_AGENT), so that a test can kill it with SIGKILL.
type agentSpec struct {
	Server        string
	StateDir      string
	RunnerVersion int
	SecretsDir    string
}

// agentMain runs an agent process: the first SIGTERM drains it, a second
// one aborts it. It logs to stderr.
func agentMain(specJSON string) int {
	var spec agentSpec
	if err := json.Unmarshal([]byte(specJSON), &spec); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "BATON_TEST_AGENT=") {
			env = append(env, kv)
		}
	}
	exe, err := os.Executable()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	policy, err := allow.New(allow.Config{Programs: []string{filepath.Join(filepath.Dir(exe), "*")}, Dirs: []string{os.TempDir()}})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	a, err := New(Config{
		Server:        client.DialConfig{Addr: spec.Server},
		Name:          "test-agent",
		Slots:         4,
		StateDir:      spec.StateDir,
		KillGrace:     5 * time.Second,
		ReportTimeout: 5 * time.Second,
		Env:           env,
		Logger:        slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Policy:        policy,
		SecretsDir:    spec.SecretsDir,
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	a.retryBase = 20 * time.Millisecond
	a.runnerIdle = testRunnerIdle
	a.runnerPoll = testRunnerPoll
	a.runnerVersion = spec.RunnerVersion
	sig := make(chan os.Signal, 2)
	signal.Notify(sig, syscall.SIGTERM)
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		<-sig
		cancel()
		<-sig
		a.Abort()
	}()
	if err := a.Run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// floodPattern is the byte at offset i of a flooded stream.
func floodPattern(i int64) byte { return byte('a' + i%26) }

// flood writes BATON_TEST_FLOOD_STDOUT and BATON_TEST_FLOOD_STDERR bytes of
// floodPattern to stdout and stderr, in odd-sized writes.
func flood() int {
	for _, s := range []struct {
		f   *os.File
		env string
	}{{os.Stdout, "BATON_TEST_FLOOD_STDOUT"}, {os.Stderr, "BATON_TEST_FLOOD_STDERR"}} {
		n, _ := strconv.ParseInt(os.Getenv(s.env), 10, 64)
		buf := make([]byte, 7001)
		for off := int64(0); off < n; {
			k := min(int64(len(buf)), n-off)
			for i := range k {
				buf[i] = floodPattern(off + i)
			}
			if _, err := s.f.Write(buf[:k]); err != nil {
				return 1
			}
			off += k
		}
	}
	return 0
}

// testLog is a slog.Handler that writes to t.Log and lets a test wait for
// a message.
type testLog struct {
	t     testing.TB
	attrs []slog.Attr
	store *logStore
}

type logStore struct {
	mu      sync.Mutex
	records []logRecord
	changed chan struct{} // closed and replaced on every record
}

type logRecord struct {
	msg   string
	attrs map[string]string
}

func newTestLog(t testing.TB) (*slog.Logger, *logStore) {
	store := &logStore{changed: make(chan struct{})}
	return slog.New(&testLog{t: t, store: store}), store
}

func (h *testLog) Enabled(context.Context, slog.Level) bool { return true }

func (h *testLog) Handle(_ context.Context, r slog.Record) error {
	rec := logRecord{msg: r.Message, attrs: make(map[string]string)}
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s %s", r.Time.Format("15:04:05.000"), r.Level, r.Message)
	add := func(a slog.Attr) bool {
		rec.attrs[a.Key] = a.Value.String()
		fmt.Fprintf(&b, " %s=%v", a.Key, a.Value)
		return true
	}
	for _, a := range h.attrs {
		add(a)
	}
	r.Attrs(add)
	h.t.Log(b.String())
	h.store.mu.Lock()
	h.store.records = append(h.store.records, rec)
	close(h.store.changed)
	h.store.changed = make(chan struct{})
	h.store.mu.Unlock()
	return nil
}

func (h *testLog) WithAttrs(attrs []slog.Attr) slog.Handler {
	return &testLog{t: h.t, attrs: append(slices.Clip(h.attrs), attrs...), store: h.store}
}

func (h *testLog) WithGroup(string) slog.Handler { return h }

// wait waits for a record with message msg and the given attribute values
// (key, value pairs).
func (s *logStore) wait(t testing.TB, msg string, kv ...string) {
	t.Helper()
	deadline := time.After(waitTimeout)
	seen := 0
	for {
		s.mu.Lock()
		recs := s.records[seen:]
		seen = len(s.records)
		changed := s.changed
		s.mu.Unlock()
		for _, r := range recs {
			if r.msg == msg && matchAttrs(r.attrs, kv) {
				return
			}
		}
		select {
		case <-changed:
		case <-deadline:
			t.Fatalf("no log %q %v within %s", msg, kv, waitTimeout)
		}
	}
}

func matchAttrs(attrs map[string]string, kv []string) bool {
	for i := 0; i+1 < len(kv); i += 2 {
		if attrs[kv[i]] != kv[i+1] {
			return false
		}
	}
	return true
}

// testBundle is what the agent tests work with.
type testBundle struct {
	// localChildren runs children in the agent process, as on Windows.
	localChildren bool

	srv      *fakeServer
	stateDir string
	logs     *logStore
	logger   *slog.Logger
	exe      string // the test binary, run as the child
	// policy allows the test binary's directory and working directories
	// in the temporary directory: what the tests run.
	policy *allow.Policy
}

func setup(t testing.TB) *testBundle {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	logger, logs := newTestLog(t)
	stateDir := filepath.Join(t.TempDir(), "state")
	// Runs after every later cleanup (the agents' are registered later):
	// a runner that still holds an exit no agent collected waits for one
	// for ever, by design; the test's must not outlive it.
	t.Cleanup(func() { killRunners(t, stateDir) })
	return &testBundle{
		srv:      newFakeServer(t),
		stateDir: stateDir,
		logs:     logs,
		logger:   logger,
		exe:      exe,
		policy:   testPolicy(t, exe),
	}
}

// testPolicy allows what the tests run: the test binary (its directory)
// and working directories below the temporary directory.
func testPolicy(t testing.TB, exe string) *allow.Policy {
	t.Helper()
	p, err := allow.New(allow.Config{
		Programs: []string{filepath.Join(filepath.Dir(exe), "*")},
		Dirs:     []string{os.TempDir()},
	})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// config returns an agent Config for the bundle's server and state dir.
func (b *testBundle) config() Config {
	return Config{
		Server:        client.DialConfig{Addr: b.srv.addr},
		Name:          "test-agent",
		Labels:        map[string]string{"role": "ssis", "dc": "east"},
		Slots:         4,
		StateDir:      b.stateDir,
		Version:       "v-test",
		KillGrace:     5 * time.Second,
		ReportTimeout: 5 * time.Second,
		// A race-enabled child would otherwise sleep a second at exit.
		Env:    append(os.Environ(), "GORACE=atexit_sleep_ms=0"),
		Logger: b.logger,
		Policy: b.policy,
	}
}

// runningAgent is an agent whose Run is in progress.
type runningAgent struct {
	*Agent
	cancel context.CancelFunc
	done   chan error
}

// start creates an agent from cfg and runs it until the test ends.
func (b *testBundle) start(t testing.TB, cfg Config) *runningAgent {
	t.Helper()
	a, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	a.retryBase = 20 * time.Millisecond
	a.runnerIdle = testRunnerIdle
	a.runnerPoll = testRunnerPoll
	a.localChildren = b.localChildren
	ctx, cancel := context.WithCancel(context.Background())
	r := &runningAgent{Agent: a, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		a.Abort()
		select {
		case err := <-r.done:
			_ = err // a test that cares about Run's error reads it with wait
		case <-time.After(waitTimeout):
			t.Errorf("Run did not return within %s of Abort", waitTimeout)
		}
	})
	return r
}

// wait waits for Run to return and returns its error.
func (r *runningAgent) wait(t testing.TB) error {
	t.Helper()
	select {
	case err := <-r.done:
		r.done <- err // for the cleanup
		return err
	case <-time.After(waitTimeout):
		t.Fatalf("Run did not return within %s", waitTimeout)
		return nil
	}
}

// task returns a StartTask that runs the test binary as a child with the
// given behaviour.
func (b *testBundle) task(id int64, behaviour string, env ...string) *batonv1.StartTask {
	st := &batonv1.StartTask{
		AttemptId: id,
		RunId:     1000 + id,
		Job:       "nightly-dw-load",
		Task:      "stage-customers",
		Attempt:   1,
		Argv:      []string{b.exe},
		Env:       map[string]string{"BATON_TEST_CHILD": behaviour},
	}
	for i := 0; i+1 < len(env); i += 2 {
		st.Env[env[i]] = env[i+1]
	}
	return st
}
