package scheduler

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"time"

	"github.com/batonhq/baton/server/engine"
	"github.com/batonhq/baton/server/job"
	"github.com/batonhq/baton/server/store"
)

// loadRun builds an active run from its stored rows and what prepare read
// for it, and makes its first decisions. It reads nothing from the store.
func (s *Scheduler) loadRun(run *store.Run, insts []*store.Instance, atts []*store.Attempt, p *prepared) error {
	if _, ok := s.runs[run.ID]; ok {
		return nil
	}
	if p == nil || p.g == nil {
		return fmt.Errorf("run %d: its job version %d could not be loaded", run.ID, run.JobVersion)
	}
	g, durs := p.g, p.durs
	views := make([]engine.Instance, 0, len(insts))
	for _, in := range insts {
		views = append(views, engine.Instance{Task: in.Task, Item: in.Item, ItemValue: in.ItemValue, State: in.State, Outputs: in.Outputs})
	}
	eng, err := engine.NewRun(g, run.Params, views)
	if err != nil {
		return fmt.Errorf("run %d: %w", run.ID, err)
	}
	// Ready work starts longest remaining path first, judged by how long
	// each task took in its job's recent runs.
	r := &runRT{
		run: run,
		g:   g,
		eng: eng,
		rem: g.RemainingPath(func(task string) (time.Duration, bool) {
			d, ok := durs[task]
			return d, ok
		}),
		tasks:  make([]*taskRT, len(g.Nodes)),
		maxPar: g.Spec.MaxParallel,
	}
	for i, n := range g.Nodes {
		r.tasks[i] = &taskRT{node: n}
		if n.Task.ForEach != nil {
			r.tasks[i].cap = n.Task.MaxParallel
		}
	}
	byID := map[int64]*instRT{}
	for _, in := range insts {
		ti, ok := g.Lookup(in.Task)
		if !ok {
			return fmt.Errorf("run %d: instance of unknown task %q", run.ID, in.Task)
		}
		rt := &instRT{
			id: in.ID, run: r, task: ti, item: in.Item, itemValue: in.ItemValue,
			stored: in.State, attempts: in.Attempts, attemptID: in.AttemptID, kind: store.AttemptFirst,
		}
		byID[in.ID] = rt
		t := r.tasks[ti]
		if in.Item == store.NoItem {
			t.inst = rt
			continue
		}
		for len(t.items) <= in.Item {
			t.items = append(t.items, nil)
		}
		t.items[in.Item] = rt
	}
	for i, t := range r.tasks {
		if t.inst == nil {
			return fmt.Errorf("run %d: task %q has no instance", run.ID, g.Nodes[i].Name)
		}
	}
	// Attempt history: failure and loss counts of this generation (a
	// restart gives every instance its budget back), and the live attempts.
	for _, a := range atts {
		in := byID[a.InstanceID]
		if in == nil {
			continue
		}
		if a.Restart != run.RestartCount {
			// Tried in an earlier generation: its next attempt is a restart
			// unless this generation tried it too.
			if in.kind == store.AttemptFirst {
				in.kind = store.AttemptRestart
			}
			continue
		}
		in.kind = store.AttemptRetry
		switch a.State {
		case store.AttemptFailed, store.AttemptTimedOut, store.AttemptRejected:
			in.failures++
		case store.AttemptLost:
			in.losses++
		}
		if a.ID == in.attemptID && in.stored.InFlight() && a.State.Live() {
			s.adopt(r, in, a)
		}
	}
	s.runs[run.ID] = r
	// Instances in flight whose attempt is no longer live were lost while
	// no control plane was watching.
	for _, t := range r.tasks {
		for _, in := range append([]*instRT{t.inst}, t.items...) {
			if in == nil {
				continue
			}
			switch {
			case in.stored.InFlight() && in.live == nil && !(in.item == store.NoItem && t.node.Task.ForEach != nil):
				s.lost(in, "the attempt was no longer live when the control plane started")
			case in.stored == store.InstanceReady:
				s.ready(in)
			}
		}
	}
	s.apply(r, r.eng.Start())
	if run.State == store.RunCancelling {
		s.stop(r, true, run.Error)
	} else if tmo := g.Spec.Timeout.D(); tmo > 0 {
		s.at(run.LastStart().Add(tmo), func() { s.timeout(r) })
	}
	s.check(r)
	return nil
}

