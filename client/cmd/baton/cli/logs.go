package cli

import (
	"io"
	"strings"

	"github.com/spf13/cobra"

	"github.com/batonhq/baton/client"
	batonv1 "github.com/batonhq/baton/gen/baton/v1"
)

// Values of logs --stream.
const (
	streamAll    = "all"
	streamStdout = "stdout"
	streamStderr = "stderr"
)

func (a *app) logsCommand() *cobra.Command {
	var (
		item    int32
		attempt int64
		stream  string
	)
	cmd := &cobra.Command{
		Use:   "logs RUN TASK",
		Short: "Print the stored stdout and stderr of a task's attempt",
		Long: `Print what a task's child wrote, as the control plane stored it: by default
the latest attempt's stdout and stderr in the order they were written. Both
go to standard output, so they can be redirected together.

The stored log of an attempt is capped; when a log was capped, its head and
its tail are printed with a marker between them.`,
		Example: `  baton logs 42 stage-customers
  baton logs 42 per-client --item 3 --stream stderr
  baton logs 42 stage-orders --attempt 118 > stage-orders.log`,
		Args: wantArgs("RUN", "TASK"),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := parseRunID(args[0])
			if err != nil {
				return err
			}
			if stream != streamAll && stream != streamStdout && stream != streamStderr {
				return usagef("invalid --stream %q: want stdout, stderr or all", stream)
			}
			p := &client.TaskLogsParams{RunID: id, Task: args[1], AttemptID: attempt}
			if cmd.Flags().Changed("item") {
				if item < 0 {
					return usagef("invalid --item %d: must not be negative", item)
				}
				p.ItemIndex = &item
			}
			if attempt < 0 {
				return usagef("invalid --attempt %d: must be positive (or 0 for the latest)", attempt)
			}
			c, err := a.client()
			if err != nil {
				return err
			}
			ctx, cancel := a.unary(cmd.Context())
			defer cancel()
			logs, err := c.GetTaskLogs(ctx, p)
			if err != nil {
				return err
			}
			if a.json() {
				return writeJSON(a.env.Stdout, logs)
			}
			return a.printLogs(logs, stream)
		},
	}
	f := cmd.Flags()
	f.Int32Var(&item, "item", 0, "item index of a for-each task")
	f.Int64Var(&attempt, "attempt", 0, "attempt id; 0 means the latest")
	f.StringVar(&stream, "stream", streamAll, "which output: stdout, stderr or all")
	return cmd
}

// printLogs writes the selected streams of logs to stdout: the stored
// chunks in order, then, if the log was capped, a marker and the tails.
func (a *app) printLogs(logs *batonv1.GetTaskLogsResponse, stream string) error {
	want := func(s batonv1.LogStream) bool {
		switch stream {
		case streamStdout:
			return s == batonv1.LogStream_LOG_STREAM_STDOUT
		case streamStderr:
			return s == batonv1.LogStream_LOG_STREAM_STDERR
		}
		return true
	}
	var b strings.Builder
	for _, ch := range logs.GetChunks() {
		if want(ch.GetStream()) {
			b.WriteString(ch.GetData())
		}
	}
	// Without chunks, the tails are all there is; with a capped log, they
	// are what follows the cap.
	if len(logs.GetChunks()) == 0 || logs.GetTruncated() {
		if logs.GetTruncated() {
			if b.Len() > 0 && !strings.HasSuffix(b.String(), "\n") {
				b.WriteString("\n")
			}
			b.WriteString("[... log capped; its tail follows ...]\n")
			notef(a.env.Stderr, "baton: the stored log of attempt %d was capped; showing its head and tail\n", logs.GetAttemptId())
		}
		for _, tail := range []struct {
			s    batonv1.LogStream
			text string
		}{
			{batonv1.LogStream_LOG_STREAM_STDOUT, logs.GetStdoutTail()},
			{batonv1.LogStream_LOG_STREAM_STDERR, logs.GetStderrTail()},
		} {
			if want(tail.s) && tail.text != "" {
				b.WriteString(tail.text)
				if !strings.HasSuffix(tail.text, "\n") {
					b.WriteString("\n")
				}
			}
		}
	}
	_, err := io.WriteString(a.env.Stdout, b.String())
	return err
}
