// Package dispatch is the control plane's side of the agent protocol: it
// serves AgentService.Connect, turns each agent's stream into a [Session]
// that speaks domain messages, and places work on agents. Decisions about
// runs are the scheduler's; dispatch hands it every message through a
// [Handler].
package dispatch

import (
	"time"

	"github.com/batonhq/baton/server/store"
)

// Hello is an agent's first message.
type Hello struct {
	Name     string
	Labels   map[string]string
	Slots    int
	Version  string
	Hostname string
	OS       string
	// BootID identifies one agent process; a reconnect from the same
	// process may replace its own stale session.
	BootID string
	// Running lists attempts the agent is running.
	Running []int64
	// Unacked lists outcomes the control plane has not acknowledged.
	Unacked []*Finished

	// Set by the control plane, not the agent:
	// CertSHA256 is the fingerprint of the client certificate that proved
	// the agent's name, "" without one.
	CertSHA256 string
	// Pending says why the agent gets no work until an admin approves
	// what it claims; "" when it may work.
	Pending string
}

// Heartbeat keeps a session alive and asks for the agent's attempt leases
// to be renewed.
type Heartbeat struct {
	Running  []int64
	Draining bool
	// Seq numbers the heartbeats of a session from 1 (the Hello is 0); a
	// LeaseRenewal names it.
	Seq uint64
}

// Started says an attempt's child started.
type Started struct {
	AttemptID int64
	At        time.Time
	PID       int
}

// Log is a chunk of an attempt's output.
type Log struct {
	AttemptID int64
	Stream    store.LogStream
	Offset    int64
	Data      []byte
}

// Outcome is how an attempt ended, as its agent saw it.
type Outcome int

// Outcomes.
const (
	OutcomeSucceeded Outcome = iota + 1
	OutcomeFailed
	OutcomeStartFailed
	OutcomeTimedOut
	OutcomeCancelled
	// OutcomeRejected means nothing ran: the agent refused the attempt.
	OutcomeRejected
	// OutcomeLeaseExpired means the agent stopped the child because the
	// attempt's lease was not renewed in time (self-fencing): the attempt
	// counts as lost.
	OutcomeLeaseExpired
	// OutcomeNotAllowed means nothing ran: the agent's own policy (its
	// allowlist) refused the program, an environment name or the working
	// directory. Unlike OutcomeRejected it is final: the instance fails
	// without retries, and is not placed elsewhere.
	OutcomeNotAllowed
)

// Finished is the real outcome of an attempt.
type Finished struct {
	AttemptID  int64
	Outcome    Outcome
	ExitCode   int
	Error      string
	Outputs    map[string]string
	StdoutTail []byte
	StderrTail []byte
	StartedAt  time.Time
	FinishedAt time.Time
}

// Welcome accepts an agent.
type Welcome struct {
	HeartbeatInterval time.Duration
	ServerVersion     string
	// Lease is how long an attempt's lease lasts from the agent's message
	// that renewed it; zero means no leases.
	Lease time.Duration
	// Renewed lists the Hello's running attempts whose leases the Hello
	// renewed.
	Renewed []int64
}

// LeaseRenewal renews the leases of attempts as of the agent's heartbeat
// Seq.
type LeaseRenewal struct {
	Seq        uint64
	AttemptIDs []int64
}

// Start asks an agent to start an attempt.
type Start struct {
	AttemptID int64
	RunID     int64
	Job       string
	Task      string
	Attempt   int
	Item      string
	Argv      []string
	Env       map[string]string
	// Secrets maps environment names to the secrets the agent resolves
	// for them (secret:NAME values); the control plane never has the
	// values.
	Secrets    map[string]string
	WorkingDir string
	Timeout    time.Duration
	KillGrace  time.Duration
	// LeaseSeq is the agent's latest message (the Hello is 0, then each
	// heartbeat's Seq) received when the start was sent: the attempt's
	// lease runs from when the agent sent it.
	LeaseSeq uint64
}

// Cancel asks an agent to stop an attempt.
type Cancel struct {
	AttemptID int64
	Reason    string
	KillGrace time.Duration
}

// Ack acknowledges durably recorded outcomes.
type Ack struct {
	AttemptIDs []int64
}

// Drain asks an agent to take no new work.
type Drain struct {
	Reason string
}
