package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	batonv1 "github.com/batonhq/baton/gen/baton/v1"
	"github.com/batonhq/baton/server/engine"
	"github.com/batonhq/baton/server/job"
	"github.com/batonhq/baton/server/scheduler"
	"github.com/batonhq/baton/server/store"
)

// Limits on StartRun input.
const (
	maxParams       = 256
	maxParamValue   = 64 << 10
	maxRequestID    = 200
	defaultPageSize = 50
	maxPageSize     = 1000
	watchPage       = 1000
	// watchPoll bounds how long WatchRun waits without a wake-up, so a
	// change made by another process is still seen.
	watchPoll = 2 * time.Second
)

// runService implements batonv1.RunServiceServer.
type runService struct {
	batonv1.UnimplementedRunServiceServer
	st     store.Store
	sched  *scheduler.Scheduler
	log    *slog.Logger
	logCap int64
	specs  *engine.Cache
	// stopping is closed when batond shuts down; watchers end then.
	stopping <-chan struct{}
}

func (s *runService) StartRun(ctx context.Context, req *batonv1.StartRunRequest) (*batonv1.StartRunResponse, error) {
	if req.GetJob() == "" {
		return nil, invalidArg("job", "required")
	}
	if err := s.sched.Status().Error(); err != nil {
		return nil, toStatus(ctx, s.log, err)
	}
	if !utf8.ValidString(req.GetRequestId()) || utf8.RuneCountInString(req.GetRequestId()) > maxRequestID {
		return nil, invalidArg("request_id", fmt.Sprintf("must be at most %d characters", maxRequestID))
	}
	j, err := s.st.JobGet(ctx, &store.JobGetParams{Name: req.GetJob()})
	if err != nil {
		return nil, toStatus(ctx, s.log, notFound(err, "job %q", req.GetJob()))
	}
	g, err := s.specs.Get(j)
	if err != nil {
		return nil, toStatus(ctx, s.log, fmt.Errorf("decode job %q: %w", j.Name, err))
	}
	spec := g.Spec
	params, err := mergeParams(spec, req.GetParams())
	if err != nil {
		return nil, err
	}
	insts := make([]store.InstanceInit, len(spec.Tasks))
	for i, t := range spec.Tasks {
		insts[i] = store.InstanceInit{Task: t.Name, Item: store.NoItem, State: store.InstancePending}
	}
	overlap := store.Overlap(spec.Overlap)
	if overlap == "" {
		overlap = store.OverlapForbid
	}
	res, err := s.sched.CreateRun(ctx, &store.RunCreateParams{
		JobID: j.ID, JobName: j.Name, JobVersion: j.Version, Overlap: overlap,
		Params: params, RequestID: req.GetRequestId(), Instances: insts,
	})
	if err != nil {
		return nil, toStatus(ctx, s.log, describe(err, store.ErrAlreadyActive,
			"job %q already has an active run (overlap: forbid); wait for it, cancel it, or set overlap: queue", j.Name))
	}
	if res.Created {
		s.log.InfoContext(ctx, "run started", slog.Int64("run_id", res.Run.ID), slog.String("job", j.Name),
			slog.Int("version", j.Version), slog.String("state", string(res.Run.State)))
	}
	run, err := s.st.RunGet(ctx, &store.RunGetParams{ID: res.Run.ID})
	if err != nil {
		return nil, toStatus(ctx, s.log, err)
	}
	return &batonv1.StartRunResponse{Run: runToProto(run), Created: res.Created}, nil
}

