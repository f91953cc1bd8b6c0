package agent

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/batonhq/baton/agent/runner"
)

// Attempt leases (self-fencing). When a Welcome names a lease length, each
// attempt the agent runs is leased to it: the lease of a new attempt runs
// from when the agent sent the message StartTask.lease_seq names, and each
// LeaseRenewal (and the Welcome's renewed list, as of the Hello) extends
// the leases it lists to the send time of the heartbeat it names plus the
// lease. Send times are taken just before a message goes to the stream,
// so the agent's deadline is never later than the control plane's. A
// renewal never shortens a lease; an attempt no renewal lists keeps its
// deadline, and while the agent is disconnected every deadline stands.
//
// The deadlines are enforced where the children run, so that they hold
// also while the agent process is stopped or gone: the runner on Unix
// (runner.StartRequest.Lease, runner.Client.Renew), the agent process on
// Windows. A child whose lease passed has its tree stopped (SIGTERM, then
// SIGKILL after the kill grace) and is reported LEASE_EXPIRED; the control
// plane starts a replacement only once the lease and the grace have
// certainly passed, so the two never overlap.

// leaseTimeFormat is how the moment a lease expired is written in the
// outcome's error.
const leaseTimeFormat = "2006-01-02T15:04:05.000Z07:00"

// leaseDeadline returns when att's lease ends (zero: no lease) and the
// lease length.
func (att *attempt) leaseDeadline() (time.Time, time.Duration) {
	att.mu.Lock()
	defer att.mu.Unlock()
	return att.lease, att.leaseTerm
}

// extendLease sets att's lease to end at until, unless it already ends
// later. It reports whether it changed.
func (att *attempt) extendLease(until time.Time, term time.Duration) bool {
	att.mu.Lock()
	defer att.mu.Unlock()
	if !until.After(att.lease) {
		return false
	}
	att.lease, att.leaseTerm = until, term
	return true
}

// renewLeases extends the leases of the attempts ids that the agent runs
// to the send time of s's message seq plus the session's lease, and
// passes the renewal on to where the children run. Unknown attempts are
// ignored; so is the renewal when the session has no leases, when seq
// is not one of its recent messages, or when the renewed lease has
// passed already.
func (a *Agent) renewLeases(ctx context.Context, s *session, seq uint64, ids []int64) {
	if len(ids) == 0 {
		return
	}
	until, term, ok := s.leaseUntil(seq)
	if !ok {
		if term > 0 {
			a.log.DebugContext(ctx, "ignoring a lease renewal for an unknown message", slog.Uint64("seq", seq))
		}
		return
	}
	remaining := time.Until(until)
	if remaining <= 0 {
		a.log.DebugContext(ctx, "ignoring a lease renewal that has expired already", slog.Uint64("seq", seq))
		return
	}
	renewed := make([]int64, 0, len(ids))
	a.mu.Lock()
	for _, id := range ids {
		if att := a.attempts[id]; att != nil {
			att.extendLease(until, term)
			renewed = append(renewed, id)
		}
	}
	a.mu.Unlock()
	// Passed on even where the agent's own deadline was later already: a
	// re-adopted child's deadline is known to the runner only.
	a.runner.renew(renewed, until, term)
}

// leaseExpiredMsg is the error of an attempt whose child was stopped
// because its lease ran out.
func leaseExpiredMsg(rec *runner.Record) string {
	at := rec.LeaseExpiredAt
	if at.IsZero() {
		at = rec.End
	}
	if rec.LeaseTerm > 0 {
		return fmt.Sprintf("lease expired at %s: not renewed by the control plane for %s; child stopped (self-fenced)",
			at.Format(leaseTimeFormat), rec.LeaseTerm)
	}
	return fmt.Sprintf("lease expired at %s: not renewed by the control plane; child stopped (self-fenced)",
		at.Format(leaseTimeFormat))
}
