package fakeserver

import (
	"cmp"
	"context"
	"errors"
	"io"
	"slices"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	batonv1 "github.com/batonhq/baton/gen/baton/v1"
)

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

// ApproveAgent approves what the request names, or with nothing named what
// a connected agent claims; a pending agent becomes connected.
func (as *adminService) ApproveAgent(_ context.Context, req *batonv1.ApproveAgentRequest) (*batonv1.ApproveAgentResponse, error) {
	s := as.s
	s.mu.Lock()
	defer s.mu.Unlock()
	ap := &batonv1.AgentApproval{Name: req.GetName(), Labels: req.GetLabels(), Slots: req.GetSlots(),
		ApprovedBy: "anonymous", ApproveTime: timestamppb.New(time.Unix(1700000000, 0))}
	a := s.agents[req.GetName()]
	if len(req.GetLabels()) == 0 && req.GetSlots() == 0 {
		if a == nil || (a.GetState() != batonv1.AgentState_AGENT_STATE_CONNECTED && a.GetState() != batonv1.AgentState_AGENT_STATE_PENDING) {
			return nil, status.Errorf(codes.FailedPrecondition, "agent %q is not connected", req.GetName())
		}
		ap.Labels, ap.Slots, ap.CertSha256 = a.GetLabels(), a.GetSlots(), strings.Repeat("ab", 32)
	}
	if s.approvals == nil {
		s.approvals = map[string]*batonv1.AgentApproval{}
	}
	s.approvals[ap.GetName()] = ap
	if a != nil && a.GetState() == batonv1.AgentState_AGENT_STATE_PENDING {
		a.State, a.PendingReason = batonv1.AgentState_AGENT_STATE_CONNECTED, ""
	}
	return &batonv1.ApproveAgentResponse{Approval: proto.Clone(ap).(*batonv1.AgentApproval)}, nil
}

// RevokeAgent removes an approval; a connected agent becomes pending.
func (as *adminService) RevokeAgent(_ context.Context, req *batonv1.RevokeAgentRequest) (*batonv1.RevokeAgentResponse, error) {
	s := as.s
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.approvals[req.GetName()] == nil {
		return nil, status.Errorf(codes.NotFound, "approval of agent %q not found", req.GetName())
	}
	delete(s.approvals, req.GetName())
	if a := s.agents[req.GetName()]; a != nil && a.GetState() == batonv1.AgentState_AGENT_STATE_CONNECTED {
		a.State, a.PendingReason = batonv1.AgentState_AGENT_STATE_PENDING, "approval revoked"
	}
	return &batonv1.RevokeAgentResponse{}, nil
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
