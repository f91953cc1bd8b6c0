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
	"os"
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

// leaseName is the leader lease the scheduler holds.
const leaseName = "scheduler"

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
	lazy       *batch
	lazyStarts []*attemptRT
	lazyArmed  bool
	local      []input // inputs produced by effects, applied next iteration
	runs       map[int64]*runRT
	queued     map[int64][]*store.Run // job id -> queued runs, oldest first
	agents     map[string]*agentRT
	live       map[int64]*attemptRT // live attempts by id
	groups     map[string]*group    // ready queues by selector
	glist      []*group
	timers     timerHeap
	graphs     graphCache
	seq        uint64
	// cands and candAgents are pickAgent's reusable buffers.
	cands      []dispatch.Candidate
	candAgents []*agentRT
	ctx        context.Context
	lease      *store.Lease
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

// Settled is closed once the scheduler has first tried to take the leader
// lease: after it, Leader tells whether this process schedules.
func (s *Scheduler) Settled() <-chan struct{} { return s.settled }

func (s *Scheduler) markSettled() { s.settledOnce.Do(func() { close(s.settled) }) }

// notLeading is the error a call that needs the leader gets.
func (s *Scheduler) notLeading() error {
	if err := s.Status().Error(); err != nil {
		return err
	}
	// Between losing the lease and recording why.
	return fmt.Errorf("this batond is not leading right now: %w", store.ErrNotLeader)
}

// Leader reports whether this process holds the leader lease and schedules.
func (s *Scheduler) Leader() bool { return s.leader.Load() }

// acquire takes the leader lease, waiting while another holder has it.
func (s *Scheduler) acquire(ctx context.Context) error {
	waiting := false
	defer s.markSettled()
	for {
		lease, err := s.st.LeaderAcquire(ctx, &store.LeaderAcquireParams{Name: leaseName, Holder: s.cfg.Holder, TTL: s.cfg.LeaseTTL})
		if err == nil {
			s.lease = lease
			s.token.Store(lease.Token)
			s.leader.Store(true)
			s.health.set(RoleLeader, nil)
			s.markSettled()
			s.log.InfoContext(ctx, "leader lease acquired", slog.String("holder", s.cfg.Holder), slog.Int64("token", lease.Token))
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if errors.Is(err, store.ErrNotLeader) {
			s.health.set(RoleStandby, nil)
		} else {
			s.health.set(RoleStoreUnavailable, err)
		}
		s.markSettled()
		if !waiting {
			waiting = true
			if errors.Is(err, store.ErrNotLeader) {
				s.log.InfoContext(ctx, "another batond holds the leader lease; standing by", slog.String("holder", s.cfg.Holder))
			} else {
				s.log.ErrorContext(ctx, "cannot take the leader lease; retrying", slog.Any("error", err))
			}
		}
		select {
		case <-time.After(s.cfg.LeaseTTL / 3):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// renew extends the leader lease; it runs on the loop every third of the
// TTL. A lease that cannot be renewed before it would expire ends the
// loop, so this process stops scheduling before anyone else may start.
func (s *Scheduler) renew() error {
	ctx, cancel := context.WithTimeout(s.ctx, s.cfg.LeaseTTL/3)
	defer cancel()
	lease, err := s.st.LeaderAcquire(ctx, &store.LeaderAcquireParams{Name: leaseName, Holder: s.cfg.Holder, TTL: s.cfg.LeaseTTL})
	switch {
	case err == nil && lease.Token == s.lease.Token:
		s.lease = lease
		return nil
	case err == nil:
		// The lease had expired and was taken anew: someone may have led
		// in between, so start over from the store.
		s.lease = lease
		s.token.Store(lease.Token)
		return fmt.Errorf("leader lease expired and was re-taken with token %d: %w", lease.Token, store.ErrNotLeader)
	case errors.Is(err, store.ErrNotLeader):
		return err
	}
	if s.lease.ExpiresAt.Sub(s.now()) < s.cfg.LeaseTTL/3 {
		// Not deposed: the store fails. Stop scheduling before anyone else
		// may start, and say why.
		return fmt.Errorf("cannot renew the leader lease before it expires: %w", err)
	}
	s.log.Warn("leader lease renewal failed; retrying", slog.Any("error", err))
	return nil
}

// releaseLease gives the lease up so a standby can take over at once.
func (s *Scheduler) releaseLease() {
	if s.lease == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := s.st.LeaderRelease(ctx, &store.LeaderReleaseParams{Name: leaseName, Holder: s.cfg.Holder, Token: s.lease.Token}); err != nil {
		s.log.Warn("cannot release the leader lease", slog.Any("error", err))
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
	for _, a := range s.agents {
		if a.sess != nil {
			a.sess.Close(errUnavailable("control plane is restarting"))
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
	s.lazyArmed = false
	s.runs = map[int64]*runRT{}
	s.queued = map[int64][]*store.Run{}
	s.agents = map[string]*agentRT{}
	s.live = map[int64]*attemptRT{}
	s.groups = map[string]*group{}
	s.glist = nil
	s.timers = nil
	s.graphs = graphCache{}
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
			s.queued[run.JobID] = append(s.queued[run.JobID], run)
			continue
		}
		if err := s.loadStored(ctx, run); err != nil {
			return err
		}
	}
	for jobID := range s.queued {
		s.promote(jobID)
	}
	s.at(s.now().Add(s.sweepInterval()), s.sweep)
	s.log.InfoContext(ctx, "scheduler started", slog.Int("runs", len(s.runs)), slog.Int("live_attempts", len(s.live)))
	return s.commit(ctx)
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
	if err := s.loadRun(ctx, run, insts, atts); err != nil {
		// A run that cannot be loaded (its job version is unreadable) must
		// not stop every other run: fail it.
		s.log.ErrorContext(ctx, "cannot load run; failing it", slog.Int64("run_id", run.ID), slog.Any("error", err))
		s.failUnloadable(run, err)
	}
	return nil
}

// fenceMargin is added to an attempt's lease and kill grace before the
// attempt is declared lost: it covers the agent's hand-over of the lease to
// its runner and the time a killed process tree takes to be gone.
const fenceMargin = time.Second

// lostAfter is how long after its last renewal an attempt is lost: by then
// its agent has stopped the child (the lease ran out and the kill grace
// passed), so a replacement cannot overlap it.
func (s *Scheduler) lostAfter() time.Duration {
	return s.cfg.AgentTimeout + s.cfg.KillGrace + fenceMargin
}

// leaseTTL is the attempts' lease in the store. It outlasts lostAfter, so
// the loop always declares an attempt lost before the store would call its
// outcome late.
func (s *Scheduler) leaseTTL() time.Duration {
	return 2 * s.lostAfter()
}
