package cli

import (
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/spf13/cobra"

	batonv1 "github.com/batonhq/baton/gen/baton/v1"
)

// noteWidth is how many characters of an attempt's error run history
// shows; -o json shows it whole.
const noteWidth = 60

func (a *app) runHistoryCommand() *cobra.Command {
	var task string
	cmd := &cobra.Command{
		Use:   "history RUN",
		Short: "List every attempt of a run, oldest first",
		Long: `List a run's attempt history, oldest first: every try of every task instance,
across retries, lost agents and restarts, one line each.

  ATTEMPT   the attempt id (give it to baton logs --attempt)
  TASK      the task, with the item index of a for-each task: per-client[3]
  #         which try of that task instance it was, from 1
  KIND      why it was made: first; retry, after a failed try, per the task's
            retries; restart, after run restart; replacement, in place of a
            try lost with its agent
  AGENT     where it ran
  STATE     dispatched, running, succeeded, failed, timed-out, cancelled or
            lost (its agent was not heard from in time)
  EXIT      the child's exit code
  STARTED   when the child started
  DURATION  how long it ran (still running: so far, with a +)
  RESTART   the run's restart count when it was made: 0 before any restart
  NOTE      the error, shortened to its first line, and "late: <state>" for an
            outcome the agent reported after the attempt was lost; a late
            outcome is kept for the record and decided nothing

--task limits the list to one task. With -o json, prints the
ListAttemptsResponse with errors in full.`,
		Example: `  baton run history 42
  baton run history 42 --task per-client
  baton run history 42 -o json | jq '.attempts[] | select(.kind == "ATTEMPT_KIND_RESTART")'`,
		Args: wantArgs("RUN"),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := parseRunID(args[0])
			if err != nil {
				return err
			}
			if cmd.Flags().Changed("task") && task == "" {
				return usagef("invalid --task \"\": want a task name")
			}
			c, err := a.client()
			if err != nil {
				return err
			}
			ctx, cancel := a.unary(cmd.Context())
			defer cancel()
			atts, err := c.ListAttempts(ctx, id, task)
			if err != nil {
				return err
			}
			if a.json() {
				return writeJSON(a.env.Stdout, &batonv1.ListAttemptsResponse{Attempts: atts})
			}
			if err := a.printHistory(atts); err != nil {
				return err
			}
			if len(atts) == 0 {
				if task != "" {
					notef(a.env.Stderr, "baton: run %d has no attempts of task %q\n", id, task)
				} else {
					notef(a.env.Stderr, "baton: run %d has no attempts yet\n", id)
				}
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&task, "task", "", "only this task's attempts")
	return cmd
}

// printHistory writes the attempt table of run history.
func (a *app) printHistory(atts []*batonv1.Attempt) error {
	t := newTable(a.env.Stdout, "ATTEMPT", "TASK", "#", "KIND", "AGENT", "STATE", "EXIT", "STARTED", "DURATION", "RESTART", "NOTE")
	for _, at := range atts {
		exit := ""
		if at.ExitCode != nil {
			exit = strconv.Itoa(int(at.GetExitCode()))
		}
		started := "-"
		if at.GetStartTime() != nil {
			started = a.clock.timestamp(at.GetStartTime())
		}
		t.row(strconv.FormatInt(at.GetId(), 10), newInstance(at.GetTask(), at.ItemIndex).String(),
			strconv.Itoa(int(at.GetNumber())), enumWord(at.GetKind().String(), "ATTEMPT_KIND_"),
			orDash(at.GetAgent()), attemptState(at.GetState()), exit, started, a.attemptDuration(at),
			strconv.Itoa(int(at.GetRestart())), attemptNote(at))
	}
	return t.flush()
}

// attemptDuration is how long an attempt's child ran: to its end, or so
// far (with a +) while the attempt is live, or "-" when unknown.
func (a *app) attemptDuration(at *batonv1.Attempt) string {
	if at.GetStartTime() == nil {
		return "-"
	}
	if at.GetEndTime() == nil && !attemptLive(at.GetState()) {
		return "-"
	}
	return a.clock.elapsed(at.GetStartTime(), at.GetEndTime())
}

// attemptLive reports whether an attempt in state s may still change.
func attemptLive(s batonv1.AttemptState) bool {
	return s == batonv1.AttemptState_ATTEMPT_STATE_DISPATCHED || s == batonv1.AttemptState_ATTEMPT_STATE_RUNNING
}

// attemptState names an attempt state in lower case, with a hyphen for an
// underscore so that it stays one column: "succeeded", "timed-out".
func attemptState(s batonv1.AttemptState) string {
	return strings.ReplaceAll(enumWord(s.String(), "ATTEMPT_STATE_"), "_", "-")
}

// attemptNote is the NOTE column of run history: a late outcome, then the
// error's first line, cut to noteWidth characters.
func attemptNote(at *batonv1.Attempt) string {
	var parts []string
	if ls := at.GetLateState(); ls != batonv1.AttemptState_ATTEMPT_STATE_UNSPECIFIED {
		parts = append(parts, "late: "+attemptState(ls))
	}
	if e := shorten(at.GetError(), noteWidth); e != "" {
		parts = append(parts, e)
	}
	return strings.Join(parts, "; ")
}

// shorten returns the first non-blank line of s, cut to at most width
// characters with "..." marking a cut (or a line that follows).
func shorten(s string, width int) string {
	s = strings.TrimSpace(s)
	line, rest, _ := strings.Cut(s, "\n")
	line = strings.TrimSpace(line)
	more := strings.TrimSpace(rest) != ""
	if !more && utf8.RuneCountInString(line) <= width {
		return line
	}
	if r := []rune(line); len(r) > width-3 {
		line = strings.TrimRight(string(r[:width-3]), " ")
	}
	return line + "..."
}
