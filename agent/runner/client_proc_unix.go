//go:build unix

package runner

import (
	"cmp"
	"sync"
	"time"
)

// Proc is a child the runner runs for the agent. Its methods are safe for
// concurrent use.
type Proc struct {
	c     *Client
	id    int64
	other *otherRunner // set for a child of a runner of another version

	startedCh chan struct{}
	done      chan struct{}

	mu          sync.Mutex
	sink        Sink
	pid         int
	pidStart    uint64
	boot        string
	start       time.Time
	grace       time.Duration
	startErr    string
	unavailable bool
	// leaseExpired says the runner refused the start because its lease
	// had ended.
	leaseExpired bool
	lastSignal   *signal
	result       Result
}

func newProc(c *Client, id int64) *Proc {
	return &Proc{c: c, id: id, startedCh: make(chan struct{}), done: make(chan struct{})}
}

// ID returns the attempt id.
func (p *Proc) ID() int64 { return p.id }

// Pid returns the child's process id; 0 while a re-adopted child is still
// being started.
func (p *Proc) Pid() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.pid
}

// StartTime returns when the child started; zero while unknown.
func (p *Proc) StartTime() time.Time {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.start
}

// Grace returns the kill grace the child was started with.
func (p *Proc) Grace() time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.grace
}

// SetSink directs the child's further output to s.
func (p *Proc) SetSink(s Sink) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.sink = s
}

// Started is closed once the child's pid is known (Pid), or once it is
// known that it never will be (Done is closed then).
func (p *Proc) Started() <-chan struct{} { return p.startedCh }

// Done is closed once the child's outcome is known: it exited, it could
// not start, or its runner was lost.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Result returns how the child ended; valid once Done is closed.
func (p *Proc) Result() Result {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.result
}

// Terminate asks for the child's tree to be stopped: SIGTERM, then SIGKILL
// after grace (at once when grace is not positive). reason is kept with
// the exit record. It does not block.
func (p *Proc) Terminate(grace time.Duration, reason string) error {
	if grace <= 0 {
		return p.Kill(reason)
	}
	if p.other != nil {
		return p.signalOther(false, grace)
	}
	return p.c.signal(p, &signal{ID: p.id, Grace: grace, Reason: reason})
}

// Kill asks for the child's tree to be killed at once. reason is kept with
// the exit record. It does not block.
func (p *Proc) Kill(reason string) error {
	if p.other != nil {
		return p.signalOther(true, 0)
	}
	return p.c.signal(p, &signal{ID: p.id, Kill: true, Reason: reason})
}

func (p *Proc) output(o output) {
	p.mu.Lock()
	s := p.sink
	p.mu.Unlock()
	if s != nil {
		s.Output(o.stream, o.offset, o.data)
	}
}

func (p *Proc) setStarted(pid int, pidStart uint64, boot string, start time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.pid != 0 || pid == 0 {
		return
	}
	p.pid, p.pidStart, p.boot, p.start = pid, pidStart, boot, start
	close(p.startedCh)
}

// failStart ends a child that did not start; unavailable says the request
// never reached a runner.
func (p *Proc) failStart(msg string, unavailable bool) {
	p.mu.Lock()
	select {
	case <-p.startedCh:
	default:
		p.startErr, p.unavailable = msg, unavailable
		close(p.startedCh)
	}
	p.mu.Unlock()
	p.finish(Result{Record: Record{ID: p.id, ExitCode: -1}, StartErr: cmp.Or(msg, ErrUnavailable.Error())})
}

// lose ends a child whose outcome is unknown.
func (p *Proc) lose(why string) {
	p.mu.Lock()
	select {
	case <-p.startedCh:
	default:
		close(p.startedCh)
	}
	p.mu.Unlock()
	p.finish(Result{Record: Record{ID: p.id, ExitCode: -1}, Lost: why})
}

func (p *Proc) finish(res Result) {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.done:
		return
	default:
	}
	p.result = res
	if p.other != nil {
		p.other.mu.Lock()
		for _, t := range []*time.Timer{p.other.killTimer, p.other.leaseTimer, p.other.fenceKill} {
			if t != nil {
				t.Stop()
			}
		}
		p.other.mu.Unlock()
	}
	close(p.done)
}
