package scheduler

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/batonhq/baton/server/dispatch"
	"github.com/batonhq/baton/server/engine"
	"github.com/batonhq/baton/server/job"
	"github.com/batonhq/baton/server/store"
)

// agentRT is an agent known to the loop: connected, or holding attempts
// while it may still reconnect.
type agentRT struct {
	name        string
	sess        *dispatch.Session
	bootID      string
	labels      map[string]string
	slots       int
	version     string
	hostname    string
	os          string
	draining    bool
	lastSeen    time.Time
	connectedAt time.Time
	// attempts are the live attempts placed on this agent.
	attempts map[*attemptRT]struct{}
	// zombies are attempts the agent runs that no longer decide anything
	// (replaced after a loss); they still use its slots.
	zombies  map[int64]struct{}
	lastUsed uint64
	lost     bool
	// seq is the latest message of the current session the leases can be
	// measured from: 0 for its Hello, then each heartbeat's Seq.
	seq uint64
	// renewedAt is when the agent's leases were last renewed (its Hello
	// or latest heartbeat).
	renewedAt time.Time
}

func (s *Scheduler) newAgent(name string) *agentRT {
	return &agentRT{name: name, attempts: map[*attemptRT]struct{}{}, zombies: map[int64]struct{}{}, lastSeen: s.now()}
}

func (a *agentRT) usable() bool { return a.sess != nil && !a.draining && !a.lost }
func (a *agentRT) free() int    { return a.slots - len(a.attempts) - len(a.zombies) }

func (a *agentRT) record(state store.AgentState) *store.Agent {
	return &store.Agent{
		Name: a.name, Labels: a.labels, Slots: a.slots, Version: a.version, Hostname: a.hostname,
		OS: a.os, State: state, ConnectedAt: a.connectedAt, LastSeenAt: a.lastSeen,
	}
}

// agentFor returns the agent record for name, creating a disconnected one.
func (s *Scheduler) agentFor(name string) *agentRT {
	a := s.agents[name]
	if a == nil {
		a = s.newAgent(name)
		s.agents[name] = a
	}
	return a
}

// adopt re-creates a live attempt loaded from the store; its agent is
// expected to reconnect and re-attach it.
func (s *Scheduler) adopt(r *runRT, in *instRT, a *store.Attempt) {
	ag := s.agentFor(a.Agent)
	// The agent's lease on the attempt was renewed at the latest when the
	// previous control plane last heard from it, so counting from now
	// waits at least as long as the agent does before it stops the child.
	att := &attemptRT{id: a.ID, inst: in, agent: ag, no: a.No, state: a.State, renewedAt: s.now()}
	in.live = att
	in.agent = a.Agent
	r.inflight++
	if in.item != store.NoItem {
		r.tasks[in.task].inflight++
	}
	ag.attempts[att] = struct{}{}
	s.live[a.ID] = att
	// Rebuild the StartTask so it can be sent again if the agent never got it.
	name := r.taskName(in.task)
	task := r.g.Nodes[in.task].Task
	start := &dispatch.Start{AttemptID: a.ID, RunID: r.run.ID, Job: r.run.JobName, Task: name,
		Attempt: a.No, Timeout: task.Timeout.D(), KillGrace: s.cfg.KillGrace}
	if vars, err := r.itemVars(in); err == nil {
		argv, env, dir, err := r.g.Exprs.Expand(name, vars)
		if err == nil {
			if env == nil {
				env = map[string]string{}
			}
			maps.Copy(env, job.ParamEnv(r.run.Params))
			start.Argv, start.Env, start.WorkingDir = argv, env, dir
		}
	}
	if in.item != store.NoItem {
		start.Item = itemText(in.itemValue)
	}
	att.start = start
}

// helloInput admits an agent session.
type helloInput struct {
	sess  *dispatch.Session
	h     *dispatch.Hello
	reply chan error
}

