package main

import (
	"fmt"
	"strings"
	"time"
)

// Goals of the performance issue, checked against the medians.
const (
	goalFanoutFraction = 0.7
	goalChainHopMS     = 1.5
	goalDispatchP99MS  = 10
	goalCeilingPerSec  = 10_000
	goalIdleCPUPercent = 5
	goalIdleRSSMB      = 150
	goalForeachGrowMB  = 100
)

// The line near the top of a report that says which mode it measured.
const (
	securityOff = "Security: off (loopback, no TLS, no tokens)"
	securityOn  = "Security: on (TLS, agent client certificates with approval, API tokens)"
)

// medianOf returns the median of f over samples.
func medianOf(samples []sample, f func(sample) float64) float64 {
	xs := make([]float64, len(samples))
	for i, s := range samples {
		xs[i] = f(s)
	}
	return median(xs)
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
func mb(b int64) float64         { return float64(b) / (1 << 20) }

func cpuPercent(s sample) float64 {
	if s.Wall <= 0 {
		return 0
	}
	return 100 * s.CPU.Seconds() / s.Wall.Seconds()
}

// row returns the row of the shape with key, or nil.
func (r *Result) row(key string) *row {
	for _, x := range r.Rows {
		if x.shape.key == key {
			return x
		}
	}
	return nil
}

// Markdown renders the report: the setting, medians of throughput,
// latency and batond's resources, the goals, every repetition, and
// how it was measured.
func (r *Result) Markdown() string {
	var b strings.Builder
	cfg := r.Config
	spawn := medianOf(r.Spawn, rate)
	p := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }

	target, title := "make bench", "Benchmarks"
	if cfg.Secure {
		target, title = "make bench-secure", "Benchmarks with security on"
	}
	p("# %s\n\n", title)
	p("`%s` measured these numbers and wrote this file; run it again to\n", target)
	p("measure your own machine (it needs Linux, Go and about five minutes).\n")
	p("It starts a real `batond` on its embedded SQLite store and real agents on\n")
	p("127.0.0.1, runs each shape %s and reports medians.\n\n", plural(cfg.Reps, "time"))
	if cfg.Secure {
		p("**%s.**\n", securityOn)
		p("The same shapes with security off (`make bench`) are in\n")
		p("[benchmarks.md](benchmarks.md); what security adds, and where, is under\n")
		p("*How it is measured*.\n\n")
	} else {
		p("**%s.**\n", securityOff)
		p("The same shapes with security on (`make bench-secure`) are in\n")
		p("[benchmarks-secure.md](benchmarks-secure.md).\n\n")
	}
	if !cfg.isDefault() {
		p("**These are not `%s`'s sizes** (a smoke run or custom flags), so the\n", target)
		p("goals below are not evaluated.\n\n")
	}
	p("| | |\n|---|---|\n")
	p("| date | %s |\n", r.Date.Format("2006-01-02 15:04 UTC"))
	p("| commit | `%s` |\n", r.Commit)
	p("| machine | %s; %d CPUs; %.1f GiB RAM; %s |\n", r.CPU, r.Cores, float64(r.Mem)/(1<<30), r.Kernel)
	p("| store | SQLite in WAL mode on %s; synchronous=normal (batond's default) unless the shape says full |\n", r.FS)
	p("| Go | %s |\n", r.GoVersion)
	p("| tasks run | `%s` |\n", r.TrueBin)
	p("| took | %s |\n", r.Took.Round(time.Second))
	p("| load average | %s when the benchmark started, %s when it ended (1 minute; anything else running on the machine skews the numbers) |\n\n",
		r.LoadStart, r.LoadEnd)

	p("## Throughput and latency\n\n")
	p("Medians of %s. *× spawn ceiling* divides a shape's tasks per second by\n", plural(cfg.Reps, "repetition"))
	p("the spawn ceiling's. *ms per task* is the run's time divided by its tasks: for\n")
	p("a chain, the time per hop.\n\n")
	p("| shape | tasks | seconds | tasks/s | × spawn ceiling | ms per task | ready→started p50 / p99 ms | dispatched→started p50 / p99 ms |\n")
	p("|---|--:|--:|--:|--:|--:|--:|--:|\n")
	p("| spawn ceiling: `%s` from Go, %d workers | %d | %.2f | %.0f | 1.00 | %.3f | – | – |\n",
		r.TrueBin, cfg.SpawnWorkers, cfg.Spawn, medianOf(r.Spawn, func(s sample) float64 { return s.Wall.Seconds() }),
		spawn, medianOf(r.Spawn, perTaskMS))
	for _, x := range r.Rows {
		if x.shape.kind != kindJob {
			continue
		}
		disp := "–"
		if len(x.samples) > 0 && x.samples[0].HasDisp {
			disp = fmt.Sprintf("%.1f / %.1f", medianOf(x.samples, func(s sample) float64 { return ms(s.DispP50) }),
				medianOf(x.samples, func(s sample) float64 { return ms(s.DispP99) }))
		}
		tps := medianOf(x.samples, rate)
		p("| %s | %d | %.2f | %.0f | %.2f | %.3f | %.1f / %.1f | %s |\n", x.shape.label, x.shape.tasks,
			medianOf(x.samples, func(s sample) float64 { return s.Wall.Seconds() }), tps, fraction(tps, spawn),
			medianOf(x.samples, perTaskMS),
			medianOf(x.samples, func(s sample) float64 { return ms(s.ReadyP50) }),
			medianOf(x.samples, func(s sample) float64 { return ms(s.ReadyP99) }), disp)
	}

	p("\n## batond's resources\n\n")
	p("CPU is user plus system time of the batond process while the run went (idle:\n")
	p("during one window of %s); *%% of one core* divides it by that time. *Agents\n", cfg.IdleWindow)
	p("CPU* is the same for the agent processes (the baton-agents with their runner\n")
	p("processes, or simagent), without the tasks' processes. RSS *before* is read just before the run\n")
	p("starts (idle: before any agent connects), *after* when it ends, *peak* is\n")
	p("VmHWM by then; *growth* is peak minus before.\n\n")
	p("| shape | CPU s | %% of one core | agents CPU s | RSS before MB | RSS after MB | peak RSS MB | growth MB |\n")
	p("|---|--:|--:|--:|--:|--:|--:|--:|\n")
	for _, x := range r.Rows {
		p("| %s | %.2f | %.1f | %.2f | %.1f | %.1f | %.1f | %.1f |\n", x.shape.label,
			medianOf(x.samples, func(s sample) float64 { return s.CPU.Seconds() }),
			medianOf(x.samples, cpuPercent),
			medianOf(x.samples, func(s sample) float64 { return s.AgentCPU.Seconds() }),
			medianOf(x.samples, func(s sample) float64 { return mb(s.RSSBefore) }),
			medianOf(x.samples, func(s sample) float64 { return mb(s.RSSAfter) }),
			medianOf(x.samples, func(s sample) float64 { return mb(s.Peak) }),
			medianOf(x.samples, func(s sample) float64 { return mb(s.Peak - s.RSSBefore) }))
	}

	p("\n## Goals\n\n")
	p("The goals of the performance issue, against the medians above.\n\n")
	p("| goal | measured | met |\n|---|--:|---|\n")
	for _, g := range r.goals() {
		met := "no"
		switch {
		case !cfg.isDefault():
			met = "not evaluated"
		case g.met:
			met = "yes"
		}
		p("| %s | %s | %s |\n", g.goal, g.measured, met)
	}

	p("\n## Every repetition\n\n")
	p("| shape | measure |")
	for i := range cfg.Reps {
		p(" %d |", i+1)
	}
	p("\n|---|---|%s\n", strings.Repeat("--:|", cfg.Reps))
	reps := func(label, measure string, samples []sample, f func(sample) string) {
		p("| %s | %s |", label, measure)
		for _, s := range samples {
			p(" %s |", f(s))
		}
		p("\n")
	}
	perSec := func(s sample) string { return fmt.Sprintf("%.0f", rate(s)) }
	reps("spawn ceiling", "tasks/s", r.Spawn, perSec)
	for _, x := range r.Rows {
		if x.shape.kind == kindIdle {
			reps(x.shape.key, "% of one core", x.samples, func(s sample) string { return fmt.Sprintf("%.1f", cpuPercent(s)) })
			reps(x.shape.key, "RSS after MB", x.samples, func(s sample) string { return fmt.Sprintf("%.1f", mb(s.RSSAfter)) })
			continue
		}
		reps(x.shape.key, "tasks/s", x.samples, perSec)
		reps(x.shape.key, "ready→started p99 ms", x.samples, func(s sample) string { return fmt.Sprintf("%.0f", ms(s.ReadyP99)) })
		reps(x.shape.key, "attempts", x.samples, func(s sample) string { return fmt.Sprint(s.Attempts) })
	}

	if cfg.Profile != "" {
		p("\n## Profiles\n\n")
		p("The hottest functions of batond (self time, `perf record -e cpu-clock -g`)\n")
		p("in the first repetition of each shape; full profiles are in `%s`.\n", cfg.Profile)
		for _, x := range r.Rows {
			if len(x.samples) == 0 || x.samples[0].Profile == "" {
				continue
			}
			p("\n%s:\n\n```\n%s\n```\n", x.shape.key, x.samples[0].Profile)
		}
	}

	p("\n## How it is measured\n\n")
	p(`- The harness (e2e/bench) builds batond, baton-agent and simagent with
  ` + "`go build`" + ` (no race detector) and starts them as processes on 127.0.0.1 with
  port 0. Every repetition of every shape gets a fresh batond on a fresh
  store, with batond's default flags (agent timeout 30s, so agents heartbeat
  every 10s) and log level.
- Repetitions go round all shapes in turn. The spawn ceiling is measured in
  each round: the harness starts the task program with ` + "`os/exec`" + ` from the
  given number of goroutines, the most a single machine could do with no
  control plane at all.
- A run's time is from its creation to its end, both by batond's clock
  (Run.create_time and Run.end_time). The harness applies the job, starts the
  run and waits for it with the client package (StartRun, WaitRun).
- *ready→started* is measured per attempt from attempt timestamps (each
  child's start and end time as its agent reported them). An attempt can
  start once its upstream is done and a slot under max_parallel is free:
  with at most P attempts in flight, the i-th start (in start order) needs
  the (i−P)-th end, so its latency is its start minus that end (the run's
  creation for the first P). For a chain (P = 1) that is exactly the gap
  between one task's end and the next task's start. It includes the agent
  reporting the end, batond committing it, placing the next attempt,
  committing that, sending StartTask, and the agent journaling and spawning
  the child.
- *dispatched→started* is each attempt's start minus its dispatch time
  (when batond placed it and wrote the attempt row), from
  RunService.ListAttempts, or from the run's dispatched events where batond
  does not serve ListAttempts.
- batond's SQLite store keeps times to the millisecond, so per-attempt
  latencies are whole milliseconds, each within 1 ms.
- The control-plane ceiling runs the fanout shape against simulated agents:
  simagent, a separate process holding one gRPC connection and Connect
  stream per agent, answers each StartTask at once with TaskStarted and a
  successful TaskFinished and starts nothing, so only batond (and the
  harness watching the run) does work.
- Idle: simagent connects the agents (each its own connection and stream,
  first heartbeat at a random point of the interval, then one per interval)
  and the harness measures batond over consecutive windows.
- batond's CPU time is utime+stime from /proc/<pid>/stat; RSS is VmRSS and
  peak RSS VmHWM from /proc/<pid>/status. The harness, the agents and
  batond share the machine's CPUs.
- synchronous=full rows start batond with
  ` + "`--db 'sqlite:///path/baton.db?synchronous=full'`" + `: every commit is fsynced.
- Flags of ` + "`go run ./e2e/bench -h`" + ` change the sizes; ` + "`-profile DIR`" + ` records batond
  with perf during the first repetition of each shape; ` + "`-secure`" + ` turns security
  on (` + "`make bench-secure`" + `).
`)
	if cfg.Secure {
		p(`
### Security on

- Once per benchmark run, before any shape, the harness makes a private CA,
  batond's server certificate for 127.0.0.1 and a client certificate for
  every agent name the shapes use (ECDSA P-256, with client/pki): one per
  baton-agent and one per simulated agent.
- Every batond starts with ` + "`--tls-cert --tls-key`" + ` (TLS on the gRPC and REST
  listeners), ` + "`--agent-ca`" + ` (each agent must present a client certificate
  naming it), ` + "`--agent-approval`" + ` and ` + "`--auth on`" + `. Before it starts,
  ` + "`batond init --token-file`" + ` migrates its fresh store and makes the admin
  token the harness's own client sends, over TLS, with every call.
- Before the agents connect, the harness approves each one through
  AgentAdminService.ApproveAgent with the slots it will claim and no labels
  (pre-approval). When an agent connects, batond looks its approval up
  once, at the Hello of its connection, and finds it, so the agent gets
  work at once; the harness checks that no agent is left pending.
  baton-agents get ` + "`--ca-file --tls-cert --tls-key`" + `; simagent gets
  ` + "`--ca-file --cert-dir`" + `, each simulated agent presenting its own
  certificate.
- What security adds, and where: one TLS handshake per connection (each
  agent's, and the harness's one), with a client-certificate check and an
  approval lookup for each agent, all before a run starts (idle: before the
  windows). During a run every message on the agents' streams and on the
  harness's connection is encrypted and authenticated (TLS records). The
  token is checked once per API call, not per message, and a run makes few
  calls (apply, start, one WaitRun stream, ListAttempts); the agents'
  stream carries no token.
- Idle RSS grows with each connection's TLS state: crypto/tls keeps record
  buffers and the peer's certificate per connection. (grpc-go's own 32 KB
  read buffer, which it pools only on plaintext connections, is turned off
  on TLS ones: crypto/tls buffers whole records already.)
- Certificate generation, ` + "`batond init`" + ` and the approvals are not in any
  measured time.
`)
	}
	return b.String()
}

