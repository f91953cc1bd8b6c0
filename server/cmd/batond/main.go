// Command batond is Baton's control plane: it holds job definitions and
// run state, decides what runs next and streams start commands to agents.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/batonhq/baton/server"
	"github.com/batonhq/baton/server/store"
	"github.com/batonhq/baton/server/store/sqlite"
	"github.com/batonhq/baton/server/store/sqlserver"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// options are batond's flags; each has an environment twin.
type options struct {
	db           string
	dbSchema     string
	dataDir      string
	grpcAddr     string
	httpAddr     string
	tlsCert      string
	tlsKey       string
	insecure     bool
	agentCA      string
	approval     bool
	agentTimeout time.Duration
	killGrace    time.Duration
	noMigrate    bool
	addrFile     string
	nodeID       string
	allowHosts   []string
	allowOrigins []string
	debugAddr    string
	logLevel     string
	logFormat    string

	auth           string
	publicMetrics  bool
	auditRetention time.Duration
	tokenFile      string
	tokenName      string
}

// envs maps each flag to its environment variable.
var envs = map[string]string{
	"db":                "BATON_DB",
	"db-schema":         "BATON_DB_SCHEMA",
	"data-dir":          "BATON_DATA_DIR",
	"grpc-addr":         "BATON_GRPC_ADDR",
	"http-addr":         "BATON_HTTP_ADDR",
	"tls-cert":          "BATON_TLS_CERT",
	"tls-key":           "BATON_TLS_KEY",
	"insecure":          "BATON_INSECURE",
	"agent-ca":          "BATON_AGENT_CA",
	"agent-approval":    "BATON_AGENT_APPROVAL",
	"agent-timeout":     "BATON_AGENT_TIMEOUT",
	"kill-grace":        "BATON_KILL_GRACE",
	"no-migrate":        "BATON_NO_MIGRATE",
	"addr-file":         "BATON_ADDR_FILE",
	"node-id":           "BATON_NODE_ID",
	"http-allow-host":   "BATON_HTTP_ALLOW_HOST",
	"http-allow-origin": "BATON_HTTP_ALLOW_ORIGIN",
	"debug-addr":        "BATON_DEBUG_ADDR",
	"log-level":         "BATON_LOG_LEVEL",
	"log-format":        "BATON_LOG_FORMAT",
	"auth":              "BATON_AUTH",
	"public-metrics":    "BATON_PUBLIC_METRICS",
	"audit-retention":   "BATON_AUDIT_RETENTION",
	"token-file":        "BATON_TOKEN_FILE",
}

