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
// back to pending, to be decided again. Every task downstream of a task that
// runs again is reset too, whatever its edge's status and even if it
// succeeded: the restarted run behaves as if the failed part had succeeded
// the first time, so a cleanup behind a `completed` edge follows the rerun
// and a `failure` handler is decided again. A for-each task that had
// expanded keeps its items as they were: the task goes back to running and
// each item to run again becomes ready, so a loop resumes only its
// unfinished items (all of them when the task is downstream of a rerun).
// from names the task of RestartFrom.
func Restart(g *Graph, insts []Instance, mode RestartMode, from string) ([]Reset, error) {
	// again marks tasks whose every instance runs again.
	again := make([]bool, len(g.Nodes))
	// rerun marks tasks that run again at least in part: the seeds whose
	// downstream is reset.
	rerun := make([]bool, len(g.Nodes))
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
		again[start], rerun[start] = true, true
	case RestartFailed:
	default:
		return nil, fmt.Errorf("unknown restart mode %d", mode)
	}
	for _, in := range insts {
		if in.State == store.InstanceSucceeded {
			continue
		}
		ti, ok := g.Lookup(in.Task)
		if !ok {
			return nil, fmt.Errorf("instance of unknown task %q", in.Task)
		}
		rerun[ti] = true
	}
	// Everything that waits on a rerun task, through needs or stages, runs
	// again in full.
	var stack []int
	seen := make([]bool, len(g.Nodes)+len(g.Groups))
	for ti, r := range rerun {
		if r {
			stack = append(stack, ti)
			seen[ti] = true
		}
	}
	for len(stack) > 0 {
		v := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		g.succ(v, func(o int) {
			if o < len(g.Nodes) {
				again[o] = true
			}
			if !seen[o] {
				seen[o] = true
				stack = append(stack, o)
			}
		})
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
		redo := again[ti] || in.State != store.InstanceSucceeded
		if g.Nodes[ti].Task.ForEach != nil && in.Item == store.NoItem {
			// The task-level row of a for-each task.
			if !redo && !(expanded[ti] && anyItemToRerun(insts, in.Task)) {
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
		if redo {
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
