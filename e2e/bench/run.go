package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/batonhq/baton/client"
	batonv1 "github.com/batonhq/baton/gen/baton/v1"
)

// sample is one repetition of one shape.
type sample struct {
	// Tasks is how many task instances ran (idle: agents connected);
	// Attempts how many attempts the run made.
	Tasks, Attempts int
	// Wall is the run's time from creation to end by batond's clock (idle:
	// the measured window; spawn ceiling: the harness's clock).
	Wall time.Duration
	// ReadyP50 and ReadyP99 are percentiles of ready-to-started (see
	// readyToStarted).
	ReadyP50, ReadyP99 time.Duration
	// DispP50 and DispP99 are percentiles of the time from an attempt's
	// dispatch to its child's start; HasDisp says they were measured.
	DispP50, DispP99 time.Duration
	HasDisp          bool
	// CPU is batond's CPU time during Wall; AgentCPU the agent processes'
	// (baton-agents or simagent, without their children).
	CPU, AgentCPU time.Duration
	// RSSBefore is batond's RSS before the run (idle: before the agents
	// connected), RSSAfter at its end, Peak its peak RSS by then.
	RSSBefore, RSSAfter, Peak int64
	// Profile holds the top of the perf profile, when one was taken.
	Profile string
}

// row is a shape with its samples.
type row struct {
	shape   *shape
	samples []sample
}

// Result is everything a benchmark measured.
type Result struct {
	Config    Config
	Date      time.Time
	Took      time.Duration
	Commit    string
	GoVersion string
	CPU       string
	Cores     int
	Mem       int64
	Kernel    string
	// FS is the file system holding the stores.
	FS string
	// TrueBin is the program every task runs.
	TrueBin string
	// LoadStart and LoadEnd are the one-minute load averages when the
	// benchmark started and ended.
	LoadStart, LoadEnd string
	// Spawn holds the spawn ceiling's samples.
	Spawn []sample
	// Rows are the job shapes, then idle.
	Rows []*row
}

// Run builds the binaries and measures every shape cfg.Reps times. It
// returns an error when any measurement fails: a partial report would
// hide it.
func Run(ctx context.Context, cfg Config) (*Result, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	log := cfg.Logger
	began := time.Now()
	repo, err := moduleRoot(cfg.Repo)
	if err != nil {
		return nil, err
	}
	work := cfg.Dir
	if work == "" {
		if work, err = os.MkdirTemp("", "baton-bench-"); err != nil {
			return nil, fmt.Errorf("work dir: %w", err)
		}
		if !cfg.KeepDir {
			defer func() {
				if err := os.RemoveAll(work); err != nil {
					log.Warn("cannot remove the work directory", slog.String("dir", work), slog.Any("error", err))
				}
			}()
		} else {
			log.Info("keeping the work directory", slog.String("dir", work))
		}
	} else if err := os.MkdirAll(work, 0o755); err != nil {
		return nil, fmt.Errorf("work dir: %w", err)
	}
	if cfg.Profile != "" {
		if err := os.MkdirAll(cfg.Profile, 0o755); err != nil {
			return nil, fmt.Errorf("profile dir: %w", err)
		}
	}
	trueBin, err := trueProgram()
	if err != nil {
		return nil, err
	}
	log.Info("building batond, baton-agent and simagent", slog.String("repo", repo))
	bins, err := build(ctx, repo, filepath.Join(work, "bin"))
	if err != nil {
		return nil, err
	}
	res := &Result{Config: cfg, Date: began.UTC(), TrueBin: trueBin, FS: fsType(work), Cores: runtime.NumCPU(),
		LoadStart: loadAverage()}
	res.Commit = commitOf(ctx, repo)
	res.GoVersion = goVersion(ctx, repo)
	res.CPU, res.Mem, res.Kernel = machineInfo()

	h := &harness{cfg: cfg, log: log, bins: bins, work: work, allow: trueBin}
	shapes := cfg.shapes(trueBin)
	for _, sh := range shapes {
		res.Rows = append(res.Rows, &row{shape: sh})
	}
	if cfg.Secure {
		// Every agent name any shape uses gets its certificate now, before
		// the first shape, so that no shape pays for making them.
		sims := max(cfg.CeilingAgents, cfg.IdleAgents)
		log.Info("making certificates", slog.Int("agents", cfg.ForeachAgents), slog.Int("simulated_agents", sims))
		if h.sec, err = newSecurity(filepath.Join(work, "pki"), max(cfg.ForeachAgents, 1), sims, time.Now()); err != nil {
			return nil, err
		}
	}
	// Repetitions go round all shapes in turn, so a slow phase of the
	// machine does not land on one shape only.
	for rep := range cfg.Reps {
		s, err := spawnCeiling(ctx, trueBin, cfg.Spawn, cfg.SpawnWorkers)
		if err != nil {
			return nil, err
		}
		log.Info("measured", slog.String("shape", "spawn"), slog.Int("rep", rep+1),
			slog.Float64("per_second", rate(s)))
		res.Spawn = append(res.Spawn, s)
		for _, r := range res.Rows {
			s, err := h.measureJob(ctx, r.shape, rep)
			if err != nil {
				return nil, fmt.Errorf("%s, repetition %d: %w", r.shape.key, rep+1, err)
			}
			log.Info("measured", slog.String("shape", r.shape.key), slog.Int("rep", rep+1),
				slog.Float64("per_second", rate(s)), slog.Duration("ready_p99", s.ReadyP99),
				slog.Duration("cpu", s.CPU), slog.Int64("peak_mb", s.Peak>>20))
			r.samples = append(r.samples, s)
		}
	}
	idle := &row{shape: cfg.idleShape()}
	if idle.samples, err = h.measureIdle(ctx, idle.shape); err != nil {
		return nil, fmt.Errorf("idle: %w", err)
	}
	res.Rows = append(res.Rows, idle)
	res.Took = time.Since(began)
	res.LoadEnd = loadAverage()
	return res, nil
}

