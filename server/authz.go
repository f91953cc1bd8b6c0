package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"path"
	"slices"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	batonv1 "github.com/batonhq/baton/gen/baton/v1"
	"github.com/batonhq/baton/server/auth"
	"github.com/batonhq/baton/server/store"
)

// scope says which jobs a method acts on, and so what a token limited to
// jobs may do with it.
type scope int

const (
	// scopeJob: the request names a job (subject), or a run of one; a
	// limited token must match it.
	scopeJob scope = iota
	// scopeNone: the method touches no job's data (ListAgents,
	// ValidateJob); any token with the role may call it.
	scopeNone
	// scopeList: the method lists jobs or runs; a limited token sees only
	// its jobs' (the response is filtered).
	scopeList
	// scopeAll: the method concerns everything (tokens, the audit trail); a
	// limited token may not call it.
	scopeAll
)

// subject is what a request or response names: a job, a run, or both.
type subject int

const (
	subjNone subject = iota
	subjJob          // the request's job field (StartRun, ListRuns)
	subjName         // the request's name field (GetJob, DeleteJob)
	subjRun          // the request's run_id field
)

// access is what calling one RPC takes.
type access struct {
	// agent marks the agents' stream, which is not token-authenticated:
	// agents prove who they are with client certificates.
	agent bool
	// role is the least role the caller needs.
	role auth.Role
	// mutating calls are audited whatever their outcome; every other call
	// only when refused.
	mutating bool
	scope    scope
	subject  subject
}

// methods maps every RPC batond serves to what calling it takes. A method
// missing here is refused (PermissionDenied), and TestMethodTable fails for
// it, so no RPC can be added unprotected.
var methods = map[string]access{
	batonv1.AgentService_Connect_FullMethodName: {agent: true},

	batonv1.JobService_ApplyJob_FullMethodName: {role: auth.RoleAdmin, mutating: true,
		scope: scopeJob}, // the job's name is in the file: jobService checks it
	batonv1.JobService_DeleteJob_FullMethodName:   {role: auth.RoleAdmin, mutating: true, scope: scopeJob, subject: subjName},
	batonv1.JobService_ValidateJob_FullMethodName: {role: auth.RoleViewer, scope: scopeNone},
	batonv1.JobService_GetJob_FullMethodName:      {role: auth.RoleViewer, scope: scopeJob, subject: subjName},
	batonv1.JobService_ListJobs_FullMethodName:    {role: auth.RoleViewer, scope: scopeList},

	batonv1.RunService_StartRun_FullMethodName:     {role: auth.RoleOperator, mutating: true, scope: scopeJob, subject: subjJob},
	batonv1.RunService_CancelRun_FullMethodName:    {role: auth.RoleOperator, mutating: true, scope: scopeJob, subject: subjRun},
	batonv1.RunService_RestartRun_FullMethodName:   {role: auth.RoleOperator, mutating: true, scope: scopeJob, subject: subjRun},
	batonv1.RunService_GetRun_FullMethodName:       {role: auth.RoleViewer, scope: scopeJob, subject: subjRun},
	batonv1.RunService_ListRuns_FullMethodName:     {role: auth.RoleViewer, scope: scopeList, subject: subjJob},
	batonv1.RunService_WatchRun_FullMethodName:     {role: auth.RoleViewer, scope: scopeJob, subject: subjRun},
	batonv1.RunService_GetTaskLogs_FullMethodName:  {role: auth.RoleViewer, scope: scopeJob, subject: subjRun},
	batonv1.RunService_ListAttempts_FullMethodName: {role: auth.RoleViewer, scope: scopeJob, subject: subjRun},

	batonv1.AgentAdminService_ListAgents_FullMethodName:   {role: auth.RoleViewer, scope: scopeNone},
	batonv1.AgentAdminService_ApproveAgent_FullMethodName: {role: auth.RoleAdmin, mutating: true, scope: scopeAll},
	batonv1.AgentAdminService_RevokeAgent_FullMethodName:  {role: auth.RoleAdmin, mutating: true, scope: scopeAll},

	batonv1.TokenService_CreateToken_FullMethodName: {role: auth.RoleAdmin, mutating: true, scope: scopeAll},
	batonv1.TokenService_RevokeToken_FullMethodName: {role: auth.RoleAdmin, mutating: true, scope: scopeAll},
	batonv1.TokenService_ListTokens_FullMethodName:  {role: auth.RoleAdmin, scope: scopeAll},

	batonv1.AuditService_ListAudit_FullMethodName: {role: auth.RoleViewer, scope: scopeAll},
}

