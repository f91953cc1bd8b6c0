package store

import (
	"context"
	"errors"
	"time"
)

// Sentinel errors. They are the only store errors callers may branch on;
// every backend maps its driver's errors onto them.
var (
	// ErrNotFound is returned when no row matches the lookup.
	ErrNotFound = errors.New("store: not found")
	// ErrConflict is returned when a guarded transition did not apply
	// because the row is not in a state the transition allows.
	ErrConflict = errors.New("store: conflict")
	// ErrAlreadyActive is returned when a run would become active while
	// another run of the same job is active and the job forbids overlap.
	ErrAlreadyActive = errors.New("store: job already has an active run")
	// ErrStaleAttempt is returned when an attempt is no longer live: it was
	// lost, its lease expired, or it already has an outcome. The attempt
	// cannot decide its task instance.
	ErrStaleAttempt = errors.New("store: stale attempt")
	// ErrNotLeader is returned when a leader lease cannot be acquired or a
	// fenced write carries a token that is no longer current.
	ErrNotLeader = errors.New("store: not leader")
)

// Store is the state store. Implementations are safe for concurrent use.
//
// Methods called on the Store passed to an InTx function run inside that
// transaction; methods called on the outer Store each run in their own.
type Store interface {
	// InTx runs fn in one write transaction and commits it when fn returns
	// nil. On a retryable error (SQLite busy, SQL Server deadlock or lock
	// timeout) the whole function is run again, with jittered backoff, up
	// to five times; fn must therefore be safe to repeat. InTx called on a
	// transaction's Store runs fn in that same transaction.
	InTx(ctx context.Context, fn func(tx Store) error) error
	// Migrate brings the schema up to date. It is idempotent and safe when
	// several processes migrate the same database at once.
	Migrate(ctx context.Context) error
	// Close releases the store's connections.
	Close() error

	// JobApply stores a job definition. A new name creates version 1; a
	// Spec that differs from the current version's creates the next
	// version; an identical Spec stores nothing (Created is false).
	// Applying the name of a deleted job revives it with the next version.
	JobApply(ctx context.Context, p *JobApplyParams) (*JobApplyResult, error)
	// JobGet returns one version of a job, looked up by ID or by Name.
	// Deleted jobs are not found by Name but still are by ID, so the runs
	// of a deleted job keep their definition.
	JobGet(ctx context.Context, p *JobGetParams) (*Job, error)
	// JobList returns the current version of every job not deleted,
	// ordered by name.
	JobList(ctx context.Context, p *JobListParams) ([]*Job, error)
	// JobDelete marks a job deleted. It returns ErrNotFound for an unknown
	// job and ErrConflict while the job has a non-terminal run.
	JobDelete(ctx context.Context, p *JobDeleteParams) error

	// RunCreate creates a run and its initial task instances. With a
	// RequestID already used for this job it returns that run and Created
	// false (and creates nothing). With Overlap forbid it returns
	// ErrAlreadyActive while another run of the job is active; with queue it
	// creates the run queued while another run of the job is active or
	// queued (queued runs keep their turn), else running; with allow it
	// always creates it running. It returns ErrNotFound when the job or its
	// version does not exist or the job is deleted.
	RunCreate(ctx context.Context, p *RunCreateParams) (*RunCreateResult, error)
	// RunGet returns one run.
	RunGet(ctx context.Context, p *RunGetParams) (*Run, error)
	// RunList returns runs newest first.
	RunList(ctx context.Context, p *RunListParams) ([]*Run, error)
	// RunTransition moves a run from one of From to To. It sets StartedAt
	// when the run first becomes running and FinishedAt when it becomes
	// terminal. A transition from a terminal state to a non-terminal one is
	// a restart: it increments RestartCount and clears FinishedAt and Error.
	// A non-empty Error is stored in any case. It returns ErrNotFound for an
	// unknown run, ErrConflict when the run is not in From, and
	// ErrAlreadyActive when To is active, the run's overlap is forbid or
	// queue, and another run of the job is active.
	RunTransition(ctx context.Context, p *RunTransitionParams) (*Run, error)

	// InstanceCreate adds task instances to a run (for-each expansion). It
	// adds all or none: it returns ErrConflict when an instance (task, item)
	// exists and ErrNotFound for an unknown run.
	InstanceCreate(ctx context.Context, p *InstanceCreateParams) ([]*Instance, error)
	// InstanceList returns a run's task instances ordered by id.
	InstanceList(ctx context.Context, p *InstanceListParams) ([]*Instance, error)
	// InstanceTransition moves an instance from one of From to To. With a
	// non-zero AttemptID it applies only while that attempt is the
	// instance's latest (fencing). It sets FinishedAt when To is done and
	// clears it otherwise, ReadyAt when To is ready and StartedAt when To is
	// running. It returns ErrConflict when a guard fails and ErrNotFound for
	// an unknown instance.
	InstanceTransition(ctx context.Context, p *InstanceTransitionParams) error

	// AttemptClaim atomically moves an instance from one of From (default:
	// ready) to dispatched and records a new attempt for it with a lease of
	// LeaseTTL. The attempt's No is the instance's Attempts plus one; the
	// instance's Attempts and AttemptID then name it, and its Error and
	// FinishedAt are cleared. The attempt records Restart, the run's
	// restart count the caller passes. Of many concurrent claims of one
	// instance exactly one succeeds; the others get ErrConflict. An unknown
	// instance is ErrNotFound.
	AttemptClaim(ctx context.Context, p *AttemptClaimParams) (*Attempt, error)
	// AttemptStarted moves a live attempt of Agent from dispatched to
	// running and renews its lease; for an attempt already running (a
	// re-sent report) it renews the lease and keeps the recorded start
	// time unless StartedAt is set. It returns ErrStaleAttempt when
	// the attempt is not live, belongs to another agent or its lease
	// expired, and ErrNotFound for an unknown attempt.
	AttemptStarted(ctx context.Context, p *AttemptStartedParams) error
	// AttemptHeartbeat renews the leases of the listed live attempts of
	// Agent whose leases have not expired, and returns the ids it renewed
	// in ascending order. Ids it did not renew are stale.
	AttemptHeartbeat(ctx context.Context, p *AttemptHeartbeatParams) ([]int64, error)
	// AttemptExtendLeases gives every live attempt a lease of at least
	// LeaseTTL from now, and returns how many it extended. A control plane
	// calls it when it takes over, so agents have a full timeout to
	// reconnect.
	AttemptExtendLeases(ctx context.Context, p *AttemptExtendLeasesParams) (int, error)
	// AttemptFinish records the outcome of a live attempt of Agent whose
	// lease has not expired, and returns the attempt. Otherwise it records
	// the outcome as late (LateState and the outcome fields, once; the
	// attempt's State is unchanged) and returns ErrStaleAttempt. Such a
	// late record is kept only for a lost attempt or one whose lease
	// expired; an outcome for an attempt that already has one (a
	// re-delivery) or from another agent changes nothing and returns
	// ErrStaleAttempt. Inside InTx the late record is kept only if the
	// transaction commits. It returns ErrNotFound for an unknown attempt.
	AttemptFinish(ctx context.Context, p *AttemptFinishParams) (*Attempt, error)
	// AttemptLose marks a live attempt lost, whatever its lease. It returns
	// ErrStaleAttempt when the attempt is not live and ErrNotFound for an
	// unknown attempt.
	AttemptLose(ctx context.Context, p *AttemptLoseParams) (*Attempt, error)
	// AttemptGet returns one attempt.
	AttemptGet(ctx context.Context, p *AttemptGetParams) (*Attempt, error)
	// AttemptList returns a run's attempts (or one instance's) ordered by id.
	AttemptList(ctx context.Context, p *AttemptListParams) ([]*Attempt, error)
	// TaskDurations returns, for each task of the named job that has at
	// least one succeeded attempt, the mean duration (finished_at -
	// started_at) of its last Last succeeded attempts (newest by finish
	// time, any job version, any run; for-each items count as attempts of
	// their task). Last 0 means 3.
	//
	// Only attempts of the job's [TaskDurationsRuns] newest runs (by run
	// id) are considered, so the cost does not grow with the job's history:
	// a task that succeeded only in older runs is absent. Succeeded
	// attempts without a recorded start time have no duration and are
	// skipped; a negative duration (the agent's and the store's clocks
	// disagree) counts as zero. An unknown job, or one without succeeded
	// attempts, yields an empty map.
	TaskDurations(ctx context.Context, p *TaskDurationsParams) (map[string]time.Duration, error)

	// EventAppend appends events to their runs' logs, all or none. It sets
	// each event's Cursor, and At when it is zero. It returns ErrNotFound
	// when an event's run does not exist.
	EventAppend(ctx context.Context, p *EventAppendParams) error
	// EventList returns up to Limit events of a run with a cursor greater
	// than After, in cursor order. A reader that passes the last cursor it
	// saw never misses an event, also while other transactions append.
	EventList(ctx context.Context, p *EventListParams) ([]*Event, error)

	// LogAppend stores chunks of attempts' output. A chunk whose attempt,
	// stream and offset are already stored is ignored, so an agent may
	// re-send after a reconnect. It returns ErrNotFound when a chunk's
	// attempt does not exist.
	LogAppend(ctx context.Context, p *LogAppendParams) error
	// LogList returns an attempt's stored chunks in the order they arrived.
	LogList(ctx context.Context, p *LogListParams) ([]*LogChunk, error)

	// AgentUpsert records an agent's identity and state.
	AgentUpsert(ctx context.Context, p *AgentUpsertParams) error
	// AgentList returns every known agent ordered by name.
	AgentList(ctx context.Context, p *AgentListParams) ([]*Agent, error)
	// AgentApprove records (or replaces) an agent's approval.
	AgentApprove(ctx context.Context, p *AgentApproveParams) error
	// AgentApprovalGet returns the approval of the agent Name, or
	// ErrNotFound.
	AgentApprovalGet(ctx context.Context, p *AgentApprovalGetParams) (*AgentApproval, error)
	// AgentApprovalList returns every approval ordered by name.
	AgentApprovalList(ctx context.Context, p *AgentApprovalListParams) ([]*AgentApproval, error)
	// AgentApprovalDelete removes the approval of the agent Name; an agent
	// without one is ErrNotFound.
	AgentApprovalDelete(ctx context.Context, p *AgentApprovalDeleteParams) error

	// LeaderAcquire takes or renews the named lease for Holder for TTL. A
	// renewal by the current holder keeps the token; a takeover (the lease
	// was free or expired, also when the same holder takes its own expired
	// lease again) increments it. It returns ErrNotLeader while another
	// holder's lease is unexpired.
	LeaderAcquire(ctx context.Context, p *LeaderAcquireParams) (*Lease, error)
	// LeaderCheck returns ErrNotLeader unless Holder holds the named lease
	// with Token and it has not expired. Called first in a transaction, it
	// fences every write of that transaction: a takeover cannot commit in
	// between.
	LeaderCheck(ctx context.Context, p *LeaderCheckParams) error
	// LeaderRelease gives up the lease if Holder holds it with Token, so
	// another replica may take over at once; otherwise it does nothing.
	LeaderRelease(ctx context.Context, p *LeaderReleaseParams) error

	// TokenCreate stores an API token (its hash, never its secret) and
	// returns it with its ID and CreatedAt set. A name already used, also
	// by a revoked token, is ErrExists.
	TokenCreate(ctx context.Context, p *TokenCreateParams) (*Token, error)
	// TokenGet returns one token, revoked and expired ones included, looked
	// up by ID, Name or Hash. An unknown one is ErrNotFound.
	TokenGet(ctx context.Context, p *TokenGetParams) (*Token, error)
	// TokenList returns every token, revoked and expired ones included,
	// ordered by id.
	TokenList(ctx context.Context, p *TokenListParams) ([]*Token, error)
	// TokenRevoke marks a token revoked and returns it. Revoking a revoked
	// token changes nothing (its RevokedAt stays). An unknown token is
	// ErrNotFound.
	TokenRevoke(ctx context.Context, p *TokenRevokeParams) (*Token, error)
	// TokenTouch records that a token was used at At. LastUsedAt never
	// moves backwards. Callers throttle it (once a minute per token), so
	// authenticating a call does not write to the store each time. An
	// unknown token is ErrNotFound.
	TokenTouch(ctx context.Context, p *TokenTouchParams) error

	// AuditAppend appends records to the audit trail, all or none, and
	// sets each record's ID, and At when it is zero. Fields are clipped
	// to their limits. The trail is append-only: no method changes a
	// record, and only AuditPurge removes old ones. It is not fenced by
	// the leader lease: a standby records the calls it refuses too.
	AuditAppend(ctx context.Context, p *AuditAppendParams) error
	// AuditList returns audit records newest first (by id), filtered as p
	// says.
	AuditList(ctx context.Context, p *AuditListParams) ([]*AuditRecord, error)
	// AuditPurge removes up to Limit of the oldest records older than
	// Before and returns how many it removed; callers repeat it until it
	// returns less than Limit. Before must be at least MinAuditRetention
	// in the past by the store's clock.
	AuditPurge(ctx context.Context, p *AuditPurgeParams) (int, error)
}