// harness runs shapes against the built binaries.
type harness struct {
	cfg Config
	log *slog.Logger
	// sec is the security settings of every cluster; nil when
	// cfg.Secure is not set.
	sec  *security
	bins binaries
	work string
	// allow is the one program the agents allow: what every task runs.
	allow string
}

// measureJob runs one repetition of a job shape on a fresh batond.
func (h *harness) measureJob(ctx context.Context, sh *shape, rep int) (s sample, err error) {
	cl, err := startCluster(ctx, h.bins, filepath.Join(h.work, fmt.Sprintf("%s-%d", sh.key, rep+1)), sh.full, h.sec, h.log)
	if err != nil {
		return s, err
	}
	defer func() {
		if cerr := cl.close(); cerr != nil && err == nil {
			err = cerr
		}
	}()
	if err := cl.approve(ctx, sh.sim, sh.agents, sh.slots); err != nil {
		return s, err
	}
	if sh.sim {
		err = cl.startSims(ctx, sh.agents, sh.slots)
	} else {
		err = cl.startAgents(ctx, sh.agents, sh.slots, h.allow)
	}
	if err != nil {
		return s, err
	}
	if _, _, err := cl.c.ApplyJob(ctx, sh.yaml); err != nil {
		return s, err
	}

	before, err := cl.stat()
	if err != nil {
		return s, err
	}
	agentsBefore, err := cl.agentsCPU()
	if err != nil {
		return s, err
	}
	var prof *profiles
	if h.cfg.Profile != "" && rep == 0 {
		if prof, err = startProfiles(ctx, cl, h.cfg.Profile, sh.key); err != nil {
			return s, err
		}
	}
	rctx, cancel := context.WithTimeout(ctx, h.cfg.RunTimeout)
	defer cancel()
	run, _, err := cl.c.StartRun(rctx, &client.StartRunParams{Job: sh.job})
	if err != nil {
		if prof != nil {
			prof.abort()
		}
		return s, err
	}
	// batond's CPU and RSS are read as soon as the run's terminal event
	// arrives, before WaitRun fetches the whole run.
	var (
		after       procStat
		agentsAfter time.Duration
		statErr     error
		ended       bool
		// dispatched holds each attempt's dispatched event time, for when
		// batond does not serve ListAttempts.
		dispatched = map[int64]time.Time{}
	)
	final, err := cl.c.WaitRun(rctx, run.GetId(), &client.WaitOptions{OnEvent: func(ev *batonv1.RunEvent) error {
		if ev.GetTaskState() == batonv1.TaskState_TASK_STATE_DISPATCHED && ev.GetAttemptId() != 0 {
			dispatched[ev.GetAttemptId()] = ev.GetTime().AsTime()
		}
		if !ended && ev.GetTask() == "" && client.Terminal(ev.GetRunState()) {
			ended = true
			after, agentsAfter, statErr = cl.stats()
		}
		return nil
	}})
	if prof != nil {
		top, perr := prof.stop(ctx)
		if err == nil {
			err = perr
		}
		s.Profile = top
	}
	if err != nil {
		return s, err
	}
	if !ended {
		after, agentsAfter, statErr = cl.stats()
	}
	if statErr != nil {
		return s, statErr
	}
	if final.GetState() != batonv1.RunState_RUN_STATE_SUCCEEDED {
		return s, fmt.Errorf("run %d ended %s: %s", final.GetId(), final.GetState(), final.GetError())
	}
	t, err := attemptTimesOf(rctx, cl.runs, final, dispatched)
	if err != nil {
		return s, err
	}
	if len(t.start) != sh.tasks {
		return s, fmt.Errorf("run %d: %d task instances succeeded, want %d", final.GetId(), len(t.start), sh.tasks)
	}
	created, end := final.GetCreateTime().AsTime(), final.GetEndTime().AsTime()
	lat := readyToStarted(created, t.start, t.end, sh.parallel)
	s.Tasks, s.Attempts = sh.tasks, t.attempts
	s.Wall = end.Sub(created)
	s.ReadyP50, s.ReadyP99 = percentile(lat, 50), percentile(lat, 99)
	if t.dispatch != nil {
		disp := make([]time.Duration, len(t.start))
		for i := range t.start {
			disp[i] = max(t.start[i].Sub(t.dispatch[i]), 0)
		}
		s.HasDisp = true
		s.DispP50, s.DispP99 = percentile(disp, 50), percentile(disp, 99)
	}
	s.CPU, s.AgentCPU = after.CPU-before.CPU, agentsAfter-agentsBefore
	s.RSSBefore, s.RSSAfter, s.Peak = before.RSS, after.RSS, after.HWM
	return s, nil
}