// howToAuth ends every Unauthenticated message.
const howToAuth = "send one with baton --token, --token-file or BATON_TOKEN, " +
	"or the header \"Authorization: Bearer baton_...\" over REST; " +
	"create the first admin token with `batond init` on the control plane's host, more with `baton token create`"

// guard authenticates and authorizes every API call and writes the audit
// trail. One guard serves each gRPC server: the external one never trusts
// X-Forwarded-For; the in-process one behind the REST gateway takes the
// HTTP client's address from it.
type guard struct {
	authn *auth.Authenticator // nil when authentication is off
	audit *auditor
	runs  runJobs
	log   *slog.Logger
	// forwarded is set on the in-process server: the caller's address is
	// the last x-forwarded-for entry, which the gateway appends.
	forwarded bool
}

// runJobs finds the job of a run, for tokens limited to jobs.
type runJobs interface {
	RunGet(ctx context.Context, p *store.RunGetParams) (*store.Run, error)
}

// call is what the guard knows of one call.
type call struct {
	method string
	access access
	id     auth.Identity
	job    string
	run    int64
	// note says what a successful call did, when job and run cannot
	// (the token it created or revoked).
	note string
}

func (g *guard) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	c, ctx, err := g.admit(ctx, info.FullMethod)
	if c.access.agent {
		return handler(ctx, req)
	}
	if err == nil {
		err = g.authorizeRequest(ctx, c, req)
	} else {
		c.job, c.run = requestSubject(c.access.subject, req)
	}
	if err != nil {
		g.record(ctx, c, err)
		return nil, err
	}
	resp, err := handler(ctx, req)
	if err == nil {
		resp = filterList(c.id, resp)
		job, run := responseSubject(resp)
		c.job, c.run = cmpOr(c.job, job), max(c.run, run)
	}
	if err == nil {
		c.note = responseNote(req, resp)
	}
	g.record(ctx, c, err)
	return resp, err
}

func (g *guard) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	c, ctx, err := g.admit(ss.Context(), info.FullMethod)
	if c.access.agent {
		return handler(srv, ss)
	}
	if err != nil {
		g.record(ctx, c, err)
		return err
	}
	// A server stream's request arrives with the first RecvMsg: its
	// subject is checked there.
	err = handler(srv, &guardedStream{ServerStream: ss, ctx: ctx, g: g, c: c})
	g.record(ctx, c, err)
	return err
}

// guardedStream authorizes the first message of a stream.
type guardedStream struct {
	grpc.ServerStream
	ctx     context.Context
	g       *guard
	c       *call
	checked bool
}

func (s *guardedStream) Context() context.Context { return s.ctx }

func (s *guardedStream) RecvMsg(m any) error {
	if err := s.ServerStream.RecvMsg(m); err != nil {
		return err
	}
	if s.checked {
		return nil
	}
	s.checked = true
	return s.g.authorizeRequest(s.ctx, s.c, m)
}

// admit authenticates a call and checks its role. It returns the call,
// the context carrying the caller's identity, and the refusal if any. A
// method missing from the table is refused.
func (g *guard) admit(ctx context.Context, method string) (*call, context.Context, error) {
	a, ok := methods[method]
	c := &call{method: method, access: a}
	if a.agent {
		return c, ctx, nil
	}
	c.id = auth.Identity{Kind: auth.KindAnonymous, Peer: g.peerOf(ctx)}
	if !ok {
		g.log.ErrorContext(ctx, "refused a call to a method missing from the access table", slog.String("method", method))
		return c, ctx, status.Errorf(codes.PermissionDenied, "%s is not in batond's access table", method)
	}
	if g.authn == nil {
		// Authentication is off: every caller may do everything.
		c.id.Role = auth.RoleAdmin
		return c, auth.NewContext(ctx, c.id), nil
	}
	var authz string
	if md, ok := metadata.FromIncomingContext(ctx); ok {
		vs := md.Get("authorization")
		if len(vs) > 1 {
			return c, ctx, status.Error(codes.Unauthenticated, "more than one authorization value; "+howToAuth)
		}
		if len(vs) == 1 {
			authz = vs[0]
		}
	}
	id, err := g.authn.Authenticate(ctx, authz)
	if err != nil {
		return c, ctx, authError(ctx, g.log, err)
	}
	id.Peer = c.id.Peer
	c.id = id
	if !id.Role.Allows(a.role) {
		return c, ctx, status.Errorf(codes.PermissionDenied, "%s needs the %s role; token %q has %s",
			shortMethod(method), a.role, id.Name, id.Role)
	}
	if a.scope == scopeAll && id.Jobs != "" {
		return c, ctx, status.Errorf(codes.PermissionDenied, "%s needs a token not limited to jobs; token %q is limited to %q",
			shortMethod(method), id.Name, id.Jobs)
	}
	return c, auth.NewContext(ctx, id), nil
}

