package fakeserver

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strconv"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	batonv1 "github.com/batonhq/baton/gen/baton/v1"
)

type runService struct {
	batonv1.UnimplementedRunServiceServer
	s *Server
}

func (rs *runService) StartRun(_ context.Context, req *batonv1.StartRunRequest) (*batonv1.StartRunResponse, error) {
	s := rs.s
	s.mu.Lock()
	defer s.mu.Unlock()
	s.starts = append(s.starts, proto.Clone(req).(*batonv1.StartRunRequest))
	if id, ok := s.byRequest[req.GetRequestId()]; ok && req.GetRequestId() != "" {
		return &batonv1.StartRunResponse{Run: s.runs[id]}, nil
	}
	tmpl, ok := s.templates[req.GetJob()]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "job %q not found", req.GetJob())
	}
	f := RunFixture{Run: proto.Clone(tmpl.Run).(*batonv1.Run), Events: tmpl.Events, Updates: tmpl.Updates}
	f.Run.Job = req.GetJob()
	f.Run.RequestId = req.GetRequestId()
	if len(req.GetParams()) > 0 {
		f.Run.Params = req.GetParams()
	}
	id := s.addRunLocked(f)
	if req.GetRequestId() != "" {
		s.byRequest[req.GetRequestId()] = id
	}
	return &batonv1.StartRunResponse{Run: s.runs[id], Created: true}, nil
}

func (rs *runService) GetRun(_ context.Context, req *batonv1.GetRunRequest) (*batonv1.GetRunResponse, error) {
	s := rs.s
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.runLocked(req.GetRunId())
	if !ok {
		return nil, status.Errorf(codes.NotFound, "run %d not found", req.GetRunId())
	}
	return &batonv1.GetRunResponse{Run: r}, nil
}

func (rs *runService) ListRuns(_ context.Context, req *batonv1.ListRunsRequest) (*batonv1.ListRunsResponse, error) {
	s := rs.s
	s.mu.Lock()
	defer s.mu.Unlock()
	size := int(req.GetPageSize())
	switch {
	case size < 0 || size > 1000:
		return nil, status.Errorf(codes.InvalidArgument, "page_size: must be between 0 and 1000, got %d", size)
	case size == 0:
		size = 50
	}
	size = min(size, s.maxPage)
	offset := 0
	if tok := req.GetPageToken(); tok != "" {
		n, err := strconv.Atoi(tok)
		if err != nil || n < 0 {
			return nil, status.Errorf(codes.InvalidArgument, "page_token: malformed %q", tok)
		}
		offset = n
	}
	var all []*batonv1.Run
	for id := range s.runs {
		r, _ := s.runLocked(id)
		if req.GetJob() == "" || r.GetJob() == req.GetJob() {
			lite := proto.Clone(r).(*batonv1.Run)
			lite.Tasks = nil
			all = append(all, lite)
		}
	}
	slices.SortFunc(all, func(a, b *batonv1.Run) int { return cmp.Compare(b.GetId(), a.GetId()) })
	resp := &batonv1.ListRunsResponse{}
	if offset < len(all) {
		end := min(offset+size, len(all))
		resp.Runs = all[offset:end]
		if end < len(all) {
			resp.NextPageToken = strconv.Itoa(end)
		}
	}
	return resp, nil
}

