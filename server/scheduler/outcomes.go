package scheduler

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/batonhq/baton/server/dispatch"
	"github.com/batonhq/baton/server/engine"
	"github.com/batonhq/baton/server/store"
)

// What agents report about attempts: starts, output, outcomes. An outcome
// is recorded in the batch's transaction and acknowledged only after it
// commits; one for an attempt that no longer decides its instance (lost,
// replaced) is kept as late history.

func (s *Scheduler) started(a *agentRT, m *dispatch.Started) {
	att := s.live[m.AttemptID]
	if att == nil || att.agent != a || att.state != store.AttemptDispatched {
		return
	}
	att.state = store.AttemptRunning
	att.startedAt = m.At
	// Nothing waits for a start to be durable. It is written with the next
	// commit that happens anyway, or after lazyDelay; when the attempt's
	// outcome comes first, the outcome records the start itself and the
	// start costs no write at all.
	s.lazyStarted[att] = true
	s.lazyStarts = append(s.lazyStarts, att)
	s.armLazy()
	in := att.inst
	in.run.eng.Transition(in.task, in.item, store.InstanceRunning)
}

// writeStart writes an attempt's start and its instance's move to running.
func (s *Scheduler) writeStart(att *attemptRT) {
	if !s.lazyStarted[att] {
		return // written already, or ended first and its outcome records it
	}
	delete(s.lazyStarted, att)
	id, name, ttl, at := att.id, att.agent.Name, s.leaseTTL(), att.startedAt
	s.write(func(ctx context.Context, tx store.Store) error {
		return tx.AttemptStarted(ctx, &store.AttemptStartedParams{ID: id, Agent: name, StartedAt: at, LeaseTTL: ttl})
	})
	s.transition(att.inst, store.InstanceRunning, "", nil, id)
}

func (s *Scheduler) logChunk(a *agentRT, m *dispatch.Log) {
	att := s.live[m.AttemptID]
	if att == nil || att.agent != a || att.logged >= s.cfg.LogCap {
		return
	}
	data := m.Data
	if room := s.cfg.LogCap - att.logged; int64(len(data)) > room {
		data = data[:room]
	}
	att.logged += int64(len(data))
	s.b.logs = append(s.b.logs, &store.LogChunk{
		AttemptID: m.AttemptID, Stream: m.Stream, Offset: m.Offset, Data: data, At: s.now().UTC(),
	})
}

// finished records an attempt's outcome and decides its instance.
func (s *Scheduler) finished(a *agentRT, f *dispatch.Finished) {
	ack := func() {
		if a.Sess != nil {
			a.Sess.Send(&dispatch.Ack{AttemptIDs: []int64{f.AttemptID}})
		}
	}
	params := finishParams(a.Name, f)
	att := s.live[f.AttemptID]
	if att != nil && att.agent == a && s.lazyStarted[att] && params.StartedAt.IsZero() {
		params.StartedAt = att.startedAt
	}
	if att == nil || att.agent != a {
		// Late, repeated or unknown: keep it as history, never as the
		// outcome of its instance. A child the agent stopped when its lease
		// ran out is kept as cancelled: the attempt itself is lost already.
		if params.State == store.AttemptLost {
			params.State = store.AttemptCancelled
			params.Error = "stopped by the agent when the attempt's lease expired: " + params.Error
		}
		s.write(func(ctx context.Context, tx store.Store) error {
			_, err := tx.AttemptFinish(ctx, params)
			switch {
			case err == nil, errors.Is(err, store.ErrNotFound):
				// Recorded (an attempt of a run this scheduler could not
				// load), or unknown: nothing more to do.
				return nil
			case !errors.Is(err, store.ErrStaleAttempt):
				return err
			}
			old, err := tx.AttemptGet(ctx, &store.AttemptGetParams{ID: f.AttemptID})
			if err != nil {
				return err
			}
			if old.Agent != a.Name {
				// An agent may report only on attempts sent to it: this
				// one is not even history.
				s.log.Warn("outcome of another agent's attempt ignored", slog.String("agent", a.Name),
					slog.Int64("attempt", old.ID), slog.String("sent_to", old.Agent))
				return nil
			}
			return tx.EventAppend(ctx, &store.EventAppendParams{Events: []*store.Event{{
				RunID: old.RunID, At: s.now().UTC(), Task: old.Task, Item: old.Item, AttemptID: old.ID,
				Agent: a.Name, ExitCode: params.ExitCode,
				Message: fmt.Sprintf("late outcome %s of attempt %d ignored: the attempt is %s", params.State, old.ID, old.State),
			}}})
		})
		delete(a.Zombies, f.AttemptID)
		s.after(ack)
		return
	}
	s.release(att)
	in := att.inst
	r := in.run
	s.write(func(ctx context.Context, tx store.Store) error {
		_, err := tx.AttemptFinish(ctx, params)
		return err
	})
	if m := s.cfg.Metrics; m != nil {
		s.after(func() { m.finished.WithLabelValues(string(params.State)).Inc() })
	}
	task := r.g.Nodes[in.task].Task
	errMsg := f.Error
	exit := params.ExitCode
	switch f.Outcome {
	case dispatch.OutcomeSucceeded:
		s.transition(in, store.InstanceSucceeded, "", f.Outputs, att.id).ExitCode = exit
		s.done(in, store.InstanceSucceeded, f.Outputs, "")
	case dispatch.OutcomeRejected:
		msg := "rejected by agent " + a.Name + ": " + errMsg
		if r.eng.Stopping() {
			// Nothing ran, and nothing may start any more.
			s.transition(in, store.InstanceCancelled, msg, nil, att.id)
			s.done(in, store.InstanceCancelled, nil, msg)
			break
		}
		// Nothing ran; place it again without counting a retry.
		a.Draining = true
		s.requeueAfter(in, att.id, msg, 0)
	case dispatch.OutcomeNotAllowed:
		// The agent's allowlist refused it and nothing ran. Final: any
		// agent with the same policy would refuse it again, and placing
		// it elsewhere would route around the host's own rules. The
		// instance fails (its failure edges fire); restart the run once
		// the allowlist or the job is fixed.
		msg := cmp.Or(errMsg, "rejected by agent "+a.Name+": not allowed")
		s.transition(in, store.InstanceFailed, msg, nil, att.id)
		s.done(in, store.InstanceFailed, nil, msg)
	case dispatch.OutcomeLeaseExpired:
		// The agent stopped the child on its own when the lease ran out:
		// the attempt is lost, as if its agent had been.
		s.afterLoss(in, att.id, "lease expired on agent "+a.Name+": "+errMsg, true)
	case dispatch.OutcomeCancelled:
		if r.eng.Stopping() {
			s.transition(in, store.InstanceCancelled, errMsg, nil, att.id).ExitCode = exit
			s.done(in, store.InstanceCancelled, nil, errMsg)
			break
		}
		fallthrough
	default:
		in.failures++
		retry, delay := engine.RetryAfterFailure(task, in.failures)
		if retry && !r.eng.Stopping() {
			in.kind = store.AttemptRetry
			s.requeueAfter(in, att.id, errMsg, delay).ExitCode = exit
			break
		}
		s.transition(in, store.InstanceFailed, errMsg, f.Outputs, att.id).ExitCode = exit
		s.done(in, store.InstanceFailed, f.Outputs, errMsg)
	}
	s.after(ack)
}

