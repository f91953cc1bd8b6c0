package store

import (
	"fmt"
	"time"
)

// RunState is the state of a run.
type RunState string

// Run states. Queued, running and cancelling are non-terminal; running and
// cancelling are "active" (they hold the job's overlap slot).
const (
	RunQueued     RunState = "queued"
	RunRunning    RunState = "running"
	RunCancelling RunState = "cancelling"
	RunSucceeded  RunState = "succeeded"
	RunFailed     RunState = "failed"
	RunCancelled  RunState = "cancelled"
)

// Terminal reports whether nothing more happens in a run in state s until it
// is restarted.
func (s RunState) Terminal() bool {
	return s == RunSucceeded || s == RunFailed || s == RunCancelled
}

// Active reports whether a run in state s holds its job's overlap slot.
func (s RunState) Active() bool { return s == RunRunning || s == RunCancelling }

// InstanceState is the state of a task instance.
type InstanceState string

// Task instance states.
const (
	InstancePending    InstanceState = "pending"
	InstanceReady      InstanceState = "ready"
	InstanceDispatched InstanceState = "dispatched"
	InstanceRunning    InstanceState = "running"
	InstanceSucceeded  InstanceState = "succeeded"
	InstanceFailed     InstanceState = "failed"
	InstanceSkipped    InstanceState = "skipped"
	InstanceBlocked    InstanceState = "blocked"
	InstanceCancelled  InstanceState = "cancelled"
	InstanceLost       InstanceState = "lost"
)

// Done reports whether an instance in state s will not change again in this
// run without a restart. Blocked counts as done: nothing can unblock it
// until the run is restarted.
func (s InstanceState) Done() bool {
	switch s {
	case InstanceSucceeded, InstanceFailed, InstanceSkipped, InstanceBlocked,
		InstanceCancelled, InstanceLost:
		return true
	}
	return false
}

// InFlight reports whether an instance in state s has an attempt on an agent.
func (s InstanceState) InFlight() bool {
	return s == InstanceDispatched || s == InstanceRunning
}

// AttemptState is the state of one attempt.
type AttemptState string

// Attempt states. Dispatched and running are live; the rest are final.
const (
	AttemptDispatched AttemptState = "dispatched"
	AttemptRunning    AttemptState = "running"
	AttemptSucceeded  AttemptState = "succeeded"
	AttemptFailed     AttemptState = "failed"
	AttemptTimedOut   AttemptState = "timed_out"
	AttemptCancelled  AttemptState = "cancelled"
	// AttemptLost means the attempt's agent was not heard from within the
	// agent timeout (or its lease expired). An outcome reported later is
	// recorded in the Late* fields and never decides the instance.
	AttemptLost AttemptState = "lost"
	// AttemptRejected means the agent's own policy (its allowlist) refused
	// to run the attempt: nothing ran. It is final: the instance fails,
	// without retries, and the Error says what was refused.
	AttemptRejected AttemptState = "rejected"
)

// Live reports whether an attempt in state s may still report an outcome
// that decides its instance.
func (s AttemptState) Live() bool { return s == AttemptDispatched || s == AttemptRunning }

// AttemptKind says why an attempt was made.
type AttemptKind string

// Attempt kinds.
const (
	AttemptFirst       AttemptKind = "first"
	AttemptRetry       AttemptKind = "retry"
	AttemptRestart     AttemptKind = "restart"
	AttemptReplacement AttemptKind = "replacement" // for a lost attempt
)

// Overlap is a job's policy for a second run while one is active.
type Overlap string

// Overlap policies.
const (
	OverlapForbid Overlap = "forbid"
	OverlapQueue  Overlap = "queue"
	OverlapAllow  Overlap = "allow"
)

// Job is one version of a job definition.
type Job struct {
	ID          int64
	Name        string
	Version     int
	Description string
	// Spec is the canonical JSON of the parsed job file; backends store it
	// opaquely.
	Spec []byte
	// Source is the job file as applied.
	Source string
	// CreatedAt is when the job was first applied; UpdatedAt when this
	// version was stored.
	CreatedAt time.Time
	UpdatedAt time.Time
}

// Run is one execution of a job version.
type Run struct {
	// ID is the run id: a positive integer assigned by the store, stable
	// across restarts.
	ID           int64
	JobID        int64
	JobName      string
	JobVersion   int
	State        RunState
	Overlap      Overlap
	Params       map[string]string
	RestartCount int
	// RequestID is the client's idempotency key; empty when none was given.
	RequestID string
	// Error says why the run failed or was cancelled.
	Error      string
	CreatedAt  time.Time
	StartedAt  time.Time // zero while queued
	FinishedAt time.Time // zero while not terminal
	// RestartedAt is when the latest restart began; zero for a run never
	// restarted.
	RestartedAt time.Time
}

// LastStart is when the run's current generation began: its latest
// restart, or its start. The run timeout counts from it.
func (r *Run) LastStart() time.Time {
	if !r.RestartedAt.IsZero() {
		return r.RestartedAt
	}
	return r.StartedAt
}

// NoItem is the Item of a task instance that is not a for-each item.
const NoItem = -1

// Instance is one task instance: (run, task, item).
type Instance struct {
	ID    int64
	RunID int64
	Task  string
	// Item is the for-each item index, or [NoItem].
	Item int
	// ItemValue is the for-each item's value (JSON text for non-strings).
	ItemValue string
	State     InstanceState
	// Attempts counts the attempts made for this instance.
	Attempts int
	// AttemptID is the latest attempt's id, the instance's fencing token:
	// only an outcome of this attempt may decide the instance.
	AttemptID int64
	Outputs   map[string]string
	// Error is a short reason for failed, blocked, skipped, cancelled and
	// lost instances.
	Error      string
	ReadyAt    time.Time
	StartedAt  time.Time
	FinishedAt time.Time
}