// authError turns an authentication failure into the status the caller
// gets.
func authError(ctx context.Context, log *slog.Logger, err error) error {
	switch {
	case errors.Is(err, auth.ErrNoToken):
		return status.Error(codes.Unauthenticated, "this call needs an API token; "+howToAuth)
	case errors.Is(err, auth.ErrMalformed), errors.Is(err, auth.ErrUnknown),
		errors.Is(err, auth.ErrRevoked), errors.Is(err, auth.ErrExpired):
		return status.Errorf(codes.Unauthenticated, "%v; %s", err, howToAuth)
	}
	log.ErrorContext(ctx, "cannot check an API token", slog.Any("error", err))
	return status.Error(codes.Unavailable, "cannot check the API token now: the state store is unavailable; try again")
}

// authorizeRequest records what the request names and checks that a token
// limited to jobs may act on it.
func (g *guard) authorizeRequest(ctx context.Context, c *call, req any) error {
	c.job, c.run = requestSubject(c.access.subject, req)
	if c.id.Jobs == "" {
		return nil
	}
	switch {
	case c.access.scope != scopeJob && c.access.scope != scopeList:
		return nil
	case c.job != "":
		return mayJob(c.id, c.job)
	case c.run != 0:
		r, err := g.runs.RunGet(ctx, &store.RunGetParams{ID: c.run})
		if errors.Is(err, store.ErrNotFound) {
			return nil // the handler says so
		}
		if err != nil {
			return toStatus(ctx, g.log, err)
		}
		c.job = r.JobName
		return mayJob(c.id, r.JobName)
	}
	return nil
}

// mayJob returns PermissionDenied unless id may act on job.
func mayJob(id auth.Identity, job string) error {
	if id.MayJob(job) {
		return nil
	}
	return status.Errorf(codes.PermissionDenied, "token %q may act only on jobs matching %q, not on job %q", id.Name, id.Jobs, job)
}

// authorizeJob is for handlers that learn the job's name from the request
// body (ApplyJob): PermissionDenied unless the caller may act on it.
func authorizeJob(ctx context.Context, job string) error {
	id, ok := auth.FromContext(ctx)
	if !ok {
		return nil
	}
	return mayJob(id, job)
}

func requestSubject(s subject, req any) (job string, run int64) {
	switch s {
	case subjJob:
		if r, ok := req.(interface{ GetJob() string }); ok {
			return r.GetJob(), 0
		}
	case subjName:
		if r, ok := req.(interface{ GetName() string }); ok {
			return r.GetName(), 0
		}
	case subjRun:
		if r, ok := req.(interface{ GetRunId() int64 }); ok {
			return "", r.GetRunId()
		}
	}
	return "", 0
}

// responseSubject returns the job and run a mutating call's response
// names, for the audit trail.
func responseSubject(resp any) (job string, run int64) {
	switch r := resp.(type) {
	case *batonv1.ApplyJobResponse:
		return r.GetJob().GetName(), 0
	case *batonv1.StartRunResponse:
		return r.GetRun().GetJob(), r.GetRun().GetId()
	case *batonv1.CancelRunResponse:
		return r.GetRun().GetJob(), r.GetRun().GetId()
	case *batonv1.RestartRunResponse:
		return r.GetRun().GetJob(), r.GetRun().GetId()
	}
	return "", 0
}

