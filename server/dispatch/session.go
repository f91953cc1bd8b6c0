package dispatch

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	batonv1 "github.com/batonhq/baton/gen/baton/v1"
)

// Handler receives what agents say. The scheduler implements it.
type Handler interface {
	// Hello asks to admit a new session. It returns nil to accept (the
	// handler then sends the Welcome through the session) or an error to
	// refuse; a status error's code reaches the agent.
	Hello(ctx context.Context, s *Session, h *Hello) error
	// Message delivers one of *Heartbeat, *Started, *Log or *Finished. It
	// may block to apply backpressure.
	Message(ctx context.Context, s *Session, msg any) error
	// Gone says the session's stream ended. It is called once after every
	// Hello, also one that was refused or gave up (so a session admitted
	// after its stream ended is taken back). A Message already in flight
	// may still arrive after it; the handler ignores messages of sessions
	// it no longer holds (the agent repeats anything unacknowledged when it
	// reconnects).
	Gone(s *Session, err error)
}

var sessionIDs atomic.Uint64

// Session is one agent's live stream. Send is safe for concurrent use and
// never blocks; messages are delivered in order.
type Session struct {
	// ID is unique among the sessions of this process.
	ID   uint64
	Name string

	mu     sync.Mutex
	queue  []any
	wake   chan struct{}
	closed bool
	done   chan struct{}
	cause  error
}

func newSession(name string) *Session {
	return &Session{ID: sessionIDs.Add(1), Name: name, wake: make(chan struct{}, 1), done: make(chan struct{})}
}

// Send queues a *Welcome, *Start, *Cancel, *Ack, *Drain or *LeaseRenewal
// for the agent. It
// reports false when the session is closed.
func (s *Session) Send(msg any) bool {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return false
	}
	s.queue = append(s.queue, msg)
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
	return true
}

// Close ends the session; the agent sees its stream end with err's status
// and reconnects.
func (s *Session) Close(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	s.closed = true
	s.cause = err
	close(s.done)
}

// Done is closed when the session is closed.
func (s *Session) Done() <-chan struct{} { return s.done }

func (s *Session) take() []any {
	s.mu.Lock()
	defer s.mu.Unlock()
	q := s.queue
	s.queue = nil
	return q
}

// Service implements batonv1.AgentServiceServer.
type Service struct {
	batonv1.UnimplementedAgentServiceServer
	handler Handler
	log     *slog.Logger
	guard   Guard
}

// NewService returns the AgentService that hands agents to h, admitting
// those guard lets in.
func NewService(h Handler, log *slog.Logger, guard Guard) *Service {
	return &Service{handler: h, log: log, guard: guard}
}

// Connect serves one agent's stream for as long as it lasts.
func (svc *Service) Connect(stream batonv1.AgentService_ConnectServer) error {
	ctx := stream.Context()
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	hp := first.GetHello()
	if hp == nil {
		return status.Error(codes.InvalidArgument, "the first message must be a Hello")
	}
	hello, err := helloFromProto(hp)
	if err != nil {
		return status.Error(codes.InvalidArgument, err.Error())
	}
	if err := svc.guard.check(ctx, hello); err != nil {
		svc.log.WarnContext(ctx, "agent refused", slog.String("agent", hello.Name),
			slog.String("peer", PeerAddr(ctx)), slog.Any("error", err))
		if svc.guard.Refused != nil {
			svc.guard.Refused(ctx, hello.Name, PeerAddr(ctx), err)
		}
		return toStatus(err)
	}
	sess := newSession(hello.Name)
	if err := svc.handler.Hello(ctx, sess, hello); err != nil {
		// The handler may still admit the session after Hello gave up (the
		// stream ended while the Hello was queued): Gone, queued behind it,
		// takes it back, so the agent's name does not stay taken.
		sess.Close(err)
		svc.handler.Gone(sess, err)
		return toStatus(err)
	}
	log := svc.log.With(slog.String("agent", hello.Name), slog.Uint64("session", sess.ID))

	// The receiver hands messages to the scheduler; the sender drains the
	// session's queue. Either ending ends the session.
	recvErr := make(chan error, 1)
	go func() {
		for {
			m, err := stream.Recv()
			if err != nil {
				recvErr <- err
				return
			}
			msg, err := messageFromProto(m)
			if err != nil {
				recvErr <- status.Error(codes.InvalidArgument, err.Error())
				return
			}
			if msg == nil {
				continue
			}
			if err := svc.handler.Message(ctx, sess, msg); err != nil {
				recvErr <- err
				return
			}
		}
	}()

	var end error
loop:
	for {
		for _, m := range sess.take() {
			resp, err := messageToProto(m)
			if err != nil {
				log.ErrorContext(ctx, "drop unsendable message", slog.Any("error", err))
				continue
			}
			if err := stream.Send(resp); err != nil {
				end = err
				break loop
			}
		}
		select {
		case <-sess.wake:
		case err := <-recvErr:
			end = err
			break loop
		case <-sess.done:
			end = sess.cause
			break loop
		case <-ctx.Done():
			end = ctx.Err()
			break loop
		}
	}
	sess.Close(end)
	svc.handler.Gone(sess, end)
	if errors.Is(end, ErrNameTaken) || errors.Is(end, ErrReplaced) || errors.Is(end, ErrUnavailable) {
		// The control plane ended it: say why.
		return toStatus(end)
	}
	if s, ok := status.FromError(end); ok && s.Code() != codes.OK && s.Code() != codes.Unknown {
		return end
	}
	if errors.Is(end, context.Canceled) {
		return status.Error(codes.Unavailable, "control plane is shutting down")
	}
	return nil
}

