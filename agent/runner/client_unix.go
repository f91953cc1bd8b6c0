//go:build unix

package runner

import (
	"bufio"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

const (
	// DefaultPollInterval is the default for ClientConfig.PollInterval.
	DefaultPollInterval = time.Second
	// readyTimeout bounds how long a starting runner may take to listen.
	readyTimeout = 10 * time.Second
	// writeTimeout bounds one write to the runner.
	writeTimeout = 10 * time.Second
	// connectAttempts bounds the tries of one connect.
	connectAttempts = 12
	// maxLogSize is the runner log's size at which a starting runner
	// moves it to log.1.
	maxLogSize = 1 << 20
)

// errRefused is a runner's refusal of the agent.
var errRefused = errors.New("runner refused the agent")

// Attachment is what a runner holds that the agent did not know of when
// it attached: children it is still running, exits it recorded and
// children of a runner that died. The agent confirms each exit and each
// orphan with Client.Confirm once it has journaled its outcome.
type Attachment struct {
	// Running are the children still running, as Procs whose output and
	// exit the agent now receives. Give each a Sink with SetSink.
	Running []*Proc
	// Exited are exits recorded while no agent held the child.
	Exited []*Record
	// Orphaned are children of a runner that was killed: their outcome is
	// unknown. Those that could be identified safely (pid and start time)
	// have had their process group killed.
	Orphaned []*Record
	// Instance identifies the runner process attached to, as
	// Client.Instance does. An attempt whose start request an earlier agent process
	// sent to runner Instance after journaling it with Instance, and that
	// this attachment does not list, was never started and never will be.
	Instance string
	// CleanExit identifies the runner process of this state directory and
	// protocol version that last exited on its own (idle, with every
	// child it had taken over confirmed), during the current boot; empty
	// if none is known. An attempt an agent journaled with that identity
	// and then handed to it never started, unless the agent journaled its
	// outcome. (After a reboot a journal written without fsync may have
	// lost outcomes the runner had been told were journaled.)
	CleanExit string
}

// ClientConfig configures a Client.
type ClientConfig struct {
	// StateDir is the agent's state directory. Required.
	StateDir string
	// Command starts a runner process when none is running: the program
	// and its arguments up to the runner's own (--state-dir and the like
	// are appended), such as ["/usr/bin/baton-agent", "runner"].
	// Required.
	Command []string
	// Env is the runner process's environment. Nil means this process's.
	Env []string
	// IdleExit is passed to a runner this client starts; zero leaves the
	// runner's default, DefaultIdleExit.
	IdleExit time.Duration
	// ProtocolVersion defaults to ProtocolVersion. Tests set another to
	// play an agent and a runner of another version.
	ProtocolVersion int
	// PollInterval is how often the record of a child of a runner of
	// another version is read to see whether it exited. Defaults to
	// DefaultPollInterval.
	PollInterval time.Duration
	// Attached is called after every attach to a runner, with what the
	// runner holds that the client had no Proc for (and, the first time,
	// the children of runners of other versions). It runs before any
	// output or exit of the new connection is delivered: on Open's
	// goroutine the first time, on the client's own later. It may call
	// Confirm and Proc methods, not Start.
	Attached func(c *Client, at *Attachment)
	// Logger receives the client's logs. Defaults to discarding them.
	Logger *slog.Logger
}

// Client is an agent's connection to its runner. It starts a runner when
// none runs, and when the connection breaks it attaches again, starting a
// new runner if the old one is gone (whose children are then lost). Its
// methods are safe for concurrent use.
type Client struct {
	cfg     ClientConfig
	log     *slog.Logger
	dir     string // this version's directory
	version int
	stop    chan struct{}
	wg      sync.WaitGroup

	mu         sync.Mutex
	conn       *cconn // nil while disconnected
	connected  chan struct{}
	procs      map[int64]*Proc // children of this version's runner, until they exit
	otherRecs  map[int64]store // stores of other versions' runners whose records are confirmed there
	otherProcs map[int64]*Proc // watched children of other versions' runners, for renewals
	instance   string          // the runner process of the last welcome
	closed     bool
	// baseEnv is the environment runners this client starts get, and
	// baseID its envDigest.
	baseEnv []string
	baseID  string
}

// cconn is one connection to the runner.
type cconn struct {
	nc net.Conn
	br *bufio.Reader
	// envBase says the runner's environment is the client's base
	// environment: starts may send only what follows it.
	envBase bool
}

// write sends one frame; the caller holds Client.mu.
func (cc *cconn) write(b []byte) error {
	_ = cc.nc.SetWriteDeadline(time.Now().Add(writeTimeout))
	if _, err := cc.nc.Write(b); err != nil {
		_ = cc.nc.Close() // the write error is the one to report
		return err
	}
	return nil
}

// Open connects to the state directory's runner, starting one if none
// runs, and calls cfg.Attached with what it holds before returning. It
// fails when no runner can be started or reached.
func Open(ctx context.Context, cfg ClientConfig) (*Client, error) {
	if cfg.StateDir == "" {
		return nil, errors.New("runner client: StateDir is required")
	}
	if len(cfg.Command) == 0 || cfg.Command[0] == "" {
		return nil, errors.New("runner client: Command is required")
	}
	if cfg.ProtocolVersion < 0 {
		return nil, errors.New("runner client: ProtocolVersion must not be negative")
	}
	dir, err := filepath.Abs(cfg.StateDir)
	if err != nil {
		return nil, fmt.Errorf("runner client: StateDir: %w", err)
	}
	cfg.StateDir = dir
	cfg.ProtocolVersion = cmp.Or(cfg.ProtocolVersion, ProtocolVersion)
	cfg.PollInterval = cmp.Or(cfg.PollInterval, DefaultPollInterval)
	cfg.Logger = cmp.Or(cfg.Logger, slog.New(slog.DiscardHandler))
	c := &Client{
		cfg:        cfg,
		log:        cfg.Logger,
		dir:        versionDir(dir, cfg.ProtocolVersion),
		version:    cfg.ProtocolVersion,
		stop:       make(chan struct{}),
		connected:  make(chan struct{}),
		procs:      make(map[int64]*Proc),
		otherRecs:  make(map[int64]store),
		otherProcs: make(map[int64]*Proc),
		baseEnv:    cfg.Env,
	}
	if c.baseEnv == nil {
		c.baseEnv = os.Environ()
	}
	c.baseID = envDigest(dedupEnv(c.baseEnv))
	cc, w, err := c.connect(ctx)
	if err != nil {
		return nil, err
	}
	c.attach(cc, w, true)
	c.wg.Add(1)
	go c.run(cc)
	return c, nil
}

// Close disconnects from the runner, which keeps running what it runs.
// Children of other versions' runners are no longer watched.
func (c *Client) Close() {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.closed = true
	cc := c.conn
	c.mu.Unlock()
	close(c.stop)
	if cc != nil {
		// Closing ends the read loop; the runner keeps running and a
		// failed close of a socket loses nothing.
		_ = cc.nc.Close()
	}
	c.wg.Wait()
}

// Start asks the runner to start a child and waits until it has started.
// Output goes to sink. It returns ErrUnavailable (wrapped) when the
// request did not reach a runner (or req.Instance names another runner
// than the one attached), another error when the child could not be
// started. When the runner was lost while starting the child, the
// returned Proc is done already with Result.Lost set.
func (c *Client) Start(ctx context.Context, req *StartRequest, sink Sink) (*Proc, error) {
	if err := req.validate(); err != nil {
		return nil, err
	}
	p := newProc(c, req.ID)
	p.sink, p.grace = sink, req.Grace
	for {
		c.mu.Lock()
		if c.closed {
			c.mu.Unlock()
			return nil, fmt.Errorf("%w: client closed", ErrUnavailable)
		}
		if c.conn != nil {
			break
		}
		wait := c.connected
		c.mu.Unlock()
		select {
		case <-wait:
		case <-ctx.Done():
			return nil, fmt.Errorf("%w: %w", ErrUnavailable, ctx.Err())
		}
	}
	if _, ok := c.procs[req.ID]; ok {
		c.mu.Unlock()
		return nil, fmt.Errorf("runner: attempt %d is already running", req.ID)
	}
	if req.Instance != "" && req.Instance != c.instance {
		c.mu.Unlock()
		return nil, fmt.Errorf("%w: the request is for runner %s, the client is attached to another", ErrUnavailable, req.Instance)
	}
	sent := req
	var sentAt time.Time
	if !req.LeaseUntil.IsZero() {
		// Measured now, right before the write, not when the agent
		// decided to start; the runner takes off what the request spends
		// on its way (leaseLeft).
		now := time.Now()
		remaining := req.LeaseUntil.Sub(now)
		if remaining <= 0 {
			c.mu.Unlock()
			return nil, ErrLeaseExpired
		}
		withLease := *req
		withLease.Lease = remaining
		sent, sentAt = &withLease, now.Round(0)
	}
	msg := c.startMsg(sent, c.conn)
	msg.SentAt = sentAt
	b, err := encodeJSON(&frame{Start: msg})
	if err != nil {
		c.mu.Unlock()
		return nil, err
	}
	c.procs[req.ID] = p
	// Written under mu, so a reattach sees either no request or a sent
	// one.
	err = c.conn.write(b)
	if err != nil {
		delete(c.procs, req.ID)
	}
	c.mu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	<-p.startedCh
	p.mu.Lock()
	startErr, unavailable, leaseExpired := p.startErr, p.unavailable, p.leaseExpired
	p.mu.Unlock()
	switch {
	case unavailable:
		return nil, fmt.Errorf("%w: the runner connection broke before the request was read", ErrUnavailable)
	case leaseExpired:
		return nil, ErrLeaseExpired
	case startErr != "":
		return nil, errors.New(startErr)
	}
	return p, nil
}

// startMsg returns req as sent on cc: when the runner's environment is
// the base environment and req's starts with it, only the rest is sent.
func (c *Client) startMsg(req *StartRequest, cc *cconn) *startMsg {
	base := c.baseEnv
	if !cc.envBase || len(req.Env) < len(base) || !slices.Equal(req.Env[:len(base)], base) {
		return &startMsg{StartRequest: req}
	}
	short := *req
	short.Env = req.Env[len(base):]
	return &startMsg{StartRequest: &short, EnvBase: true}
}

// Instance identifies the runner process the client is attached to (or
// was last attached to, while it attaches again).
//
// A runner takes start requests over exactly: it lists in the welcome of
// every later connection each child it may still start, run or report,
// and drops a start request that arrives on a connection another one has
// replaced. So when an
// agent records an attempt with the Instance it read, sends the
// attempt's start request with it (StartRequest.Instance, so that it
// reaches that runner or none), and a later attachment to the runner of
// that Instance (Attachment.Instance) does not list the attempt, the
// request never started a child and never will: the attempt may be
// started anew.
func (c *Client) Instance() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.instance
}

