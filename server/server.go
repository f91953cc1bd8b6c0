// Package server is batond: the gRPC API (JobService, RunService,
// AgentAdminService and the agents' AgentService), the REST gateway and
// OpenAPI document, wired to the scheduler and the store.
package server

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/encoding/protojson"

	baton "github.com/batonhq/baton"
	"github.com/batonhq/baton/client"
	batonv1 "github.com/batonhq/baton/gen/baton/v1"
	"github.com/batonhq/baton/server/auth"
	"github.com/batonhq/baton/server/dispatch"
	"github.com/batonhq/baton/server/engine"
	"github.com/batonhq/baton/server/scheduler"
	"github.com/batonhq/baton/server/store"
)

// Default listen addresses. Both are loopback: batond is reachable from
// other machines only when told so, and then only over TLS (or with
// Insecure).
const (
	DefaultGRPCAddr = "127.0.0.1:7700"
	DefaultHTTPAddr = "127.0.0.1:7701"
)

// Config configures batond.
type Config struct {
	// Store is the opened, migrated state store. Required.
	Store store.Store
	// Logger is required.
	Logger *slog.Logger
	// GRPCAddr is where the gRPC API (and agents) connect. Defaults to
	// DefaultGRPCAddr. Port 0 picks a free port.
	GRPCAddr string
	// HTTPAddr is where the REST gateway and /openapi.json are served.
	// Defaults to DefaultHTTPAddr; "off" disables it.
	HTTPAddr string
	// TLSCertFile and TLSKeyFile, when both set, serve both listeners over
	// TLS.
	TLSCertFile string
	TLSKeyFile  string
	// Insecure allows listening on a non-loopback address without TLS, and
	// agents on such an address without client certificates.
	Insecure bool
	// AgentCAFile, when set, is the PEM bundle of CAs that issue agent
	// client certificates: every agent must present one, and its name is
	// the certificate's (baton-agent:///NAME URI SAN, or common name).
	// Needs TLSCertFile.
	AgentCAFile string
	// AgentApproval keeps each agent pending, with no work, until an admin
	// approves the labels and slots it claims.
	AgentApproval bool
	// AgentTimeout is how long an agent may be silent before its attempts
	// are lost. Defaults to 30s.
	AgentTimeout time.Duration
	// KillGrace is the SIGTERM-to-SIGKILL grace for stopped children.
	// Defaults to 10s.
	KillGrace time.Duration
	// LogCap is how many output bytes of each attempt are stored.
	// Defaults to 1 MiB.
	LogCap int64
	// ShutdownTimeout bounds a graceful shutdown. Defaults to 10s.
	ShutdownTimeout time.Duration
	// Version is batond's build version.
	Version string
	// NodeID names this process in the leader lease; replicas sharing a
	// store need distinct ids. Defaults to host:pid.
	NodeID string
	// HTTPAllowHosts are Host names the REST gateway answers besides
	// loopback ones when it listens on loopback (a reverse proxy's name).
	HTTPAllowHosts []string
	// HTTPAllowOrigins are Origins (scheme://host[:port]) whose browser
	// requests the REST gateway accepts besides its own.
	HTTPAllowOrigins []string
	// Auth turns API token authentication on (AuthOn) or off (AuthOff).
	// The default, AuthAuto, is on unless both listeners are loopback.
	// AuthOff on a non-loopback address needs Insecure.
	Auth AuthMode
	// PublicMetrics serves /healthz, /readyz, /metrics and /openapi.json
	// without a token while authentication is on. Off by default: they
	// then need a token of any role.
	PublicMetrics bool
	// AuditRetention is how long audit records are kept. Defaults to
	// DefaultAuditRetention (400 days); at least store.MinAuditRetention.
	AuditRetention time.Duration
	// Clock tells the time of audit records and of token expiry and
	// caching. Defaults to time.Now; tests inject their own.
	Clock func() time.Time
	// TokenCacheTTL is how long a looked-up token is trusted: the longest a
	// revocation made on another replica takes to apply. Defaults to
	// auth.DefaultCacheTTL (30s).
	TokenCacheTTL time.Duration
}

// AuthMode says whether batond authenticates API callers.
type AuthMode string

// The authentication modes.
const (
	// AuthAuto is on unless both listeners are loopback.
	AuthAuto AuthMode = ""
	AuthOn   AuthMode = "on"
	AuthOff  AuthMode = "off"
)

