//go:build unix

package runner

import (
	"bufio"
	"cmp"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/batonhq/baton/agent/internal/crashpoint"
	"github.com/batonhq/baton/agent/internal/redact"
)

// serveConn runs one agent connection: the handshake, then requests until
// it breaks. A new connection replaces the attached one.
func (s *server) serveConn(nc net.Conn) {
	// Writes report their own errors; a failed close of a socket loses
	// nothing.
	defer func() { _ = nc.Close() }()
	if err := checkPeer(nc); err != nil {
		s.log.Warn("agent connection refused", slog.Any("error", err))
		return
	}
	br := bufio.NewReaderSize(nc, 64<<10)
	_ = nc.SetDeadline(time.Now().Add(handshakeTimeout))
	kind, body, err := readFrame(br)
	if err != nil {
		s.log.Warn("agent connection: no hello", slog.Any("error", err))
		return
	}
	var h *hello
	if kind == kindJSON {
		if f, err := decodeJSON(body); err == nil {
			h = f.Hello
		}
	}
	if h == nil {
		s.log.Warn("agent connection: first frame is not a hello")
		return
	}
	if h.Version != s.cfg.Version {
		msg := fmt.Sprintf("protocol version mismatch: the runner speaks %d, the agent %d", s.cfg.Version, h.Version)
		if b, err := encodeJSON(&frame{Error: msg}); err == nil {
			_, _ = nc.Write(b)
		}
		s.log.Warn("agent refused", slog.String("reason", msg))
		return
	}
	_ = nc.SetDeadline(time.Time{})

	c := newSconn(nc)
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		return
	}
	old := s.conn
	s.conn = c
	w := s.welcomeLocked()
	b, err := encodeJSON(&frame{Welcome: w})
	if err == nil {
		c.control(b)
	}
	s.mu.Unlock()
	if err != nil {
		s.log.Error("cannot encode welcome", slog.Any("error", err))
		c.close()
	}
	c.flush()
	if old != nil {
		old.close()
	}
	s.notify()
	s.log.Info("agent attached", slog.Int("running", len(w.Running)), slog.Int("exits", len(w.Exits)),
		slog.Int("orphans", len(w.Orphans)))

	err = s.readLoop(c, br)
	c.close()
	s.mu.Lock()
	if s.conn == c {
		s.conn = nil
	}
	s.mu.Unlock()
	s.notify()
	s.log.Info("agent detached", slog.Any("cause", err))
}

// welcomeLocked lists what the runner holds.
func (s *server) welcomeLocked() *welcome {
	w := &welcome{Version: s.cfg.Version, Pid: os.Getpid(), Instance: s.instance, EnvDigest: s.envID}
	for _, a := range s.atts {
		rec := a.rec
		if a.req != nil && len(a.req.Redact) > 0 && a.state != attOrphan {
			if w.Redact == nil {
				w.Redact = make(map[int64][]redact.Secret)
			}
			w.Redact[a.id] = a.req.Redact
		}
		switch a.state {
		case attStarting:
			w.Running = append(w.Running, &Record{ID: a.id, Timeout: a.req.Timeout, Grace: a.req.Grace})
		case attRunning:
			w.Running = append(w.Running, &rec)
		case attExited:
			w.Exits = append(w.Exits, &rec)
		case attOrphan:
			w.Orphans = append(w.Orphans, &rec)
		}
	}
	byID := func(x, y *Record) int { return cmp.Compare(x.ID, y.ID) }
	slices.SortFunc(w.Running, byID)
	slices.SortFunc(w.Exits, byID)
	slices.SortFunc(w.Orphans, byID)
	return w
}

