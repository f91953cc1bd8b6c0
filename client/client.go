package client

import (
	"context"
	"errors"
	"fmt"

	"google.golang.org/grpc"
	"google.golang.org/grpc/status"

	batonv1 "github.com/batonhq/baton/gen/baton/v1"
)

// maxPageSize is the largest page ListRuns may ask for (see
// batonv1.ListRunsRequest.page_size).
const maxPageSize = 1000

// Client calls the control plane's public API: jobs, runs and agents. It
// wraps one *grpc.ClientConn and is safe for concurrent use.
//
// Errors returned by its methods name the operation that failed and keep the
// server's gRPC status: status.Code(err) and errors.As work on them, and
// their message is the server's status message rather than grpc's
// "rpc error: code = … desc = …" form.
type Client struct {
	conn   *grpc.ClientConn
	jobs   batonv1.JobServiceClient
	runs   batonv1.RunServiceClient
	agents batonv1.AgentAdminServiceClient
	tokens batonv1.TokenServiceClient
	audit  batonv1.AuditServiceClient
}

// New returns a Client that calls the control plane over conn. The caller
// keeps ownership of conn and closes it when done.
func New(conn *grpc.ClientConn) *Client {
	return &Client{
		conn:   conn,
		jobs:   batonv1.NewJobServiceClient(conn),
		runs:   batonv1.NewRunServiceClient(conn),
		agents: batonv1.NewAgentAdminServiceClient(conn),
		tokens: batonv1.NewTokenServiceClient(conn),
		audit:  batonv1.NewAuditServiceClient(conn),
	}
}

// Conn returns the connection c was created with.
func (c *Client) Conn() *grpc.ClientConn { return c.conn }

// ApplyJob validates a job file and stores it. It returns the job's current
// version and whether a new job or version was stored (false when the file
// is unchanged). An invalid file fails with codes.InvalidArgument; the
// status message lists every problem, one per line.
func (c *Client) ApplyJob(ctx context.Context, source string) (job *batonv1.Job, created bool, err error) {
	resp, err := c.jobs.ApplyJob(ctx, &batonv1.ApplyJobRequest{Source: source})
	if err != nil {
		return nil, false, wrap("apply job", err)
	}
	return resp.GetJob(), resp.GetCreated(), nil
}

// ValidateJob checks a job file as ApplyJob does but stores nothing. It
// returns the job as it would be stored.
func (c *Client) ValidateJob(ctx context.Context, source string) (*batonv1.Job, error) {
	resp, err := c.jobs.ValidateJob(ctx, &batonv1.ValidateJobRequest{Source: source})
	if err != nil {
		return nil, wrap("validate job", err)
	}
	return resp.GetJob(), nil
}

// GetJob returns version version of the named job, or its current version
// when version is 0.
func (c *Client) GetJob(ctx context.Context, name string, version int32) (*batonv1.Job, error) {
	resp, err := c.jobs.GetJob(ctx, &batonv1.GetJobRequest{Name: name, Version: version})
	if err != nil {
		return nil, wrap(fmt.Sprintf("get job %q", name), err)
	}
	return resp.GetJob(), nil
}

// ListJobs returns the current version of every job, ordered by name.
func (c *Client) ListJobs(ctx context.Context) ([]*batonv1.Job, error) {
	resp, err := c.jobs.ListJobs(ctx, &batonv1.ListJobsRequest{})
	if err != nil {
		return nil, wrap("list jobs", err)
	}
	return resp.GetJobs(), nil
}

// DeleteJob removes the named job; its runs are kept. A job with an active
// run is not deleted (codes.FailedPrecondition).
func (c *Client) DeleteJob(ctx context.Context, name string) error {
	if _, err := c.jobs.DeleteJob(ctx, &batonv1.DeleteJobRequest{Name: name}); err != nil {
		return wrap(fmt.Sprintf("delete job %q", name), err)
	}
	return nil
}

// StartRunParams says which run StartRun starts.
type StartRunParams struct {
	// Job is the name of the job to run. Required.
	Job string
	// Params override the job's parameter defaults.
	Params map[string]string
	// RequestID, when set, makes the call idempotent: a repeated id returns
	// the run it created instead of starting another.
	RequestID string
}

