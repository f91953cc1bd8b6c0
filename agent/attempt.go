package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/batonhq/baton/agent/process"
	batonv1 "github.com/batonhq/baton/gen/baton/v1"
)

// runner starts the child process of an attempt. It is the seam where a
// later supervisor plugs in: one that lets children outlive the agent
// process and records their exit status in the journal.
type runner interface {
	start(spec process.Spec) (proc, error)
}

// proc is a running child as the agent uses it.
type proc interface {
	Pid() int
	Done() <-chan struct{}
	Result() process.Result
	Terminate(grace time.Duration) error
	Kill() error
}

// localRunner runs children as direct children of the agent process.
type localRunner struct{}

func (localRunner) start(spec process.Spec) (proc, error) {
	p, err := process.Start(spec)
	if err != nil {
		return nil, err
	}
	return p, nil
}

// stopReason says why the agent stopped a child.
type stopReason struct {
	outcome batonv1.AttemptOutcome
	msg     string
}

// attempt is a StartTask the agent accepted and has not yet finished.
type attempt struct {
	id       int64
	task     *batonv1.StartTask
	received time.Time
	grace    time.Duration // SIGTERM -> SIGKILL for a timeout or a cancel without its own grace

	mu      sync.Mutex
	started time.Time
	proc    proc        // nil until the child started
	stop    *stopReason // set when the agent decided to stop the child; the first reason wins
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
// stopped is reported FAILED, its real outcome being unknown. An
// acknowledged attempt is ignored.
func (a *Agent) handleStart(ctx context.Context, st *batonv1.StartTask) {
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
		var err error
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
			err = a.journal.finish(tf)
		case stateFinished:
		default:
			tf = nil
		}
		s := a.sess
		a.mu.Unlock()
		if err != nil {
			log.WarnContext(ctx, "journal: cannot record outcome", slog.Any("error", err))
		}
		if tf == nil {
			log.InfoContext(ctx, "ignoring repeated start_task", slog.String("state", string(state)))
			return
		}
		log.InfoContext(ctx, "repeated start_task: reporting the known outcome", slog.String("state", string(state)),
			slog.String("outcome", tf.GetOutcome().String()))
		if s != nil {
			s.send(finishedMsg(tf))
		}
		return
	}
	var reason string
	switch {
	case a.draining:
		reason = "agent is draining"
	case len(a.attempts) >= a.cfg.Slots:
		reason = fmt.Sprintf("all %d slots are busy", a.cfg.Slots)
	}
	if reason == "" {
		att := &attempt{id: id, task: st, received: time.Now(), grace: a.cfg.KillGrace}
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
	err := a.journal.finish(tf)
	s := a.sess
	a.mu.Unlock()
	log.InfoContext(ctx, "rejected start_task", slog.String("reason", reason))
	if err != nil {
		log.WarnContext(ctx, "journal: cannot record rejection", slog.Any("error", err))
	}
	if s != nil {
		s.send(finishedMsg(tf))
	}
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
	a.stopAttempt(ctx, att, &stopReason{outcome: batonv1.AttemptOutcome_ATTEMPT_OUTCOME_CANCELLED, msg: msg}, grace, false)
}

// killAll kills the process trees of all running attempts.
func (a *Agent) killAll() {
	a.mu.Lock()
	atts := make([]*attempt, 0, len(a.attempts))
	for _, att := range a.attempts {
		atts = append(atts, att)
	}
	a.mu.Unlock()
	reason := &stopReason{outcome: batonv1.AttemptOutcome_ATTEMPT_OUTCOME_FAILED, msg: "killed: the agent was stopped by force"}
	for _, att := range atts {
		a.stopAttempt(context.Background(), att, reason, 0, true)
	}
}

// stopAttempt records why the agent stops att and signals its child: kill
// at once, or SIGTERM then SIGKILL after grace. A child that already exited
// keeps its own outcome (stopAttempt reports false); one that has not
// started yet will not start.
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
	att.mu.Unlock()
	if p == nil {
		return true
	}
	var err error
	if kill {
		err = p.Kill()
	} else {
		err = p.Terminate(grace)
	}
	if err != nil {
		a.log.WarnContext(ctx, "cannot signal child", slog.Int64("attempt_id", att.id), slog.Any("error", err))
	}
	return true
}

// runAttempt runs att to its outcome, journals the outcome and reports it.
func (a *Agent) runAttempt(ctx context.Context, att *attempt) {
	defer a.wg.Done()
	st := att.task
	log := a.log.With(slog.Int64("attempt_id", att.id), slog.Int64("run_id", st.GetRunId()),
		slog.String("job", st.GetJob()), slog.String("task", st.GetTask()))
	tf := a.execute(ctx, log, att)

	a.mu.Lock()
	err := a.journal.finish(tf)
	delete(a.attempts, att.id)
	s := a.sess
	a.mu.Unlock()
	notify(a.changed)
	if err != nil {
		log.ErrorContext(ctx, "journal: cannot record outcome; it is kept in memory only", slog.Any("error", err))
	}
	log.InfoContext(ctx, "attempt finished", slog.String("outcome", tf.GetOutcome().String()),
		slog.Int("exit_code", int(tf.GetExitCode())), slog.String("error", tf.GetError()))
	if s != nil {
		s.send(finishedMsg(tf))
	}
}