func (rs *runService) WatchRun(req *batonv1.WatchRunRequest, stream grpc.ServerStreamingServer[batonv1.WatchRunResponse]) error {
	s := rs.s
	s.mu.Lock()
	s.watches = append(s.watches, proto.Clone(req).(*batonv1.WatchRunRequest))
	if _, ok := s.runs[req.GetRunId()]; !ok {
		s.mu.Unlock()
		return status.Errorf(codes.NotFound, "run %d not found", req.GetRunId())
	}
	var brk *Break
	if q := s.breaks[req.GetRunId()]; len(q) > 0 {
		brk = &q[0]
		s.breaks[req.GetRunId()] = q[1:]
	}
	cursor := req.GetAfterCursor()
	if s.replayAll {
		cursor = 0
	}
	s.mu.Unlock()

	ctx := stream.Context()
	sent := 0
	for {
		s.mu.Lock()
		var pending []*batonv1.RunEvent
		for _, ev := range s.events[req.GetRunId()] {
			if ev.GetCursor() > cursor {
				pending = append(pending, ev)
			}
		}
		changed := s.changed
		s.mu.Unlock()

		for _, ev := range pending {
			if brk != nil && sent == brk.After {
				return s.breakStream(ctx, brk)
			}
			// Record the cursor before sending, so a client that reacts to
			// the event with GetRun already sees the run's next state.
			s.mu.Lock()
			s.sent[req.GetRunId()] = max(s.sent[req.GetRunId()], ev.GetCursor())
			log := s.events[req.GetRunId()]
			last := ev.GetCursor() == log[len(log)-1].GetCursor()
			through := s.through
			s.mu.Unlock()
			if err := stream.Send(&batonv1.WatchRunResponse{Event: ev}); err != nil {
				return err
			}
			sent++
			cursor = ev.GetCursor()
			if ev.GetTask() == "" && terminal(ev.GetRunState()) && (last || !through) {
				return nil
			}
		}
		if brk != nil && sent == brk.After {
			return s.breakStream(ctx, brk)
		}
		if len(pending) == 0 {
			// Resumed after the last event of a run that is over: nothing
			// more will come.
			s.mu.Lock()
			r, _ := s.runLocked(req.GetRunId())
			s.mu.Unlock()
			if terminal(r.GetState()) {
				return nil
			}
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		}
	}
}

func (s *Server) breakStream(ctx context.Context, b *Break) error {
	if !b.Drop {
		return cmp.Or(b.Err, status.Error(codes.Unavailable, "fake: stream broken"))
	}
	s.lis.dropAll()
	<-ctx.Done()
	return status.FromContextError(ctx.Err()).Err()
}

func (rs *runService) CancelRun(_ context.Context, req *batonv1.CancelRunRequest) (*batonv1.CancelRunResponse, error) {
	s := rs.s
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cancels = append(s.cancels, proto.Clone(req).(*batonv1.CancelRunRequest))
	cur, ok := s.runLocked(req.GetRunId())
	if !ok {
		return nil, status.Errorf(codes.NotFound, "run %d not found", req.GetRunId())
	}
	if terminal(cur.GetState()) {
		return nil, status.Errorf(codes.FailedPrecondition, "run %d already ended (%s)", cur.GetId(), cur.GetState())
	}
	r := proto.Clone(cur).(*batonv1.Run)
	s.runs[r.GetId()] = r
	delete(s.updates, r.GetId())
	r.State = batonv1.RunState_RUN_STATE_CANCELLING
	r.Error = cmp.Or(req.GetReason(), "cancelled")
	return &batonv1.CancelRunResponse{Run: r}, nil
}

func (rs *runService) GetTaskLogs(_ context.Context, req *batonv1.GetTaskLogsRequest) (*batonv1.GetTaskLogsResponse, error) {
	s := rs.s
	s.mu.Lock()
	defer s.mu.Unlock()
	s.logCalls = append(s.logCalls, proto.Clone(req).(*batonv1.GetTaskLogsRequest))
	l, ok := s.logs[newLogKey(req.GetRunId(), req.GetTask(), req.ItemIndex)]
	if !ok || (req.GetAttemptId() != 0 && req.GetAttemptId() != l.GetAttemptId()) {
		return nil, status.Errorf(codes.NotFound, "no logs for run %d task %q", req.GetRunId(), req.GetTask())
	}
	return l, nil
}