// AuthDefault returns the authentication mode AuthAuto stands for with
// these listen addresses: off when both are loopback (or the HTTP one is
// "off"), on otherwise.
func AuthDefault(grpcAddr, httpAddr string) AuthMode {
	if isLoopback(cmpOr(grpcAddr, DefaultGRPCAddr)) && (httpAddr == "off" || isLoopback(cmpOr(httpAddr, DefaultHTTPAddr))) {
		return AuthOff
	}
	return AuthOn
}

// Addrs are the addresses batond listens on.
type Addrs struct {
	GRPC string
	HTTP string // empty when the gateway is off
}

// Server is batond.
type Server struct {
	cfg   Config
	log   *slog.Logger
	sched *scheduler.Scheduler
	tls   *tls.Config

	grpcLis net.Listener
	httpLis net.Listener
	metrics *prometheus.Registry
	// specs is the compiled job versions the API and the scheduler share.
	specs *engine.Cache

	// authn is nil when authentication is off.
	authn *auth.Authenticator
	audit *auditor
}

// CheckConfig reports what New would refuse in cfg before anything is
// opened: flags that do not go together, TLS files that cannot be read,
// and a listener beyond loopback without TLS, agent certificates or API
// authentication. It needs neither Store nor Logger, so batond checks its
// command line before it creates or migrates a store.
func CheckConfig(cfg Config) error {
	_, err := configure(cfg)
	return err
}

// configure fills cfg's defaults and checks it, and returns a Server
// holding it and its TLS configuration; New adds the rest.
func configure(cfg Config) (*Server, error) {
	cfg.GRPCAddr = cmpOr(cfg.GRPCAddr, DefaultGRPCAddr)
	cfg.HTTPAddr = cmpOr(cfg.HTTPAddr, DefaultHTTPAddr)
	if cfg.ShutdownTimeout <= 0 {
		cfg.ShutdownTimeout = 10 * time.Second
	}
	if cfg.LogCap <= 0 {
		cfg.LogCap = 1 << 20
	}
	if (cfg.TLSCertFile == "") != (cfg.TLSKeyFile == "") {
		return nil, errors.New("--tls-cert and --tls-key must be given together")
	}
	if cfg.Clock == nil {
		cfg.Clock = time.Now
	}
	if cfg.AuditRetention == 0 {
		cfg.AuditRetention = DefaultAuditRetention
	}
	if cfg.AuditRetention < store.MinAuditRetention {
		return nil, fmt.Errorf("--audit-retention %s: want at least %s", cfg.AuditRetention, store.MinAuditRetention)
	}
	switch cfg.Auth {
	case AuthAuto:
		cfg.Auth = AuthDefault(cfg.GRPCAddr, cfg.HTTPAddr)
	case AuthOn, AuthOff:
	default:
		return nil, fmt.Errorf("--auth %q: want on or off", cfg.Auth)
	}
	s := &Server{cfg: cfg, log: cfg.Logger}
	if cfg.TLSCertFile != "" {
		cert, err := tls.LoadX509KeyPair(cfg.TLSCertFile, cfg.TLSKeyFile)
		if err != nil {
			return nil, fmt.Errorf("load TLS certificate: %w", err)
		}
		s.tls = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}
	if cfg.AgentCAFile != "" {
		if s.tls == nil {
			return nil, errors.New("--agent-ca needs --tls-cert and --tls-key: client certificates are checked in the TLS handshake")
		}
		pem, err := os.ReadFile(cfg.AgentCAFile)
		if err != nil {
			return nil, fmt.Errorf("--agent-ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--agent-ca %s: no PEM certificate in the file", cfg.AgentCAFile)
		}
		// API callers authenticate with tokens and present no certificate;
		// agents must (the agent service checks it).
		s.tls.ClientCAs = pool
		s.tls.ClientAuth = tls.VerifyClientCertIfGiven
	}
	addrs := []string{cfg.GRPCAddr}
	if cfg.HTTPAddr != "off" {
		addrs = append(addrs, cfg.HTTPAddr)
	}
	for _, a := range addrs {
		if s.tls == nil && !cfg.Insecure && !isLoopback(a) {
			return nil, fmt.Errorf("refusing to listen on %s without TLS: give --tls-cert and --tls-key, "+
				"or --insecure to accept plaintext from other machines", a)
		}
		if cfg.Auth == AuthOff && !cfg.Insecure && !isLoopback(a) {
			return nil, fmt.Errorf("refusing to listen on %s with --auth=off: anyone who can connect could run "+
				"commands on every agent; drop --auth=off (and run `batond init` for a token), or add --insecure", a)
		}
	}
	if cfg.AgentCAFile == "" && !cfg.Insecure && !isLoopback(cfg.GRPCAddr) {
		return nil, fmt.Errorf("refusing to accept agents on %s without client certificates: any machine could "+
			"connect as any agent and be sent tasks; give --agent-ca (see 'baton cert'), or --insecure", cfg.GRPCAddr)
	}
	s.cfg = cfg
	return s, nil
}

