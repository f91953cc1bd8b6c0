package scheduler

import (
	"container/heap"
	"context"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/batonhq/baton/server/dispatch"
	"github.com/batonhq/baton/server/job"
	"github.com/batonhq/baton/server/store"
)

// group is the ready queue of one selector. Queues are split by selector so
// that work nobody can take does not hold back work that others can.
type group struct {
	key   string
	sel   job.Selector
	ready instHeap
}

func selectorKey(sel job.Selector) string {
	var b strings.Builder
	b.WriteString(sel.Agent)
	for _, k := range slices.Sorted(maps.Keys(sel.Labels)) {
		b.WriteString("\x00")
		b.WriteString(k)
		b.WriteString("=")
		b.WriteString(sel.Labels[k])
	}
	return b.String()
}

// ready queues an instance in state ready for placement.
func (s *Scheduler) ready(in *instRT) {
	if in.queued {
		return
	}
	sel := in.run.g.Nodes[in.task].Task.RunsOn
	key := selectorKey(sel)
	g, ok := s.groups[key]
	if !ok {
		g = &group{key: key, sel: sel}
		s.groups[key] = g
		s.glist = append(s.glist, g)
	}
	s.seq++
	in.seq = s.seq
	in.queued = true
	heap.Push(&g.ready, in)
}

// readyAfter makes an instance ready once delay has passed.
func (s *Scheduler) readyAfter(in *instRT, delay time.Duration) {
	if delay <= 0 {
		s.ready(in)
		return
	}
	s.at(s.now().Add(delay), func() {
		if s.placeable(in) {
			s.ready(in)
		}
	})
}

// placeable reports whether a queued instance may still be placed; stale
// queue entries (cancelled, finished runs) are dropped when popped.
func (s *Scheduler) placeable(in *instRT) bool {
	r := in.run
	return s.runs[r.run.ID] == r && !r.eng.Stopping() && in.now() == store.InstanceReady
}

// place starts as much ready work as agents have free slots for, best
// work first (priority, then longest remaining path, then arrival).
func (s *Scheduler) place() {
	if len(s.glist) == 0 {
		return
	}
	full := map[*group]bool{} // no matching agent has a free slot
	for {
		var best *group
		var bestAgent *agentRT
		for _, g := range s.glist {
			if full[g] {
				continue
			}
			for len(g.ready) > 0 && !s.placeable(g.ready[0]) {
				heap.Pop(&g.ready).(*instRT).queued = false
			}
			if len(g.ready) == 0 {
				continue
			}
			if best != nil && !keyOf(g.ready[0]).Less(keyOf(best.ready[0])) {
				continue
			}
			a := s.agents.Pick(g.sel)
			if a == nil {
				full[g] = true
				continue
			}
			best, bestAgent = g, a
		}
		if best == nil {
			break
		}
		in := heap.Pop(&best.ready).(*instRT)
		in.queued = false
		r := in.run
		t := r.tasks[in.task]
		if t.cap > 0 && t.inflight >= t.cap {
			heap.Push(&t.parked, in)
			continue
		}
		if r.maxPar > 0 && r.inflight >= r.maxPar {
			heap.Push(&r.parked, in)
			continue
		}
		s.startAttempt(in, bestAgent)
	}
	if m := s.cfg.Metrics; m != nil {
		ready := 0
		for _, g := range s.glist {
			ready += len(g.ready)
		}
		m.ready.Set(float64(ready))
	}
	// Drop empty queues so the list stays short.
	s.glist = slices.DeleteFunc(s.glist, func(g *group) bool {
		if len(g.ready) == 0 {
			delete(s.groups, g.key)
			return true
		}
		return false
	})
}

// unpark moves held-back work of a run and a task back to the ready
// queues once they have room again.
func (s *Scheduler) unpark(r *runRT, t *taskRT) {
	if t.cap > 0 && t.inflight < t.cap && len(t.parked) > 0 {
		s.requeue(heap.Pop(&t.parked).(*instRT))
	}
	if r.maxPar > 0 && r.inflight < r.maxPar && len(r.parked) > 0 {
		s.requeue(heap.Pop(&r.parked).(*instRT))
	}
}

func (s *Scheduler) requeue(in *instRT) {
	if s.placeable(in) {
		s.ready(in)
	}
}

// startAttempt dispatches an instance to an agent: the attempt is written
// (dispatched) before StartTask is sent.
func (s *Scheduler) startAttempt(in *instRT, a *agentRT) {
	r := in.run
	t := r.tasks[in.task]
	name := r.taskName(in.task)
	vars, err := r.itemVars(in)
	var argv []string
	var env map[string]string
	var dir string
	if err == nil {
		argv, env, dir, err = r.g.Exprs.Expand(name, vars)
	}
	if err != nil {
		// The command cannot be built (a placeholder failed): the instance
		// fails without an attempt.
		s.transition(in, store.InstanceFailed, err.Error(), nil, 0)
		s.done(in, store.InstanceFailed, nil, err.Error())
		return
	}
	if env == nil {
		env = map[string]string{}
	}
	maps.Copy(env, job.ParamEnv(r.run.Params))
	task := r.g.Nodes[in.task].Task
	att := &attemptRT{inst: in, agent: a, no: in.attempts + 1, state: store.AttemptDispatched, renewedAt: s.now()}
	att.start = &dispatch.Start{
		RunID:      r.run.ID,
		Job:        r.run.JobName,
		Task:       name,
		Attempt:    att.no,
		Argv:       argv,
		Env:        env,
		Secrets:    r.g.Exprs.Secrets(name),
		WorkingDir: dir,
		Timeout:    task.Timeout.D(),
		KillGrace:  s.cfg.KillGrace,
	}
	if in.item != store.NoItem {
		att.start.Item = itemText(in.itemValue)
	}
	kind := in.kind
	// Claimed from where the store has it: pending when it became ready in
	// this batch (one statement instead of two).
	claimFrom := []store.InstanceState{in.stored}
	in.attempts++
	in.live = att
	in.agent = a.Name
	in.stored = store.InstanceDispatched
	r.inflight++
	if in.item != store.NoItem {
		t.inflight++
	}
	r.eng.Transition(in.task, in.item, store.InstanceDispatched)
	a.Attempts[att] = struct{}{}
	s.agents.Use(a)
	ev := &store.Event{RunID: r.run.ID, Task: name, Item: in.item, InstanceState: store.InstanceDispatched, Agent: a.Name}
	ttl, restart := s.leaseTTL(), r.run.RestartCount
	s.write(func(ctx context.Context, tx store.Store) error {
		got, err := tx.AttemptClaim(ctx, &store.AttemptClaimParams{
			InstanceID: in.id, From: claimFrom, Agent: a.Name, Kind: kind, LeaseTTL: ttl, Restart: restart,
		})
		if err != nil {
			return err
		}
		att.id = got.ID
		in.attemptID = got.ID
		ev.AttemptID = got.ID
		return nil
	})
	s.event(ev)
	s.after(func() {
		if m := s.cfg.Metrics; m != nil {
			m.dispatched.Inc()
		}
		att.start.AttemptID = att.id
		s.live[att.id] = att
		if a.Sess != nil {
			// The lease runs from the agent's latest message this control
			// plane had when it dispatched the attempt: never later than
			// renewedAt.
			start := *att.start
			start.LeaseSeq = a.Seq
			a.Sess.Send(&start)
		}
	})
}
