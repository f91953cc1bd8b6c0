package main

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	mrand "math/rand/v2"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/batonhq/baton/client"
	"github.com/batonhq/baton/client/pki"
	batonv1 "github.com/batonhq/baton/gen/baton/v1"
)

const (
	// DefaultDialParallel is the default for Config.DialParallel.
	DefaultDialParallel = 64
	// version is what simulated agents report in Hello.
	version = "simagent"
	// defaultHeartbeat is used when a Welcome names no interval, as the
	// real agent does.
	defaultHeartbeat = 10 * time.Second
	// minHeartbeat bounds a Welcome's interval from below.
	minHeartbeat = 10 * time.Millisecond
	// retryBase is the first reconnect backoff; it doubles up to
	// retryBase << maxBackoffShift.
	retryBase       = 100 * time.Millisecond
	maxBackoffShift = 6
	// outQueue is how many message groups wait for an agent's sender.
	outQueue = 256
)

// fatalCodes end an agent: reconnecting cannot help.
var fatalCodes = map[codes.Code]bool{
	codes.Unauthenticated:  true,
	codes.PermissionDenied: true,
	codes.Unimplemented:    true,
	codes.InvalidArgument:  true,
}

// Config configures a Fleet.
type Config struct {
	// Server says how to reach the control plane. Defaults to
	// client.DefaultAddr without TLS.
	Server client.DialConfig
	// Count is how many agents to run. Required, at least 1.
	Count int
	// Slots is how many slots each agent advertises. Nothing ever runs,
	// so an agent is never full. Defaults to 1.
	Slots int
	// Prefix names the agents Prefix-1 ... Prefix-Count. Defaults to "sim".
	Prefix string
	// Labels are advertised by every agent.
	Labels map[string]string
	// CertDir, when set, holds a client certificate per agent: agent NAME
	// presents CertDir/agent-NAME.crt with its key agent-NAME.key (the
	// names of [pki.AgentFiles]), as baton-agent --tls-cert and --tls-key
	// would, so a control plane started with --agent-ca admits it. It
	// turns TLS on. Empty means no client certificates.
	CertDir string
	// DialParallel is how many agents connect at once while the fleet
	// starts. Defaults to DefaultDialParallel.
	DialParallel int
	// OnWelcomed, when set, is called once, when every agent has received
	// its first Welcome, with the number of agents.
	OnWelcomed func(n int)
	// DialOptions are added to every agent's connection (tests dial an
	// in-memory listener with them).
	DialOptions []grpc.DialOption
	// Logger is required.
	Logger *slog.Logger
}

// Totals counts what a fleet did. Its JSON form is what simagent prints
// when it stops.
type Totals struct {
	Agents     int   `json:"agents"`
	Welcomed   int64 `json:"welcomed"`
	Started    int64 `json:"started"`
	Repeated   int64 `json:"repeated"`
	Rejected   int64 `json:"rejected"`
	Acked      int64 `json:"acked"`
	Unacked    int64 `json:"unacked"`
	Heartbeats int64 `json:"heartbeats"`
	Reconnects int64 `json:"reconnects"`
}

// Fleet is a set of simulated agents. Create it with NewFleet and call Run
// once.
type Fleet struct {
	cfg    Config
	log    *slog.Logger
	agents []*simAgent

	welcomed   atomic.Int64
	started    atomic.Int64
	repeated   atomic.Int64
	rejected   atomic.Int64
	acked      atomic.Int64
	heartbeats atomic.Int64
	reconnects atomic.Int64
}