// attemptTimes are the times of a run's succeeded attempts.
type attemptTimes struct {
	// dispatch, when not nil, is parallel to start and end.
	dispatch, start, end []time.Time
	// attempts counts every attempt, succeeded or not.
	attempts int
}

// attemptTimesOf reads the attempt history of run. When batond does not
// serve ListAttempts, it falls back to the latest attempt of each task
// instance in run, with dispatch times from the run's dispatched events.
func attemptTimesOf(ctx context.Context, runs batonv1.RunServiceClient, run *batonv1.Run,
	dispatched map[int64]time.Time) (attemptTimes, error) {
	var t attemptTimes
	resp, err := runs.ListAttempts(ctx, &batonv1.ListAttemptsRequest{RunId: run.GetId()})
	switch {
	case err == nil:
		t.attempts = len(resp.GetAttempts())
		for _, a := range resp.GetAttempts() {
			if a.GetState() == batonv1.AttemptState_ATTEMPT_STATE_SUCCEEDED {
				t.dispatch = append(t.dispatch, a.GetDispatchTime().AsTime())
				t.start = append(t.start, a.GetStartTime().AsTime())
				t.end = append(t.end, a.GetEndTime().AsTime())
			}
		}
	case status.Code(err) == codes.Unimplemented:
		missing := false
		for _, tr := range run.GetTasks() {
			t.attempts += int(tr.GetAttempts())
			if tr.GetAttemptId() == 0 || tr.GetState() != batonv1.TaskState_TASK_STATE_SUCCEEDED {
				continue
			}
			t.start = append(t.start, tr.GetStartTime().AsTime())
			t.end = append(t.end, tr.GetEndTime().AsTime())
			d, ok := dispatched[tr.GetAttemptId()]
			missing = missing || !ok
			t.dispatch = append(t.dispatch, d)
		}
		if missing {
			t.dispatch = nil
		}
	default:
		return t, fmt.Errorf("list attempts of run %d: %w", run.GetId(), err)
	}
	return t, nil
}

