package agent

import (
	"context"
	"errors"
	"os/exec"
	"sync"
	"time"

	"github.com/batonhq/baton/agent/process"
	"github.com/batonhq/baton/agent/runner"
)

// localRunner runs children as direct children of the agent process, the
// way the agent works on Windows: there a child runs in a job object that
// ends with the agent, so children do not outlive it.
type localRunner struct{}

// instance is empty: a child of the agent process ends with it, so an
// attempt recorded as started by an earlier agent process may have run.
func (localRunner) instance() string { return "" }
func (localRunner) confirm(int64)    {}
func (localRunner) close()           {}

func (localRunner) start(_ context.Context, req *runner.StartRequest, sink runner.Sink) (proc, error) {
	lp := &localProc{timeout: req.Timeout, grace: req.Grace, done: make(chan struct{})}
	p, err := process.Start(process.Spec{
		Path:   req.Path,
		Argv:   req.Argv,
		Env:    req.Env,
		Dir:    req.Dir,
		Stdout: &sinkWriter{sink: sink, stream: runner.Stdout},
		Stderr: &sinkWriter{sink: sink, stream: runner.Stderr},
	})
	if err != nil {
		return nil, err
	}
	lp.p = p
	lp.start = time.Now()
	if req.Timeout > 0 {
		lp.timer = time.AfterFunc(req.Timeout, lp.expire)
	}
	go lp.wait()
	return lp, nil
}

// localProc is a child of the agent process. It enforces its timeout
// itself, as the runner does.
type localProc struct {
	p       *process.Process
	start   time.Time
	timeout time.Duration
	grace   time.Duration
	timer   *time.Timer
	done    chan struct{}

	mu        sync.Mutex
	signalled bool
	timedOut  bool
	result    runner.Result
}

func (lp *localProc) Pid() int              { return lp.p.Pid() }
func (lp *localProc) StartTime() time.Time  { return lp.start }
func (lp *localProc) Done() <-chan struct{} { return lp.done }

func (lp *localProc) Result() runner.Result {
	lp.mu.Lock()
	defer lp.mu.Unlock()
	return lp.result
}

func (lp *localProc) Terminate(grace time.Duration, _ string) error {
	lp.mu.Lock()
	lp.signalled = true
	lp.mu.Unlock()
	return lp.p.Terminate(grace)
}

func (lp *localProc) Kill(string) error {
	lp.mu.Lock()
	lp.signalled = true
	lp.mu.Unlock()
	return lp.p.Kill()
}

// expire stops the child when its timeout expires, unless the agent
// stopped it first.
func (lp *localProc) expire() {
	lp.mu.Lock()
	if lp.signalled {
		lp.mu.Unlock()
		return
	}
	lp.timedOut = true
	lp.mu.Unlock()
	_ = lp.p.Terminate(lp.grace)
}

func (lp *localProc) wait() {
	<-lp.p.Done()
	res := lp.p.Result()
	if lp.timer != nil {
		lp.timer.Stop()
	}
	rec := runner.Record{
		Pid: lp.p.Pid(), Start: lp.start, Timeout: lp.timeout, Grace: lp.grace,
		Exited: true, End: time.Now(), ExitCode: res.ExitCode,
	}
	if res.Err != nil {
		rec.Err = res.Err.Error()
		rec.WaitDelay = errors.Is(res.Err, exec.ErrWaitDelay)
	}
	lp.mu.Lock()
	rec.TimedOut = lp.timedOut
	lp.result = runner.Result{Record: rec}
	lp.mu.Unlock()
	close(lp.done)
}

// sinkWriter turns one of a child's streams into Sink output.
type sinkWriter struct {
	sink   runner.Sink
	stream runner.Stream
	off    int64 // written from one goroutine only
}

func (w *sinkWriter) Write(p []byte) (int, error) {
	w.sink.Output(w.stream, w.off, p)
	w.off += int64(len(p))
	return len(p), nil
}
