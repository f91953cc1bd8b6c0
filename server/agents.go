package server

import (
	"context"
	"log/slog"
	"slices"
	"strings"

	batonv1 "github.com/batonhq/baton/gen/baton/v1"
	"github.com/batonhq/baton/server/scheduler"
	"github.com/batonhq/baton/server/store"
)

// adminService implements batonv1.AgentAdminServiceServer.
type adminService struct {
	batonv1.UnimplementedAgentAdminServiceServer
	st    store.Store
	sched *scheduler.Scheduler
	log   *slog.Logger
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
		out.Agents = append(out.Agents, agentToProto(&a.Agent, a.Running))
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
		ac, bc := a.State == batonv1.AgentState_AGENT_STATE_CONNECTED, b.State == batonv1.AgentState_AGENT_STATE_CONNECTED
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
