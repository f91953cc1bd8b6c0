package server

import (
	"context"
	"log/slog"
	"slices"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	batonv1 "github.com/batonhq/baton/gen/baton/v1"
	"github.com/batonhq/baton/server/auth"
	"github.com/batonhq/baton/server/scheduler"
	"github.com/batonhq/baton/server/store"
)

// adminService implements batonv1.AgentAdminServiceServer.
type adminService struct {
	batonv1.UnimplementedAgentAdminServiceServer
	st    store.Store
	sched *scheduler.Scheduler
	log   *slog.Logger
	// approval says whether batond requires agents to be approved.
	approval bool
	now      func() time.Time
}

func (s *adminService) ListAgents(ctx context.Context, _ *batonv1.ListAgentsRequest) (*batonv1.ListAgentsResponse, error) {
	live, err := s.sched.Agents(ctx)
	if err != nil {
		return nil, toStatus(ctx, s.log, err)
	}
	known, err := s.st.AgentList(ctx, &store.AgentListParams{})
	if err != nil {
		return nil, toStatus(ctx, s.log, err)
	}
	out := &batonv1.ListAgentsResponse{}
	seen := map[string]bool{}
	for _, a := range live {
		seen[a.Name] = true
		pa := agentToProto(&a.Agent, a.Running)
		if a.Pending != "" && pa.State == batonv1.AgentState_AGENT_STATE_CONNECTED {
			pa.State = batonv1.AgentState_AGENT_STATE_PENDING
			pa.PendingReason = a.Pending
		}
		out.Agents = append(out.Agents, pa)
	}
	for _, a := range known {
		if seen[a.Name] {
			continue
		}
		// Known from an earlier session, not connected to this process.
		if a.State == store.AgentConnected {
			a.State = store.AgentDisconnected
		}
		out.Agents = append(out.Agents, agentToProto(a, 0))
	}
	// Live agents first, then by name.
	slices.SortStableFunc(out.Agents, func(a, b *batonv1.Agent) int {
		live := func(s batonv1.AgentState) bool {
			return s == batonv1.AgentState_AGENT_STATE_CONNECTED || s == batonv1.AgentState_AGENT_STATE_PENDING
		}
		ac, bc := live(a.State), live(b.State)
		if ac != bc {
			if ac {
				return -1
			}
			return 1
		}
		return strings.Compare(a.Name, b.Name)
	})
	return out, nil
}

func agentToProto(a *store.Agent, running int) *batonv1.Agent {
	state := batonv1.AgentState_AGENT_STATE_UNSPECIFIED
	switch a.State {
	case store.AgentConnected:
		state = batonv1.AgentState_AGENT_STATE_CONNECTED
	case store.AgentDisconnected:
		state = batonv1.AgentState_AGENT_STATE_DISCONNECTED
	case store.AgentLost:
		state = batonv1.AgentState_AGENT_STATE_LOST
	}
	return &batonv1.Agent{
		Name:         a.Name,
		Labels:       a.Labels,
		Slots:        int32(a.Slots),
		Running:      int32(running),
		State:        state,
		Version:      a.Version,
		Hostname:     a.Hostname,
		Os:           a.OS,
		ConnectTime:  ts(a.ConnectedAt),
		LastSeenTime: ts(a.LastSeenAt),
	}
}

func (s *adminService) ApproveAgent(ctx context.Context, req *batonv1.ApproveAgentRequest) (*batonv1.ApproveAgentResponse, error) {
	if err := s.checkApproval(req.GetName()); err != nil {
		return nil, err
	}
	if req.GetSlots() < 0 {
		return nil, invalidArg("slots", "must not be negative")
	}
	for k := range req.GetLabels() {
		if strings.TrimSpace(k) == "" {
			return nil, invalidArg("labels", "a label key is empty")
		}
	}
	a := &store.AgentApproval{Name: req.GetName(), Labels: req.GetLabels(), Slots: int(req.GetSlots()),
		ApprovedBy: callerName(ctx), ApprovedAt: s.now().UTC().Truncate(time.Millisecond)}
	if len(a.Labels) == 0 && a.Slots == 0 {
		// Approve what the connected agent claims, and pin its certificate.
		live, err := s.sched.Agents(ctx)
		if err != nil {
			return nil, toStatus(ctx, s.log, err)
		}
		i := slices.IndexFunc(live, func(l scheduler.AgentInfo) bool {
			return l.Name == a.Name && l.State == store.AgentConnected
		})
		if i < 0 {
			return nil, status.Errorf(codes.FailedPrecondition, "agent %q is not connected: to approve it before it connects, "+
				"give the labels and slots it may claim (baton agents approve %s --label k=v --slots N)", a.Name, a.Name)
		}
		a.Labels, a.Slots, a.CertSHA256 = live[i].Labels, live[i].Slots, live[i].CertSHA256
	}
	if err := s.st.AgentApprove(ctx, &store.AgentApproveParams{Approval: a}); err != nil {
		return nil, toStatus(ctx, s.log, err)
	}
	info, connected, err := s.sched.Approved(ctx, a.Name, a)
	if err != nil {
		return nil, toStatus(ctx, s.log, err)
	}
	s.log.InfoContext(ctx, "agent approved", slog.String("agent", a.Name), slog.Any("labels", a.Labels),
		slog.Int("slots", a.Slots), slog.String("by", a.ApprovedBy))
	out := &batonv1.ApproveAgentResponse{Approval: &batonv1.AgentApproval{
		Name: a.Name, Labels: a.Labels, Slots: int32(a.Slots), CertSha256: a.CertSHA256,
		ApprovedBy: a.ApprovedBy, ApproveTime: ts(a.ApprovedAt),
	}}
	if connected {
		out.PendingReason = info.Pending
	}
	return out, nil
}

func (s *adminService) RevokeAgent(ctx context.Context, req *batonv1.RevokeAgentRequest) (*batonv1.RevokeAgentResponse, error) {
	if err := s.checkApproval(req.GetName()); err != nil {
		return nil, err
	}
	if err := s.st.AgentApprovalDelete(ctx, &store.AgentApprovalDeleteParams{Name: req.GetName()}); err != nil {
		return nil, toStatus(ctx, s.log, notFound(err, "approval of agent %q", req.GetName()))
	}
	if _, _, err := s.sched.Approved(ctx, req.GetName(), nil); err != nil {
		return nil, toStatus(ctx, s.log, err)
	}
	s.log.InfoContext(ctx, "agent approval revoked", slog.String("agent", req.GetName()), slog.String("by", callerName(ctx)))
	return &batonv1.RevokeAgentResponse{}, nil
}

// checkApproval refuses approval calls batond would not act on.
func (s *adminService) checkApproval(name string) error {
	if name == "" {
		return invalidArg("name", "required")
	}
	if !s.approval {
		return status.Error(codes.FailedPrecondition, "this batond admits agents without approval; "+
			"start it with --agent-approval to make agents wait for one")
	}
	return nil
}

// callerName names the caller for records: the audit trail's who.
func callerName(ctx context.Context) string {
	if id, ok := auth.FromContext(ctx); ok {
		return id.Who()
	}
	return string(auth.KindAnonymous)
}
