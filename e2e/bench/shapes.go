package main

import (
	"fmt"
	"strconv"
	"strings"
)

// shapeKind says how a shape is measured.
type shapeKind int

const (
	// kindJob applies a job, runs it once and waits for the end.
	kindJob shapeKind = iota
	// kindIdle connects simulated agents and measures batond at rest.
	kindIdle
)

// shape is one row of the report.
type shape struct {
	// key names the shape in work directories and profile files.
	key string
	// label is the row's name in the report.
	label string
	kind  shapeKind

	// job is the job's name and yaml its file (kindJob).
	job  string
	yaml string
	// tasks is how many task instances the run executes.
	tasks int
	// parallel is how many attempts may be in flight at once.
	parallel int
	// agents and slots are the agents serving the shape; sim says they are
	// simulated.
	agents, slots int
	sim           bool
	// full runs batond with SQLite synchronous=full.
	full bool
}

// shapes returns the job shapes of cfg, in report order; bin is the
// program every task runs (/bin/true).
func (c *Config) shapes(bin string) []*shape {
	return []*shape{
		{
			key:   "fanout",
			label: fmt.Sprintf("fanout: %d independent tasks, max_parallel %d, 1 agent with %d slots", c.Fanout, c.FanoutParallel, c.FanoutParallel),
			job:   "bench-fanout", yaml: fanoutJob("bench-fanout", c.Fanout, c.FanoutParallel, bin),
			tasks: c.Fanout, parallel: c.FanoutParallel, agents: 1, slots: c.FanoutParallel,
		},
		{
			key:   "chain",
			label: fmt.Sprintf("chain: %d tasks in a line, 1 agent", c.Chain),
			job:   "bench-chain", yaml: chainJob("bench-chain", c.Chain, bin),
			tasks: c.Chain, parallel: 1, agents: 1, slots: 1,
		},
		{
			key: "foreach",
			label: fmt.Sprintf("foreach: %d items, max_parallel %d, %d agents with %d slots", c.Foreach, c.ForeachParallel,
				c.ForeachAgents, c.ForeachParallel/c.ForeachAgents),
			job: "bench-foreach", yaml: foreachJob("bench-foreach", c.Foreach, c.ForeachParallel, bin),
			tasks: c.Foreach, parallel: c.ForeachParallel, agents: c.ForeachAgents, slots: c.ForeachParallel / c.ForeachAgents,
		},
		{
			key: "ceiling",
			label: fmt.Sprintf("control-plane ceiling: %d independent tasks, max_parallel %d, %d simulated agents with %d slots",
				c.Ceiling, c.CeilingParallel, c.CeilingAgents, c.CeilingParallel/c.CeilingAgents),
			job: "bench-ceiling", yaml: fanoutJob("bench-ceiling", c.Ceiling, c.CeilingParallel, bin),
			tasks: c.Ceiling, parallel: c.CeilingParallel, agents: c.CeilingAgents, slots: c.CeilingParallel / c.CeilingAgents,
			sim: true,
		},
		{
			key:   "fanout-full",
			label: fmt.Sprintf("fanout, synchronous=full: %d tasks, max_parallel %d, 1 agent", c.Fanout, c.FanoutParallel),
			job:   "bench-fanout", yaml: fanoutJob("bench-fanout", c.Fanout, c.FanoutParallel, bin),
			tasks: c.Fanout, parallel: c.FanoutParallel, agents: 1, slots: c.FanoutParallel, full: true,
		},
		{
			key:   "chain-full",
			label: fmt.Sprintf("chain, synchronous=full: %d tasks in a line, 1 agent", c.Chain),
			job:   "bench-chain", yaml: chainJob("bench-chain", c.Chain, bin),
			tasks: c.Chain, parallel: 1, agents: 1, slots: 1, full: true,
		},
	}
}

// idleShape returns the idle-scale shape of cfg.
func (c *Config) idleShape() *shape {
	return &shape{
		key:   "idle",
		label: fmt.Sprintf("idle: %d simulated agents connected and heartbeating", c.IdleAgents),
		kind:  kindIdle, agents: c.IdleAgents, slots: 1, sim: true,
	}
}

// fanoutJob is n independent tasks running bin, at most parallel at once.
func fanoutJob(name string, n, parallel int, bin string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "name: %s\nmax_parallel: %d\ntasks:\n", name, parallel)
	for i := 1; i <= n; i++ {
		fmt.Fprintf(&b, "  - {name: t%d, run: [%q]}\n", i, bin)
	}
	return b.String()
}

// chainJob is n tasks running bin, each needing the one before.
func chainJob(name string, n int, bin string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "name: %s\ntasks:\n  - {name: t1, run: [%q]}\n", name, bin)
	for i := 2; i <= n; i++ {
		fmt.Fprintf(&b, "  - {name: t%d, needs: [t%d], run: [%q]}\n", i, i-1, bin)
	}
	return b.String()
}

// foreachJob is one for-each task over the items 1..n running bin, at
// most parallel items at once.
func foreachJob(name string, n, parallel int, bin string) string {
	items := make([]string, n)
	for i := range items {
		items[i] = strconv.Itoa(i + 1)
	}
	return fmt.Sprintf("name: %s\ntasks:\n  - name: each\n    max_parallel: %d\n    for_each: {items: [%s]}\n    run: [%q]\n",
		name, parallel, strings.Join(items, ", "), bin)
}