// StartRun starts a run of a job's current version. It returns the run and
// whether it was created (false when p.RequestID matched an earlier run). A
// second active run of a job with overlap: forbid fails with
// codes.AlreadyExists.
func (c *Client) StartRun(ctx context.Context, p *StartRunParams) (run *batonv1.Run, created bool, err error) {
	if p == nil || p.Job == "" {
		return nil, false, errors.New("start run: job name is required")
	}
	resp, err := c.runs.StartRun(ctx, &batonv1.StartRunRequest{
		Job:       p.Job,
		Params:    p.Params,
		RequestId: p.RequestID,
	})
	if err != nil {
		return nil, false, wrap(fmt.Sprintf("start run of job %q", p.Job), err)
	}
	return resp.GetRun(), resp.GetCreated(), nil
}

// GetRun returns a run with every task instance and its latest attempt.
func (c *Client) GetRun(ctx context.Context, runID int64) (*batonv1.Run, error) {
	resp, err := c.runs.GetRun(ctx, &batonv1.GetRunRequest{RunId: runID})
	if err != nil {
		return nil, wrap(fmt.Sprintf("get run %d", runID), err)
	}
	if resp.GetRun() == nil {
		return nil, fmt.Errorf("get run %d: response has no run", runID)
	}
	return resp.GetRun(), nil
}

// ListRuns returns runs newest first, without their task instances: only
// the named job's runs when job is not empty, and at most limit runs when
// limit is positive. It follows the server's pages until it has enough.
func (c *Client) ListRuns(ctx context.Context, job string, limit int) ([]*batonv1.Run, error) {
	var (
		runs  []*batonv1.Run
		token string
	)
	seen := make(map[string]bool)
	for {
		size := maxPageSize
		if limit > 0 {
			size = min(limit-len(runs), maxPageSize)
		}
		resp, err := c.runs.ListRuns(ctx, &batonv1.ListRunsRequest{
			Job:       job,
			PageSize:  int32(size),
			PageToken: token,
		})
		if err != nil {
			return nil, wrap("list runs", err)
		}
		for _, r := range resp.GetRuns() {
			if limit > 0 && len(runs) == limit {
				break
			}
			runs = append(runs, r)
		}
		token = resp.GetNextPageToken()
		if token == "" || (limit > 0 && len(runs) >= limit) {
			return runs, nil
		}
		// A server that hands back a token it gave before would make this
		// loop forever.
		if seen[token] {
			return nil, fmt.Errorf("list runs: server repeated page token %q", token)
		}
		seen[token] = true
	}
}

// CancelRun stops every running child of a run and marks it cancelled. It
// returns the run as the server left it (usually cancelling). Cancelling a
// finished run fails with codes.FailedPrecondition.
func (c *Client) CancelRun(ctx context.Context, runID int64, reason string) (*batonv1.Run, error) {
	resp, err := c.runs.CancelRun(ctx, &batonv1.CancelRunRequest{RunId: runID, Reason: reason})
	if err != nil {
		return nil, wrap(fmt.Sprintf("cancel run %d", runID), err)
	}
	return resp.GetRun(), nil
}

// RestartRunParams says which run RestartRun restarts and what runs again.
// From and All choose the mode; with neither, the run restarts from its
// failures.
type RestartRunParams struct {
	// RunID is the run to restart. Required.
	RunID int64
	// From, when set, also runs this task and everything downstream of it
	// again, succeeded or not (RESTART_MODE_FROM_TASK).
	From string
	// All runs every task instance again (RESTART_MODE_ALL). It may not be
	// combined with From.
	All bool
	// Reason says why; the control plane records it with the restart.
	Reason string
}

// request returns the RestartRunRequest p asks for, or an error naming the
// field that is wrong.
func (p *RestartRunParams) request() (*batonv1.RestartRunRequest, error) {
	switch {
	case p == nil || p.RunID <= 0:
		return nil, errors.New("restart run: run id must be positive")
	case p.From != "" && p.All:
		return nil, fmt.Errorf("restart run %d: From and All cannot be combined", p.RunID)
	}
	req := &batonv1.RestartRunRequest{RunId: p.RunID, Reason: p.Reason, Mode: batonv1.RestartMode_RESTART_MODE_FAILED}
	switch {
	case p.From != "":
		req.Mode, req.FromTask = batonv1.RestartMode_RESTART_MODE_FROM_TASK, p.From
	case p.All:
		req.Mode = batonv1.RestartMode_RESTART_MODE_ALL
	}
	return req, nil
}

