// Command baton-agent is Baton's agent. It dials the control plane (batond),
// runs the child processes it is asked to run and reports each child's real
// outcome back.
//
// The first SIGINT/SIGTERM drains the agent: it takes no new work, lets
// running children finish, reports their outcomes and exits. A second one
// kills the children's process trees and exits at once.
//
// On Unix the children run in a runner process that the agent starts and
// that outlives it: "baton-agent runner ..." (hidden, not for people) is
// that process. Killing baton-agent leaves the children running; the next
// baton-agent with the same --state-dir re-adopts them.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/batonhq/baton/agent"
	"github.com/batonhq/baton/agent/allow"
	"github.com/batonhq/baton/agent/runner"
	"github.com/batonhq/baton/client"
)

// runnerArg is the hidden subcommand that runs the runner process.
const runnerArg = "runner"

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() { os.Exit(mainCode(os.Args[1:])) }

// mainCode runs the program with its arguments and returns the exit code.
func mainCode(args []string) int {
	// The runner, before signal handling, which is the agent's.
	if len(args) > 0 && args[0] == runnerArg {
		return runner.Main(args[1:], os.Stderr)
	}
	sig := make(chan os.Signal, 2)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	return run(args, os.LookupEnv, os.Stdout, os.Stderr, sig)
}

// options are the agent's flags.
type options struct {
	server    string
	name      string
	labels    []string
	slots     int
	stateDir  string
	caFile    string
	certFile  string
	keyFile   string
	tls       bool
	killGrace time.Duration
	fsync     bool
	logLevel  string
	logFormat string

	allow      []string
	allowFile  string
	allowEnv   []string
	allowDir   []string
	allowAny   bool
	secretsDir string
}

// envs names each flag's environment twin. A flag given on the command line
// wins over its variable.
var envs = map[string]string{
	"server":     "BATON_SERVER",
	"name":       "BATON_AGENT_NAME",
	"label":      "BATON_AGENT_LABELS",
	"slots":      "BATON_AGENT_SLOTS",
	"state-dir":  "BATON_AGENT_STATE_DIR",
	"ca-file":    "BATON_CA_FILE",
	"tls-cert":   "BATON_AGENT_TLS_CERT",
	"tls-key":    "BATON_AGENT_TLS_KEY",
	"tls":        "BATON_TLS",
	"kill-grace": "BATON_AGENT_KILL_GRACE",
	"fsync":      "BATON_AGENT_FSYNC",
	"log-level":  "BATON_LOG_LEVEL",
	"log-format": "BATON_LOG_FORMAT",

	"allow":             "BATON_AGENT_ALLOW",
	"allow-file":        "BATON_AGENT_ALLOW_FILE",
	"allow-env":         "BATON_AGENT_ALLOW_ENV",
	"allow-dir":         "BATON_AGENT_ALLOW_DIR",
	"allow-any-command": "BATON_AGENT_ALLOW_ANY_COMMAND",
	"secrets-dir":       "BATON_AGENT_SECRETS_DIR",
}

// listSeps are the separators of the environment variables of repeatable
// flags: BATON_AGENT_LABELS takes k=v,k=v; the path lists take commas or
// the OS's list separator (":" on Unix, ";" on Windows), like PATH.
var listSeps = map[string]string{
	"label":     ",",
	"allow":     "," + string(os.PathListSeparator),
	"allow-dir": "," + string(os.PathListSeparator),
	"allow-env": ",",
}