// requeueAfter puts an instance whose attempt ended back to ready.
func (s *Scheduler) requeueAfter(in *instRT, fence int64, msg string, delay time.Duration) *store.Event {
	ev := s.transition(in, store.InstanceReady, msg, nil, fence)
	in.run.eng.Transition(in.task, in.item, store.InstanceReady)
	s.readyAfter(in, delay)
	return ev
}

// release detaches a live attempt from its agent and frees its slot. A
// start not yet written is dropped: what ends the attempt records it.
func (s *Scheduler) release(att *attemptRT) {
	delete(s.lazyStarted, att)
	delete(s.live, att.id)
	delete(att.agent.Attempts, att)
	in := att.inst
	in.live = nil
	r := in.run
	t := r.tasks[in.task]
	r.inflight--
	if in.item != store.NoItem {
		t.inflight--
	}
	s.unpark(r, t)
}

// done tells the engine an instance is done and acts on its decisions.
func (s *Scheduler) done(in *instRT, state store.InstanceState, outputs map[string]string, msg string) {
	r := in.run
	s.apply(r, r.eng.Done(in.task, in.item, state, outputs, msg))
	s.check(r)
}

// cancelAttempt asks an attempt's agent to stop it.
func (s *Scheduler) cancelAttempt(att *attemptRT, reason string) {
	if att.cancelSent || att.agent.Sess == nil {
		return
	}
	att.cancelSent = true
	sess := att.agent.Sess
	s.after(func() {
		sess.Send(&dispatch.Cancel{AttemptID: att.id, Reason: reason, KillGrace: s.cfg.KillGrace})
	})
}

func finishParams(agent string, f *dispatch.Finished) *store.AttemptFinishParams {
	p := &store.AttemptFinishParams{
		ID: f.AttemptID, Agent: agent, Error: f.Error, Outputs: f.Outputs,
		StdoutTail: validUTF8(f.StdoutTail), StderrTail: validUTF8(f.StderrTail),
		StartedAt: f.StartedAt, FinishedAt: f.FinishedAt,
	}
	switch f.Outcome {
	case dispatch.OutcomeSucceeded:
		p.State = store.AttemptSucceeded
	case dispatch.OutcomeTimedOut:
		p.State = store.AttemptTimedOut
	case dispatch.OutcomeCancelled:
		p.State = store.AttemptCancelled
	case dispatch.OutcomeRejected:
		p.State = store.AttemptCancelled
		p.Error = "rejected by the agent: " + f.Error
	case dispatch.OutcomeLeaseExpired:
		p.State = store.AttemptLost
	case dispatch.OutcomeNotAllowed:
		p.State = store.AttemptRejected
	default:
		p.State = store.AttemptFailed
	}
	if f.Outcome != dispatch.OutcomeStartFailed && f.Outcome != dispatch.OutcomeRejected && f.Outcome != dispatch.OutcomeNotAllowed {
		code := f.ExitCode
		p.ExitCode = &code
	}
	return p
}

// validUTF8 turns a child's raw output into text, replacing invalid bytes.
func validUTF8(b []byte) string { return strings.ToValidUTF8(string(b), "\uFFFD") }
