//go:build unix

package runner

import (
	"bufio"
	"cmp"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/batonhq/baton/agent/internal/crashpoint"
	"github.com/batonhq/baton/agent/internal/recordlog"
	"github.com/batonhq/baton/agent/process"
)

const (
	// handshakeTimeout bounds the hello and the welcome.
	handshakeTimeout = 10 * time.Second
	// outputBudget is how many bytes of output may wait for the agent
	// before the children's output is held back.
	outputBudget = 256 << 10
	// copyBufSize is the buffer a child's stream is read with.
	copyBufSize = 32 << 10
)

// copyBufs recycles the buffers children's streams are read with.
var copyBufs = sync.Pool{New: func() any { return new([copyBufSize]byte) }}

// serverConfig configures a runner process.
type serverConfig struct {
	// StateDir is the agent's state directory. Required.
	StateDir string
	// IdleExit defaults to DefaultIdleExit.
	IdleExit time.Duration
	// Version defaults to ProtocolVersion; tests play other versions.
	Version int
	// Logger defaults to discarding.
	Logger *slog.Logger
	// Ready, if set, is called once the runner accepts agents.
	Ready func()
}

// attState is where a child stands in the runner.
type attState int

const (
	attStarting attState = iota // fork/exec in progress
	attRunning
	attExited // exit recorded, not yet confirmed
	attOrphan // running when an earlier runner process was killed, not yet confirmed
)

// ratt is one child the runner holds.
type ratt struct {
	id    int64
	req   *StartRequest
	state attState
	rec   Record // as written to disk; complete once exited
	proc  *process.Process
	out   *streamSink
	errs  *streamSink
	timer *time.Timer

	signalled bool    // the agent asked for a signal; a later timeout or lease expiry does not count
	timedOut  bool    // the runner's timeout stopped it first
	reason    string  // the first signal's reason
	pending   *signal // a signal that arrived while starting

	// lease is when the child's lease ends (monotonic; zero: no lease),
	// leaseTerm the lease length the agent last gave. leaseTimer fires at
	// lease; fenced says the lease ran out and the tree is being stopped,
	// leaseExpired (wall clock) when, if that came before any signal of
	// the agent. fenceKill kills the tree a grace after the expiry.
	lease        time.Time
	leaseTerm    time.Duration
	leaseTimer   *time.Timer
	fenced       bool
	leaseExpired time.Time
	fenceKill    *time.Timer
	// startDone and exitSeen say start has told the agent and the child
	// has exited; whichever comes second handles the exit.
	startDone bool
	exitSeen  bool
}

// server is a runner process's state.
type server struct {
	cfg      serverConfig
	log      *slog.Logger
	env      []string // the runner's environment, the base of children's
	envID    string   // its envDigest
	dir      string   // this version's directory
	instance string
	changed  chan struct{}
	wg       sync.WaitGroup
	records  *recordlog.Log
	// confirmedOff is how far the confirmation file of agents of other
	// versions has been read; only waitIdle's goroutine uses it after
	// load.
	confirmedOff int64

	mu      sync.Mutex
	conn    *sconn // the attached agent, nil when none
	atts    map[int64]*ratt
	closing bool
	open    map[net.Conn]struct{} // every accepted connection, closed at shutdown
}

