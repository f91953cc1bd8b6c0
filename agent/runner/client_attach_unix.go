//go:build unix

package runner

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// run reads from the runner and reattaches whenever the connection
// breaks, until Close.
func (c *Client) run(cc *cconn) {
	defer c.wg.Done()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		select {
		case <-c.stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	for {
		err := c.readLoop(cc)
		_ = cc.nc.Close() // the connection is broken or closed already
		c.mu.Lock()
		if c.conn == cc {
			c.conn = nil
		}
		closed := c.closed
		c.mu.Unlock()
		if closed {
			return
		}
		c.log.Warn("runner connection lost; attaching again", slog.Any("error", err))
		for try := 0; ; try++ {
			t := time.NewTimer(time.Duration(min(try, 6)) * 100 * time.Millisecond)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				return
			}
			next, w, err := c.connect(ctx)
			if err == nil {
				c.attach(next, w, false)
				cc = next
				break
			}
			if ctx.Err() != nil {
				return
			}
			c.log.Error("cannot reach a runner; retrying", slog.Any("error", err))
		}
	}
}

// readLoop delivers the runner's messages until the connection breaks.
func (c *Client) readLoop(cc *cconn) error {
	for {
		kind, body, err := readFrame(cc.br)
		if err != nil {
			return err
		}
		switch kind {
		case kindOutput:
			o, err := decodeOutput(body)
			if err != nil {
				return err
			}
			c.mu.Lock()
			p := c.procs[o.id]
			c.mu.Unlock()
			if p != nil {
				p.output(o)
			}
		case kindJSON:
			f, err := decodeJSON(body)
			if err != nil {
				return err
			}
			switch {
			case f.Started != nil:
				c.started(f.Started)
			case f.Exit != nil:
				c.exited(f.Exit)
			case f.Error != "":
				return fmt.Errorf("%w: %s", errRefused, f.Error)
			default:
				return errors.New("unexpected message from the runner")
			}
		default:
			return fmt.Errorf("unexpected frame kind %q", kind)
		}
	}
}

func (c *Client) started(st *started) {
	c.mu.Lock()
	p := c.procs[st.ID]
	if p != nil && st.Err != "" {
		delete(c.procs, st.ID)
	}
	c.mu.Unlock()
	if p == nil {
		return
	}
	if st.Err != "" {
		if st.LeaseExpired {
			p.mu.Lock()
			p.leaseExpired = true
			p.mu.Unlock()
		}
		p.failStart(st.Err, false)
		return
	}
	p.setStarted(st.Pid, st.PidStart, st.BootID, st.Start)
}

func (c *Client) exited(rec *Record) {
	c.mu.Lock()
	p := c.procs[rec.ID]
	delete(c.procs, rec.ID)
	c.mu.Unlock()
	if p == nil {
		c.log.Debug("exit of an unknown attempt; it is listed again after reconnecting", slog.Int64("attempt_id", rec.ID))
		return
	}
	p.setStarted(rec.Pid, rec.PidStart, rec.BootID, rec.Start)
	p.finish(Result{Record: *rec})
}