// failUnloadable fails a run the scheduler cannot load.
func (s *Scheduler) failUnloadable(run *store.Run, cause error) {
	msg := "cannot load run: " + cause.Error()
	s.write(func(ctx context.Context, tx store.Store) error {
		_, err := tx.RunTransition(ctx, &store.RunTransitionParams{
			ID: run.ID, From: []store.RunState{store.RunRunning, store.RunCancelling}, To: store.RunFailed, Error: msg,
		})
		return ignoreConflict(err)
	})
	s.event(&store.Event{RunID: run.ID, Item: store.NoItem, RunState: store.RunFailed, Message: msg})
}

// apply persists the engine's decisions and acts on them.
func (s *Scheduler) apply(r *runRT, changes []engine.Change) {
	for _, ch := range changes {
		t := r.tasks[ch.Task]
		if ch.Item != store.NoItem {
			if in := r.instance(ch.Task, ch.Item); in != nil {
				s.settle(in, ch.To, ch.Error, nil)
			}
			continue
		}
		in := t.inst
		switch {
		case ch.To == store.InstanceReady:
			// Written at commit unless it is dispatched first: then its
			// claim moves it from pending in one statement.
			s.b.ready = append(s.b.ready, in)
			s.ready(in)
		case ch.To == store.InstanceRunning && ch.Items != nil:
			s.expand(r, t, ch.Items)
		default:
			s.settle(in, ch.To, ch.Error, nil)
		}
	}
}

// transition writes an instance's move to state to (guarded by its current
// state and, when fence is non-zero, by its latest attempt) and logs it; it
// returns the event so callers can add to it.
func (s *Scheduler) transition(in *instRT, to store.InstanceState, errMsg string, outputs map[string]string, fence int64) *store.Event {
	from := in.stored
	in.stored = to
	r := in.run
	s.write(func(ctx context.Context, tx store.Store) error {
		return tx.InstanceTransition(ctx, &store.InstanceTransitionParams{
			ID: in.id, From: []store.InstanceState{from}, To: to, AttemptID: fence, Outputs: outputs, Error: errMsg,
		})
	})
	ev := &store.Event{RunID: r.run.ID, Task: r.taskName(in.task), Item: in.item, InstanceState: to, Message: errMsg}
	if in.live != nil {
		ev.AttemptID = in.live.id
		ev.Agent = in.live.agent.Name
	} else if fence != 0 {
		ev.AttemptID = fence
		ev.Agent = in.agent
	}
	s.event(ev)
	return ev
}

// settle moves an instance to a done state the engine decided (skipped,
// blocked, cancelled, failed before running, or a for-each task's result).
func (s *Scheduler) settle(in *instRT, to store.InstanceState, errMsg string, outputs map[string]string) {
	if in.stored.Done() || in.stored == to {
		return
	}
	if in.live != nil {
		// In flight: the agent's outcome settles it.
		return
	}
	s.transition(in, to, errMsg, outputs, 0)
}

// expand creates the items of a for-each task.
func (s *Scheduler) expand(r *runRT, t *taskRT, items []job.Item) {
	s.transition(t.inst, store.InstanceRunning, fmt.Sprintf("%d items", len(items)), nil, 0)
	inits := make([]store.InstanceInit, len(items))
	t.items = make([]*instRT, len(items))
	for k, it := range items {
		val, err := json.Marshal(it.Value)
		if err != nil {
			val, _ = json.Marshal(it.Text)
		}
		inits[k] = store.InstanceInit{Task: t.node.Name, Item: k, ItemValue: string(val), State: store.InstanceReady}
		t.items[k] = &instRT{run: r, task: t.node.Index, item: k, itemValue: string(val), stored: store.InstanceReady, kind: store.AttemptFirst}
	}
	created := t.items
	s.write(func(ctx context.Context, tx store.Store) error {
		out, err := tx.InstanceCreate(ctx, &store.InstanceCreateParams{RunID: r.run.ID, Instances: inits})
		if err != nil {
			return err
		}
		if len(out) != len(created) {
			return fmt.Errorf("create items of %q: got %d instances, want %d", t.node.Name, len(out), len(created))
		}
		for k, in := range out {
			created[k].id = in.ID
		}
		return nil
	})
	for _, in := range t.items {
		s.ready(in)
	}
}

