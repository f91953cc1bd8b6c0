package server_test

import (
	"context"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/durationpb"

	batonv1 "github.com/batonhq/baton/gen/baton/v1"
	"github.com/batonhq/baton/server"
	"github.com/batonhq/baton/server/auth"
	"github.com/batonhq/baton/server/store"
	"github.com/batonhq/baton/server/store/sqlite"
)

// fakeClock is a clock the test moves by hand.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// authBundle is a batond with authentication on, an admin token, and
// clients for every service.
type authBundle struct {
	st     *sqlite.Store
	srv    *batond
	clock  *fakeClock
	admin  string
	jobs   batonv1.JobServiceClient
	runs   batonv1.RunServiceClient
	agents batonv1.AgentAdminServiceClient
	tokens batonv1.TokenServiceClient
	audit  batonv1.AuditServiceClient
}

func setupAuth(t *testing.T, mod func(*server.Config)) *authBundle {
	t.Helper()
	st := openStore(t)
	clock := &fakeClock{now: time.Now()}
	cfg := server.Config{
		Store: st, Logger: newTestLogger(t, "auth"), GRPCAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0",
		ShutdownTimeout: 5 * time.Second, Version: "test", NodeID: "auth", Auth: server.AuthOn, Clock: clock.Now,
	}
	if mod != nil {
		mod(&cfg)
	}
	admin, _, err := server.CreateFirstAdmin(context.Background(), st, "root")
	if err != nil {
		t.Fatalf("CreateFirstAdmin: %v", err)
	}
	b := runServer(t, cfg)
	conn, err := grpc.NewClient("passthrough:///"+b.addrs.GRPC, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	b.conn = conn
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	b.http = &http.Client{Transport: tr, Timeout: waitTimeout}
	b.waitServing(t)
	return &authBundle{st: st, srv: b, clock: clock, admin: admin,
		jobs: batonv1.NewJobServiceClient(conn), runs: batonv1.NewRunServiceClient(conn),
		agents: batonv1.NewAgentAdminServiceClient(conn), tokens: batonv1.NewTokenServiceClient(conn),
		audit: batonv1.NewAuditServiceClient(conn)}
}

// as returns ctx carrying the token secret.
func as(ctx context.Context, secret string) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+secret)
}

// token creates a token through the API, as the admin, and returns its
// secret.
func (b *authBundle) token(t *testing.T, name string, role batonv1.Role, jobs string) string {
	t.Helper()
	resp, err := b.tokens.CreateToken(as(testContext(t), b.admin), &batonv1.CreateTokenRequest{Name: name, Role: role, Jobs: jobs})
	if err != nil {
		t.Fatalf("CreateToken(%s): %v", name, err)
	}
	if err := auth.CheckToken(resp.GetSecret()); err != nil {
		t.Fatalf("CreateToken(%s) secret %q: %v", name, resp.GetSecret(), err)
	}
	return resp.GetSecret()
}

// apply applies a job as the admin.
func (b *authBundle) apply(t *testing.T, name string) {
	t.Helper()
	if _, err := b.jobs.ApplyJob(as(testContext(t), b.admin), &batonv1.ApplyJobRequest{Source: withName(etlJob, name)}); err != nil {
		t.Fatalf("ApplyJob(%s): %v", name, err)
	}
}

// waitAudit waits until the audit trail holds a record matching want and
// returns it. Records are written asynchronously; this polls the store
// with a deadline.
func (b *authBundle) waitAudit(t *testing.T, what string, want func(*store.AuditRecord) bool) *store.AuditRecord {
	t.Helper()
	deadline := time.NewTimer(waitTimeout)
	defer deadline.Stop()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		recs, err := b.st.AuditList(context.Background(), &store.AuditListParams{Limit: store.MaxAuditList})
		if err != nil {
			t.Fatalf("AuditList: %v", err)
		}
		for _, r := range recs {
			if want(r) {
				return r
			}
		}
		select {
		case <-deadline.C:
			var got []string
			for _, r := range recs {
				got = append(got, r.Who+" "+r.Method+" "+r.Code+" job="+r.Job)
			}
			t.Fatalf("no audit record of %s within %s; have:\n%s", what, waitTimeout, strings.Join(got, "\n"))
		case <-tick.C:
		}
	}
}

