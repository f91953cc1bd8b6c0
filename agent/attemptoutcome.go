package agent

import (
	"fmt"
	"log/slog"
	"path/filepath"
	"strconv"
	"strings"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/batonhq/baton/agent/runner"
	batonv1 "github.com/batonhq/baton/gen/baton/v1"
)

// outcome turns how att's child ended into its TaskFinished: the exit, the
// outputs the child wrote to $BATON_OUTPUT and the tails of its streams.
// logs gets the notes about the output file and catches up with output
// the agent did not see (the runner's tails are complete).
func (a *Agent) outcome(att *attempt, res runner.Result, logs *attemptLogs) *batonv1.TaskFinished {
	tf := &batonv1.TaskFinished{AttemptId: att.id, ExitCode: -1, StartTime: timestamppb.New(att.startTime())}
	end := func(outcome batonv1.AttemptOutcome, msg string) *batonv1.TaskFinished {
		tf.Outcome = outcome
		tf.Error = strings.ToValidUTF8(msg, "\uFFFD")
		if res.End.IsZero() {
			tf.EndTime = timestamppb.Now()
		} else {
			tf.EndTime = timestamppb.New(res.End)
		}
		return tf
	}
	if res.Lost != "" || res.StartErr != "" {
		logs.finish()
		tf.StdoutTail = logs.stdout.lastBytes()
		tf.StderrTail = logs.stderr.lastBytes()
		if res.Lost != "" {
			return end(batonv1.AttemptOutcome_ATTEMPT_OUTCOME_FAILED, res.Lost)
		}
		return end(batonv1.AttemptOutcome_ATTEMPT_OUTCOME_START_FAILED, res.StartErr)
	}

	att.mu.Lock()
	red := att.redact
	att.mu.Unlock()
	outputs, notes, err := readOutputs(a.outPath(att.id), red)
	if err != nil {
		notes = append(notes, err.Error())
	}
	if res.ExitCode == 0 && res.WaitDelay {
		notes = append(notes, "a process outside the child's process group kept its output open; the rest of the output is lost")
	}
	logs.stdout.catchUp(res.StdoutTail, res.StdoutBytes)
	logs.stderr.catchUp(res.StderrTail, res.StderrBytes)
	for _, n := range notes {
		_, _ = fmt.Fprintf(logs.stderr, "baton-agent: %s\n", n) // logStream.Write never fails
	}
	logs.finish()
	tf.ExitCode = int32(res.ExitCode)
	tf.Outputs = outputs
	tf.StdoutTail = logs.stdout.lastBytes()
	tf.StderrTail = logs.stderr.lastBytes()

	att.mu.Lock()
	why := att.stop
	att.mu.Unlock()
	if why == nil {
		why = decodeStopReason(res.Reason)
	}
	withErr := func(msg string) string {
		if res.Err != "" {
			msg += ": " + res.Err
		}
		return msg
	}
	switch {
	case res.TimedOut:
		return end(batonv1.AttemptOutcome_ATTEMPT_OUTCOME_TIMED_OUT, withErr("timed out after "+res.Timeout.String()))
	case res.LeaseExpired:
		// The lease ran out before anything else stopped the child: the
		// control plane may have placed the attempt elsewhere since.
		a.log.Warn("attempt lease expired: the control plane did not renew it; child's process tree stopped (self-fenced)",
			slog.Int64("attempt_id", att.id), slog.Time("expired_at", res.LeaseExpiredAt),
			slog.Duration("lease", res.LeaseTerm), slog.Int("exit_code", res.ExitCode))
		return end(batonv1.AttemptOutcome_ATTEMPT_OUTCOME_LEASE_EXPIRED, withErr(leaseExpiredMsg(&res.Record)))
	case why != nil:
		return end(why.Outcome, withErr(why.Msg))
	case res.ExitCode == 0:
		return end(batonv1.AttemptOutcome_ATTEMPT_OUTCOME_SUCCEEDED, "")
	case res.Err != "":
		return end(batonv1.AttemptOutcome_ATTEMPT_OUTCOME_FAILED, res.Err)
	default:
		return end(batonv1.AttemptOutcome_ATTEMPT_OUTCOME_FAILED, fmt.Sprintf("exit status %d", res.ExitCode))
	}
}

// outPath is attempt id's $BATON_OUTPUT file.
func (a *Agent) outPath(id int64) string {
	return filepath.Join(a.outDir, strconv.FormatInt(id, 10))
}

// removeOutput releases attempt id's $BATON_OUTPUT file once its outcome
// is journaled.
func (a *Agent) removeOutput(id int64) {
	if err := a.outputs.release(a.outPath(id)); err != nil {
		a.log.Warn("cannot remove output file", slog.Int64("attempt_id", id), slog.Any("error", err))
	}
}
