//go:build unix

package agent

import (
	"cmp"
	"context"
	"log/slog"
	"time"

	"github.com/batonhq/baton/agent/internal/redact"
	"github.com/batonhq/baton/agent/runner"
)

// attached takes over what the runner holds that this agent process has
// no attempt for: children still running (re-adopted), exits recorded
// while no agent held them, and children of a runner that was killed. It
// runs on every attach, before the runner delivers anything else.
func (a *Agent) attached(r childRunner, at *runner.Attachment) {
	a.mu.Lock()
	if !a.attachedOnce {
		a.attachedOnce, a.handedOver = true, []string{at.Instance, at.CleanExit}
	}
	a.mu.Unlock()
	for _, p := range at.Running {
		a.adopt(r, p, redact.New(at.Redact[p.ID()]))
	}
	for _, rec := range at.Exited {
		a.settle(r, runner.Result{Record: *rec}, redact.New(at.Redact[rec.ID]))
	}
	for _, rec := range at.Orphaned {
		a.settle(r, runner.Result{Record: runner.Record{ID: rec.ID, ExitCode: -1, Start: rec.Start}, Lost: runner.LostRunnerKilled}, nil)
	}
}

// adopt makes a running child an attempt of this agent process again: it
// is listed as running, its output is streamed and its outcome reported
// as for a child this process started. red holds its secrets, for its
// outputs (its runner redacts its streams).
func (a *Agent) adopt(r childRunner, p *runner.Proc, red *redact.Set) {
	id := p.ID()
	log := a.log.With(slog.Int64("attempt_id", id))
	a.mu.Lock()
	if _, ok := a.attempts[id]; ok || a.stopping {
		// Stopping: the runner keeps the child for the next agent.
		a.mu.Unlock()
		return
	}
	if state, _, known := a.journal.lookup(id); known && state != stateStarted {
		// The outcome is journaled already; a child running under the id
		// must not run on unaccounted for.
		a.wg.Add(1)
		a.mu.Unlock()
		log.Warn("runner runs an attempt whose outcome is already known; killing it", slog.String("state", string(state)))
		_ = p.Kill("")
		go func() {
			defer a.wg.Done()
			<-p.Done()
			r.confirm(id)
		}()
		return
	}
	start := p.StartTime()
	if start.IsZero() {
		start = time.Now()
	}
	att := &attempt{
		id:       id,
		received: start,
		grace:    cmp.Or(p.Grace(), a.cfg.KillGrace),
		adopted:  true,
		started:  start,
		redact:   red,
		proc:     p,
		logs:     newAttemptLogs(id, a.emitLog),
	}
	p.SetSink(att.logs)
	att.logs.start()
	a.attempts[id] = att
	a.wg.Add(1)
	a.mu.Unlock()
	log.Info("re-adopted a running child", slog.Int("pid", p.Pid()), slog.Time("start_time", start))
	if a.isAborted() {
		a.stopAttempt(context.Background(), att, forcedStop, 0, true)
	}
	go a.runAttempt(context.Background(), att)
}

// settle journals and reports the outcome of a child that ended while no
// agent process held it, then confirms it to the runner. An outcome the
// journal already holds is only confirmed. red holds the child's secrets,
// for its outputs.
func (a *Agent) settle(r childRunner, res runner.Result, red *redact.Set) {
	id := res.ID
	log := a.log.With(slog.Int64("attempt_id", id))
	a.mu.Lock()
	if _, ok := a.attempts[id]; ok {
		a.mu.Unlock() // its own goroutine reports and confirms it
		return
	}
	state, _, known := a.journal.lookup(id)
	a.mu.Unlock()
	if known && state != stateStarted {
		r.confirm(id)
		return
	}
	start := res.Start
	if start.IsZero() {
		start = time.Now()
	}
	att := &attempt{id: id, received: start, started: start, redact: red}
	tf := a.outcome(att, res, newAttemptLogs(id, a.emitLog))
	a.mu.Lock()
	a.reporting[id]++
	a.mu.Unlock()
	err := a.journal.finish(tf)
	a.mu.Lock()
	if a.reporting[id]--; a.reporting[id] <= 0 {
		delete(a.reporting, id)
	}
	s := a.sess
	a.mu.Unlock()
	if err != nil {
		// Not confirmed: the runner keeps the exit for the next agent.
		log.Error("journal: cannot record outcome; it is kept in memory only", slog.Any("error", err))
	} else {
		r.confirm(id)
		a.removeOutput(id)
	}
	log.Info("outcome of a child that ended while no agent held it", slog.String("outcome", tf.GetOutcome().String()),
		slog.Int("exit_code", int(tf.GetExitCode())), slog.String("error", tf.GetError()))
	if s != nil {
		s.send(finishedMsg(tf))
	}
}