func (rs *runService) RestartRun(_ context.Context, req *batonv1.RestartRunRequest) (*batonv1.RestartRunResponse, error) {
	s := rs.s
	s.mu.Lock()
	defer s.mu.Unlock()
	s.restartCalls = append(s.restartCalls, proto.Clone(req).(*batonv1.RestartRunRequest))
	id := req.GetRunId()
	cur, ok := s.runLocked(id)
	if !ok {
		return nil, status.Errorf(codes.NotFound, "run %d not found", id)
	}
	switch req.GetMode() {
	case batonv1.RestartMode_RESTART_MODE_UNSPECIFIED, batonv1.RestartMode_RESTART_MODE_FAILED, batonv1.RestartMode_RESTART_MODE_ALL:
		if req.GetFromTask() != "" {
			return nil, status.Error(codes.InvalidArgument, "from_task: only with mode RESTART_MODE_FROM_TASK")
		}
	case batonv1.RestartMode_RESTART_MODE_FROM_TASK:
		if req.GetFromTask() == "" {
			return nil, status.Error(codes.InvalidArgument, "from_task: required with mode RESTART_MODE_FROM_TASK")
		}
	default:
		return nil, status.Errorf(codes.InvalidArgument, "mode: unknown restart mode %v", req.GetMode())
	}
	if !terminal(cur.GetState()) {
		return nil, status.Errorf(codes.FailedPrecondition, "run %d is still active (%s)", id, cur.GetState())
	}
	if from := req.GetFromTask(); from != "" &&
		!slices.ContainsFunc(cur.GetTasks(), func(t *batonv1.TaskRun) bool { return t.GetTask() == from }) {
		return nil, status.Errorf(codes.InvalidArgument, "from_task: job %q version %d has no task %q",
			cur.GetJob(), cur.GetJobVersion(), from)
	}

	var r Restart
	if q := s.restarts[id]; len(q) > 0 {
		r, s.restarts[id] = q[0], q[1:]
	}
	next := proto.Clone(cur).(*batonv1.Run)
	next.State, next.Error, next.EndTime = batonv1.RunState_RUN_STATE_RUNNING, "", nil
	if r.Run != nil {
		next = proto.Clone(r.Run).(*batonv1.Run)
	}
	count := cur.GetRestartCount() + 1
	next.Id, next.Job, next.RequestId, next.RestartCount = id, cur.GetJob(), cur.GetRequestId(), count
	s.runs[id] = next
	delete(s.updates, id)

	at := r.At
	if at.IsZero() {
		at = time.Now()
	}
	s.appendLocked(id, []*batonv1.RunEvent{{
		Time:     timestamppb.New(at),
		RunState: batonv1.RunState_RUN_STATE_RUNNING,
		Message:  fmt.Sprintf("restart %d: %s", count, cmp.Or(req.GetReason(), "restarted by request")),
	}})
	log := s.events[id]
	base := log[len(log)-1].GetCursor()
	s.appendLocked(id, r.Events)
	for _, u := range r.Updates {
		ur := proto.Clone(u.Run).(*batonv1.Run)
		ur.Id, ur.Job, ur.RequestId, ur.RestartCount = id, cur.GetJob(), cur.GetRequestId(), count
		s.updates[id] = append(s.updates[id], RunUpdate{AtCursor: base + u.AtCursor, Run: ur})
	}
	return &batonv1.RestartRunResponse{Run: next}, nil
}

func (rs *runService) ListAttempts(_ context.Context, req *batonv1.ListAttemptsRequest) (*batonv1.ListAttemptsResponse, error) {
	s := rs.s
	s.mu.Lock()
	defer s.mu.Unlock()
	s.attemptCalls = append(s.attemptCalls, proto.Clone(req).(*batonv1.ListAttemptsRequest))
	if _, ok := s.runs[req.GetRunId()]; !ok {
		return nil, status.Errorf(codes.NotFound, "run %d not found", req.GetRunId())
	}
	resp := &batonv1.ListAttemptsResponse{}
	for _, a := range s.attempts[req.GetRunId()] {
		if req.GetTask() == "" || a.GetTask() == req.GetTask() {
			resp.Attempts = append(resp.Attempts, a)
		}
	}
	return resp, nil
}

func terminal(st batonv1.RunState) bool {
	return st == batonv1.RunState_RUN_STATE_SUCCEEDED || st == batonv1.RunState_RUN_STATE_FAILED ||
		st == batonv1.RunState_RUN_STATE_CANCELLED
}
