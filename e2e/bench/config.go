package main

import (
	"errors"
	"fmt"
	"log/slog"
	"time"
)

// Config says what the benchmark measures and where it works. The zero
// value is not usable; start from DefaultConfig or SmokeConfig.
type Config struct {
	// Repo is the module root the binaries are built from. Empty means the
	// module holding the working directory.
	Repo string
	// Dir is the work directory for stores, agent state and logs. Empty
	// means a temporary directory, removed at the end unless KeepDir.
	Dir string
	// KeepDir keeps the temporary work directory.
	KeepDir bool
	// Out is where cli writes the report; Run ignores it.
	Out string
	// Profile, when set, is a directory where the first repetition of each
	// shape records batond with perf.
	Profile string
	// Secure runs every shape with security on: batond serves TLS,
	// requires a client certificate from every agent (baton-agents and
	// simulated ones alike, each its own, made once per run) and its
	// approval, which the harness gives before the agents connect, and
	// requires an API token, which the harness gets from `batond init`.
	// Everything else is as without it, so the two reports compare.
	Secure bool

	// Reps is how many times each shape runs; the report gives medians.
	Reps int
	// Spawn is how many /bin/true processes the spawn ceiling starts, with
	// SpawnWorkers goroutines.
	Spawn, SpawnWorkers int
	// Fanout is the fanout shape's task count; FanoutParallel is its job
	// max_parallel and its one agent's slots.
	Fanout, FanoutParallel int
	// Chain is the chain shape's length.
	Chain int
	// Foreach is the foreach shape's item count; ForeachParallel is the
	// task's max_parallel, spread evenly over ForeachAgents agents' slots.
	Foreach, ForeachParallel, ForeachAgents int
	// Ceiling is the control-plane ceiling's task count; CeilingParallel is
	// its job max_parallel, spread evenly over CeilingAgents simulated
	// agents' slots.
	Ceiling, CeilingParallel, CeilingAgents int
	// IdleAgents simulated agents are connected for the idle shape, which
	// measures batond over Reps windows of IdleWindow each. IdleWindow
	// should cover at least one heartbeat interval (10s with batond's
	// default agent timeout).
	IdleAgents int
	IdleWindow time.Duration

	// RunTimeout bounds each run.
	RunTimeout time.Duration
	// Logger receives progress. Required.
	Logger *slog.Logger
}

// DefaultConfig returns the sizes of the performance issue: what `make
// bench` measures.
func DefaultConfig() Config {
	return Config{
		Reps:  3,
		Spawn: 2000, SpawnWorkers: 2,
		Fanout: 2000, FanoutParallel: 100,
		Chain:   300,
		Foreach: 10_000, ForeachParallel: 200, ForeachAgents: 4,
		Ceiling: 10_000, CeilingParallel: 400, CeilingAgents: 4,
		IdleAgents: 1000, IdleWindow: 10 * time.Second,
		RunTimeout: 3 * time.Minute,
	}
}

// SmokeConfig returns tiny sizes that still run every shape: the smoke test
// uses them so the benchmark cannot rot.
func SmokeConfig() Config {
	return Config{
		Reps:  1,
		Spawn: 20, SpawnWorkers: 2,
		Fanout: 20, FanoutParallel: 4,
		Chain:   5,
		Foreach: 20, ForeachParallel: 4, ForeachAgents: 2,
		Ceiling: 20, CeilingParallel: 4, CeilingAgents: 2,
		IdleAgents: 2, IdleWindow: 200 * time.Millisecond,
		RunTimeout: time.Minute,
	}
}

// isDefault reports whether c measures the sizes of DefaultConfig, the
// sizes the goals are stated for.
func (c *Config) isDefault() bool {
	d := DefaultConfig()
	return c.Spawn == d.Spawn && c.SpawnWorkers == d.SpawnWorkers && c.Fanout == d.Fanout &&
		c.FanoutParallel == d.FanoutParallel && c.Chain == d.Chain && c.Foreach == d.Foreach &&
		c.ForeachParallel == d.ForeachParallel && c.ForeachAgents == d.ForeachAgents &&
		c.Ceiling == d.Ceiling && c.CeilingParallel == d.CeilingParallel && c.CeilingAgents == d.CeilingAgents &&
		c.IdleAgents == d.IdleAgents && c.IdleWindow == d.IdleWindow
}

func (c *Config) validate() error {
	if c.Logger == nil {
		return errors.New("config: logger is required")
	}
	positive := []struct {
		name string
		v    int
	}{
		{"reps", c.Reps}, {"spawn", c.Spawn}, {"spawn-workers", c.SpawnWorkers},
		{"fanout", c.Fanout}, {"fanout-parallel", c.FanoutParallel}, {"chain", c.Chain},
		{"foreach", c.Foreach}, {"foreach-parallel", c.ForeachParallel}, {"foreach-agents", c.ForeachAgents},
		{"ceiling", c.Ceiling}, {"ceiling-parallel", c.CeilingParallel}, {"ceiling-agents", c.CeilingAgents},
		{"idle-agents", c.IdleAgents},
	}
	for _, p := range positive {
		if p.v < 1 {
			return fmt.Errorf("%s: must be at least 1, got %d", p.name, p.v)
		}
	}
	if c.ForeachParallel%c.ForeachAgents != 0 {
		return fmt.Errorf("foreach-parallel: %d does not split evenly over %d agents", c.ForeachParallel, c.ForeachAgents)
	}
	if c.CeilingParallel%c.CeilingAgents != 0 {
		return fmt.Errorf("ceiling-parallel: %d does not split evenly over %d agents", c.CeilingParallel, c.CeilingAgents)
	}
	if c.IdleWindow <= 0 {
		return fmt.Errorf("idle-window: must be positive, got %s", c.IdleWindow)
	}
	if c.RunTimeout <= 0 {
		return fmt.Errorf("run-timeout: must be positive, got %s", c.RunTimeout)
	}
	return nil
}
