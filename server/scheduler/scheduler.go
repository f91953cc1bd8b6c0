// Package scheduler is batond's run loop. One goroutine owns every active
// run's decision state (engine.Run), the agents' slots and the ready
// queues. Everything that changes state arrives as an input on one channel;
// the loop applies a batch of inputs in memory, places ready work on
// agents, commits all resulting writes in one store transaction (group
// commit) and only then acts: sends StartTask, CancelTask and Ack messages,
// answers API calls and wakes run watchers. A failed commit resets the
// scheduler to what the store holds, so memory never runs ahead of it.
package scheduler

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/batonhq/baton/server/dispatch"
	"github.com/batonhq/baton/server/engine"
	"github.com/batonhq/baton/server/store"
)

// Errors the API maps to status codes.
var (
	// ErrNotActive is returned when cancelling a run that is already over.
	ErrNotActive = errors.New("run is not active")
	// ErrStopped is returned when the scheduler is not running.
	ErrStopped = errors.New("scheduler stopped")
)

// Config configures a Scheduler.
type Config struct {
	// Store is required.
	Store store.Store
	// Logger is required.
	Logger *slog.Logger
	// AgentTimeout is how long an agent may go unheard before it is lost
	// (no new work is placed on it), and the length of each attempt's
	// lease: an agent whose lease on an attempt is not renewed for that
	// long stops the attempt's child (self-fencing). Its attempts are lost,
	// and replaced where the task allows, only once AgentTimeout plus
	// KillGrace plus a margin has passed since their last renewal, so a
	// task instance never has two live executions. Defaults to 30s.
	AgentTimeout time.Duration
	// KillGrace is how long agents wait between SIGTERM and SIGKILL when
	// stopping a child. Defaults to 10s.
	KillGrace time.Duration
	// LogCap is how many bytes of each attempt's output are stored; the
	// tails of both streams are kept beyond it. Defaults to 1 MiB.
	LogCap int64
	// MaxBatch caps the inputs applied in one transaction. Defaults to 1024.
	MaxBatch int
	// Version is reported to agents in Welcome.
	Version string
	// Holder names this process in the leader lease. Replicas sharing a
	// store must use distinct holders; a restarted process that reuses its
	// holder takes its own lease over at once instead of waiting for it to
	// expire. Defaults to host:pid.
	Holder string
	// LeaseTTL is how long leadership lasts without renewal; it is renewed
	// every third of it. Defaults to 15s, or half the AgentTimeout when
	// that is shorter, so that a standby takes over well within the
	// attempts' leases and no child is stopped by a failover.
	LeaseTTL time.Duration
	// Metrics, when set, receives the scheduler's measurements.
	Metrics *Metrics
	// Graphs, when set, is a cache of compiled job versions shared with
	// the API; the scheduler keeps its own otherwise.
	Graphs *engine.Cache
	// Clock tells the time. Defaults to time.Now; the simulation injects
	// its own (and then drives the loop itself, see step).
	Clock func() time.Time
}

func (c *Config) setDefaults() error {
	if c.Store == nil {
		return errors.New("scheduler: Store is required")
	}
	if c.Logger == nil {
		return errors.New("scheduler: Logger is required")
	}
	if c.Graphs == nil {
		c.Graphs = &engine.Cache{}
	}
	if c.Clock == nil {
		c.Clock = time.Now
	}
	if c.AgentTimeout <= 0 {
		c.AgentTimeout = 30 * time.Second
	}
	if c.KillGrace <= 0 {
		c.KillGrace = 10 * time.Second
	}
	if c.LogCap <= 0 {
		c.LogCap = 1 << 20
	}
	if c.MaxBatch <= 0 {
		c.MaxBatch = 1024
	}
	if c.LeaseTTL <= 0 {
		c.LeaseTTL = min(15*time.Second, c.AgentTimeout/2)
	}
	if c.Holder == "" {
		host, _ := os.Hostname()
		c.Holder = fmt.Sprintf("%s:%d", host, os.Getpid())
	}
	return nil
}

// input is anything that changes the scheduler's state. apply runs on the
// loop goroutine.
type input interface {
	apply(s *Scheduler)
}