// Confirm tells the runner that the outcome of attempt id is journaled:
// its exit record may go. Confirming twice, or an unknown id, is harmless.
func (c *Client) Confirm(id int64) {
	c.mu.Lock()
	if st, ok := c.otherRecs[id]; ok {
		delete(c.otherRecs, id)
		c.mu.Unlock()
		if err := st.confirm(id); err != nil {
			c.log.Warn("cannot confirm the record of another runner version", slog.Int64("attempt_id", id), slog.Any("error", err))
		}
		return
	}
	defer c.mu.Unlock()
	if c.conn == nil {
		return // the next welcome lists the exit again
	}
	b, err := encodeJSON(&frame{Confirm: &confirm{IDs: []int64{id}}})
	if err == nil {
		err = c.conn.write(b)
	}
	if err != nil {
		c.log.Debug("cannot confirm exit; it is listed again after reconnecting", slog.Int64("attempt_id", id), slog.Any("error", err))
	}
}

// Renew extends the leases of the children of attempts ids
// (StartRequest.Lease) to until, on this process's clock, unless they end
// later already. The runner is sent the time remaining, measured right
// before the write, and counts it from when it reads the renewal. term is
// the control plane's lease length, kept for the exit record. Ids the
// runner does not run are ignored. A renewal that cannot be sent (no
// runner attached, or until has passed) is dropped: the leases stand, and
// the next renewal extends them. It does not block on the runner beyond
// one write.
//
// The children of runners of other versions, which know nothing of
// leases, get theirs from the client itself: once one passes, the client
// stops the child's tree as Proc.Terminate does and its Result says
// LeaseExpired. That holds only while this client runs.
func (c *Client) Renew(ids []int64, until time.Time, term time.Duration) {
	if len(ids) == 0 {
		return
	}
	c.mu.Lock()
	var others []*Proc
	for _, id := range ids {
		if p := c.otherProcs[id]; p != nil {
			others = append(others, p)
		}
	}
	now := time.Now()
	if remaining := until.Sub(now); c.conn != nil && remaining > 0 {
		b, err := encodeJSON(&frame{Renew: &renew{IDs: ids, Remaining: remaining, Term: term, SentAt: now.Round(0)}})
		if err == nil {
			err = c.conn.write(b)
		}
		if err != nil {
			c.log.Warn("cannot renew leases; the runner keeps the earlier deadlines", slog.Any("error", err))
		}
	}
	c.mu.Unlock()
	for _, p := range others {
		p.renewOther(until, term)
	}
}

