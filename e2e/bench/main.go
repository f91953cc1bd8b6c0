// Command bench is Baton's benchmark; `make bench` runs it.
//
// It builds batond, baton-agent and simagent (without the race detector)
// from the repository it runs in, starts them as processes on 127.0.0.1,
// and measures these shapes, each [Config.Reps] times, reporting medians:
//
//   - spawn ceiling: this machine starting /bin/true from Go with two
//     workers, measured in the same run, so every shape is also reported
//     as a fraction of it;
//   - fanout: independent /bin/true tasks under a job max_parallel, one
//     real agent with as many slots;
//   - chain: /bin/true tasks in a line;
//   - foreach: a for-each task over many items under a task max_parallel,
//     spread over several real agents;
//   - control-plane ceiling: the fanout shape answered by simulated agents
//     (real gRPC streams in a separate simagent process) that start no
//     process;
//   - idle scale: many simulated agents connected and heartbeating;
//   - fanout and chain again with SQLite synchronous=full.
//
// Each repetition of a shape gets a fresh batond on a fresh embedded SQLite
// store with the settings batond ships by default (synchronous=normal
// unless the shape says full). batond's CPU time and peak RSS come from
// /proc. The report is Markdown with the date, commit and machine, written
// to -out (docs/benchmarks.md under make bench).
//
// With -profile DIR, the first repetition of each shape runs batond under
// `perf record` (call graphs, cpu-clock) and writes DIR/<shape>.perf.data
// and a flat top list DIR/<shape>.txt.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"
)

func main() { os.Exit(mainCode()) }

// mainCode runs cli until SIGINT or SIGTERM cancels it and returns the exit
// code. It is apart from main so that its deferred calls run before
// os.Exit.
func mainCode() int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return cli(ctx, os.Args[1:], os.Stderr)
}

// cli runs the benchmark as the command line asks and returns the exit
// code: 0 when the report was written, 1 when the benchmark failed, 2 on
// bad usage. A failed write to stderr has nowhere to be reported; the exit
// code still says what happened.
func cli(ctx context.Context, args []string, stderr io.Writer) int {
	cfg := DefaultConfig()
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&cfg.Out, "out", "docs/benchmarks.md", `where to write the Markdown report ("-" for stdout)`)
	fs.StringVar(&cfg.Repo, "repo", "", "module root to build the binaries from (default: the one holding the working directory)")
	fs.StringVar(&cfg.Dir, "dir", "", "work directory for stores, agent state and logs (default: a temporary directory, removed at the end)")
	fs.StringVar(&cfg.Profile, "profile", "", "record batond with perf during the first repetition of each shape into this directory")
	fs.BoolVar(&cfg.Secure, "secure", false, "run every shape with security on: TLS, agent client certificates with approval, API tokens")
	fs.IntVar(&cfg.Reps, "reps", cfg.Reps, "repetitions of each shape")
	fs.IntVar(&cfg.Spawn, "spawn", cfg.Spawn, "spawn ceiling: /bin/true starts")
	fs.IntVar(&cfg.SpawnWorkers, "spawn-workers", cfg.SpawnWorkers, "spawn ceiling: goroutines starting /bin/true")
	fs.IntVar(&cfg.Fanout, "fanout", cfg.Fanout, "fanout: tasks")
	fs.IntVar(&cfg.FanoutParallel, "fanout-parallel", cfg.FanoutParallel, "fanout: job max_parallel and the agent's slots")
	fs.IntVar(&cfg.Chain, "chain", cfg.Chain, "chain: tasks in the line")
	fs.IntVar(&cfg.Foreach, "foreach", cfg.Foreach, "foreach: items")
	fs.IntVar(&cfg.ForeachParallel, "foreach-parallel", cfg.ForeachParallel, "foreach: the task's max_parallel, split evenly over the agents' slots")
	fs.IntVar(&cfg.ForeachAgents, "foreach-agents", cfg.ForeachAgents, "foreach: real agents")
	fs.IntVar(&cfg.Ceiling, "ceiling", cfg.Ceiling, "control-plane ceiling: tasks")
	fs.IntVar(&cfg.CeilingParallel, "ceiling-parallel", cfg.CeilingParallel, "control-plane ceiling: job max_parallel, split evenly over the simulated agents' slots")
	fs.IntVar(&cfg.CeilingAgents, "ceiling-agents", cfg.CeilingAgents, "control-plane ceiling: simulated agents")
	fs.IntVar(&cfg.IdleAgents, "idle-agents", cfg.IdleAgents, "idle scale: simulated agents")
	fs.DurationVar(&cfg.IdleWindow, "idle-window", cfg.IdleWindow, "idle scale: length of each measured window")
	fs.DurationVar(&cfg.RunTimeout, "run-timeout", cfg.RunTimeout, "longest one run may take")
	keep := fs.Bool("keep", false, "keep the work directory (stores and logs) when -dir is not given")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		_, _ = fmt.Fprintf(stderr, "bench: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	cfg.KeepDir = *keep
	cfg.Logger = slog.New(slog.NewTextHandler(stderr, nil))
	if err := cfg.validate(); err != nil {
		_, _ = fmt.Fprintln(stderr, "bench:", err)
		return 2
	}
	start := time.Now()
	res, err := Run(ctx, cfg)
	if err != nil {
		_, _ = fmt.Fprintln(stderr, "bench:", err)
		return 1
	}
	report := res.Markdown()
	if cfg.Out == "-" {
		fmt.Print(report)
	} else if err := writeFileAtomic(cfg.Out, []byte(report)); err != nil {
		_, _ = fmt.Fprintln(stderr, "bench:", err)
		return 1
	}
	cfg.Logger.Info("benchmark done", slog.String("report", cfg.Out), slog.Duration("took", time.Since(start).Round(time.Second)))
	return 0
}
