package agent

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"runtime"
	"slices"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	batonv1 "github.com/batonhq/baton/gen/baton/v1"
)

const (
	// maxBackoffShift caps the reconnect backoff at retryBase << 4 (1.6 s
	// with the default base): a restarted control plane is reached within
	// that, and a refused connection costs both sides almost nothing.
	maxBackoffShift = 4
	// welcomeTimeout is how long a session waits for the Welcome.
	welcomeTimeout = 30 * time.Second
	// minHeartbeat bounds a Welcome's heartbeat interval from below.
	minHeartbeat = 10 * time.Millisecond
	// sessionQueue is how many messages wait for the sender.
	sessionQueue = 64
	// helloBudget bounds the unacknowledged outcomes listed in a Hello.
	helloBudget = 1 << 20
)

// fatalCodes end Run: retrying cannot help.
var fatalCodes = map[codes.Code]bool{
	codes.Unauthenticated:  true,
	codes.PermissionDenied: true,
	codes.Unimplemented:    true,
}

func isFatal(err error) bool { return err != nil && fatalCodes[status.Code(err)] }

// errNoWelcome ends a session whose Hello got no answer.
var errNoWelcome = errors.New("no welcome from the control plane")

// session is one Connect stream. Messages for it go through out to its
// single sender goroutine (a gRPC stream's Send is not safe for concurrent
// use); done is closed when the session ends, and messages still queued
// then are dropped: outcomes are journaled and resent in the next Hello,
// running attempts are listed there too, and log chunks are best effort.
type session struct {
	out  chan *batonv1.ConnectRequest
	done <-chan struct{}

	mu sync.Mutex
	// lease is the Welcome's lease length; zero: no leases.
	lease time.Duration
	// sent holds when the session's recent messages that leases are
	// measured from (the Hello, seq 0, and each Heartbeat) were sent,
	// by seq modulo sentRing.
	sent [sentRing]sentAt
}

// sentRing is how many of a session's latest Hello and Heartbeat send
// times the agent keeps: a renewal naming an older one renews nothing.
// At the default heartbeat interval it spans over ten minutes.
const sentRing = 64

// sentAt is when the message with seq was sent; at is zero for none.
type sentAt struct {
	seq uint64
	at  time.Time
}

// stamp records that the message with seq is being sent now. It is
// called just before the message goes to the stream, so the agent's
// measure of a lease starts no later than the control plane's.
func (s *session) stamp(seq uint64) {
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sent[seq%sentRing] = sentAt{seq: seq, at: now}
}

// sentTime returns when the message with seq was sent, if it is one of
// the latest sentRing.
func (s *session) sentTime(seq uint64) (time.Time, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e := s.sent[seq%sentRing]
	if e.at.IsZero() || e.seq != seq {
		return time.Time{}, false
	}
	return e.at, true
}

// leaseUntil returns when a lease renewed as of the message with seq
// ends; ok is false when the session has no leases or seq is unknown.
func (s *session) leaseUntil(seq uint64) (until time.Time, term time.Duration, ok bool) {
	s.mu.Lock()
	term = s.lease
	s.mu.Unlock()
	if term <= 0 {
		return time.Time{}, 0, false
	}
	at, ok := s.sentTime(seq)
	if !ok {
		return time.Time{}, term, false
	}
	return at.Add(term), term, true
}

// setLease records the Welcome's lease length; zero: no leases.
func (s *session) setLease(lease time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.lease = lease
}

// send queues msg, blocking while the queue is full. It reports false when
// the session ended first.
func (s *session) send(msg *batonv1.ConnectRequest) bool {
	select {
	case s.out <- msg:
		return true
	case <-s.done:
		return false
	}
}

// send queues msg on the current session. It reports false when the agent
// is disconnected or the session ended first.
func (a *Agent) send(msg *batonv1.ConnectRequest) bool {
	a.mu.Lock()
	s := a.sess
	a.mu.Unlock()
	if s == nil {
		return false
	}
	return s.send(msg)
}

// sessionLoop runs sessions until ctx is done or the control plane refuses
// the agent for good. It reconnects with full-jitter exponential backoff,
// capped, and starts over after a healthy session (one that got a
// Welcome), so a fleet of agents does not reconnect in lockstep after a
// control plane restart.
func (a *Agent) sessionLoop(ctx context.Context, cl batonv1.AgentServiceClient) error {
	attempt := 0
	for {
		healthy, err := a.runSession(ctx, cl)
		if ctx.Err() != nil {
			return nil
		}
		if isFatal(err) {
			return fmt.Errorf("control plane refused the agent: %w", err)
		}
		a.logSessionEnd(ctx, err)
		attempt++
		if healthy {
			attempt = 0
		}
		delay := rand.N(a.retryBase << min(attempt, maxBackoffShift))
		a.log.DebugContext(ctx, "reconnecting", slog.Duration("delay", delay))
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return nil
		}
	}
}