// run runs the agent command and returns the exit code: 0 after a clean
// shutdown, 1 when the agent failed, 2 for a bad command line. The first
// value on sig drains the agent, the second kills its children.
func run(args []string, lookupEnv func(string) (string, bool), stdout, stderr io.Writer, sig <-chan os.Signal) int {
	var o options
	root := &cobra.Command{
		Use:   "baton-agent",
		Short: "Baton agent: runs ETL children for the Baton control plane",
		Long: `baton-agent runs on each server that executes ETL work (dtexec, sqlcmd,
any executable). It dials the control plane, runs the child processes it is
asked to run, streams their logs and reports each child's exit code and
outputs back.

The first SIGINT/SIGTERM drains the agent: no new work, running children
finish and their outcomes are reported, then it exits. A second signal kills
the children's process trees and exits at once.

The agent has the last word on its host: it runs only the programs its
allowlist names (--allow, --allow-file), and it does not start without one
unless --allow-any-command says so. A pattern is an absolute path whose
elements may use * ? [...] (within one element) and ** (any number of
elements); it is matched against the program as it would really run (found
in PATH, symbolic links evaluated), case-insensitively on Windows. A task
may not set environment variables that change what runs (LD_*, DYLD_*,
PATH, ...) unless --allow-env names them, nor name a working directory
outside --allow-dir. A refused task starts nothing; it shows as rejected,
with the reason, and is not retried.

A task env value written secret:NAME is resolved here, never by the control
plane: from the file NAME in --secrets-dir (a trailing newline dropped; on
Unix it must not be readable by group or others), else from this process's
BATON_SECRET_NAME variable. BATON_SECRET_ variables are never passed on to
children, and secret values are replaced with [secret:NAME] in the logs,
tails and outputs sent to the control plane.

Every flag can also be set with the environment variable shown in brackets;
the flag wins.`,
		Example: `  baton-agent --server batond.example.com:7700 --tls --label role=ssis --label dc=east --slots 8 \
      --allow '/opt/etl/bin/*' --allow /usr/bin/sqlcmd --allow-dir /data/etl --secrets-dir /etc/baton/secrets
  baton-agent --allow 'C:\Program Files\Microsoft SQL Server\*\DTS\Binn\DTExec.exe' --allow-file C:\baton\allow.txt`,
		Version:       version,
		SilenceUsage:  true,
		SilenceErrors: true,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) > 0 {
				return usagef("unexpected argument %q (see %s --help)", args[0], cmd.CommandPath())
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := applyEnv(cmd.Flags(), lookupEnv); err != nil {
				return err
			}
			cfg, err := o.config(cmd.Flags(), lookupEnv, stderr)
			if err != nil {
				return err
			}
			return serve(cmd.Context(), cfg, sig)
		},
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SetArgs(args)
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	f := root.Flags()
	f.StringVar(&o.server, "server", client.DefaultAddr, "control plane gRPC address, host:port")
	f.StringVar(&o.name, "name", "", "agent name, unique among live agents (default: the name in --tls-cert, else the host name); against a batond with --agent-ca it must be the certificate's")
	f.StringArrayVar(&o.labels, "label", nil, "label key=value matched by task selectors; repeatable (the variable takes k=v,k=v)")
	f.IntVar(&o.slots, "slots", 0, fmt.Sprintf("how many children run at once (default: the number of CPUs, %d here)", runtime.NumCPU()))
	f.StringVar(&o.stateDir, "state-dir", "", "directory for the journal and per-attempt files (default: "+stateDirHelp+")")
	f.StringVar(&o.caFile, "ca-file", "", "PEM file of CAs to verify the control plane with; turns TLS on")
	f.BoolVar(&o.tls, "tls", false, "use TLS with the system's root CAs")
	f.StringVar(&o.certFile, "tls-cert", "", "client certificate (PEM) proving this agent's name to a control plane started with --agent-ca; re-read at every connection; turns TLS on")
	f.StringVar(&o.keyFile, "tls-key", "", "private key (PEM) of --tls-cert")
	f.DurationVar(&o.killGrace, "kill-grace", agent.DefaultKillGrace, "time between SIGTERM and SIGKILL when a child is cancelled or times out, unless the control plane names one")
	f.BoolVar(&o.fsync, "fsync", false, "flush every journal write to disk: outcomes survive a power loss, not only an agent crash")
	f.StringVar(&o.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	f.StringVar(&o.logFormat, "log-format", "text", "log format: text or json")
	f.StringArrayVar(&o.allow, "allow", nil, "program pattern tasks may run, an absolute path glob such as '/opt/etl/bin/*'; repeatable")
	f.StringVar(&o.allowFile, "allow-file", "", "file of --allow patterns, one per line; blank lines and lines starting with # are skipped")
	f.StringArrayVar(&o.allowEnv, "allow-env", nil, "environment name a task may set although it can change what runs (PATH, LD_LIBRARY_PATH, ...); repeatable")
	f.StringArrayVar(&o.allowDir, "allow-dir", nil, "directory a task's working_dir may be in (absolute); repeatable; with none, tasks must leave working_dir empty")
	f.BoolVar(&o.allowAny, "allow-any-command", false, "run any program, environment and working directory tasks ask for: no allowlist (a compromised control plane gets a shell on this host)")
	f.StringVar(&o.secretsDir, "secrets-dir", "", "directory of the secrets tasks name with secret:NAME env values, one file per secret")
	f.VisitAll(func(fl *pflag.Flag) {
		if env, ok := envs[fl.Name]; ok {
			fl.Usage += " [" + env + "]"
		}
	})

	if err := root.Execute(); err != nil {
		// A failed write to stderr has nowhere to be reported; the exit
		// code still says what happened.
		_, _ = fmt.Fprintln(stderr, "baton-agent:", err)
		if errors.As(err, new(usageError)) {
			return 2
		}
		return 1
	}
	return 0
}

// config validates the options and turns them into an agent.Config.
func (o *options) config(fs *pflag.FlagSet, lookupEnv func(string) (string, bool), stderr io.Writer) (agent.Config, error) {
	labels := make(map[string]string, len(o.labels))
	for _, l := range o.labels {
		k, v, ok := strings.Cut(l, "=")
		if !ok || strings.TrimSpace(k) == "" {
			return agent.Config{}, usagef("--label %q: want key=value", l)
		}
		labels[strings.TrimSpace(k)] = v
	}
	if o.slots < 0 || (o.slots == 0 && fs.Changed("slots")) {
		return agent.Config{}, usagef("--slots %d: must be at least 1", o.slots)
	}
	if o.killGrace < 0 {
		return agent.Config{}, usagef("--kill-grace %s: must not be negative", o.killGrace)
	}
	log, err := newLogger(o.logLevel, o.logFormat, stderr)
	if err != nil {
		return agent.Config{}, err
	}
	if (o.certFile == "") != (o.keyFile == "") {
		return agent.Config{}, usagef("--tls-cert and --tls-key must be given together")
	}
	name := o.name
	if name == "" && o.certFile != "" {
		// The certificate proves a name; use it rather than the host's.
		n, err := client.AgentCertFileName(o.certFile)
		if err != nil {
			return agent.Config{}, usagef("--tls-cert: %w", err)
		}
		name = n
	}
	if name == "" {
		h, err := os.Hostname()
		if err != nil {
			return agent.Config{}, usagef("--name: not given and the host name is unknown: %w", err)
		}
		name = h
	}
	policy, err := o.policy()
	if err != nil {
		return agent.Config{}, err
	}
	stateDir := o.stateDir
	if stateDir == "" {
		stateDir, err = defaultStateDir(name, lookupEnv)
		if err != nil {
			return agent.Config{}, usagef("--state-dir: not given and %w", err)
		}
	}
	return agent.Config{
		Server:     client.DialConfig{Addr: o.server, CAFile: o.caFile, TLS: o.tls, CertFile: o.certFile, KeyFile: o.keyFile},
		Name:       name,
		Labels:     labels,
		Slots:      o.slots,
		StateDir:   stateDir,
		Version:    version,
		KillGrace:  o.killGrace,
		Fsync:      o.fsync,
		Logger:     log,
		Policy:     policy,
		SecretsDir: o.secretsDir,
	}, nil
}

// noAllowlist explains how to give the agent an allowlist.
const noAllowlist = `no allowlist: name the programs tasks may run with --allow (repeatable) or --allow-file, or say --allow-any-command to run anything (a compromised control plane could then run any command here). For example:
  baton-agent --server batond01:7700 --allow '/opt/etl/bin/*' --allow /usr/bin/sqlcmd --allow-dir /data/etl
  baton-agent --server batond01:7700 --allow 'C:\Program Files\Microsoft SQL Server\*\DTS\Binn\DTExec.exe' --allow 'D:\etl\scripts\*.cmd'`

// policy builds the agent's allowlist from --allow, --allow-file,
// --allow-env, --allow-dir and --allow-any-command.
func (o *options) policy() (*allow.Policy, error) {
	patterns := slices.Clone(o.allow)
	if o.allowFile != "" {
		fromFile, err := readAllowFile(o.allowFile)
		if err != nil {
			return nil, usagef("--allow-file: %w", err)
		}
		patterns = append(patterns, fromFile...)
	}
	if o.allowAny {
		if len(patterns) > 0 || len(o.allowEnv) > 0 || len(o.allowDir) > 0 {
			return nil, usagef("--allow-any-command allows everything: leave out --allow, --allow-file, --allow-env and --allow-dir, or drop --allow-any-command")
		}
		return allow.Any(), nil
	}
	if len(patterns) == 0 {
		return nil, usagef("%s", noAllowlist)
	}
	p, err := allow.New(allow.Config{Programs: patterns, Env: o.allowEnv, Dirs: o.allowDir})
	if err != nil {
		return nil, usageError{err}
	}
	return p, nil
}

// maxAllowFile bounds an --allow-file.
const maxAllowFile = 1 << 20

// readAllowFile reads one pattern per line; blank lines and lines whose
// first non-blank character is # are skipped, and blanks around a pattern
// are dropped.
func readAllowFile(path string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer func() { _ = f.Close() }() // read only
	b, err := io.ReadAll(io.LimitReader(f, maxAllowFile+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if len(b) > maxAllowFile {
		return nil, fmt.Errorf("%s is larger than %d bytes", path, maxAllowFile)
	}
	var out []string
	for line := range strings.Lines(strings.TrimPrefix(string(b), "\uFEFF")) {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		out = append(out, line)
	}
	return out, nil
}

// serve runs the agent until it drains after the first signal, or is
// killed after the second.
func serve(ctx context.Context, cfg agent.Config, sig <-chan os.Signal) error {
	a, err := agent.New(cfg)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan struct{})
	defer close(done)
	go func() {
		select {
		case s := <-sig:
			cfg.Logger.Info("signal received: draining; send another to kill running children", slog.String("signal", s.String()))
			cancel()
		case <-done:
			return
		}
		select {
		case s := <-sig:
			cfg.Logger.Warn("second signal received: killing running children", slog.String("signal", s.String()))
			a.Abort()
		case <-done:
		}
	}()
	return a.Run(ctx)
}

// applyEnv sets every flag not given on the command line from its
// environment variable. BATON_AGENT_LABELS holds comma-separated k=v pairs;
// the variables of the other repeatable flags hold lists (listSeps).
func applyEnv(fs *pflag.FlagSet, lookupEnv func(string) (string, bool)) error {
	var errs []error
	fs.VisitAll(func(f *pflag.Flag) {
		env, ok := envs[f.Name]
		if !ok || f.Changed {
			return
		}
		v, set := lookupEnv(env)
		if !set {
			return
		}
		values := []string{v}
		if seps, ok := listSeps[f.Name]; ok {
			values = nil
			for _, l := range strings.FieldsFunc(v, func(r rune) bool { return strings.ContainsRune(seps, r) }) {
				if l = strings.TrimSpace(l); l == "" {
					continue
				}
				if f.Name == "label" {
					if k, _, ok := strings.Cut(l, "="); !ok || strings.TrimSpace(k) == "" {
						errs = append(errs, usagef("%s: %q: want key=value", env, l))
						return
					}
				}
				values = append(values, l)
			}
		}
		for _, val := range values {
			if err := fs.Set(f.Name, val); err != nil {
				errs = append(errs, usagef("%s=%q: %w", env, v, err))
				return
			}
		}
	})
	return errors.Join(errs...)
}

func newLogger(level, format string, w io.Writer) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, usagef("--log-level %q: want debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: l}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, usagef("--log-format %q: want text or json", format)
}

const stateDirHelp = `$XDG_STATE_HOME/baton-agent/<name>, else ~/.local/state/baton-agent/<name>; %ProgramData%\baton-agent\<name> on Windows`

// defaultStateDir returns the per-OS default state directory for an agent
// called name.
func defaultStateDir(name string, lookupEnv func(string) (string, bool)) (string, error) {
	if runtime.GOOS == "windows" {
		base, _ := lookupEnv("ProgramData")
		if base == "" {
			return "", errors.New("%ProgramData% is not set")
		}
		return filepath.Join(base, "baton-agent", name), nil
	}
	if v, ok := lookupEnv("XDG_STATE_HOME"); ok && v != "" {
		return filepath.Join(v, "baton-agent", name), nil
	}
	if home, ok := lookupEnv("HOME"); ok && home != "" {
		return filepath.Join(home, ".local", "state", "baton-agent", name), nil
	}
	return "", errors.New("neither $XDG_STATE_HOME nor $HOME is set")
}

// usageError is a mistake on the command line; the agent exits 2 for it.
type usageError struct{ error }

func (e usageError) Unwrap() error { return e.error }

func usagef(format string, args ...any) error { return usageError{fmt.Errorf(format, args...)} }