// Attempt is one try of a task instance on one agent.
type Attempt struct {
	// ID is assigned by the store and is the attempt's fencing token.
	ID         int64
	InstanceID int64
	RunID      int64
	Task       string
	Item       int
	// No numbers the attempts of an instance from 1.
	No int
	// Restart is the run's RestartCount when the attempt was claimed: 0
	// for attempts of the run's first execution. Attempts recorded before
	// the store kept it (schema version 1) read as 0.
	Restart int
	Kind    AttemptKind
	Agent   string
	State   AttemptState
	// ExitCode is nil until the child exited.
	ExitCode   *int
	Error      string
	Outputs    map[string]string
	StdoutTail string
	StderrTail string

	DispatchedAt   time.Time
	StartedAt      time.Time
	FinishedAt     time.Time
	LeaseExpiresAt time.Time

	// LateState is the outcome an agent reported after the attempt was
	// lost (or otherwise no longer live); empty when none arrived. Such an
	// outcome is history only.
	LateState AttemptState
}

// Event is one entry of a run's append-only event log.
type Event struct {
	// Cursor orders a run's events; assigned by the store. Readers resume
	// with EventList.After = last cursor seen, and never miss an event.
	Cursor    int64
	RunID     int64
	At        time.Time
	Task      string // empty for run-level events
	Item      int    // NoItem unless a for-each item
	AttemptID int64
	// Exactly one of RunState or InstanceState is set for state changes;
	// neither for informational events.
	RunState      RunState
	InstanceState InstanceState
	Agent         string
	ExitCode      *int
	Message       string
}

// LogStream names a child's output stream.
type LogStream int

// Log streams.
const (
	Stdout LogStream = 1
	Stderr LogStream = 2
)

// LogChunk is a stored piece of an attempt's output.
type LogChunk struct {
	AttemptID int64
	Stream    LogStream
	// Offset is the byte offset of Data within its stream.
	Offset int64
	Data   []byte
	At     time.Time
}

// AgentState is whether an agent holds a live session.
type AgentState string

// Agent states.
const (
	AgentConnected    AgentState = "connected"
	AgentDisconnected AgentState = "disconnected"
	AgentLost         AgentState = "lost"
)

// Agent is a baton-agent known to the control plane.
type Agent struct {
	Name        string
	Labels      map[string]string
	Slots       int
	Version     string
	Hostname    string
	OS          string
	State       AgentState
	ConnectedAt time.Time
	LastSeenAt  time.Time
}

// AgentApproval is what an admin approved an agent to claim: an agent
// whose Hello claims labels outside Labels, or more slots than Slots, waits
// in pending approval and gets no work.
type AgentApproval struct {
	Name string
	// Labels are the labels the agent may claim; it may claim fewer.
	Labels map[string]string
	// Slots is the most slots the agent may claim; 0 means any number.
	Slots int
	// CertSHA256, when set, is the hex SHA-256 of the only client
	// certificate the agent may present: a new certificate for the same
	// name needs a new approval.
	CertSHA256 string
	// ApprovedBy names who approved it (the audit trail's who).
	ApprovedBy string
	ApprovedAt time.Time
}

// Lease is a held leader lease. Token grows by one on every change of
// holder; writes fenced with an older token fail with [ErrNotLeader].
type Lease struct {
	Name      string
	Holder    string
	Token     int64
	ExpiresAt time.Time
}

// Valid reports whether s is a run state.
func (s RunState) Valid() bool {
	switch s {
	case RunQueued, RunRunning, RunCancelling, RunSucceeded, RunFailed, RunCancelled:
		return true
	}
	return false
}

// Valid reports whether s is an instance state.
func (s InstanceState) Valid() bool {
	switch s {
	case InstancePending, InstanceReady, InstanceDispatched, InstanceRunning, InstanceSucceeded,
		InstanceFailed, InstanceSkipped, InstanceBlocked, InstanceCancelled, InstanceLost:
		return true
	}
	return false
}

// Valid reports whether s is an attempt state.
func (s AttemptState) Valid() bool { return s.Live() || s.Outcome() || s == AttemptLost }

// Outcome reports whether s is an outcome an agent reports: succeeded,
// failed, timed_out, cancelled or rejected.
func (s AttemptState) Outcome() bool {
	switch s {
	case AttemptSucceeded, AttemptFailed, AttemptTimedOut, AttemptCancelled, AttemptRejected:
		return true
	}
	return false
}

// Valid reports whether k is an attempt kind.
func (k AttemptKind) Valid() bool {
	switch k {
	case AttemptFirst, AttemptRetry, AttemptRestart, AttemptReplacement:
		return true
	}
	return false
}

// Valid reports whether s is an agent state.
func (s AgentState) Valid() bool {
	switch s {
	case AgentConnected, AgentDisconnected, AgentLost:
		return true
	}
	return false
}

// CheckStates returns an error naming field unless states is non-empty and
// every state is valid. Backends use it to refuse bad input.
func CheckStates[S interface {
	~string
	Valid() bool
}](field string, states []S) error {
	if len(states) == 0 {
		return fmt.Errorf("%s is empty", field)
	}
	for _, s := range states {
		if !s.Valid() {
			return fmt.Errorf("%s: unknown state %q", field, s)
		}
	}
	return nil
}