// execute records the attempt in the journal, starts its child, waits for
// it and returns the outcome.
func (a *Agent) execute(ctx context.Context, log *slog.Logger, att *attempt) *batonv1.TaskFinished {
	tf := &batonv1.TaskFinished{AttemptId: att.id, ExitCode: -1, StartTime: timestamppb.New(att.received)}
	end := func(outcome batonv1.AttemptOutcome, msg string) *batonv1.TaskFinished {
		tf.Outcome = outcome
		tf.Error = strings.ToValidUTF8(msg, "\uFFFD")
		tf.EndTime = timestamppb.Now()
		return tf
	}

	if err := a.journal.begin(att.id, att.received); err != nil {
		// Without the record a restarted agent might start the attempt
		// again, so it must not start. Nothing ran: the control plane may
		// place it elsewhere.
		log.ErrorContext(ctx, "journal: cannot record attempt; rejecting it", slog.Any("error", err))
		return end(batonv1.AttemptOutcome_ATTEMPT_OUTCOME_REJECTED, "agent cannot record the attempt: "+err.Error())
	}
	spec, outPath, timeout, err := a.prepare(att)
	if err != nil {
		log.WarnContext(ctx, "cannot start attempt", slog.Any("error", err))
		return end(batonv1.AttemptOutcome_ATTEMPT_OUTCOME_START_FAILED, err.Error())
	}
	defer os.Remove(outPath)
	logs := newAttemptLogs(att.id, func(c *batonv1.LogChunk) {
		a.send(&batonv1.ConnectRequest{Msg: &batonv1.ConnectRequest_LogChunk{LogChunk: c}})
	})
	spec.Stdout, spec.Stderr = logs.stdout, logs.stderr

	att.mu.Lock()
	if why := att.stop; why != nil {
		att.mu.Unlock()
		return end(why.outcome, why.msg+" before the child started")
	}
	p, err := a.runner.start(spec)
	if err == nil {
		att.proc = p
		att.started = time.Now()
	}
	att.mu.Unlock()
	if err != nil {
		log.WarnContext(ctx, "child could not start", slog.Any("error", err))
		return end(batonv1.AttemptOutcome_ATTEMPT_OUTCOME_START_FAILED, err.Error())
	}
	tf.StartTime = timestamppb.New(att.started)
	log.InfoContext(ctx, "attempt started", slog.Int("pid", p.Pid()), slog.String("command", spec.Argv[0]))
	a.send(&batonv1.ConnectRequest{Msg: &batonv1.ConnectRequest_TaskStarted{TaskStarted: &batonv1.TaskStarted{
		AttemptId: att.id,
		StartTime: tf.StartTime,
		Pid:       int32(p.Pid()),
	}}})
	logs.start()

	if timeout > 0 {
		t := time.AfterFunc(timeout, func() {
			if a.stopAttempt(ctx, att, &stopReason{
				outcome: batonv1.AttemptOutcome_ATTEMPT_OUTCOME_TIMED_OUT,
				msg:     "timed out after " + timeout.String(),
			}, att.grace, false) {
				log.InfoContext(ctx, "attempt timed out; stopping its process tree",
					slog.Duration("timeout", timeout), slog.Duration("kill_grace", att.grace))
			}
		})
		defer t.Stop()
	}
	<-p.Done()
	res := p.Result()

	outputs, notes, err := readOutputs(outPath)
	if err != nil {
		notes = append(notes, err.Error())
	}
	if res.ExitCode == 0 && errors.Is(res.Err, exec.ErrWaitDelay) {
		notes = append(notes, "a process outside the child's process group kept its output open; the rest of the output is lost")
	}
	for _, n := range notes {
		fmt.Fprintf(logs.stderr, "baton-agent: %s\n", n)
	}
	logs.finish()
	tf.ExitCode = int32(res.ExitCode)
	tf.Outputs = outputs
	tf.StdoutTail = logs.stdout.lastBytes()
	tf.StderrTail = logs.stderr.lastBytes()

	att.mu.Lock()
	why := att.stop
	att.mu.Unlock()
	switch {
	case why != nil:
		msg := why.msg
		if res.Err != nil {
			msg += ": " + res.Err.Error()
		}
		return end(why.outcome, msg)
	case res.ExitCode == 0:
		return end(batonv1.AttemptOutcome_ATTEMPT_OUTCOME_SUCCEEDED, "")
	default:
		msg := fmt.Sprintf("exit status %d", res.ExitCode)
		if res.Err != nil {
			msg = res.Err.Error()
		}
		return end(batonv1.AttemptOutcome_ATTEMPT_OUTCOME_FAILED, msg)
	}
}

// prepare validates att's StartTask and builds the child's spec, creating
// its fresh output file. Errors name the offending field.
func (a *Agent) prepare(att *attempt) (spec process.Spec, outPath string, timeout time.Duration, err error) {
	st := att.task
	argv := st.GetArgv()
	if len(argv) == 0 {
		return process.Spec{}, "", 0, errors.New("start_task.argv is empty")
	}
	if argv[0] == "" {
		return process.Spec{}, "", 0, errors.New("start_task.argv[0] is empty")
	}
	timeout, err = duration(st.GetTimeout(), "start_task.timeout")
	if err != nil {
		return process.Spec{}, "", 0, err
	}
	if _, err := duration(st.GetKillGrace(), "start_task.kill_grace"); err != nil {
		return process.Spec{}, "", 0, err
	}
	names := make([]string, 0, len(st.GetEnv()))
	for k := range st.GetEnv() {
		if k == "" || strings.ContainsAny(k, "=\x00") {
			return process.Spec{}, "", 0, fmt.Errorf("start_task.env: invalid variable name %q", k)
		}
		names = append(names, k)
	}
	slices.Sort(names)

	outPath = filepath.Join(a.outDir, strconv.FormatInt(att.id, 10))
	if err := os.WriteFile(outPath, nil, 0o600); err != nil {
		return process.Spec{}, "", 0, fmt.Errorf("create output file: %w", err)
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
	return process.Spec{Argv: argv, Env: env, Dir: st.GetWorkingDir()}, outPath, timeout, nil
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
