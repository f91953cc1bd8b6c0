//go:build unix

package runner

import (
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"
)

// others collects the children of runners of other protocol versions in
// the state directory: exits they recorded, children they still run
// (watched through their records) and children of those that died.
func (c *Client) others(at *Attachment) {
	entries, err := os.ReadDir(c.cfg.StateDir)
	if err != nil {
		c.log.Warn("cannot look for runners of other versions", slog.Any("error", err))
		return
	}
	for _, e := range entries {
		v, ok := versionOf(e.Name())
		if !ok || v == c.version || !e.IsDir() {
			continue
		}
		dir := filepath.Join(c.cfg.StateDir, e.Name())
		st := storeOf(dir)
		if st == nil {
			continue
		}
		recs, errs := st.read()
		for _, err := range errs {
			c.log.Error("unreadable record of another runner version; its outcome is lost", slog.Any("error", err))
		}
		if len(recs) == 0 {
			continue
		}
		live, err := lockHeld(filepath.Join(dir, lockName))
		if err != nil {
			c.log.Warn("cannot tell whether a runner of another version runs", slog.Int("version", v), slog.Any("error", err))
			live = true // do not kill what may still be owned
		}
		c.log.Info("found children of a runner of another version", slog.Int("version", v),
			slog.Bool("runner_alive", live), slog.Int("records", len(recs)))
		for id, rec := range recs {
			switch {
			case rec.Exited:
				c.mu.Lock()
				c.otherRecs[id] = st
				c.mu.Unlock()
				at.Exited = append(at.Exited, rec)
			case live:
				p := newProc(c, id)
				p.grace = rec.Grace
				p.setStarted(rec.Pid, rec.PidStart, rec.BootID, rec.Start)
				p.other = &otherRunner{store: st, lock: filepath.Join(dir, lockName)}
				at.Running = append(at.Running, p)
				c.mu.Lock()
				c.otherProcs[id] = p
				c.mu.Unlock()
				c.wg.Add(1)
				go c.watch(p)
			default:
				c.killOrphan(id, rec.Pid, rec.PidStart, rec.BootID)
				c.mu.Lock()
				c.otherRecs[id] = st
				c.mu.Unlock()
				at.Orphaned = append(at.Orphaned, rec)
			}
		}
	}
}

// watch polls the record of a child of another version's runner until it
// shows the exit, or the runner dies.
func (c *Client) watch(p *Proc) {
	defer c.wg.Done()
	defer func() {
		c.mu.Lock()
		delete(c.otherProcs, p.id)
		c.mu.Unlock()
	}()
	t := time.NewTicker(c.cfg.PollInterval)
	defer t.Stop()
	for {
		select {
		case <-c.stop:
			return
		case <-p.done:
			return
		case <-t.C:
		}
		live, err := lockHeld(p.other.lock)
		if err != nil {
			live = true
		}
		// Read after the lock test: a runner that wrote the exit and then
		// exited is seen with its exit.
		recs, errs := p.other.store.read()
		rec, ok := recs[p.id]
		switch {
		case ok && rec.Exited:
			c.mu.Lock()
			c.otherRecs[p.id] = p.other.store
			c.mu.Unlock()
			res := Result{Record: *rec}
			o := p.other
			o.mu.Lock()
			if !o.expired.IsZero() && !rec.TimedOut {
				res.LeaseExpired, res.LeaseExpiredAt, res.LeaseTerm = true, o.expired, o.leaseTerm
			}
			o.mu.Unlock()
			p.finish(res)
			return
		case !ok && len(errs) == 0:
			p.lose("outcome unknown: the record of the agent's older runner vanished")
			return
		case !live:
			p.mu.Lock()
			pid, pidStart, boot := p.pid, p.pidStart, p.boot
			p.mu.Unlock()
			c.killOrphan(p.id, pid, pidStart, boot)
			c.mu.Lock()
			c.otherRecs[p.id] = p.other.store
			c.mu.Unlock()
			p.lose(LostRunnerKilled)
			return
		}
	}
}

// otherRunner locates a child of a runner of another version.
type otherRunner struct {
	store store
	lock  string

	mu        sync.Mutex
	killTimer *time.Timer
	signalled bool // the agent asked to stop the child
	// lease is when the child's lease ends (zero: none), leaseTerm its
	// length; fenced says it passed and the tree is being stopped,
	// expired when, if before the agent asked for anything.
	lease      time.Time
	leaseTerm  time.Duration
	leaseTimer *time.Timer
	fenceKill  *time.Timer
	fenced     bool
	expired    time.Time
}

// renewOther extends the lease of p, a child of another version's
// runner, to until unless it ends later already.
func (p *Proc) renewOther(until time.Time, term time.Duration) {
	o := p.other
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.fenced || !until.After(o.lease) {
		return
	}
	o.lease, o.leaseTerm = until, term
	if o.leaseTimer != nil {
		o.leaseTimer.Reset(time.Until(until))
	} else {
		o.leaseTimer = time.AfterFunc(time.Until(until), p.leaseCheckOther)
	}
}

// leaseCheckOther stops the tree of p, a child of another version's
// runner, once its lease has passed: SIGTERM, SIGKILL after its grace.
func (p *Proc) leaseCheckOther() {
	select {
	case <-p.done:
		return
	default:
	}
	// p.mu before o.mu, never inside it: finish takes them the other way.
	p.mu.Lock()
	pid, pidStart, boot, grace := p.pid, p.pidStart, p.boot, p.grace
	p.mu.Unlock()
	o := p.other
	o.mu.Lock()
	if o.fenced {
		o.mu.Unlock()
		return
	}
	if d := time.Until(o.lease); d > 0 {
		o.leaseTimer.Reset(d)
		o.mu.Unlock()
		return
	}
	o.fenced = true
	if !o.signalled {
		o.expired = time.Now()
	}
	grace = GraceLeft(o.lease, time.Now(), grace)
	if grace > 0 {
		o.fenceKill = time.AfterFunc(grace, func() { _ = signalTree(pid, pidStart, boot, syscall.SIGKILL) })
	}
	o.mu.Unlock()
	p.c.log.Warn("attempt lease expired; stopping the process tree of a child of another runner version (self-fencing)",
		slog.Int64("attempt_id", p.id), slog.Int("pid", pid), slog.Duration("kill_grace", grace))
	sig := syscall.SIGTERM
	if grace <= 0 {
		sig = syscall.SIGKILL
	}
	if err := signalTree(pid, pidStart, boot, sig); err != nil {
		p.c.log.Warn("cannot stop the child of another runner version", slog.Int64("attempt_id", p.id), slog.Any("error", err))
	}
}

// signalOther signals a child of another version's runner directly.
func (p *Proc) signalOther(kill bool, grace time.Duration) error {
	select {
	case <-p.done:
		return nil
	default:
	}
	p.mu.Lock()
	pid, pidStart, boot := p.pid, p.pidStart, p.boot
	p.mu.Unlock()
	o := p.other
	o.mu.Lock()
	o.signalled = true
	o.mu.Unlock()
	if kill {
		return signalTree(pid, pidStart, boot, syscall.SIGKILL)
	}
	o.mu.Lock()
	if o.killTimer == nil {
		o.killTimer = time.AfterFunc(grace, func() {
			select {
			case <-p.done:
			default:
				_ = signalTree(pid, pidStart, boot, syscall.SIGKILL)
			}
		})
	}
	o.mu.Unlock()
	return signalTree(pid, pidStart, boot, syscall.SIGTERM)
}