// serve runs a runner until it has been idle for cfg.IdleExit (no agent
// attached, no child running, every exit confirmed) or ctx is done; then
// it kills what still runs, waits for it and returns. It returns errBusy
// when another runner of the same version holds the state directory.
func serve(ctx context.Context, cfg serverConfig) error {
	cfg.IdleExit = cmp.Or(cfg.IdleExit, DefaultIdleExit)
	cfg.Version = cmp.Or(cfg.Version, ProtocolVersion)
	cfg.Logger = cmp.Or(cfg.Logger, slog.New(slog.DiscardHandler))
	if cfg.StateDir == "" {
		return errors.New("runner: state dir is required")
	}
	dir := versionDir(cfg.StateDir, cfg.Version)
	s := &server{
		cfg:      cfg,
		log:      cfg.Logger,
		dir:      dir,
		env:      os.Environ(),
		instance: rand.Text(),
		changed:  make(chan struct{}, 1),
		atts:     make(map[int64]*ratt),
		open:     make(map[net.Conn]struct{}),
	}
	s.envID = envDigest(s.env)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create runner dir: %w", err)
	}
	lock, err := os.OpenFile(filepath.Join(dir, lockName), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("open runner lock: %w", err)
	}
	// Closing the lock file releases the lock as the runner exits; the file
	// is never written, so a failed close loses nothing.
	defer func() { _ = lock.Close() }()
	if err := lockFile(lock); err != nil {
		return err
	}
	if err := s.load(); err != nil {
		return err
	}
	defer func() {
		if err := s.records.Close(); err != nil {
			s.log.Error("cannot close the record log", slog.Any("error", err))
		}
	}()
	ln, cleanup, err := listen(dir)
	if err != nil {
		return err
	}
	defer cleanup()
	s.log.Info("runner started", slog.Int("pid", os.Getpid()), slog.Int("version", cfg.Version),
		slog.String("socket", ln.Addr().String()), slog.Int("unconfirmed", len(s.atts)))
	if cfg.Ready != nil {
		cfg.Ready()
	}

	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			if s.closing {
				s.mu.Unlock()
				_ = nc.Close() // refused unread: nothing to lose
				continue
			}
			s.open[nc] = struct{}{}
			s.mu.Unlock()
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				s.serveConn(nc)
				s.mu.Lock()
				delete(s.open, nc)
				s.mu.Unlock()
			}()
		}
	}()

	s.waitIdle(ctx)
	_ = ln.Close() // stops the accept loop; cleanup closes it again
	s.mu.Lock()
	c := s.conn
	var running []*process.Process
	for _, a := range s.atts {
		if a.proc != nil && a.state == attRunning {
			running = append(running, a.proc)
		}
	}
	for nc := range s.open {
		_ = nc.Close() // ends its serveConn, which closes it again
	}
	s.mu.Unlock()
	if c != nil {
		c.close()
	}
	for _, p := range running {
		_ = p.Kill()
	}
	s.wg.Wait()
	s.foreignConfirms()
	s.mu.Lock()
	left := len(s.atts)
	s.mu.Unlock()
	if left == 0 {
		// Every confirmation in it is applied.
		_ = os.Remove(filepath.Join(dir, confirmedName))
		// Nothing is left that this runner took over: an attempt handed to
		// it whose outcome no agent journaled never started.
		if err := writeFileAtomic(filepath.Join(dir, exitedName), []byte(s.instance+" "+bootID()), true); err != nil {
			s.log.Warn("cannot record the clean exit", slog.Any("error", err))
		}
	}
	s.log.Info("runner stopped")
	return nil
}

// load opens the record log and takes over the records of an earlier
// runner process: exits not yet confirmed, and children that were running
// when it was killed.
func (s *server) load() error {
	recs := recordSet{}
	rl, err := recordlog.Open(filepath.Join(s.dir, recordsName), recordlog.Options{
		Header:   recordsHeader,
		Classify: classifyRecord,
		Logger:   s.log,
	}, recs.replay)
	if err != nil {
		return fmt.Errorf("open records: %w", err)
	}
	s.records = rl
	ids, next, err := readConfirmed(filepath.Join(s.dir, confirmedName), 0)
	if err != nil {
		s.log.Warn("cannot read confirmations of other agent versions", slog.Any("error", err))
	}
	s.confirmedOff = next
	for _, id := range ids {
		if _, ok := recs[id]; ok {
			delete(recs, id)
			s.recordConfirmed(id)
		}
	}
	s.records.Flush()
	for id, rec := range recs {
		a := &ratt{id: id, rec: *rec, state: attExited}
		if !rec.Exited {
			a.state = attOrphan
			s.log.Warn("child of a killed runner: its outcome is unknown", slog.Int64("attempt_id", id), slog.Int("pid", rec.Pid))
		}
		s.atts[id] = a
	}
	return nil
}

// record appends rec's record of the given kind to the record log and
// waits until it is written (and flushed, with fsync).
func (s *server) record(kind byte, rec *Record, fsync bool) error {
	body, err := encodeRecord(kind, rec.ID, rec)
	if err != nil {
		return err
	}
	return s.records.Queue(fsync, body).Wait()
}