// New validates cfg, opens the listeners and returns a Server ready to Run.
// It refuses a non-loopback address without TLS unless cfg.Insecure.
func New(cfg Config) (*Server, error) {
	if cfg.Store == nil || cfg.Logger == nil {
		return nil, errors.New("server: Store and Logger are required")
	}
	s, err := configure(cfg)
	if err != nil {
		return nil, err
	}
	cfg = s.cfg
	s.metrics = prometheus.NewRegistry()
	s.metrics.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	s.specs = &engine.Cache{}
	if cfg.Auth == AuthOn {
		s.authn, err = auth.NewAuthenticator(auth.AuthenticatorConfig{Store: cfg.Store, Logger: cfg.Logger,
			Clock: cfg.Clock, CacheTTL: cfg.TokenCacheTTL})
		if err != nil {
			return nil, err
		}
	}
	s.audit = newAuditor(cfg.Store, cfg.Logger, cfg.Clock, cfg.AuditRetention, s.metrics, auditQueue)
	sched, err := scheduler.New(scheduler.Config{
		Store: cfg.Store, Logger: cfg.Logger, AgentTimeout: cfg.AgentTimeout,
		KillGrace: cfg.KillGrace, LogCap: cfg.LogCap, Version: cfg.Version, Holder: cfg.NodeID,
		Metrics: scheduler.NewMetrics(s.metrics), Graphs: s.specs,
	})
	if err != nil {
		return nil, err
	}
	s.sched = sched
	s.grpcLis, err = net.Listen("tcp", cfg.GRPCAddr)
	if err != nil {
		return nil, fmt.Errorf("listen for gRPC: %w", err)
	}
	if cfg.HTTPAddr != "off" {
		s.httpLis, err = net.Listen("tcp", cfg.HTTPAddr)
		if err != nil {
			_ = s.grpcLis.Close() // never served; the listen error is the news
			return nil, fmt.Errorf("listen for HTTP: %w", err)
		}
	}
	return s, nil
}

// Addrs returns the addresses the server listens on (resolved ports).
func (s *Server) Addrs() Addrs {
	a := Addrs{GRPC: s.grpcLis.Addr().String()}
	if s.httpLis != nil {
		a.HTTP = s.httpLis.Addr().String()
	}
	return a
}

