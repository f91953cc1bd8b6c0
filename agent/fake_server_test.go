package agent

import (
	"net"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	batonv1 "github.com/batonhq/baton/gen/baton/v1"
)

// waitTimeout bounds every wait in these tests.
const waitTimeout = 20 * time.Second

// testRunnerIdle is how long a runner started by a test lingers once
// nothing needs it.
const testRunnerIdle = 100 * time.Millisecond

// testRunnerPoll is how often an agent under test reads the records of a
// runner of another version.
const testRunnerPoll = 20 * time.Millisecond

// fakeServer is a control plane on 127.0.0.1 that real agents dial. Each
// Connect becomes a fakeSession the test drives through channels.
type fakeServer struct {
	batonv1.UnimplementedAgentServiceServer

	addr      string
	heartbeat time.Duration // sent in every Welcome
	sessions  chan *fakeSession

	mu      sync.Mutex
	refusal []error // errors that end the next sessions right after their Hello
	lease   time.Duration
	renew   func(*batonv1.Hello) []int64 // Welcome.renewed for a Hello; nil: none
}

// setLease makes the Welcomes name lease and renew, for each Hello, the
// attempts renew returns (nil: none).
func (f *fakeServer) setLease(lease time.Duration, renew func(*batonv1.Hello) []int64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.lease, f.renew = lease, renew
}

// fakeSession is one agent stream as the server sees it.
type fakeSession struct {
	hello *batonv1.Hello
	recv  chan *batonv1.ConnectRequest  // agent -> server, after the Hello
	send  chan *batonv1.ConnectResponse // server -> agent
	end   chan error                    // ends the stream with this status
	done  chan struct{}                 // closed when the stream ended
}

func newFakeServer(t testing.TB) *fakeServer {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeServer{
		addr:      lis.Addr().String(),
		heartbeat: time.Hour, // keep heartbeats out of tests that do not look for them
		sessions:  make(chan *fakeSession, 16),
	}
	srv := grpc.NewServer()
	batonv1.RegisterAgentServiceServer(srv, f)
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = srv.Serve(lis)
	}()
	t.Cleanup(func() {
		srv.Stop()
		<-served
	})
	return f
}

// refuseNext makes the next Connect end with err right after the Hello.
func (f *fakeServer) refuseNext(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.refusal = append(f.refusal, err)
}

func (f *fakeServer) nextRefusal() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.refusal) == 0 {
		return nil
	}
	err := f.refusal[0]
	f.refusal = f.refusal[1:]
	return err
}