// mergeParams applies request parameters over the job's defaults. A
// parameter the job does not declare is refused, so a typo cannot pass
// silently.
func mergeParams(spec *job.Spec, given map[string]string) (map[string]string, error) {
	if len(given) > maxParams {
		return nil, invalidArg("params", fmt.Sprintf("at most %d parameters", maxParams))
	}
	out := make(map[string]string, len(spec.Params))
	for k, v := range spec.Params {
		out[k] = v
	}
	for k, v := range given {
		if _, ok := spec.Params[k]; !ok {
			declared := make([]string, 0, len(spec.Params))
			for name := range spec.Params {
				declared = append(declared, name)
			}
			hint := "the job declares no params"
			if len(declared) > 0 {
				hint = "declared: " + strings.Join(slices.Sorted(slices.Values(declared)), ", ")
			}
			return nil, invalidArg("params."+k, fmt.Sprintf("job %q has no parameter %q (%s)", spec.Name, k, hint))
		}
		if len(v) > maxParamValue || !utf8.ValidString(v) {
			return nil, invalidArg("params."+k, fmt.Sprintf("must be valid UTF-8 of at most %d bytes", maxParamValue))
		}
		out[k] = v
	}
	return out, nil
}

func (s *runService) GetRun(ctx context.Context, req *batonv1.GetRunRequest) (*batonv1.GetRunResponse, error) {
	run, err := s.st.RunGet(ctx, &store.RunGetParams{ID: req.GetRunId()})
	if err != nil {
		return nil, toStatus(ctx, s.log, notFound(err, "run %d", req.GetRunId()))
	}
	insts, err := s.st.InstanceList(ctx, &store.InstanceListParams{RunID: run.ID})
	if err != nil {
		return nil, toStatus(ctx, s.log, err)
	}
	atts, err := s.st.AttemptList(ctx, &store.AttemptListParams{RunID: run.ID})
	if err != nil {
		return nil, toStatus(ctx, s.log, err)
	}
	byID := make(map[int64]*store.Attempt, len(atts))
	for _, a := range atts {
		byID[a.ID] = a
	}
	out := runToProto(run)
	for _, in := range insts {
		out.Tasks = append(out.Tasks, taskRunToProto(in, byID[in.AttemptID]))
	}
	return &batonv1.GetRunResponse{Run: out}, nil
}

func (s *runService) ListRuns(ctx context.Context, req *batonv1.ListRunsRequest) (*batonv1.ListRunsResponse, error) {
	size := int(req.GetPageSize())
	switch {
	case size < 0:
		return nil, invalidArg("page_size", "must not be negative")
	case size == 0:
		size = defaultPageSize
	case size > maxPageSize:
		size = maxPageSize
	}
	var before int64
	if tok := req.GetPageToken(); tok != "" {
		v, err := strconv.ParseInt(tok, 10, 64)
		if err != nil || v <= 0 {
			return nil, invalidArg("page_token", "not a token from a previous ListRuns")
		}
		before = v
	}
	runs, err := s.st.RunList(ctx, &store.RunListParams{JobName: req.GetJob(), BeforeID: before, Limit: size + 1})
	if err != nil {
		return nil, toStatus(ctx, s.log, err)
	}
	out := &batonv1.ListRunsResponse{}
	if len(runs) > size {
		runs = runs[:size]
		out.NextPageToken = strconv.FormatInt(runs[size-1].ID, 10)
	}
	for _, r := range runs {
		out.Runs = append(out.Runs, runToProto(r))
	}
	return out, nil
}

func (s *runService) WatchRun(req *batonv1.WatchRunRequest, stream batonv1.RunService_WatchRunServer) error {
	ctx := stream.Context()
	id := req.GetRunId()
	if _, err := s.st.RunGet(ctx, &store.RunGetParams{ID: id}); err != nil {
		return toStatus(ctx, s.log, notFound(err, "run %d", id))
	}
	cursor := req.GetAfterCursor()
	poll := time.NewTimer(watchPoll)
	defer poll.Stop()
	for {
		changed := s.sched.Changed(id)
		evs, err := s.st.EventList(ctx, &store.EventListParams{RunID: id, After: cursor, Limit: watchPage})
		if err != nil {
			return toStatus(ctx, s.log, err)
		}
		for _, ev := range evs {
			if err := stream.Send(&batonv1.WatchRunResponse{Event: eventToProto(ev)}); err != nil {
				return err
			}
			cursor = ev.Cursor
		}
		if len(evs) == watchPage {
			continue
		}
		// The stream ends once the run is over and every event up to that
		// point was sent. (A restarted run's earlier terminal event is
		// followed by more events, and so does not end it.)
		run, err := s.st.RunGet(ctx, &store.RunGetParams{ID: id})
		if err != nil {
			return toStatus(ctx, s.log, err)
		}
		if run.State.Terminal() {
			more, err := s.st.EventList(ctx, &store.EventListParams{RunID: id, After: cursor, Limit: 1})
			if err != nil {
				return toStatus(ctx, s.log, err)
			}
			if len(more) == 0 {
				return nil
			}
			continue
		}
		poll.Reset(watchPoll)
		select {
		case <-changed:
		case <-poll.C:
		case <-ctx.Done():
			return ctx.Err()
		case <-s.stopping:
			return status.Error(codes.Unavailable, "batond is shutting down; watch again to resume")
		}
	}
}

