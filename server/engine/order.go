package engine

import (
	"cmp"
	"time"
)

// DefaultDuration is the expected duration of a task with no successful
// history.
const DefaultDuration = time.Second

// RemainingPath estimates, for every task, the longest expected path from
// its start to the end of the run: its own expected duration plus the
// longest remaining path of the tasks that wait on it (through needs or
// stage sugar). expected returns a task's mean duration over its last few
// successful attempts and false when there is none; DefaultDuration is used
// then. Ready work that starts long chains first finishes the run sooner.
func (g *Graph) RemainingPath(expected func(task string) (time.Duration, bool)) []time.Duration {
	n := len(g.Nodes)
	order := g.topo()
	rem := make([]time.Duration, n+len(g.Groups))
	for k := len(order) - 1; k >= 0; k-- {
		v := order[k]
		var longest time.Duration
		g.succ(v, func(o int) { longest = max(longest, rem[o]) })
		if v >= n {
			rem[v] = longest // a stage group takes no time itself
			continue
		}
		d, ok := expected(g.Nodes[v].Name)
		if !ok || d <= 0 {
			d = DefaultDuration
		}
		rem[v] = d + longest
	}
	return rem[:n]
}

// Key orders ready work: higher priority first, then the longer expected
// remaining path, then the earlier arrival.
type Key struct {
	Priority  int
	Remaining time.Duration
	Seq       uint64
}

// Less reports whether work with key a starts before work with key b.
func (a Key) Less(b Key) bool {
	if c := cmp.Compare(b.Priority, a.Priority); c != 0 {
		return c < 0
	}
	if c := cmp.Compare(b.Remaining, a.Remaining); c != 0 {
		return c < 0
	}
	return a.Seq < b.Seq
}