// signal asks the runner to stop p's child. The last signal is kept and
// sent again after a reconnect.
func (c *Client) signal(p *Proc, sig *signal) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	select {
	case <-p.done:
		return nil
	default:
	}
	p.mu.Lock()
	if p.lastSignal == nil || sig.Kill {
		p.lastSignal = sig
	}
	p.mu.Unlock()
	if c.conn == nil {
		return nil
	}
	b, err := encodeJSON(&frame{Signal: sig})
	if err != nil {
		return err
	}
	if err := c.conn.write(b); err != nil {
		return fmt.Errorf("signal runner (sent again after reconnecting): %w", err)
	}
	return nil
}

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

// connect reaches this version's runner, starting one when none answers.
func (c *Client) connect(ctx context.Context) (*cconn, *welcome, error) {
	var lastErr error
	for try := range connectAttempts {
		cc, w, err := c.dial()
		if err == nil {
			return cc, w, nil
		}
		if errors.Is(err, errRefused) {
			return nil, nil, err
		}
		lastErr = err
		err = c.spawn(ctx)
		if err == nil {
			continue
		}
		if !errors.Is(err, errBusy) {
			return nil, nil, err
		}
		// A runner holds the lock but does not answer: it is exiting.
		lastErr = err
		t := time.NewTimer(time.Duration(10<<min(try, 5)) * time.Millisecond)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return nil, nil, ctx.Err()
		}
	}
	return nil, nil, fmt.Errorf("cannot reach a runner: %w", lastErr)
}