func isCall(who, method, code string) func(*store.AuditRecord) bool {
	return func(r *store.AuditRecord) bool { return r.Who == who && r.Method == method && r.Code == code }
}

// TestAuthUnauthenticated: with authentication on, a call without a valid
// token is refused with UNAUTHENTICATED saying how to get one, and
// audited.
func TestAuthUnauthenticated(t *testing.T) {
	t.Parallel()
	b := setupAuth(t, nil)
	ctx := testContext(t)

	_, err := b.runs.StartRun(ctx, &batonv1.StartRunRequest{Job: "etl"})
	st := wantCode(t, "StartRun without a token", err, codes.Unauthenticated)
	for _, want := range []string{"BATON_TOKEN", "--token", "batond init", "baton token create"} {
		if !strings.Contains(st.Message(), want) {
			t.Errorf("StartRun without a token: message %q does not mention %q", st.Message(), want)
		}
	}
	for _, bad := range []string{"nonsense", "Bearer baton_abc", "Bearer " + auth.NewToken()} {
		_, err := b.jobs.ListJobs(metadata.AppendToOutgoingContext(ctx, "authorization", bad), &batonv1.ListJobsRequest{})
		wantCode(t, "ListJobs with authorization "+bad, err, codes.Unauthenticated)
	}
	// A stream is refused the same way.
	w, err := b.runs.WatchRun(ctx, &batonv1.WatchRunRequest{RunId: 1})
	if err == nil {
		_, err = w.Recv()
	}
	wantCode(t, "WatchRun without a token", err, codes.Unauthenticated)

	r := b.waitAudit(t, "the refused StartRun", isCall("anonymous", batonv1.RunService_StartRun_FullMethodName, "Unauthenticated"))
	if r.Job != "etl" || !strings.HasPrefix(r.Peer, "127.0.0.1:") || !strings.Contains(r.Message, "batond init") {
		t.Errorf("audit record of the refused StartRun = %+v, want job etl, a 127.0.0.1 peer and the message", r)
	}
	b.waitAudit(t, "the refused ListJobs", isCall("anonymous", batonv1.JobService_ListJobs_FullMethodName, "Unauthenticated"))
	b.waitAudit(t, "the refused WatchRun", isCall("anonymous", batonv1.RunService_WatchRun_FullMethodName, "Unauthenticated"))
}