// measureIdle connects the idle shape's simulated agents to a fresh batond
// and measures it over cfg.Reps consecutive windows.
func (h *harness) measureIdle(ctx context.Context, sh *shape) (samples []sample, err error) {
	cl, err := startCluster(ctx, h.bins, filepath.Join(h.work, sh.key), false, h.sec, h.log)
	if err != nil {
		return nil, err
	}
	defer func() {
		if cerr := cl.close(); cerr != nil && err == nil {
			err = cerr
		}
	}()
	if err := cl.approve(ctx, sh.sim, sh.agents, sh.slots); err != nil {
		return nil, err
	}
	before, err := cl.stat()
	if err != nil {
		return nil, err
	}
	h.log.Info("connecting simulated agents", slog.Int("agents", sh.agents))
	if err := cl.startSims(ctx, sh.agents, sh.slots); err != nil {
		return nil, err
	}
	for rep := range h.cfg.Reps {
		var prof *profiles
		if h.cfg.Profile != "" && rep == 0 {
			if prof, err = startProfiles(ctx, cl, h.cfg.Profile, sh.key); err != nil {
				return nil, err
			}
		}
		s0, a0, err := cl.stats()
		if err != nil {
			return nil, err
		}
		t0 := time.Now()
		// The window is the measurement itself, not a wait for a condition.
		timer := time.NewTimer(h.cfg.IdleWindow)
		select {
		case <-timer.C:
		case <-cl.batond.done:
			return nil, cl.batond.exited()
		case <-ctx.Done():
			timer.Stop()
			return nil, ctx.Err()
		}
		s1, a1, err := cl.stats()
		if err != nil {
			return nil, err
		}
		s := sample{Tasks: sh.agents, Wall: time.Since(t0), CPU: s1.CPU - s0.CPU, AgentCPU: a1 - a0,
			RSSBefore: before.RSS, RSSAfter: s1.RSS, Peak: s1.HWM}
		if prof != nil {
			if s.Profile, err = prof.stop(ctx); err != nil {
				return nil, err
			}
		}
		h.log.Info("measured", slog.String("shape", sh.key), slog.Int("rep", rep+1),
			slog.Duration("cpu", s.CPU), slog.Int64("rss_mb", s.RSSAfter>>20))
		samples = append(samples, s)
	}
	ok, err := cl.connected(ctx, sh.agents)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, fmt.Errorf("fewer than %d simulated agents are still connected", sh.agents)
	}
	return samples, nil
}

// spawnCeiling starts bin n times from workers goroutines and measures
// how long that takes: the most tasks per second this machine could run.
func spawnCeiling(ctx context.Context, bin string, n, workers int) (sample, error) {
	var (
		next atomic.Int64
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
	)
	t0 := time.Now()
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(n) {
				if err := exec.CommandContext(ctx, bin).Run(); err != nil {
					mu.Lock()
					errs = append(errs, fmt.Errorf("spawn ceiling: %s: %w", bin, err))
					mu.Unlock()
					return
				}
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return sample{}, err
	}
	return sample{Tasks: n, Attempts: n, Wall: time.Since(t0)}, nil
}

// rate is a sample's tasks per second.
func rate(s sample) float64 {
	if s.Wall <= 0 {
		return 0
	}
	return float64(s.Tasks) / s.Wall.Seconds()
}

// moduleRoot returns dir, or when it is empty the directory holding the
// go.mod of the working directory.
func moduleRoot(dir string) (string, error) {
	if dir != "" {
		abs, err := filepath.Abs(dir)
		if err != nil {
			return "", fmt.Errorf("repo: %w", err)
		}
		if _, err := os.Stat(filepath.Join(abs, "go.mod")); err != nil {
			return "", fmt.Errorf("repo: %w", err)
		}
		return abs, nil
	}
	wd, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("repo: %w", err)
	}
	for d := wd; ; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			return d, nil
		}
		if filepath.Dir(d) == d {
			return "", fmt.Errorf("repo: no go.mod in %s or above; pass -repo", wd)
		}
	}
}

// trueProgram returns the program every task runs: /bin/true, or true
// from PATH where /bin/true is missing.
func trueProgram() (string, error) {
	if _, err := os.Stat("/bin/true"); err == nil {
		return "/bin/true", nil
	}
	p, err := exec.LookPath("true")
	if err != nil {
		return "", fmt.Errorf("find /bin/true: %w", err)
	}
	return p, nil
}

// commitOf names repo's commit, with "+dirty" when its tree has changes.
func commitOf(ctx context.Context, repo string) string {
	out, err := exec.CommandContext(ctx, "git", "-C", repo, "rev-parse", "--short=12", "HEAD").Output()
	if err != nil {
		return "unknown (not a git checkout)"
	}
	commit := strings.TrimSpace(string(out))
	st, err := exec.CommandContext(ctx, "git", "-C", repo, "status", "--porcelain", "--untracked-files=no").Output()
	if err == nil && len(strings.TrimSpace(string(st))) > 0 {
		commit += "+dirty"
	}
	return commit
}

// goVersion is the version of the go command that built the binaries.
func goVersion(ctx context.Context, repo string) string {
	cmd := exec.CommandContext(ctx, "go", "env", "GOVERSION")
	cmd.Dir = repo
	out, err := cmd.Output()
	if err != nil {
		return runtime.Version()
	}
	return strings.TrimSpace(string(out))
}
