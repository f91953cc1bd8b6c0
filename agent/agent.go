// Package agent is baton-agent: it holds one bidirectional stream to the
// control plane, runs the child processes the control plane asks for and
// reports each child's real outcome back.
//
// An [Agent] dials out (firewall friendly) and keeps reconnecting with a
// jittered, capped exponential backoff. Every attempt id is written to a
// journal in the state directory before its child starts, so an attempt
// starts at most once, also across agent restarts; every outcome stays in
// the journal until the control plane acknowledges it and is listed again
// in the Hello of each new session until then.
//
// On Unix the children do not run in the agent process but in a runner
// (package [github.com/batonhq/baton/agent/runner]): one long-lived process per state directory that the
// agent starts, or attaches to, when Run begins. Killing or upgrading the
// agent process leaves the children running; the next agent process with
// the same state directory re-adopts them (they are listed as running in
// its Hello) and reports their real outcomes, also of those that ended
// meanwhile. If the runner itself is killed, its children's outcomes are
// unknown: the agent reports them FAILED and kills their process groups
// when it can identify them safely. On Windows the agent runs children
// itself, each in a job object, and they end with it.
//
// When the control plane leases attempts (Welcome.lease), an attempt whose
// lease the control plane stops renewing, or cannot renew because the
// agent is cut off, has its child's process tree stopped once the lease
// has passed (self-fencing; see lease.go), also while the agent process
// is stopped or gone, and is reported LEASE_EXPIRED.
//
// Shutting down is graceful first: when Run's context is done the agent
// takes no new work, lets running children finish, reports their outcomes
// and returns. [Agent.Abort] forces it: children's process trees are
// killed.
package agent

import (
	"cmp"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/keepalive"

	"github.com/batonhq/baton/agent/allow"
	"github.com/batonhq/baton/client"
	batonv1 "github.com/batonhq/baton/gen/baton/v1"
)

const (
	// DefaultKillGrace is the default for Config.KillGrace.
	DefaultKillGrace = 10 * time.Second
	// DefaultReportTimeout is the default for Config.ReportTimeout.
	DefaultReportTimeout = 10 * time.Second
)

// defaultHeartbeat is used when a Welcome names no heartbeat interval.
const defaultHeartbeat = 10 * time.Second

// maxSpareOutputs bounds the empty output files kept for reuse.
const maxSpareOutputs = 256

// errStateDirInUse is returned by New when another agent holds the state
// directory.
var errStateDirInUse = errors.New("state dir is in use by another agent process")

// Config configures an Agent. A zero field takes its default.
type Config struct {
	// Server says how to reach the control plane. Defaults to
	// client.DefaultAddr without TLS.
	Server client.DialConfig
	// Name identifies the agent; it is unique among live agents. Defaults
	// to the host name.
	Name string
	// Labels are matched by task selectors (runs_on.labels). Keys must not
	// be empty.
	Labels map[string]string
	// Slots is how many children the agent runs at once. Defaults to the
	// number of CPUs.
	Slots int
	// StateDir holds the journal and per-attempt files. Required. Only one
	// agent process may use a state dir at a time.
	StateDir string
	// Version is the agent's build version, reported in Hello.
	Version string
	// KillGrace is how long a child's process tree has between SIGTERM and
	// SIGKILL when a task is cancelled or times out and StartTask or
	// CancelTask names no grace. Defaults to DefaultKillGrace.
	KillGrace time.Duration
	// Fsync makes the journal flush its records to stable storage before
	// it acts on them: an attempt's start record before the child starts,
	// its outcome before it is reported (records that arrive together share
	// one flush), and the runner flushes each exit record. By default
	// records are appended but not flushed: they survive an agent crash but
	// maybe not a power loss. With Fsync they survive both, at the cost of
	// a disk flush or two per attempt.
	Fsync bool
	// Env is the base environment of every child as key=value pairs; each
	// StartTask's env and the BATON_* variables are added to it. Nil means
	// the agent's own environment. Its BATON_SECRET_<NAME> variables are
	// secrets (see SecretsDir): they are taken out and never reach a
	// child.
	Env []string
	// Policy is what tasks may run on this host: programs, environment
	// names and working directories (package allow). Required: a
	// StartTask outside it starts nothing and is reported NOT_ALLOWED.
	// allow.Any() allows everything.
	Policy *allow.Policy
	// SecretsDir holds the secrets tasks name with secret:NAME env
	// values, one file per secret (NAME, its value, a trailing newline
	// dropped; on Unix readable by the agent's user only). A secret
	// without a file there is looked up in Env's BATON_SECRET_<NAME>.
	// Empty: only Env is looked in.
	SecretsDir string
	// RunnerCommand starts the runner process that owns the children on
	// Unix: a program and the arguments that make it run runner.Main (the
	// runner's own arguments are appended). Defaults to this program with
	// the argument "runner", as baton-agent understands it (on Linux
	// through /proc/self/exe, so that the runner is of this agent's
	// version even after an upgrade replaced the binary); a program
	// embedding the agent must then call runner.Main for that argument.
	// Unused on Windows.
	RunnerCommand []string
	// ReportTimeout is how long Run, after the last child finished during
	// a shutdown, waits for the control plane to acknowledge outstanding
	// outcomes. Unacknowledged outcomes stay in the journal and are
	// reported after the next start. Defaults to DefaultReportTimeout.
	ReportTimeout time.Duration
	// Logger receives the agent's logs. Defaults to discarding them.
	Logger *slog.Logger
}

