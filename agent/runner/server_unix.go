//go:build unix

package runner

import (
	"cmp"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

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
