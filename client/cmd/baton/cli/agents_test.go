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

func TestAgentsApprove(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.srv.AddAgent(&batonv1.Agent{Name: "sql01", Labels: map[string]string{"role": "ssis"}, Slots: 8,
		State: batonv1.AgentState_AGENT_STATE_PENDING, PendingReason: "waiting for approval",
		LastSeenTime: timestamppb.New(now.Add(-time.Second))})
	b.run(t, "agents").want(t, cli.ExitOK, lines(
		"NAME   STATE    LABELS     SLOTS  RUNNING  VERSION  LAST SEEN",
		"sql01  pending  role=ssis  8      0        -        1s ago",
		"",
		"sql01: waiting for approval",
	), "")
	b.run(t, "agents", "approve", "sql01").want(t, cli.ExitOK,
		"agent sql01 approved: labels role=ssis, slots 8, certificate sha256:abababababababab…\n", "")
	b.run(t, "agents", "approve", "sql02", "--label", "role=etl", "--label", "dc=east").want(t, cli.ExitOK,
		"agent sql02 approved: labels dc=east,role=etl, slots any\n", "")
	b.run(t, "agents", "approve", "sql03").want(t, cli.ExitError, "",
		"baton: approve agent \"sql03\": agent \"sql03\" is not connected\n")
	b.run(t, "agents", "approve", "sql03", "--label", "role").want(t, cli.ExitError, "",
		"baton: invalid --label \"role\": want key=value\nRun 'baton agents approve --help' for usage.\n")
	b.run(t, "agents", "revoke", "sql01").want(t, cli.ExitOK, "agent sql01: approval revoked\n", "")
	b.run(t, "agents", "revoke", "sql01").want(t, cli.ExitError, "",
		"baton: revoke agent \"sql01\": approval of agent \"sql01\" not found\n")
}