func (in helloInput) apply(s *Scheduler) {
	h := in.h
	select {
	case <-in.sess.Done():
		// The stream ended while the Hello waited in the inbox.
		in.reply <- errUnavailable("the agent's stream ended before it was admitted")
		return
	default:
	}
	a := s.agents[h.Name]
	if a != nil && a.sess != nil {
		if h.BootID == "" || h.BootID != a.bootID {
			in.reply <- status.Errorf(codes.AlreadyExists, "an agent named %q is already connected", h.Name)
			return
		}
		// The same agent process reconnected before its old stream ended.
		a.sess.Close(status.Error(codes.Aborted, "replaced by a newer session of the same agent"))
	}
	if a == nil {
		a = s.newAgent(h.Name)
		s.agents[h.Name] = a
	}
	now := s.now()
	a.sess, a.bootID = in.sess, h.BootID
	a.seq, a.renewedAt = 0, now
	s.countAgents()
	a.labels, a.slots, a.version, a.hostname, a.os = h.Labels, h.Slots, h.Version, h.Hostname, h.OS
	a.draining, a.lost = false, false
	a.lastSeen, a.connectedAt = now, now
	rec := a.record(store.AgentConnected)
	s.write(func(ctx context.Context, tx store.Store) error {
		return tx.AgentUpsert(ctx, &store.AgentUpsertParams{Agent: rec})
	})
	sess := in.sess
	// The Hello renews the leases of the attempts it lists as running and
	// that are still this agent's.
	var renewed []int64
	for _, id := range h.Running {
		if att := s.live[id]; att != nil && att.agent == a {
			renewed = append(renewed, id)
		}
	}
	s.after(func() {
		sess.Send(&dispatch.Welcome{HeartbeatInterval: s.HeartbeatInterval(), ServerVersion: s.cfg.Version,
			Lease: s.cfg.AgentTimeout, Renewed: renewed})
		in.reply <- nil
	})
	s.onFail(func() { in.reply <- errUnavailable("control plane is restarting") })
	s.log.Info("agent connected", slog.String("agent", h.Name), slog.Int("slots", h.Slots),
		slog.Int("running", len(h.Running)), slog.Int("unacked", len(h.Unacked)))

	// Re-attach what the agent still holds.
	running := map[int64]bool{}
	for _, id := range h.Running {
		running[id] = true
	}
	unacked := map[int64]bool{}
	for _, f := range h.Unacked {
		unacked[f.AttemptID] = true
	}
	clear(a.zombies)
	for att := range a.attempts {
		att.renewedAt = now
		switch {
		case running[att.id]:
			if att.state == store.AttemptDispatched {
				s.started(a, &dispatch.Started{AttemptID: att.id, At: now})
			}
			if att.inst.run.eng.Stopping() {
				att.cancelSent = false
				s.cancelAttempt(att, "run is stopping")
			}
		case unacked[att.id]:
		case att.state == store.AttemptDispatched:
			// Sent again on the new session: its lease runs from the Hello.
			start := *att.start
			start.LeaseSeq = 0
			s.after(func() { sess.Send(&start) })
		default:
			s.lost(att.inst, fmt.Sprintf("agent %s restarted without attempt %d", a.name, att.id))
		}
	}
	for _, id := range h.Running {
		if att := s.live[id]; att != nil && att.agent == a {
			continue
		}
		// Not ours any more: it was replaced after a loss. Stop the
		// duplicate; its outcome is recorded as late history.
		a.zombies[id] = struct{}{}
		s.after(func() {
			sess.Send(&dispatch.Cancel{AttemptID: id, Reason: "the attempt was replaced after its agent was lost", KillGrace: s.cfg.KillGrace})
		})
	}
	for _, f := range h.Unacked {
		s.finished(a, f)
	}
}

// goneInput says a session's stream ended.
type goneInput struct {
	sess *dispatch.Session
	err  error
}

func (in goneInput) apply(s *Scheduler) {
	a := s.agents[in.sess.Name]
	if a == nil || a.sess != in.sess {
		return
	}
	a.sess = nil
	s.countAgents()
	rec := a.record(store.AgentDisconnected)
	s.write(func(ctx context.Context, tx store.Store) error {
		return tx.AgentUpsert(ctx, &store.AgentUpsertParams{Agent: rec})
	})
	s.log.Info("agent disconnected", slog.String("agent", a.name), slog.Int("attempts", len(a.attempts)), slog.Any("cause", in.err))
}

// messageInput carries a message of a live session.
type messageInput struct {
	sess *dispatch.Session
	msg  any
}

