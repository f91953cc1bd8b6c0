package cli

import (
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/batonhq/baton/client"
	batonv1 "github.com/batonhq/baton/gen/baton/v1"
)

func roleWord(r batonv1.Role) string { return enumWord(r.String(), "ROLE_") }

func (a *app) tokenCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "token",
		Short: "Create, list and revoke API tokens (admin)",
		Long: `API tokens say who calls batond and with which role: viewer (reads), operator
(also starts, cancels and restarts runs) or admin (also applies and deletes
jobs and manages tokens). A token may be limited to jobs whose names match a
glob. These commands need an admin token not limited to jobs; the first one
comes from 'batond init'.`,
		Example: `  baton token create nightly-ci --role operator --jobs 'nightly-*' > ci.token
  baton token list
  baton token revoke nightly-ci`,
		Args: cobra.ArbitraryArgs,
		RunE: groupRun,
	}
	cmd.AddCommand(a.tokenCreateCommand(), a.tokenListCommand(), a.tokenRevokeCommand())
	return cmd
}

func (a *app) tokenCreateCommand() *cobra.Command {
	var (
		role    string
		jobs    string
		expires time.Duration
	)
	cmd := &cobra.Command{
		Use:   "create NAME --role viewer|operator|admin",
		Short: "Create a token and print its secret once",
		Long: `Create an API token and print its secret on standard output, once: batond
keeps only its hash. Store it where its user reads it (a secret store, or a
file for --token-file). With -o json the whole response, secret included, is
printed.`,
		Example: `  baton token create nightly-ci --role operator --jobs 'nightly-*' --expires 720h > ci.token
  baton token create grafana --role viewer`,
		Args: wantArgs("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			r, ok := map[string]batonv1.Role{"viewer": batonv1.Role_ROLE_VIEWER, "operator": batonv1.Role_ROLE_OPERATOR,
				"admin": batonv1.Role_ROLE_ADMIN}[strings.ToLower(role)]
			if !ok {
				return usagef("invalid --role %q: want viewer, operator or admin", role)
			}
			if expires < 0 {
				return usagef("invalid --expires %s: must not be negative", expires)
			}
			c, err := a.client()
			if err != nil {
				return err
			}
			ctx, cancel := a.unary(cmd.Context())
			defer cancel()
			tok, secret, err := c.CreateToken(ctx, &client.CreateTokenParams{Name: args[0], Role: r, Jobs: jobs, TTL: expires})
			if err != nil {
				return err
			}
			if a.json() {
				return writeJSON(a.env.Stdout, &batonv1.CreateTokenResponse{Token: tok, Secret: secret})
			}
			note := "created token " + tok.GetName() + " (id " + strconv.FormatInt(tok.GetId(), 10) + ", " + roleWord(tok.GetRole())
			if tok.GetJobs() != "" {
				note += ", jobs " + tok.GetJobs()
			}
			if tok.GetExpireTime() != nil {
				note += ", expires " + a.clock.timestamp(tok.GetExpireTime())
			}
			notef(a.env.Stderr, "%s); the secret is shown only now:\n", note)
			_, err = a.env.Stdout.Write([]byte(secret + "\n"))
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&role, "role", "", "viewer, operator or admin (required)")
	f.StringVar(&jobs, "jobs", "", "limit the token to jobs whose names match this glob (*, ?, [a-z])")
	f.DurationVar(&expires, "expires", 0, "make the token expire after this long, e.g. 720h (default: never)")
	return cmd
}

func (a *app) tokenListCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List tokens (never their secrets)",
		Long: `List every token, revoked and expired ones included: id, name, role, jobs,
when it was created, when it expires, when it was last used (to within a
minute) and when it was revoked.`,
		Example: "  baton token list\n  baton token list -o json | jq -r '.tokens[] | select(.revokeTime == null) | .name'",
		Args:    wantArgs(),
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			ctx, cancel := a.unary(cmd.Context())
			defer cancel()
			toks, err := c.ListTokens(ctx)
			if err != nil {
				return err
			}
			if a.json() {
				return writeJSON(a.env.Stdout, &batonv1.ListTokensResponse{Tokens: toks})
			}
			t := newTable(a.env.Stdout, "ID", "NAME", "ROLE", "JOBS", "CREATED", "EXPIRES", "LAST USED", "REVOKED")
			for _, tok := range toks {
				expires := "never"
				if tok.GetExpireTime() != nil {
					expires = a.clock.timestamp(tok.GetExpireTime())
				}
				t.row(strconv.FormatInt(tok.GetId(), 10), tok.GetName(), roleWord(tok.GetRole()), orDash(tok.GetJobs()),
					a.clock.timestamp(tok.GetCreateTime()), expires, a.clock.ago(tok.GetLastUseTime()),
					a.clock.timestamp(tok.GetRevokeTime()))
			}
			return t.flush()
		},
	}
}