// readLoop handles the requests of the agent on c until the connection
// breaks.
func (s *server) readLoop(c *sconn, br *bufio.Reader) error {
	for {
		kind, body, err := readFrame(br)
		if err != nil {
			return err
		}
		if kind != kindJSON {
			return fmt.Errorf("unexpected frame kind %q", kind)
		}
		f, err := decodeJSON(body)
		if err != nil {
			return err
		}
		switch {
		case f.Start != nil:
			req := f.Start.StartRequest
			if req == nil {
				return errors.New("start message without a request")
			}
			if f.Start.EnvBase {
				req.Env = append(slices.Clip(s.env), req.Env...)
			}
			crashpoint.Reach(crashpoint.RunnerReceived, req.ID)
			leaseEnded := false
			if req.Lease > 0 {
				req.Lease = leaseLeft(req.Lease, f.Start.SentAt)
				leaseEnded = req.Lease <= 0
			}
			if a := s.accept(c, req, leaseEnded); a != nil {
				s.wg.Add(1)
				go func() {
					defer s.wg.Done()
					s.start(a)
				}()
			}
		case f.Signal != nil:
			s.signal(f.Signal)
		case f.Confirm != nil:
			s.confirm(f.Confirm.IDs)
		case f.Renew != nil:
			s.renew(f.Renew)
		default:
			return errors.New("unexpected message")
		}
	}
}

// replyLocked queues a control frame for the attached agent, if any, and
// returns its connection, to be flushed once mu is released; nil when no
// agent is attached.
func (s *server) replyLocked(f *frame) *sconn {
	if s.conn == nil {
		return nil
	}
	b, err := encodeJSON(f)
	if err != nil {
		s.log.Error("cannot encode message", slog.Any("error", err))
		return nil
	}
	s.conn.control(b)
	return s.conn
}

// sconn is an attached agent's connection. Frames go out in the order
// they are queued. There is no writer goroutine: whoever queues a frame
// while no write is in progress writes the queue itself (flush), so a
// frame costs no hand-off between goroutines. Output waits while
// outputBudget bytes of output are queued; control frames never wait to
// be queued, and are queued under the server's lock and flushed after it
// is released.
type sconn struct {
	nc net.Conn

	mu       sync.Mutex
	cond     *sync.Cond // broadcast when output was written or the conn closed
	queue    [][]byte
	spare    [][]byte
	outBytes int
	writing  bool
	closed   bool
}

func newSconn(nc net.Conn) *sconn {
	c := &sconn{nc: nc}
	c.cond = sync.NewCond(&c.mu)
	return c
}

// control queues a control frame; the caller flushes it.
func (c *sconn) control(b []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.closed {
		c.queue = append(c.queue, b)
	}
}

// output queues an output frame, waiting while too much output is
// queued, and flushes.
func (c *sconn) output(b []byte) {
	c.mu.Lock()
	for c.outBytes >= outputBudget && !c.closed {
		c.cond.Wait()
	}
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.queue = append(c.queue, b)
	c.outBytes += len(b)
	c.mu.Unlock()
	c.flush()
}

// flush writes what is queued, unless another goroutine is writing (it
// writes it then). It may block on a full socket. c may be nil.
func (c *sconn) flush() {
	if c == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.writing {
		return
	}
	c.writing = true
	for len(c.queue) > 0 && !c.closed {
		batch := c.queue
		c.queue = c.spare[:0]
		c.mu.Unlock()
		out := 0
		for _, b := range batch {
			if b[4] == kindOutput {
				out += len(b)
			}
		}
		bufs := net.Buffers(batch)
		_, err := bufs.WriteTo(c.nc)
		clear(batch)
		c.mu.Lock()
		c.spare = batch[:0]
		c.outBytes -= out
		c.cond.Broadcast()
		if err != nil {
			c.closeLocked()
		}
	}
	c.writing = false
}

func (c *sconn) close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closeLocked()
}

func (c *sconn) closeLocked() {
	if !c.closed {
		c.closed = true
		c.queue = nil
		_ = c.nc.Close() // ends the connection's reads and writes
		c.cond.Broadcast()
	}
}