func (in messageInput) apply(s *Scheduler) {
	a := s.agents[in.sess.Name]
	if a == nil || a.sess != in.sess {
		return // a stale session; the agent repeats what matters
	}
	a.lastSeen = s.now()
	switch m := in.msg.(type) {
	case *dispatch.Heartbeat:
		s.heartbeat(a, m)
	case *dispatch.Started:
		s.started(a, m)
	case *dispatch.Log:
		s.logChunk(a, m)
	case *dispatch.Finished:
		s.finished(a, m)
	}
}

// heartbeat renews the leases of the agent's attempts as of the
// heartbeat's Seq and answers with a LeaseRenewal listing them. Attempts
// the agent runs that are no longer its own (replaced after a loss) are not
// renewed: the agent stops them when their leases run out, if a CancelTask
// has not stopped them before.
func (s *Scheduler) heartbeat(a *agentRT, hb *dispatch.Heartbeat) {
	a.draining = hb.Draining
	clear(a.zombies)
	for _, id := range hb.Running {
		if att := s.live[id]; att == nil || att.agent != a {
			a.zombies[id] = struct{}{}
		}
	}
	now := s.now()
	a.seq = max(a.seq, hb.Seq)
	a.renewedAt = now
	if len(a.attempts) == 0 {
		return
	}
	for att := range a.attempts {
		att.renewedAt = now
	}
	sess, seq := a.sess, hb.Seq
	s.after(func() {
		// Ids are known once the claims of this batch are committed.
		ids := make([]int64, 0, len(a.attempts))
		for att := range a.attempts {
			if att.id != 0 {
				ids = append(ids, att.id)
			}
		}
		if len(ids) > 0 {
			sess.Send(&dispatch.LeaseRenewal{Seq: seq, AttemptIDs: ids})
		}
	})
	ids := make([]int64, 0, len(a.attempts))
	for att := range a.attempts {
		if att.id != 0 {
			ids = append(ids, att.id)
		}
	}
	name, ttl := a.name, s.leaseTTL()
	s.lazily(func() {
		s.write(func(ctx context.Context, tx store.Store) error {
			_, err := tx.AttemptHeartbeat(ctx, &store.AttemptHeartbeatParams{Agent: name, AttemptIDs: ids, LeaseTTL: ttl})
			return err
		})
	})
}

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
	att.startUnwritten = true
	s.lazyStarts = append(s.lazyStarts, att)
	s.armLazy()
	in := att.inst
	in.run.eng.Transition(in.task, in.item, store.InstanceRunning)
}

// writeStart writes an attempt's start and its instance's move to running.
func (s *Scheduler) writeStart(att *attemptRT) {
	if !att.startUnwritten {
		return
	}
	att.startUnwritten = false
	id, name, ttl, at := att.id, att.agent.name, s.leaseTTL(), att.startedAt
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
		if a.sess != nil {
			a.sess.Send(&dispatch.Ack{AttemptIDs: []int64{f.AttemptID}})
		}
	}
	params := finishParams(a.name, f)
	att := s.live[f.AttemptID]
	if att != nil && att.agent == a && att.startUnwritten && params.StartedAt.IsZero() {
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
			return tx.EventAppend(ctx, &store.EventAppendParams{Events: []*store.Event{{
				RunID: old.RunID, At: s.now().UTC(), Task: old.Task, Item: old.Item, AttemptID: old.ID,
				Agent: a.name, ExitCode: params.ExitCode,
				Message: fmt.Sprintf("late outcome %s of attempt %d ignored: the attempt is %s", params.State, old.ID, old.State),
			}}})
		})
		delete(a.zombies, f.AttemptID)
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
		// Nothing ran; place it again without counting a retry.
		a.draining = true
		s.requeueAfter(in, att.id, "rejected by agent "+a.name+": "+errMsg, 0)
	case dispatch.OutcomeLeaseExpired:
		// The agent stopped the child on its own when the lease ran out:
		// the attempt is lost, as if its agent had been.
		s.afterLoss(in, att.id, "lease expired on agent "+a.name+": "+errMsg)
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
	att.startUnwritten = false
	delete(s.live, att.id)
	delete(att.agent.attempts, att)
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