// recordConfirmed queues the record that forgets attempt id; nobody waits
// for it (a lost confirmation only makes the exit be listed once more).
func (s *server) recordConfirmed(id int64) {
	body, err := encodeRecord(recConfirmed, id, nil)
	if err == nil {
		s.records.Queue(false, body)
	}
}

// foreignConfirms applies the confirmations agents of other versions
// appended to the confirmation file since it was last read.
func (s *server) foreignConfirms() {
	path := filepath.Join(s.dir, confirmedName)
	if st, err := os.Stat(path); err != nil || st.Size() == s.confirmedOff {
		return
	}
	ids, next, err := readConfirmed(path, s.confirmedOff)
	if err != nil {
		s.log.Warn("cannot read confirmations of other agent versions", slog.Any("error", err))
		return
	}
	s.confirmedOff = next
	if len(ids) > 0 {
		s.confirm(ids)
	}
}

// listen listens on the version directory's socket, or on one in a fresh
// private temp directory (named in the sockdir file) when that path would
// be too long for a Unix socket.
func listen(dir string) (*net.UnixListener, func(), error) {
	path := filepath.Join(dir, sockName)
	tmpDir := ""
	if len(path) > maxSockPath {
		if old, err := os.ReadFile(filepath.Join(dir, sockDirName)); err == nil {
			removeSockDir(string(old))
		}
		d, err := os.MkdirTemp("", "baton-runner-")
		if err != nil {
			return nil, nil, fmt.Errorf("create socket dir: %w", err)
		}
		tmpDir = d
		path = filepath.Join(d, sockName)
		if err := writeFileAtomic(filepath.Join(dir, sockDirName), []byte(d), false); err != nil {
			_ = os.RemoveAll(d) // the write error is the one to report
			return nil, nil, fmt.Errorf("record socket dir: %w", err)
		}
	}
	// A socket left by a killed runner refuses connections; the lock says
	// it is ours now.
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, nil, fmt.Errorf("remove stale socket: %w", err)
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		if tmpDir != "" {
			_ = os.RemoveAll(tmpDir) // the listen error is the one to report
		}
		return nil, nil, fmt.Errorf("listen: %w", err)
	}
	// The cleanup is best effort: the listener may be closed already, and
	// the next runner removes a socket dir left behind (removeSockDir).
	return ln, func() {
		_ = ln.Close()
		if tmpDir != "" {
			_ = os.RemoveAll(tmpDir)
			_ = os.Remove(filepath.Join(dir, sockDirName))
		}
	}, nil
}

// removeSockDir removes a socket directory an earlier runner recorded, if
// it is one of ours.
func removeSockDir(d string) {
	if filepath.IsAbs(d) && filepath.Dir(d) == filepath.Clean(os.TempDir()) &&
		strings.HasPrefix(filepath.Base(d), "baton-runner-") {
		_ = os.RemoveAll(d) // best effort: it only holds a socket nobody listens on
	}
}

// waitIdle returns once the runner has been idle for IdleExit, with
// s.closing set, or when ctx is done.
func (s *server) waitIdle(ctx context.Context) {
	tick := time.NewTicker(max(s.cfg.IdleExit/4, 5*time.Millisecond))
	defer tick.Stop()
	var since time.Time
	for {
		select {
		case <-ctx.Done():
			s.mu.Lock()
			s.closing = true
			s.mu.Unlock()
			return
		case <-tick.C:
			s.foreignConfirms()
		case <-s.changed:
		}
		s.mu.Lock()
		if !s.idleLocked() {
			since = time.Time{}
		} else if since.IsZero() {
			since = time.Now()
		} else if time.Since(since) >= s.cfg.IdleExit {
			s.closing = true
			s.mu.Unlock()
			return
		}
		s.mu.Unlock()
	}
}

// idleLocked reports whether no agent is attached, no child runs and no
// exit waits for confirmation.
func (s *server) idleLocked() bool {
	return s.conn == nil && len(s.atts) == 0
}

func (s *server) notify() {
	select {
	case s.changed <- struct{}{}:
	default:
	}
}

// current returns the attached agent's connection, or nil.
func (s *server) current() *sconn {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.conn
}

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

