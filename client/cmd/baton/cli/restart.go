package cli

import (
	"fmt"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/batonhq/baton/client"
	batonv1 "github.com/batonhq/baton/gen/baton/v1"
)

func (a *app) runRestartCommand() *cobra.Command {
	var (
		from   string
		all    bool
		reason string
		wait   bool
	)
	cmd := &cobra.Command{
		Use:   "restart RUN [--from TASK | --all]",
		Short: "Restart a run that has ended, under the same run id",
		Long: `Restart a run that has ended, typically one that failed, was cancelled or
timed out. It keeps its run id; its restart count grows by one and the new
attempts join its history (see run history).

By default the task instances that did not succeed run again: failed,
blocked, cancelled, lost and never-run ones. Succeeded instances are kept
with their outputs, and a for-each task runs only its unfinished items.
--from TASK also runs TASK and everything downstream of it again, succeeded
or not. --all runs every task instance again. --from and --all cannot be
combined.

A run still active cannot be restarted: wait for it to end or cancel it
first.

With --wait, then follow the restart as run watch does, without the events
from before it, and exit 0 if the run succeeds, 1 if it fails or is
cancelled.

With -o json, prints the RestartRunResponse; with --wait too, it prints that
response on one line and then each of the restart's events as one JSON line.`,
		Example: `  baton run restart 42
  baton run restart 42 --reason "PK_Client duplicates removed" --wait
  baton run restart 42 --from per-client
  baton run restart 42 --all -o json`,
		Args: wantArgs("RUN"),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := parseRunID(args[0])
			if err != nil {
				return err
			}
			if cmd.Flags().Changed("from") {
				if all {
					return usagef("--from and --all cannot be combined: --all already runs every task again")
				}
				if from == "" {
					return usagef("invalid --from \"\": want a task name")
				}
			}
			c, err := a.client()
			if err != nil {
				return err
			}
			ctx, cancel := a.unary(cmd.Context())
			defer cancel()
			run, err := c.RestartRun(ctx, &client.RestartRunParams{RunID: id, From: from, All: all, Reason: reason})
			if status.Code(err) == codes.FailedPrecondition {
				return fmt.Errorf("%w\nhint: 'baton run watch %d' follows it to its end; 'baton run cancel %d' stops it", err, id, id)
			}
			if err != nil {
				return err
			}
			if a.json() {
				resp := &batonv1.RestartRunResponse{Run: run}
				if wait {
					err = writeJSONLine(a.env.Stdout, resp)
				} else {
					err = writeJSON(a.env.Stdout, resp)
				}
			} else {
				_, err = fmt.Fprintf(a.env.Stdout, "run %d restarted (restart %d): %s\n",
					id, run.GetRestartCount(), runState(run.GetState()))
			}
			if err != nil || !wait {
				return err
			}
			return a.watch(cmd.Context(), id, run.GetRestartCount())
		},
	}
	f := cmd.Flags()
	f.StringVar(&from, "from", "", "also run this task and everything downstream of it again")
	f.BoolVar(&all, "all", false, "run every task instance again")
	f.StringVar(&reason, "reason", "", "why, recorded with the restart")
	f.BoolVar(&wait, "wait", false, "follow the restart, like run watch, and exit by its outcome")
	return cmd
}