// Connect implements batonv1.AgentServiceServer.
func (f *fakeServer) Connect(stream batonv1.AgentService_ConnectServer) error {
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	hello := first.GetHello()
	if hello == nil {
		return status.Error(codes.InvalidArgument, "first message must be a hello")
	}
	s := &fakeSession{
		hello: hello,
		recv:  make(chan *batonv1.ConnectRequest, 4096),
		send:  make(chan *batonv1.ConnectResponse, 64),
		end:   make(chan error, 1),
		done:  make(chan struct{}),
	}
	defer close(s.done)
	select {
	case f.sessions <- s:
	case <-stream.Context().Done():
		return stream.Context().Err()
	}
	if err := f.nextRefusal(); err != nil {
		return err
	}
	welcome := &batonv1.Welcome{HeartbeatInterval: durationpb.New(f.heartbeat), ServerVersion: "fake"}
	f.mu.Lock()
	if f.lease > 0 {
		welcome.Lease = durationpb.New(f.lease)
	}
	if f.renew != nil {
		welcome.Renewed = f.renew(hello)
	}
	f.mu.Unlock()
	if err := stream.Send(&batonv1.ConnectResponse{Msg: &batonv1.ConnectResponse_Welcome{Welcome: welcome}}); err != nil {
		return err
	}
	ctx := stream.Context()
	// recvDone is closed when the agent's side of the stream ends.
	recvDone := make(chan struct{})
	go func() {
		for {
			m, err := stream.Recv()
			if err != nil {
				close(recvDone)
				return
			}
			select {
			case s.recv <- m:
			case <-ctx.Done():
				return
			}
		}
	}()
	for {
		select {
		case m := <-s.send:
			if err := stream.Send(m); err != nil {
				return err
			}
		case err := <-s.end:
			return err
		case <-recvDone:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// session waits for the next agent stream.
func (f *fakeServer) session(t testing.TB) *fakeSession {
	t.Helper()
	select {
	case s := <-f.sessions:
		return s
	case <-time.After(waitTimeout):
		t.Fatalf("no agent connected within %s", waitTimeout)
		return nil
	}
}

// next returns the next message from the agent.
func (s *fakeSession) next(t testing.TB) *batonv1.ConnectRequest {
	t.Helper()
	select {
	case m := <-s.recv:
		return m
	case <-time.After(waitTimeout):
		t.Fatalf("no message from the agent within %s", waitTimeout)
		return nil
	}
}

// until reads messages until match accepts one and returns every message
// read, the matching one last.
func (s *fakeSession) until(t testing.TB, what string, match func(*batonv1.ConnectRequest) bool) []*batonv1.ConnectRequest {
	t.Helper()
	deadline := time.After(waitTimeout)
	var msgs []*batonv1.ConnectRequest
	for {
		select {
		case m := <-s.recv:
			msgs = append(msgs, m)
			if match(m) {
				return msgs
			}
		case <-deadline:
			t.Fatalf("no %s from the agent within %s", what, waitTimeout)
			return nil
		}
	}
}

// started waits for the TaskStarted of attempt id.
func (s *fakeSession) started(t testing.TB, id int64) *batonv1.TaskStarted {
	t.Helper()
	msgs := s.until(t, "TaskStarted", func(m *batonv1.ConnectRequest) bool {
		return m.GetTaskStarted().GetAttemptId() == id
	})
	return msgs[len(msgs)-1].GetTaskStarted()
}

// finished waits for the TaskFinished of attempt id and returns it with the
// messages that came before it.
func (s *fakeSession) finished(t testing.TB, id int64) (*batonv1.TaskFinished, []*batonv1.ConnectRequest) {
	t.Helper()
	msgs := s.until(t, "TaskFinished", func(m *batonv1.ConnectRequest) bool {
		return m.GetTaskFinished().GetAttemptId() == id
	})
	return msgs[len(msgs)-1].GetTaskFinished(), msgs[:len(msgs)-1]
}

func (s *fakeSession) push(t testing.TB, m *batonv1.ConnectResponse) {
	t.Helper()
	select {
	case s.send <- m:
	case <-s.done:
		t.Fatal("session ended before the message could be sent")
	case <-time.After(waitTimeout):
		t.Fatalf("cannot send to the agent within %s", waitTimeout)
	}
}

func (s *fakeSession) startTask(t testing.TB, st *batonv1.StartTask) {
	t.Helper()
	s.push(t, &batonv1.ConnectResponse{Msg: &batonv1.ConnectResponse_StartTask{StartTask: st}})
}

func (s *fakeSession) cancelTask(t testing.TB, ct *batonv1.CancelTask) {
	t.Helper()
	s.push(t, &batonv1.ConnectResponse{Msg: &batonv1.ConnectResponse_CancelTask{CancelTask: ct}})
}

func (s *fakeSession) renewLeases(t testing.TB, seq uint64, ids ...int64) {
	t.Helper()
	s.push(t, &batonv1.ConnectResponse{Msg: &batonv1.ConnectResponse_LeaseRenewal{
		LeaseRenewal: &batonv1.LeaseRenewal{Seq: seq, AttemptIds: ids}}})
}

func (s *fakeSession) ack(t testing.TB, ids ...int64) {
	t.Helper()
	s.push(t, &batonv1.ConnectResponse{Msg: &batonv1.ConnectResponse_Ack{Ack: &batonv1.Ack{AttemptIds: ids}}})
}

func (s *fakeSession) drain(t testing.TB, reason string) {
	t.Helper()
	s.push(t, &batonv1.ConnectResponse{Msg: &batonv1.ConnectResponse_Drain{Drain: &batonv1.Drain{Reason: reason}}})
}

// hangUp ends the stream with err, as a control plane that drops the
// agent would, and waits until it ended.
func (s *fakeSession) hangUp(t testing.TB, err error) {
	t.Helper()
	s.end <- err
	select {
	case <-s.done:
	case <-time.After(waitTimeout):
		t.Fatalf("stream did not end within %s", waitTimeout)
	}
}