// accept takes over a start request read from c, or refuses it, and
// returns the child to start (nil when refused). It is where the agent
// hands an attempt over to the runner:
//
//   - The request is taken over under s.mu, where welcomes are made too,
//     and only while c is the attached connection. From then on the child
//     is in s.atts until the agent confirms its exit: every later welcome
//     lists it, as running while it is still being started.
//   - A request read from a connection that another one has replaced
//     (the agent that sent it died, or reconnected) is dropped: the
//     welcome of the replacing connection did not list it, so the agent
//     holding that connection may start the attempt itself.
//
// So an attempt an agent sent to this runner that a welcome of this
// runner does not list never started and never will (welcome.Instance).
func (s *server) accept(c *sconn, req *StartRequest, leaseEnded bool) *ratt {
	log := s.log.With(slog.Int64("attempt_id", req.ID))
	refuse := func(msg string) *ratt {
		b, err := encodeJSON(&frame{Started: &started{ID: req.ID, Err: msg, LeaseExpired: leaseEnded}})
		if err != nil {
			return nil
		}
		c.control(b)
		// Written off the read loop, which must not wait for the agent.
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			c.flush()
		}()
		return nil
	}
	if leaseEnded {
		log.Warn("refusing a start request whose lease ended before the runner read it; the attempt is not started")
		return refuse(ErrLeaseExpired.Error())
	}
	if err := req.validate(); err != nil {
		return refuse(err.Error())
	}
	s.mu.Lock()
	switch _, known := s.atts[req.ID]; {
	case s.closing:
		s.mu.Unlock()
		return refuse("the runner is stopping")
	case s.conn != c:
		s.mu.Unlock()
		log.Info("dropping a start request of a replaced agent connection; the attempt is not started")
		return refuse("the agent connection was replaced before the runner read the request")
	case known:
		s.mu.Unlock()
		log.Warn("refusing a second start of an attempt")
		return refuse(fmt.Sprintf("attempt %d is already known to the runner", req.ID))
	}
	a := &ratt{id: req.ID, req: req, state: attStarting}
	if req.Lease > 0 {
		// Measured from now, when the request was read: later than the
		// agent's deadline by the socket's delay only.
		a.lease, a.leaseTerm = time.Now().Add(req.Lease), req.LeaseTerm
	}
	a.out = &streamSink{s: s, id: req.ID, stream: Stdout}
	a.errs = &streamSink{s: s, id: req.ID, stream: Stderr}
	s.atts[req.ID] = a
	s.mu.Unlock()
	return a
}

// start starts a's child, which accept took over, and records it.
func (s *server) start(a *ratt) {
	req := a.req
	log := s.log.With(slog.Int64("attempt_id", req.ID))
	crashpoint.Reach(crashpoint.RunnerForking, req.ID)
	// The exit is handled on the goroutine that reaps the child, or here
	// if the child exits before the agent has been told it started.
	s.wg.Add(1)
	p, err := process.Start(process.Spec{
		Path: req.Path, Argv: req.Argv, Env: req.Env, Dir: req.Dir,
		Stdout: a.out, Stderr: a.errs,
		OnExit: func() { s.exitSeen(a, false) },
	})
	if err != nil {
		s.wg.Done()
		s.mu.Lock()
		delete(s.atts, req.ID)
		c := s.replyLocked(&frame{Started: &started{ID: req.ID, Err: err.Error()}})
		s.mu.Unlock()
		c.flush()
		s.notify()
		return
	}
	pidStart, _ := procStart(p.Pid())
	rec := Record{
		ID: req.ID, Pid: p.Pid(), PidStart: pidStart, BootID: bootID(), Start: time.Now(),
		Timeout: req.Timeout, Grace: req.Grace,
	}
	s.mu.Lock()
	a.proc, a.rec, a.state = p, rec, attRunning
	if req.Timeout > 0 {
		a.timer = time.AfterFunc(req.Timeout, func() { s.timeout(a) })
	}
	if !a.lease.IsZero() {
		a.leaseTimer = time.AfterFunc(time.Until(a.lease), func() { s.leaseCheck(a) })
	}
	pending := a.pending
	a.pending = nil
	c := s.replyLocked(&frame{Started: &started{ID: req.ID, Pid: rec.Pid, PidStart: pidStart, BootID: rec.BootID, Start: rec.Start}})
	s.mu.Unlock()
	c.flush()
	// Recorded after the agent was told, off its path: without the
	// record a later runner cannot tell the agent about this child if
	// this runner is killed, but the agent knows its pid and start time
	// from the reply. The exit record of this goroutine comes after it.
	if err := s.record(recStarted, &rec, false); err != nil {
		log.Warn("cannot record started child", slog.Any("error", err))
	}
	if pending != nil {
		s.apply(a, pending)
	}
	s.exitSeen(a, true)
}

