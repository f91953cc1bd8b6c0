package engine

import (
	"fmt"

	"github.com/batonhq/baton/server/store"
)

// RestartMode says which task instances a restart runs again.
type RestartMode int

// Restart modes.
const (
	// RestartFailed runs again every instance that did not succeed:
	// failed, blocked, cancelled, lost, skipped and never run.
	RestartFailed RestartMode = iota
	// RestartFrom also runs a named task and everything downstream of it,
	// succeeded or not.
	RestartFrom
	// RestartAll runs every instance again.
	RestartAll
)

// Reset is one instance a restart moves back.
type Reset struct {
	Task string
	Item int
	From store.InstanceState
	To   store.InstanceState
}

// Restart decides how a finished run restarts. Succeeded instances are kept
// (with their outputs) unless the mode says otherwise; everything else goes
// back to pending, to be decided again. A for-each task that had expanded
// keeps its items as they were: the task goes back to running and each item
// to run again becomes ready, so a loop resumes only its unfinished items.
// from names the task of RestartFrom.
func Restart(g *Graph, insts []Instance, mode RestartMode, from string) ([]Reset, error) {
	again := make([]bool, len(g.Nodes))
	switch mode {
	case RestartAll:
		for i := range again {
			again[i] = true
		}
	case RestartFrom:
		start, ok := g.Lookup(from)
		if !ok {
			return nil, fmt.Errorf("no task %q in job %q", from, g.Spec.Name)
		}
		// from and everything that waits on it, through needs or stages.
		stack := []int{start}
		seen := make([]bool, len(g.Nodes)+len(g.Groups))
		seen[start] = true
		for len(stack) > 0 {
			v := stack[len(stack)-1]
			stack = stack[:len(stack)-1]
			if v < len(g.Nodes) {
				again[v] = true
			}
			g.succ(v, func(o int) {
				if !seen[o] {
					seen[o] = true
					stack = append(stack, o)
				}
			})
		}
	case RestartFailed:
	default:
		return nil, fmt.Errorf("unknown restart mode %d", mode)
	}

	expanded := make([]bool, len(g.Nodes))
	for _, in := range insts {
		if in.Item != store.NoItem {
			if ti, ok := g.Lookup(in.Task); ok {
				expanded[ti] = true
			}
		}
	}
	var out []Reset
	for _, in := range insts {
		ti, ok := g.Lookup(in.Task)
		if !ok {
			return nil, fmt.Errorf("instance of unknown task %q", in.Task)
		}
		rerun := again[ti] || in.State != store.InstanceSucceeded
		if g.Nodes[ti].Task.ForEach != nil && in.Item == store.NoItem {
			// The task-level row of a for-each task.
			if !rerun && !(expanded[ti] && anyItemToRerun(insts, in.Task)) {
				continue
			}
			to := store.InstancePending
			if expanded[ti] {
				to = store.InstanceRunning
			}
			if in.State != to {
				out = append(out, Reset{Task: in.Task, Item: in.Item, From: in.State, To: to})
			}
			continue
		}
		if in.Item != store.NoItem {
			// An item: re-run unless it succeeded and its task keeps it.
			if !again[ti] && in.State == store.InstanceSucceeded {
				continue
			}
			out = append(out, Reset{Task: in.Task, Item: in.Item, From: in.State, To: store.InstanceReady})
			continue
		}
		if rerun {
			out = append(out, Reset{Task: in.Task, Item: in.Item, From: in.State, To: store.InstancePending})
		}
	}
	return out, nil
}

func anyItemToRerun(insts []Instance, task string) bool {
	for _, in := range insts {
		if in.Task == task && in.Item != store.NoItem && in.State != store.InstanceSucceeded {
			return true
		}
	}
	return false
}