func (a *Agent) logSessionEnd(ctx context.Context, err error) {
	switch {
	case errors.Is(err, io.EOF):
		a.log.InfoContext(ctx, "control plane closed the session")
	case status.Code(err) == codes.AlreadyExists:
		a.log.WarnContext(ctx, "another live agent holds this name; retrying in case it is a stale session",
			slog.String("name", a.cfg.Name), slog.Any("error", err))
	default:
		a.log.WarnContext(ctx, "session ended", slog.Any("error", err))
	}
}

// runSession runs one Connect stream until it breaks or ctx is done. The
// stream gets its own context, because Recv cannot be selected on: ending
// the session cancels it. healthy reports whether a Welcome arrived.
func (a *Agent) runSession(ctx context.Context, cl batonv1.AgentServiceClient) (healthy bool, err error) {
	sctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	stream, err := cl.Connect(sctx)
	if err != nil {
		return false, fmt.Errorf("open stream: %w", err)
	}
	s := &session{out: make(chan *batonv1.ConnectRequest, sessionQueue), done: sctx.Done()}
	hello, backlog := a.register(s)
	defer a.unregister(s)

	welcomed := make(chan time.Duration, 1)
	sendErr := make(chan error, 1)
	go func() {
		err := a.sendLoop(sctx, stream, s, hello, backlog, welcomed)
		if err != nil && !errors.Is(err, io.EOF) {
			// A broken stream or a missing Welcome: stop receiving too. On
			// io.EOF the server ended the stream and Recv returns its status.
			cancel(err)
		}
		sendErr <- err
	}()
	healthy, err = a.recvLoop(sctx, stream, s, welcomed)
	cancel(nil)
	serr := <-sendErr
	if cause := context.Cause(sctx); serr != nil && errors.Is(cause, serr) {
		err = serr
	}
	return healthy, err
}

// register makes s the current session and returns the Hello for it. Both
// happen under a.mu: an outcome is listed only once it is journaled, and
// not while the goroutine that journaled it has yet to take a.mu to pick
// the session to send it on (its attempt is still in a.attempts, or its id
// in a.reporting), so every outcome either is listed in this Hello or is
// sent on s afterwards, not both.
// Unacknowledged outcomes beyond helloBudget bytes are left out of the
// Hello and returned as a backlog of TaskFinished messages to send right
// after the Welcome, keeping the Hello well under gRPC's message limit;
// the backlog starts with the TaskStarted of re-adopted children not yet
// announced.
func (a *Agent) register(s *session) (hello *batonv1.ConnectRequest, backlog []*batonv1.ConnectRequest) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.sess = s
	h := &batonv1.Hello{
		Name:     a.cfg.Name,
		Labels:   a.cfg.Labels,
		Slots:    int32(a.cfg.Slots),
		Version:  a.cfg.Version,
		Hostname: a.hostname,
		Os:       runtime.GOOS,
		BootId:   a.bootID,
	}
	size := 0
	for _, tf := range a.journal.unacked() {
		if _, ok := a.attempts[tf.GetAttemptId()]; ok || a.reporting[tf.GetAttemptId()] > 0 {
			// Its reporter sends it on this session once it has the lock.
			continue
		}
		if size += proto.Size(tf); size <= helloBudget {
			h.Unacked = append(h.Unacked, tf)
		} else {
			backlog = append(backlog, finishedMsg(tf))
		}
	}
	var announce []*batonv1.ConnectRequest
	for _, att := range a.attempts {
		h.Running = append(h.Running, &batonv1.RunningAttempt{
			AttemptId: att.id,
			StartTime: timestamppb.New(att.startTime()),
		})
		if ts := att.announcement(); ts != nil {
			announce = append(announce, &batonv1.ConnectRequest{Msg: &batonv1.ConnectRequest_TaskStarted{TaskStarted: ts}})
		}
	}
	slices.SortFunc(h.Running, func(x, y *batonv1.RunningAttempt) int {
		return cmp.Compare(x.GetAttemptId(), y.GetAttemptId())
	})
	slices.SortFunc(announce, func(x, y *batonv1.ConnectRequest) int {
		return cmp.Compare(x.GetTaskStarted().GetAttemptId(), y.GetTaskStarted().GetAttemptId())
	})
	return &batonv1.ConnectRequest{Msg: &batonv1.ConnectRequest_Hello{Hello: h}}, append(announce, backlog...)
}

// announcement returns the TaskStarted of a re-adopted child the first
// time it is asked, nil otherwise: a child adopted from an earlier agent
// process is announced to the control plane like one this process
// started, after it was listed in the Hello.
func (att *attempt) announcement() *batonv1.TaskStarted {
	att.mu.Lock()
	defer att.mu.Unlock()
	if !att.adopted || att.announced || att.proc == nil || att.proc.Pid() <= 0 {
		return nil
	}
	att.announced = true
	return &batonv1.TaskStarted{AttemptId: att.id, StartTime: timestamppb.New(att.started), Pid: int32(att.proc.Pid())}
}

func (a *Agent) unregister(s *session) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.sess == s {
		a.sess = nil
	}
}

