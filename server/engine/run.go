package engine

import (
	"fmt"
	"strings"

	"github.com/batonhq/baton/server/job"
	"github.com/batonhq/baton/server/store"
)

// Instance is the engine's view of one stored task instance.
type Instance struct {
	Task string
	// Item is the for-each item index, or store.NoItem for the task-level
	// instance every task has.
	Item      int
	ItemValue string
	State     store.InstanceState
	Outputs   map[string]string
}

// Change is one decision: a task instance moves to state To.
type Change struct {
	Task int
	// Item is store.NoItem for a task-level change.
	Item  int
	To    store.InstanceState
	Error string
	// Items is set when a for-each task expands (Item is NoItem, To is
	// running): one ready item instance is to be created for each.
	Items []job.Item
}

// edgeResult is how an edge (or a stage dependency) resolved.
type edgeResult uint8

const (
	unresolved edgeResult = iota
	satisfied
	// unsatBranch: a branch not taken; the task is skipped.
	unsatBranch
	// unsatFail: an upstream failure; the task is blocked.
	unsatFail
)

type taskRT struct {
	state   store.InstanceState
	outputs map[string]string
	errMsg  string
	edges   []edgeResult
	open    int32 // own edges unresolved
	nSat    int32
	nBranch int32
	nFail   int32
	stage   edgeResult
	// exprErr is set when an edge's when expression could not be
	// evaluated; the task fails with it.
	exprErr string

	// For-each tasks once expanded.
	items     []store.InstanceState
	itemsOpen int32
}

type groupRT struct {
	open int // members not done
	fail int // members done with a failure
}

// Run is the decision state of one run. It is not safe for concurrent use;
// the scheduler owns each Run from one goroutine.
type Run struct {
	g      *Graph
	vars   job.Vars
	tasks  []taskRT
	groups []groupRT
	open   int // tasks not done

	cancelled    bool   // CancelRun asked for it
	cancelReason string // why the run is being stopped early
	failFast     bool   // a task with on_failure: cancel_run failed

	out  []Change
	work []int // tasks whose inputs changed, to decide
}

// NewRun returns the decision state of a run of g with the given
// parameters (defaults already merged) and stored instances. Instances of
// tasks not listed are pending. Call Start to get the first decisions.
func NewRun(g *Graph, params map[string]string, insts []Instance) (*Run, error) {
	r := &Run{
		g:      g,
		vars:   job.Vars{Params: params, Tasks: make(map[string]job.TaskVars, g.readCount)},
		tasks:  make([]taskRT, len(g.Nodes)),
		groups: make([]groupRT, len(g.Groups)),
		open:   len(g.Nodes),
	}
	// One allocation holds every task's edge results.
	edges := make([]edgeResult, g.edgeCount)
	for i, n := range g.Nodes {
		t := &r.tasks[i]
		t.state = store.InstancePending
		t.edges, edges = edges[:len(n.In):len(n.In)], edges[len(n.In):]
		t.open = int32(len(n.In))
		t.stage = satisfied
		if n.After >= 0 {
			t.stage = unresolved
		}
		if g.reads[i] {
			r.vars.Tasks[n.Name] = job.TaskVars{State: string(store.InstancePending)}
		}
	}
	for gi, grp := range g.Groups {
		r.groups[gi].open = len(grp.Members)
	}
	// Items first, so a task-level state can be checked against them.
	items := map[int][]Instance{}
	for _, in := range insts {
		ti, ok := g.Lookup(in.Task)
		if !ok {
			return nil, fmt.Errorf("instance of unknown task %q", in.Task)
		}
		if in.Item == store.NoItem {
			r.tasks[ti].state = in.State
			r.tasks[ti].outputs = in.Outputs
			continue
		}
		if !g.Nodes[ti].IsForEach {
			return nil, fmt.Errorf("item %d of task %q, which has no for_each", in.Item, in.Task)
		}
		items[ti] = append(items[ti], in)
	}
	for ti, list := range items {
		t := &r.tasks[ti]
		max := -1
		for _, in := range list {
			max = maxInt(max, in.Item)
		}
		if max >= 1<<24 {
			return nil, fmt.Errorf("task %q: item index %d out of range", g.Nodes[ti].Name, max)
		}
		t.items = make([]store.InstanceState, max+1)
		for k := range t.items {
			t.items[k] = store.InstanceCancelled // a gap cannot happen; treat as done
		}
		for _, in := range list {
			t.items[in.Item] = in.State
		}
		for _, s := range t.items {
			if !s.Done() {
				t.itemsOpen++
			}
		}
	}
	// Replay the done tasks in topological order so every edge and stage
	// dependency resolves exactly as it did when they finished. A new run
	// has none, and states other than pending only need mirroring.
	anyDone := false
	for i := range r.tasks {
		if r.tasks[i].state.Done() {
			anyDone = true
			break
		}
	}
	if !anyDone {
		for ti := range r.tasks {
			if r.tasks[ti].state != store.InstancePending {
				r.setVars(ti)
			}
		}
		return r, nil
	}
	for _, ti := range g.Topo() {
		t := &r.tasks[ti]
		n := g.Nodes[ti]
		r.setVars(ti)
		if !t.state.Done() {
			continue
		}
		r.open--
		if t.state == store.InstanceFailed && n.CancelRun && !r.failFast {
			r.failFast = true
			r.cancelReason = fmt.Sprintf("task %q failed and has on_failure: cancel_run", n.Name)
		}
		r.propagate(ti)
	}
	r.work = r.work[:0]
	return r, nil
}

