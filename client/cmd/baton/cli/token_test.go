package cli_test

import (
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/batonhq/baton/client/cmd/baton/cli"
	"github.com/batonhq/baton/client/internal/fakeserver"
	batonv1 "github.com/batonhq/baton/gen/baton/v1"
)

// TestToken: token create prints the secret alone on stdout (once), list
// shows no secrets, revoke takes a name or an id.
func TestToken(t *testing.T) {
	t.Parallel()
	b := setup(t)

	b.run(t, "token", "create", "ci", "--role", "operator", "--jobs", "etl-*", "--expires", "720h").want(t, cli.ExitOK,
		fakeserver.FakeSecret("ci")+"\n",
		"created token ci (id 1, operator, jobs etl-*, expires 2026-12-21 02:00:00 UTC); the secret is shown only now:\n")
	b.run(t, "token", "create", "dash", "--role", "Viewer").want(t, cli.ExitOK, fakeserver.FakeSecret("dash")+"\n",
		"created token dash (id 2, viewer); the secret is shown only now:\n")

	var created batonv1.CreateTokenResponse
	decode(t, b.run(t, "token", "create", "root2", "--role", "admin", "-o", "json"), &created)
	if created.GetSecret() != fakeserver.FakeSecret("root2") || created.GetToken().GetRole() != batonv1.Role_ROLE_ADMIN {
		t.Errorf("token create -o json = %v, want the admin token and its secret", &created)
	}

	b.run(t, "token", "revoke", "ci").want(t, cli.ExitOK, "revoked token ci (id 1) at 2026-11-21 03:00:00 UTC\n", "")
	b.run(t, "token", "revoke", "2").want(t, cli.ExitOK, "revoked token dash (id 2) at 2026-11-21 03:00:00 UTC\n", "")
	b.run(t, "token", "list").want(t, cli.ExitOK, lines(
		"ID  NAME   ROLE      JOBS   CREATED                  EXPIRES                  LAST USED  REVOKED",
		"1   ci     operator  etl-*  2026-11-21 02:00:00 UTC  2026-12-21 02:00:00 UTC  never      2026-11-21 03:00:00 UTC",
		"2   dash   viewer    -      2026-11-21 02:00:00 UTC  never                    never      2026-11-21 03:00:00 UTC",
		"3   root2  admin     -      2026-11-21 02:00:00 UTC  never                    never      -",
	), "")
	list := b.run(t, "token", "list", "-o", "json")
	if strings.Contains(list.stdout, "baton_") {
		t.Errorf("token list -o json shows a secret:\n%s", list.stdout)
	}

	r := b.run(t, "token", "create", "x", "--role", "root")
	if r.code != cli.ExitError || !strings.Contains(r.stderr, `invalid --role "root"`) {
		t.Errorf("token create --role root = %d %q, want a usage error naming --role", r.code, r.stderr)
	}
	r = b.run(t, "token", "revoke", "nobody")
	if r.code != cli.ExitError || !strings.Contains(r.stderr, `token "nobody" not found`) {
		t.Errorf("token revoke nobody = %d %q, want not found", r.code, r.stderr)
	}
	r = b.run(t, "token", "create", "ci", "--role", "viewer")
	if r.code != cli.ExitError || !strings.Contains(r.stderr, "exists") {
		t.Errorf("token create of a used name = %d %q, want it refused", r.code, r.stderr)
	}
}

// TestTokenSent: the token from --token, BATON_TOKEN or --token-file goes
// with every call; none is sent without one; a token is not sent in
// plaintext to another machine without --insecure-token.
func TestTokenSent(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.srv.SetRequiredToken("baton_s3cret")

	r := b.run(t, "agents")
	if r.code != cli.ExitError || !strings.Contains(r.stderr, "BATON_TOKEN") {
		t.Errorf("agents without a token = %d %q, want refused saying how to send one", r.code, r.stderr)
	}
	b.run(t, "--token", "baton_s3cret", "agents").want(t, cli.ExitOK, "NAME  STATE  LABELS  SLOTS  RUNNING  VERSION  LAST SEEN\n", "")
	b.env["BATON_TOKEN"] = "baton_s3cret"
	if r := b.run(t, "agents"); r.code != cli.ExitOK {
		t.Errorf("agents with BATON_TOKEN = %d %q", r.code, r.stderr)
	}
	delete(b.env, "BATON_TOKEN")
	b.env["BATON_TOKEN_FILE"] = writeFile(t, "token", "baton_s3cret\n")
	if r := b.run(t, "agents"); r.code != cli.ExitOK {
		t.Errorf("agents with BATON_TOKEN_FILE = %d %q", r.code, r.stderr)
	}
	b.env["BATON_TOKEN_FILE"] = writeFile(t, "token", "two tokens\n")
	if r := b.run(t, "agents"); r.code != cli.ExitError || !strings.Contains(r.stderr, "want one token") {
		t.Errorf("agents with a bad token file = %d %q, want it refused", r.code, r.stderr)
	}
	delete(b.env, "BATON_TOKEN_FILE")
	if diff := cmp.Diff([]string{"", "Bearer baton_s3cret", "Bearer baton_s3cret", "Bearer baton_s3cret"}, b.srv.Authorizations()); diff != "" {
		t.Errorf("authorization sent (-want +got):\n%s", diff)
	}

	r = b.runRaw(t, "--addr", "192.0.2.10:7700", "--token", "baton_s3cret", "agents")
	if r.code != cli.ExitError || !strings.Contains(r.stderr, "refusing to send an API token without TLS") ||
		!strings.Contains(r.stderr, "--insecure-token") {
		t.Errorf("agents with a token in plaintext to 192.0.2.10 = %d %q, want refused naming --insecure-token", r.code, r.stderr)
	}
}

