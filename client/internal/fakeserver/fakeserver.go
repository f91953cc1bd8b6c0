// Package fakeserver is an in-process stand-in for batond's public gRPC API,
// for testing the client library and the CLI. It serves the four baton.v1
// services over real gRPC on a loopback port, answers from fixtures the
// test loads, records the requests it gets, and can break WatchRun streams
// on cue (with a status or by dropping the connection) to exercise
// reconnects.
//
// It is a fake at the network seam: it keeps no engine and decides nothing
// about runs; runs change only when the test says so. RestartRun applies a
// restart the test queued with QueueRestart (or a bare one), and
// ListAttempts returns the history the test set with SetAttempts.
package fakeserver

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	batonv1 "github.com/batonhq/baton/gen/baton/v1"
)

// RunFixture is a run and its event log.
type RunFixture struct {
	// Run is the run as GetRun returns it. Its ID is assigned by AddRun or
	// StartRun.
	Run *batonv1.Run
	// Events is the run's event log in order. Zero cursors are numbered
	// 1, 2, …; RunId is filled in.
	Events []*batonv1.RunEvent
	// Updates are later states of the run. GetRun returns the last update
	// whose AtCursor a WatchRun stream has sent, so the run seen by GetRun
	// moves on as its events are watched.
	Updates []RunUpdate
}

// RunUpdate is the state of a run once the event at AtCursor was sent.
type RunUpdate struct {
	AtCursor int64
	Run      *batonv1.Run
}

// Break makes the next WatchRun stream of a run fail after sending After
// events of its own.
type Break struct {
	// After is how many events the broken stream sends first.
	After int
	// Err is the status the stream ends with. Ignored when Drop is set.
	Err error
	// Drop closes every client connection instead, as a crashed control
	// plane or a cut network would.
	Drop bool
}

// Restart is what RestartRun does to a run. The fake appends a run-state
// event back to running, "restart N: <reason>" at At, then Events; the
// run becomes Run, then each of Updates as its events are watched.
type Restart struct {
	// At is the time of the restart event. Zero means now.
	At time.Time
	// Run is the run right after the restart; its ID, Job, RequestId and
	// RestartCount are filled in. Nil means the run as it was, running
	// again with no error and no end time.
	Run *batonv1.Run
	// Events follow the restart event; cursors are assigned.
	Events []*batonv1.RunEvent
	// Updates are later states of the run. Their AtCursor counts the
	// events of Events from 1.
	Updates []RunUpdate
}

// Server is a running fake control plane. Its methods are safe for
// concurrent use.
type Server struct {
	addr string
	lis  *trackingListener
	grpc *grpc.Server
	done chan struct{}

	mu        sync.Mutex
	changed   chan struct{} // closed and replaced on every event append
	jobs      map[string][]*batonv1.Job
	applyErr  error
	runs      map[int64]*batonv1.Run
	updates   map[int64][]RunUpdate
	sent      map[int64]int64 // highest cursor sent per run
	maxPage   int
	events    map[int64][]*batonv1.RunEvent
	templates map[string]RunFixture
	byRequest map[string]int64
	nextRunID int64
	breaks    map[int64][]Break
	replayAll bool
	through   bool // streams run on past terminal events followed by more
	restarts  map[int64][]Restart
	attempts  map[int64][]*batonv1.Attempt
	logs      map[logKey]*batonv1.GetTaskLogsResponse
	agents    map[string]*batonv1.Agent
	agentSeen chan struct{} // closed and replaced when an agent session changes

	watches      []*batonv1.WatchRunRequest
	starts       []*batonv1.StartRunRequest
	cancels      []*batonv1.CancelRunRequest
	logCalls     []*batonv1.GetTaskLogsRequest
	restartCalls []*batonv1.RestartRunRequest
	attemptCalls []*batonv1.ListAttemptsRequest
}

type logKey struct {
	run  int64
	task string
	item int32 // -1 for a plain task
}