// NewFleet validates cfg, applies its defaults and returns the fleet.
func NewFleet(cfg Config) (*Fleet, error) {
	if cfg.Count < 1 {
		return nil, fmt.Errorf("count: must be at least 1, got %d", cfg.Count)
	}
	if cfg.Slots == 0 {
		cfg.Slots = 1
	}
	if cfg.Slots < 0 {
		return nil, fmt.Errorf("slots: must be positive, got %d", cfg.Slots)
	}
	if cfg.Prefix == "" {
		cfg.Prefix = "sim"
	}
	if cfg.DialParallel <= 0 {
		cfg.DialParallel = DefaultDialParallel
	}
	if cfg.Logger == nil {
		return nil, errors.New("logger is required")
	}
	if _, err := cfg.Server.TLSConfig(); err != nil {
		return nil, fmt.Errorf("server: %w", err)
	}
	if cfg.CertDir != "" && (cfg.Server.CertFile != "" || cfg.Server.KeyFile != "") {
		return nil, errors.New("cert dir: the agents' certificates come from the directory; Server must name none")
	}
	f := &Fleet{cfg: cfg, log: cfg.Logger}
	for i := 1; i <= cfg.Count; i++ {
		a := &simAgent{
			fleet:    f,
			name:     fmt.Sprintf("%s-%d", cfg.Prefix, i),
			bootID:   rand.Text(),
			server:   cfg.Server,
			unacked:  map[int64]*batonv1.TaskFinished{},
			answered: map[int64]struct{}{},
		}
		if cfg.CertDir != "" {
			crt, key := pki.AgentFiles(a.name)
			a.server.CertFile, a.server.KeyFile = filepath.Join(cfg.CertDir, crt), filepath.Join(cfg.CertDir, key)
			// Fail now on a missing or bad pair rather than at the first
			// handshake, after part of the fleet has connected.
			if _, err := a.server.TLSConfig(); err != nil {
				return nil, fmt.Errorf("agent %s: %w", a.name, err)
			}
		}
		f.agents = append(f.agents, a)
	}
	return f, nil
}

// Totals returns what the fleet has done so far. It is safe to call at any
// time.
func (f *Fleet) Totals() Totals {
	t := Totals{
		Agents:     len(f.agents),
		Welcomed:   f.welcomed.Load(),
		Started:    f.started.Load(),
		Repeated:   f.repeated.Load(),
		Rejected:   f.rejected.Load(),
		Acked:      f.acked.Load(),
		Heartbeats: f.heartbeats.Load(),
		Reconnects: f.reconnects.Load(),
	}
	for _, a := range f.agents {
		a.mu.Lock()
		t.Unacked += int64(len(a.unacked))
		a.mu.Unlock()
	}
	return t
}