func run(args []string, stdout, stderr io.Writer) int {
	var o options
	root := &cobra.Command{
		Use:   "batond",
		Short: "Baton control plane: runs multi-step ETL jobs across agents",
		Long: `batond is Baton's control plane. It stores job definitions and run state
(an embedded SQLite file by default, or SQL Server), decides which task
instances may run, and streams start commands to baton-agents, which report
each child's real outcome back.

Every flag can also be set with the environment variable shown in brackets.`,
		Example: `  # Embedded store in ./data, loopback only:
  batond --data-dir ./data

  # SQL Server, reachable from other machines over TLS:
  batond --db 'sqlserver://baton_svc:secret@sql01:1433?database=baton' \
         --grpc-addr 0.0.0.0:7700 --http-addr 0.0.0.0:7701 \
         --tls-cert /etc/baton/tls.crt --tls-key /etc/baton/tls.key \
         --agent-ca /etc/baton/agent-ca.crt`,
		Version:       version,
		SilenceUsage:  true,
		SilenceErrors: true,
		Args:          noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if !cmd.Flags().Changed("agent-approval") && o.agentCA != "" {
				o.approval = true
			}
			return serve(cmd.Context(), &o, stderr)
		},
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	root.SetArgs(args)
	f := root.PersistentFlags()
	f.StringVar(&o.db, "db", "", "state store URL: sqlite:///path/to/baton.db or sqlserver://user:pass@host:1433?database=baton (default: sqlite in --data-dir)")
	f.StringVar(&o.dbSchema, "db-schema", "baton", "SQL Server schema holding Baton's tables")
	f.StringVar(&o.dataDir, "data-dir", defaultDataDir(), "directory for the embedded SQLite store")
	f.StringVar(&o.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	f.StringVar(&o.logFormat, "log-format", "text", "log format: text or json")
	sf := root.Flags()
	sf.StringVar(&o.grpcAddr, "grpc-addr", server.DefaultGRPCAddr, "address for the gRPC API and agents (port 0 picks a free port)")
	sf.StringVar(&o.httpAddr, "http-addr", server.DefaultHTTPAddr, `address for the REST gateway and /openapi.json ("off" disables it)`)
	sf.StringVar(&o.tlsCert, "tls-cert", "", "TLS certificate (PEM) for both listeners")
	sf.StringVar(&o.tlsKey, "tls-key", "", "TLS private key (PEM)")
	sf.BoolVar(&o.insecure, "insecure", false, "allow listening on a non-loopback address without TLS, and agents there without client certificates")
	sf.StringVar(&o.agentCA, "agent-ca", "", "PEM file of the CA(s) that issue agent client certificates: every agent must present one, and its name is the certificate's (see 'baton cert'); required on a non-loopback address")
	sf.BoolVar(&o.approval, "agent-approval", false, "keep each agent pending, with no work, until an admin approves the labels and slots it claims ('baton agents approve'); default: on with --agent-ca")
	sf.DurationVar(&o.agentTimeout, "agent-timeout", 30*time.Second, "how long an agent may be silent before it gets no new work, and the lease of each attempt: a cut-off agent stops its children when their leases run out, and they are retried elsewhere after the lease and --kill-grace have passed")
	sf.DurationVar(&o.killGrace, "kill-grace", 10*time.Second, "time between SIGTERM and SIGKILL when stopping a child")
	sf.BoolVar(&o.noMigrate, "no-migrate", false, "do not apply schema migrations at start (run 'batond migrate' separately)")
	sf.StringVar(&o.addrFile, "addr-file", "", "write the listening addresses as JSON to this file once serving")
	sf.StringVar(&o.debugAddr, "debug-addr", "", "serve Go's /debug/pprof/ profiles on this loopback address (off by default)")
	sf.StringSliceVar(&o.allowHosts, "http-allow-host", nil, "a Host name the REST gateway answers besides localhost, 127.0.0.1 and [::1] while it listens on loopback, e.g. a reverse proxy's (repeatable)")
	sf.StringSliceVar(&o.allowOrigins, "http-allow-origin", nil, "an Origin (https://host[:port]) whose browser requests the REST gateway accepts besides its own (repeatable)")
	sf.StringVar(&o.auth, "auth", "", "API token authentication: on or off (default: on, unless both --grpc-addr and --http-addr are loopback); off on a non-loopback address also needs --insecure")
	sf.BoolVar(&o.publicMetrics, "public-metrics", false, "serve /healthz, /readyz, /metrics and /openapi.json without a token while authentication is on")
	sf.DurationVar(&o.auditRetention, "audit-retention", server.DefaultAuditRetention, "how long audit records are kept (at least 24h); older ones are purged hourly")
	sf.StringVar(&o.nodeID, "node-id", "", "this batond's name in the leader lease; replicas sharing a SQL Server database need distinct ids (default: host:grpc-port, or host:sqlite on the embedded store)")

	migrate := &cobra.Command{
		Use:   "migrate",
		Short: "Apply the state store's schema migrations and exit",
		Long: `migrate brings the state store's schema up to date and exits. It is safe
to run while other batond processes start or migrate the same database.
On SQL Server, run it as a principal that owns the schema; batond itself
can then run as a login with DML rights only (see docs/operations.md).`,
		Args:          noArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := newLogger(&o, stderr)
			if err != nil {
				return err
			}
			st, err := openStore(cmd.Context(), &o, log)
			if err != nil {
				return err
			}
			defer closeStore(st, log)
			if err := st.Migrate(cmd.Context()); err != nil {
				return fmt.Errorf("migrate: %w", err)
			}
			// The migration is done whether or not the note gets out.
			_, _ = fmt.Fprintln(stdout, "schema is up to date")
			return nil
		},
	}
	root.AddCommand(migrate, initCommand(&o, stdout, stderr))

	// A failed write to stderr has nowhere to be reported; the exit code
	// still says what happened.
	if err := applyEnv(root); err != nil {
		_, _ = fmt.Fprintln(stderr, "batond:", err)
		return 2
	}
	ctx, stop := signalContext()
	defer stop()
	if err := root.ExecuteContext(ctx); err != nil {
		_, _ = fmt.Fprintln(stderr, "batond:", err)
		if errors.As(err, new(usageError)) {
			return 2
		}
		return 1
	}
	return 0
}