// plural returns "1 time", "3 times".
func plural(n int, word string) string {
	if n == 1 {
		return "1 " + word
	}
	return fmt.Sprintf("%d %ss", n, word)
}

func perTaskMS(s sample) float64 {
	if s.Tasks == 0 {
		return 0
	}
	return ms(s.Wall) / float64(s.Tasks)
}

func fraction(x, of float64) float64 {
	if of == 0 {
		return 0
	}
	return x / of
}

// goal is one goal of the issue with what was measured.
type goal struct {
	goal, measured string
	met            bool
}

// goals checks the goals against the medians.
func (r *Result) goals() []goal {
	spawn := medianOf(r.Spawn, rate)
	var gs []goal
	if x := r.row("fanout"); x != nil {
		f := fraction(medianOf(x.samples, rate), spawn)
		gs = append(gs, goal{fmt.Sprintf("fanout ≥ %.1f × spawn ceiling", goalFanoutFraction), fmt.Sprintf("%.2f ×", f), f >= goalFanoutFraction})
		p99 := medianOf(x.samples, func(s sample) float64 { return ms(s.ReadyP99) })
		gs = append(gs, goal{fmt.Sprintf("dispatch (ready→started) p99 ≤ %d ms during fanout", goalDispatchP99MS), fmt.Sprintf("%.1f ms", p99), p99 <= goalDispatchP99MS})
	}
	if x := r.row("chain"); x != nil {
		hop := medianOf(x.samples, perTaskMS)
		gs = append(gs, goal{fmt.Sprintf("chain ≤ %.1f ms per hop", goalChainHopMS), fmt.Sprintf("%.2f ms", hop), hop <= goalChainHopMS})
	}
	if x := r.row("ceiling"); x != nil {
		tps := medianOf(x.samples, rate)
		gs = append(gs, goal{fmt.Sprintf("control-plane ceiling ≥ %d tasks/s", goalCeilingPerSec), fmt.Sprintf("%.0f tasks/s", tps), tps >= goalCeilingPerSec})
	}
	if x := r.row("idle"); x != nil {
		cpu := medianOf(x.samples, cpuPercent)
		rss := medianOf(x.samples, func(s sample) float64 { return mb(s.RSSAfter) })
		gs = append(gs, goal{fmt.Sprintf("%d idle agents: batond < %d%% of one core", x.shape.agents, goalIdleCPUPercent), fmt.Sprintf("%.1f %%", cpu), cpu < goalIdleCPUPercent})
		gs = append(gs, goal{fmt.Sprintf("%d idle agents: batond RSS < %d MB", x.shape.agents, goalIdleRSSMB), fmt.Sprintf("%.1f MB", rss), rss < goalIdleRSSMB})
	}
	if x := r.row("foreach"); x != nil {
		grow := medianOf(x.samples, func(s sample) float64 { return mb(s.Peak - s.RSSBefore) })
		gs = append(gs, goal{fmt.Sprintf("foreach %d items: batond RSS growth < %d MB", x.shape.tasks, goalForeachGrowMB), fmt.Sprintf("%.1f MB", grow), grow < goalForeachGrowMB})
	}
	return gs
}