// New starts a fake control plane on 127.0.0.1 on a free port.
func New() (*Server, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("listen: %w", err)
	}
	s := &Server{
		addr:      l.Addr().String(),
		lis:       &trackingListener{Listener: l, conns: make(map[net.Conn]bool)},
		grpc:      grpc.NewServer(),
		done:      make(chan struct{}),
		changed:   make(chan struct{}),
		jobs:      make(map[string][]*batonv1.Job),
		runs:      make(map[int64]*batonv1.Run),
		updates:   make(map[int64][]RunUpdate),
		sent:      make(map[int64]int64),
		maxPage:   1000,
		events:    make(map[int64][]*batonv1.RunEvent),
		templates: make(map[string]RunFixture),
		byRequest: make(map[string]int64),
		nextRunID: 1,
		breaks:    make(map[int64][]Break),
		restarts:  make(map[int64][]Restart),
		attempts:  make(map[int64][]*batonv1.Attempt),
		logs:      make(map[logKey]*batonv1.GetTaskLogsResponse),
		agents:    make(map[string]*batonv1.Agent),
		agentSeen: make(chan struct{}),
	}
	batonv1.RegisterJobServiceServer(s.grpc, &jobService{s: s})
	batonv1.RegisterRunServiceServer(s.grpc, &runService{s: s})
	batonv1.RegisterAgentAdminServiceServer(s.grpc, &adminService{s: s})
	batonv1.RegisterAgentServiceServer(s.grpc, &agentService{s: s})
	go func() {
		defer close(s.done)
		_ = s.grpc.Serve(s.lis)
	}()
	return s, nil
}

// Start starts a fake control plane and stops it when the test ends.
func Start(t testing.TB) *Server {
	t.Helper()
	s, err := New()
	if err != nil {
		t.Fatalf("start fake server: %v", err)
	}
	t.Cleanup(s.Close)
	return s
}

// Addr returns the host:port the server listens on.
func (s *Server) Addr() string { return s.addr }

// Close stops the server, ending every open stream, and waits for it.
func (s *Server) Close() {
	s.grpc.Stop()
	<-s.done
}

// AddJob stores job as the next version of its name, as ApplyJob would.
func (s *Server) AddJob(job *batonv1.Job) {
	s.mu.Lock()
	defer s.mu.Unlock()
	j := proto.Clone(job).(*batonv1.Job)
	j.Version = int32(len(s.jobs[j.GetName()]) + 1)
	s.jobs[j.GetName()] = append(s.jobs[j.GetName()], j)
}

// SetApplyError makes ApplyJob and ValidateJob fail with err (nil restores
// normal behaviour).
func (s *Server) SetApplyError(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.applyErr = err
}

// AddRun stores a run and its event log and returns the run id it got.
func (s *Server) AddRun(f RunFixture) int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.addRunLocked(f)
}

func (s *Server) addRunLocked(f RunFixture) int64 {
	id := s.nextRunID
	s.nextRunID++
	r := proto.Clone(f.Run).(*batonv1.Run)
	r.Id = id
	s.runs[id] = r
	s.events[id] = nil
	s.appendLocked(id, f.Events)
	for _, u := range f.Updates {
		ur := proto.Clone(u.Run).(*batonv1.Run)
		ur.Id, ur.Job, ur.RequestId = id, r.GetJob(), r.GetRequestId()
		s.updates[id] = append(s.updates[id], RunUpdate{AtCursor: u.AtCursor, Run: ur})
	}
	return id
}

// runLocked returns run id as GetRun sees it now.
func (s *Server) runLocked(id int64) (*batonv1.Run, bool) {
	r, ok := s.runs[id]
	for _, u := range s.updates[id] {
		if u.AtCursor <= s.sent[id] {
			r = u.Run
		}
	}
	return r, ok
}

// SetRunTemplate makes StartRun of job create a run from f.
func (s *Server) SetRunTemplate(job string, f RunFixture) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.templates[job] = f
}

// SetRun replaces the stored state of run id (as GetRun returns it).
func (s *Server) SetRun(id int64, run *batonv1.Run) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := proto.Clone(run).(*batonv1.Run)
	r.Id = id
	s.runs[id] = r
	delete(s.updates, id)
}

// SetMaxPageSize caps the ListRuns page size below the API's 1000, so a
// test can make the client follow several pages.
func (s *Server) SetMaxPageSize(n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.maxPage = n
}

