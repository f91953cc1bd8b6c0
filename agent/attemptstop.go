package agent

import (
	"context"
	"encoding/json"
	"log/slog"
	"time"

	batonv1 "github.com/batonhq/baton/gen/baton/v1"
)

// stopReason says why the agent stopped a child.
type stopReason struct {
	Outcome batonv1.AttemptOutcome `json:"outcome"`
	Msg     string                 `json:"msg"`
}

// encode turns why into the opaque reason the runner keeps.
func (why *stopReason) encode() string {
	b, err := json.Marshal(why)
	if err != nil {
		return ""
	}
	return string(b)
}

// decodeStopReason reads a reason an earlier agent process gave the runner.
func decodeStopReason(s string) *stopReason {
	if s == "" {
		return nil
	}
	var why stopReason
	if err := json.Unmarshal([]byte(s), &why); err != nil || why.Outcome == batonv1.AttemptOutcome_ATTEMPT_OUTCOME_UNSPECIFIED {
		return nil
	}
	return &why
}

// pendingSignal is a stop asked for before the child had started.
type pendingSignal struct {
	kill  bool
	grace time.Duration
}

// handleCancel stops an attempt's child: SIGTERM to its tree, SIGKILL
// after the grace. Unknown attempts are ignored.
func (a *Agent) handleCancel(ctx context.Context, ct *batonv1.CancelTask) {
	id := ct.GetAttemptId()
	a.mu.Lock()
	att := a.attempts[id]
	a.mu.Unlock()
	if att == nil {
		a.log.InfoContext(ctx, "ignoring cancel_task for an attempt that is not running", slog.Int64("attempt_id", id))
		return
	}
	grace := att.grace
	if d := positive(ct.GetKillGrace()); d > 0 {
		grace = d
	}
	msg := "cancelled"
	if r := ct.GetReason(); r != "" {
		msg += " (" + r + ")"
	}
	a.log.InfoContext(ctx, "cancelling attempt", slog.Int64("attempt_id", id),
		slog.String("reason", ct.GetReason()), slog.Duration("kill_grace", grace))
	a.stopAttempt(ctx, att, &stopReason{Outcome: batonv1.AttemptOutcome_ATTEMPT_OUTCOME_CANCELLED, Msg: msg}, grace, false)
}

// killAll kills the process trees of all running attempts.
func (a *Agent) killAll() {
	a.mu.Lock()
	atts := make([]*attempt, 0, len(a.attempts))
	for _, att := range a.attempts {
		atts = append(atts, att)
	}
	a.mu.Unlock()
	for _, att := range atts {
		a.stopAttempt(context.Background(), att, forcedStop, 0, true)
	}
}

// forcedStop is the reason for killing children on a forced shutdown.
var forcedStop = &stopReason{Outcome: batonv1.AttemptOutcome_ATTEMPT_OUTCOME_FAILED, Msg: "killed: the agent was stopped by force"}

// stopAttempt records why the agent stops att and signals its child: kill
// at once, or SIGTERM then SIGKILL after grace. A child that already exited
// keeps its own outcome (stopAttempt reports false); one that is not
// started yet is not started, or is signalled as soon as it has started.
func (a *Agent) stopAttempt(ctx context.Context, att *attempt, why *stopReason, grace time.Duration, kill bool) bool {
	att.mu.Lock()
	p := att.proc
	if p != nil {
		select {
		case <-p.Done():
			att.mu.Unlock()
			return false
		default:
		}
	}
	if att.stop == nil {
		att.stop = why
	}
	if p == nil {
		if att.pending == nil || kill {
			att.pending = &pendingSignal{kill: kill, grace: grace}
		}
		att.mu.Unlock()
		return true
	}
	reason := att.stop.encode()
	att.mu.Unlock()
	var err error
	if kill {
		err = p.Kill(reason)
	} else {
		err = p.Terminate(grace, reason)
	}
	if err != nil {
		a.log.WarnContext(ctx, "cannot signal child", slog.Int64("attempt_id", att.id), slog.Any("error", err))
	}
	return true
}