// serve runs batond until the first SIGINT/SIGTERM.
func serve(ctx context.Context, o *options, stderr io.Writer) error {
	log, err := newLogger(o, stderr)
	if err != nil {
		return err
	}
	authMode, err := authMode(o)
	if err != nil {
		return err
	}
	cfg := server.Config{
		Logger: log, GRPCAddr: o.grpcAddr, HTTPAddr: o.httpAddr,
		TLSCertFile: o.tlsCert, TLSKeyFile: o.tlsKey, Insecure: o.insecure,
		AgentCAFile: o.agentCA, AgentApproval: o.approval,
		AgentTimeout: o.agentTimeout, KillGrace: o.killGrace, Version: version,
		HTTPAllowHosts: o.allowHosts, HTTPAllowOrigins: o.allowOrigins,
		Auth: authMode, PublicMetrics: o.publicMetrics, AuditRetention: o.auditRetention,
	}
	// A command line batond would refuse changes nothing: checked before
	// the store is created or migrated.
	if err := server.CheckConfig(cfg); err != nil {
		return err
	}
	st, err := openStore(ctx, o, log)
	if err != nil {
		return err
	}
	defer closeStore(st, log)
	if path := sqlitePath(o); path != "" {
		// One batond per SQLite file: a second one would schedule the same
		// runs. The lock goes with the process, also on SIGKILL.
		unlock, err := lockFile(path + ".lock")
		if err != nil {
			return err
		}
		defer unlock()
	}
	if !o.noMigrate {
		if err := st.Migrate(ctx); err != nil {
			return fmt.Errorf("migrate: %w", err)
		}
	}
	node := o.nodeID
	if node == "" {
		host, _ := os.Hostname()
		if sqlitePath(o) != "" {
			// The file lock above already makes this the only batond on the
			// store, so a restarted one takes its lease back at once.
			node = host + ":sqlite"
		} else {
			_, port, _ := net.SplitHostPort(o.grpcAddr)
			node = host + ":" + port
		}
	}
	cfg.Store, cfg.NodeID = st, node
	srv, err := server.New(cfg)
	if err != nil {
		return err
	}
	if o.debugAddr != "" {
		stop, err := serveDebug(o.debugAddr, log)
		if err != nil {
			return err
		}
		defer stop()
	}
	if o.addrFile != "" {
		a := srv.Addrs()
		b, _ := json.Marshal(map[string]string{"grpc": a.GRPC, "http": a.HTTP})
		if err := writeFileAtomic(o.addrFile, b); err != nil {
			return fmt.Errorf("--addr-file: %w", err)
		}
	}
	return srv.Run(ctx)
}

// closeStore closes st when batond is done with it. A failure is logged,
// not returned: every write was committed before, so it loses nothing and
// does not change the exit code.
func closeStore(st store.Store, log *slog.Logger) {
	if err := st.Close(); err != nil {
		log.Error("cannot close the store", slog.Any("error", err))
	}
}

// sqlitePath returns the SQLite file batond uses, or "" for SQL Server.
func sqlitePath(o *options) string {
	if o.db == "" {
		abs, err := filepath.Abs(filepath.Join(o.dataDir, "baton.db"))
		if err != nil {
			return ""
		}
		return abs
	}
	u, err := url.Parse(o.db)
	if err != nil || u.Scheme != "sqlite" {
		return ""
	}
	cfg, err := sqlite.ConfigFromURL(u)
	if err != nil {
		return ""
	}
	return cfg.Path
}

