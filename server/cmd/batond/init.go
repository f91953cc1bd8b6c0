package main

import (
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"

	"github.com/batonhq/baton/server"
	"github.com/batonhq/baton/server/store"
)

// authMode turns --auth into the server's mode: given, or on unless both
// listeners are loopback.
func authMode(o *options) (server.AuthMode, error) {
	switch o.auth {
	case "":
		return server.AuthDefault(o.grpcAddr, o.httpAddr), nil
	case "on":
		return server.AuthOn, nil
	case "off":
		return server.AuthOff, nil
	}
	return "", usagef("--auth %q: want on or off", o.auth)
}

// initCommand is `batond init`: the first admin token.
func initCommand(o *options, stdout, stderr io.Writer) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "init",
		Short: "Create the first admin API token and print it once",
		Long: `init opens the state store as batond does (same --db or --data-dir),
migrates it, and creates an admin API token when no usable (unrevoked,
unexpired) admin token exists. The token is printed once to standard output,
or written to --token-file with mode 0600; batond keeps only its hash.

Create more tokens with 'baton token create NAME --role R' using this one.
Whoever can open the store can run init, so it also recovers a control plane
whose admin tokens were all revoked or have expired.`,
		Example: `  batond init --data-dir /var/lib/batond --token-file /root/.baton-token
  BATON_TOKEN_FILE=/root/.baton-token baton token list`,
		Args:          noArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			log, err := newLogger(o, stderr)
			if err != nil {
				return err
			}
			st, err := openStore(ctx, o, log)
			if err != nil {
				return err
			}
			defer closeStore(st, log)
			if err := st.Migrate(ctx); err != nil {
				return fmt.Errorf("migrate: %w", err)
			}
			if !store.TokenNameOK(o.tokenName) {
				return usagef("--name %q: want a letter followed by letters, digits, '.', '_', '@' or '-'", o.tokenName)
			}
			// The file first: a token nobody can read would be lost.
			var out *os.File
			if o.tokenFile != "" {
				if out, err = os.OpenFile(o.tokenFile, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600); err != nil {
					return fmt.Errorf("--token-file: %w", err)
				}
				defer func() { _ = out.Close() }() // closed below; this one is for the error paths
			}
			secret, tok, err := server.CreateFirstAdmin(ctx, st, o.tokenName)
			if err != nil && out != nil {
				_ = out.Close()
				_ = os.Remove(o.tokenFile)
			}
			switch {
			case errors.Is(err, server.ErrAdminExists):
				return fmt.Errorf("%w; init creates only the first one: create more with "+
					"`baton token create NAME --role admin` using an admin token, "+
					"or revoke them all (`baton token revoke`) to let init make a new one", err)
			case errors.Is(err, store.ErrExists):
				return fmt.Errorf("a token named %q exists (revoked or expired); choose another with --name", o.tokenName)
			case err != nil:
				return err
			}
			if out != nil {
				if _, err := fmt.Fprintln(out, secret); err != nil {
					return fmt.Errorf("--token-file: %w (the token %q was created: revoke it and run init again)", err, tok.Name)
				}
				if err := out.Close(); err != nil {
					return fmt.Errorf("--token-file: %w (the token %q was created: revoke it and run init again)", err, tok.Name)
				}
				_, _ = fmt.Fprintf(stderr, "batond: admin token %q (id %d) written to %s; it is not shown again\n",
					tok.Name, tok.ID, o.tokenFile)
				return nil
			}
			_, _ = fmt.Fprintf(stderr, "batond: admin token %q (id %d); it is not shown again: use it as BATON_TOKEN\n",
				tok.Name, tok.ID)
			_, err = fmt.Fprintln(stdout, secret)
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.tokenFile, "token-file", "", "write the token to this file (mode 0600, must not exist) instead of standard output")
	f.StringVar(&o.tokenName, "name", "admin", "the token's name")
	return cmd
}