func (s *runService) CancelRun(ctx context.Context, req *batonv1.CancelRunRequest) (*batonv1.CancelRunResponse, error) {
	id := req.GetRunId()
	if err := s.sched.Cancel(ctx, id, req.GetReason()); err != nil {
		err = notFound(err, "run %d", id)
		return nil, toStatus(ctx, s.log, describe(err, scheduler.ErrNotActive, "run %d is already over", id))
	}
	run, err := s.st.RunGet(ctx, &store.RunGetParams{ID: id})
	if err != nil {
		return nil, toStatus(ctx, s.log, err)
	}
	s.log.InfoContext(ctx, "run cancel requested", slog.Int64("run_id", id), slog.String("reason", req.GetReason()))
	return &batonv1.CancelRunResponse{Run: runToProto(run)}, nil
}

func (s *runService) GetTaskLogs(ctx context.Context, req *batonv1.GetTaskLogsRequest) (*batonv1.GetTaskLogsResponse, error) {
	if req.GetTask() == "" {
		return nil, invalidArg("task", "required")
	}
	insts, err := s.st.InstanceList(ctx, &store.InstanceListParams{RunID: req.GetRunId()})
	if err != nil {
		return nil, toStatus(ctx, s.log, err)
	}
	if len(insts) == 0 {
		if _, err := s.st.RunGet(ctx, &store.RunGetParams{ID: req.GetRunId()}); err != nil {
			return nil, toStatus(ctx, s.log, notFound(err, "run %d", req.GetRunId()))
		}
	}
	item := store.NoItem
	if req.ItemIndex != nil {
		item = int(req.GetItemIndex())
	}
	var inst *store.Instance
	for _, in := range insts {
		if in.Task == req.GetTask() && in.Item == item {
			inst = in
			break
		}
	}
	if inst == nil {
		what := fmt.Sprintf("task %q", req.GetTask())
		if item != store.NoItem {
			what = fmt.Sprintf("item %d of task %q", item, req.GetTask())
		}
		return nil, toStatus(ctx, s.log, notFound(store.ErrNotFound, "%s in run %d", what, req.GetRunId()))
	}
	attemptID := req.GetAttemptId()
	if attemptID == 0 {
		attemptID = inst.AttemptID
	}
	out := &batonv1.GetTaskLogsResponse{AttemptId: attemptID}
	if attemptID == 0 {
		return out, nil // never ran
	}
	att, err := s.st.AttemptGet(ctx, &store.AttemptGetParams{ID: attemptID})
	if err != nil || att.InstanceID != inst.ID {
		return nil, toStatus(ctx, s.log, notFound(store.ErrNotFound, "attempt %d of task %q", attemptID, req.GetTask()))
	}
	chunks, err := s.st.LogList(ctx, &store.LogListParams{AttemptID: attemptID})
	if err != nil {
		return nil, toStatus(ctx, s.log, err)
	}
	var total int64
	// Agents cut output at any byte, so a character may straddle two
	// chunks of a stream: its first bytes wait for the stream's next
	// chunk, and only bytes that are not UTF-8 become U+FFFD.
	carry := map[store.LogStream][]byte{}
	last := map[store.LogStream]*batonv1.TaskLogChunk{}
	for _, c := range chunks {
		total += int64(len(c.Data))
		data, rest := cutIncomplete(slices.Concat(carry[c.Stream], c.Data))
		carry[c.Stream] = rest
		last[c.Stream] = &batonv1.TaskLogChunk{
			Stream: streamToProto(c.Stream),
			Data:   strings.ToValidUTF8(string(data), "\uFFFD"),
			Time:   timestamppb.New(c.At),
		}
		out.Chunks = append(out.Chunks, last[c.Stream])
	}
	for stream, rest := range carry {
		if len(rest) > 0 { // the output ends inside a character
			last[stream].Data += strings.ToValidUTF8(string(rest), "\uFFFD")
		}
	}
	out.Truncated = total >= s.logCap
	out.StdoutTail = att.StdoutTail
	out.StderrTail = att.StderrTail
	return out, nil
}

