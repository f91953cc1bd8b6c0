package cli_test

import (
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/batonhq/baton/client/cmd/baton/cli"
	batonv1 "github.com/batonhq/baton/gen/baton/v1"
)

func TestAgents(t *testing.T) {
	t.Parallel()
	b := setup(t)

	b.run(t, "agents").want(t, cli.ExitOK, "NAME  STATE  LABELS  SLOTS  RUNNING  VERSION  LAST SEEN\n", "")

	b.srv.AddAgent(&batonv1.Agent{Name: "etl-01", Labels: map[string]string{"role": "ssis", "dc": "east"}, Slots: 4, Running: 2,
		State: batonv1.AgentState_AGENT_STATE_CONNECTED, Version: "1.0.0", LastSeenTime: timestamppb.New(now.Add(-3 * time.Second))})
	b.srv.AddAgent(&batonv1.Agent{Name: "etl-02", Slots: 8, State: batonv1.AgentState_AGENT_STATE_LOST,
		Version: "0.9.1", LastSeenTime: timestamppb.New(now.Add(-125 * time.Second))})
	b.srv.AddAgent(&batonv1.Agent{Name: "etl-03", Slots: 2, State: batonv1.AgentState_AGENT_STATE_DISCONNECTED,
		LastSeenTime: timestamppb.New(now.Add(-26 * time.Hour))})
	b.srv.AddAgent(&batonv1.Agent{Name: "etl-04", Slots: 1, State: batonv1.AgentState_AGENT_STATE_CONNECTED,
		LastSeenTime: timestamppb.New(now.Add(-200 * time.Millisecond))})

	b.run(t, "agents").want(t, cli.ExitOK, lines(
		"NAME    STATE         LABELS             SLOTS  RUNNING  VERSION  LAST SEEN",
		"etl-01  connected     dc=east,role=ssis  4      2        1.0.0    3s ago",
		"etl-04  connected     -                  1      0        -        just now",
		"etl-03  disconnected  -                  2      0        -        1d02h ago",
		"etl-02  lost          -                  8      0        0.9.1    2m05s ago",
	), "")

	var resp batonv1.ListAgentsResponse
	decode(t, b.run(t, "agents", "-o", "json"), &resp)
	if len(resp.GetAgents()) != 4 || resp.GetAgents()[0].GetLabels()["role"] != "ssis" {
		t.Errorf("agents -o json = %v, want 4 agents, etl-01 first with its labels", &resp)
	}
}
