package e2e

import (
	"slices"
	"testing"
	"time"

	batonv1 "github.com/batonhq/baton/gen/baton/v1"
)

// longestFirst has a long chain (three tasks of 0.6 s) and short work: a
// chain of four 0.1 s tasks and two independent 0.1 s tasks. The short
// chain is listed first and has more hops, so without known durations
// (every task counted as the same default) its head would start first;
// with the durations of an earlier run, the long chain's head must.
const longestFirst = `
name: longest-first
tasks:
  - {name: short-1, run: [TASK, sleep, '0.1']}
  - {name: short-2, needs: [short-1], run: [TASK, sleep, '0.1']}
  - {name: short-3, needs: [short-2], run: [TASK, sleep, '0.1']}
  - {name: short-4, needs: [short-3], run: [TASK, sleep, '0.1']}
  - {name: side-1, run: [TASK, sleep, '0.1']}
  - {name: side-2, run: [TASK, sleep, '0.1']}
  - {name: long-1, run: [TASK, sleep, '0.6']}
  - {name: long-2, needs: [long-1], run: [TASK, sleep, '0.6']}
  - {name: long-3, needs: [long-2], run: [TASK, sleep, '0.6']}
`

// TestLongestChainFirst runs the job once with plenty of slots, so each
// task's duration is recorded, then again on one agent with one slot: the
// long chain's head is the first attempt to start.
func TestLongestChainFirst(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	wide := c.agent("wide", 8)
	c.waitAgents(1)
	c.apply(longestFirst)
	first := c.wait(c.startRun("longest-first", nil).GetId())
	if first.GetState() != batonv1.RunState_RUN_STATE_SUCCEEDED {
		t.Fatalf("first run = %v (%s), want SUCCEEDED", first.GetState(), first.GetError())
	}
	for _, a := range c.attempts(first.GetId(), "") {
		t.Logf("first run: %s took %s", a.GetTask(), a.GetEndTime().AsTime().Sub(a.GetStartTime().AsTime()).Round(time.Millisecond))
	}

	// Slots become scarce: one agent with one slot.
	wide.stop(t)
	c.agent("narrow", 1)
	waitFor(t, 30*time.Second, "only agent narrow to be connected", func() bool {
		agents, err := c.c.ListAgents(t.Context())
		if err != nil {
			return false
		}
		connected := map[string]bool{}
		for _, a := range agents {
			connected[a.GetName()] = a.GetState() == batonv1.AgentState_AGENT_STATE_CONNECTED
		}
		return connected["narrow"] && !connected["wide"]
	})
	second := c.wait(c.startRun("longest-first", nil).GetId())
	if second.GetState() != batonv1.RunState_RUN_STATE_SUCCEEDED {
		t.Fatalf("second run = %v (%s), want SUCCEEDED", second.GetState(), second.GetError())
	}
	atts := c.attempts(second.GetId(), "")
	if len(atts) != 9 {
		t.Fatalf("second run has %d attempts, want 9", len(atts))
	}
	sorted := sortedByStart(atts)
	for _, a := range sorted {
		t.Logf("second run: %s started %s", a.GetTask(), a.GetStartTime().AsTime().Format("15:04:05.000"))
	}
	if head := sorted[0]; head.GetTask() != "long-1" {
		t.Errorf("first task to start = %s, want long-1 (the head of the longest expected path)", head.GetTask())
	}
	for _, a := range atts {
		if a.GetAgent() != "narrow" {
			t.Errorf("%s ran on %s, want narrow", a.GetTask(), a.GetAgent())
		}
	}
}

// sortedByStart returns attempts ordered by start time.
func sortedByStart(atts []*batonv1.Attempt) []*batonv1.Attempt {
	out := slices.Clone(atts)
	slices.SortStableFunc(out, func(a, b *batonv1.Attempt) int {
		return a.GetStartTime().AsTime().Compare(b.GetStartTime().AsTime())
	})
	return out
}