// exitSeen is called when start has told the agent about a's child
// (fromStart) and when the child has exited; the second call handles the
// exit.
func (s *server) exitSeen(a *ratt, fromStart bool) {
	s.mu.Lock()
	if fromStart {
		a.startDone = true
	} else {
		a.exitSeen = true
	}
	second := a.startDone && a.exitSeen
	s.mu.Unlock()
	if second {
		s.exited(a)
	}
}

// exited records the exit of a's child and tells the agent.
func (s *server) exited(a *ratt) {
	defer s.wg.Done()
	res := a.proc.Result()
	end := time.Now()
	s.mu.Lock()
	for _, t := range []*time.Timer{a.timer, a.leaseTimer, a.fenceKill} {
		if t != nil {
			t.Stop()
		}
	}
	rec := a.rec
	rec.TimedOut = a.timedOut
	rec.Reason = a.reason
	if !a.leaseExpired.IsZero() {
		rec.LeaseExpired, rec.LeaseExpiredAt, rec.LeaseTerm = true, a.leaseExpired, a.leaseTerm
	}
	s.mu.Unlock()
	rec.Exited, rec.End, rec.ExitCode = true, end, res.ExitCode
	if res.Err != nil {
		rec.Err = res.Err.Error()
		rec.WaitDelay = errors.Is(res.Err, exec.ErrWaitDelay)
	}
	rec.StdoutTail, rec.StdoutBytes = a.out.tail()
	rec.StderrTail, rec.StderrBytes = a.errs.tail()
	// Durable before anyone is told: an agent killed now learns the exit
	// from the record.
	if err := s.record(recExited, &rec, a.req.Fsync); err != nil {
		s.log.Error("cannot record exit; it is only told to the attached agent",
			slog.Int64("attempt_id", a.id), slog.Any("error", err))
	}
	s.mu.Lock()
	a.rec, a.state, a.proc = rec, attExited, nil
	c := s.replyLocked(&frame{Exit: &rec})
	s.mu.Unlock()
	c.flush()
	if c == nil {
		s.notify()
	}
}

// timeout stops a's child unless the agent asked for a signal first or
// its lease ran out first.
func (s *server) timeout(a *ratt) {
	s.mu.Lock()
	if a.signalled || a.fenced || a.state != attRunning {
		s.mu.Unlock()
		return
	}
	a.timedOut = true
	p, grace := a.proc, a.req.Grace
	s.mu.Unlock()
	s.log.Info("child timed out; stopping its process tree", slog.Int64("attempt_id", a.id),
		slog.Duration("timeout", a.req.Timeout))
	_ = p.Terminate(grace)
}

// renew extends the leases of the children r names; see renew.
func (s *server) renew(r *renew) {
	remaining := leaseLeft(r.Remaining, r.SentAt)
	if remaining <= 0 {
		return
	}
	until := time.Now().Add(remaining)
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, id := range r.IDs {
		a := s.atts[id]
		if a == nil || (a.state != attStarting && a.state != attRunning) || a.fenced || !until.After(a.lease) {
			continue
		}
		// A child started without a lease gets one: the control plane
		// that renews it counts on it being fenced.
		a.lease = until
		if r.Term > 0 {
			a.leaseTerm = r.Term
		}
		switch {
		case a.leaseTimer != nil:
			a.leaseTimer.Reset(remaining)
		case a.state == attRunning:
			a.leaseTimer = time.AfterFunc(remaining, func() { s.leaseCheck(a) })
		}
		// A child still starting gets its timer in start.
	}
}