// TestAuthRoles: each role may do what the table says and no more; a
// refusal names the role needed and the role held.
func TestAuthRoles(t *testing.T) {
	t.Parallel()
	b := setupAuth(t, nil)
	ctx := testContext(t)
	viewer := b.token(t, "dash", batonv1.Role_ROLE_VIEWER, "")
	operator := b.token(t, "ci", batonv1.Role_ROLE_OPERATOR, "")
	b.apply(t, "etl")

	if _, err := b.jobs.GetJob(as(ctx, viewer), &batonv1.GetJobRequest{Name: "etl"}); err != nil {
		t.Errorf("viewer GetJob: %v", err)
	}
	if _, err := b.agents.ListAgents(as(ctx, viewer), &batonv1.ListAgentsRequest{}); err != nil {
		t.Errorf("viewer ListAgents: %v", err)
	}
	_, err := b.runs.StartRun(as(ctx, viewer), &batonv1.StartRunRequest{Job: "etl"})
	st := wantCode(t, "viewer StartRun", err, codes.PermissionDenied)
	if !strings.Contains(st.Message(), "needs the operator role") || !strings.Contains(st.Message(), `token "dash" has viewer`) {
		t.Errorf("viewer StartRun: message %q, want the role needed and the role held", st.Message())
	}
	started, err := b.runs.StartRun(as(ctx, operator), &batonv1.StartRunRequest{Job: "etl"})
	if err != nil {
		t.Fatalf("operator StartRun: %v", err)
	}
	runID := started.GetRun().GetId()
	_, err = b.jobs.ApplyJob(as(ctx, operator), &batonv1.ApplyJobRequest{Source: withName(etlJob, "other")})
	wantCode(t, "operator ApplyJob", err, codes.PermissionDenied)
	_, err = b.tokens.ListTokens(as(ctx, operator), &batonv1.ListTokensRequest{})
	wantCode(t, "operator ListTokens", err, codes.PermissionDenied)
	_, err = b.jobs.DeleteJob(as(ctx, operator), &batonv1.DeleteJobRequest{Name: "etl"})
	wantCode(t, "operator DeleteJob", err, codes.PermissionDenied)
	if _, err := b.audit.ListAudit(as(ctx, viewer), &batonv1.ListAuditRequest{}); err != nil {
		t.Errorf("viewer ListAudit: %v", err)
	}

	// Every mutating call is audited with who, what and the outcome; so is
	// every refusal.
	b.waitAudit(t, "the admin's ApplyJob", func(r *store.AuditRecord) bool {
		return r.Who == "token:root" && r.Method == batonv1.JobService_ApplyJob_FullMethodName && r.Job == "etl" && r.Code == "OK"
	})
	b.waitAudit(t, "the operator's StartRun", func(r *store.AuditRecord) bool {
		return r.Who == "token:ci" && r.Method == batonv1.RunService_StartRun_FullMethodName && r.Job == "etl" &&
			r.RunID == runID && r.Code == "OK"
	})
	b.waitAudit(t, "the viewer's refused StartRun", isCall("token:dash", batonv1.RunService_StartRun_FullMethodName, "PermissionDenied"))
	b.waitAudit(t, "the operator's refused ApplyJob", isCall("token:ci", batonv1.JobService_ApplyJob_FullMethodName, "PermissionDenied"))
	b.waitAudit(t, "the operator's refused DeleteJob", func(r *store.AuditRecord) bool {
		return isCall("token:ci", batonv1.JobService_DeleteJob_FullMethodName, "PermissionDenied")(r) && r.Job == "etl"
	})
	b.waitAudit(t, "the token creation", func(r *store.AuditRecord) bool {
		return isCall("token:root", batonv1.TokenService_CreateToken_FullMethodName, "OK")(r) &&
			r.Message == `created token "ci" (id 3, operator)`
	})
	if _, err := b.runs.CancelRun(as(ctx, operator), &batonv1.CancelRunRequest{RunId: runID}); err != nil {
		t.Fatalf("operator CancelRun: %v", err)
	}
	b.waitAudit(t, "the operator's CancelRun", func(r *store.AuditRecord) bool {
		return isCall("token:ci", batonv1.RunService_CancelRun_FullMethodName, "OK")(r) && r.RunID == runID && r.Job == "etl"
	})
	// A failed mutating call is audited with its code.
	_, err = b.runs.CancelRun(as(ctx, operator), &batonv1.CancelRunRequest{RunId: 9999})
	wantCode(t, "CancelRun of an unknown run", err, codes.NotFound)
	b.waitAudit(t, "the failed CancelRun", func(r *store.AuditRecord) bool {
		return isCall("token:ci", batonv1.RunService_CancelRun_FullMethodName, "NotFound")(r) && r.RunID == 9999
	})
	// Reads that succeed are not audited.
	recs, err := b.st.AuditList(ctx, &store.AuditListParams{Who: "token:dash"})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range recs {
		if r.Code == "OK" {
			t.Errorf("audit record of a successful read: %+v", r)
		}
	}
}