// Agent runs children for the control plane. Create it with New and call
// Run once.
type Agent struct {
	cfg      Config
	log      *slog.Logger
	hostname string
	bootID   string
	env      []string
	// secretEnv holds the BATON_SECRET_ variables of Config.Env by secret
	// name; env does not hold them.
	secretEnv map[string]string
	outDir    string
	outputs   *outputFiles
	journal   *journal
	release   func() // unlocks the state dir
	cwd       string // the children's working directory when the task names none
	runner    childRunner
	// retryBase is the first reconnect backoff; tests shorten it.
	retryBase time.Duration
	// Tests set these: the runner's idle exit and protocol version, how
	// often children of a runner of another version are polled, and
	// running children in the agent process as on Windows.
	runnerIdle    time.Duration
	runnerVersion int
	runnerPoll    time.Duration
	localChildren bool

	mu   sync.Mutex
	sess *session // the current session, nil while disconnected
	// handedOver holds, from the first attachment to the runner, the
	// runners an attempt journaled as started on them would be listed by
	// if it had started (Attachment.Instance and CleanExit); set once
	// (attachedOnce) before reconcile reads it.
	handedOver   []string
	attachedOnce bool
	attempts     map[int64]*attempt // accepted attempts whose outcome is not yet journaled
	// reporting counts, by attempt id, outcomes being journaled that are
	// not in attempts; their goroutines send them once journaled.
	reporting map[int64]int
	draining  bool           // no new work; set once, never cleared
	stopping  bool           // Run is waiting for attempt goroutines: adopt nothing more
	drainCh   chan struct{}  // closed when draining starts
	changed   chan struct{}  // signalled when an attempt ends
	acked     chan struct{}  // signalled when outcomes are acknowledged
	wg        sync.WaitGroup // attempt goroutines

	started   atomic.Bool
	aborted   chan struct{}
	abortOnce sync.Once
}

