package cli

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	batonv1 "github.com/batonhq/baton/gen/baton/v1"
)

func (a *app) agentsCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "agents",
		Short: "List the agents known to the control plane",
		Long: `List every agent that has connected, live ones first: name, state, labels,
slots, attempts running now, version and when it was last heard from. A
pending agent is connected but gets no work until an admin approves what it
claims ('baton agents approve'); its reason is shown below the table.`,
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
			var pending []string
			for _, ag := range agents {
				t.row(ag.GetName(), agentState(ag.GetState()), orDash(formatLabels(ag.GetLabels())),
					strconv.Itoa(int(ag.GetSlots())), strconv.Itoa(int(ag.GetRunning())), orDash(ag.GetVersion()),
					a.clock.ago(ag.GetLastSeenTime()))
				if r := ag.GetPendingReason(); r != "" {
					pending = append(pending, ag.GetName()+": "+r)
				}
			}
			if err := t.flush(); err != nil {
				return err
			}
			if len(pending) > 0 {
				_, err := fmt.Fprintf(a.env.Stdout, "\n%s\n", strings.Join(pending, "\n"))
				return err
			}
			return nil
		},
	}
	cmd.AddCommand(a.agentsApproveCommand(), a.agentsRevokeCommand())
	return cmd
}

func (a *app) agentsApproveCommand() *cobra.Command {
	var rawLabels []string
	var slots int32
	cmd := &cobra.Command{
		Use:   "approve NAME",
		Short: "Approve the labels and slots an agent may claim",
		Long: `Approve what an agent may claim, so that it gets work. batond started with
--agent-approval (the default with --agent-ca) keeps every agent pending until
then: a new machine cannot advertise role=ssis and draw the estate's work.

Without --label and --slots, approve exactly what the connected agent claims
now, and pin its client certificate: a new certificate for the same name
needs a new approval. With them, approve ahead of its first connection; it
may then claim any subset of the labels and at most the slots (0: any).`,
		Example: `  baton agents approve sql01
  baton agents approve sql02 --label role=ssis --label dc=east --slots 8`,
		Args: wantArgs("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			labels, err := parseKeyValues("label", rawLabels)
			if err != nil {
				return err
			}
			if slots < 0 {
				return usagef("invalid --slots %d: must not be negative", slots)
			}
			c, err := a.client()
			if err != nil {
				return err
			}
			ctx, cancel := a.unary(cmd.Context())
			defer cancel()
			resp, err := c.ApproveAgent(ctx, args[0], labels, slots)
			if err != nil {
				return err
			}
			if a.json() {
				return writeJSON(a.env.Stdout, resp)
			}
			ap := resp.GetApproval()
			slotsText := "any"
			if ap.GetSlots() > 0 {
				slotsText = strconv.Itoa(int(ap.GetSlots()))
			}
			msg := fmt.Sprintf("agent %s approved: labels %s, slots %s", ap.GetName(), orDash(formatLabels(ap.GetLabels())), slotsText)
			if ap.GetCertSha256() != "" {
				msg += ", certificate sha256:" + ap.GetCertSha256()[:16] + "…"
			}
			if r := resp.GetPendingReason(); r != "" {
				msg += "\nstill " + r
			}
			_, err = fmt.Fprintln(a.env.Stdout, msg)
			return err
		},
	}
	f := cmd.Flags()
	f.StringArrayVar(&rawLabels, "label", nil, "a label key=value the agent may claim; repeat for several")
	f.Int32Var(&slots, "slots", 0, "the most slots the agent may claim (0: any)")
	return cmd
}

func (a *app) agentsRevokeCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "revoke NAME",
		Short: "Remove an agent's approval: it gets no new work",
		Long: `Remove an agent's approval. While batond requires approval, the agent gets
no new work from now on; children it runs now finish and are reported.
Revoke the agent of a lost or stolen certificate, then approve the new one.`,
		Example: "  baton agents revoke sql01",
		Args:    wantArgs("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			ctx, cancel := a.unary(cmd.Context())
			defer cancel()
			if err := c.RevokeAgent(ctx, args[0]); err != nil {
				return err
			}
			_, err = fmt.Fprintf(a.env.Stdout, "agent %s: approval revoked\n", args[0])
			return err
		},
	}
}
