package cli

import (
	"strconv"

	"github.com/spf13/cobra"

	batonv1 "github.com/batonhq/baton/gen/baton/v1"
)

func (a *app) agentsCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "agents",
		Short: "List the agents known to the control plane",
		Long: `List every agent that has connected, live ones first: name, state, labels,
slots, attempts running now, version and when it was last heard from.`,
		Example: "  baton agents\n  baton agents -o json | jq -r '.agents[] | select(.state != \"AGENT_STATE_CONNECTED\") | .name'",
		Args:    wantArgs(),
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			ctx, cancel := a.unary(cmd.Context())
			defer cancel()
			agents, err := c.ListAgents(ctx)
			if err != nil {
				return err
			}
			if a.json() {
				return writeJSON(a.env.Stdout, &batonv1.ListAgentsResponse{Agents: agents})
			}
			t := newTable(a.env.Stdout, "NAME", "STATE", "LABELS", "SLOTS", "RUNNING", "VERSION", "LAST SEEN")
			for _, ag := range agents {
				t.row(ag.GetName(), agentState(ag.GetState()), orDash(formatLabels(ag.GetLabels())),
					strconv.Itoa(int(ag.GetSlots())), strconv.Itoa(int(ag.GetRunning())), orDash(ag.GetVersion()),
					a.clock.ago(ag.GetLastSeenTime()))
			}
			return t.flush()
		},
	}
}