// JobApplyParams are the arguments of [Store.JobApply].
type JobApplyParams struct {
	Name        string
	Description string
	Spec        []byte
	Source      string
}

// JobApplyResult is the result of [Store.JobApply].
type JobApplyResult struct {
	Job     *Job
	Created bool
}

// JobGetParams are the arguments of [Store.JobGet]. Set ID or Name.
type JobGetParams struct {
	ID   int64
	Name string
	// Version is the version to return; 0 means the current one.
	Version int
}

// JobListParams are the arguments of [Store.JobList].
type JobListParams struct{}

// JobDeleteParams are the arguments of [Store.JobDelete].
type JobDeleteParams struct {
	Name string
}

// InstanceInit describes a task instance to create.
type InstanceInit struct {
	Task      string
	Item      int // NoItem for a plain task
	ItemValue string
	// State is the initial state: pending or ready.
	State InstanceState
}

// RunCreateParams are the arguments of [Store.RunCreate].
type RunCreateParams struct {
	JobID      int64
	JobName    string
	JobVersion int
	Overlap    Overlap
	Params     map[string]string
	RequestID  string
	Instances  []InstanceInit
}

// RunCreateResult is the result of [Store.RunCreate].
type RunCreateResult struct {
	Run *Run
	// Created is false when RequestID matched an existing run.
	Created bool
}