// lost handles an instance whose attempt was lost with its agent: it is
// retried elsewhere when the task allows, else it is lost.
func (s *Scheduler) lost(in *instRT, msg string) {
	fence := in.attemptID
	if att := in.live; att != nil {
		s.release(att)
		id := att.id
		s.write(func(ctx context.Context, tx store.Store) error {
			_, err := tx.AttemptLose(ctx, &store.AttemptLoseParams{ID: id, Error: msg})
			if errors.Is(err, store.ErrStaleAttempt) {
				return nil
			}
			return err
		})
	}
	s.afterLoss(in, fence, msg)
}

// afterLoss retries an instance whose attempt fence was lost elsewhere when
// its task allows (a replacement), and otherwise settles it lost (or
// cancelled, when its run is stopping).
func (s *Scheduler) afterLoss(in *instRT, fence int64, msg string) {
	r := in.run
	in.losses++
	if m := s.cfg.Metrics; m != nil {
		s.after(m.lost.Inc)
	}
	task := r.g.Nodes[in.task].Task
	if !r.eng.Stopping() && engine.RetryAfterLoss(task, in.losses) {
		in.kind = store.AttemptReplacement
		s.requeueAfter(in, fence, msg, 0)
		return
	}
	state := store.InstanceLost
	if r.eng.Stopping() {
		state = store.InstanceCancelled
	}
	s.transition(in, state, msg, nil, fence)
	s.done(in, state, nil, msg)
}

// cancelAttempt asks an attempt's agent to stop it.
func (s *Scheduler) cancelAttempt(att *attemptRT, reason string) {
	if att.cancelSent || att.agent.sess == nil {
		return
	}
	att.cancelSent = true
	sess := att.agent.sess
	s.after(func() {
		sess.Send(&dispatch.Cancel{AttemptID: att.id, Reason: reason, KillGrace: s.cfg.KillGrace})
	})
}

// sweep marks agents that have been silent for longer than the agent
// timeout as lost, so no new work goes to them, and declares lost every
// attempt whose lease has certainly ended and whose child the agent has
// therefore stopped (lostAfter past its last renewal): only then may a
// replacement start.
func (s *Scheduler) sweep() {
	now := s.now()
	for _, a := range s.agents {
		if len(a.attempts) > 0 && now.Sub(a.renewedAt) > s.lostAfter() {
			msg := fmt.Sprintf("agent %s did not renew the attempt's lease: not heard from for %s (agent timeout %s, kill grace %s)",
				a.name, now.Sub(a.lastSeen).Round(time.Millisecond), s.cfg.AgentTimeout, s.cfg.KillGrace)
			for att := range a.attempts {
				if now.Sub(att.renewedAt) > s.lostAfter() {
					s.lost(att.inst, msg)
				}
			}
		}
		if a.lost || now.Sub(a.lastSeen) <= s.cfg.AgentTimeout {
			continue
		}
		a.lost = true
		if a.sess != nil {
			a.sess.Close(status.Error(codes.Unavailable, "agent timed out"))
			a.sess = nil
			s.countAgents()
		}
		s.log.Warn("agent lost", slog.String("agent", a.name), slog.Duration("silent_for", now.Sub(a.lastSeen)),
			slog.Int("attempts", len(a.attempts)))
		rec := a.record(store.AgentLost)
		s.write(func(ctx context.Context, tx store.Store) error {
			return tx.AgentUpsert(ctx, &store.AgentUpsertParams{Agent: rec})
		})
		clear(a.zombies)
	}
	s.at(now.Add(s.sweepInterval()), s.sweep)
}

func (s *Scheduler) sweepInterval() time.Duration {
	return min(max(s.cfg.AgentTimeout/10, 50*time.Millisecond), time.Second)
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
	default:
		p.State = store.AttemptFailed
	}
	if f.Outcome != dispatch.OutcomeStartFailed && f.Outcome != dispatch.OutcomeRejected {
		code := f.ExitCode
		p.ExitCode = &code
	}
	return p
}

// validUTF8 turns a child's raw output into text, replacing invalid bytes.
func validUTF8(b []byte) string { return strings.ToValidUTF8(string(b), "\uFFFD") }

// countAgents updates the connected-agents gauge.
func (s *Scheduler) countAgents() {
	m := s.cfg.Metrics
	if m == nil {
		return
	}
	n := 0
	for _, a := range s.agents {
		if a.sess != nil {
			n++
		}
	}
	m.agents.Set(float64(n))
}