// sockPath returns where this version's runner listens.
func (c *Client) sockPath() (string, error) {
	path := filepath.Join(c.dir, sockName)
	if len(path) <= maxSockPath {
		return path, nil
	}
	d, err := os.ReadFile(filepath.Join(c.dir, sockDirName))
	if err != nil {
		return "", fmt.Errorf("find runner socket: %w", err)
	}
	return filepath.Join(string(d), sockName), nil
}

// dial connects to the runner and does the handshake.
func (c *Client) dial() (*cconn, *welcome, error) {
	path, err := c.sockPath()
	if err != nil {
		return nil, nil, err
	}
	nc, err := net.DialTimeout("unix", path, handshakeTimeout)
	if err != nil {
		return nil, nil, err
	}
	_ = nc.SetDeadline(time.Now().Add(handshakeTimeout))
	b, err := encodeJSON(&frame{Hello: &hello{Version: c.version}})
	if err == nil {
		_, err = nc.Write(b)
	}
	if err != nil {
		_ = nc.Close() // the write error is the one to report
		return nil, nil, fmt.Errorf("send hello: %w", err)
	}
	br := bufio.NewReaderSize(nc, 64<<10)
	kind, body, err := readFrame(br)
	var f *frame
	if err == nil {
		if kind != kindJSON {
			err = fmt.Errorf("unexpected frame kind %q", kind)
		} else {
			f, err = decodeJSON(body)
		}
	}
	switch {
	case err != nil:
		_ = nc.Close() // the handshake failed: that is the error to report
		return nil, nil, fmt.Errorf("read welcome: %w", err)
	case f.Error != "":
		_ = nc.Close() // the handshake failed: that is the error to report
		return nil, nil, fmt.Errorf("%w: %s", errRefused, f.Error)
	case f.Welcome == nil || f.Welcome.Version != c.version:
		_ = nc.Close() // the handshake failed: that is the error to report
		return nil, nil, errors.New("read welcome: not a welcome of this protocol version")
	case f.Welcome.Instance == "" || len(f.Welcome.Instance) > MaxInstanceLen:
		_ = nc.Close() // the handshake failed: that is the error to report
		return nil, nil, errors.New("read welcome: the runner names no valid instance")
	}
	_ = nc.SetDeadline(time.Time{})
	return &cconn{nc: nc, br: br, envBase: f.Welcome.EnvDigest == c.baseID}, f.Welcome, nil
}