// RunGetParams are the arguments of [Store.RunGet].
type RunGetParams struct {
	ID int64
}

// RunListParams are the arguments of [Store.RunList].
type RunListParams struct {
	// JobName limits the list to one job's runs.
	JobName string
	// States limits the list to runs in these states.
	States []RunState
	// BeforeID lists only runs with a smaller id (paging); 0 means none.
	BeforeID int64
	// Limit caps the number of runs; 0 means no limit.
	Limit int
}

// RunTransitionParams are the arguments of [Store.RunTransition].
type RunTransitionParams struct {
	ID   int64
	From []RunState
	To   RunState
	// Error is stored when non-empty.
	Error string
}

// InstanceCreateParams are the arguments of [Store.InstanceCreate].
type InstanceCreateParams struct {
	RunID     int64
	Instances []InstanceInit
}

// InstanceListParams are the arguments of [Store.InstanceList].
type InstanceListParams struct {
	RunID int64
}

// InstanceTransitionParams are the arguments of [Store.InstanceTransition].
type InstanceTransitionParams struct {
	ID   int64
	From []InstanceState
	To   InstanceState
	// AttemptID, when non-zero, must be the instance's latest attempt.
	AttemptID int64
	// Outputs replaces the instance's outputs when non-nil.
	Outputs map[string]string
	// Error replaces the instance's error (also when empty).
	Error string
}