// Run serves until ctx is done, then shuts down gracefully: the gateway
// stops, agent streams end (agents keep their children running and
// reconnect to the next batond), and in-flight calls get ShutdownTimeout.
func (s *Server) Run(ctx context.Context) error {
	stopping := make(chan struct{})
	runs := &runService{st: s.cfg.Store, sched: s.sched, log: s.log, logCap: s.cfg.LogCap, stopping: stopping, specs: s.specs}
	s.warnAuth(ctx)
	opts := []grpc.ServerOption{
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 5 * time.Second, PermitWithoutStream: true}),
		grpc.MaxRecvMsgSize(8 << 20),
		// Fixed flow-control windows (see client.StreamWindow): no
		// bandwidth-delay ping and window update after each message an
		// agent sends.
		grpc.StaticStreamWindowSize(client.StreamWindow),
		grpc.StaticConnWindowSize(client.ConnWindow),
	}
	external := append(slices.Clone(opts), s.guardOptions(false)...)
	if s.tls != nil {
		// crypto/tls already reads whole records into a buffer of its own;
		// grpc-go's 32 KB read buffer on top of it (kept per connection,
		// unpooled on TLS) would only copy them again: 32 KB per idle agent.
		external = append(external, grpc.Creds(credentials.NewTLS(s.tls)), grpc.ReadBufferSize(0))
	}
	grpcSrv := grpc.NewServer(external...)
	s.register(grpcSrv, runs)
	// Agents connect only from outside: the in-process server below serves
	// the gateway, which has no route to the agent service.
	batonv1.RegisterAgentServiceServer(grpcSrv, dispatch.NewService(s.sched, s.log, s.agentGuard()))
	// The gateway reaches the API through an in-process listener, so it
	// needs neither the network nor the TLS certificate. Only there is
	// the caller's address taken from x-forwarded-for, which the gateway
	// sets from the HTTP request.
	inner := grpc.NewServer(append(slices.Clone(opts), s.guardOptions(true)...)...)
	s.register(inner, runs)
	pipe := bufconn.Listen(1 << 20)

	schedCtx, stopSched := context.WithCancel(context.WithoutCancel(ctx))
	defer stopSched()
	// The audit writer outlives the gRPC servers, so the last calls are
	// recorded too.
	auditCtx, stopAudit := context.WithCancel(context.WithoutCancel(ctx))
	auditDone := make(chan struct{})
	go func() { defer close(auditDone); s.audit.run(auditCtx) }()
	defer func() { stopAudit(); <-auditDone }()
	var wg sync.WaitGroup
	errc := make(chan error, 4)
	wg.Add(3)
	go func() { defer wg.Done(); errc <- s.sched.Run(schedCtx) }()
	// Serve once leadership is settled, so the first calls are not refused
	// as if this process were a standby.
	select {
	case <-s.sched.Settled():
	case <-ctx.Done():
	}
	go func() { defer wg.Done(); errc <- serveGRPC(grpcSrv, s.grpcLis) }()
	go func() { defer wg.Done(); errc <- serveGRPC(inner, pipe) }()

	var httpSrv *http.Server
	if s.httpLis != nil {
		conn, err := grpc.NewClient("passthrough:///baton",
			grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return pipe.DialContext(ctx) }),
			grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return fmt.Errorf("gateway: %w", err)
		}
		defer conn.Close()
		// Lean JSON (no zero-valued fields), and request bodies with unknown
		// fields refused rather than silently ignored.
		gw := runtime.NewServeMux(runtime.WithMarshalerOption(runtime.MIMEWildcard, &runtime.HTTPBodyMarshaler{
			Marshaler: &runtime.JSONPb{
				MarshalOptions:   protojson.MarshalOptions{EmitUnpopulated: false},
				UnmarshalOptions: protojson.UnmarshalOptions{DiscardUnknown: false},
			},
		}), runtime.WithErrorHandler(bearerChallenge))
		for _, reg := range []func(context.Context, *runtime.ServeMux, *grpc.ClientConn) error{
			batonv1.RegisterJobServiceHandler, batonv1.RegisterRunServiceHandler, batonv1.RegisterAgentAdminServiceHandler,
			batonv1.RegisterTokenServiceHandler, batonv1.RegisterAuditServiceHandler,
		} {
			if err := reg(ctx, gw, conn); err != nil {
				return fmt.Errorf("gateway: %w", err)
			}
		}
		mux := http.NewServeMux()
		mux.Handle("/v1/", forwardedFor(gw))
		mux.Handle("GET /openapi.json", s.needToken(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write(baton.OpenAPI)
		})))
		mux.Handle("GET /healthz", s.needToken(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			_, _ = w.Write([]byte("ok\n"))
		})))
		mux.Handle("GET /readyz", s.needToken(readyHandler(s.sched.Status)))
		mux.Handle("GET /metrics", s.needToken(promhttp.HandlerFor(s.metrics, promhttp.HandlerOpts{})))
		guard := newRESTGuard(mux, s.httpLis.Addr(), s.cfg.HTTPAllowHosts, s.cfg.HTTPAllowOrigins)
		httpSrv = &http.Server{Handler: guard, ReadHeaderTimeout: 10 * time.Second, TLSConfig: s.tls}
		wg.Add(1)
		go func() {
			defer wg.Done()
			var err error
			if s.tls != nil {
				err = httpSrv.ServeTLS(s.httpLis, "", "")
			} else {
				err = httpSrv.Serve(s.httpLis)
			}
			if errors.Is(err, http.ErrServerClosed) {
				err = nil
			}
			errc <- err
		}()
	}
	s.log.InfoContext(ctx, "batond listening", slog.String("grpc_addr", s.Addrs().GRPC),
		slog.String("http_addr", s.Addrs().HTTP), slog.Bool("tls", s.tls != nil), slog.String("auth", string(s.cfg.Auth)),
		slog.String("version", s.cfg.Version))

	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-errc:
		if runErr != nil {
			s.log.ErrorContext(ctx, "batond stopping after an error", slog.Any("error", runErr))
		}
	}

	// Shut down: first the gateway and watchers, then the scheduler (which
	// ends every agent stream), then the gRPC servers with a time limit.
	close(stopping)
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.cfg.ShutdownTimeout)
	defer cancel()
	if httpSrv != nil {
		_ = httpSrv.Shutdown(sctx)
	}
	stopSched()
	select {
	case <-s.sched.Done():
	case <-sctx.Done():
	}
	for _, g := range []*grpc.Server{grpcSrv, inner} {
		done := make(chan struct{})
		go func() { g.GracefulStop(); close(done) }()
		select {
		case <-done:
		case <-sctx.Done():
			g.Stop()
		}
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		if runErr == nil && err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			runErr = err
		}
	}
	s.log.Info("batond stopped")
	return runErr
}