// Run connects every agent and serves the control plane until ctx is
// done; it then closes every stream and returns nil. It returns an error
// when an agent is refused for good (an Unauthenticated, PermissionDenied,
// Unimplemented or InvalidArgument status), after stopping the others.
func (f *Fleet) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
	)
	// The first session of each agent takes a dial token, so a large
	// fleet does not open every connection in the same instant.
	tokens := make(chan struct{}, f.cfg.DialParallel)
	for _, a := range f.agents {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := a.run(ctx, tokens); err != nil {
				mu.Lock()
				errs = append(errs, fmt.Errorf("agent %s: %w", a.name, err))
				mu.Unlock()
				cancel(err)
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// welcomedOnce counts an agent's first Welcome and tells OnWelcomed when
// the whole fleet is in.
func (f *Fleet) welcomedOnce() {
	if n := f.welcomed.Add(1); n == int64(len(f.agents)) && f.cfg.OnWelcomed != nil {
		f.cfg.OnWelcomed(int(n))
	}
}

// simAgent is one simulated agent. Its maps are guarded by mu: the
// receiving goroutine fills them, Acks empty unacked, and a new session's
// Hello lists what is unacknowledged.
type simAgent struct {
	fleet  *Fleet
	name   string
	bootID string
	// server is Config.Server with the agent's own client certificate.
	server client.DialConfig

	mu       sync.Mutex
	unacked  map[int64]*batonv1.TaskFinished
	answered map[int64]struct{} // every attempt id answered, acknowledged or not
	draining bool
	welcomed bool
}

// run holds sessions until ctx is done or the control plane refuses the
// agent for good. Its first session holds a token from tokens until the
// Welcome arrives or the session fails.
func (a *simAgent) run(ctx context.Context, tokens chan struct{}) error {
	select {
	case tokens <- struct{}{}:
	case <-ctx.Done():
		return nil
	}
	var once sync.Once
	release := func() { once.Do(func() { <-tokens }) }
	defer release()
	// The same fixed flow-control windows as baton-agent.
	opts := append([]grpc.DialOption{
		grpc.WithStaticStreamWindowSize(client.StreamWindow),
		grpc.WithStaticConnWindowSize(client.ConnWindow),
	}, a.fleet.cfg.DialOptions...)
	conn, err := client.Dial(a.server, opts...)
	if err != nil {
		return err
	}
	defer conn.Close()
	cl := batonv1.NewAgentServiceClient(conn)
	attempt := 0
	for {
		healthy, err := a.session(ctx, cl, release)
		release()
		if ctx.Err() != nil {
			return nil
		}
		if err != nil && fatalCodes[status.Code(err)] {
			return fmt.Errorf("control plane refused the agent: %w", err)
		}
		a.fleet.reconnects.Add(1)
		a.fleet.log.WarnContext(ctx, "session ended; reconnecting", slog.String("agent", a.name), slog.Any("error", err))
		attempt++
		if healthy {
			attempt = 0
		}
		t := time.NewTimer(mrand.N(retryBase << min(attempt, maxBackoffShift)))
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return nil
		}
	}
}

// session runs one Connect stream until it breaks or ctx is done. welcomed
// is called when the Welcome arrives. healthy reports whether it did.
func (a *simAgent) session(ctx context.Context, cl batonv1.AgentServiceClient, welcomed func()) (healthy bool, err error) {
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := cl.Connect(sctx)
	if err != nil {
		return false, fmt.Errorf("open stream: %w", err)
	}
	if err := stream.Send(a.hello()); err != nil {
		return false, fmt.Errorf("send hello: %w", err)
	}
	msg, err := stream.Recv()
	if err != nil {
		return false, err
	}
	w := msg.GetWelcome()
	if w == nil {
		return false, fmt.Errorf("first message is %T, want a Welcome", msg.GetMsg())
	}
	a.mu.Lock()
	first := !a.welcomed
	a.welcomed = true
	a.mu.Unlock()
	if first {
		a.fleet.welcomedOnce()
	}
	welcomed()

	out := make(chan []*batonv1.ConnectRequest, outQueue)
	intervals := make(chan time.Duration, 1)
	intervals <- heartbeatInterval(w)
	sendErr := make(chan error, 1)
	go func() {
		err := a.sendLoop(sctx, stream, out, intervals)
		if err != nil {
			cancel()
		}
		sendErr <- err
	}()
	err = a.recvLoop(sctx, stream, out, intervals)
	cancel()
	if serr := <-sendErr; serr != nil && !errors.Is(serr, io.EOF) && (err == nil || status.Code(err) == codes.Canceled) {
		err = serr
	}
	return true, err
}

// hello returns the Hello of a new session, listing every outcome the
// control plane has not acknowledged yet.
func (a *simAgent) hello() *batonv1.ConnectRequest {
	a.mu.Lock()
	defer a.mu.Unlock()
	h := &batonv1.Hello{
		Name:     a.name,
		Labels:   a.fleet.cfg.Labels,
		Slots:    int32(a.fleet.cfg.Slots),
		Version:  version,
		Hostname: a.name,
		Os:       runtime.GOOS,
		BootId:   a.bootID,
	}
	for _, tf := range a.unacked {
		h.Unacked = append(h.Unacked, tf)
	}
	return &batonv1.ConnectRequest{Msg: &batonv1.ConnectRequest_Hello{Hello: h}}
}

func heartbeatInterval(w *batonv1.Welcome) time.Duration {
	if d := w.GetHeartbeatInterval(); d != nil && d.IsValid() && d.AsDuration() > 0 {
		return max(d.AsDuration(), minHeartbeat)
	}
	return defaultHeartbeat
}

// sendLoop is the session's only sender: it sends queued message groups
// back to back and a Heartbeat every interval, the first one at a random
// point within the first interval. It returns nil when ctx is done.
func (a *simAgent) sendLoop(ctx context.Context, stream batonv1.AgentService_ConnectClient,
	out <-chan []*batonv1.ConnectRequest, intervals <-chan time.Duration) error {
	interval := <-intervals
	t := time.NewTimer(mrand.N(interval) + 1)
	defer t.Stop()
	for {
		var msgs []*batonv1.ConnectRequest
		select {
		case <-ctx.Done():
			return nil
		case interval = <-intervals:
			continue
		case <-t.C:
			t.Reset(interval)
			a.mu.Lock()
			draining := a.draining
			a.mu.Unlock()
			// Nothing is ever running: every attempt is answered at once.
			msgs = []*batonv1.ConnectRequest{{Msg: &batonv1.ConnectRequest_Heartbeat{
				Heartbeat: &batonv1.Heartbeat{Draining: draining}}}}
			a.fleet.heartbeats.Add(1)
		case msgs = <-out:
		}
		for _, m := range msgs {
			if err := stream.Send(m); err != nil {
				return fmt.Errorf("send: %w", err)
			}
		}
	}
}

// recvLoop handles control plane messages until the stream breaks or ctx
// is done.
func (a *simAgent) recvLoop(ctx context.Context, stream batonv1.AgentService_ConnectClient,
	out chan<- []*batonv1.ConnectRequest, intervals chan time.Duration) error {
	for {
		msg, err := stream.Recv()
		if err != nil {
			return err
		}
		var reply []*batonv1.ConnectRequest
		switch m := msg.GetMsg().(type) {
		case *batonv1.ConnectResponse_StartTask:
			reply = a.start(m.StartTask)
		case *batonv1.ConnectResponse_Ack:
			a.ack(m.Ack.GetAttemptIds())
		case *batonv1.ConnectResponse_CancelTask:
			// Every attempt has already finished: nothing to stop.
		case *batonv1.ConnectResponse_Drain:
			a.mu.Lock()
			a.draining = true
			a.mu.Unlock()
		case *batonv1.ConnectResponse_Welcome:
			select {
			case <-intervals:
			default:
			}
			intervals <- heartbeatInterval(m.Welcome)
		}
		if reply == nil {
			continue
		}
		select {
		case out <- reply:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// start answers a StartTask: at once with TaskStarted and a successful
// TaskFinished, or, for an attempt already answered, with the outcome
// still unacknowledged (nothing when it was acknowledged). A draining
// agent rejects new attempts, as the real agent does.
func (a *simAgent) start(st *batonv1.StartTask) []*batonv1.ConnectRequest {
	id := st.GetAttemptId()
	if id <= 0 {
		return nil
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if _, ok := a.answered[id]; ok {
		a.fleet.repeated.Add(1)
		if tf := a.unacked[id]; tf != nil {
			return []*batonv1.ConnectRequest{finishedMsg(tf)}
		}
		return nil
	}
	a.answered[id] = struct{}{}
	now := timestamppb.Now()
	if a.draining {
		a.fleet.rejected.Add(1)
		tf := &batonv1.TaskFinished{AttemptId: id, Outcome: batonv1.AttemptOutcome_ATTEMPT_OUTCOME_REJECTED,
			ExitCode: -1, Error: "agent is draining", StartTime: now, EndTime: now}
		a.unacked[id] = tf
		return []*batonv1.ConnectRequest{finishedMsg(tf)}
	}
	a.fleet.started.Add(1)
	tf := &batonv1.TaskFinished{AttemptId: id, Outcome: batonv1.AttemptOutcome_ATTEMPT_OUTCOME_SUCCEEDED,
		StartTime: now, EndTime: now}
	a.unacked[id] = tf
	return []*batonv1.ConnectRequest{
		{Msg: &batonv1.ConnectRequest_TaskStarted{TaskStarted: &batonv1.TaskStarted{AttemptId: id, StartTime: now}}},
		finishedMsg(tf),
	}
}

// ack forgets acknowledged outcomes.
func (a *simAgent) ack(ids []int64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, id := range ids {
		if _, ok := a.unacked[id]; ok {
			delete(a.unacked, id)
			a.fleet.acked.Add(1)
		}
	}
}

func finishedMsg(tf *batonv1.TaskFinished) *batonv1.ConnectRequest {
	return &batonv1.ConnectRequest{Msg: &batonv1.ConnectRequest_TaskFinished{TaskFinished: tf}}
}
