package agent

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/batonhq/baton/agent/internal/crashpoint"
	"github.com/batonhq/baton/agent/internal/redact"
	"github.com/batonhq/baton/agent/runner"
	batonv1 "github.com/batonhq/baton/gen/baton/v1"
)

// childRunner is where the agent's children run: the runner process on
// Unix, the agent process itself on Windows.
type childRunner interface {
	// instance identifies the runner process starts go to
	// (runner.Client.Instance), which takes them over exactly; empty when
	// children run in the agent process.
	instance() string
	// start starts a child; its output goes to sink. An error wrapping
	// runner.ErrUnavailable means nothing was started.
	start(ctx context.Context, req *runner.StartRequest, sink runner.Sink) (proc, error)
	// confirm says the outcome of attempt id is journaled.
	confirm(id int64)
	// renew extends the leases of the children of attempts ids to
	// until, where they end earlier (see lease.go); term is the lease
	// length. It does not block for long.
	renew(ids []int64, until time.Time, term time.Duration)
	// close detaches; children keep running where they run.
	close()
}

// proc is a running child as the agent uses it.
type proc interface {
	Pid() int
	// StartTime is when the child started; zero while unknown.
	StartTime() time.Time
	Done() <-chan struct{}
	Result() runner.Result
	// Terminate and Kill stop the child's process tree; reason is kept
	// with its exit, for an agent that learns the exit later.
	Terminate(grace time.Duration, reason string) error
	Kill(reason string) error
}

// attempt is a StartTask the agent accepted, or a child it re-adopted, and
// whose outcome is not yet journaled.
type attempt struct {
	id       int64
	task     *batonv1.StartTask // nil for a re-adopted child
	received time.Time
	grace    time.Duration // SIGTERM -> SIGKILL for a cancel without its own grace
	adopted  bool          // the child was started by an earlier agent process

	mu        sync.Mutex
	started   time.Time
	proc      proc           // nil until the child started
	logs      *attemptLogs   // set for a re-adopted child
	stop      *stopReason    // set when the agent decided to stop the child; the first reason wins
	pending   *pendingSignal // a stop to apply once the child has started
	announced bool           // a TaskStarted was queued for a re-adopted child
	// redact holds the secrets whose values are replaced in the outputs
	// (the runner redacts the streams); nil when there are none.
	redact *redact.Set
	// lease is when the attempt's lease ends as this process knows it
	// (zero: no lease, or a re-adopted child's, which its runner knows),
	// leaseTerm the lease length.
	lease     time.Time
	leaseTerm time.Duration
}

// startTime is when the child started, or when the StartTask arrived if it
// has not started yet.
func (att *attempt) startTime() time.Time {
	att.mu.Lock()
	defer att.mu.Unlock()
	if att.started.IsZero() {
		return att.received
	}
	return att.started
}

// handleStart accepts, rejects or answers a StartTask. An attempt starts at
// most once: for an attempt id the agent already holds or has journaled,
// nothing starts. The control plane repeats a StartTask when it believes
// the attempt never reached the agent, so the agent answers what it knows:
// a running attempt is in every Heartbeat, an unacknowledged outcome is
// sent again, and an attempt an earlier agent process was running when it
// stopped, and that no runner knows of, is reported FAILED, its real
// outcome being unknown. An acknowledged attempt is ignored.
//
// With leases (Welcome.lease) the attempt's lease runs from when the agent
// sent the message st.lease_seq names; a StartTask naming no recent
// message of s, or whose lease has passed already, is REJECTED: nothing
// runs, and the control plane may place it again.
func (a *Agent) handleStart(ctx context.Context, s *session, st *batonv1.StartTask) {
	id := st.GetAttemptId()
	log := a.log.With(slog.Int64("attempt_id", id))
	if id <= 0 {
		log.WarnContext(ctx, "ignoring start_task without a valid attempt_id")
		return
	}
	a.mu.Lock()
	if _, ok := a.attempts[id]; ok {
		a.mu.Unlock()
		log.InfoContext(ctx, "ignoring repeated start_task", slog.String("state", "running"))
		return
	}
	if state, tf, ok := a.journal.lookup(id); ok && state != stateRejected {
		switch state {
		case stateAbandoned:
			now := timestamppb.Now()
			tf = &batonv1.TaskFinished{
				AttemptId: id,
				Outcome:   batonv1.AttemptOutcome_ATTEMPT_OUTCOME_FAILED,
				ExitCode:  -1,
				Error:     "the agent stopped while the attempt ran; its outcome is unknown",
				StartTime: now,
				EndTime:   now,
			}
			a.reportLocked(ctx, log, tf, "journal: cannot record outcome")
			a.mu.Unlock()
		case stateFinished:
			if a.reporting[id] > 0 {
				// Its reporter sends it once it is written.
				a.mu.Unlock()
				log.InfoContext(ctx, "ignoring repeated start_task", slog.String("state", "reporting"))
				return
			}
			s := a.sess
			a.mu.Unlock()
			if s != nil {
				s.send(finishedMsg(tf))
			}
		default:
			a.mu.Unlock()
			log.InfoContext(ctx, "ignoring repeated start_task", slog.String("state", string(state)))
			return
		}
		log.InfoContext(ctx, "repeated start_task: reporting the known outcome", slog.String("state", string(state)),
			slog.String("outcome", tf.GetOutcome().String()))
		return
	}
	var reason string
	leaseUntil, leaseTerm, leaseOK := s.leaseUntil(st.GetLeaseSeq())
	switch {
	case a.draining:
		reason = "agent is draining"
	case len(a.attempts) >= a.cfg.Slots:
		reason = fmt.Sprintf("all %d slots are busy", a.cfg.Slots)
	case leaseTerm > 0 && !leaseOK:
		reason = fmt.Sprintf("start_task.lease_seq %d names no recent message of this session", st.GetLeaseSeq())
	case leaseTerm > 0 && !time.Now().Before(leaseUntil):
		reason = fmt.Sprintf("the attempt's lease (from message %d, for %s) expired before the start_task arrived",
			st.GetLeaseSeq(), leaseTerm)
	}
	if reason == "" {
		att := &attempt{id: id, task: st, received: time.Now(), grace: a.cfg.KillGrace}
		if leaseTerm > 0 {
			att.lease, att.leaseTerm = leaseUntil, leaseTerm
		}
		if d := positive(st.GetKillGrace()); d > 0 {
			att.grace = d
		}
		a.attempts[id] = att
		a.wg.Add(1)
		a.mu.Unlock()
		go a.runAttempt(context.WithoutCancel(ctx), att)
		return
	}
	now := timestamppb.Now()
	tf := &batonv1.TaskFinished{
		AttemptId: id,
		Outcome:   batonv1.AttemptOutcome_ATTEMPT_OUTCOME_REJECTED,
		ExitCode:  -1,
		Error:     reason,
		StartTime: now,
		EndTime:   now,
	}
	a.reportLocked(ctx, log, tf, "journal: cannot record rejection")
	a.mu.Unlock()
	log.InfoContext(ctx, "rejected start_task", slog.String("reason", reason))
}

