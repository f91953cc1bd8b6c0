// Package fakeserver is an in-process stand-in for batond's public gRPC API,
// for testing the client library and the CLI. It serves the baton.v1
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
	"fmt"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

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
	approvals map[string]*batonv1.AgentApproval
	agentSeen chan struct{} // closed and replaced when an agent session changes

	watches      []*batonv1.WatchRunRequest
	starts       []*batonv1.StartRunRequest
	cancels      []*batonv1.CancelRunRequest
	logCalls     []*batonv1.GetTaskLogsRequest
	restartCalls []*batonv1.RestartRunRequest
	attemptCalls []*batonv1.ListAttemptsRequest

	required   string // the token every call must carry; "" for none
	auths      []string
	tokens     []*batonv1.Token
	audit      []*batonv1.AuditRecord
	auditCalls []*batonv1.ListAuditRequest
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
	s.grpc = grpc.NewServer(grpc.UnaryInterceptor(s.unaryAuth), grpc.StreamInterceptor(s.streamAuth))
	batonv1.RegisterJobServiceServer(s.grpc, &jobService{s: s})
	batonv1.RegisterRunServiceServer(s.grpc, &runService{s: s})
	batonv1.RegisterAgentAdminServiceServer(s.grpc, &adminService{s: s})
	batonv1.RegisterAgentServiceServer(s.grpc, &agentService{s: s})
	batonv1.RegisterTokenServiceServer(s.grpc, &tokenService{s: s})
	batonv1.RegisterAuditServiceServer(s.grpc, &auditService{s: s})
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
