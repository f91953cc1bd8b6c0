// Package process starts child processes that can be stopped as a whole
// tree.
//
// Each child runs in its own process group (on Windows: its own console
// process group inside a job object), so a signal or a kill reaches the
// child and everything it spawned. [Process.Terminate] asks the tree to stop
// (SIGTERM; CTRL_BREAK on Windows) and kills it after a grace period;
// [Process.Kill] kills it at once. When the child itself exits, whatever it
// left running in its group is killed too, so an attempt's processes end
// with the attempt.
//
// A descendant that leaves the group on purpose (setsid, a new job) escapes
// these kills; its hold on the child's output pipes is bounded by
// [Spec.WaitDelay].
package process

import (
	"cmp"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"sync"
	"time"
)

// DefaultWaitDelay is the default for [Spec.WaitDelay].
const DefaultWaitDelay = 2 * time.Second

// Spec describes a child process to start.
type Spec struct {
	// Argv is the command line. Argv[0] is looked up in PATH unless it
	// contains a path separator or Path is set; no shell is involved.
	// Required.
	Argv []string
	// Path is the executable to run, when it is already resolved; the
	// child still sees Argv[0] as its argv[0]. A relative Path is taken
	// relative to Dir. Empty means Argv[0].
	Path string
	// Env is the child's whole environment as key=value pairs; when a key
	// repeats, the last value wins. Nil means the current process's
	// environment.
	Env []string
	// Dir is the child's working directory. Empty means the current one.
	Dir string
	// Stdout and Stderr receive the child's output. Nil discards it. Each
	// is written from its own goroutine.
	Stdout io.Writer
	Stderr io.Writer
	// WaitDelay bounds how long the child's output is still read after the
	// child exited, in case a descendant outside its process group keeps
	// the pipes open. Defaults to DefaultWaitDelay.
	WaitDelay time.Duration
	// OnExit, if set, is called once Done is closed, on the goroutine that
	// waited for the child, so a caller can act on the exit without a
	// goroutine of its own waiting on Done. It must not block for long.
	OnExit func()
}

// Result is how a child process ended.
type Result struct {
	// ExitCode is the child's exit code, or -1 when a signal killed it.
	ExitCode int
	// Err is nil when the child exited with code 0 and its output was read
	// to the end. Otherwise it says how the child ended, such as
	// "exit status 3" or "signal: killed" (an [*exec.ExitError]); with
	// ExitCode 0 it wraps [exec.ErrWaitDelay]: a descendant kept the output
	// pipes open past Spec.WaitDelay.
	Err error
}

// Process is a started child process. Its methods are safe for concurrent
// use.
type Process struct {
	cmd    *exec.Cmd
	pid    int
	sys    sysState
	done   chan struct{}
	onExit func()

	mu        sync.Mutex
	exited    bool // the child exited and its group was killed: signal nothing more
	killTimer *time.Timer
	result    Result
}

// Start starts the child process described by spec in a new process group.
// The returned error is non-nil when the child could not be started (no
// such file, permission denied, a bad working directory, ...).
func Start(spec Spec) (*Process, error) {
	if len(spec.Argv) == 0 || spec.Argv[0] == "" {
		return nil, errors.New("start process: argv is empty")
	}
	cmd := exec.Command(cmp.Or(spec.Path, spec.Argv[0]), spec.Argv[1:]...)
	cmd.Args[0] = spec.Argv[0]
	cmd.Env = spec.Env
	cmd.Dir = spec.Dir
	cmd.Stdout = spec.Stdout
	cmd.Stderr = spec.Stderr
	cmd.WaitDelay = cmp.Or(spec.WaitDelay, DefaultWaitDelay)
	cmd.SysProcAttr = sysProcAttr()
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start process: %w", err)
	}
	p := &Process{cmd: cmd, pid: cmd.Process.Pid, done: make(chan struct{}), onExit: spec.OnExit}
	if err := p.sys.started(cmd.Process.Pid); err != nil {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		p.sys.release()
		return nil, fmt.Errorf("start process: %w", err)
	}
	go p.wait()
	return p, nil
}

// Pid returns the child's process id.
func (p *Process) Pid() int { return p.pid }

// Done returns a channel that is closed once the child has exited, its
// output has been read and its process group is gone.
func (p *Process) Done() <-chan struct{} { return p.done }

// Result blocks until the child has exited and returns how it ended.
func (p *Process) Result() Result {
	<-p.done
	return p.result
}

// Terminate asks the child's process tree to stop (SIGTERM to the group;
// CTRL_BREAK on Windows) and kills the tree when it is still running after
// grace. A grace of zero or less kills at once. Terminate does not block
// and does nothing once the child has exited; only the first call's grace
// counts.
func (p *Process) Terminate(grace time.Duration) error {
	if grace <= 0 {
		return p.Kill()
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.exited {
		return nil
	}
	if p.killTimer == nil {
		p.killTimer = time.AfterFunc(grace, func() { _ = p.Kill() })
	}
	if err := p.sys.interrupt(p.pid); err != nil {
		return fmt.Errorf("interrupt process group %d: %w", p.pid, err)
	}
	return nil
}

// Kill kills the child's whole process tree at once (SIGKILL to the group;
// the job object on Windows). It does not block and does nothing once the
// child has exited.
func (p *Process) Kill() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.exited {
		return nil
	}
	if err := p.sys.kill(p.pid); err != nil {
		return fmt.Errorf("kill process group %d: %w", p.pid, err)
	}
	return nil
}

// wait reaps the child. When the platform can see the exit before reaping
// (the group id stays reserved while the exited child is unreaped), the
// rest of the group is killed first so no leftover descendant outlives
// the child or holds its pipes.
func (p *Process) wait() {
	if p.sys.waitExited(p.pid) == nil {
		p.mu.Lock()
		_ = p.sys.kill(p.pid)
		p.exited = true
		p.mu.Unlock()
	}
	err := p.cmd.Wait()

	p.mu.Lock()
	p.exited = true
	if p.killTimer != nil {
		p.killTimer.Stop()
	}
	p.mu.Unlock()
	p.sys.release()

	res := Result{ExitCode: -1, Err: err}
	if ps := p.cmd.ProcessState; ps != nil {
		res.ExitCode = ps.ExitCode()
	}
	if res.Err != nil && res.ExitCode == 0 && !errors.Is(res.Err, exec.ErrWaitDelay) {
		// Wait failed for another reason (an output writer failed); the
		// child itself succeeded.
		res.Err = fmt.Errorf("read child output: %w", res.Err)
	}
	p.result = res
	close(p.done)
	if p.onExit != nil {
		p.onExit()
	}
}
