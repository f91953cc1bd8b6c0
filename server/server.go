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
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/encoding/protojson"

	baton "github.com/batonhq/baton"
	"github.com/batonhq/baton/client"
	batonv1 "github.com/batonhq/baton/gen/baton/v1"
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
}

// New validates cfg, opens the listeners and returns a Server ready to Run.
// It refuses a non-loopback address without TLS unless cfg.Insecure.
func New(cfg Config) (*Server, error) {
	if cfg.Store == nil || cfg.Logger == nil {
		return nil, errors.New("server: Store and Logger are required")
	}
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
	}
	if cfg.AgentCAFile == "" && !cfg.Insecure && !isLoopback(cfg.GRPCAddr) {
		return nil, fmt.Errorf("refusing to accept agents on %s without client certificates: any machine could "+
			"connect as any agent and be sent tasks; give --agent-ca (see 'baton cert'), or --insecure", cfg.GRPCAddr)
	}
	s.metrics = prometheus.NewRegistry()
	s.metrics.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	s.specs = &engine.Cache{}
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
	guard := dispatch.Guard{
		RequireCert: s.cfg.AgentCAFile != "", RequireApproval: s.cfg.AgentApproval,
		Approval: func(ctx context.Context, name string) (*store.AgentApproval, error) {
			return s.cfg.Store.AgentApprovalGet(ctx, &store.AgentApprovalGetParams{Name: name})
		},
	}
	register := func(g *grpc.Server) {
		batonv1.RegisterJobServiceServer(g, &jobService{st: s.cfg.Store, log: s.log, specs: s.specs})
		batonv1.RegisterRunServiceServer(g, runs)
		batonv1.RegisterAgentAdminServiceServer(g, &adminService{st: s.cfg.Store, sched: s.sched, log: s.log, approval: s.cfg.AgentApproval, now: time.Now})
	}
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
	external := opts
	if s.tls != nil {
		external = append(external, grpc.Creds(credentials.NewTLS(s.tls)))
	}
	grpcSrv := grpc.NewServer(external...)
	register(grpcSrv)
	// Agents connect only from outside: the in-process server below serves
	// the gateway, which has no route to the agent service.
	batonv1.RegisterAgentServiceServer(grpcSrv, dispatch.NewService(s.sched, s.log, guard))
	// The gateway reaches the API through an in-process listener, so it
	// needs neither the network nor the TLS certificate.
	inner := grpc.NewServer(opts...)
	register(inner)
	pipe := bufconn.Listen(1 << 20)

	schedCtx, stopSched := context.WithCancel(context.WithoutCancel(ctx))
	defer stopSched()
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
		}))
		for _, reg := range []func(context.Context, *runtime.ServeMux, *grpc.ClientConn) error{
			batonv1.RegisterJobServiceHandler, batonv1.RegisterRunServiceHandler, batonv1.RegisterAgentAdminServiceHandler,
		} {
			if err := reg(ctx, gw, conn); err != nil {
				return fmt.Errorf("gateway: %w", err)
			}
		}
		mux := http.NewServeMux()
		mux.Handle("/v1/", gw)
		mux.HandleFunc("GET /openapi.json", func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write(baton.OpenAPI)
		})
		mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
			_, _ = w.Write([]byte("ok\n"))
		})
		mux.Handle("GET /readyz", readyHandler(s.sched.Status))
		mux.Handle("GET /metrics", promhttp.HandlerFor(s.metrics, promhttp.HandlerOpts{}))
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
		slog.String("http_addr", s.Addrs().HTTP), slog.Bool("tls", s.tls != nil), slog.String("version", s.cfg.Version))

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