// attach makes cc the connection after reconciling the client's children
// with the runner's welcome, and calls Attached.
func (c *Client) attach(cc *cconn, w *welcome, first bool) {
	at := &Attachment{}
	type lostProc struct {
		p         *Proc
		unstarted bool // the same runner never took the request over
	}
	var lost []lostProc
	var finished []*Proc
	var results []Result
	var resend [][]byte

	at.Instance = w.Instance
	at.Redact = w.Redact
	at.CleanExit = c.cleanExit()
	c.mu.Lock()
	// A child this client asked the same runner to start that the welcome
	// does not list was never taken over, so it never starts. Any other
	// child the welcome does not list is lost: its runner died.
	sameRunner := c.instance == w.Instance
	c.instance = w.Instance
	seen := make(map[int64]bool)
	for _, r := range w.Running {
		seen[r.ID] = true
		if p := c.procs[r.ID]; p != nil {
			if r.Pid != 0 {
				p.setStarted(r.Pid, r.PidStart, r.BootID, r.Start)
			}
			p.mu.Lock()
			if sig := p.lastSignal; sig != nil {
				if b, err := encodeJSON(&frame{Signal: sig}); err == nil {
					resend = append(resend, b)
				}
			}
			p.mu.Unlock()
			continue
		}
		p := newProc(c, r.ID)
		p.grace = r.Grace
		if r.Pid != 0 {
			p.setStarted(r.Pid, r.PidStart, r.BootID, r.Start)
		}
		c.procs[r.ID] = p
		at.Running = append(at.Running, p)
	}
	for _, rec := range w.Exits {
		seen[rec.ID] = true
		if p := c.procs[rec.ID]; p != nil {
			delete(c.procs, rec.ID)
			finished = append(finished, p)
			results = append(results, Result{Record: *rec})
			continue
		}
		at.Exited = append(at.Exited, rec)
	}
	for _, rec := range w.Orphans {
		seen[rec.ID] = true
		if p := c.procs[rec.ID]; p != nil {
			delete(c.procs, rec.ID)
			lost = append(lost, lostProc{p: p})
			continue
		}
		at.Orphaned = append(at.Orphaned, rec)
	}
	for id, p := range c.procs {
		if seen[id] {
			continue
		}
		delete(c.procs, id)
		p.mu.Lock()
		pending := p.pid == 0
		p.mu.Unlock()
		lost = append(lost, lostProc{p: p, unstarted: sameRunner && pending})
	}
	c.conn = cc
	close(c.connected)
	c.connected = make(chan struct{})
	for _, b := range resend {
		if err := cc.write(b); err != nil {
			break
		}
	}
	c.mu.Unlock()

	for i, p := range finished {
		p.finish(results[i])
	}
	for _, l := range lost {
		if l.unstarted {
			l.p.failStart("", true)
			continue
		}
		l.p.mu.Lock()
		pid, pidStart, boot := l.p.pid, l.p.pidStart, l.p.boot
		l.p.mu.Unlock()
		c.killOrphan(l.p.id, pid, pidStart, boot)
		l.p.lose(LostRunnerKilled)
	}
	for _, rec := range w.Orphans {
		c.killOrphan(rec.ID, rec.Pid, rec.PidStart, rec.BootID)
	}
	if first {
		c.others(at)
	}
	if n := len(at.Running) + len(at.Exited) + len(at.Orphaned); n > 0 || len(lost) > 0 {
		c.log.Info("attached to runner", slog.Int("runner_pid", w.Pid), slog.Int("adopted", len(at.Running)),
			slog.Int("exits", len(at.Exited)), slog.Int("orphans", len(at.Orphaned)+len(lost)))
	}
	if c.cfg.Attached != nil {
		c.cfg.Attached(c, at)
	}
}

// cleanExit returns the instance of the runner that last exited on its
// own during this boot, as it recorded it; empty if none is known.
func (c *Client) cleanExit() string {
	b, err := os.ReadFile(filepath.Join(c.dir, exitedName))
	if err != nil {
		return ""
	}
	inst, boot, ok := strings.Cut(string(b), " ")
	if !ok || inst == "" || len(inst) > MaxInstanceLen || boot == "" || boot != bootID() {
		return ""
	}
	return inst
}

// killOrphan kills the process group of a child whose runner died, when
// it can be identified safely.
func (c *Client) killOrphan(id int64, pid int, pidStart uint64, boot string) {
	killed, err := killTree(pid, pidStart, boot)
	switch {
	case err != nil:
		c.log.Warn("cannot kill the child of a dead runner", slog.Int64("attempt_id", id), slog.Int("pid", pid), slog.Any("error", err))
	case killed:
		c.log.Warn("killed the child of a dead runner", slog.Int64("attempt_id", id), slog.Int("pid", pid))
	}
}
