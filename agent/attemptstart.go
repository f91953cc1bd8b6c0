package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/batonhq/baton/agent/allow"
	"github.com/batonhq/baton/agent/internal/crashpoint"
	"github.com/batonhq/baton/agent/internal/redact"
	"github.com/batonhq/baton/agent/runner"
	batonv1 "github.com/batonhq/baton/gen/baton/v1"
)

// runnerStartWait bounds how long a start waits for the runner while the
// agent is reattaching to it; after that the attempt is rejected.
const runnerStartWait = 10 * time.Second

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
	var denied *allow.Denied
	if errors.As(err, &denied) {
		// The host's own rules refuse it: nothing starts, and the control
		// plane must not place it elsewhere as if it were lost.
		msg := fmt.Sprintf("%s is not allowed on agent %s: %s", denied.What, a.cfg.Name, denied.Why)
		log.WarnContext(ctx, "attempt refused by the agent's allowlist; nothing started", slog.String("reason", msg))
		return end(batonv1.AttemptOutcome_ATTEMPT_OUTCOME_NOT_ALLOWED, msg)
	}
	if err != nil {
		log.WarnContext(ctx, "cannot start attempt", slog.Any("error", err))
		return end(batonv1.AttemptOutcome_ATTEMPT_OUTCOME_START_FAILED, err.Error())
	}
	att.mu.Lock()
	att.redact = redact.New(req.Redact)
	att.mu.Unlock()
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
	envNames := slices.Clone(names)
	for k := range st.GetSecretEnv() {
		if k == "" || strings.ContainsAny(k, "=\x00") {
			return nil, fmt.Errorf("start_task.secret_env: invalid variable name %q", k)
		}
		envNames = append(envNames, k)
	}
	if err := a.cfg.Policy.Env(envNames); err != nil {
		return nil, err
	}

	// The child runs in the agent's working directory unless the task
	// names one, and argv[0] is looked up in the agent's PATH: the runner
	// may have been started by an earlier agent process elsewhere.
	//
	// The policy judges the program as it will really be started: that
	// resolved path with its symbolic links evaluated, which is also the
	// path the runner starts, so a link changed meanwhile cannot swap
	// the program. Likewise the working directory.
	dir := st.GetWorkingDir()
	if dir == "" {
		dir = a.cwd
	} else {
		if !filepath.IsAbs(dir) {
			dir = filepath.Join(a.cwd, dir)
		}
		if dir, err = a.cfg.Policy.Dir(filepath.Clean(dir)); err != nil {
			return nil, err
		}
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
	if path, err = a.cfg.Policy.Program(filepath.Clean(path)); err != nil {
		return nil, err
	}
	secretEnv, secrets, err := a.resolveSecrets(st.GetSecretEnv())
	if err != nil {
		return nil, err
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
	env = append(env, secretEnv...)
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
		Redact:  secrets,
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
