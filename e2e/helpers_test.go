package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	batonv1 "github.com/batonhq/baton/gen/baton/v1"
)

// rpcTimeout bounds each unary call a test makes.
const rpcTimeout = 30 * time.Second

// runs returns the generated run service stub: its errors are the bare
// gRPC statuses the server sent.
func (c *cluster) runs() batonv1.RunServiceClient {
	return batonv1.NewRunServiceClient(c.c.Conn())
}

// attempts returns a run's attempt history (of one task when task is not
// empty), oldest first.
func (c *cluster) attempts(runID int64, task string) []*batonv1.Attempt {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), rpcTimeout)
	defer cancel()
	resp, err := c.runs().ListAttempts(ctx, &batonv1.ListAttemptsRequest{RunId: runID, Task: task})
	if err != nil {
		c.t.Fatalf("ListAttempts(%d, %q): %v", runID, task, err)
	}
	return resp.GetAttempts()
}

// startRun starts a run of job through the API.
func (c *cluster) startRun(job string, params map[string]string) *batonv1.Run {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), rpcTimeout)
	defer cancel()
	resp, err := c.runs().StartRun(ctx, &batonv1.StartRunRequest{Job: job, Params: params})
	if err != nil {
		c.t.Fatalf("StartRun(%s): %v", job, err)
	}
	return resp.GetRun()
}

// waitState polls a run until it is in one of states.
func (c *cluster) waitState(runID int64, timeout time.Duration, states ...batonv1.RunState) *batonv1.Run {
	c.t.Helper()
	var run *batonv1.Run
	waitFor(c.t, timeout, fmt.Sprintf("run %d to be %v", runID, states), func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), rpcTimeout)
		defer cancel()
		r, err := c.c.GetRun(ctx, runID)
		if err != nil {
			return false
		}
		run = r
		return slices.Contains(states, r.GetState())
	})
	return run
}

// waitTasks polls a run until ok holds for it.
func (c *cluster) waitTasks(runID int64, timeout time.Duration, what string, ok func(*batonv1.Run) bool) *batonv1.Run {
	c.t.Helper()
	var run *batonv1.Run
	waitFor(c.t, timeout, what, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), rpcTimeout)
		defer cancel()
		r, err := c.c.GetRun(ctx, runID)
		if err != nil {
			return false
		}
		run = r
		return ok(r)
	})
	return run
}

// countItems counts the items of a for-each task in state.
func countItems(r *batonv1.Run, task string, state batonv1.TaskState) int {
	n := 0
	for _, tr := range r.GetTasks() {
		if tr.GetTask() == task && tr.ItemIndex != nil && tr.GetState() == state {
			n++
		}
	}
	return n
}

// markLines returns the complete lines of a file in the marks directory
// (nil when it does not exist).
func (c *cluster) markLines(name string) []string {
	c.t.Helper()
	b, err := os.ReadFile(filepath.Join(c.marks, name))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		c.t.Fatal(err)
	}
	// A child may be writing its line right now: leave out a last line
	// that is not complete yet.
	s := string(b)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	} else {
		s = ""
	}
	if strings.TrimSpace(s) == "" {
		return nil
	}
	return strings.Split(s, "\n")
}

// touch creates a file in the marks directory; tasks waiting on it (the
// wait-file verb) go on, and fail-items stops failing once "fixed" exists.
func (c *cluster) touch(name string) {
	c.t.Helper()
	if err := os.WriteFile(filepath.Join(c.marks, name), nil, 0o644); err != nil {
		c.t.Fatal(err)
	}
}

// pids returns the pids a task recorded with the spawn verb.
func (c *cluster) pids(task string) []int {
	c.t.Helper()
	var out []int
	for _, l := range c.markLines(task + ".pids") {
		pid, err := strconv.Atoi(strings.TrimSpace(l))
		if err != nil {
			c.t.Fatalf("%s.pids: bad line %q", task, l)
		}
		out = append(out, pid)
	}
	return out
}

// ranIn returns the marker lines a task's children wrote in one run.
func (c *cluster) ranIn(task string, runID int64) []string {
	c.t.Helper()
	var out []string
	for _, l := range c.markLines(task) {
		if markField(l, "run") == strconv.FormatInt(runID, 10) {
			out = append(out, l)
		}
	}
	return out
}

// markField returns the value of key in a marker line
// ("run=1 agent=a attempt=1 item= id=7").
func markField(line, key string) string {
	for _, f := range strings.Fields(line) {
		if v, ok := strings.CutPrefix(f, key+"="); ok {
			return v
		}
	}
	return ""
}

// alive reports whether a process exists and is not a zombie (a zombie has
// ended; only its parent has not collected it yet).
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// The state follows the command name, which is in parentheses.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+2 >= len(b) {
		return false
	}
	return b[i+2] != 'Z'
}