// New applies defaults to cfg, validates it, takes the state directory
// (only one agent process may use it) and opens the journal in it. The
// returned error names the offending Config field.
func New(cfg Config) (*Agent, error) {
	cfg.Logger = cmp.Or(cfg.Logger, slog.New(slog.DiscardHandler))
	hostname, err := os.Hostname()
	if err != nil {
		hostname = ""
	}
	if cfg.Name == "" {
		cfg.Name = hostname
	}
	if cfg.Slots == 0 {
		cfg.Slots = runtime.NumCPU()
	}
	cfg.KillGrace = cmp.Or(cfg.KillGrace, DefaultKillGrace)
	cfg.ReportTimeout = cmp.Or(cfg.ReportTimeout, DefaultReportTimeout)
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if _, err := cfg.Server.TLSConfig(); err != nil {
		return nil, fmt.Errorf("config: Server: %w", err)
	}
	stateDir, err := filepath.Abs(cfg.StateDir)
	if err != nil {
		return nil, fmt.Errorf("config: StateDir: %w", err)
	}
	cfg.StateDir = stateDir
	if len(cfg.RunnerCommand) == 0 {
		exe, err := runnerExecutable()
		if err != nil {
			return nil, fmt.Errorf("config: RunnerCommand: not given and the executable is unknown: %w", err)
		}
		cfg.RunnerCommand = []string{exe, "runner"}
	}
	cfg.RunnerCommand = slices.Clone(cfg.RunnerCommand)
	cwd, err := os.Getwd()
	if err != nil {
		return nil, fmt.Errorf("working directory: %w", err)
	}
	cfg.Labels = maps.Clone(cfg.Labels)
	env := cfg.Env
	if env == nil {
		env = os.Environ()
	}
	env, secretEnv := splitSecretEnv(env)
	if cfg.SecretsDir != "" {
		if cfg.SecretsDir, err = filepath.Abs(cfg.SecretsDir); err != nil {
			return nil, fmt.Errorf("config: SecretsDir: %w", err)
		}
	}

	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("create state dir: %w", err)
	}
	release, err := lockStateDir(cfg.StateDir)
	if err != nil {
		return nil, fmt.Errorf("state dir %s: %w", cfg.StateDir, err)
	}
	log := cfg.Logger.With(slog.String("agent", cfg.Name))
	j, err := openJournal(filepath.Join(cfg.StateDir, "journal"), cfg.Fsync, log, time.Now)
	if err != nil {
		release()
		return nil, err
	}
	// Output files of earlier processes are read for re-adopted children
	// and cleared by Run otherwise.
	outDir := filepath.Join(cfg.StateDir, "output")
	if err := os.MkdirAll(outDir, 0o700); err != nil {
		release()
		return nil, fmt.Errorf("create output dir: %w", err)
	}
	return &Agent{
		cfg:       cfg,
		log:       log,
		hostname:  strings.ToValidUTF8(hostname, "\uFFFD"),
		bootID:    rand.Text(),
		env:       env,
		secretEnv: secretEnv,
		outDir:    outDir,
		outputs:   newOutputFiles(outDir, min(cfg.Slots, maxSpareOutputs)),
		journal:   j,
		release:   release,
		cwd:       cwd,
		retryBase: 100 * time.Millisecond,
		attempts:  make(map[int64]*attempt),
		reporting: make(map[int64]int),
		drainCh:   make(chan struct{}),
		changed:   make(chan struct{}, 1),
		acked:     make(chan struct{}, 1),
		aborted:   make(chan struct{}),
	}, nil
}

// Limits on what a Hello may carry; the control plane refuses more.
const (
	maxNameLen  = 128
	maxLabels   = 64
	maxLabelLen = 256
)

func (c *Config) validate() error {
	if c.StateDir == "" {
		return errors.New("config: StateDir is required")
	}
	if c.Name == "" {
		return errors.New("config: Name is empty and the host name is unknown")
	}
	if !utf8.ValidString(c.Name) {
		return errors.New("config: Name is not valid UTF-8")
	}
	if len(c.Name) > maxNameLen {
		return fmt.Errorf("config: Name is longer than %d bytes", maxNameLen)
	}
	if len(c.Labels) > maxLabels {
		return fmt.Errorf("config: Labels has %d entries, at most %d are allowed", len(c.Labels), maxLabels)
	}
	if !utf8.ValidString(c.Version) {
		return errors.New("config: Version is not valid UTF-8")
	}
	for k, v := range c.Labels {
		if k == "" {
			return errors.New("config: Labels has an empty key")
		}
		if !utf8.ValidString(k) || !utf8.ValidString(v) {
			return fmt.Errorf("config: Labels[%q] is not valid UTF-8", k)
		}
		if len(k) > maxLabelLen || len(v) > maxLabelLen {
			return fmt.Errorf("config: Labels[%.20q...]: keys and values are at most %d bytes", k, maxLabelLen)
		}
	}
	if c.Slots < 1 || c.Slots > math.MaxInt32 {
		return fmt.Errorf("config: Slots must be between 1 and %d, got %d", math.MaxInt32, c.Slots)
	}
	if c.KillGrace < 0 {
		return fmt.Errorf("config: KillGrace must not be negative, got %s", c.KillGrace)
	}
	if c.ReportTimeout < 0 {
		return fmt.Errorf("config: ReportTimeout must not be negative, got %s", c.ReportTimeout)
	}
	if c.Policy == nil {
		return errors.New("config: Policy is required: name what tasks may run (allow.New), or allow.Any() to run anything")
	}
	if len(c.RunnerCommand) > 0 && c.RunnerCommand[0] == "" {
		return errors.New("config: RunnerCommand names no program")
	}
	return nil
}

