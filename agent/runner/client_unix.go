//go:build unix

package runner

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/batonhq/baton/agent/internal/redact"
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
	// Redact holds, by attempt id, the secrets whose values the agent must
	// redact from the outputs of the children in Running and Exited (the
	// runner redacts their streams itself).
	Redact map[int64][]redact.Secret
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