// openStore opens the backend --db names.
func openStore(ctx context.Context, o *options, log *slog.Logger) (store.Store, error) {
	dsn := o.db
	if dsn == "" {
		if err := os.MkdirAll(o.dataDir, 0o750); err != nil {
			return nil, fmt.Errorf("--data-dir: %w", err)
		}
		abs, err := filepath.Abs(filepath.Join(o.dataDir, "baton.db"))
		if err != nil {
			return nil, fmt.Errorf("--data-dir: %w", err)
		}
		dsn = "sqlite://" + filepath.ToSlash(abs)
		if !strings.HasPrefix(filepath.ToSlash(abs), "/") {
			dsn = "sqlite:///" + filepath.ToSlash(abs)
		}
	}
	u, err := url.Parse(dsn)
	if err != nil {
		return nil, usagef("--db: %w", err)
	}
	switch u.Scheme {
	case "sqlite":
		cfg, err := sqlite.ConfigFromURL(u)
		if err != nil {
			return nil, usagef("--db: %w", err)
		}
		cfg.Logger = log
		if err := os.MkdirAll(filepath.Dir(cfg.Path), 0o750); err != nil {
			return nil, fmt.Errorf("--db: %w", err)
		}
		return sqlite.Open(ctx, cfg)
	case "sqlserver":
		return sqlserver.Open(ctx, sqlserver.Config{DSN: dsn, Schema: o.dbSchema, Logger: log})
	}
	return nil, usagef("--db: unsupported scheme %q: use sqlite:///path/to/baton.db or sqlserver://host/?database=baton", u.Scheme)
}

func newLogger(o *options, w io.Writer) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(o.logLevel)); err != nil {
		return nil, usagef("--log-level: %q is not debug, info, warn or error", o.logLevel)
	}
	hopts := &slog.HandlerOptions{Level: level}
	switch o.logFormat {
	case "text":
		return slog.New(slog.NewTextHandler(w, hopts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, hopts)), nil
	}
	return nil, usagef("--log-format: %q is not text or json", o.logFormat)
}

// applyEnv sets every flag not given on the command line from its
// environment variable, and names the variable in the flag's help.
func applyEnv(root *cobra.Command) error {
	var errs []error
	visit := func(fs *pflag.FlagSet) {
		fs.VisitAll(func(f *pflag.Flag) {
			env, ok := envs[f.Name]
			if !ok {
				return
			}
			f.Usage += " [" + env + "]"
			if v, set := os.LookupEnv(env); set {
				// Through the flag set, so the flag counts as given.
				if err := fs.Set(f.Name, v); err != nil {
					errs = append(errs, fmt.Errorf("%s: %w", env, err))
				}
			}
		})
	}
	visit(root.PersistentFlags())
	visit(root.Flags())
	for _, c := range root.Commands() {
		visit(c.Flags())
	}
	return errors.Join(errs...)
}

// signalContext is cancelled by the first SIGINT/SIGTERM (graceful
// shutdown); a second one exits at once.
func signalContext() (context.Context, func()) {
	ctx, cancel := context.WithCancel(context.Background())
	ch := make(chan os.Signal, 2)
	signal.Notify(ch, os.Interrupt, syscall.SIGTERM)
	go func() {
		<-ch
		cancel()
		<-ch
		fmt.Fprintln(os.Stderr, "batond: second signal, exiting now")
		os.Exit(1)
	}()
	return ctx, func() { signal.Stop(ch); cancel() }
}

// usageError is a mistake in the command line; batond exits 2 for it.
type usageError struct{ error }

func (e usageError) Unwrap() error { return e.error }

func usagef(format string, args ...any) error { return usageError{fmt.Errorf(format, args...)} }

// noArgs rejects positional arguments as a usage error.
func noArgs(cmd *cobra.Command, args []string) error {
	if len(args) > 0 {
		return usagef("unexpected argument %q (see %s --help)", args[0], cmd.CommandPath())
	}
	return nil
}

func defaultDataDir() string {
	if d := os.Getenv("XDG_STATE_HOME"); d != "" {
		return filepath.Join(d, "batond")
	}
	if home, err := os.UserHomeDir(); err == nil {
		return filepath.Join(home, ".local", "state", "batond")
	}
	return "batond-data"
}

func writeFileAtomic(path string, b []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