// check finishes a run once the engine says it is over.
func (s *Scheduler) check(r *runRT) {
	if r.finishing {
		return
	}
	over, state, reason := r.eng.Outcome()
	if !over {
		return
	}
	r.finishing = true
	from := []store.RunState{store.RunRunning, store.RunCancelling}
	s.write(func(ctx context.Context, tx store.Store) error {
		run, err := tx.RunTransition(ctx, &store.RunTransitionParams{ID: r.run.ID, From: from, To: state, Error: reason})
		if err != nil {
			return fmt.Errorf("finish run %d: %w", r.run.ID, err)
		}
		r.run = run
		return nil
	})
	s.event(&store.Event{RunID: r.run.ID, Item: store.NoItem, RunState: state, Message: reason})
	delete(s.runs, r.run.ID)
	s.log.Info("run finished", slog.Int64("run_id", r.run.ID), slog.String("job", r.run.JobName),
		slog.String("state", string(state)), slog.String("reason", reason))
	if r.run.Overlap != store.OverlapAllow {
		s.promote(r.run.JobID)
	}
}

// promote starts the oldest queued run of a job, if any.
func (s *Scheduler) promote(jobID int64) {
	q := s.queued[jobID]
	if len(q) == 0 {
		return
	}
	for _, r := range s.runs {
		if r.run.JobID == jobID && r.run.Overlap != store.OverlapAllow {
			return // still one active
		}
	}
	next := q[0]
	s.queued[jobID] = q[1:]
	if len(q) == 1 {
		delete(s.queued, jobID)
	}
	// A queued run's instances are as it was created: all pending.
	var started *store.Run
	s.write(func(ctx context.Context, tx store.Store) error {
		run, err := tx.RunTransition(ctx, &store.RunTransitionParams{
			ID: next.run.ID, From: []store.RunState{store.RunQueued}, To: store.RunRunning,
		})
		if err != nil {
			return fmt.Errorf("start queued run %d: %w", next.run.ID, err)
		}
		started = run
		return nil
	})
	s.event(&store.Event{RunID: next.run.ID, Item: store.NoItem, RunState: store.RunRunning, Message: "started after the previous run ended"})
	s.after(func() { s.local = append(s.local, loadInput{run: started, insts: next.insts, prep: next.prep}) })
}

// loadInput loads a run the loop has just started.
type loadInput struct {
	run   *store.Run
	insts []*store.Instance
	prep  *prepared
	reply chan error
}

func (in loadInput) apply(s *Scheduler) {
	err := s.loadRun(in.run, in.insts, nil, in.prep)
	if err != nil {
		s.log.Error("cannot load run; failing it", slog.Int64("run_id", in.run.ID), slog.Any("error", err))
		s.failUnloadable(in.run, err)
	}
	if in.reply != nil {
		s.after(func() { in.reply <- err })
		s.onFail(func() { in.reply <- ErrStopped })
	}
}

// stop cancels (or, for a run timeout, fails) a run: nothing new starts and
// every child in flight is asked to stop.
func (s *Scheduler) stop(r *runRT, cancel bool, reason string) {
	var changes []engine.Change
	if cancel {
		changes = r.eng.Cancel(reason)
	} else {
		changes = r.eng.Fail(reason)
	}
	if r.run.State == store.RunRunning {
		r.run.State = store.RunCancelling
		id := r.run.ID
		s.write(func(ctx context.Context, tx store.Store) error {
			_, err := tx.RunTransition(ctx, &store.RunTransitionParams{
				ID: id, From: []store.RunState{store.RunRunning}, To: store.RunCancelling, Error: reason,
			})
			return err
		})
		s.event(&store.Event{RunID: id, Item: store.NoItem, RunState: store.RunCancelling, Message: reason})
	}
	s.apply(r, changes)
	for _, t := range r.tasks {
		for _, in := range append([]*instRT{t.inst}, t.items...) {
			if in != nil && in.live != nil {
				s.cancelAttempt(in.live, reason)
			}
		}
	}
	s.check(r)
}

// timeout fails a run whose time limit expired.
func (s *Scheduler) timeout(r *runRT) {
	if s.runs[r.run.ID] != r || r.eng.Stopping() {
		return
	}
	s.stop(r, false, fmt.Sprintf("run timeout of %s exceeded", r.g.Spec.Timeout.D()))
}

func ignoreConflict(err error) error {
	if err == store.ErrConflict {
		return nil
	}
	return err
}
