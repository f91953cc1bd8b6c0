// Package cli is the baton command line: the commands, their flags and
// their output. The baton binary's main calls [Main]; tests and end-to-end
// suites run the same code in-process through [Env.Run].
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/batonhq/baton/client"
)

// Exit codes of the baton command.
const (
	// ExitOK means the command succeeded; for run watch and run start
	// --wait, that the run succeeded.
	ExitOK = 0
	// ExitRunFailed means the run watched by run watch or run start --wait
	// failed or was cancelled.
	ExitRunFailed = 1
	// ExitError means anything else went wrong: a usage error, a control
	// plane that cannot be reached, an argument the server refused.
	ExitError = 2
)

// defaultTimeout bounds each unary call unless --timeout says otherwise.
const defaultTimeout = 30 * time.Second

// Env is the process the CLI runs in: its streams, environment variables,
// clock and version. The zero value reads nothing and writes nowhere; Main
// fills it from the real process.
type Env struct {
	// Stdin is read by `job apply -f -`. Nil reads as empty.
	Stdin io.Reader
	// Stdout receives results; Stderr receives errors and notes. Nil
	// discards.
	Stdout, Stderr io.Writer
	// LookupEnv returns an environment variable (BATON_ADDR, …). Nil means
	// no variables are set.
	LookupEnv func(key string) (string, bool)
	// Now returns the current time. Defaults to time.Now.
	Now func() time.Time
	// Location is the zone times are shown in. Defaults to time.Local.
	Location *time.Location
	// Version is printed by --version. Defaults to "dev".
	Version string
}

// Main runs the baton command line with args (without the program name) in
// the real process environment and returns the exit code.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	e := &Env{Stdin: os.Stdin, Stdout: stdout, Stderr: stderr, LookupEnv: os.LookupEnv}
	return e.Run(ctx, args)
}

// Run runs the baton command line with args (without the program name) and
// returns the exit code: [ExitOK], [ExitRunFailed] or [ExitError]. Errors
// are printed to e.Stderr as "baton: <message>".
func (e *Env) Run(ctx context.Context, args []string) int {
	env := *e
	if env.Stdin == nil {
		env.Stdin = strings.NewReader("")
	}
	if env.Stdout == nil {
		env.Stdout = io.Discard
	}
	if env.Stderr == nil {
		env.Stderr = io.Discard
	}
	if env.LookupEnv == nil {
		env.LookupEnv = func(string) (string, bool) { return "", false }
	}
	if env.Now == nil {
		env.Now = time.Now
	}
	if env.Location == nil {
		env.Location = time.Local
	}
	if env.Version == "" {
		env.Version = "dev"
	}

	a := &app{env: &env, clock: clock{now: env.Now, loc: env.Location}}
	defer a.close()
	root := a.rootCommand()
	root.SetArgs(args)
	root.SetIn(env.Stdin)
	root.SetOut(env.Stdout)
	root.SetErr(env.Stderr)
	cmd, err := root.ExecuteContextC(ctx)
	if err == nil {
		return ExitOK
	}
	if cmd == nil {
		cmd = root
	}
	var ended *runEndedError
	if errors.As(err, &ended) {
		notef(env.Stderr, "baton: %s\n", ended)
		return ExitRunFailed
	}
	if ctx.Err() != nil {
		// Interrupted (Ctrl-C): the error is only the echo of that.
		notef(env.Stderr, "baton: interrupted: %v\n", err)
		return ExitError
	}
	notef(env.Stderr, "baton: %s\n", a.describe(err))
	var ce *commandError
	var ue *usageError
	if !errors.As(err, &ce) || errors.As(err, &ue) {
		notef(env.Stderr, "Run '%s --help' for usage.\n", cmd.CommandPath())
	}
	return ExitError
}

// notef writes a diagnostic to w, the standard error. A failed write is
// dropped: standard error is where it would have been reported.
func notef(w io.Writer, format string, args ...any) {
	_, _ = fmt.Fprintf(w, format, args...)
}

// app holds one invocation's settings and its connection.
type app struct {
	env   *Env
	clock clock

	addr    string
	caFile  string
	tls     bool
	output  string
	timeout time.Duration

	token         string
	tokenFile     string
	insecureToken bool

	conn *grpc.ClientConn
	c    *client.Client
}

// envTwins maps each global flag to the environment variable that sets it
// when the flag is not given. --output's twin is not BATON_OUTPUT: that
// name is taken by the file children write their outputs to, and a task
// that calls baton must not pick it up as a format.
var envTwins = []struct{ flag, env string }{
	{"addr", "BATON_ADDR"},
	{"ca-file", "BATON_CA_FILE"},
	{"tls", "BATON_TLS"},
	{"output", "BATON_OUTPUT_FORMAT"},
	{"timeout", "BATON_TIMEOUT"},
	{"token", "BATON_TOKEN"},
	{"token-file", "BATON_TOKEN_FILE"},
	{"insecure-token", "BATON_INSECURE_TOKEN"},
}