// heartbeat returns a Heartbeat listing the running attempts.
func (a *Agent) heartbeat() *batonv1.ConnectRequest {
	a.mu.Lock()
	defer a.mu.Unlock()
	hb := &batonv1.Heartbeat{Draining: a.draining}
	for id := range a.attempts {
		hb.Running = append(hb.Running, id)
	}
	slices.Sort(hb.Running)
	return &batonv1.ConnectRequest{Msg: &batonv1.ConnectRequest_Heartbeat{Heartbeat: hb}}
}

// sendLoop is the session's only sender. It sends the Hello, waits for the
// Welcome, then sends queued messages and a Heartbeat every interval (and
// at once when draining starts). It returns nil when ctx is done.
func (a *Agent) sendLoop(ctx context.Context, stream batonv1.AgentService_ConnectClient, s *session,
	hello *batonv1.ConnectRequest, backlog []*batonv1.ConnectRequest, welcomed <-chan time.Duration) error {
	s.stamp(0)
	if err := stream.Send(hello); err != nil {
		return fmt.Errorf("send hello: %w", err)
	}
	var interval time.Duration
	wt := time.NewTimer(welcomeTimeout)
	select {
	case interval = <-welcomed:
		wt.Stop()
	case <-wt.C:
		return fmt.Errorf("%w within %s", errNoWelcome, welcomeTimeout)
	case <-ctx.Done():
		wt.Stop()
		return nil
	}
	for _, msg := range backlog {
		if err := stream.Send(msg); err != nil {
			return fmt.Errorf("send: %w", err)
		}
	}
	ticker := time.NewTicker(interval)
	defer ticker.Stop()
	drainCh := a.drainCh
	var seq uint64 // the Hello's
	for {
		var msg *batonv1.ConnectRequest
		select {
		case <-ctx.Done():
			return nil
		case iv := <-welcomed:
			ticker.Reset(iv)
			continue
		case <-ticker.C:
			msg = a.heartbeat()
		case <-drainCh:
			drainCh = nil
			msg = a.heartbeat()
		case msg = <-s.out:
		}
		if hb := msg.GetHeartbeat(); hb != nil {
			seq++
			hb.Seq = seq
			s.stamp(seq)
		}
		if err := stream.Send(msg); err != nil {
			return fmt.Errorf("send: %w", err)
		}
	}
}

// recvLoop receives and dispatches control plane messages until the
// stream breaks.
func (a *Agent) recvLoop(ctx context.Context, stream batonv1.AgentService_ConnectClient, s *session,
	welcomed chan time.Duration) (healthy bool, err error) {
	for {
		msg, err := stream.Recv()
		if err != nil {
			return healthy, err
		}
		switch m := msg.GetMsg().(type) {
		case *batonv1.ConnectResponse_Welcome:
			iv := defaultHeartbeat
			if d := m.Welcome.GetHeartbeatInterval(); d != nil && d.IsValid() && d.AsDuration() > 0 {
				iv = max(d.AsDuration(), minHeartbeat)
			}
			lease := positive(m.Welcome.GetLease())
			s.setLease(lease)
			if !healthy {
				a.log.InfoContext(ctx, "connected",
					slog.String("server_version", m.Welcome.GetServerVersion()),
					slog.Duration("heartbeat_interval", iv), slog.Duration("lease", lease))
			}
			healthy = true
			// Renewed as of the Hello: the re-adopted children keep
			// running across a control plane restart within their lease.
			a.renewLeases(ctx, s, 0, m.Welcome.GetRenewed())
			// Replace an interval the sender has not picked up yet.
			select {
			case <-welcomed:
			default:
			}
			welcomed <- iv
		case *batonv1.ConnectResponse_StartTask:
			a.handleStart(ctx, s, m.StartTask)
		case *batonv1.ConnectResponse_CancelTask:
			a.handleCancel(ctx, m.CancelTask)
		case *batonv1.ConnectResponse_Ack:
			a.handleAck(ctx, m.Ack)
		case *batonv1.ConnectResponse_Drain:
			a.drain(ctx, "control plane asked: "+m.Drain.GetReason())
		case *batonv1.ConnectResponse_LeaseRenewal:
			a.renewLeases(ctx, s, m.LeaseRenewal.GetSeq(), m.LeaseRenewal.GetAttemptIds())
		default:
			a.log.WarnContext(ctx, "ignoring unknown message from the control plane", slog.String("type", fmt.Sprintf("%T", m)))
		}
	}
}

// handleAck forgets acknowledged outcomes. It does not wait for the disk:
// the journal writes the acknowledgements in the background, so the next
// message is not held up behind journal I/O.
func (a *Agent) handleAck(ctx context.Context, ack *batonv1.Ack) {
	a.journal.ack(ack.GetAttemptIds())
	a.log.DebugContext(ctx, "outcomes acknowledged", slog.Any("attempt_ids", ack.GetAttemptIds()))
	notify(a.acked)
}