// Run attaches to the runner (starting it when none runs) and adopts the
// children it still runs and the exits it recorded, then connects to the
// control plane and serves until ctx is done. Then it
// drains: it takes no new work (a StartTask is answered REJECTED), cancels
// nothing, waits for running children to finish and their outcomes to be
// acknowledged (at most Config.ReportTimeout after the last child
// finished), and returns nil. Run stops early when the control plane
// refuses the agent for good (Unauthenticated, PermissionDenied,
// Unimplemented): it still lets running children finish, keeps their
// outcomes in the journal and returns that error. After Abort, Run kills
// the children's process trees and returns without waiting for
// acknowledgements. Run never gives up on an unreachable control plane; it
// keeps reconnecting.
//
// Run may be called once; when it returns the state directory is
// released. It fails at once when no runner can be started.
func (a *Agent) Run(ctx context.Context) error {
	if !a.started.CompareAndSwap(false, true) {
		return errors.New("agent: Run called more than once")
	}
	defer a.release()
	defer func() {
		if err := a.journal.close(); err != nil {
			a.log.WarnContext(ctx, "journal: cannot close", slog.Any("error", err))
		}
	}()
	// gRPC's own reconnect backoff (1 s growing to 2 min by default) would
	// hold a stream back long after the control plane is up again; keep
	// it as short as the session loop's.
	conn, err := client.Dial(a.cfg.Server,
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 2 * time.Second},
			MinConnectTimeout: 5 * time.Second,
		}),
		// Notice a dead control plane (or a cut network) without waiting
		// for TCP: ping after 30 s of silence.
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
		// Fixed flow-control windows: with gRPC's dynamic windows every
		// message received on a quiet stream answers with a BDP ping and a
		// window update, two extra round trips per StartTask. Control
		// messages are small, so a fixed window costs no throughput.
		grpc.WithStaticStreamWindowSize(client.StreamWindow),
		grpc.WithStaticConnWindowSize(client.ConnWindow))
	if err != nil {
		return fmt.Errorf("dial control plane: %w", err)
	}
	defer conn.Close()
	if err := a.openRunner(ctx); err != nil {
		return fmt.Errorf("attach to the runner: %w", err)
	}
	// Closed after every attempt goroutine is done (a.wg.Wait below).
	defer a.runner.close()
	a.reconcile(ctx)

	// Sessions outlive ctx: outcomes of children that finish during the
	// drain must still be reported.
	sessCtx, stopSessions := context.WithCancel(context.WithoutCancel(ctx))
	defer stopSessions()
	loopErr := make(chan error, 1)
	go func() { loopErr <- a.sessionLoop(sessCtx, batonv1.NewAgentServiceClient(conn)) }()

	a.log.InfoContext(ctx, "agent started",
		slog.String("server", cmp.Or(a.cfg.Server.Addr, client.DefaultAddr)),
		slog.Int("slots", a.cfg.Slots), slog.String("version", a.cfg.Version),
		slog.String("state_dir", a.cfg.StateDir),
		slog.Bool("allow_any_command", a.cfg.Policy.AllowsAny()), slog.Any("allow", a.cfg.Policy.Programs()))

	var fatal error
	loopDone := false
	select {
	case <-ctx.Done():
		a.drain(sessCtx, "agent is shutting down")
	case fatal = <-loopErr:
		loopDone = true
		a.drain(sessCtx, "control plane refused the agent")
	case <-a.aborted:
		a.drain(sessCtx, "agent is stopping by force")
	}

	if !a.waitIdle(sessCtx) {
		a.log.WarnContext(sessCtx, "killing running children")
		a.killAll()
	}
	if !loopDone && !a.isAborted() {
		fatal, loopDone = a.waitAcked(sessCtx, loopErr)
	}
	// Ending the sessions also releases attempt goroutines blocked on a
	// stalled stream; their outcomes are journaled already or will be.
	stopSessions()
	if !loopDone {
		if err := <-loopErr; err != nil && fatal == nil {
			fatal = err
		}
	}
	a.mu.Lock()
	a.stopping = true
	a.mu.Unlock()
	a.wg.Wait()
	a.log.InfoContext(sessCtx, "agent stopped")
	return fatal
}