func (a *app) rootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:   "baton",
		Short: "Drive a Baton control plane: jobs, runs, agents and logs",
		Long: `baton talks to batond, the Baton control plane, over gRPC.

Apply job files, start runs and watch them to the end, restart the ones
that failed, inspect task instances, their attempts and logs, and list the
connected agents.

Exit codes: 0 success (for a watched run: it succeeded), 1 the watched run
failed or was cancelled, 2 any other error.`,
		Example: `  baton job apply -f nightly.yaml
  baton run start nightly-dw-load --param load_date=2026-11-21 --wait
  BATON_ADDR=batond.example.com:7700 baton --tls agents`,
		Version:           a.env.Version,
		SilenceErrors:     true,
		SilenceUsage:      true,
		PersistentPreRunE: a.applyGlobals,
	}
	f := root.PersistentFlags()
	f.StringVar(&a.addr, "addr", client.DefaultAddr, "control plane gRPC address, host:port (env BATON_ADDR)")
	f.StringVar(&a.caFile, "ca-file", "", "PEM file of CAs to verify the control plane with; turns TLS on (env BATON_CA_FILE)")
	f.BoolVar(&a.tls, "tls", false, "use TLS with the system's root CAs (env BATON_TLS)")
	f.StringVarP(&a.output, "output", "o", outputTable, "output format: table or json (env BATON_OUTPUT_FORMAT)")
	f.DurationVar(&a.timeout, "timeout", defaultTimeout, "time limit of each request; 0 for none; watching is not limited (env BATON_TIMEOUT)")
	f.StringVar(&a.token, "token", "", "API token to send (prefer env BATON_TOKEN or --token-file: a flag shows in the process list)")
	f.StringVar(&a.tokenFile, "token-file", "", "file holding the API token (env BATON_TOKEN_FILE)")
	f.BoolVar(&a.insecureToken, "insecure-token", false, "allow sending the token without TLS to a non-loopback address (env BATON_INSECURE_TOKEN)")
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return &usageError{err: err} })

	root.AddCommand(a.jobCommand(), a.runCommand(), a.agentsCommand(), a.logsCommand(), a.tokenCommand(), a.auditCommand(), a.certCommand())
	markCommandErrors(root)
	return root
}

// applyGlobals fills global flags that were not given from their
// environment variables and checks them.
func (a *app) applyGlobals(cmd *cobra.Command, _ []string) error {
	flags := cmd.Root().PersistentFlags()
	for _, tw := range envTwins {
		if flags.Changed(tw.flag) {
			continue
		}
		v, ok := a.env.LookupEnv(tw.env)
		if !ok || v == "" {
			continue
		}
		if err := flags.Set(tw.flag, v); err != nil {
			return &usageError{err: fmt.Errorf("invalid %s %q: %w", tw.env, v, err)}
		}
	}
	if a.output != outputTable && a.output != outputJSON {
		return &usageError{err: fmt.Errorf("invalid --output %q: want table or json", a.output)}
	}
	if a.timeout < 0 {
		return &usageError{err: fmt.Errorf("invalid --timeout %s: must not be negative", a.timeout)}
	}
	return nil
}

// groupRun is the RunE of a command that only groups subcommands: it
// shows the group's help, and refuses an unknown subcommand (which cobra
// would otherwise answer with the help and success).
func groupRun(cmd *cobra.Command, args []string) error {
	if len(args) > 0 {
		return usagef("unknown command %q for %q", args[0], cmd.CommandPath())
	}
	return cmd.Help()
}

// markCommandErrors wraps every command's RunE so that Run can tell an
// error from running a command apart from cobra's own usage errors
// (unknown command, wrong flag, missing argument).
func markCommandErrors(c *cobra.Command) {
	if run := c.RunE; run != nil {
		c.RunE = func(cmd *cobra.Command, args []string) error {
			if err := run(cmd, args); err != nil {
				return &commandError{err: err}
			}
			return nil
		}
	}
	for _, sub := range c.Commands() {
		markCommandErrors(sub)
	}
}

// client dials the control plane on first use.
func (a *app) client() (*client.Client, error) {
	if a.c != nil {
		return a.c, nil
	}
	token, err := a.apiToken()
	if err != nil {
		return nil, err
	}
	conn, err := client.Dial(client.DialConfig{Addr: a.addr, CAFile: a.caFile, TLS: a.tls, Token: token, InsecureToken: a.insecureToken})
	if err != nil {
		return nil, err
	}
	a.conn, a.c = conn, client.New(conn)
	return a.c, nil
}

