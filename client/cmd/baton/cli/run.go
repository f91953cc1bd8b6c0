package cli

import (
	"cmp"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/batonhq/baton/client"
	batonv1 "github.com/batonhq/baton/gen/baton/v1"
)

// stderrLines is how many lines of a failed task's stderr tail run get
// shows.
const stderrLines = 10

func (a *app) runCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Start, inspect, watch, cancel and restart runs",
		Example: `  baton run start nightly-dw-load --wait
  baton run list --job nightly-dw-load
  baton run get 42
  baton run watch 42
  baton run cancel 42 --reason "wrong load date"
  baton run restart 42 --wait
  baton run history 42`,
	}
	cmd.RunE = groupRun
	cmd.AddCommand(a.runStartCommand(), a.runGetCommand(), a.runListCommand(),
		a.runWatchCommand(), a.runCancelCommand(), a.runRestartCommand(), a.runHistoryCommand())
	return cmd
}

func (a *app) runStartCommand() *cobra.Command {
	var (
		params    []string
		requestID string
		wait      bool
	)
	cmd := &cobra.Command{
		Use:   "start JOB",
		Short: "Start a run of a job's current version",
		Long: `Start a run of a job's current version and print its run id on a line of its
own, so scripts can capture it. With --wait, then follow the run as run watch
does and exit 0 if it succeeds, 1 if it fails or is cancelled.

--param overrides a job parameter; repeat it for several. --request-id makes
the start idempotent: repeating it returns the run it started the first time.

With -o json, prints the StartRunResponse; with --wait too, it prints that
response on one line and then each of the run's events as one JSON line.`,
		Example: `  baton run start nightly-dw-load
  RUN=$(baton run start nightly-dw-load --param load_date=2026-11-21)
  baton run start nightly-dw-load --request-id nightly-2026-11-21 --wait`,
		Args: wantArgs("JOB"),
		RunE: func(cmd *cobra.Command, args []string) error {
			p, err := parseKeyValues("param", params)
			if err != nil {
				return err
			}
			c, err := a.client()
			if err != nil {
				return err
			}
			ctx, cancel := a.unary(cmd.Context())
			defer cancel()
			run, created, err := c.StartRun(ctx, &client.StartRunParams{Job: args[0], Params: p, RequestID: requestID})
			if err != nil {
				return err
			}
			if a.json() {
				resp := &batonv1.StartRunResponse{Run: run, Created: created}
				if wait {
					err = writeJSONLine(a.env.Stdout, resp)
				} else {
					err = writeJSON(a.env.Stdout, resp)
				}
			} else {
				_, err = fmt.Fprintf(a.env.Stdout, "%d\n", run.GetId())
			}
			if err != nil {
				return err
			}
			if !created {
				notef(a.env.Stderr, "baton: request id %q already started run %d; not started again\n", requestID, run.GetId())
			}
			if !wait {
				return nil
			}
			// A run started before may have been restarted since: follow
			// its latest restart.
			restart := int32(0)
			if !created {
				restart = latestRestart
			}
			return a.watch(cmd.Context(), run.GetId(), restart)
		},
	}
	f := cmd.Flags()
	f.StringArrayVar(&params, "param", nil, "job parameter as key=value; repeat for several")
	f.StringVar(&requestID, "request-id", "", "idempotency key: a repeated id returns the run it started")
	f.BoolVar(&wait, "wait", false, "follow the run to its end, like run watch, and exit by its outcome")
	return cmd
}

// parseKeyValues reads repeated --flag key=value flags (--param, --label).
func parseKeyValues(flag string, raw []string) (map[string]string, error) {
	if len(raw) == 0 {
		return nil, nil
	}
	out := make(map[string]string, len(raw))
	for _, kv := range raw {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return nil, usagef("invalid --%s %q: want key=value", flag, kv)
		}
		if k == "" {
			return nil, usagef("invalid --%s %q: the key before '=' is empty", flag, kv)
		}
		if _, dup := out[k]; dup {
			return nil, usagef("invalid --%s %q: %s is given twice", flag, kv, k)
		}
		out[k] = v
	}
	return out, nil
}

