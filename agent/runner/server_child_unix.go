//go:build unix

package runner

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os/exec"
	"sync"
	"time"

	"github.com/batonhq/baton/agent/internal/crashpoint"
	"github.com/batonhq/baton/agent/internal/redact"
	"github.com/batonhq/baton/agent/process"
)

// accept takes over a start request read from c, or refuses it, and
// returns the child to start (nil when refused). It is where the agent
// hands an attempt over to the runner:
//
//   - The request is taken over under s.mu, where welcomes are made too,
//     and only while c is the attached connection. From then on the child
//     is in s.atts until the agent confirms its exit: every later welcome
//     lists it, as running while it is still being started.
//   - A request read from a connection that another one has replaced
//     (the agent that sent it died, or reconnected) is dropped: the
//     welcome of the replacing connection did not list it, so the agent
//     holding that connection may start the attempt itself.
//
// So an attempt an agent sent to this runner that a welcome of this
// runner does not list never started and never will (welcome.Instance).
func (s *server) accept(c *sconn, req *StartRequest, leaseEnded bool) *ratt {
	log := s.log.With(slog.Int64("attempt_id", req.ID))
	refuse := func(msg string) *ratt {
		b, err := encodeJSON(&frame{Started: &started{ID: req.ID, Err: msg, LeaseExpired: leaseEnded}})
		if err != nil {
			return nil
		}
		c.control(b)
		// Written off the read loop, which must not wait for the agent.
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			c.flush()
		}()
		return nil
	}
	if leaseEnded {
		log.Warn("refusing a start request whose lease ended before the runner read it; the attempt is not started")
		return refuse(ErrLeaseExpired.Error())
	}
	if err := req.validate(); err != nil {
		return refuse(err.Error())
	}
	s.mu.Lock()
	switch _, known := s.atts[req.ID]; {
	case s.closing:
		s.mu.Unlock()
		return refuse("the runner is stopping")
	case s.conn != c:
		s.mu.Unlock()
		log.Info("dropping a start request of a replaced agent connection; the attempt is not started")
		return refuse("the agent connection was replaced before the runner read the request")
	case known:
		s.mu.Unlock()
		log.Warn("refusing a second start of an attempt")
		return refuse(fmt.Sprintf("attempt %d is already known to the runner", req.ID))
	}
	a := &ratt{id: req.ID, req: req, state: attStarting}
	if req.Lease > 0 {
		// Measured from now, when the request was read: later than the
		// agent's deadline by the socket's delay only.
		a.lease, a.leaseTerm = time.Now().Add(req.Lease), req.LeaseTerm
	}
	set := redact.New(req.Redact)
	a.out = newStreamSink(s, req.ID, Stdout, set)
	a.errs = newStreamSink(s, req.ID, Stderr, set)
	s.atts[req.ID] = a
	s.mu.Unlock()
	return a
}

// start starts a's child, which accept took over, and records it.
func (s *server) start(a *ratt) {
	req := a.req
	log := s.log.With(slog.Int64("attempt_id", req.ID))
	crashpoint.Reach(crashpoint.RunnerForking, req.ID)
	// The exit is handled on the goroutine that reaps the child, or here
	// if the child exits before the agent has been told it started.
	s.wg.Add(1)
	p, err := process.Start(process.Spec{
		Path: req.Path, Argv: req.Argv, Env: req.Env, Dir: req.Dir,
		Stdout: a.out, Stderr: a.errs,
		OnExit: func() { s.exitSeen(a, false) },
	})
	if err != nil {
		s.wg.Done()
		s.mu.Lock()
		delete(s.atts, req.ID)
		c := s.replyLocked(&frame{Started: &started{ID: req.ID, Err: err.Error()}})
		s.mu.Unlock()
		c.flush()
		s.notify()
		return
	}
	pidStart, _ := procStart(p.Pid())
	rec := Record{
		ID: req.ID, Pid: p.Pid(), PidStart: pidStart, BootID: bootID(), Start: time.Now(),
		Timeout: req.Timeout, Grace: req.Grace,
	}
	s.mu.Lock()
	a.proc, a.rec, a.state = p, rec, attRunning
	if req.Timeout > 0 {
		a.timer = time.AfterFunc(req.Timeout, func() { s.timeout(a) })
	}
	if !a.lease.IsZero() {
		a.leaseTimer = time.AfterFunc(time.Until(a.lease), func() { s.leaseCheck(a) })
	}
	pending := a.pending
	a.pending = nil
	c := s.replyLocked(&frame{Started: &started{ID: req.ID, Pid: rec.Pid, PidStart: pidStart, BootID: rec.BootID, Start: rec.Start}})
	s.mu.Unlock()
	c.flush()
	// Recorded after the agent was told, off its path: without the
	// record a later runner cannot tell the agent about this child if
	// this runner is killed, but the agent knows its pid and start time
	// from the reply. The exit record of this goroutine comes after it.
	if err := s.record(recStarted, &rec, false); err != nil {
		log.Warn("cannot record started child", slog.Any("error", err))
	}
	if pending != nil {
		s.apply(a, pending)
	}
	s.exitSeen(a, true)
}