// maxTokenFile bounds what --token-file reads.
const maxTokenFile = 4096

// apiToken returns the token to send: --token (or BATON_TOKEN), else the
// content of --token-file (or BATON_TOKEN_FILE), else none.
func (a *app) apiToken() (string, error) {
	if a.token != "" {
		return strings.TrimSpace(a.token), nil
	}
	if a.tokenFile == "" {
		return "", nil
	}
	f, err := os.Open(a.tokenFile)
	if err != nil {
		return "", fmt.Errorf("--token-file: %w", err)
	}
	defer func() { _ = f.Close() }() // read only: nothing to lose
	b, err := io.ReadAll(io.LimitReader(f, maxTokenFile+1))
	if err != nil {
		return "", fmt.Errorf("--token-file %s: %w", a.tokenFile, err)
	}
	tok := strings.TrimSpace(string(b))
	if len(b) > maxTokenFile || tok == "" || strings.ContainsAny(tok, " \t\r\n") {
		return "", fmt.Errorf("--token-file %s: want one token (baton_...) and nothing else", a.tokenFile)
	}
	return tok, nil
}

func (a *app) close() {
	if a.conn != nil {
		_ = a.conn.Close()
	}
}

// unary returns the context for one unary call, bounded by --timeout.
func (a *app) unary(ctx context.Context) (context.Context, context.CancelFunc) {
	if a.timeout <= 0 {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, a.timeout)
}

func (a *app) json() bool { return a.output == outputJSON }

// describe turns an error into the message printed after "baton: ".
func (a *app) describe(err error) string {
	var se interface{ GRPCStatus() *status.Status }
	if !errors.As(err, &se) {
		return err.Error()
	}
	st := se.GRPCStatus()
	switch st.Code() {
	case codes.Unavailable:
		return fmt.Sprintf("cannot reach the control plane at %s: %s\n"+
			"hint: is batond running there? Set --addr or BATON_ADDR to its gRPC address.", a.addr, st.Message())
	case codes.DeadlineExceeded:
		return fmt.Sprintf("%s\nhint: no answer from %s within --timeout %s; check --addr/BATON_ADDR or raise --timeout.",
			err, a.addr, a.timeout)
	case codes.InvalidArgument:
		return err.Error() + missingViolations(st, err.Error())
	}
	return err.Error()
}

// missingViolations lists the google.rpc.BadRequest field violations of st
// that msg does not already say, one per line.
func missingViolations(st *status.Status, msg string) string {
	var b strings.Builder
	for _, d := range st.Details() {
		br, ok := d.(*errdetails.BadRequest)
		if !ok {
			continue
		}
		for _, v := range br.GetFieldViolations() {
			if strings.Contains(msg, v.GetDescription()) {
				continue
			}
			fmt.Fprintf(&b, "\n  %s: %s", v.GetField(), v.GetDescription())
		}
	}
	return b.String()
}

// usageError is a mistake in the command line itself.
type usageError struct{ err error }

func (e *usageError) Error() string { return e.err.Error() }
func (e *usageError) Unwrap() error { return e.err }

func usagef(format string, args ...any) error {
	return &usageError{err: fmt.Errorf(format, args...)}
}

// commandError is an error returned while running a command, as opposed to
// one cobra returns while parsing the command line.
type commandError struct{ err error }

func (e *commandError) Error() string { return e.err.Error() }
func (e *commandError) Unwrap() error { return e.err }

// runEndedError says a watched run ended without succeeding.
type runEndedError struct {
	id     int64
	state  string
	reason string
}

func (e *runEndedError) Error() string {
	if e.reason == "" {
		return fmt.Sprintf("run %d %s", e.id, e.state)
	}
	return fmt.Sprintf("run %d %s: %s", e.id, e.state, e.reason)
}

// wantArgs returns a cobra.PositionalArgs that wants exactly the named
// arguments and names the missing ones.
func wantArgs(names ...string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, got []string) error {
		switch {
		case len(got) < len(names):
			return usagef("%s needs %s", cmd.CommandPath(), strings.Join(names[len(got):], " and "))
		case len(got) > len(names):
			return usagef("%s takes %d argument(s), got %d: %s", cmd.CommandPath(), len(names), len(got), strings.Join(got, " "))
		}
		return nil
	}
}

// parseRunID reads a run id argument.
func parseRunID(s string) (int64, error) {
	id, err := strconv.ParseInt(s, 10, 64)
	if err != nil || id <= 0 {
		return 0, usagef("invalid run id %q: want a positive integer", s)
	}
	return id, nil
}