func (a *app) tokenRevokeCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "revoke NAME|ID",
		Short: "Revoke a token",
		Long: `Revoke a token by name or id. The batond that serves the call refuses it at
once; other batond replicas sharing the store within 30 seconds. The token
stays in 'baton token list' and its name is not reused.`,
		Example: "  baton token revoke nightly-ci\n  baton token revoke 7",
		Args:    wantArgs("NAME|ID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			ctx, cancel := a.unary(cmd.Context())
			defer cancel()
			tok, err := c.RevokeToken(ctx, args[0])
			if err != nil {
				return err
			}
			if a.json() {
				return writeJSON(a.env.Stdout, &batonv1.RevokeTokenResponse{Token: tok})
			}
			_, err = a.env.Stdout.Write([]byte("revoked token " + tok.GetName() + " (id " + strconv.FormatInt(tok.GetId(), 10) +
				") at " + a.clock.timestamp(tok.GetRevokeTime()) + "\n"))
			return err
		},
	}
}

func (a *app) auditCommand() *cobra.Command {
	var (
		since string
		who   string
		job   string
		limit int
	)
	cmd := &cobra.Command{
		Use:   "audit",
		Short: "Show the audit trail: mutating and refused calls",
		Long: `Show the audit trail, newest first: every call that changed something (job
apply and delete, run start, cancel and restart, token create and revoke)
and every call refused for want of a valid token or a sufficient role, with
who made it, from where, what it named and the result. Needs a viewer token
not limited to jobs.`,
		Example: `  baton audit --since 24h
  baton audit --who token:nightly-ci --job nightly-dw-load -o json`,
		Args: wantArgs(),
		RunE: func(cmd *cobra.Command, _ []string) error {
			f := client.AuditFilter{Who: who, Job: job}
			if since != "" {
				t, err := parseSince(since, a.clock.now())
				if err != nil {
					return err
				}
				f.Since = t
			}
			if limit < 0 {
				return usagef("invalid --limit %d: must not be negative", limit)
			}
			c, err := a.client()
			if err != nil {
				return err
			}
			ctx, cancel := a.unary(cmd.Context())
			defer cancel()
			recs, err := c.ListAudit(ctx, f, limit)
			if err != nil {
				return err
			}
			if a.json() {
				return writeJSON(a.env.Stdout, &batonv1.ListAuditResponse{Records: recs})
			}
			t := newTable(a.env.Stdout, "TIME", "WHO", "FROM", "CALL", "JOB", "RUN", "RESULT")
			for _, r := range recs {
				run := "-"
				if r.GetRunId() != 0 {
					run = strconv.FormatInt(r.GetRunId(), 10)
				}
				result := r.GetCode()
				if r.GetMessage() != "" {
					result += ": " + clipText(r.GetMessage(), 80)
				}
				t.row(a.clock.timestamp(r.GetTime()), r.GetWho(), orDash(r.GetPeer()), shortCall(r.GetMethod()),
					orDash(r.GetJob()), run, result)
			}
			return t.flush()
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&since, "since", "", "only records since this long ago (24h) or this time (RFC 3339)")
	fl.StringVar(&who, "who", "", `only this caller's records, as shown in WHO ("token:ci", "anonymous")`)
	fl.StringVar(&job, "job", "", "only records naming this job")
	fl.IntVar(&limit, "limit", 100, "show at most this many records; 0 for all")
	return cmd
}

// parseSince reads --since: a duration before now, or an RFC 3339 time.
func parseSince(s string, now time.Time) (time.Time, error) {
	if d, err := time.ParseDuration(s); err == nil {
		if d < 0 {
			return time.Time{}, usagef("invalid --since %q: a duration must not be negative", s)
		}
		return now.Add(-d), nil
	}
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return time.Time{}, usagef("invalid --since %q: want a duration such as 24h or a time such as 2026-11-21T02:00:00Z", s)
	}
	return t, nil
}

// shortCall turns "/baton.v1.RunService/StartRun" into
// "RunService.StartRun"; other values stay as they are.
func shortCall(m string) string {
	rest, ok := strings.CutPrefix(m, "/baton.v1.")
	if !ok {
		return m
	}
	return strings.Replace(rest, "/", ".", 1)
}

// clipText cuts s to n runes, marking the cut, and keeps it on one line.
func clipText(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	if r := []rune(s); len(r) > n {
		return string(r[:n-1]) + "…"
	}
	return s
}