// AttemptClaimParams are the arguments of [Store.AttemptClaim].
type AttemptClaimParams struct {
	InstanceID int64
	// From lists the instance states a claim applies to; empty means ready.
	From     []InstanceState
	Agent    string
	Kind     AttemptKind
	LeaseTTL time.Duration
	// Restart is the run's current RestartCount, recorded as the
	// attempt's Restart. It must be between 0 and [MaxRestart].
	Restart int
}

// MaxRestart is the largest restart count an attempt can record: both
// backends store it as a 32-bit integer.
const MaxRestart = 1<<31 - 1

// AttemptStartedParams are the arguments of [Store.AttemptStarted].
type AttemptStartedParams struct {
	ID    int64
	Agent string
	// StartedAt is when the child started; zero means now.
	StartedAt time.Time
	LeaseTTL  time.Duration
}

// AttemptHeartbeatParams are the arguments of [Store.AttemptHeartbeat].
type AttemptHeartbeatParams struct {
	Agent      string
	AttemptIDs []int64
	LeaseTTL   time.Duration
}

// AttemptExtendLeasesParams are the arguments of [Store.AttemptExtendLeases].
type AttemptExtendLeasesParams struct {
	LeaseTTL time.Duration
}

// AttemptFinishParams are the arguments of [Store.AttemptFinish].
type AttemptFinishParams struct {
	ID    int64
	Agent string
	// State is the outcome: succeeded, failed, timed_out, cancelled or
	// rejected (the agent's allowlist refused it), or lost when the agent
	// stopped the child because the attempt's lease expired
	// (self-fencing).
	State      AttemptState
	ExitCode   *int
	Error      string
	Outputs    map[string]string
	StdoutTail string
	StderrTail string
	// StartedAt, when non-zero, replaces the recorded start time.
	StartedAt time.Time
	// FinishedAt is when the child ended; zero means now.
	FinishedAt time.Time
}