// reportLocked records tf in the journal at once and, on a goroutine of
// its own, waits until it is written and sends it: the receive loop never
// waits for the disk. The caller holds a.mu, so a repeated StartTask
// handled next already finds tf in the journal.
func (a *Agent) reportLocked(ctx context.Context, log *slog.Logger, tf *batonv1.TaskFinished, failMsg string) {
	id := tf.GetAttemptId()
	wait := a.journal.finishLater(tf)
	a.reporting[id]++
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		err := wait()
		a.mu.Lock()
		if a.reporting[id]--; a.reporting[id] <= 0 {
			delete(a.reporting, id)
		}
		s := a.sess
		a.mu.Unlock()
		if err != nil {
			log.WarnContext(ctx, failMsg, slog.Any("error", err))
		}
		if s != nil {
			s.send(finishedMsg(tf))
		}
	}()
}

// runAttempt runs att to its outcome, journals the outcome, reports it and
// then confirms it to the runner.
func (a *Agent) runAttempt(ctx context.Context, att *attempt) {
	defer a.wg.Done()
	st := att.task
	log := a.log.With(slog.Int64("attempt_id", att.id), slog.Int64("run_id", st.GetRunId()),
		slog.String("job", st.GetJob()), slog.String("task", st.GetTask()))
	var tf *batonv1.TaskFinished
	if att.adopted {
		tf = a.await(ctx, att)
	} else {
		tf = a.execute(ctx, log, att)
	}

	// Journaled before it leaves a.attempts: until then a Hello lists it
	// as running, not as an outcome, and it is sent below.
	err := a.journal.finish(tf)
	crashpoint.Reach(crashpoint.AgentFinished, att.id)
	a.mu.Lock()
	delete(a.attempts, att.id)
	s := a.sess
	a.mu.Unlock()
	notify(a.changed)
	if s != nil {
		s.send(finishedMsg(tf))
	}
	if err != nil {
		log.ErrorContext(ctx, "journal: cannot record outcome; it is kept in memory only", slog.Any("error", err))
	} else {
		// Journaled: the output file may go and the runner may forget the
		// exit. Done once the outcome is on its way, which needs neither.
		a.removeOutput(att.id)
		a.runner.confirm(att.id)
	}
	log.InfoContext(ctx, "attempt finished", slog.String("outcome", tf.GetOutcome().String()),
		slog.Int("exit_code", int(tf.GetExitCode())), slog.String("error", tf.GetError()))
}

// await waits for a re-adopted child and returns its outcome. A child the
// runner was still starting when it was adopted is announced once its pid
// is known.
func (a *Agent) await(ctx context.Context, att *attempt) *batonv1.TaskFinished {
	att.mu.Lock()
	p, logs := att.proc, att.logs
	att.mu.Unlock()
	if sp, ok := p.(startedProc); ok && p.Pid() <= 0 {
		select {
		case <-sp.Started():
			a.announce(att)
		case <-p.Done():
		}
	}
	<-p.Done()
	res := p.Result()
	a.log.InfoContext(ctx, "re-adopted child ended", slog.Int64("attempt_id", att.id), slog.Int("exit_code", res.ExitCode))
	return a.outcome(att, res, logs)
}

// startedProc is a proc that says when its pid becomes known, as a
// runner.Proc adopted while the runner was still starting it does.
type startedProc interface {
	Started() <-chan struct{}
}

// announce sends the TaskStarted of a re-adopted child whose pid has
// become known since it was adopted, unless a Hello's backlog announced it
// already.
func (a *Agent) announce(att *attempt) {
	att.mu.Lock()
	if st := att.proc.StartTime(); !st.IsZero() {
		att.started = st
	}
	att.mu.Unlock()
	if ts := att.announcement(); ts != nil {
		a.send(&batonv1.ConnectRequest{Msg: &batonv1.ConnectRequest_TaskStarted{TaskStarted: ts}})
	}
}

// emitLog sends a log chunk on the current session, if any.
func (a *Agent) emitLog(c *batonv1.LogChunk) {
	a.send(&batonv1.ConnectRequest{Msg: &batonv1.ConnectRequest_LogChunk{LogChunk: c}})
}

func finishedMsg(tf *batonv1.TaskFinished) *batonv1.ConnectRequest {
	return &batonv1.ConnectRequest{Msg: &batonv1.ConnectRequest_TaskFinished{TaskFinished: tf}}
}