// responseNote names the token a token call created or revoked, or the
// agent an approval call approved or revoked.
func responseNote(req, resp any) string {
	switch r := resp.(type) {
	case *batonv1.ApproveAgentResponse:
		a := r.GetApproval()
		labels := make([]string, 0, len(a.GetLabels()))
		for _, k := range slices.Sorted(maps.Keys(a.GetLabels())) {
			labels = append(labels, k+"="+a.GetLabels()[k])
		}
		note := fmt.Sprintf("approved agent %q: labels %s, slots %d", a.GetName(), strings.Join(labels, ","), a.GetSlots())
		if a.GetCertSha256() != "" {
			note += ", certificate sha256:" + a.GetCertSha256()
		}
		return note
	case *batonv1.RevokeAgentResponse:
		if q, ok := req.(*batonv1.RevokeAgentRequest); ok {
			return fmt.Sprintf("revoked the approval of agent %q", q.GetName())
		}
	case *batonv1.CreateTokenResponse:
		t := r.GetToken()
		note := fmt.Sprintf("created token %q (id %d, %s", t.GetName(), t.GetId(), roleToStore[t.GetRole()])
		if t.GetJobs() != "" {
			note += ", jobs " + t.GetJobs()
		}
		return note + ")"
	case *batonv1.RevokeTokenResponse:
		return fmt.Sprintf("revoked token %q (id %d)", r.GetToken().GetName(), r.GetToken().GetId())
	}
	return ""
}

// filterList keeps, for a token limited to jobs, only its jobs' entries of
// a list.
func filterList(id auth.Identity, resp any) any {
	if id.Jobs == "" {
		return resp
	}
	switch r := resp.(type) {
	case *batonv1.ListJobsResponse:
		r.Jobs = keep(r.Jobs, func(j *batonv1.Job) bool { return id.MayJob(j.GetName()) })
	case *batonv1.ListRunsResponse:
		r.Runs = keep(r.Runs, func(run *batonv1.Run) bool { return id.MayJob(run.GetJob()) })
	}
	return resp
}

func keep[T any](s []T, ok func(T) bool) []T {
	out := s[:0]
	for _, v := range s {
		if ok(v) {
			out = append(out, v)
		}
	}
	return out
}

// record writes the audit record of a call that mutates, or was refused.
func (g *guard) record(ctx context.Context, c *call, err error) {
	code := status.Code(err)
	refused := code == codes.Unauthenticated || code == codes.PermissionDenied
	if !c.access.mutating && !refused {
		return
	}
	r := &store.AuditRecord{At: g.audit.now(), Who: c.id.Who(), Peer: c.id.Peer, Method: c.method,
		Job: c.job, RunID: c.run, Code: code.String()}
	if err != nil {
		r.Message = status.Convert(err).Message()
	} else {
		r.Message = c.note
	}
	g.audit.record(ctx, r, c.access.mutating)
}

// peerOf returns the caller's address. Behind the gateway it is the last
// x-forwarded-for entry, which the gateway appends from the HTTP request's
// remote address; entries before it were sent by the HTTP client (or a
// proxy) and are kept only as what they claim.
func (g *guard) peerOf(ctx context.Context) string {
	if g.forwarded {
		md, _ := metadata.FromIncomingContext(ctx)
		vs := md.Get("x-forwarded-for")
		if len(vs) == 0 {
			return "rest (client address unknown)"
		}
		hops := strings.Split(vs[len(vs)-1], ",")
		last := strings.TrimSpace(hops[len(hops)-1])
		if len(hops) == 1 {
			return last
		}
		return fmt.Sprintf("%s (x-forwarded-for: %s)", last, strings.TrimSpace(strings.Join(hops[:len(hops)-1], ",")))
	}
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		if ta, ok := p.Addr.(*net.TCPAddr); ok {
			return ta.String()
		}
		return p.Addr.String()
	}
	return ""
}

// shortMethod turns "/baton.v1.RunService/StartRun" into
// "RunService.StartRun".
func shortMethod(m string) string {
	svc, name := path.Split(m)
	svc = strings.Trim(svc, "/")
	if i := strings.LastIndexByte(svc, '.'); i >= 0 {
		svc = svc[i+1:]
	}
	return svc + "." + name
}