// AttemptLoseParams are the arguments of [Store.AttemptLose].
type AttemptLoseParams struct {
	ID    int64
	Error string
}

// AttemptGetParams are the arguments of [Store.AttemptGet].
type AttemptGetParams struct {
	ID int64
}

// AttemptListParams are the arguments of [Store.AttemptList].
type AttemptListParams struct {
	RunID int64
	// InstanceID, when non-zero, limits the list to one instance.
	InstanceID int64
}

// TaskDurationsRuns is how many of a job's newest runs (by run id)
// [Store.TaskDurations] looks at. It bounds the cost of the call however
// long the job's history: the backends read, for each of these runs, each
// task's newest attempts only, so a for-each task of 10,000 items costs
// about as much as a plain task (on SQL Server its items' narrow index
// rows in these runs are read once to find the run's tasks).
const TaskDurationsRuns = 20

// MaxTaskDurationsLast is the largest [TaskDurationsParams] Last.
const MaxTaskDurationsLast = 100

// TaskDurationsParams are the arguments of [Store.TaskDurations].
type TaskDurationsParams struct {
	// JobName names the job. Required.
	JobName string
	// Last is how many of each task's newest succeeded attempts the mean
	// covers; 0 means 3. It must not exceed [MaxTaskDurationsLast].
	Last int
}

// EventAppendParams are the arguments of [Store.EventAppend].
type EventAppendParams struct {
	Events []*Event
}

// EventListParams are the arguments of [Store.EventList].
type EventListParams struct {
	RunID int64
	After int64
	// Limit caps the number of events; 0 means 1000.
	Limit int
}

// LogAppendParams are the arguments of [Store.LogAppend].
type LogAppendParams struct {
	Chunks []*LogChunk
}

// LogListParams are the arguments of [Store.LogList].
type LogListParams struct {
	AttemptID int64
}

// AgentUpsertParams are the arguments of [Store.AgentUpsert].
type AgentUpsertParams struct {
	Agent *Agent
}

// AgentListParams are the arguments of [Store.AgentList].
type AgentListParams struct{}

// AgentApproveParams are the arguments of [Store.AgentApprove].
type AgentApproveParams struct {
	Approval *AgentApproval
}

// AgentApprovalGetParams are the arguments of [Store.AgentApprovalGet].
type AgentApprovalGetParams struct {
	Name string
}

// AgentApprovalListParams are the arguments of [Store.AgentApprovalList].
type AgentApprovalListParams struct{}

// AgentApprovalDeleteParams are the arguments of [Store.AgentApprovalDelete].
type AgentApprovalDeleteParams struct {
	Name string
}

// LeaderAcquireParams are the arguments of [Store.LeaderAcquire].
type LeaderAcquireParams struct {
	Name   string
	Holder string
	TTL    time.Duration
}

// LeaderCheckParams are the arguments of [Store.LeaderCheck].
type LeaderCheckParams struct {
	Name   string
	Holder string
	Token  int64
}

// LeaderReleaseParams are the arguments of [Store.LeaderRelease].
type LeaderReleaseParams struct {
	Name   string
	Holder string
	Token  int64
}
