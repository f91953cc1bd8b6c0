package scheduler

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/batonhq/baton/server/dispatch"
	"github.com/batonhq/baton/server/engine"
	"github.com/batonhq/baton/server/store"
)

// Attempt leases. Each live attempt is leased to its agent. A heartbeat
// renews the leases of every attempt the agent holds (LeaseRenewal), a
// start and a Hello say which of the agent's messages the lease counts
// from, and the agent stops a child whose lease ran out (self-fencing). The
// sweep declares an attempt lost only lostAfter past its last renewal: the
// lease, the kill grace and a margin. Only then may a replacement start, so
// a task instance never has two live executions.

// fenceMargin is added to an attempt's lease and kill grace before the
// attempt is declared lost: it covers the agent's hand-over of the lease to
// its runner and the time a killed process tree takes to be gone.
const fenceMargin = time.Second

// lostAfter is how long after its last renewal an attempt is lost: by then
// its agent has stopped the child (the lease ran out and the kill grace
// passed), so a replacement cannot overlap it.
func (s *Scheduler) lostAfter() time.Duration {
	return s.cfg.AgentTimeout + s.cfg.KillGrace + fenceMargin
}

// leaseTTL is the attempts' lease in the store. It outlasts lostAfter, so
// the loop always declares an attempt lost before the store would call its
// outcome late.
func (s *Scheduler) leaseTTL() time.Duration {
	return 2 * s.lostAfter()
}

// heartbeat renews the leases of the agent's attempts as of the
// heartbeat's Seq and answers with a LeaseRenewal listing them. Attempts
// the agent runs that are no longer its own (replaced after a loss) are not
// renewed: the agent stops them when their leases run out, if a CancelTask
// has not stopped them before.
func (s *Scheduler) heartbeat(a *agentRT, hb *dispatch.Heartbeat) {
	a.Draining = hb.Draining
	clear(a.Zombies)
	for _, id := range hb.Running {
		if att := s.live[id]; att == nil || att.agent != a {
			a.Zombies[id] = struct{}{}
		}
	}
	now := s.now()
	a.Seq = max(a.Seq, hb.Seq)
	a.RenewedAt = now
	if len(a.Attempts) == 0 {
		return
	}
	for att := range a.Attempts {
		att.renewedAt = now
	}
	sess, seq := a.Sess, hb.Seq
	s.after(func() {
		// Ids are known once the claims of this batch are committed.
		ids := make([]int64, 0, len(a.Attempts))
		for att := range a.Attempts {
			if att.id != 0 {
				ids = append(ids, att.id)
			}
		}
		if len(ids) > 0 {
			sess.Send(&dispatch.LeaseRenewal{Seq: seq, AttemptIDs: ids})
		}
	})
	ids := make([]int64, 0, len(a.Attempts))
	for _, att := range byID(a.Attempts) {
		if att.id != 0 {
			ids = append(ids, att.id)
		}
	}
	name, ttl := a.Name, s.leaseTTL()
	s.lazily(func() {
		s.write(func(ctx context.Context, tx store.Store) error {
			_, err := tx.AttemptHeartbeat(ctx, &store.AttemptHeartbeatParams{Agent: name, AttemptIDs: ids, LeaseTTL: ttl})
			return err
		})
	})
}

// lost handles an instance whose attempt was lost with its agent: it is
// retried elsewhere when the task allows, else it is lost.
func (s *Scheduler) lost(in *instRT, msg string) {
	s.lose(in, msg, true)
}

// lose is lost, saying whether the attempt's child is certainly gone. It
// is not when a silent agent's lease expired but the agent cannot stop its
// children on its own while its process is stopped (see
// dispatch.Agent.FencesFrozen): then
// the instance is replaced only when its task asks for it explicitly
// (retry_on_lost: true), and otherwise left lost for an operator.
func (s *Scheduler) lose(in *instRT, msg string, gone bool) {
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
	s.afterLoss(in, fence, msg, gone)
}

// afterLoss retries an instance whose attempt fence was lost elsewhere when
// its task allows (a replacement), and otherwise settles it lost (or
// cancelled, when its run is stopping).
func (s *Scheduler) afterLoss(in *instRT, fence int64, msg string, gone bool) {
	r := in.run
	in.losses++
	if m := s.cfg.Metrics; m != nil {
		s.after(m.lost.Inc)
	}
	task := r.g.Nodes[in.task].Task
	if !gone && task.RetryOnLost == nil {
		// Replaced only when the task asks for it explicitly.
		msg += "; not replaced: the agent stops its children itself only while its process runs, so the child may still run" +
			" (set retry_on_lost: true to replace anyway; restart the run once the child is known to be gone)"
	} else if !r.eng.Stopping() && engine.RetryAfterLoss(task, in.losses) {
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

// sweep marks agents that have been silent for longer than the agent
// timeout as lost, so no new work goes to them, and declares lost every
// attempt whose lease has certainly ended and whose child the agent has
// therefore stopped (lostAfter past its last renewal): only then may a
// replacement start.
func (s *Scheduler) sweep() {
	now := s.now()
	// Only agents holding an attempt whose lease may have ended: the sweep
	// runs every tick and most agents are fine.
	stale := s.agents.Where(func(a *agentRT) bool {
		return len(a.Attempts) > 0 && now.Sub(a.RenewedAt) > s.lostAfter()
	})
	for _, a := range stale {
		msg := fmt.Sprintf("agent %s did not renew the attempt's lease: not heard from for %s (agent timeout %s, kill grace %s)",
			a.Name, now.Sub(a.LastSeen).Round(time.Millisecond), s.cfg.AgentTimeout, s.cfg.KillGrace)
		for _, att := range byID(a.Attempts) {
			if now.Sub(att.renewedAt) > s.lostAfter() {
				s.lose(att.inst, msg, a.FencesFrozen())
			}
		}
	}
	// Liveness: silent agents get no new work.
	for _, a := range s.agents.Silent(now, s.cfg.AgentTimeout) {
		s.countAgents()
		s.log.Warn("agent lost", slog.String("agent", a.Name), slog.Duration("silent_for", now.Sub(a.LastSeen)),
			slog.Int("attempts", len(a.Attempts)))
		rec := a.Record(store.AgentLost)
		s.write(func(ctx context.Context, tx store.Store) error {
			return tx.AgentUpsert(ctx, &store.AgentUpsertParams{Agent: rec})
		})
	}
	s.at(now.Add(s.sweepInterval()), s.sweep)
}

// byID returns an agent's attempts ordered by id, so that what the loop
// does with them does not depend on map order.
func byID(atts map[*attemptRT]struct{}) []*attemptRT {
	out := make([]*attemptRT, 0, len(atts))
	for att := range atts {
		out = append(out, att)
	}
	slices.SortFunc(out, func(x, y *attemptRT) int { return cmp.Compare(x.id, y.id) })
	return out
}

func (s *Scheduler) sweepInterval() time.Duration {
	return min(max(s.cfg.AgentTimeout/10, 50*time.Millisecond), time.Second)
}