// leaseCheck stops a's child's tree once its lease has passed
// (self-fencing): SIGTERM, and SIGKILL after the child's grace even when
// the agent asked for a longer one. The expiry counts for the outcome
// unless the agent asked for a signal or the timeout struck first.
func (s *server) leaseCheck(a *ratt) {
	s.mu.Lock()
	if a.state != attRunning || a.fenced || a.timedOut {
		s.mu.Unlock()
		return
	}
	if d := time.Until(a.lease); d > 0 {
		// Renewed since the timer was set.
		a.leaseTimer.Reset(d)
		s.mu.Unlock()
		return
	}
	a.fenced = true
	if !a.signalled {
		a.leaseExpired = time.Now()
	}
	p, grace, term := a.proc, a.req.Grace, a.leaseTerm
	if grace > 0 {
		a.fenceKill = time.AfterFunc(grace, func() { _ = p.Kill() })
	}
	s.mu.Unlock()
	s.log.Warn("attempt lease expired; stopping the child's process tree (self-fencing)", slog.Int64("attempt_id", a.id),
		slog.Duration("lease", term), slog.Duration("kill_grace", grace))
	if err := p.Terminate(grace); err != nil {
		s.log.Warn("cannot signal child", slog.Int64("attempt_id", a.id), slog.Any("error", err))
	}
}

// signal stops a child as the agent asks.
func (s *server) signal(sig *signal) {
	s.mu.Lock()
	a := s.atts[sig.ID]
	if a == nil || (a.state != attStarting && a.state != attRunning) {
		s.mu.Unlock()
		return
	}
	a.signalled = true
	if a.reason == "" {
		a.reason = sig.Reason
	}
	if a.state == attStarting {
		if a.pending == nil || sig.Kill {
			a.pending = sig
		}
		s.mu.Unlock()
		return
	}
	s.mu.Unlock()
	s.apply(a, sig)
}

func (s *server) apply(a *ratt, sig *signal) {
	s.mu.Lock()
	p := a.proc
	s.mu.Unlock()
	if p == nil {
		return
	}
	var err error
	if sig.Kill {
		err = p.Kill()
	} else {
		err = p.Terminate(sig.Grace)
	}
	if err != nil {
		s.log.Warn("cannot signal child", slog.Int64("attempt_id", a.id), slog.Any("error", err))
	}
}

// confirm forgets exits the agent has journaled and records that in the
// background. Only a runner with no agent attached may become idle by it,
// so only then is its idle wait woken.
func (s *server) confirm(ids []int64) {
	s.mu.Lock()
	for _, id := range ids {
		a := s.atts[id]
		if a == nil || a.state == attStarting || a.state == attRunning {
			continue
		}
		delete(s.atts, id)
		s.recordConfirmed(id)
	}
	attached := s.conn != nil
	s.mu.Unlock()
	s.records.Flush()
	if !attached {
		s.notify()
	}
}

// streamSink is a child's stdout or stderr in the runner: it keeps the
// tail and forwards the first ForwardCap bytes to the attached agent.
type streamSink struct {
	s      *server
	id     int64
	stream Stream

	mu    sync.Mutex
	total int64
	buf   []byte
}

// Write never fails. It blocks while too much output waits for the agent.
func (w *streamSink) Write(p []byte) (int, error) {
	w.mu.Lock()
	off := w.total
	w.total += int64(len(p))
	w.buf = appendTail(w.buf, p)
	w.mu.Unlock()
	if off < ForwardCap {
		n := min(int64(len(p)), ForwardCap-off)
		if c := w.s.current(); c != nil {
			c.output(encodeOutput(w.id, w.stream, off, p[:n]))
		}
	}
	return len(p), nil
}

// ReadFrom copies the child's stream to w with a recycled buffer, so that
// a child costs no fresh buffer per stream (os/exec copies through
// io.Copy, which uses ReadFrom).
func (w *streamSink) ReadFrom(r io.Reader) (int64, error) {
	buf := copyBufs.Get().(*[copyBufSize]byte)
	defer copyBufs.Put(buf)
	var total int64
	for {
		n, err := r.Read(buf[:])
		if n > 0 {
			_, _ = w.Write(buf[:n])
			total += int64(n)
		}
		if errors.Is(err, io.EOF) {
			return total, nil
		}
		if err != nil {
			return total, err
		}
	}
}

func (w *streamSink) tail() ([]byte, int64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return lastBytes(w.buf), w.total
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