func (a *app) runGetCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "get RUN",
		Short: "Show a run and every task instance",
		Long: `Show a run: its job, state, times, parameters, how often it was restarted and
its error, then a table of its task instances (task, item, state, agent,
attempts, exit code, duration; the latest attempt's). A failed instance whose
attempt its agent refused (the program, an environment name or the working
directory is outside the agent's allowlist; nothing ran) shows as rejected.
For each failed, rejected or lost task instance, its error and the last lines
of its stderr follow. run history lists every attempt.`,
		Example: "  baton run get 42\n  baton run get 42 -o json | jq '.run.tasks[] | select(.state == \"TASK_STATE_FAILED\")'",
		Args:    wantArgs("RUN"),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := parseRunID(args[0])
			if err != nil {
				return err
			}
			c, err := a.client()
			if err != nil {
				return err
			}
			ctx, cancel := a.unary(cmd.Context())
			defer cancel()
			run, err := c.GetRun(ctx, id)
			if err != nil {
				return err
			}
			if a.json() {
				return writeJSON(a.env.Stdout, &batonv1.GetRunResponse{Run: run})
			}
			return a.printRun(a.env.Stdout, run)
		},
	}
}

func (a *app) printRun(w io.Writer, run *batonv1.Run) error {
	var b strings.Builder
	fmt.Fprintf(&b, "run %d: %s version %d, %s\n", run.GetId(), run.GetJob(), run.GetJobVersion(), runState(run.GetState()))
	t := newTable(&b)
	t.row("created", a.clock.timestamp(run.GetCreateTime()))
	if run.GetStartTime() != nil {
		t.row("started", a.clock.timestamp(run.GetStartTime()))
	}
	if run.GetEndTime() != nil {
		t.row("ended", fmt.Sprintf("%s (took %s)", a.clock.timestamp(run.GetEndTime()),
			a.clock.elapsed(cmp.Or(run.GetStartTime(), run.GetCreateTime()), run.GetEndTime())))
	} else if run.GetStartTime() != nil {
		t.row("running", "for "+a.clock.elapsed(run.GetStartTime(), nil))
	}
	if len(run.GetParams()) > 0 {
		t.row("params", formatLabels(run.GetParams()))
	}
	if run.GetRestartCount() > 0 {
		restarts := strconv.Itoa(int(run.GetRestartCount()))
		if run.GetRestartTime() != nil {
			restarts += ", the latest at " + a.clock.timestamp(run.GetRestartTime())
		}
		t.row("restarts", restarts)
	}
	if run.GetRequestId() != "" {
		t.row("request id", run.GetRequestId())
	}
	if run.GetError() != "" {
		t.row("error", run.GetError())
	}
	if err := t.flush(); err != nil {
		return err
	}

	if len(run.GetTasks()) > 0 {
		b.WriteString("\n")
		t = newTable(&b, "TASK", "ITEM", "STATE", "AGENT", "ATTEMPTS", "EXIT", "DURATION")
		for _, tr := range run.GetTasks() {
			item := ""
			if tr.ItemIndex != nil {
				item = strconv.Itoa(int(tr.GetItemIndex()))
				if tr.GetItem() != "" {
					item += " (" + tr.GetItem() + ")"
				}
			}
			exit := ""
			if tr.ExitCode != nil {
				exit = strconv.Itoa(int(tr.GetExitCode()))
			}
			attempts := ""
			if tr.GetAttempts() > 0 {
				attempts = strconv.Itoa(int(tr.GetAttempts()))
			}
			t.row(tr.GetTask(), item, taskRunState(tr), tr.GetAgent(), attempts, exit,
				a.clock.elapsed(tr.GetStartTime(), tr.GetEndTime()))
		}
		if err := t.flush(); err != nil {
			return err
		}
	}

	for _, tr := range run.GetTasks() {
		if tr.GetState() != batonv1.TaskState_TASK_STATE_FAILED && tr.GetState() != batonv1.TaskState_TASK_STATE_LOST {
			continue
		}
		fmt.Fprintf(&b, "\n%s %s: %s\n", newInstance(tr.GetTask(), tr.ItemIndex), taskRunState(tr),
			cmp.Or(tr.GetError(), "no error message"))
		if lines := lastLines(tr.GetStderrTail(), stderrLines); len(lines) > 0 {
			fmt.Fprintf(&b, "  stderr, last %s:\n", plural(len(lines), "line"))
			for _, l := range lines {
				b.WriteString("    " + l + "\n")
			}
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// taskRunState names a task instance's state, saying "rejected" for a
// failed instance whose latest attempt its agent's allowlist refused:
// nothing ran, and the fix is on the agent or in the job, not a retry.
func taskRunState(tr *batonv1.TaskRun) string {
	if tr.GetState() == batonv1.TaskState_TASK_STATE_FAILED && tr.GetAttemptState() == batonv1.AttemptState_ATTEMPT_STATE_REJECTED {
		return "rejected"
	}
	return taskState(tr.GetState())
}

func (a *app) runListCommand() *cobra.Command {
	var (
		job   string
		limit int
	)
	cmd := &cobra.Command{
		Use:     "list",
		Short:   "List runs, newest first",
		Example: "  baton run list\n  baton run list --job nightly-dw-load --limit 5",
		Args:    wantArgs(),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if limit <= 0 {
				return usagef("invalid --limit %d: must be positive", limit)
			}
			c, err := a.client()
			if err != nil {
				return err
			}
			ctx, cancel := a.unary(cmd.Context())
			defer cancel()
			runs, err := c.ListRuns(ctx, job, limit)
			if err != nil {
				return err
			}
			if a.json() {
				return writeJSON(a.env.Stdout, &batonv1.ListRunsResponse{Runs: runs})
			}
			t := newTable(a.env.Stdout, "RUN", "JOB", "VERSION", "STATE", "STARTED", "DURATION", "RESTARTS")
			for _, r := range runs {
				start := cmp.Or(r.GetStartTime(), r.GetCreateTime())
				t.row(strconv.FormatInt(r.GetId(), 10), r.GetJob(), strconv.Itoa(int(r.GetJobVersion())),
					runState(r.GetState()), a.clock.timestamp(start), orDash(a.clock.elapsed(start, r.GetEndTime())),
					strconv.Itoa(int(r.GetRestartCount())))
			}
			return t.flush()
		},
	}
	cmd.Flags().StringVar(&job, "job", "", "only this job's runs")
	cmd.Flags().IntVar(&limit, "limit", 20, "at most this many runs")
	return cmd
}

func (a *app) runWatchCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "watch RUN",
		Short: "Follow a run's progress to its end",
		Long: `Follow a run from its first event to its end: a line per task state change
(time, [done/total], task and item, state, agent, duration), then a summary.
If the connection breaks, baton reconnects and resumes where it left off.

A run that was restarted is followed from its latest restart on; the events
of earlier ones are not shown (see run history for every attempt). If the
run is restarted while baton watches it, baton follows the restart too.

Exits 0 when the run succeeds and 1 when it fails or is cancelled. With
-o json, prints each event as one JSON object per line.`,
		Example: "  baton run watch 42\n  baton run watch 42 -o json | jq -c 'select(.taskState == \"TASK_STATE_FAILED\")'",
		Args:    wantArgs("RUN"),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := parseRunID(args[0])
			if err != nil {
				return err
			}
			return a.watch(cmd.Context(), id, latestRestart)
		},
	}
}

func (a *app) runCancelCommand() *cobra.Command {
	var reason string
	cmd := &cobra.Command{
		Use:   "cancel RUN",
		Short: "Cancel a run, stopping its running children",
		Long: `Cancel a run: the control plane stops every running child (SIGTERM, then
SIGKILL after a grace period) and marks the run cancelled. A run that has
already ended cannot be cancelled.`,
		Example: "  baton run cancel 42\n  baton run cancel 42 --reason \"wrong load date\"",
		Args:    wantArgs("RUN"),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := parseRunID(args[0])
			if err != nil {
				return err
			}
			c, err := a.client()
			if err != nil {
				return err
			}
			ctx, cancel := a.unary(cmd.Context())
			defer cancel()
			run, err := c.CancelRun(ctx, id, reason)
			if err != nil {
				return err
			}
			if a.json() {
				return writeJSON(a.env.Stdout, &batonv1.CancelRunResponse{Run: run})
			}
			_, err = fmt.Fprintf(a.env.Stdout, "run %d: %s\n", id, runState(run.GetState()))
			return err
		},
	}
	cmd.Flags().StringVar(&reason, "reason", "", "why, recorded as the run's error")
	return cmd
}