// messageToProto converts an outbound domain message.
func messageToProto(m any) (*batonv1.ConnectResponse, error) {
	switch m := m.(type) {
	case *Welcome:
		return &batonv1.ConnectResponse{Msg: &batonv1.ConnectResponse_Welcome{Welcome: &batonv1.Welcome{
			HeartbeatInterval: durationpb.New(m.HeartbeatInterval),
			ServerVersion:     m.ServerVersion,
			Lease:             durationpb.New(m.Lease),
			Renewed:           m.Renewed,
		}}}, nil
	case *LeaseRenewal:
		return &batonv1.ConnectResponse{Msg: &batonv1.ConnectResponse_LeaseRenewal{LeaseRenewal: &batonv1.LeaseRenewal{
			Seq:        m.Seq,
			AttemptIds: m.AttemptIDs,
		}}}, nil
	case *Start:
		return &batonv1.ConnectResponse{Msg: &batonv1.ConnectResponse_StartTask{StartTask: &batonv1.StartTask{
			AttemptId:  m.AttemptID,
			RunId:      m.RunID,
			Job:        m.Job,
			Task:       m.Task,
			Attempt:    int32(m.Attempt),
			Item:       m.Item,
			Argv:       m.Argv,
			Env:        m.Env,
			SecretEnv:  m.Secrets,
			WorkingDir: m.WorkingDir,
			Timeout:    durationpb.New(m.Timeout),
			KillGrace:  durationpb.New(m.KillGrace),
			LeaseSeq:   m.LeaseSeq,
		}}}, nil
	case *Cancel:
		return &batonv1.ConnectResponse{Msg: &batonv1.ConnectResponse_CancelTask{CancelTask: &batonv1.CancelTask{
			AttemptId: m.AttemptID,
			Reason:    m.Reason,
			KillGrace: durationpb.New(m.KillGrace),
		}}}, nil
	case *Ack:
		return &batonv1.ConnectResponse{Msg: &batonv1.ConnectResponse_Ack{Ack: &batonv1.Ack{AttemptIds: m.AttemptIDs}}}, nil
	case *Drain:
		return &batonv1.ConnectResponse{Msg: &batonv1.ConnectResponse_Drain{Drain: &batonv1.Drain{Reason: m.Reason}}}, nil
	}
	return nil, fmt.Errorf("unknown outbound message %T", m)
}

// NewSession returns a session for an agent named name that no stream
// serves: whoever plays the agent (a simulation) takes what the control
// plane sends with Take and hands the handler the agent's messages itself.
func NewSession(name string) *Session { return newSession(name) }

// Take returns the messages queued for the agent, oldest first, and
// empties the queue.
func (s *Session) Take() []any { return s.take() }

// Why an agent is refused or its session ends. The handler (the scheduler)
// speaks these; Connect turns them into the status codes agents act on.
var (
	// ErrNameTaken refuses a Hello: another live agent holds the name
	// (ALREADY_EXISTS; the agent retries in case the other is stale).
	ErrNameTaken = errors.New("agent name taken")
	// ErrReplaced ends a session its own agent process has replaced by
	// reconnecting (ABORTED).
	ErrReplaced = errors.New("replaced by a newer session of the same agent")
	// ErrUnavailable refuses or ends a session for now: the control plane
	// is restarting or standing by, or the agent timed out (UNAVAILABLE;
	// the agent reconnects).
	ErrUnavailable = errors.New("unavailable")
)

// Unavailable returns an error wrapping ErrUnavailable with msg as its text.
func Unavailable(msg string) error { return &unavailableError{msg: msg} }

type unavailableError struct{ msg string }

func (e *unavailableError) Error() string { return e.msg }
func (e *unavailableError) Unwrap() error { return ErrUnavailable }

// toStatus turns a handler's error into the status an agent sees.
func toStatus(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	switch {
	case errors.Is(err, ErrNameTaken):
		return status.Error(codes.AlreadyExists, err.Error())
	case errors.Is(err, ErrReplaced):
		return status.Error(codes.Aborted, err.Error())
	case errors.Is(err, ErrNoCert):
		return status.Error(codes.Unauthenticated, err.Error())
	case errors.Is(err, ErrWrongCert):
		return status.Error(codes.PermissionDenied, err.Error())
	}
	return status.Error(codes.Unavailable, err.Error())
}
