// Package e2e tests Baton as users run it: real batond, baton-agent and
// baton processes on 127.0.0.1, talking real gRPC and REST, with real child
// processes. Every process a test starts is stopped when it ends.
package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/batonhq/baton/client"
	batonv1 "github.com/batonhq/baton/gen/baton/v1"
)

// bins are the binaries under test, built once by TestMain.
var bins struct {
	batond, agent, baton string
}

// repoRoot is the repository's top directory.
var repoRoot string

func TestMain(m *testing.M) {
	os.Exit(testMain(m))
}

func testMain(m *testing.M) int {
	wd, err := os.Getwd()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	repoRoot = filepath.Dir(wd)
	dir, err := os.MkdirTemp("", "baton-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer func() {
		if err := os.RemoveAll(dir); err != nil {
			fmt.Fprintln(os.Stderr, err)
		}
	}()
	bins.batond = filepath.Join(dir, "batond")
	bins.agent = filepath.Join(dir, "baton-agent")
	bins.baton = filepath.Join(dir, "baton")
	args := []string{"build"}
	if raceEnabled {
		// The processes under test run with the race detector too.
		args = append(args, "-race")
	}
	for out, pkg := range map[string]string{
		bins.batond: "./server/cmd/batond", bins.agent: "./agent/cmd/baton-agent", bins.baton: "./client/cmd/baton",
	} {
		cmd := exec.Command("go", append(args, "-o", out, pkg)...)
		cmd.Dir = repoRoot
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			fmt.Fprintf(os.Stderr, "build %s: %v\n", pkg, err)
			return 1
		}
	}
	return m.Run()
}

// proc is a process a test started.
type proc struct {
	name string
	cmd  *exec.Cmd
	log  string // file holding its stdout and stderr
	done chan struct{}
	err  error
}

// start runs bin with args and env (added to the test's environment) and
// stops it when the test ends: SIGTERM, then a second SIGTERM (which makes
// agents stop their children), then SIGKILL.
func start(t *testing.T, name string, env []string, bin string, args ...string) *proc {
	t.Helper()
	logPath := filepath.Join(t.TempDir(), name+".log")
	f, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		_ = f.Close() // nothing was written to it
		t.Fatalf("start %s: %v", name, err)
	}
	p := &proc{name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		// The process wrote through its own descriptor, straight to the
		// file: closing ours cannot lose any of it.
		_ = f.Close()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.stop(t)
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			if len(b) > 6000 {
				b = b[len(b)-6000:]
			}
			t.Logf("--- %s log (tail) ---\n%s", name, b)
		}
	})
	return p
}

// stop ends the process: SIGTERM, a second SIGTERM after 10s, SIGKILL
// after 20s.
func (p *proc) stop(t *testing.T) {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL} {
		select {
		case <-p.done:
			return
		case <-time.After(10 * time.Second):
			t.Logf("%s did not stop; sending %v", p.name, sig)
			_ = p.cmd.Process.Signal(sig)
		}
	}
	<-p.done
}

// kill ends the process with SIGKILL and waits for it.
func (p *proc) kill() {
	_ = p.cmd.Process.Kill()
	<-p.done
}

// logText returns what the process has logged so far.
func (p *proc) logText() string {
	b, _ := os.ReadFile(p.log)
	return string(b)
}

// cluster is one batond with its agents.
type cluster struct {
	t      *testing.T
	dir    string
	marks  string // MARK_DIR: where e2e tasks record that they ran
	batond *proc
	grpc   string
	http   string
	c      *client.Client
	agents map[string]*proc
	extra  []string // extra batond flags
	env    []string // extra environment for every process
	dial   client.DialConfig
}

type clusterOption func(*cluster)

// withBatondFlags passes extra flags to batond.
func withBatondFlags(flags ...string) clusterOption {
	return func(c *cluster) { c.extra = append(c.extra, flags...) }
}

// newCluster starts batond on a fresh embedded store.
func newCluster(t *testing.T, opts ...clusterOption) *cluster {
	t.Helper()
	dir := t.TempDir()
	c := &cluster{t: t, dir: dir, marks: filepath.Join(dir, "marks"), agents: map[string]*proc{}}
	for _, o := range opts {
		o(c)
	}
	if err := os.MkdirAll(c.marks, 0o755); err != nil {
		t.Fatal(err)
	}
	c.startBatond()
	return c
}

func (c *cluster) startBatond() {
	t := c.t
	t.Helper()
	addrFile := filepath.Join(c.dir, "addr.json")
	_ = os.Remove(addrFile)
	args := append([]string{
		"--data-dir", filepath.Join(c.dir, "batond"), "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0",
		"--addr-file", addrFile, "--log-level", "debug",
	}, c.extra...)
	c.batond = start(t, "batond", c.env, bins.batond, args...)
	var addrs struct{ GRPC, HTTP string }
	waitFor(t, 30*time.Second, "batond to listen", func() bool {
		select {
		case <-c.batond.done:
			t.Fatalf("batond exited: %v\n%s", c.batond.err, c.batond.logText())
		default:
		}
		b, err := os.ReadFile(addrFile)
		return err == nil && json.Unmarshal(b, &addrs) == nil && addrs.GRPC != ""
	})
	c.grpc, c.http = addrs.GRPC, addrs.HTTP
	c.dial.Addr = c.grpc
	conn, err := client.Dial(c.dial)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	c.c = client.New(conn)
}