// Graph returns the run's graph.
func (r *Run) Graph() *Graph { return r.g }

// Vars returns the expression variables as of now. The maps are owned by
// the Run; callers must not modify them.
func (r *Run) Vars() *job.Vars { return &r.vars }

// State returns a task's task-level state.
func (r *Run) State(task int) store.InstanceState { return r.tasks[task].state }

// ItemState returns the state of a for-each item.
func (r *Run) ItemState(task, item int) store.InstanceState { return r.tasks[task].items[item] }

// Start decides every pending task whose dependencies are already
// resolved: on a new run, the roots become ready.
func (r *Run) Start() []Change {
	for i := range r.tasks {
		if r.tasks[i].state == store.InstancePending {
			r.work = append(r.work, i)
		}
	}
	return r.drain()
}

// Done records that a task instance reached a done state (succeeded,
// failed, cancelled or lost) and returns the decisions that follow. For a
// for-each item, the task itself is done once all its items are.
func (r *Run) Done(task, item int, state store.InstanceState, outputs map[string]string, errMsg string) []Change {
	t := &r.tasks[task]
	if item == store.NoItem {
		if t.state.Done() {
			return nil
		}
		t.state, t.outputs, t.errMsg = state, outputs, errMsg
		r.taskDone(task)
		return r.drain()
	}
	if item < 0 || item >= len(t.items) || t.items[item].Done() {
		return nil
	}
	t.items[item] = state
	t.itemsOpen--
	if t.itemsOpen == 0 && !t.state.Done() {
		r.finishForEach(task)
	}
	return r.drain()
}

// Transition records a non-done state change the scheduler made (ready to
// dispatched to running) so the engine's view stays in step. It decides
// nothing.
func (r *Run) Transition(task, item int, state store.InstanceState) {
	t := &r.tasks[task]
	if item == store.NoItem {
		if !t.state.Done() {
			t.state = state
			r.setVars(task)
		}
		return
	}
	if item >= 0 && item < len(t.items) && !t.items[item].Done() {
		t.items[item] = state
	}
}

// Cancel stops the run: every task and item that has not started is
// cancelled. Instances in flight stay as they are; the scheduler stops them
// and reports their outcome through Done.
func (r *Run) Cancel(reason string) []Change {
	r.cancelled = true
	if r.cancelReason == "" {
		r.cancelReason = reason
	}
	r.stopNotStarted(reason)
	return r.drain()
}

// Fail stops the run as failed, for a reason outside any task (the run
// timeout): like Cancel, but the run ends failed with reason.
func (r *Run) Fail(reason string) []Change {
	if !r.failFast && !r.cancelled {
		r.failFast = true
		r.cancelReason = reason
	}
	r.stopNotStarted(reason)
	return r.drain()
}

// Stopping reports whether the run was cancelled or is failing fast.
func (r *Run) Stopping() bool { return r.cancelled || r.failFast }

// Outcome reports whether the run is over and, if so, its final state and a
// short reason.
func (r *Run) Outcome() (over bool, state store.RunState, reason string) {
	if r.open > 0 {
		return false, "", ""
	}
	if r.cancelled {
		return true, store.RunCancelled, r.cancelReason
	}
	if r.failFast {
		return true, store.RunFailed, r.cancelReason
	}
	var bad []string
	for i, n := range r.g.Nodes {
		t := &r.tasks[i]
		switch t.state {
		case store.InstanceFailed:
			if !n.AllowFailure {
				bad = append(bad, fmt.Sprintf("task %q failed", n.Name))
			}
		case store.InstanceLost:
			bad = append(bad, fmt.Sprintf("task %q was lost", n.Name))
		case store.InstanceCancelled:
			bad = append(bad, fmt.Sprintf("task %q was cancelled", n.Name))
		}
	}
	if len(bad) == 0 {
		for i := range r.tasks {
			if r.tasks[i].state == store.InstanceBlocked {
				bad = append(bad, fmt.Sprintf("task %q is blocked", r.g.Nodes[i].Name))
				break
			}
		}
	}
	if len(bad) > 0 {
		msg := bad[0]
		if len(bad) > 1 {
			msg += fmt.Sprintf(" (and %d more)", len(bad)-1)
		}
		return true, store.RunFailed, msg
	}
	return true, store.RunSucceeded, ""
}