// RestartRun continues a run that has ended, under the same run id:
// succeeded task instances are kept with their outputs and the rest run
// again (see [RestartRunParams] for the modes). It returns the run as the
// server left it, usually running, with RestartCount grown by one; pass
// that count as [WaitOptions].FromRestart to follow the restart without the
// events of earlier ones.
//
// A run still active fails with codes.FailedPrecondition, an unknown run
// with codes.NotFound, and a From task the run's job does not have with
// codes.InvalidArgument.
func (c *Client) RestartRun(ctx context.Context, p *RestartRunParams) (*batonv1.Run, error) {
	req, err := p.request()
	if err != nil {
		return nil, err
	}
	resp, err := c.runs.RestartRun(ctx, req)
	if err != nil {
		return nil, wrap(fmt.Sprintf("restart run %d", p.RunID), err)
	}
	if resp.GetRun() == nil {
		return nil, fmt.Errorf("restart run %d: response has no run", p.RunID)
	}
	return resp.GetRun(), nil
}

// ListAttempts returns the attempt history of a run, oldest first: every
// attempt of every task instance, with why it was made (first, retry,
// restart, replacement), its outcome, any outcome reported after it was
// lost (LateState), and the run's restart count when it was made. When
// task is not empty, only that task's attempts are returned.
func (c *Client) ListAttempts(ctx context.Context, runID int64, task string) ([]*batonv1.Attempt, error) {
	resp, err := c.runs.ListAttempts(ctx, &batonv1.ListAttemptsRequest{RunId: runID, Task: task})
	if err != nil {
		op := fmt.Sprintf("list attempts of run %d", runID)
		if task != "" {
			op += fmt.Sprintf(" task %q", task)
		}
		return nil, wrap(op, err)
	}
	return resp.GetAttempts(), nil
}

// TaskLogsParams selects the attempt whose logs GetTaskLogs returns.
type TaskLogsParams struct {
	// RunID is the run. Required.
	RunID int64
	// Task is the task's name. Required.
	Task string
	// ItemIndex selects an item of a for-each task; nil for a plain task.
	ItemIndex *int32
	// AttemptID selects an attempt; 0 means the latest.
	AttemptID int64
}

// GetTaskLogs returns the stored stdout and stderr of one attempt of a task
// instance.
func (c *Client) GetTaskLogs(ctx context.Context, p *TaskLogsParams) (*batonv1.GetTaskLogsResponse, error) {
	if p == nil || p.Task == "" {
		return nil, errors.New("get task logs: task name is required")
	}
	resp, err := c.runs.GetTaskLogs(ctx, &batonv1.GetTaskLogsRequest{
		RunId:     p.RunID,
		Task:      p.Task,
		ItemIndex: p.ItemIndex,
		AttemptId: p.AttemptID,
	})
	if err != nil {
		return nil, wrap(fmt.Sprintf("get logs of run %d task %q", p.RunID, p.Task), err)
	}
	return resp, nil
}

// ListAgents returns every agent that has connected, live ones first.
func (c *Client) ListAgents(ctx context.Context) ([]*batonv1.Agent, error) {
	resp, err := c.agents.ListAgents(ctx, &batonv1.ListAgentsRequest{})
	if err != nil {
		return nil, wrap("list agents", err)
	}
	return resp.GetAgents(), nil
}

// callError is an error from an RPC together with the operation that
// failed.
type callError struct {
	op  string
	err error
}

func wrap(op string, err error) error { return &callError{op: op, err: err} }

// Error returns the operation and, for a gRPC status, the server's message
// without grpc's "rpc error: code = … desc = …" decoration.
func (e *callError) Error() string {
	if st, ok := status.FromError(e.err); ok {
		msg := st.Message()
		if msg == "" {
			msg = st.Code().String()
		}
		return e.op + ": " + msg
	}
	return e.op + ": " + e.err.Error()
}

// Unwrap returns the underlying error, so status.Code and errors.As see the
// gRPC status.
func (e *callError) Unwrap() error { return e.err }

// ApproveAgent records what an agent may claim; with no labels and no
// slots, what the connected agent claims now (and its certificate).
func (c *Client) ApproveAgent(ctx context.Context, name string, labels map[string]string, slots int32) (*batonv1.ApproveAgentResponse, error) {
	resp, err := c.agents.ApproveAgent(ctx, &batonv1.ApproveAgentRequest{Name: name, Labels: labels, Slots: slots})
	if err != nil {
		return nil, wrap(fmt.Sprintf("approve agent %q", name), err)
	}
	return resp, nil
}

// RevokeAgent removes an agent's approval.
func (c *Client) RevokeAgent(ctx context.Context, name string) error {
	if _, err := c.agents.RevokeAgent(ctx, &batonv1.RevokeAgentRequest{Name: name}); err != nil {
		return wrap(fmt.Sprintf("revoke agent %q", name), err)
	}
	return nil
}
