// Package engine makes Baton's scheduling decisions as pure functions over
// run state: readiness over edges, skip and block propagation, stage-order
// sugar, for-each expansion, run outcome, retries, restart resets and the
// order ready work is started in. It does no I/O; the scheduler feeds it
// state and persists what it decides.
package engine

import (
	"fmt"
	"slices"

	"github.com/batonhq/baton/server/job"
)

// Graph is a compiled job version: tasks with resolved edges and stage
// groups. A Graph is immutable and safe for concurrent use.
type Graph struct {
	Spec  *job.Spec
	Exprs *job.Exprs
	Nodes []*Node
	// Groups are the stage groups in increasing stage order.
	Groups []*Group
	index  map[string]int
	// reads marks the tasks some expression can read (their state and
	// outputs are mirrored into the expression variables); readCount
	// counts them.
	reads     []bool
	readCount int
	// edgeCount is the number of needs edges of all tasks.
	edgeCount int
}

// Node is one task of a Graph.
type Node struct {
	Index int
	Name  string
	Task  *job.Task
	// In are the task's own needs edges.
	In []InEdge
	// Out lists, without duplicates, the nodes with an edge from this one.
	Out []int
	// Member is the stage group the task belongs to, or -1.
	Member int
	// After is the stage group the task waits for (the nearest lower
	// stage), or -1.
	After int

	// Copied from Task, so deciding a task never reads its spec: with
	// many tasks the specs are scattered in memory and each read of one
	// is a cache miss.
	AnyTrigger   bool // trigger: any, with needs
	HasWhen      bool // a when expression on the task
	IsForEach    bool
	AllowFailure bool
	CancelRun    bool // on_failure: cancel_run
}

// InEdge is a resolved needs edge.
type InEdge struct {
	From   int
	Status string
	// Need is the edge's index in Task.Needs (for its when expression).
	Need int
	// When tells whether the edge has a when expression, so deciding an
	// edge without one never reads the task's spec.
	When bool
}

// Group is the tasks of one stage number.
type Group struct {
	Stage   int
	Members []int
	// Waiters are the tasks whose After is this group.
	Waiters []int
}

// Compile builds the Graph of a validated spec and compiles its
// expressions. It checks the references it resolves, so a spec read back
// from storage cannot make it misbehave.
func Compile(spec *job.Spec) (*Graph, error) {
	exprs, err := job.CompileExprs(spec)
	if err != nil {
		return nil, fmt.Errorf("compile job %q: %w", spec.Name, err)
	}
	g := &Graph{Spec: spec, Exprs: exprs, index: make(map[string]int, len(spec.Tasks))}
	for i, t := range spec.Tasks {
		if _, dup := g.index[t.Name]; dup {
			return nil, fmt.Errorf("compile job %q: duplicate task %q", spec.Name, t.Name)
		}
		g.index[t.Name] = i
		g.Nodes = append(g.Nodes, &Node{Index: i, Name: t.Name, Task: t, Member: -1, After: -1,
			AnyTrigger: t.Trigger == "any" && len(t.Needs) > 0, HasWhen: t.When != "", IsForEach: t.ForEach != nil,
			AllowFailure: t.AllowFailure, CancelRun: t.OnFailure == "cancel_run"})
	}
	for _, n := range g.Nodes {
		seen := map[int]bool{}
		for k, e := range n.Task.Needs {
			from, ok := g.index[e.Task]
			if !ok {
				return nil, fmt.Errorf("compile job %q: task %q needs unknown task %q", spec.Name, n.Name, e.Task)
			}
			status := e.Status
			if status == "" {
				status = job.StatusSuccess
			}
			n.In = append(n.In, InEdge{From: from, Status: status, Need: k, When: e.When != ""})
			g.edgeCount++
			if !seen[from] {
				seen[from] = true
				g.Nodes[from].Out = append(g.Nodes[from].Out, n.Index)
			}
		}
	}
	// Stage sugar: group tasks by stage number; each group waits for the
	// nearest lower one.
	byStage := map[int]*Group{}
	for _, n := range g.Nodes {
		if s := n.Task.Stage; s > 0 {
			grp, ok := byStage[s]
			if !ok {
				grp = &Group{Stage: s}
				byStage[s] = grp
				g.Groups = append(g.Groups, grp)
			}
			grp.Members = append(grp.Members, n.Index)
		}
	}
	slices.SortFunc(g.Groups, func(a, b *Group) int { return a.Stage - b.Stage })
	for gi, grp := range g.Groups {
		for _, m := range grp.Members {
			g.Nodes[m].Member = gi
			if gi > 0 {
				g.Nodes[m].After = gi - 1
				g.Groups[gi-1].Waiters = append(g.Groups[gi-1].Waiters, m)
			}
		}
	}
	if err := g.checkAcyclic(); err != nil {
		return nil, fmt.Errorf("compile job %q: %w", spec.Name, err)
	}
	g.reads = make([]bool, len(g.Nodes))
	names, all := exprs.TaskReads()
	for i := range g.reads {
		g.reads[i] = all
	}
	for _, name := range names {
		if i, ok := g.index[name]; ok {
			g.reads[i] = true
		}
	}
	for _, r := range g.reads {
		if r {
			g.readCount++
		}
	}
	return g, nil
}

// Lookup returns the index of the named task.
func (g *Graph) Lookup(name string) (int, bool) {
	i, ok := g.index[name]
	return i, ok
}

// succ calls fn for every successor of v in the extended graph whose
// vertices are the nodes followed by one vertex per stage group: a node
// leads to its Out nodes and to its group's vertex; a group's vertex leads
// to the group's waiters. The extra vertices keep wide stages linear.
func (g *Graph) succ(v int, fn func(int)) {
	n := len(g.Nodes)
	if v >= n {
		for _, w := range g.Groups[v-n].Waiters {
			fn(w)
		}
		return
	}
	for _, o := range g.Nodes[v].Out {
		fn(o)
	}
	if m := g.Nodes[v].Member; m >= 0 {
		fn(n + m)
	}
}

// topo returns the extended graph's vertices in topological order; it is
// shorter than the vertex count when there is a cycle.
func (g *Graph) topo() []int {
	total := len(g.Nodes) + len(g.Groups)
	indeg := make([]int, total)
	for v := range total {
		g.succ(v, func(o int) { indeg[o]++ })
	}
	order := make([]int, 0, total)
	for v, d := range indeg {
		if d == 0 {
			order = append(order, v)
		}
	}
	for k := 0; k < len(order); k++ {
		g.succ(order[k], func(o int) {
			indeg[o]--
			if indeg[o] == 0 {
				order = append(order, o)
			}
		})
	}
	return order
}

// checkAcyclic fails when needs edges plus stage sugar form a cycle.
func (g *Graph) checkAcyclic() error {
	if len(g.topo()) != len(g.Nodes)+len(g.Groups) {
		return fmt.Errorf("tasks form a cycle through needs or stages")
	}
	return nil
}

// Topo returns the node indices in a topological order (upstream first).
func (g *Graph) Topo() []int {
	order := g.topo()
	out := order[:0]
	for _, v := range order {
		if v < len(g.Nodes) {
			out = append(out, v)
		}
	}
	return out
}