// setVars mirrors a task's state and outputs into the expression
// variables, if any expression can read them.
func (r *Run) setVars(ti int) {
	if !r.g.reads[ti] {
		return
	}
	t := &r.tasks[ti]
	r.vars.Tasks[r.g.Nodes[ti].Name] = job.TaskVars{State: string(t.state), Outputs: t.outputs}
}

// emit records a decision and applies it to the task-level state.
func (r *Run) emit(task int, to store.InstanceState, errMsg string, items []job.Item) {
	t := &r.tasks[task]
	t.state, t.errMsg = to, errMsg
	r.out = append(r.out, Change{Task: task, Item: store.NoItem, To: to, Error: errMsg, Items: items})
	r.setVars(task)
	if to.Done() {
		r.taskDone(task)
	}
}

// drain decides queued tasks until nothing changes and returns the
// decisions made.
func (r *Run) drain() []Change {
	for len(r.work) > 0 {
		ti := r.work[len(r.work)-1]
		r.work = r.work[:len(r.work)-1]
		r.decide(ti)
	}
	out := r.out
	r.out = nil
	return out
}

// taskDone updates what depends on a task that just became done.
func (r *Run) taskDone(ti int) {
	r.open--
	t := &r.tasks[ti]
	n := r.g.Nodes[ti]
	r.setVars(ti)
	if t.state == store.InstanceFailed && n.CancelRun && !r.failFast && !r.cancelled {
		r.failFast = true
		r.cancelReason = fmt.Sprintf("task %q failed and has on_failure: cancel_run", n.Name)
		r.stopNotStarted(r.cancelReason)
	}
	r.propagate(ti)
}

// propagate resolves the edges and stage dependencies leaving a done task
// and queues the tasks they lead to.
func (r *Run) propagate(ti int) {
	t := &r.tasks[ti]
	n := r.g.Nodes[ti]
	allowFailure := n.AllowFailure
	for _, o := range n.Out {
		ot := &r.tasks[o]
		for k, e := range r.g.Nodes[o].In {
			if e.From != ti || ot.edges[k] != unresolved {
				continue
			}
			res := edgeOutcome(e.Status, t.state, allowFailure)
			if res == satisfied && e.When {
				ok, err := r.g.Exprs.EdgeWhen(r.g.Nodes[o].Name, e.Need, &r.vars)
				switch {
				case err != nil:
					// The edge cannot be judged; the task that owns it
					// fails when it is decided.
					ot.exprErr = err.Error()
					res = unsatFail
				case !ok:
					res = unsatBranch
				}
			}
			ot.edges[k] = res
			ot.open--
			switch res {
			case satisfied:
				ot.nSat++
			case unsatBranch:
				ot.nBranch++
			case unsatFail:
				ot.nFail++
			}
		}
		r.work = append(r.work, o)
	}
	if m := n.Member; m >= 0 {
		grp := &r.groups[m]
		grp.open--
		if stageFailure(t.state, n.AllowFailure) {
			grp.fail++
		}
		if grp.open == 0 {
			res := satisfied
			if grp.fail > 0 {
				res = unsatFail
			}
			for _, w := range r.g.Groups[m].Waiters {
				r.tasks[w].stage = res
				r.work = append(r.work, w)
			}
		}
	}
}

// decide moves a pending task on once its dependencies allow.
func (r *Run) decide(ti int) {
	t := &r.tasks[ti]
	if t.state != store.InstancePending {
		return
	}
	n := r.g.Nodes[ti]
	if r.cancelled || r.failFast {
		r.emit(ti, store.InstanceCancelled, r.cancelReason, nil)
		return
	}
	if t.stage == unresolved {
		return
	}
	if t.stage == unsatFail {
		r.emit(ti, store.InstanceBlocked, "a task of the previous stage did not succeed", nil)
		return
	}
	anyTrigger := n.AnyTrigger
	switch {
	case anyTrigger && t.nSat > 0:
		// An OR join runs as soon as one edge is satisfied.
	case t.open > 0:
		return
	case t.exprErr != "":
		r.emit(ti, store.InstanceFailed, t.exprErr, nil)
		return
	case t.nFail > 0:
		r.emit(ti, store.InstanceBlocked, r.blockReason(ti), nil)
		return
	case t.nBranch > 0:
		r.emit(ti, store.InstanceSkipped, r.skipReason(ti), nil)
		return
	}
	if n.HasWhen {
		ok, err := r.g.Exprs.TaskWhen(n.Name, &r.vars)
		if err != nil {
			r.emit(ti, store.InstanceFailed, err.Error(), nil)
			return
		}
		if !ok {
			r.emit(ti, store.InstanceSkipped, "when is false", nil)
			return
		}
	}
	if !n.IsForEach {
		r.emit(ti, store.InstanceReady, "", nil)
		return
	}
	items, err := r.g.Exprs.ForEachItems(n.Name, &r.vars)
	if err != nil {
		r.emit(ti, store.InstanceFailed, err.Error(), nil)
		return
	}
	if len(items) == 0 {
		r.emit(ti, store.InstanceSucceeded, "", nil)
		return
	}
	t.items = make([]store.InstanceState, len(items))
	for k := range t.items {
		t.items[k] = store.InstanceReady
	}
	t.itemsOpen = int32(len(items))
	r.emit(ti, store.InstanceRunning, "", items)
}

