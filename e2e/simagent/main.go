// Command simagent runs many simulated Baton agents in one process, so that
// benchmarks can load the control plane without starting child processes.
//
// Each simulated agent holds its own gRPC connection and Connect stream,
// just as a fleet of baton-agents would: it says Hello, sends a Heartbeat at
// the interval the Welcome names (the first one at a random point within
// that interval, so a fleet that connected together does not heartbeat in
// lockstep), and answers every StartTask at once with TaskStarted and a
// successful TaskFinished. It keeps each outcome in memory until the
// control plane acknowledges it, lists the unacknowledged ones in the Hello
// of a reconnect, answers a repeated StartTask with the outcome it already
// has, and reconnects with jittered exponential backoff when a stream
// breaks.
//
// Usage:
//
//	simagent --server 127.0.0.1:7700 --count 1000 --slots 100 --prefix sim
//
// Against a control plane with TLS and --agent-ca, --ca-file verifies the
// control plane and --cert-dir holds each agent's client certificate, as
// 'baton cert agent' or pki.Agent writes them (agent-NAME.crt and
// agent-NAME.key):
//
//	simagent --server 127.0.0.1:7700 --count 1000 --ca-file certs/ca.crt --cert-dir certs
//
// Once every agent has received its first Welcome, simagent prints
// {"welcomed":N} on a line of its own to stdout. On SIGINT or SIGTERM it
// closes every stream, prints its totals as one JSON line and exits 0.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
)

func main() { os.Exit(mainCode()) }

// mainCode runs the fleet until SIGINT or SIGTERM and returns the exit
// code. It is apart from main so that its deferred calls run before
// os.Exit.
func mainCode() int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return run(ctx, os.Args[1:], os.Stdout, os.Stderr)
}

// run parses args, runs the fleet until ctx is done and returns the exit
// code: 0 after a clean stop, 1 when the fleet failed, 2 on bad usage. A
// failed write to stderr has nowhere to be reported; the exit code still
// says what happened.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("simagent", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		cfg      Config
		labels   labelFlag
		logLevel string
	)
	fs.StringVar(&cfg.Server.Addr, "server", "127.0.0.1:7700", "control plane gRPC address")
	fs.IntVar(&cfg.Count, "count", 1, "how many simulated agents to run")
	fs.IntVar(&cfg.Slots, "slots", 1, "slots each agent advertises")
	fs.StringVar(&cfg.Prefix, "prefix", "sim", "agent names are PREFIX-1 ... PREFIX-COUNT")
	fs.Var(&labels, "label", "label k=v every agent advertises (repeatable)")
	fs.StringVar(&cfg.Server.CAFile, "ca-file", "", "PEM file of CAs to verify the control plane with; turns TLS on")
	fs.StringVar(&cfg.CertDir, "cert-dir", "", "directory holding each agent's client certificate agent-NAME.crt and key agent-NAME.key; turns TLS on")
	fs.IntVar(&cfg.DialParallel, "dial-parallel", DefaultDialParallel, "how many agents connect at once while the fleet starts")
	fs.StringVar(&logLevel, "log-level", "warn", "log level: debug, info, warn or error")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		_, _ = fmt.Fprintf(stderr, "simagent: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(logLevel)); err != nil {
		_, _ = fmt.Fprintf(stderr, "simagent: --log-level: %q is not debug, info, warn or error\n", logLevel)
		return 2
	}
	cfg.Labels = labels.m
	cfg.Logger = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	enc := json.NewEncoder(stdout)
	cfg.OnWelcomed = func(n int) { _ = enc.Encode(map[string]int{"welcomed": n}) }

	fleet, err := NewFleet(cfg)
	if err != nil {
		_, _ = fmt.Fprintln(stderr, "simagent:", err)
		return 2
	}
	err = fleet.Run(ctx)
	_ = enc.Encode(fleet.Totals())
	if err != nil {
		_, _ = fmt.Fprintln(stderr, "simagent:", err)
		return 1
	}
	return 0
}

// labelFlag collects repeated --label k=v flags.
type labelFlag struct{ m map[string]string }

func (l *labelFlag) String() string { return fmt.Sprint(l.m) }

func (l *labelFlag) Set(v string) error {
	k, val, ok := strings.Cut(v, "=")
	if !ok || k == "" {
		return errors.New("want k=v with a non-empty key")
	}
	if l.m == nil {
		l.m = map[string]string{}
	}
	l.m[k] = val
	return nil
}
