package scheduler

import (
	"container/heap"
	"context"
	"sync"
	"time"

	"github.com/batonhq/baton/server/store"
)

// op is one write of a batch. Ops run in order inside one transaction and
// may run more than once (the store retries a busy transaction), so they
// only write and fill in ids.
type op func(ctx context.Context, tx store.Store) error

// batch collects what one loop iteration writes and what it does once the
// writes are committed.
type batch struct {
	ops     []op
	events  []*store.Event
	logs    []*store.LogChunk
	effects []func()
	onFail  []func()
	touched map[int64]struct{}
	// ready lists instances that became ready in this batch. Those still
	// not dispatched when the batch commits get their move to ready
	// written then; the others were claimed straight from pending.
	ready []*instRT
}

func newBatch() *batch { return &batch{touched: map[int64]struct{}{}} }

func (b *batch) empty() bool {
	return len(b.ops) == 0 && len(b.events) == 0 && len(b.logs) == 0 && len(b.effects) == 0 && len(b.ready) == 0
}

// writeReady writes the moves to ready that no claim made unnecessary.
func (s *Scheduler) writeReady() {
	for _, in := range s.b.ready {
		// Still pending in the store and ready now: no claim or settlement
		// of this batch wrote it.
		if in.stored != store.InstancePending || in.now() != store.InstanceReady || s.runs[in.run.run.ID] != in.run {
			continue
		}
		s.transition(in, store.InstanceReady, "", nil, 0)
	}
	s.b.ready = nil
}

func (s *Scheduler) write(o op) { s.b.ops = append(s.b.ops, o) }

// after runs fn once the batch is committed.
func (s *Scheduler) after(fn func()) { s.b.effects = append(s.b.effects, fn) }

// onFail runs fn when the batch cannot be committed.
func (s *Scheduler) onFail(fn func()) { s.b.onFail = append(s.b.onFail, fn) }

// event appends an event to the batch; watchers of its run are woken
// after the commit.
func (s *Scheduler) event(e *store.Event) {
	if e.At.IsZero() {
		e.At = s.now().UTC()
	}
	s.b.events = append(s.b.events, e)
	s.b.touched[e.RunID] = struct{}{}
}

// lazyDelay bounds how long a write that nothing waits for (an attempt's
// start, a lease renewal) may wait to ride along with the next commit.
const lazyDelay = 10 * time.Millisecond

// lazily runs fn with its writes and events collected aside: they are
// committed with the next batch that commits anyway, or after lazyDelay.
func (s *Scheduler) lazily(fn func()) {
	b := s.b
	s.b = s.lazy
	fn()
	s.lazy = s.b
	s.b = b
	s.armLazy()
}

// armLazy makes sure lazy writes are flushed within lazyDelay. One timer at
// a time: a commit may flush before it fires, and writes made after that
// wait for this same timer.
func (s *Scheduler) armLazy() {
	if s.lazyArmed {
		return
	}
	s.lazyArmed = true
	s.at(s.now().Add(lazyDelay), func() {
		s.lazyArmed = false
		s.flushLazy()
	})
}

// flushLazy moves the lazy writes into the current batch, ahead of its own
// (they happened first), and writes the starts no outcome superseded.
func (s *Scheduler) flushLazy() {
	if l := s.lazy; !l.empty() {
		s.b.ops = append(l.ops, s.b.ops...)
		s.b.events = append(l.events, s.b.events...)
		for id := range l.touched {
			s.b.touched[id] = struct{}{}
		}
		s.lazy = newBatch()
	}
	for _, att := range s.lazyStarts {
		s.writeStart(att)
	}
	s.lazyStarts = s.lazyStarts[:0]
	clear(s.lazyStarted)
}

// commit writes the batch in one transaction, then runs its effects.
func (s *Scheduler) commit(ctx context.Context) error {
	s.writeReady()
	if !s.b.empty() {
		s.flushLazy()
	}
	// A commit is short and runs to its end even during shutdown. A
	// context that cannot be cancelled also spares database/sql a watcher
	// goroutine for every row-returning statement of the transaction.
	ctx = context.WithoutCancel(ctx)
	b := s.b
	if b.empty() {
		return nil
	}
	if len(b.ops) > 0 || len(b.events) > 0 || len(b.logs) > 0 {
		start := time.Now()
		fence := &store.LeaderCheckParams{Name: leaseName, Holder: s.cfg.Holder, Token: s.lease.Token}
		err := s.st.InTx(ctx, func(tx store.Store) error {
			// Fenced: a deposed leader's writes fail here.
			if err := tx.LeaderCheck(ctx, fence); err != nil {
				return err
			}
			for _, o := range b.ops {
				if err := o(ctx, tx); err != nil {
					return err
				}
			}
			if len(b.logs) > 0 {
				if err := tx.LogAppend(ctx, &store.LogAppendParams{Chunks: b.logs}); err != nil {
					return err
				}
			}
			if len(b.events) > 0 {
				if err := tx.EventAppend(ctx, &store.EventAppendParams{Events: b.events}); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
		if m := s.cfg.Metrics; m != nil {
			m.commit.Observe(time.Since(start).Seconds())
			m.batch.Observe(float64(len(b.ops) + len(b.events) + len(b.logs)))
		}
	}
	s.b = newBatch()
	for _, f := range b.effects {
		f()
	}
	for id := range b.touched {
		s.notify.wake(id)
	}
	if m := s.cfg.Metrics; m != nil {
		m.activeRuns.Set(float64(len(s.runs)))
	}
	return nil
}

// timer is a deadline the loop acts on.
type timer struct {
	at   time.Time
	fire func()
	idx  int
}

type timerHeap []*timer

func (h timerHeap) Len() int           { return len(h) }
func (h timerHeap) Less(i, j int) bool { return h[i].at.Before(h[j].at) }
func (h timerHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i]; h[i].idx = i; h[j].idx = j }
func (h *timerHeap) Push(x any)        { t := x.(*timer); t.idx = len(*h); *h = append(*h, t) }
func (h *timerHeap) Pop() any {
	old := *h
	t := old[len(old)-1]
	*h = old[:len(old)-1]
	return t
}

// at schedules fn to run on the loop at (or soon after) t.
func (s *Scheduler) at(t time.Time, fn func()) {
	heap.Push(&s.timers, &timer{at: t, fire: fn})
}

func (s *Scheduler) fireTimers() {
	now := s.now()
	for len(s.timers) > 0 && !s.timers[0].at.After(now) {
		t := heap.Pop(&s.timers).(*timer)
		t.fire()
	}
}

func (s *Scheduler) resetTimer(t *time.Timer) {
	d := time.Hour
	if len(s.timers) > 0 {
		d = max(s.timers[0].at.Sub(s.now()), 0)
	}
	t.Reset(d)
}

// notifier wakes run watchers after commits.
type notifier struct {
	mu sync.Mutex
	ch map[int64]chan struct{}
}

func newNotifier() *notifier { return &notifier{ch: map[int64]chan struct{}{}} }

// wait returns a channel closed at the next commit that touches run id.
func (n *notifier) wait(id int64) <-chan struct{} {
	n.mu.Lock()
	defer n.mu.Unlock()
	c, ok := n.ch[id]
	if !ok {
		c = make(chan struct{})
		n.ch[id] = c
	}
	return c
}

func (n *notifier) wake(id int64) {
	n.mu.Lock()
	c, ok := n.ch[id]
	delete(n.ch, id)
	n.mu.Unlock()
	if ok {
		close(c)
	}
}