// AppendEvents adds events to a run's log; open WatchRun streams send them.
func (s *Server) AppendEvents(id int64, evs ...*batonv1.RunEvent) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.appendLocked(id, evs)
}

func (s *Server) appendLocked(id int64, evs []*batonv1.RunEvent) {
	log := s.events[id]
	for _, ev := range evs {
		e := proto.Clone(ev).(*batonv1.RunEvent)
		e.RunId = id
		if e.Cursor == 0 {
			e.Cursor = int64(len(log) + 1)
			if len(log) > 0 {
				e.Cursor = log[len(log)-1].GetCursor() + 1
			}
		}
		log = append(log, e)
	}
	s.events[id] = log
	close(s.changed)
	s.changed = make(chan struct{})
}

// BreakWatch queues a break for the next WatchRun stream of run id. Breaks
// apply one per stream, in the order queued.
func (s *Server) BreakWatch(id int64, b Break) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.breaks[id] = append(s.breaks[id], b)
}

// SetReplayAll makes WatchRun ignore after_cursor and send every event from
// the start, as a faulty server might.
func (s *Server) SetReplayAll(on bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.replayAll = on
}

// SetStreamThroughRestarts makes WatchRun end a stream only after a
// terminal event that is the last of the log, so a stream started before
// a restart carries on into the restart's events. Off (the default), a
// stream ends after every terminal run-state event. Either way, a stream
// resumed after the last event of a terminal run ends at once.
func (s *Server) SetStreamThroughRestarts(on bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.through = on
}

// QueueRestart queues what the next RestartRun of run id does. Restarts
// apply one per call, in the order queued; without one, RestartRun makes a
// bare restart (see [Restart]).
func (s *Server) QueueRestart(id int64, r Restart) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.restarts[id] = append(s.restarts[id], r)
}

// SetAttempts stores the attempt history ListAttempts returns for run id.
func (s *Server) SetAttempts(id int64, atts []*batonv1.Attempt) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.attempts[id] = nil
	for _, a := range atts {
		s.attempts[id] = append(s.attempts[id], proto.Clone(a).(*batonv1.Attempt))
	}
}

// SetLogs stores the logs GetTaskLogs returns for a task instance; item is
// nil for a plain task.
func (s *Server) SetLogs(run int64, task string, item *int32, logs *batonv1.GetTaskLogsResponse) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.logs[newLogKey(run, task, item)] = proto.Clone(logs).(*batonv1.GetTaskLogsResponse)
}

// AddAgent stores an agent as ListAgents returns it.
func (s *Server) AddAgent(a *batonv1.Agent) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.agents[a.GetName()] = proto.Clone(a).(*batonv1.Agent)
}

// Agent returns the stored agent of that name, and a channel closed at the
// next change of any agent session, so a test can wait for a change
// without polling on a timer.
func (s *Server) Agent(name string) (*batonv1.Agent, <-chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var a *batonv1.Agent
	if got, ok := s.agents[name]; ok {
		a = proto.Clone(got).(*batonv1.Agent)
	}
	return a, s.agentSeen
}

// WatchRequests returns the WatchRun requests received so far.
func (s *Server) WatchRequests() []*batonv1.WatchRunRequest {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.watches)
}

// StartRequests returns the StartRun requests received so far.
func (s *Server) StartRequests() []*batonv1.StartRunRequest {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.starts)
}

// CancelRequests returns the CancelRun requests received so far.
func (s *Server) CancelRequests() []*batonv1.CancelRunRequest {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.cancels)
}

// RestartRequests returns the RestartRun requests received so far.
func (s *Server) RestartRequests() []*batonv1.RestartRunRequest {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.restartCalls)
}

// AttemptRequests returns the ListAttempts requests received so far.
func (s *Server) AttemptRequests() []*batonv1.ListAttemptsRequest {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.attemptCalls)
}

// LogRequests returns the GetTaskLogs requests received so far.
func (s *Server) LogRequests() []*batonv1.GetTaskLogsRequest {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.logCalls)
}

// DropConnections closes every client connection the server holds.
func (s *Server) DropConnections() { s.lis.dropAll() }

func newLogKey(run int64, task string, item *int32) logKey {
	k := logKey{run: run, task: task, item: -1}
	if item != nil {
		k.item = *item
	}
	return k
}