// TestAudit: audit shows the trail newest first and passes its filters.
func TestAudit(t *testing.T) {
	t.Parallel()
	b := setup(t)
	at := func(d time.Duration) *timestamppb.Timestamp { return timestamppb.New(fakeserver.Base.Add(d)) }
	b.srv.SetAudit([]*batonv1.AuditRecord{
		{Id: 3, Time: at(5 * time.Minute), Who: "token:dash", Peer: "10.0.0.7:51000", Method: "/baton.v1.RunService/StartRun",
			Job: "nightly", Code: "PermissionDenied", Message: "RunService.StartRun needs the operator role; token \"dash\" has viewer"},
		{Id: 2, Time: at(2 * time.Minute), Who: "token:ci", Peer: "10.0.0.8:40000", Method: "/baton.v1.RunService/StartRun",
			Job: "nightly", RunId: 12, Code: "OK"},
		{Id: 1, Time: at(-48 * time.Hour), Who: "anonymous", Peer: "10.0.0.9", Method: "GET /metrics", Code: "Unauthenticated",
			Message: "this call needs an API token"},
	})
	b.run(t, "audit").want(t, cli.ExitOK, lines(
		"TIME                     WHO         FROM            CALL                 JOB      RUN  RESULT",
		`2026-11-21 02:05:00 UTC  token:dash  10.0.0.7:51000  RunService.StartRun  nightly  -    PermissionDenied: RunService.StartRun needs the operator role; token "dash" has viewer`,
		"2026-11-21 02:02:00 UTC  token:ci    10.0.0.8:40000  RunService.StartRun  nightly  12   OK",
		"2026-11-19 02:00:00 UTC  anonymous   10.0.0.9        GET /metrics         -        -    Unauthenticated: this call needs an API token",
	), "")

	var resp batonv1.ListAuditResponse
	decode(t, b.run(t, "audit", "--since", "24h", "--who", "token:ci", "--job", "nightly", "-o", "json"), &resp)
	if len(resp.GetRecords()) != 1 || resp.GetRecords()[0].GetRunId() != 12 {
		t.Errorf("audit --since 24h --who token:ci --job nightly = %v, want the one OK StartRun", &resp)
	}
	reqs := b.srv.AuditRequests()
	last := reqs[len(reqs)-1]
	if !last.GetSince().AsTime().Equal(now.Add(-24*time.Hour)) || last.GetWho() != "token:ci" || last.GetJob() != "nightly" {
		t.Errorf("ListAudit request = %v, want since now-24h, who token:ci, job nightly", last)
	}
	decode(t, b.run(t, "audit", "--since", "2026-11-21T02:03:00Z", "-o", "json"), &resp)
	if len(resp.GetRecords()) != 1 || resp.GetRecords()[0].GetId() != 3 {
		t.Errorf("audit --since 02:03 = %v, want only record 3", &resp)
	}
	decode(t, b.run(t, "audit", "--limit", "2", "-o", "json"), &resp)
	if len(resp.GetRecords()) != 2 {
		t.Errorf("audit --limit 2 = %d records, want 2", len(resp.GetRecords()))
	}
	r := b.run(t, "audit", "--since", "yesterday")
	if r.code != cli.ExitError || !strings.Contains(r.stderr, `invalid --since "yesterday"`) {
		t.Errorf("audit --since yesterday = %d %q, want a usage error", r.code, r.stderr)
	}
}