// agent starts a baton-agent named name with labels ("k=v"). It may run
// the e2e task script only: the program every e2e job runs.
func (c *cluster) agent(name string, slots int, labels ...string) *proc {
	c.t.Helper()
	return c.agentWith(name, slots, []string{"--allow", taskScript()}, labels...)
}

// agentWith starts a baton-agent with extra flags (its allowlist).
func (c *cluster) agentWith(name string, slots int, flags []string, labels ...string) *proc {
	c.t.Helper()
	args := []string{"--server", c.grpc, "--name", name, "--slots", fmt.Sprint(slots),
		"--state-dir", filepath.Join(c.dir, "agents", name), "--log-level", "debug"}
	args = append(args, flags...)
	if c.dial.CAFile != "" {
		args = append(args, "--ca-file", c.dial.CAFile)
	}
	for _, l := range labels {
		args = append(args, "--label", l)
	}
	env := append([]string{"MARK_DIR=" + c.marks, "AGENT_NAME=" + name}, c.env...)
	p := start(c.t, "agent-"+name, env, bins.agent, args...)
	c.agents[name] = p
	return p
}

// waitAgents waits until n agents are connected.
func (c *cluster) waitAgents(n int) {
	c.t.Helper()
	waitFor(c.t, 30*time.Second, fmt.Sprintf("%d agents to connect", n), func() bool {
		agents, err := c.c.ListAgents(context.Background())
		if err != nil {
			return false
		}
		connected := 0
		for _, a := range agents {
			if a.GetState() == batonv1.AgentState_AGENT_STATE_CONNECTED {
				connected++
			}
		}
		return connected >= n
	})
}

// jobFile expands the test placeholders of a job file: TASK is the e2e task
// script.
func jobFile(src string) string {
	return strings.ReplaceAll(src, "TASK", taskScript())
}

// taskScript is the e2e task script's path.
func taskScript() string { return filepath.Join(repoRoot, "e2e", "testdata", "task.sh") }

// apply applies a job file through the API.
func (c *cluster) apply(src string) *batonv1.Job {
	c.t.Helper()
	j, _, err := c.c.ApplyJob(context.Background(), jobFile(src))
	if err != nil {
		c.t.Fatalf("ApplyJob: %v", err)
	}
	return j
}

// cli runs the baton CLI against the cluster.
func (c *cluster) cli(args ...string) (stdout, stderr string, code int) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bins.baton, args...)
	cmd.Env = append(os.Environ(), "BATON_ADDR="+c.grpc)
	if c.dial.CAFile != "" {
		cmd.Env = append(cmd.Env, "BATON_CA_FILE="+c.dial.CAFile)
	}
	if c.dial.Token != "" {
		cmd.Env = append(cmd.Env, "BATON_TOKEN="+c.dial.Token)
	}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		code = ee.ExitCode()
	default:
		c.t.Fatalf("baton %v: %v", args, err)
	}
	return out.String(), errb.String(), code
}

// latestRun returns the newest run of a job.
func (c *cluster) latestRun(jobName string) *batonv1.Run {
	c.t.Helper()
	runs, err := c.c.ListRuns(context.Background(), jobName, 1)
	if err != nil || len(runs) == 0 {
		c.t.Fatalf("ListRuns(%s) = %v, %v", jobName, runs, err)
	}
	return runs[0]
}

// wait waits for a run to end and returns it with its tasks.
func (c *cluster) wait(runID int64) *batonv1.Run {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if _, err := c.c.WaitRun(ctx, runID, nil); err != nil {
		c.t.Fatalf("WaitRun(%d): %v", runID, err)
	}
	return c.getRun(runID)
}

func (c *cluster) getRun(runID int64) *batonv1.Run {
	c.t.Helper()
	r, err := c.c.GetRun(context.Background(), runID)
	if err != nil {
		c.t.Fatalf("GetRun(%d): %v", runID, err)
	}
	return r
}

// restGet fetches a REST path and decodes its JSON.
func (c *cluster) restGet(path string, out any) int {
	c.t.Helper()
	resp, err := http.Get("http://" + c.http + path)
	if err != nil {
		c.t.Fatalf("GET %s: %v", path, err)
	}
	defer func() { _ = resp.Body.Close() }() // read to the end
	b, _ := io.ReadAll(resp.Body)
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			c.t.Fatalf("GET %s: %v\n%s", path, err, b)
		}
	}
	return resp.StatusCode
}

// marks returns what an e2e task recorded each time it ran.
func (c *cluster) ran(task string) []string {
	b, err := os.ReadFile(filepath.Join(c.marks, task))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		c.t.Fatal(err)
	}
	return strings.Split(strings.TrimSpace(string(b)), "\n")
}

// task returns a run's instance of a task (the task-level one).
func task(r *batonv1.Run, name string) *batonv1.TaskRun {
	for _, tr := range r.GetTasks() {
		if tr.GetTask() == name && tr.ItemIndex == nil {
			return tr
		}
	}
	return nil
}

// waitFor polls cond until it holds or timeout passes. It is for
// conditions on other processes, which cannot signal the test.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
