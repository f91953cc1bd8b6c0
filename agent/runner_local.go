package agent

import (
	"context"
	"errors"
	"os/exec"
	"sync"
	"time"

	"github.com/batonhq/baton/agent/internal/redact"
	"github.com/batonhq/baton/agent/process"
	"github.com/batonhq/baton/agent/runner"
)

// localRunner runs children as direct children of the agent process, the
// way the agent works on Windows: there a child runs in a job object that
// ends with the agent, so children do not outlive it. It enforces the
// children's timeouts and leases itself, as the runner does.
type localRunner struct {
	mu    sync.Mutex
	procs map[int64]*localProc // running children, for renewals
}

func newLocalRunner() *localRunner {
	return &localRunner{procs: make(map[int64]*localProc)}
}

// instance is empty: a child of the agent process ends with it, so an
// attempt recorded as started by an earlier agent process may have run.
func (*localRunner) instance() string { return "" }
func (*localRunner) confirm(int64)    {}
func (*localRunner) close()           {}

func (r *localRunner) start(_ context.Context, req *runner.StartRequest, sink runner.Sink) (proc, error) {
	if !req.LeaseUntil.IsZero() && !time.Now().Before(req.LeaseUntil) {
		return nil, runner.ErrLeaseExpired
	}
	lp := &localProc{timeout: req.Timeout, grace: req.Grace, done: make(chan struct{})}
	set := redact.New(req.Redact)
	lp.out = newSinkWriter(sink, runner.Stdout, set)
	lp.errs = newSinkWriter(sink, runner.Stderr, set)
	p, err := process.Start(process.Spec{
		Path:   req.Path,
		Argv:   req.Argv,
		Env:    req.Env,
		Dir:    req.Dir,
		Stdout: lp.out,
		Stderr: lp.errs,
	})
	if err != nil {
		return nil, err
	}
	lp.p = p
	lp.start = time.Now()
	lp.mu.Lock()
	if req.Timeout > 0 {
		lp.timer = time.AfterFunc(req.Timeout, lp.expire)
	}
	switch {
	case !req.LeaseUntil.IsZero():
		lp.lease, lp.leaseTerm = req.LeaseUntil, req.LeaseTerm
	case req.Lease > 0:
		lp.lease, lp.leaseTerm = lp.start.Add(req.Lease), req.LeaseTerm
	}
	if !lp.lease.IsZero() {
		lp.leaseTimer = time.AfterFunc(time.Until(lp.lease), lp.leaseCheck)
	}
	lp.mu.Unlock()
	r.mu.Lock()
	r.procs[req.ID] = lp
	r.mu.Unlock()
	go func() {
		lp.wait()
		r.mu.Lock()
		if r.procs[req.ID] == lp {
			delete(r.procs, req.ID)
		}
		r.mu.Unlock()
	}()
	return lp, nil
}

func (r *localRunner) renew(ids []int64, until time.Time, term time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, id := range ids {
		if lp := r.procs[id]; lp != nil {
			lp.renew(until, term)
		}
	}
}

// localProc is a child of the agent process.
type localProc struct {
	p       *process.Process
	start   time.Time
	timeout time.Duration
	grace   time.Duration
	done    chan struct{}
	// out and errs redact and forward the child's streams.
	out, errs *sinkWriter

	mu        sync.Mutex
	timer     *time.Timer
	signalled bool
	timedOut  bool
	// lease is when the child's lease ends (zero: none) and leaseTerm its
	// length; fenced says it ran out and the tree is being stopped,
	// leaseExpired when, if that came before any other stop.
	lease        time.Time
	leaseTerm    time.Duration
	leaseTimer   *time.Timer
	fenceKill    *time.Timer
	fenced       bool
	leaseExpired time.Time
	exited       bool
	result       runner.Result
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
// stopped it first or its lease ran out first.
func (lp *localProc) expire() {
	lp.mu.Lock()
	if lp.signalled || lp.fenced {
		lp.mu.Unlock()
		return
	}
	lp.timedOut = true
	lp.mu.Unlock()
	_ = lp.p.Terminate(lp.grace)
}

// renew extends the child's lease to until unless it ends later already;
// a child without a lease gets one.
func (lp *localProc) renew(until time.Time, term time.Duration) {
	lp.mu.Lock()
	defer lp.mu.Unlock()
	if lp.exited || lp.fenced || !until.After(lp.lease) {
		return
	}
	lp.lease = until
	if term > 0 {
		lp.leaseTerm = term
	}
	if lp.leaseTimer != nil {
		lp.leaseTimer.Reset(time.Until(until))
	} else {
		lp.leaseTimer = time.AfterFunc(time.Until(until), lp.leaseCheck)
	}
}

// leaseCheck stops the child's tree once its lease has passed: SIGTERM,
// then SIGKILL after its grace, even when the agent asked for a longer
// one.
func (lp *localProc) leaseCheck() {
	lp.mu.Lock()
	if lp.exited || lp.fenced || lp.timedOut {
		lp.mu.Unlock()
		return
	}
	if d := time.Until(lp.lease); d > 0 {
		lp.leaseTimer.Reset(d)
		lp.mu.Unlock()
		return
	}
	lp.fenced = true
	if !lp.signalled {
		lp.leaseExpired = time.Now()
	}
	grace := runner.GraceLeft(lp.lease, time.Now(), lp.grace)
	if grace > 0 {
		lp.fenceKill = time.AfterFunc(grace, func() { _ = lp.p.Kill() })
	}
	lp.mu.Unlock()
	_ = lp.p.Terminate(grace)
}

func (lp *localProc) wait() {
	<-lp.p.Done()
	res := lp.p.Result()
	// The child's output has been read to the end: what the redaction
	// held back goes out now, before the exit is told.
	lp.out.flush()
	lp.errs.flush()
	rec := runner.Record{
		Pid: lp.p.Pid(), Start: lp.start, Timeout: lp.timeout, Grace: lp.grace,
		Exited: true, End: time.Now(), ExitCode: res.ExitCode,
	}
	if res.Err != nil {
		rec.Err = res.Err.Error()
		rec.WaitDelay = errors.Is(res.Err, exec.ErrWaitDelay)
	}
	lp.mu.Lock()
	lp.exited = true
	for _, t := range []*time.Timer{lp.timer, lp.leaseTimer, lp.fenceKill} {
		if t != nil {
			t.Stop()
		}
	}
	rec.TimedOut = lp.timedOut
	if !lp.leaseExpired.IsZero() {
		rec.LeaseExpired, rec.LeaseExpiredAt, rec.LeaseTerm = true, lp.leaseExpired, lp.leaseTerm
	}
	lp.result = runner.Result{Record: rec}
	lp.mu.Unlock()
	close(lp.done)
}

// sinkWriter turns one of a child's streams into Sink output, with the
// child's secrets redacted (as the runner does on Unix): offsets count the
// redacted stream.
type sinkWriter struct {
	sink   runner.Sink
	stream runner.Stream

	mu  sync.Mutex // Write comes from the copying goroutine, flush after it
	red *redact.Writer
	off int64
}

func newSinkWriter(sink runner.Sink, stream runner.Stream, set *redact.Set) *sinkWriter {
	w := &sinkWriter{sink: sink, stream: stream}
	w.red = redact.NewWriter(set, func(p []byte) {
		w.sink.Output(w.stream, w.off, p)
		w.off += int64(len(p))
	})
	return w
}

func (w *sinkWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.red.Write(p)
}

// flush outputs what the redaction held back; call it at the stream's end.
func (w *sinkWriter) flush() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.red.Flush()
}