// TestAuthJobScoped: a token limited to jobs acts only on matching jobs,
// whether the request names the job or a run of it, sees only those in
// lists, and may not manage tokens.
func TestAuthJobScoped(t *testing.T) {
	t.Parallel()
	b := setupAuth(t, nil)
	ctx := testContext(t)
	b.apply(t, "etl-orders")
	b.apply(t, "load")
	scoped := b.token(t, "etl-ci", batonv1.Role_ROLE_OPERATOR, "etl-*")
	admin := as(ctx, b.admin)
	other, err := b.runs.StartRun(admin, &batonv1.StartRunRequest{Job: "load"})
	if err != nil {
		t.Fatal(err)
	}

	_, err = b.runs.StartRun(as(ctx, scoped), &batonv1.StartRunRequest{Job: "load"})
	st := wantCode(t, "scoped StartRun of another job", err, codes.PermissionDenied)
	if !strings.Contains(st.Message(), `"etl-*"`) || !strings.Contains(st.Message(), `"load"`) {
		t.Errorf("scoped StartRun of another job: message %q, want the pattern and the job", st.Message())
	}
	own, err := b.runs.StartRun(as(ctx, scoped), &batonv1.StartRunRequest{Job: "etl-orders"})
	if err != nil {
		t.Fatalf("scoped StartRun of its job: %v", err)
	}
	_, err = b.runs.CancelRun(as(ctx, scoped), &batonv1.CancelRunRequest{RunId: other.GetRun().GetId()})
	wantCode(t, "scoped CancelRun of another job's run", err, codes.PermissionDenied)
	_, err = b.runs.GetRun(as(ctx, scoped), &batonv1.GetRunRequest{RunId: other.GetRun().GetId()})
	wantCode(t, "scoped GetRun of another job's run", err, codes.PermissionDenied)
	if _, err := b.runs.GetRun(as(ctx, scoped), &batonv1.GetRunRequest{RunId: own.GetRun().GetId()}); err != nil {
		t.Errorf("scoped GetRun of its run: %v", err)
	}
	w, err := b.runs.WatchRun(as(ctx, scoped), &batonv1.WatchRunRequest{RunId: other.GetRun().GetId()})
	if err == nil {
		_, err = w.Recv()
	}
	wantCode(t, "scoped WatchRun of another job's run", err, codes.PermissionDenied)

	jobs, err := b.jobs.ListJobs(as(ctx, scoped), &batonv1.ListJobsRequest{})
	if err != nil || len(jobs.GetJobs()) != 1 || jobs.GetJobs()[0].GetName() != "etl-orders" {
		t.Errorf("scoped ListJobs = %v, %v; want only etl-orders", jobs, err)
	}
	runs, err := b.runs.ListRuns(as(ctx, scoped), &batonv1.ListRunsRequest{})
	if err != nil || len(runs.GetRuns()) != 1 || runs.GetRuns()[0].GetJob() != "etl-orders" {
		t.Errorf("scoped ListRuns = %v, %v; want only the etl-orders run", runs, err)
	}
	_, err = b.runs.ListRuns(as(ctx, scoped), &batonv1.ListRunsRequest{Job: "load"})
	wantCode(t, "scoped ListRuns of another job", err, codes.PermissionDenied)
	_, err = b.audit.ListAudit(as(ctx, scoped), &batonv1.ListAuditRequest{})
	wantCode(t, "scoped ListAudit", err, codes.PermissionDenied)

	// A scoped admin applies only its jobs (the name is in the file) and
	// cannot mint an unscoped token.
	scopedAdmin := b.token(t, "etl-admin", batonv1.Role_ROLE_ADMIN, "etl-*")
	_, err = b.jobs.ApplyJob(as(ctx, scopedAdmin), &batonv1.ApplyJobRequest{Source: withName(etlJob, "load")})
	wantCode(t, "scoped admin ApplyJob of another job", err, codes.PermissionDenied)
	if _, err := b.jobs.ApplyJob(as(ctx, scopedAdmin), &batonv1.ApplyJobRequest{Source: withName(etlJob, "etl-new")}); err != nil {
		t.Errorf("scoped admin ApplyJob of its job: %v", err)
	}
	_, err = b.tokens.CreateToken(as(ctx, scopedAdmin), &batonv1.CreateTokenRequest{Name: "x", Role: batonv1.Role_ROLE_ADMIN})
	st = wantCode(t, "scoped admin CreateToken", err, codes.PermissionDenied)
	if !strings.Contains(st.Message(), "not limited to jobs") {
		t.Errorf("scoped admin CreateToken: message %q, want it to say a token not limited to jobs is needed", st.Message())
	}
	b.waitAudit(t, "the scoped CancelRun refusal", func(r *store.AuditRecord) bool {
		return isCall("token:etl-ci", batonv1.RunService_CancelRun_FullMethodName, "PermissionDenied")(r) && r.Job == "load"
	})
}

