package e2e

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/batonhq/baton/client"
	batonv1 "github.com/batonhq/baton/gen/baton/v1"
)

// TestQuickstart follows the README on a fresh clone: `make run` in the
// background, then the CLI. The example run must reach a terminal state,
// and Ctrl-C must stop everything.
func TestQuickstart(t *testing.T) {
	t.Parallel()
	if _, err := exec.LookPath("make"); err != nil {
		t.Skip("make is not installed")
	}
	clone := filepath.Join(t.TempDir(), "baton")
	if out, err := exec.Command("git", "clone", "-q", repoRoot, clone).CombinedOutput(); err != nil {
		t.Skipf("cannot clone the repository (%v): %s", err, out)
	}
	data := t.TempDir()
	logPath := filepath.Join(data, "make-run.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	// make and its children write through their own descriptors: closing
	// ours loses nothing.
	defer func() { _ = logf.Close() }()
	cmd := exec.Command("make", "run")
	cmd.Dir = clone
	cmd.Env = append(os.Environ(),
		"BATON_QUICKSTART_DIR="+data, "BATON_GRPC_ADDR=127.0.0.1:0", "BATON_HTTP_ADDR=127.0.0.1:0", "SIM_SECONDS=0.2")
	cmd.Stdout, cmd.Stderr = logf, logf
	// Its own process group, so Ctrl-C can be delivered the way a terminal does.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// done is closed when make has exited, with its Wait error in waitErr:
	// only an early exit's error says anything; after the SIGKILL or the
	// Ctrl-C below it only names the signal.
	done := make(chan struct{})
	var waitErr error
	go func() {
		waitErr = cmd.Wait()
		close(done)
	}()
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-done
		}
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			t.Logf("--- make run output ---\n%s", b)
		}
	})

	var addrs struct{ GRPC, HTTP string }
	waitFor(t, 5*time.Minute, "make run to start batond", func() bool {
		select {
		case <-done:
			stopped = true
			t.Fatalf("make run exited early: %v", waitErr)
		default:
		}
		b, err := os.ReadFile(filepath.Join(data, "addr.json"))
		return err == nil && json.Unmarshal(b, &addrs) == nil && addrs.GRPC != ""
	})
	conn, err := client.Dial(client.DialConfig{Addr: addrs.GRPC})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	c := client.New(conn)
	var runID int64
	waitFor(t, 2*time.Minute, "the example run to start", func() bool {
		runs, err := c.ListRuns(context.Background(), "nightly-dw-load", 1)
		if err != nil || len(runs) == 0 {
			return false
		}
		runID = runs[0].GetId()
		return true
	})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	run, err := c.WaitRun(ctx, runID, nil)
	if err != nil {
		t.Fatalf("WaitRun: %v", err)
	}
	if run.GetState() != batonv1.RunState_RUN_STATE_SUCCEEDED {
		t.Errorf("example run ended %v (%s), want SUCCEEDED", run.GetState(), run.GetError())
	}

	// The CLI a user would type next.
	cl := &cluster{t: t, grpc: addrs.GRPC}
	if out, stderr, code := cl.cli("run", "get", itoa(runID)); code != 0 {
		t.Errorf("baton run get exited %d: %s%s", code, out, stderr)
	}

	// Ctrl-C stops batond and both agents.
	if err := syscall.Kill(-cmd.Process.Pid, syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	select {
	case <-done:
		stopped = true
	case <-time.After(30 * time.Second):
		t.Fatalf("make run did not stop within 30s of Ctrl-C")
	}
	// Nothing of the group is left.
	if err := syscall.Kill(-cmd.Process.Pid, 0); err == nil {
		t.Errorf("processes of make run are still alive after Ctrl-C")
	}
}

func itoa(v int64) string { return strconv.FormatInt(v, 10) }