// exitSeen is called when start has told the agent about a's child
// (fromStart) and when the child has exited; the second call handles the
// exit.
func (s *server) exitSeen(a *ratt, fromStart bool) {
	s.mu.Lock()
	if fromStart {
		a.startDone = true
	} else {
		a.exitSeen = true
	}
	second := a.startDone && a.exitSeen
	s.mu.Unlock()
	if second {
		s.exited(a)
	}
}

// exited records the exit of a's child and tells the agent.
func (s *server) exited(a *ratt) {
	defer s.wg.Done()
	res := a.proc.Result()
	end := time.Now()
	s.mu.Lock()
	for _, t := range []*time.Timer{a.timer, a.leaseTimer, a.fenceKill} {
		if t != nil {
			t.Stop()
		}
	}
	rec := a.rec
	rec.TimedOut = a.timedOut
	rec.Reason = a.reason
	if !a.leaseExpired.IsZero() {
		rec.LeaseExpired, rec.LeaseExpiredAt, rec.LeaseTerm = true, a.leaseExpired, a.leaseTerm
	}
	s.mu.Unlock()
	rec.Exited, rec.End, rec.ExitCode = true, end, res.ExitCode
	if res.Err != nil {
		rec.Err = res.Err.Error()
		rec.WaitDelay = errors.Is(res.Err, exec.ErrWaitDelay)
	}
	// The copies of the child's output have ended: what the redaction
	// held back (the start of a possible secret) is output now.
	a.out.flush()
	a.errs.flush()
	rec.StdoutTail, rec.StdoutBytes = a.out.tail()
	rec.StderrTail, rec.StderrBytes = a.errs.tail()
	// Durable before anyone is told: an agent killed now learns the exit
	// from the record.
	if err := s.record(recExited, &rec, a.req.Fsync); err != nil {
		s.log.Error("cannot record exit; it is only told to the attached agent",
			slog.Int64("attempt_id", a.id), slog.Any("error", err))
	}
	s.mu.Lock()
	a.rec, a.state, a.proc = rec, attExited, nil
	c := s.replyLocked(&frame{Exit: &rec})
	s.mu.Unlock()
	c.flush()
	if c == nil {
		s.notify()
	}
}

// timeout stops a's child unless the agent asked for a signal first or
// its lease ran out first.
func (s *server) timeout(a *ratt) {
	s.mu.Lock()
	if a.signalled || a.fenced || a.state != attRunning {
		s.mu.Unlock()
		return
	}
	a.timedOut = true
	p, grace := a.proc, a.req.Grace
	s.mu.Unlock()
	s.log.Info("child timed out; stopping its process tree", slog.Int64("attempt_id", a.id),
		slog.Duration("timeout", a.req.Timeout))
	_ = p.Terminate(grace)
}

// renew extends the leases of the children r names; see renew.
func (s *server) renew(r *renew) {
	remaining := leaseLeft(r.Remaining, r.SentAt)
	if remaining <= 0 {
		return
	}
	until := time.Now().Add(remaining)
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, id := range r.IDs {
		a := s.atts[id]
		if a == nil || (a.state != attStarting && a.state != attRunning) || a.fenced || !until.After(a.lease) {
			continue
		}
		// A child started without a lease gets one: the control plane
		// that renews it counts on it being fenced.
		a.lease = until
		if r.Term > 0 {
			a.leaseTerm = r.Term
		}
		switch {
		case a.leaseTimer != nil:
			a.leaseTimer.Reset(remaining)
		case a.state == attRunning:
			a.leaseTimer = time.AfterFunc(remaining, func() { s.leaseCheck(a) })
		}
		// A child still starting gets its timer in start.
	}
}

