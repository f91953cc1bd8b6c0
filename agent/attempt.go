package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/batonhq/baton/agent/internal/crashpoint"
	"github.com/batonhq/baton/agent/runner"
	batonv1 "github.com/batonhq/baton/gen/baton/v1"
)

// runnerStartWait bounds how long a start waits for the runner while the
// agent is reattaching to it; after that the attempt is rejected.
const runnerStartWait = 10 * time.Second

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

// stopReason says why the agent stopped a child.
type stopReason struct {
	Outcome batonv1.AttemptOutcome `json:"outcome"`
	Msg     string                 `json:"msg"`
}

// encode turns why into the opaque reason the runner keeps.
func (why *stopReason) encode() string {
	b, err := json.Marshal(why)
	if err != nil {
		return ""
	}
	return string(b)
}

// decodeStopReason reads a reason an earlier agent process gave the runner.
func decodeStopReason(s string) *stopReason {
	if s == "" {
		return nil
	}
	var why stopReason
	if err := json.Unmarshal([]byte(s), &why); err != nil || why.Outcome == batonv1.AttemptOutcome_ATTEMPT_OUTCOME_UNSPECIFIED {
		return nil
	}
	return &why
}

// pendingSignal is a stop asked for before the child had started.
type pendingSignal struct {
	kill  bool
	grace time.Duration
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

// handleCancel stops an attempt's child: SIGTERM to its tree, SIGKILL
// after the grace. Unknown attempts are ignored.
func (a *Agent) handleCancel(ctx context.Context, ct *batonv1.CancelTask) {
	id := ct.GetAttemptId()
	a.mu.Lock()
	att := a.attempts[id]
	a.mu.Unlock()
	if att == nil {
		a.log.InfoContext(ctx, "ignoring cancel_task for an attempt that is not running", slog.Int64("attempt_id", id))
		return
	}
	grace := att.grace
	if d := positive(ct.GetKillGrace()); d > 0 {
		grace = d
	}
	msg := "cancelled"
	if r := ct.GetReason(); r != "" {
		msg += " (" + r + ")"
	}
	a.log.InfoContext(ctx, "cancelling attempt", slog.Int64("attempt_id", id),
		slog.String("reason", ct.GetReason()), slog.Duration("kill_grace", grace))
	a.stopAttempt(ctx, att, &stopReason{Outcome: batonv1.AttemptOutcome_ATTEMPT_OUTCOME_CANCELLED, Msg: msg}, grace, false)
}

// killAll kills the process trees of all running attempts.
func (a *Agent) killAll() {
	a.mu.Lock()
	atts := make([]*attempt, 0, len(a.attempts))
	for _, att := range a.attempts {
		atts = append(atts, att)
	}
	a.mu.Unlock()
	for _, att := range atts {
		a.stopAttempt(context.Background(), att, forcedStop, 0, true)
	}
}

// forcedStop is the reason for killing children on a forced shutdown.
var forcedStop = &stopReason{Outcome: batonv1.AttemptOutcome_ATTEMPT_OUTCOME_FAILED, Msg: "killed: the agent was stopped by force"}

// stopAttempt records why the agent stops att and signals its child: kill
// at once, or SIGTERM then SIGKILL after grace. A child that already exited
// keeps its own outcome (stopAttempt reports false); one that is not
// started yet is not started, or is signalled as soon as it has started.
func (a *Agent) stopAttempt(ctx context.Context, att *attempt, why *stopReason, grace time.Duration, kill bool) bool {
	att.mu.Lock()
	p := att.proc
	if p != nil {
		select {
		case <-p.Done():
			att.mu.Unlock()
			return false
		default:
		}
	}
	if att.stop == nil {
		att.stop = why
	}
	if p == nil {
		if att.pending == nil || kill {
			att.pending = &pendingSignal{kill: kill, grace: grace}
		}
		att.mu.Unlock()
		return true
	}
	reason := att.stop.encode()
	att.mu.Unlock()
	var err error
	if kill {
		err = p.Kill(reason)
	} else {
		err = p.Terminate(grace, reason)
	}
	if err != nil {
		a.log.WarnContext(ctx, "cannot signal child", slog.Int64("attempt_id", att.id), slog.Any("error", err))
	}
	return true
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

// execute records the attempt in the journal, starts its child, waits for
// it and returns the outcome.
//
// An attempt is handed from the agent to the runner (on Unix) in steps,
// each of which leaves enough behind for the next agent process to tell,
// should this one be killed right after it, whether the child may start
// or what its outcome is. R is the runner process the agent is attached
// to, A' the next agent process, which attaches to the runner (R, or a
// new one if R is gone) before it talks to the control plane.
//
//  1. Accepted: the attempt is in a.attempts only. Killed here, A' knows
//     nothing of it; the control plane sends the StartTask again (A' does
//     not list it) and A' starts it: it never started.
//  2. Begun: the journal holds it as started on R (journal.begin with
//     R's identity, runner.Client.Instance: R takes starts over
//     exactly); the request goes to R only (StartRequest.Instance: should
//     the client be attached to another runner by then, nothing is sent
//     and the attempt is REJECTED). Killed here, or before R took the
//     request over (3), R's welcome to A' does not list it; A' finds it
//     recorded with the very runner it attached to, or with one that has
//     exited on its own since with nothing left (Attachment.CleanExit), so
//     it never started and never will (journal.settleStarted drops the
//     record), and A' starts it when the control plane sends it again.
//     Recorded with a runner that was killed since, or with none, the
//     outcome is unknown: it becomes a tombstone (abandoned) and a
//     repeated StartTask is answered FAILED.
//  3. Sent: the start request is on R's socket. R takes it over only
//     while this agent's connection is the attached one; once A' has
//     attached, R drops it. Either R lists it to A' (4) or it never
//     starts (2).
//  4. Taken over: R holds it (it is forking the child). R lists it to A'
//     as running, without a pid yet; A' re-adopts it, learns the pid from
//     R's reply and reports its real exit.
//  5. Started: R has forked the child, told the attached agent its pid
//     and appended its start record. A' re-adopts it from the welcome and
//     reports its real exit. Should R die too, the next runner lists it
//     from R's records as an orphan (its outcome unknown, its process
//     group killed when it can be identified); if R died before its start
//     record was written, nobody lists it and the journal makes it
//     abandoned (2).
//  6. Exited: R has recorded the exit, then told the agent. A' gets it in
//     the welcome, journals the outcome and reports it.
//  7. Finished: the journal holds the outcome until the control plane
//     acknowledges it (listed in every Hello); then the agent confirms
//     the exit to R, which forgets it.
//  8. Acknowledged: a tombstone keeps the id, so a repeated StartTask
//     starts nothing (journalRetention, journalMaxTombstones).
//
// While this agent lives, a broken connection to R is handled the same
// way by the runner client: a start the same runner does not list was
// never taken over (the attempt is REJECTED: nothing ran), one a new
// runner does not list is lost (FAILED, outcome unknown). With children
// in the agent process (Windows) the journal holds no runner identity: a
// child dies with the agent, so step 2 always leads to a tombstone.
func (a *Agent) execute(ctx context.Context, log *slog.Logger, att *attempt) *batonv1.TaskFinished {
	end := func(outcome batonv1.AttemptOutcome, msg string) *batonv1.TaskFinished {
		return &batonv1.TaskFinished{
			AttemptId: att.id,
			Outcome:   outcome,
			ExitCode:  -1,
			Error:     strings.ToValidUTF8(msg, "\uFFFD"),
			StartTime: timestamppb.New(att.received),
			EndTime:   timestamppb.Now(),
		}
	}

	crashpoint.Reach(crashpoint.AgentAccepted, att.id)
	inst := a.runner.instance()
	if err := a.journal.begin(att.id, att.received, inst); err != nil {
		// Without the record a restarted agent might start the attempt
		// again, so it must not start. Nothing ran: the control plane may
		// place it elsewhere.
		log.ErrorContext(ctx, "journal: cannot record attempt; rejecting it", slog.Any("error", err))
		return end(batonv1.AttemptOutcome_ATTEMPT_OUTCOME_REJECTED, "agent cannot record the attempt: "+err.Error())
	}
	crashpoint.Reach(crashpoint.AgentBegun, att.id)
	req, err := a.prepare(att)
	if err != nil {
		log.WarnContext(ctx, "cannot start attempt", slog.Any("error", err))
		return end(batonv1.AttemptOutcome_ATTEMPT_OUTCOME_START_FAILED, err.Error())
	}
	// Only to the runner the journal names (or, with none named, to any).
	req.Instance = inst
	logs := newAttemptLogs(att.id, a.emitLog)

	att.mu.Lock()
	why := att.stop
	att.mu.Unlock()
	if why != nil {
		return end(why.Outcome, why.Msg+" before the child started")
	}
	lease, term := att.leaseDeadline()
	if !lease.IsZero() {
		// Turned into the time remaining only as the request is written.
		req.LeaseUntil, req.LeaseTerm = lease, term
	}
	sctx, cancel := context.WithTimeout(ctx, runnerStartWait)
	p, err := a.runner.start(sctx, req, logs)
	cancel()
	if errors.Is(err, runner.ErrLeaseExpired) {
		// Nothing ran: the control plane may place it again.
		log.WarnContext(ctx, "attempt lease expired before the child started; rejecting the attempt",
			slog.Duration("lease", term))
		return end(batonv1.AttemptOutcome_ATTEMPT_OUTCOME_REJECTED, "the attempt's lease expired before its child started")
	}
	if err != nil {
		if errors.Is(err, runner.ErrUnavailable) {
			log.ErrorContext(ctx, "runner unavailable; rejecting the attempt", slog.Any("error", err))
			return end(batonv1.AttemptOutcome_ATTEMPT_OUTCOME_REJECTED, "the agent's runner is unavailable: "+err.Error())
		}
		log.WarnContext(ctx, "child could not start", slog.Any("error", err))
		return end(batonv1.AttemptOutcome_ATTEMPT_OUTCOME_START_FAILED, err.Error())
	}
	crashpoint.Reach(crashpoint.AgentStarted, att.id)
	if later, term := att.leaseDeadline(); later.After(lease) {
		// Renewed while the request was on its way: the renewal may have
		// reached the runner before the request did.
		a.runner.renew([]int64{att.id}, later, term)
	}
	att.mu.Lock()
	att.proc = p
	att.started = p.StartTime()
	if att.started.IsZero() {
		att.started = time.Now()
	}
	pending := att.pending
	att.pending = nil
	var reason string
	if att.stop != nil {
		reason = att.stop.encode()
	}
	att.mu.Unlock()
	if pending != nil {
		// A cancel or a forced stop arrived while the child was starting.
		if pending.kill {
			_ = p.Kill(reason)
		} else {
			_ = p.Terminate(pending.grace, reason)
		}
	}
	if pid := p.Pid(); pid > 0 {
		log.InfoContext(ctx, "attempt started", slog.Int("pid", pid), slog.String("command", req.Argv[0]))
		a.send(&batonv1.ConnectRequest{Msg: &batonv1.ConnectRequest_TaskStarted{TaskStarted: &batonv1.TaskStarted{
			AttemptId: att.id,
			StartTime: timestamppb.New(att.startTime()),
			Pid:       int32(pid),
		}}})
	}
	logs.start()
	<-p.Done()
	return a.outcome(att, p.Result(), logs)
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

// outcome turns how att's child ended into its TaskFinished: the exit, the
// outputs the child wrote to $BATON_OUTPUT and the tails of its streams.
// logs gets the notes about the output file and catches up with output
// the agent did not see (the runner's tails are complete).
func (a *Agent) outcome(att *attempt, res runner.Result, logs *attemptLogs) *batonv1.TaskFinished {
	tf := &batonv1.TaskFinished{AttemptId: att.id, ExitCode: -1, StartTime: timestamppb.New(att.startTime())}
	end := func(outcome batonv1.AttemptOutcome, msg string) *batonv1.TaskFinished {
		tf.Outcome = outcome
		tf.Error = strings.ToValidUTF8(msg, "\uFFFD")
		if res.End.IsZero() {
			tf.EndTime = timestamppb.Now()
		} else {
			tf.EndTime = timestamppb.New(res.End)
		}
		return tf
	}
	if res.Lost != "" || res.StartErr != "" {
		logs.finish()
		tf.StdoutTail = logs.stdout.lastBytes()
		tf.StderrTail = logs.stderr.lastBytes()
		if res.Lost != "" {
			return end(batonv1.AttemptOutcome_ATTEMPT_OUTCOME_FAILED, res.Lost)
		}
		return end(batonv1.AttemptOutcome_ATTEMPT_OUTCOME_START_FAILED, res.StartErr)
	}

	outputs, notes, err := readOutputs(a.outPath(att.id))
	if err != nil {
		notes = append(notes, err.Error())
	}
	if res.ExitCode == 0 && res.WaitDelay {
		notes = append(notes, "a process outside the child's process group kept its output open; the rest of the output is lost")
	}
	logs.stdout.catchUp(res.StdoutTail, res.StdoutBytes)
	logs.stderr.catchUp(res.StderrTail, res.StderrBytes)
	for _, n := range notes {
		_, _ = fmt.Fprintf(logs.stderr, "baton-agent: %s\n", n) // logStream.Write never fails
	}
	logs.finish()
	tf.ExitCode = int32(res.ExitCode)
	tf.Outputs = outputs
	tf.StdoutTail = logs.stdout.lastBytes()
	tf.StderrTail = logs.stderr.lastBytes()

	att.mu.Lock()
	why := att.stop
	att.mu.Unlock()
	if why == nil {
		why = decodeStopReason(res.Reason)
	}
	withErr := func(msg string) string {
		if res.Err != "" {
			msg += ": " + res.Err
		}
		return msg
	}
	switch {
	case res.TimedOut:
		return end(batonv1.AttemptOutcome_ATTEMPT_OUTCOME_TIMED_OUT, withErr("timed out after "+res.Timeout.String()))
	case res.LeaseExpired:
		// The lease ran out before anything else stopped the child: the
		// control plane may have placed the attempt elsewhere since.
		a.log.Warn("attempt lease expired: the control plane did not renew it; child's process tree stopped (self-fenced)",
			slog.Int64("attempt_id", att.id), slog.Time("expired_at", res.LeaseExpiredAt),
			slog.Duration("lease", res.LeaseTerm), slog.Int("exit_code", res.ExitCode))
		return end(batonv1.AttemptOutcome_ATTEMPT_OUTCOME_LEASE_EXPIRED, withErr(leaseExpiredMsg(&res.Record)))
	case why != nil:
		return end(why.Outcome, withErr(why.Msg))
	case res.ExitCode == 0:
		return end(batonv1.AttemptOutcome_ATTEMPT_OUTCOME_SUCCEEDED, "")
	case res.Err != "":
		return end(batonv1.AttemptOutcome_ATTEMPT_OUTCOME_FAILED, res.Err)
	default:
		return end(batonv1.AttemptOutcome_ATTEMPT_OUTCOME_FAILED, fmt.Sprintf("exit status %d", res.ExitCode))
	}
}

// outPath is attempt id's $BATON_OUTPUT file.
func (a *Agent) outPath(id int64) string {
	return filepath.Join(a.outDir, strconv.FormatInt(id, 10))
}

// removeOutput releases attempt id's $BATON_OUTPUT file once its outcome
// is journaled.
func (a *Agent) removeOutput(id int64) {
	if err := a.outputs.release(a.outPath(id)); err != nil {
		a.log.Warn("cannot remove output file", slog.Int64("attempt_id", id), slog.Any("error", err))
	}
}

// emitLog sends a log chunk on the current session, if any.
func (a *Agent) emitLog(c *batonv1.LogChunk) {
	a.send(&batonv1.ConnectRequest{Msg: &batonv1.ConnectRequest_LogChunk{LogChunk: c}})
}

// prepare validates att's StartTask and builds the child's start request,
// creating its fresh output file. Errors name the offending field.
func (a *Agent) prepare(att *attempt) (*runner.StartRequest, error) {
	st := att.task
	argv := st.GetArgv()
	if len(argv) == 0 {
		return nil, errors.New("start_task.argv is empty")
	}
	if argv[0] == "" {
		return nil, errors.New("start_task.argv[0] is empty")
	}
	timeout, err := duration(st.GetTimeout(), "start_task.timeout")
	if err != nil {
		return nil, err
	}
	if _, err := duration(st.GetKillGrace(), "start_task.kill_grace"); err != nil {
		return nil, err
	}
	names := make([]string, 0, len(st.GetEnv()))
	for k := range st.GetEnv() {
		if k == "" || strings.ContainsAny(k, "=\x00") {
			return nil, fmt.Errorf("start_task.env: invalid variable name %q", k)
		}
		names = append(names, k)
	}
	slices.Sort(names)

	// The child runs in the agent's working directory unless the task
	// names one, and argv[0] is looked up in the agent's PATH: the runner
	// may have been started by an earlier agent process elsewhere.
	dir := st.GetWorkingDir()
	if dir == "" {
		dir = a.cwd
	} else if !filepath.IsAbs(dir) {
		dir = filepath.Join(a.cwd, dir)
	}
	path := argv[0]
	if filepath.Base(path) == path {
		p, err := exec.LookPath(path)
		if err != nil {
			return nil, fmt.Errorf("start process: %w", err)
		}
		path = p
	}
	if !filepath.IsAbs(path) {
		path = filepath.Join(dir, path)
	}

	outPath := a.outPath(att.id)
	if err := a.outputs.create(outPath); err != nil {
		return nil, fmt.Errorf("create output file: %w", err)
	}

	// Later entries win: the agent's environment, then the task's, then
	// the BATON_* variables the agent owns.
	env := make([]string, 0, len(a.env)+len(names)+7)
	env = append(env, a.env...)
	for _, k := range names {
		env = append(env, k+"="+st.GetEnv()[k])
	}
	env = append(env,
		"BATON_RUN_ID="+strconv.FormatInt(st.GetRunId(), 10),
		"BATON_JOB="+st.GetJob(),
		"BATON_TASK="+st.GetTask(),
		"BATON_ATTEMPT="+strconv.FormatInt(int64(st.GetAttempt()), 10),
		"BATON_ATTEMPT_ID="+strconv.FormatInt(att.id, 10),
		"BATON_ITEM="+st.GetItem(),
		"BATON_OUTPUT="+outPath,
	)
	return &runner.StartRequest{
		ID:      att.id,
		Path:    path,
		Argv:    argv,
		Env:     env,
		Dir:     dir,
		Timeout: timeout,
		Grace:   att.grace,
		Fsync:   a.cfg.Fsync,
	}, nil
}

// duration converts an optional proto duration; nil is zero.
func duration(d *durationpb.Duration, field string) (time.Duration, error) {
	if d == nil {
		return 0, nil
	}
	if err := d.CheckValid(); err != nil {
		return 0, fmt.Errorf("%s: %w", field, err)
	}
	v := d.AsDuration()
	if v < 0 {
		return 0, fmt.Errorf("%s: must not be negative, got %s", field, v)
	}
	return v, nil
}

// positive returns d when it is a valid positive duration, else zero.
func positive(d *durationpb.Duration) time.Duration {
	if d == nil || d.CheckValid() != nil || d.AsDuration() <= 0 {
		return 0
	}
	return d.AsDuration()
}

func finishedMsg(tf *batonv1.TaskFinished) *batonv1.ConnectRequest {
	return &batonv1.ConnectRequest{Msg: &batonv1.ConnectRequest_TaskFinished{TaskFinished: tf}}
}
