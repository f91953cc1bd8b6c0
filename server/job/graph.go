package job

import (
	"slices"
)

// graph is the dependency graph of a spec. Nodes 0..n-1 are the tasks in
// file order; nodes n.. are one barrier per stage, which depends on every
// task of that stage. A task of a stage depends on the barrier of the
// nearest lower stage, so stage sugar costs O(tasks) edges, not
// O(tasks²).
type graph struct {
	spec  *Spec
	n     int
	index map[string]int // task name -> node; first definition wins
	deps  [][]int        // node -> the nodes it depends on
	// stageOf maps a barrier node to its stage number.
	stageOf map[int]int
	// prevBarrier maps a task node to the barrier it depends on, or -1.
	prevBarrier []int
}

func newGraph(s *Spec) *graph {
	g := &graph{spec: s, n: len(s.Tasks), index: make(map[string]int, len(s.Tasks)), stageOf: make(map[int]int)}
	for i, t := range s.Tasks {
		if _, dup := g.index[t.Name]; !dup && t.Name != "" {
			g.index[t.Name] = i
		}
	}
	var stages []int
	for _, t := range s.Tasks {
		if t.Stage > 0 {
			stages = append(stages, t.Stage)
		}
	}
	slices.Sort(stages)
	stages = slices.Compact(stages)
	barrier := make(map[int]int, len(stages)) // stage -> barrier node
	for i, st := range stages {
		barrier[st] = g.n + i
		g.stageOf[g.n+i] = st
	}
	g.deps = make([][]int, g.n+len(stages))
	g.prevBarrier = make([]int, g.n)
	for i, t := range s.Tasks {
		g.prevBarrier[i] = -1
		for _, e := range t.Needs {
			if j, ok := g.index[e.Task]; ok && j != i && !slices.Contains(g.deps[i], j) {
				g.deps[i] = append(g.deps[i], j)
			}
		}
		if t.Stage > 0 {
			b := barrier[t.Stage]
			g.deps[b] = append(g.deps[b], i)
			if k, _ := slices.BinarySearch(stages, t.Stage); k > 0 {
				pb := barrier[stages[k-1]]
				g.prevBarrier[i] = pb
				g.deps[i] = append(g.deps[i], pb)
			}
		}
	}
	return g
}

// stageDeps returns the task nodes that task node i depends on through
// stage sugar.
func (g *graph) stageDeps(i int) []int {
	if pb := g.prevBarrier[i]; pb >= 0 {
		return g.deps[pb]
	}
	return nil
}

// closure returns, for the start node, a set of every task node reachable
// along next (excluding start itself unless it is on a cycle).
func (g *graph) closure(start int, next func(int) []int) []bool {
	seen := make([]bool, len(g.deps))
	stack := slices.Clone(next(start))
	for len(stack) > 0 {
		v := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if seen[v] {
			continue
		}
		seen[v] = true
		stack = append(stack, next(v)...)
	}
	return seen[:g.n]
}

func (g *graph) upstream(i int) []bool {
	return g.closure(i, func(v int) []int { return g.deps[v] })
}

func (g *graph) downstream(i int) []bool {
	rev := make([][]int, len(g.deps))
	for v, ds := range g.deps {
		for _, d := range ds {
			rev[d] = append(rev[d], v)
		}
	}
	return g.closure(i, func(v int) []int { return rev[v] })
}

func (g *graph) names(set []bool) []string {
	var out []string
	for i, in := range set {
		if in {
			out = append(out, g.spec.Tasks[i].Name)
		}
	}
	return out
}

// cycles returns dependency cycles as lists of nodes, each starting at
// its lowest task node and following "needs" edges. Each strongly
// connected group of tasks is reported once.
func (g *graph) cycles() [][]int {
	const (
		white = iota
		grey
		black
	)
	color := make([]int, len(g.deps))
	reported := make([]bool, len(g.deps))
	var out [][]int
	var stack []int
	type frame struct{ v, next int }
	for root := 0; root < g.n; root++ {
		if color[root] != white {
			continue
		}
		frames := []frame{{v: root}}
		color[root] = grey
		stack = append(stack[:0], root)
		for len(frames) > 0 {
			f := &frames[len(frames)-1]
			if f.next == len(g.deps[f.v]) {
				color[f.v] = black
				frames = frames[:len(frames)-1]
				stack = stack[:len(stack)-1]
				continue
			}
			w := g.deps[f.v][f.next]
			f.next++
			switch color[w] {
			case white:
				color[w] = grey
				frames = append(frames, frame{v: w})
				stack = append(stack, w)
			case grey:
				at := slices.Index(stack, w)
				cyc := slices.Clone(stack[at:])
				fresh := false
				for _, v := range cyc {
					if v < g.n && !reported[v] {
						fresh = true
					}
				}
				if !fresh {
					continue
				}
				for _, v := range cyc {
					reported[v] = true
				}
				// Rotate to start at the first task in file order.
				first := 0
				for k, v := range cyc {
					if v < g.n && (cyc[first] >= g.n || v < cyc[first]) {
						first = k
					}
				}
				cyc = append(cyc[first:], cyc[:first]...)
				out = append(out, cyc)
			}
		}
	}
	return out
}

// Task returns the task called name, or nil.
func (s *Spec) Task(name string) *Task {
	for _, t := range s.Tasks {
		if t.Name == name {
			return t
		}
	}
	return nil
}

// StageDeps returns, in file order, the tasks that task depends on through
// stage sugar: every task of the nearest lower stage. It returns nil for a
// task without a stage, in the lowest stage, or unknown.
func (s *Spec) StageDeps(task string) []string {
	g := newGraph(s)
	i, ok := g.index[task]
	if !ok {
		return nil
	}
	var out []string
	for _, d := range g.stageDeps(i) {
		out = append(out, s.Tasks[d].Name)
	}
	return out
}

// Deps returns, in file order and without repeats, the tasks that task
// depends on directly: its needs and its stage dependencies.
func (s *Spec) Deps(task string) []string {
	g := newGraph(s)
	i, ok := g.index[task]
	if !ok {
		return nil
	}
	set := make([]bool, g.n)
	for _, d := range g.deps[i] {
		if d < g.n {
			set[d] = true
		}
	}
	for _, d := range g.stageDeps(i) {
		set[d] = true
	}
	return g.names(set)
}

// Upstream returns, in file order, every task that task transitively
// depends on through needs and stage sugar. Expressions of task may only
// refer to these tasks.
func (s *Spec) Upstream(task string) []string {
	g := newGraph(s)
	i, ok := g.index[task]
	if !ok {
		return nil
	}
	return g.names(g.upstream(i))
}

// Downstream returns, in file order, every task that transitively depends
// on task through needs and stage sugar: what a restart "from task" reruns
// besides task itself.
func (s *Spec) Downstream(task string) []string {
	g := newGraph(s)
	i, ok := g.index[task]
	if !ok {
		return nil
	}
	return g.names(g.downstream(i))
}

// RetriesOnLost reports whether an attempt of t whose agent was lost is
// retried: retry_on_lost, which defaults to true.
func (t *Task) RetriesOnLost() bool { return t.RetryOnLost == nil || *t.RetryOnLost }

// Backoff returns the factor the retry delay is multiplied by after each
// retry: retry_backoff, which defaults to 1 (a constant delay).
func (t *Task) Backoff() float64 {
	if t.RetryBackoff < 1 {
		return 1
	}
	return t.RetryBackoff
}