// finishForEach settles a for-each task whose items are all done.
func (r *Run) finishForEach(ti int) {
	t := &r.tasks[ti]
	failed, cancelled := 0, 0
	for _, s := range t.items {
		switch s {
		case store.InstanceFailed, store.InstanceLost:
			failed++
		case store.InstanceCancelled:
			cancelled++
		}
	}
	switch {
	case cancelled > 0 && failed == 0:
		r.emit(ti, store.InstanceCancelled, fmt.Sprintf("%d of %d items cancelled", cancelled, len(t.items)), nil)
	case failed > 0:
		r.emit(ti, store.InstanceFailed, fmt.Sprintf("%d of %d items failed", failed, len(t.items)), nil)
	default:
		r.emit(ti, store.InstanceSucceeded, "", nil)
	}
}

// stopNotStarted cancels every task and item that has not started.
func (r *Run) stopNotStarted(reason string) {
	for i := range r.tasks {
		t := &r.tasks[i]
		switch t.state {
		case store.InstancePending, store.InstanceReady:
			r.emit(i, store.InstanceCancelled, reason, nil)
		case store.InstanceRunning, store.InstanceDispatched:
			if !r.g.Nodes[i].IsForEach {
				continue
			}
			for k, s := range t.items {
				if s == store.InstanceReady || s == store.InstancePending {
					t.items[k] = store.InstanceCancelled
					t.itemsOpen--
					r.out = append(r.out, Change{Task: i, Item: k, To: store.InstanceCancelled, Error: reason})
				}
			}
			if t.itemsOpen == 0 {
				r.finishForEach(i)
			}
		}
	}
}

func (r *Run) blockReason(ti int) string {
	t := &r.tasks[ti]
	var names []string
	for k, e := range r.g.Nodes[ti].In {
		if t.edges[k] == unsatFail {
			names = append(names, r.g.Nodes[e.From].Name)
		}
	}
	return "upstream did not succeed: " + strings.Join(dedupe(names), ", ")
}

func (r *Run) skipReason(ti int) string {
	t := &r.tasks[ti]
	var names []string
	for k, e := range r.g.Nodes[ti].In {
		if t.edges[k] == unsatBranch {
			names = append(names, r.g.Nodes[e.From].Name)
		}
	}
	return "branch not taken after " + strings.Join(dedupe(names), ", ")
}

// edgeOutcome says how an edge with the given status resolves once its
// upstream task is done in state s.
func edgeOutcome(status string, s store.InstanceState, allowFailure bool) edgeResult {
	switch status {
	case job.StatusFailure:
		switch s {
		case store.InstanceFailed, store.InstanceLost:
			return satisfied
		case store.InstanceSucceeded, store.InstanceSkipped:
			return unsatBranch
		}
		return unsatFail
	case job.StatusCompleted:
		if s == store.InstanceCancelled {
			return unsatFail
		}
		return satisfied
	default: // success
		switch s {
		case store.InstanceSucceeded:
			return satisfied
		case store.InstanceSkipped:
			return unsatBranch
		case store.InstanceFailed:
			if allowFailure {
				return unsatBranch
			}
		}
		return unsatFail
	}
}

// stageFailure reports whether a stage member done in state s holds the
// next stage back. Skipped members and allowed failures do not.
func stageFailure(s store.InstanceState, allowFailure bool) bool {
	switch s {
	case store.InstanceSucceeded, store.InstanceSkipped:
		return false
	case store.InstanceFailed:
		return !allowFailure
	}
	return true
}

func dedupe(s []string) []string {
	out := s[:0]
	seen := map[string]bool{}
	for _, v := range s {
		if !seen[v] {
			seen[v] = true
			out = append(out, v)
		}
	}
	return out
}

func maxInt(a, b int) int {
	if a > b {
		return a
	}
	return b
}