// Scheduler is batond's run loop. Its exported methods are safe for
// concurrent use; all state is owned by the goroutine running Run.
type Scheduler struct {
	cfg Config
	st  store.Store
	log *slog.Logger

	in      chan input
	stopped chan struct{}
	notify  *notifier
	leader  atomic.Bool
	health  *health
	// settled is closed after the first attempt to take the lease.
	settled     chan struct{}
	settledOnce sync.Once

	// Owned by the loop.
	b *batch
	// lazy holds writes waiting to ride along with the next commit;
	// lazyArmed says a timer will flush them.
	lazy *batch
	// lazyStarts are the starts not written yet, in the order they came;
	// lazyStarted holds the same attempts until they are written or end.
	lazyStarts  []*attemptRT
	lazyStarted map[*attemptRT]bool
	lazyArmed   bool
	local       []input // inputs produced by effects, applied next iteration
	runs        map[int64]*runRT
	queued      map[int64][]*queuedRun // job id -> queued runs, oldest first
	// restarts holds the restart count of each run this loop restarted
	// lately (see restartInput).
	restarts map[int64]restartMark
	agents   *dispatch.Agents[*attemptRT]
	live     map[int64]*attemptRT // live attempts by id
	groups   map[string]*group    // ready queues by selector
	glist    []*group
	timers   timerHeap
	seq      uint64
	ctx      context.Context
	lease    *store.Lease
	// token is the leader lease's fencing token while this process leads,
	// for writes made outside the loop (CreateRun).
	token atomic.Int64
}

// New returns a Scheduler. Call Run to start it.
func New(cfg Config) (*Scheduler, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	s := &Scheduler{
		cfg:     cfg,
		st:      cfg.Store,
		log:     cfg.Logger.With(slog.String("component", "scheduler")),
		in:      make(chan input, 4096),
		stopped: make(chan struct{}),
		settled: make(chan struct{}),
		notify:  newNotifier(),
		health:  newHealth(),
	}
	if m := cfg.Metrics; m != nil {
		s.health.onChange = m.status
		m.status(s.health.st)
	}
	return s, nil
}

func (s *Scheduler) now() time.Time { return s.cfg.Clock() }

// HeartbeatInterval is how often agents are told to send heartbeats: a
// third of the agent timeout, so two lost heartbeats are tolerated.
func (s *Scheduler) HeartbeatInterval() time.Duration { return s.cfg.AgentTimeout / 3 }

// Run takes the leader lease (standing by while another process holds
// it), loads every non-terminal run from the store and schedules until ctx
// is done or leadership is lost. Running children are not touched when it
// returns: agents keep them running and report to the next control plane.
func (s *Scheduler) Run(ctx context.Context) error {
	defer close(s.stopped)
	s.ctx = ctx
	backoff := 100 * time.Millisecond
	for {
		if err := s.acquire(ctx); err != nil {
			return nil // ctx done
		}
		err := s.recover(ctx)
		if err == nil {
			err = s.loop(ctx)
		}
		s.leader.Store(false)
		if ctx.Err() != nil {
			s.health.set(RoleStarting, nil)
			s.shutdown()
			s.releaseLease()
			return nil
		}
		if errors.Is(err, store.ErrNotLeader) {
			s.health.set(RoleStandby, nil)
			s.log.WarnContext(ctx, "leadership lost; standing by", slog.Any("error", err))
		} else {
			// The store failed (a commit, a load, or the lease renewal).
			s.health.set(RoleStoreUnavailable, err)
			s.log.ErrorContext(ctx, "scheduler reset: state reloaded from the store", slog.Any("error", err))
		}
		s.shutdown()
		select {
		case <-time.After(backoff):
		case <-ctx.Done():
			return nil
		}
		backoff = min(2*backoff, 10*time.Second)
	}
}