// TestAuthRevoke: a token revoked through the API is refused at once; one
// revoked in the store by another replica is refused once the cache
// bound (30s, on the injected clock) has passed, and not before.
func TestAuthRevoke(t *testing.T) {
	t.Parallel()
	b := setupAuth(t, nil)
	ctx := testContext(t)
	admin := as(ctx, b.admin)
	here := b.token(t, "here", batonv1.Role_ROLE_VIEWER, "")
	there := b.token(t, "there", batonv1.Role_ROLE_VIEWER, "")
	for _, s := range []string{here, there} {
		if _, err := b.jobs.ListJobs(as(ctx, s), &batonv1.ListJobsRequest{}); err != nil {
			t.Fatalf("ListJobs before revoking: %v", err)
		}
	}
	resp, err := b.tokens.RevokeToken(admin, &batonv1.RevokeTokenRequest{Token: "here"})
	if err != nil || resp.GetToken().GetRevokeTime() == nil {
		t.Fatalf("RevokeToken(here) = %v, %v; want the revoked token", resp, err)
	}
	_, err = b.jobs.ListJobs(as(ctx, here), &batonv1.ListJobsRequest{})
	wantCode(t, "ListJobs right after RevokeToken", err, codes.Unauthenticated)

	tok, err := b.st.TokenGet(ctx, &store.TokenGetParams{Name: "there"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.st.TokenRevoke(ctx, &store.TokenRevokeParams{ID: tok.ID}); err != nil {
		t.Fatal(err)
	}
	b.clock.Advance(auth.DefaultCacheTTL - time.Second)
	if _, err := b.jobs.ListJobs(as(ctx, there), &batonv1.ListJobsRequest{}); err != nil {
		t.Errorf("ListJobs within the cache bound of a revoke elsewhere: %v, want the cached token to work", err)
	}
	b.clock.Advance(time.Second)
	_, err = b.jobs.ListJobs(as(ctx, there), &batonv1.ListJobsRequest{})
	st := wantCode(t, "ListJobs a cache bound after a revoke elsewhere", err, codes.Unauthenticated)
	if !strings.Contains(st.Message(), "revoked") {
		t.Errorf("message %q, want it to say the token was revoked", st.Message())
	}

	// Expiry: a token with a TTL stops working when it passes.
	cr, err := b.tokens.CreateToken(admin, &batonv1.CreateTokenRequest{Name: "temp", Role: batonv1.Role_ROLE_VIEWER,
		Ttl: durationpb.New(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.jobs.ListJobs(as(ctx, cr.GetSecret()), &batonv1.ListJobsRequest{}); err != nil {
		t.Errorf("ListJobs with a fresh expiring token: %v", err)
	}
	b.clock.Advance(time.Hour)
	_, err = b.jobs.ListJobs(as(ctx, cr.GetSecret()), &batonv1.ListJobsRequest{})
	wantCode(t, "ListJobs with an expired token", err, codes.Unauthenticated)

	list, err := b.tokens.ListTokens(admin, &batonv1.ListTokensRequest{})
	if err != nil || len(list.GetTokens()) != 4 {
		t.Fatalf("ListTokens = %v, %v; want 4 tokens", list, err)
	}
	_, err = b.tokens.CreateToken(admin, &batonv1.CreateTokenRequest{Name: "here", Role: batonv1.Role_ROLE_VIEWER})
	wantCode(t, "CreateToken with a revoked token's name", err, codes.AlreadyExists)
	_, err = b.tokens.CreateToken(admin, &batonv1.CreateTokenRequest{Name: "x"})
	wantInvalid(t, "CreateToken without a role", err, "role")
	_, err = b.tokens.CreateToken(admin, &batonv1.CreateTokenRequest{Name: "9lives", Role: batonv1.Role_ROLE_VIEWER})
	wantInvalid(t, "CreateToken with a bad name", err, "name")
	_, err = b.tokens.RevokeToken(admin, &batonv1.RevokeTokenRequest{Token: "nobody"})
	wantCode(t, "RevokeToken(nobody)", err, codes.NotFound)
	b.waitAudit(t, "the revoke", isCall("token:root", batonv1.TokenService_RevokeToken_FullMethodName, "OK"))
}

// restDo sends an HTTP request with headers and returns the response's
// status, body and headers.
func restDo(t *testing.T, b *batond, method, path, body string, hdr map[string]string) (int, string, http.Header) {
	t.Helper()
	var r io.Reader
	if body != "" {
		r = strings.NewReader(body)
	}
	req, err := http.NewRequestWithContext(testContext(t), method, b.url(path), r)
	if err != nil {
		t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := b.http.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer func() { _ = resp.Body.Close() }()
	out, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(out), resp.Header
}

// TestAuthREST: the gateway forwards the Authorization header; a missing
// token is 401 with a bearer challenge and a body saying how to get one, a
// too-small role 403 naming the role; the audit trail names the HTTP
// client, with an X-Forwarded-For it sent kept as a claim. The HTTP
// endpoints outside /v1 need a token too.
func TestAuthREST(t *testing.T) {
	t.Parallel()
	b := setupAuth(t, nil)
	viewer := b.token(t, "dash", batonv1.Role_ROLE_VIEWER, "")
	b.apply(t, "etl")
	bearer := func(s string) map[string]string { return map[string]string{"Authorization": "Bearer " + s} }

	code, body, hdr := restDo(t, b.srv, "GET", "/v1/jobs", "", nil)
	if code != http.StatusUnauthorized || !strings.Contains(body, "batond init") || !strings.HasPrefix(hdr.Get("WWW-Authenticate"), "Bearer") {
		t.Errorf("GET /v1/jobs without a token = %d %s (WWW-Authenticate %q), want 401 saying how to get a token",
			code, body, hdr.Get("WWW-Authenticate"))
	}
	if st := restError(t, "401 body", body); st.Code() != codes.Unauthenticated {
		t.Errorf("401 body code = %v, want Unauthenticated", st.Code())
	}
	code, body, _ = restDo(t, b.srv, "GET", "/v1/jobs", "", bearer(viewer))
	if code != http.StatusOK || !strings.Contains(body, `"etl"`) {
		t.Errorf("GET /v1/jobs as viewer = %d %s, want 200 with the job", code, body)
	}
	code, body, _ = restDo(t, b.srv, "POST", "/v1/runs", `{"job":"etl"}`, map[string]string{
		"Authorization": "Bearer " + viewer, "X-Forwarded-For": "203.0.113.9"})
	if code != http.StatusForbidden || !strings.Contains(body, "needs the operator role") || !strings.Contains(body, "has viewer") {
		t.Errorf("POST /v1/runs as viewer = %d %s, want 403 naming the roles", code, body)
	}
	r := b.waitAudit(t, "the REST refusal", isCall("token:dash", batonv1.RunService_StartRun_FullMethodName, "PermissionDenied"))
	if r.Peer != "127.0.0.1 (x-forwarded-for: 203.0.113.9)" {
		t.Errorf("audit peer of a REST call = %q, want the HTTP client 127.0.0.1 with the claimed X-Forwarded-For", r.Peer)
	}
	code, body, _ = restDo(t, b.srv, "POST", "/v1/tokens", `{"name":"web","role":"ROLE_VIEWER"}`, bearer(b.admin))
	if code != http.StatusOK || !strings.Contains(body, `"secret":"baton_`) {
		t.Errorf("POST /v1/tokens as admin = %d %s, want 200 with the secret", code, body)
	}
	code, body, _ = restDo(t, b.srv, "GET", "/v1/audit?who=token:dash", "", bearer(viewer))
	if code != http.StatusOK || !strings.Contains(body, "PermissionDenied") {
		t.Errorf("GET /v1/audit?who=token:dash = %d %s, want 200 with the refusal", code, body)
	}

	for _, p := range []string{"/metrics", "/healthz", "/readyz", "/openapi.json"} {
		code, body, _ := restDo(t, b.srv, "GET", p, "", nil)
		if code != http.StatusUnauthorized || !strings.Contains(body, "--public-metrics") {
			t.Errorf("GET %s without a token = %d %s, want 401 mentioning --public-metrics", p, code, body)
		}
		if code, _, _ := restDo(t, b.srv, "GET", p, "", bearer(viewer)); code != http.StatusOK {
			t.Errorf("GET %s with a token = %d, want 200", p, code)
		}
	}
	b.waitAudit(t, "the refused /metrics", isCall("anonymous", "GET /metrics", "Unauthenticated"))
}

// TestAuthPublicMetrics: with --public-metrics the health, metrics and
// OpenAPI paths need no token; the API still does.
func TestAuthPublicMetrics(t *testing.T) {
	t.Parallel()
	b := setupAuth(t, func(c *server.Config) { c.PublicMetrics = true })
	for _, p := range []string{"/metrics", "/healthz", "/readyz", "/openapi.json"} {
		if code, body, _ := restDo(t, b.srv, "GET", p, "", nil); code != http.StatusOK {
			t.Errorf("GET %s without a token and --public-metrics = %d %s, want 200", p, code, body)
		}
	}
	if code, _, _ := restDo(t, b.srv, "GET", "/v1/jobs", "", nil); code != http.StatusUnauthorized {
		t.Errorf("GET /v1/jobs without a token and --public-metrics = %d, want 401", code)
	}
}

// TestAuthForwardedForIgnored: an external gRPC caller cannot choose the
// address the audit trail records by sending x-forwarded-for.
func TestAuthForwardedForIgnored(t *testing.T) {
	t.Parallel()
	b := setupAuth(t, nil)
	ctx := metadata.AppendToOutgoingContext(testContext(t), "x-forwarded-for", "198.51.100.7")
	_, err := b.jobs.DeleteJob(ctx, &batonv1.DeleteJobRequest{Name: "spoof"})
	wantCode(t, "DeleteJob without a token", err, codes.Unauthenticated)
	r := b.waitAudit(t, "the refused DeleteJob", func(r *store.AuditRecord) bool { return r.Job == "spoof" })
	if strings.Contains(r.Peer, "198.51.100.7") || !strings.HasPrefix(r.Peer, "127.0.0.1:") {
		t.Errorf("audit peer = %q, want the real 127.0.0.1 address, not the x-forwarded-for claim", r.Peer)
	}
}

// TestAuthOff: with authentication off every caller is anonymous and may
// do everything; mutating calls are still audited.
func TestAuthOff(t *testing.T) {
	t.Parallel()
	b := setupAuth(t, func(c *server.Config) { c.Auth = server.AuthOff })
	ctx := testContext(t)
	if _, err := b.jobs.ApplyJob(ctx, &batonv1.ApplyJobRequest{Source: etlJob}); err != nil {
		t.Fatalf("ApplyJob with authentication off: %v", err)
	}
	b.waitAudit(t, "the anonymous ApplyJob", func(r *store.AuditRecord) bool {
		return isCall("anonymous", batonv1.JobService_ApplyJob_FullMethodName, "OK")(r) && r.Job == "etl"
	})
	if code, _, _ := restDo(t, b.srv, "GET", "/metrics", "", nil); code != http.StatusOK {
		t.Errorf("GET /metrics with authentication off = %d, want 200", code)
	}
}

// TestAuthDefault: authentication defaults to off only when both
// listeners are loopback.
func TestAuthDefault(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		grpc, http string
		want       server.AuthMode
	}{
		{"127.0.0.1:7700", "127.0.0.1:7701", server.AuthOff},
		{"", "", server.AuthOff},
		{"localhost:7700", "off", server.AuthOff},
		{"[::1]:7700", "[::1]:7701", server.AuthOff},
		{"0.0.0.0:7700", "127.0.0.1:7701", server.AuthOn},
		{"127.0.0.1:7700", ":7701", server.AuthOn},
		{"10.1.2.3:7700", "off", server.AuthOn},
	} {
		if got := server.AuthDefault(tc.grpc, tc.http); got != tc.want {
			t.Errorf("AuthDefault(%q, %q) = %q, want %q", tc.grpc, tc.http, got, tc.want)
		}
	}
}

// TestCreateFirstAdmin: `batond init` creates an admin token only while
// no usable admin token exists.
func TestCreateFirstAdmin(t *testing.T) {
	t.Parallel()
	st := openStore(t)
	ctx := testContext(t)
	secret, tok, err := server.CreateFirstAdmin(ctx, st, "admin")
	if err != nil || tok.Role != store.TokenAdmin || auth.CheckToken(secret) != nil {
		t.Fatalf("CreateFirstAdmin() = %q, %+v, %v; want an admin token", secret, tok, err)
	}
	got, err := st.TokenGet(ctx, &store.TokenGetParams{Hash: auth.HashToken(secret)})
	if err != nil || got.ID != tok.ID {
		t.Fatalf("the new token is not found by its hash: %+v, %v", got, err)
	}
	if _, _, err := server.CreateFirstAdmin(ctx, st, "admin2"); err == nil {
		t.Fatal("CreateFirstAdmin() again = nil error, want ErrAdminExists")
	}
	// Once every admin token is revoked, init recovers.
	if _, err := st.TokenRevoke(ctx, &store.TokenRevokeParams{ID: tok.ID}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := server.CreateFirstAdmin(ctx, st, "admin2"); err != nil {
		t.Fatalf("CreateFirstAdmin() after revoking the admin = %v, want a new token", err)
	}
}