// jobFile is the little of a job file the fake reads.
type jobFile struct {
	Name        string `yaml:"name"`
	Description string `yaml:"description"`
	Tasks       []struct {
		Name  string `yaml:"name"`
		Stage int32  `yaml:"stage"`
	} `yaml:"tasks"`
}

func parseJob(src string) (*batonv1.Job, error) {
	var f jobFile
	if err := yaml.Unmarshal([]byte(src), &f); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "parse job file: %v", err)
	}
	if f.Name == "" {
		return nil, status.Error(codes.InvalidArgument, "name: required")
	}
	j := &batonv1.Job{Name: f.Name, Description: f.Description, Source: src}
	for _, t := range f.Tasks {
		j.Tasks = append(j.Tasks, &batonv1.JobTask{Name: t.Name, Stage: t.Stage})
	}
	return j, nil
}

type jobService struct {
	batonv1.UnimplementedJobServiceServer
	s *Server
}

func (js *jobService) ApplyJob(_ context.Context, req *batonv1.ApplyJobRequest) (*batonv1.ApplyJobResponse, error) {
	s := js.s
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.applyErr != nil {
		return nil, s.applyErr
	}
	j, err := parseJob(req.GetSource())
	if err != nil {
		return nil, err
	}
	versions := s.jobs[j.Name]
	if n := len(versions); n > 0 && versions[n-1].GetSource() == j.Source {
		return &batonv1.ApplyJobResponse{Job: versions[n-1]}, nil
	}
	j.Version = int32(len(versions) + 1)
	j.CreateTime = timestamppb.Now()
	j.UpdateTime = j.CreateTime
	s.jobs[j.Name] = append(versions, j)
	return &batonv1.ApplyJobResponse{Job: j, Created: true}, nil
}

func (js *jobService) ValidateJob(_ context.Context, req *batonv1.ValidateJobRequest) (*batonv1.ValidateJobResponse, error) {
	s := js.s
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.applyErr != nil {
		return nil, s.applyErr
	}
	j, err := parseJob(req.GetSource())
	if err != nil {
		return nil, err
	}
	return &batonv1.ValidateJobResponse{Job: j}, nil
}

func (js *jobService) GetJob(_ context.Context, req *batonv1.GetJobRequest) (*batonv1.GetJobResponse, error) {
	s := js.s
	s.mu.Lock()
	defer s.mu.Unlock()
	versions := s.jobs[req.GetName()]
	if len(versions) == 0 {
		return nil, status.Errorf(codes.NotFound, "job %q not found", req.GetName())
	}
	v := req.GetVersion()
	if v == 0 {
		return &batonv1.GetJobResponse{Job: versions[len(versions)-1]}, nil
	}
	if v < 0 || int(v) > len(versions) {
		return nil, status.Errorf(codes.NotFound, "job %q has no version %d", req.GetName(), v)
	}
	return &batonv1.GetJobResponse{Job: versions[v-1]}, nil
}

func (js *jobService) ListJobs(context.Context, *batonv1.ListJobsRequest) (*batonv1.ListJobsResponse, error) {
	s := js.s
	s.mu.Lock()
	defer s.mu.Unlock()
	resp := &batonv1.ListJobsResponse{}
	for _, versions := range s.jobs {
		resp.Jobs = append(resp.Jobs, versions[len(versions)-1])
	}
	slices.SortFunc(resp.Jobs, func(a, b *batonv1.Job) int { return cmp.Compare(a.GetName(), b.GetName()) })
	return resp, nil
}

func (js *jobService) DeleteJob(_ context.Context, req *batonv1.DeleteJobRequest) (*batonv1.DeleteJobResponse, error) {
	s := js.s
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.jobs[req.GetName()]; !ok {
		return nil, status.Errorf(codes.NotFound, "job %q not found", req.GetName())
	}
	for id := range s.runs {
		r, _ := s.runLocked(id)
		if r.GetJob() == req.GetName() && !terminal(r.GetState()) {
			return nil, status.Errorf(codes.FailedPrecondition, "job %q has an active run %d", req.GetName(), r.GetId())
		}
	}
	delete(s.jobs, req.GetName())
	return &batonv1.DeleteJobResponse{}, nil
}

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