// cutIncomplete splits b before a character cut short at its end: the
// first bytes of a UTF-8 sequence whose remaining bytes are missing.
func cutIncomplete(b []byte) (whole, rest []byte) {
	for i := len(b) - 1; i >= 0 && i > len(b)-utf8.UTFMax; i-- {
		if utf8.RuneStart(b[i]) {
			if !utf8.FullRune(b[i:]) {
				return b[:i], b[i:]
			}
			break
		}
	}
	return b, nil
}

func (s *runService) RestartRun(ctx context.Context, req *batonv1.RestartRunRequest) (*batonv1.RestartRunResponse, error) {
	id := req.GetRunId()
	var mode engine.RestartMode
	switch req.GetMode() {
	case batonv1.RestartMode_RESTART_MODE_UNSPECIFIED, batonv1.RestartMode_RESTART_MODE_FAILED:
		mode = engine.RestartFailed
		if req.GetFromTask() != "" {
			return nil, invalidArg("from_task", "only with mode RESTART_MODE_FROM_TASK")
		}
	case batonv1.RestartMode_RESTART_MODE_FROM_TASK:
		mode = engine.RestartFrom
		if req.GetFromTask() == "" {
			return nil, invalidArg("from_task", "required with mode RESTART_MODE_FROM_TASK")
		}
	case batonv1.RestartMode_RESTART_MODE_ALL:
		mode = engine.RestartAll
		if req.GetFromTask() != "" {
			return nil, invalidArg("from_task", "only with mode RESTART_MODE_FROM_TASK")
		}
	default:
		return nil, invalidArg("mode", fmt.Sprintf("unknown restart mode %v", req.GetMode()))
	}
	err := s.sched.Restart(ctx, id, mode, req.GetFromTask(), req.GetReason())
	var bad *scheduler.BadRestartError
	switch {
	case errors.Is(err, scheduler.ErrActive):
		return nil, status.Errorf(codes.FailedPrecondition, "run %d is still active; cancel it or wait for it to end before restarting", id)
	case errors.As(err, &bad):
		return nil, invalidArg("from_task", bad.Msg)
	case err != nil:
		err = notFound(err, "run %d", id)
		return nil, toStatus(ctx, s.log, err)
	}
	run, err := s.st.RunGet(ctx, &store.RunGetParams{ID: id})
	if err != nil {
		return nil, toStatus(ctx, s.log, err)
	}
	s.log.InfoContext(ctx, "run restart requested", slog.Int64("run_id", id), slog.String("mode", req.GetMode().String()))
	return &batonv1.RestartRunResponse{Run: runToProto(run)}, nil
}

func (s *runService) ListAttempts(ctx context.Context, req *batonv1.ListAttemptsRequest) (*batonv1.ListAttemptsResponse, error) {
	id := req.GetRunId()
	if _, err := s.st.RunGet(ctx, &store.RunGetParams{ID: id}); err != nil {
		return nil, toStatus(ctx, s.log, notFound(err, "run %d", id))
	}
	atts, err := s.st.AttemptList(ctx, &store.AttemptListParams{RunID: id})
	if err != nil {
		return nil, toStatus(ctx, s.log, err)
	}
	out := &batonv1.ListAttemptsResponse{}
	for _, a := range atts {
		if req.GetTask() != "" && a.Task != req.GetTask() {
			continue
		}
		out.Attempts = append(out.Attempts, attemptToProto(a))
	}
	return out, nil
}