// register registers every service on g.
func (s *Server) register(g *grpc.Server, runs *runService) {
	batonv1.RegisterJobServiceServer(g, &jobService{st: s.cfg.Store, log: s.log, specs: s.specs})
	batonv1.RegisterRunServiceServer(g, runs)
	batonv1.RegisterAgentAdminServiceServer(g, &adminService{st: s.cfg.Store, sched: s.sched, log: s.log,
		approval: s.cfg.AgentApproval, now: s.cfg.Clock})
	batonv1.RegisterTokenServiceServer(g, &tokenService{st: s.cfg.Store, log: s.log, clock: s.cfg.Clock, authn: s.authn})
	batonv1.RegisterAuditServiceServer(g, &auditService{st: s.cfg.Store, log: s.log})
}

// agentGuard says who agents are (their certificates), what they may
// claim (their approvals), and records the connections it refuses.
func (s *Server) agentGuard() dispatch.Guard {
	return dispatch.Guard{
		RequireCert: s.cfg.AgentCAFile != "", RequireApproval: s.cfg.AgentApproval,
		Approval: func(ctx context.Context, name string) (*store.AgentApproval, error) {
			return s.cfg.Store.AgentApprovalGet(ctx, &store.AgentApprovalGetParams{Name: name})
		},
		Refused: func(ctx context.Context, name, peer string, err error) {
			// Who proved itself by certificate, else who it said it was.
			who := "agent:" + name
			if c := dispatch.PeerCertName(ctx); c != "" {
				who = string(auth.KindCert) + ":" + c
			}
			s.audit.record(ctx, &store.AuditRecord{At: s.audit.now(), Who: who, Peer: peer,
				Method: batonv1.AgentService_Connect_FullMethodName, Code: status.Code(dispatch.StatusOf(err)).String(),
				Message: fmt.Sprintf("agent %q refused: %v", name, err)}, false)
		},
	}
}

// guardOptions returns the interceptors that authenticate, authorize and
// audit every call; forwarded is set for the gateway's in-process server.
func (s *Server) guardOptions(forwarded bool) []grpc.ServerOption {
	g := &guard{authn: s.authn, audit: s.audit, runs: s.cfg.Store, log: s.log, forwarded: forwarded}
	return []grpc.ServerOption{grpc.ChainUnaryInterceptor(g.unary), grpc.ChainStreamInterceptor(g.stream)}
}

// warnAuth logs, at start, what authentication leaves open.
func (s *Server) warnAuth(ctx context.Context) {
	if s.authn == nil {
		s.log.WarnContext(ctx, "API authentication is OFF: anyone who can connect to batond may start, cancel and "+
			"change jobs, and so run commands on every agent; turn it on with --auth=on and create a token with `batond init`",
			slog.String("grpc_addr", s.Addrs().GRPC), slog.String("http_addr", s.Addrs().HTTP))
		return
	}
	toks, err := s.cfg.Store.TokenList(ctx, &store.TokenListParams{})
	if err != nil {
		s.log.WarnContext(ctx, "cannot list API tokens", slog.Any("error", err))
		return
	}
	now := s.cfg.Clock()
	for _, t := range toks {
		if t.Usable(now) {
			return
		}
	}
	s.log.WarnContext(ctx, "API authentication is on but there is no usable API token: every call will be refused; "+
		"run `batond init` (with the same --db or --data-dir) to create the first admin token")
}

func serveGRPC(g *grpc.Server, lis net.Listener) error {
	err := g.Serve(lis)
	if errors.Is(err, grpc.ErrServerStopped) {
		return nil
	}
	return err
}

// isLoopback reports whether a listen address only accepts connections
// from this machine.
func isLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// readyHandler serves /readyz: 200 while this batond leads and takes work,
// 503 otherwise with the reason (standing by, or the state store's error).
// /healthz only says the process serves.
func readyHandler(status func() scheduler.Status) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		st := status()
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		if st.Ready() {
			_, _ = fmt.Fprintf(w, "ready: %s since %s\n", st.Role, st.Since.UTC().Format(time.RFC3339))
			return
		}
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = fmt.Fprintf(w, "not ready: %s: %v\n", st.Role, st.Error())
	})
}