type adminService struct {
	batonv1.UnimplementedAgentAdminServiceServer
	s *Server
}

func (as *adminService) ListAgents(context.Context, *batonv1.ListAgentsRequest) (*batonv1.ListAgentsResponse, error) {
	s := as.s
	s.mu.Lock()
	defer s.mu.Unlock()
	resp := &batonv1.ListAgentsResponse{}
	for _, a := range s.agents {
		// Sessions update agents in place; hand out copies.
		resp.Agents = append(resp.Agents, proto.Clone(a).(*batonv1.Agent))
	}
	// Live ones first, then by name.
	slices.SortFunc(resp.Agents, func(a, b *batonv1.Agent) int {
		return cmp.Or(cmp.Compare(a.GetState(), b.GetState()), cmp.Compare(a.GetName(), b.GetName()))
	})
	return resp, nil
}

// agentService accepts agent sessions so that ListAgents shows real
// connections: a Hello registers the agent as connected, heartbeats update
// it, and the end of the stream marks it disconnected.
type agentService struct {
	batonv1.UnimplementedAgentServiceServer
	s *Server
}

func (as *agentService) Connect(stream grpc.BidiStreamingServer[batonv1.ConnectRequest, batonv1.ConnectResponse]) error {
	s := as.s
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	hello := first.GetHello()
	if hello == nil || hello.GetName() == "" {
		return status.Error(codes.InvalidArgument, "first message must be a hello with a name")
	}
	name := hello.GetName()
	s.mu.Lock()
	if a, ok := s.agents[name]; ok && a.GetState() == batonv1.AgentState_AGENT_STATE_CONNECTED {
		s.mu.Unlock()
		return status.Errorf(codes.AlreadyExists, "agent %q is already connected", name)
	}
	now := timestamppb.Now()
	s.agents[name] = &batonv1.Agent{
		Name:         name,
		Labels:       hello.GetLabels(),
		Slots:        hello.GetSlots(),
		Running:      int32(len(hello.GetRunning())),
		State:        batonv1.AgentState_AGENT_STATE_CONNECTED,
		Version:      hello.GetVersion(),
		Hostname:     hello.GetHostname(),
		Os:           hello.GetOs(),
		ConnectTime:  now,
		LastSeenTime: now,
	}
	s.agentChangedLocked()
	s.mu.Unlock()

	defer func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		s.agents[name].State = batonv1.AgentState_AGENT_STATE_DISCONNECTED
		s.agentChangedLocked()
	}()
	welcome := &batonv1.ConnectResponse{Msg: &batonv1.ConnectResponse_Welcome{Welcome: &batonv1.Welcome{
		HeartbeatInterval: durationpb.New(5 * time.Second),
		ServerVersion:     "fake",
	}}}
	if err := stream.Send(welcome); err != nil {
		return err
	}
	for {
		msg, err := stream.Recv()
		if err != nil {
			// The agent closing its side ends the session normally.
			if status.Code(err) == codes.Canceled || errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		if hb := msg.GetHeartbeat(); hb != nil {
			s.mu.Lock()
			s.agents[name].Running = int32(len(hb.GetRunning()))
			s.agents[name].LastSeenTime = timestamppb.Now()
			s.agentChangedLocked()
			s.mu.Unlock()
		}
	}
}

func (s *Server) agentChangedLocked() {
	close(s.agentSeen)
	s.agentSeen = make(chan struct{})
}

func terminal(st batonv1.RunState) bool {
	return st == batonv1.RunState_RUN_STATE_SUCCEEDED || st == batonv1.RunState_RUN_STATE_FAILED ||
		st == batonv1.RunState_RUN_STATE_CANCELLED
}

// trackingListener remembers the connections it accepted so DropConnections
// can cut them.
type trackingListener struct {
	net.Listener
	mu    sync.Mutex
	conns map[net.Conn]bool
}

func (l *trackingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	l.mu.Lock()
	l.conns[c] = true
	l.mu.Unlock()
	return c, nil
}

func (l *trackingListener) dropAll() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for c := range l.conns {
		_ = c.Close()
		delete(l.conns, c)
	}
}