// loop applies inputs in batches until ctx is done, a commit fails or the
// leader lease is lost.
func (s *Scheduler) loop(ctx context.Context) error {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	renew := time.NewTicker(s.cfg.LeaseTTL / 3)
	defer renew.Stop()
	for {
		s.resetTimer(timer)
		if len(s.local) == 0 {
			select {
			case in := <-s.in:
				in.apply(s)
			case <-timer.C:
				s.fireTimers()
			case <-renew.C:
				if err := s.renew(); err != nil {
					return err
				}
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		if err := s.step(ctx); err != nil {
			return err
		}
	}
}

// step finishes one iteration of the loop after its first input: it
// applies the inputs its effects produced and those waiting in the inbox
// (up to MaxBatch), fires the timers that are due, places ready work and
// commits everything in one transaction, then acts.
func (s *Scheduler) step(ctx context.Context) error {
	s.applyLocal()
gather:
	for n := 1; n < s.cfg.MaxBatch; n++ {
		select {
		case in := <-s.in:
			in.apply(s)
		default:
			break gather
		}
	}
	s.fireTimers()
	s.place()
	return s.commit(ctx)
}

func (s *Scheduler) applyLocal() {
	for len(s.local) > 0 {
		l := s.local
		s.local = nil
		for _, in := range l {
			in.apply(s)
		}
	}
}

// enqueue hands an input to the loop, waiting while the inbox is full. A
// standby refuses with store.ErrNotLeader.
func (s *Scheduler) enqueue(ctx context.Context, in input) error {
	if !s.Leader() {
		return s.notLeading()
	}
	select {
	case s.in <- in:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-s.stopped:
		return ErrStopped
	}
}

// shutdown forgets all in-memory state and closes every agent session, so
// agents reconnect and repeat whatever was not acknowledged.
func (s *Scheduler) shutdown() {
	if s.b != nil {
		for _, f := range s.b.onFail {
			f()
		}
	}
	if s.agents != nil {
		for _, a := range s.agents.All() {
			if a.Sess != nil {
				a.Sess.Close(dispatch.Unavailable("control plane is restarting"))
			}
		}
	}
	for _, r := range s.runs {
		s.notify.wake(r.run.ID)
	}
	s.b = nil
	s.local = nil
	s.runs = nil
	s.agents = nil
	s.live = nil
	s.groups = nil
	s.glist = nil
	s.timers = nil
}

// recover rebuilds the in-memory state from the store: every live attempt
// gets a fresh lease so its agent has a full timeout to reconnect, then
// every non-terminal run is loaded and continues.
func (s *Scheduler) recover(ctx context.Context) error {
	s.b = newBatch()
	s.lazy = newBatch()
	s.lazyStarts = nil
	s.lazyStarted = map[*attemptRT]bool{}
	s.lazyArmed = false
	s.runs = map[int64]*runRT{}
	s.queued = map[int64][]*queuedRun{}
	s.restarts = map[int64]restartMark{}
	s.agents = dispatch.NewAgents[*attemptRT]()
	s.live = map[int64]*attemptRT{}
	s.groups = map[string]*group{}
	s.glist = nil
	s.timers = nil
	if _, err := s.st.AttemptExtendLeases(ctx, &store.AttemptExtendLeasesParams{LeaseTTL: s.leaseTTL()}); err != nil {
		return fmt.Errorf("extend leases: %w", err)
	}
	runs, err := s.st.RunList(ctx, &store.RunListParams{
		States: []store.RunState{store.RunQueued, store.RunRunning, store.RunCancelling},
	})
	if err != nil {
		return fmt.Errorf("list active runs: %w", err)
	}
	// Oldest first, so queues keep their order.
	for i := len(runs) - 1; i >= 0; i-- {
		run := runs[i]
		if run.State == store.RunQueued {
			q, err := s.loadQueued(ctx, run)
			if err != nil {
				return err
			}
			s.queued[run.JobID] = append(s.queued[run.JobID], q)
			continue
		}
		if err := s.loadStored(ctx, run); err != nil {
			return err
		}
	}
	for _, jobID := range slices.Sorted(maps.Keys(s.queued)) {
		s.promote(jobID)
	}
	s.at(s.now().Add(s.sweepInterval()), s.sweep)
	s.log.InfoContext(ctx, "scheduler started", slog.Int("runs", len(s.runs)), slog.Int("live_attempts", len(s.live)))
	return s.commit(ctx)
}

// loadQueued reads what a queued run needs to start later.
func (s *Scheduler) loadQueued(ctx context.Context, run *store.Run) (*queuedRun, error) {
	insts, err := s.st.InstanceList(ctx, &store.InstanceListParams{RunID: run.ID})
	if err != nil {
		return nil, fmt.Errorf("load queued run %d: %w", run.ID, err)
	}
	prep, err := s.prepare(ctx, run)
	if err != nil {
		// Failed when it is promoted, like a run that cannot be loaded.
		s.log.ErrorContext(ctx, "cannot prepare queued run", slog.Int64("run_id", run.ID), slog.Any("error", err))
		prep = &prepared{}
	}
	return &queuedRun{run: run, insts: insts, prep: prep}, nil
}

// loadStored loads a running or cancelling run with its instances and
// attempts.
func (s *Scheduler) loadStored(ctx context.Context, run *store.Run) error {
	insts, err := s.st.InstanceList(ctx, &store.InstanceListParams{RunID: run.ID})
	if err != nil {
		return fmt.Errorf("load run %d: %w", run.ID, err)
	}
	atts, err := s.st.AttemptList(ctx, &store.AttemptListParams{RunID: run.ID})
	if err != nil {
		return fmt.Errorf("load run %d: %w", run.ID, err)
	}
	prep, err := s.prepare(ctx, run)
	if err == nil {
		err = s.loadRun(run, insts, atts, prep)
	}
	if err != nil {
		// A run that cannot be loaded (its job version is unreadable) must
		// not stop every other run: fail it.
		s.log.ErrorContext(ctx, "cannot load run; failing it", slog.Int64("run_id", run.ID), slog.Any("error", err))
		s.failUnloadable(run, err)
	}
	return nil
}