// Abort forces a shutdown: Run kills every running child's process tree
// (their outcome is FAILED and stays journaled), then returns without
// waiting for acknowledgements. Abort does not block, may be called from
// any goroutine and more than once, and takes effect also before Run's
// context is done.
func (a *Agent) Abort() {
	a.abortOnce.Do(func() { close(a.aborted) })
}

func (a *Agent) isAborted() bool {
	select {
	case <-a.aborted:
		return true
	default:
		return false
	}
}

// drain makes the agent take no new work. It is idempotent.
func (a *Agent) drain(ctx context.Context, reason string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.draining {
		return
	}
	a.draining = true
	close(a.drainCh)
	a.log.InfoContext(ctx, "draining: no new work", slog.String("reason", reason),
		slog.Int("running", len(a.attempts)))
}

// waitIdle waits until no attempt is running. It returns false when Abort
// was called first.
func (a *Agent) waitIdle(ctx context.Context) bool {
	for {
		a.mu.Lock()
		n := len(a.attempts)
		a.mu.Unlock()
		if n == 0 {
			return true
		}
		a.log.InfoContext(ctx, "waiting for running children to finish", slog.Int("running", n))
		select {
		case <-a.changed:
		case <-a.aborted:
			return false
		}
	}
}

// waitAcked waits until the journal holds no unacknowledged outcome, at
// most ReportTimeout. It returns the session loop's error when the loop
// ended meanwhile.
func (a *Agent) waitAcked(ctx context.Context, loopErr <-chan error) (fatal error, loopDone bool) {
	timer := time.NewTimer(a.cfg.ReportTimeout)
	defer timer.Stop()
	for {
		n := a.journal.unackedCount()
		if n == 0 {
			return nil, false
		}
		select {
		case <-a.acked:
		case <-timer.C:
			a.log.WarnContext(ctx, "outcomes not acknowledged before shutdown; they are reported after the next start",
				slog.Int("unacked", n))
			return nil, false
		case <-a.aborted:
			return nil, false
		case err := <-loopErr:
			return err, true
		}
	}
}

// reconcile finishes what attaching to the runner began: attempts the
// journal holds as started that the runner did not list are settled
// (journal.settleStarted: never started, so they may start when the
// control plane sends them again, or of unknown outcome, so they never
// start again), and output files of attempts that are not running any
// more are removed.
func (a *Agent) reconcile(ctx context.Context) {
	a.mu.Lock()
	a.journal.settleStarted(func(id int64) bool {
		_, running := a.attempts[id]
		return running
	}, a.handedOver...)
	running := make(map[string]bool, len(a.attempts))
	for id := range a.attempts {
		running[strconv.FormatInt(id, 10)] = true
	}
	a.mu.Unlock()
	entries, err := os.ReadDir(a.outDir)
	if err != nil {
		a.log.WarnContext(ctx, "cannot list output files", slog.Any("error", err))
		return
	}
	for _, e := range entries {
		if running[e.Name()] {
			continue
		}
		if err := os.RemoveAll(filepath.Join(a.outDir, e.Name())); err != nil {
			a.log.WarnContext(ctx, "cannot remove stale output file", slog.String("name", e.Name()), slog.Any("error", err))
		}
	}
}

// notify signals ch without blocking; ch has a buffer of one.
func notify(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}