// spawn starts a runner process and waits until it listens. It returns
// errBusy when another runner holds the lock.
func (c *Client) spawn(ctx context.Context) error {
	if err := os.MkdirAll(c.dir, 0o700); err != nil {
		return fmt.Errorf("create runner dir: %w", err)
	}
	logPath := filepath.Join(c.dir, logName)
	if st, err := os.Stat(logPath); err == nil && st.Size() > maxLogSize {
		_ = os.Rename(logPath, logPath+".1")
	}
	logf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("open runner log: %w", err)
	}
	// The runner writes its log through its own descriptor: ours is never
	// written, so closing it loses nothing.
	defer func() { _ = logf.Close() }()
	r, w, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("start runner: %w", err)
	}
	defer func() { _ = r.Close() }() // read only
	args := append([]string(nil), c.cfg.Command[1:]...)
	args = append(args, "--state-dir", c.cfg.StateDir)
	if c.cfg.IdleExit > 0 {
		args = append(args, "--idle-exit", c.cfg.IdleExit.String())
	}
	if c.version != ProtocolVersion {
		args = append(args, "--protocol-version", strconv.Itoa(c.version))
	}
	cmd := exec.Command(c.cfg.Command[0], args...)
	cmd.Args[0] = displayName(c.cfg.Command[0])
	cmd.Env = c.cfg.Env
	cmd.Dir = "/"
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.ExtraFiles = []*os.File{w}
	err = cmd.Start()
	_ = w.Close() // the launcher has its own copy; closing ours lets ReadAll see its end
	if err != nil {
		return fmt.Errorf("start runner: %w", err)
	}
	// The launcher exits as soon as it has started the runner detached.
	// What it reports on the pipe says how the start went, not its exit
	// status.
	waited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(waited)
	}()
	_ = r.SetReadDeadline(time.Now().Add(readyTimeout))
	msg, readErr := io.ReadAll(io.LimitReader(r, 4096))
	select {
	case <-waited:
	case <-ctx.Done():
		_ = cmd.Process.Kill()
		<-waited
		return ctx.Err()
	case <-time.After(readyTimeout):
		_ = cmd.Process.Kill()
		<-waited
	}
	line := strings.TrimSpace(string(msg))
	switch {
	case strings.HasPrefix(line, "ready"):
		c.log.Info("started a runner", slog.String("report", line), slog.String("log", logPath))
		return nil
	case line == "busy":
		return errBusy
	case strings.HasPrefix(line, "error: "):
		return fmt.Errorf("runner failed to start: %s (see %s)", strings.TrimPrefix(line, "error: "), logPath)
	case readErr != nil:
		return fmt.Errorf("runner did not report within %s: %w (see %s)", readyTimeout, readErr, logPath)
	default:
		return fmt.Errorf("runner exited without reporting (see %s)", logPath)
	}
}

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