// leaseCheck stops a's child's tree once its lease has passed
// (self-fencing): SIGTERM, and SIGKILL after the child's grace even when
// the agent asked for a longer one. The expiry counts for the outcome
// unless the agent asked for a signal or the timeout struck first.
func (s *server) leaseCheck(a *ratt) {
	s.mu.Lock()
	if a.state != attRunning || a.fenced || a.timedOut {
		s.mu.Unlock()
		return
	}
	if d := time.Until(a.lease); d > 0 {
		// Renewed since the timer was set.
		a.leaseTimer.Reset(d)
		s.mu.Unlock()
		return
	}
	a.fenced = true
	if !a.signalled {
		a.leaseExpired = time.Now()
	}
	p, grace, term := a.proc, GraceLeft(a.lease, time.Now(), a.req.Grace), a.leaseTerm
	if grace > 0 {
		a.fenceKill = time.AfterFunc(grace, func() { _ = p.Kill() })
	}
	s.mu.Unlock()
	s.log.Warn("attempt lease expired; stopping the child's process tree (self-fencing)", slog.Int64("attempt_id", a.id),
		slog.Duration("lease", term), slog.Duration("kill_grace", grace))
	if err := p.Terminate(grace); err != nil {
		s.log.Warn("cannot signal child", slog.Int64("attempt_id", a.id), slog.Any("error", err))
	}
}

// signal stops a child as the agent asks.
func (s *server) signal(sig *signal) {
	s.mu.Lock()
	a := s.atts[sig.ID]
	if a == nil || (a.state != attStarting && a.state != attRunning) {
		s.mu.Unlock()
		return
	}
	a.signalled = true
	if a.reason == "" {
		a.reason = sig.Reason
	}
	if a.state == attStarting {
		if a.pending == nil || sig.Kill {
			a.pending = sig
		}
		s.mu.Unlock()
		return
	}
	s.mu.Unlock()
	s.apply(a, sig)
}

func (s *server) apply(a *ratt, sig *signal) {
	s.mu.Lock()
	p := a.proc
	s.mu.Unlock()
	if p == nil {
		return
	}
	var err error
	if sig.Kill {
		err = p.Kill()
	} else {
		err = p.Terminate(sig.Grace)
	}
	if err != nil {
		s.log.Warn("cannot signal child", slog.Int64("attempt_id", a.id), slog.Any("error", err))
	}
}

// confirm forgets exits the agent has journaled and records that in the
// background. Only a runner with no agent attached may become idle by it,
// so only then is its idle wait woken.
func (s *server) confirm(ids []int64) {
	s.mu.Lock()
	for _, id := range ids {
		a := s.atts[id]
		if a == nil || a.state == attStarting || a.state == attRunning {
			continue
		}
		delete(s.atts, id)
		s.recordConfirmed(id)
	}
	attached := s.conn != nil
	s.mu.Unlock()
	s.records.Flush()
	if !attached {
		s.notify()
	}
}

// streamSink is a child's stdout or stderr in the runner: it redacts the
// secrets of the child's StartRequest, keeps the tail and forwards the
// first ForwardCap bytes to the attached agent. Offsets, the tail and the
// byte count are all of the redacted stream.
type streamSink struct {
	s      *server
	id     int64
	stream Stream

	redMu sync.Mutex // serializes red: Write and flush
	red   *redact.Writer

	mu    sync.Mutex
	total int64
	buf   []byte
}

func newStreamSink(s *server, id int64, stream Stream, set *redact.Set) *streamSink {
	w := &streamSink{s: s, id: id, stream: stream}
	w.red = redact.NewWriter(set, w.record)
	return w
}

// Write never fails. It blocks while too much output waits for the agent.
func (w *streamSink) Write(p []byte) (int, error) {
	w.redMu.Lock()
	defer w.redMu.Unlock()
	return w.red.Write(p)
}

// flush records what the redaction held back; call it once the stream
// has ended.
func (w *streamSink) flush() {
	w.redMu.Lock()
	defer w.redMu.Unlock()
	w.red.Flush()
}

// record keeps and forwards redacted output.
func (w *streamSink) record(p []byte) {
	w.mu.Lock()
	off := w.total
	w.total += int64(len(p))
	w.buf = appendTail(w.buf, p)
	w.mu.Unlock()
	if off < ForwardCap {
		n := min(int64(len(p)), ForwardCap-off)
		if c := w.s.current(); c != nil {
			c.output(encodeOutput(w.id, w.stream, off, p[:n]))
		}
	}
}

// ReadFrom copies the child's stream to w with a recycled buffer, so that
// a child costs no fresh buffer per stream (os/exec copies through
// io.Copy, which uses ReadFrom).
func (w *streamSink) ReadFrom(r io.Reader) (int64, error) {
	buf := copyBufs.Get().(*[copyBufSize]byte)
	defer copyBufs.Put(buf)
	var total int64
	for {
		n, err := r.Read(buf[:])
		if n > 0 {
			_, _ = w.Write(buf[:n])
			total += int64(n)
		}
		if errors.Is(err, io.EOF) {
			return total, nil
		}
		if err != nil {
			return total, err
		}
	}
}

func (w *streamSink) tail() ([]byte, int64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return lastBytes(w.buf), w.total
}