// waitGone waits until none of pids is alive.
func waitGone(t *testing.T, timeout time.Duration, what string, pids []int) {
	t.Helper()
	var left []int
	deadline := time.Now().Add(timeout)
	for {
		left = left[:0]
		for _, pid := range pids {
			if alive(pid) {
				left = append(left, pid)
			}
		}
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: processes %v still running after %s", what, left, timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// leftovers returns the live processes started for this cluster's agents
// (agents, their runners and every child), found by the MARK_DIR in their
// environment.
func (c *cluster) leftovers() []int {
	want := []byte("MARK_DIR=" + c.marks + "\x00")
	ents, err := os.ReadDir("/proc")
	if err != nil {
		c.t.Fatal(err)
	}
	var out []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		env, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
		if err != nil || !bytes.Contains(env, want) || !alive(pid) {
			continue
		}
		out = append(out, pid)
	}
	return out
}

// span is one child's recorded lifetime (the span verb).
type span struct {
	pid, agent string
	start, end int64 // Unix nanoseconds
}

// spans reads the lifetimes a task's children recorded; every child must
// have ended.
func (c *cluster) spans(task string) []span {
	c.t.Helper()
	closed, open := c.readSpans(task)
	if open > 0 {
		c.t.Fatalf("%s.span: %d children recorded a start but no end", task, open)
	}
	return closed
}

// readSpans reads the lifetimes of a task's children that have ended, and
// counts those still running.
func (c *cluster) readSpans(task string) (closed []span, open int) {
	c.t.Helper()
	started := map[string]int64{}
	for _, l := range c.markLines(task + ".span") {
		f := strings.Fields(l)
		if len(f) != 4 {
			c.t.Fatalf("%s.span: bad line %q", task, l)
		}
		ns, err := strconv.ParseInt(f[1], 10, 64)
		if err != nil {
			c.t.Fatalf("%s.span: bad line %q", task, l)
		}
		switch f[0] {
		case "S":
			started[f[2]] = ns
		case "E":
			s, ok := started[f[2]]
			if !ok {
				c.t.Fatalf("%s.span: end without start: %q", task, l)
			}
			delete(started, f[2])
			closed = append(closed, span{pid: f[2], agent: f[3], start: s, end: ns})
		}
	}
	return closed, len(started)
}

// maxConcurrent returns the most spans that overlap at one instant. An end
// and a start at the same nanosecond do not overlap.
func maxConcurrent(spans []span) int {
	type edge struct {
		at    int64
		delta int
	}
	edges := make([]edge, 0, 2*len(spans))
	for _, s := range spans {
		edges = append(edges, edge{s.start, +1}, edge{s.end, -1})
	}
	sort.Slice(edges, func(i, j int) bool {
		if edges[i].at != edges[j].at {
			return edges[i].at < edges[j].at
		}
		return edges[i].delta < edges[j].delta
	})
	n, most := 0, 0
	for _, e := range edges {
		n += e.delta
		most = max(most, n)
	}
	return most
}

// syncBuffer is a bytes.Buffer a process writes while the test reads it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// bg is a baton CLI process running in the background.
type bg struct {
	cmd    *exec.Cmd
	stdout syncBuffer
	stderr syncBuffer
	done   chan struct{}
	code   int
}

// cliBackground starts the baton CLI without waiting for it; wait returns
// its exit code. It is killed when the test ends.
func (c *cluster) cliBackground(args ...string) *bg {
	c.t.Helper()
	b := &bg{done: make(chan struct{})}
	b.cmd = exec.Command(bins.baton, args...)
	b.cmd.Env = append(os.Environ(), "BATON_ADDR="+c.grpc)
	b.cmd.Stdout, b.cmd.Stderr = &b.stdout, &b.stderr
	if err := b.cmd.Start(); err != nil {
		c.t.Fatalf("baton %v: %v", args, err)
	}
	go func() {
		err := b.cmd.Wait()
		var ee *exec.ExitError
		switch {
		case err == nil:
		case errors.As(err, &ee):
			b.code = ee.ExitCode()
		default:
			b.code = -1
		}
		close(b.done)
	}()
	c.t.Cleanup(func() {
		_ = b.cmd.Process.Kill()
		<-b.done
	})
	return b
}

// wait waits for the CLI to exit and returns its exit code.
func (b *bg) wait(t *testing.T, timeout time.Duration) int {
	t.Helper()
	select {
	case <-b.done:
		return b.code
	case <-time.After(timeout):
		t.Fatalf("baton %v did not exit within %s; stdout:\n%s\nstderr:\n%s", b.cmd.Args[1:], timeout, b.stdout.String(), b.stderr.String())
		return 0
	}
}

// signal sends sig to a process the test started.
func (p *proc) signal(t *testing.T, sig syscall.Signal) {
	t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		t.Fatalf("signal %s with %v: %v", p.name, sig, err)
	}
}

// restartBatond kills batond with SIGKILL and starts it again on the same
// data directory and gRPC port, so agents and clients reconnect to the
// address they know. It returns when the new batond listens.
func (c *cluster) restartBatond() time.Time {
	c.t.Helper()
	c.batond.kill()
	if !slices.Contains(c.extra, c.grpc) {
		// A later --grpc-addr overrides the harness's port 0.
		c.extra = append(c.extra, "--grpc-addr", c.grpc)
	}
	started := time.Now()
	c.startBatond()
	return started
}

// itemsYAML writes n for-each items as a YAML flow list.
func itemsYAML(n int) string {
	var b strings.Builder
	b.WriteString("[")
	for i := range n {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%q", strconv.Itoa(i))
	}
	b.WriteString("]")
	return b.String()
}
