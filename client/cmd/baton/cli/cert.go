package cli

import (
	"fmt"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/batonhq/baton/client/pki"
)

// certCommand makes a private CA and the certificates batond and its
// agents present, for trials and small estates.
func (a *app) certCommand() *cobra.Command {
	var dir string
	cmd := &cobra.Command{
		Use:   "cert",
		Short: "Make a private CA, batond's certificate and agent certificates",
		Long: `Make the certificates a Baton estate needs, without an enterprise CA:

  baton cert ca                  a private CA (ca.crt, ca.key)
  baton cert server HOST...      batond's TLS certificate for the names agents dial
  baton cert agent NAME          an agent's client certificate: batond started with
                                 --agent-ca ca.crt takes the agent's name from it

Keys are ECDSA P-256, written readable by their owner only; existing files
are never overwritten. Keep ca.key off the servers: whoever holds it can
make certificates for any agent name. docs/security.md shows how to use an
enterprise CA instead. These commands work offline: they do not call batond.`,
		Example: `  baton cert ca --dir ./pki
  baton cert server --dir ./pki batond.corp.example.com 10.0.0.5
  baton cert agent --dir ./pki sql01
  batond --grpc-addr 0.0.0.0:7700 --tls-cert pki/server.crt --tls-key pki/server.key --agent-ca pki/ca.crt
  baton-agent --server batond.corp.example.com:7700 --ca-file pki/ca.crt \
      --tls-cert pki/agent-sql01.crt --tls-key pki/agent-sql01.key --allow '/opt/etl/bin/*'`,
		Args: cobra.NoArgs,
		RunE: groupRun,
	}
	cmd.PersistentFlags().StringVar(&dir, "dir", ".", "directory of the CA and the certificates")
	var days int
	validity := func() (time.Duration, error) {
		if days <= 0 || days > 36500 {
			return 0, usagef("invalid --days %d: want 1 to 36500", days)
		}
		return time.Duration(days) * 24 * time.Hour, nil
	}
	say := func(format string, args ...any) error {
		_, err := fmt.Fprintf(a.env.Stdout, format, args...)
		return err
	}
	var cn string
	caCmd := &cobra.Command{
		Use:   "ca",
		Short: "Make a private certificate authority (ca.crt, ca.key)",
		Example: `  baton cert ca --dir ./pki
  baton cert ca --dir ./pki --name "Contoso Baton CA" --days 1825`,
		Args: wantArgs(),
		RunE: func(*cobra.Command, []string) error {
			v, err := validity()
			if err != nil {
				return err
			}
			if err := pki.NewCA(dir, cn, v, a.env.Now()); err != nil {
				return err
			}
			return say("wrote %s and %s (keep the key secret and off the servers)\n",
				filepath.Join(dir, pki.CACert), filepath.Join(dir, pki.CAKey))
		},
	}
	caCmd.Flags().StringVar(&cn, "name", "Baton CA", "the CA's common name")
	caCmd.Flags().IntVar(&days, "days", 3650, "days the CA is valid")

	serverCmd := &cobra.Command{
		Use:   "server HOST...",
		Short: "Issue batond's TLS certificate for the names and addresses agents dial",
		Example: `  baton cert server --dir ./pki batond01.corp.example.com 10.0.0.5
  baton cert server --dir ./pki localhost 127.0.0.1`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(_ *cobra.Command, hosts []string) error {
			v, err := validity()
			if err != nil {
				return err
			}
			ca, err := pki.LoadCA(dir)
			if err != nil {
				return err
			}
			if err := ca.Server(dir, hosts, v, a.env.Now()); err != nil {
				return err
			}
			return say("wrote %s and %s: start batond with --tls-cert and --tls-key naming them\n",
				filepath.Join(dir, pki.ServerCrt), filepath.Join(dir, pki.ServerKey))
		},
	}
	serverCmd.Flags().IntVar(&days, "days", 397, "days the certificate is valid (at most the CA's)")

	agentCmd := &cobra.Command{
		Use:   "agent NAME",
		Short: "Issue an agent's client certificate (URI SAN baton-agent:///NAME)",
		Example: `  baton cert agent --dir ./pki sql01
  baton cert agent --dir ./pki etl-02 --days 90`,
		Args: wantArgs("NAME"),
		RunE: func(_ *cobra.Command, args []string) error {
			v, err := validity()
			if err != nil {
				return err
			}
			ca, err := pki.LoadCA(dir)
			if err != nil {
				return err
			}
			if err := ca.Agent(dir, args[0], v, a.env.Now()); err != nil {
				return err
			}
			cert, key := pki.AgentFiles(args[0])
			return say("wrote %s and %s: copy both to the agent's host and start baton-agent with --tls-cert and --tls-key naming them\n",
				filepath.Join(dir, cert), filepath.Join(dir, key))
		},
	}
	agentCmd.Flags().IntVar(&days, "days", 397, "days the certificate is valid (at most the CA's)")
	cmd.AddCommand(caCmd, serverCmd, agentCmd)
	return cmd
}