// Proc is a child the runner runs for the agent. Its methods are safe for
// concurrent use.
type Proc struct {
	c     *Client
	id    int64
	other *otherRunner // set for a child of a runner of another version

	startedCh chan struct{}
	done      chan struct{}

	mu          sync.Mutex
	sink        Sink
	pid         int
	pidStart    uint64
	boot        string
	start       time.Time
	grace       time.Duration
	startErr    string
	unavailable bool
	// leaseExpired says the runner refused the start because its lease
	// had ended.
	leaseExpired bool
	lastSignal   *signal
	result       Result
}

func newProc(c *Client, id int64) *Proc {
	return &Proc{c: c, id: id, startedCh: make(chan struct{}), done: make(chan struct{})}
}

// ID returns the attempt id.
func (p *Proc) ID() int64 { return p.id }

// Pid returns the child's process id; 0 while a re-adopted child is still
// being started.
func (p *Proc) Pid() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.pid
}

// StartTime returns when the child started; zero while unknown.
func (p *Proc) StartTime() time.Time {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.start
}

// Grace returns the kill grace the child was started with.
func (p *Proc) Grace() time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.grace
}

// SetSink directs the child's further output to s.
func (p *Proc) SetSink(s Sink) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.sink = s
}

// Started is closed once the child's pid is known (Pid), or once it is
// known that it never will be (Done is closed then).
func (p *Proc) Started() <-chan struct{} { return p.startedCh }

// Done is closed once the child's outcome is known: it exited, it could
// not start, or its runner was lost.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Result returns how the child ended; valid once Done is closed.
func (p *Proc) Result() Result {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.result
}

// Terminate asks for the child's tree to be stopped: SIGTERM, then SIGKILL
// after grace (at once when grace is not positive). reason is kept with
// the exit record. It does not block.
func (p *Proc) Terminate(grace time.Duration, reason string) error {
	if grace <= 0 {
		return p.Kill(reason)
	}
	if p.other != nil {
		return p.signalOther(false, grace)
	}
	return p.c.signal(p, &signal{ID: p.id, Grace: grace, Reason: reason})
}

// Kill asks for the child's tree to be killed at once. reason is kept with
// the exit record. It does not block.
func (p *Proc) Kill(reason string) error {
	if p.other != nil {
		return p.signalOther(true, 0)
	}
	return p.c.signal(p, &signal{ID: p.id, Kill: true, Reason: reason})
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

func (p *Proc) output(o output) {
	p.mu.Lock()
	s := p.sink
	p.mu.Unlock()
	if s != nil {
		s.Output(o.stream, o.offset, o.data)
	}
}

func (p *Proc) setStarted(pid int, pidStart uint64, boot string, start time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.pid != 0 || pid == 0 {
		return
	}
	p.pid, p.pidStart, p.boot, p.start = pid, pidStart, boot, start
	close(p.startedCh)
}

// failStart ends a child that did not start; unavailable says the request
// never reached a runner.
func (p *Proc) failStart(msg string, unavailable bool) {
	p.mu.Lock()
	select {
	case <-p.startedCh:
	default:
		p.startErr, p.unavailable = msg, unavailable
		close(p.startedCh)
	}
	p.mu.Unlock()
	p.finish(Result{Record: Record{ID: p.id, ExitCode: -1}, StartErr: cmp.Or(msg, ErrUnavailable.Error())})
}

// lose ends a child whose outcome is unknown.
func (p *Proc) lose(why string) {
	p.mu.Lock()
	select {
	case <-p.startedCh:
	default:
		close(p.startedCh)
	}
	p.mu.Unlock()
	p.finish(Result{Record: Record{ID: p.id, ExitCode: -1}, Lost: why})
}

func (p *Proc) finish(res Result) {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.done:
		return
	default:
	}
	p.result = res
	if p.other != nil {
		p.other.mu.Lock()
		for _, t := range []*time.Timer{p.other.killTimer, p.other.leaseTimer, p.other.fenceKill} {
			if t != nil {
				t.Stop()
			}
		}
		p.other.mu.Unlock()
	}
	close(p.done)
}
