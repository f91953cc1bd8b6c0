package scheduler

import (
	"context"
	"fmt"
	"log/slog"
	"maps"

	"github.com/batonhq/baton/server/dispatch"
	"github.com/batonhq/baton/server/job"
	"github.com/batonhq/baton/server/store"
)

// Agents as the loop sees them: the registry is dispatch.Agents; here a
// Hello re-attaches the attempts the agent still runs and takes its
// unacknowledged outcomes, and a session's end is recorded.

// agentRT is an agent of the registry (dispatch.Agents), holding the
// loop's live attempts.
type agentRT = dispatch.Agent[*attemptRT]

// agentFor returns the agent named name, creating a disconnected one.
func (s *Scheduler) agentFor(name string) *agentRT { return s.agents.Ensure(name, s.now()) }

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
	ag.Attempts[att] = struct{}{}
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
			start.Secrets = r.g.Exprs.Secrets(name)
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
		in.reply <- dispatch.Unavailable("the agent's stream ended before it was admitted")
		return
	default:
	}
	now := s.now()
	a, err := s.agents.Admit(in.sess, h, now)
	if err != nil {
		in.reply <- err
		return
	}
	s.countAgents()
	rec := a.Record(store.AgentConnected)
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
	s.onFail(func() { in.reply <- dispatch.Unavailable("control plane is restarting") })
	if h.Pending != "" {
		s.log.Warn("agent connected and gets no work until approved", slog.String("agent", h.Name),
			slog.Any("labels", h.Labels), slog.Int("slots", h.Slots), slog.String("pending", h.Pending))
	}
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
	clear(a.Zombies)
	for _, att := range byID(a.Attempts) {
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
			s.lost(att.inst, fmt.Sprintf("agent %s restarted without attempt %d", a.Name, att.id))
		}
	}
	for _, id := range h.Running {
		if att := s.live[id]; att != nil && att.agent == a {
			continue
		}
		// Not ours any more: it was replaced after a loss. Stop the
		// duplicate; its outcome is recorded as late history.
		a.Zombies[id] = struct{}{}
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
	a := s.agents.Gone(in.sess)
	if a == nil {
		return
	}
	s.countAgents()
	rec := a.Record(store.AgentDisconnected)
	s.write(func(ctx context.Context, tx store.Store) error {
		return tx.AgentUpsert(ctx, &store.AgentUpsertParams{Agent: rec})
	})
	s.log.Info("agent disconnected", slog.String("agent", a.Name), slog.Int("attempts", len(a.Attempts)), slog.Any("cause", in.err))
}

// messageInput carries a message of a live session.
type messageInput struct {
	sess *dispatch.Session
	msg  any
}

func (in messageInput) apply(s *Scheduler) {
	a := s.agents.Current(in.sess)
	if a == nil {
		return // a stale session; the agent repeats what matters
	}
	a.LastSeen = s.now()
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

// countAgents updates the connected-agents gauge.
func (s *Scheduler) countAgents() {
	m := s.cfg.Metrics
	if m == nil {
		return
	}
	m.agents.Set(float64(s.agents.Connected()))
}
