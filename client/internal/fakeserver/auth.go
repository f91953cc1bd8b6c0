package fakeserver

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	batonv1 "github.com/batonhq/baton/gen/baton/v1"
)

// FakeSecret is the secret CreateToken returns for a token named name.
func FakeSecret(name string) string { return "baton_fake_secret_of_" + name }

// SetRequiredToken makes every call without "authorization: Bearer
// secret" fail with UNAUTHENTICATED, as batond does with authentication
// on. An empty secret turns the check off (the default).
func (s *Server) SetRequiredToken(secret string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.required = secret
}

// Authorizations returns the authorization metadata of every call so far,
// "" for a call without one.
func (s *Server) Authorizations() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.auths)
}

// SetAudit stores the audit trail ListAudit returns, newest first.
func (s *Server) SetAudit(recs []*batonv1.AuditRecord) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.audit = nil
	for _, r := range recs {
		s.audit = append(s.audit, proto.Clone(r).(*batonv1.AuditRecord))
	}
}

// AuditRequests returns the ListAudit requests received so far.
func (s *Server) AuditRequests() []*batonv1.ListAuditRequest {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.auditCalls)
}

// checkAuth records a call's authorization and refuses it when a token is
// required and not sent.
func (s *Server) checkAuth(ctx context.Context) error {
	var v string
	if md, ok := metadata.FromIncomingContext(ctx); ok {
		if vs := md.Get("authorization"); len(vs) > 0 {
			v = vs[0]
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.auths = append(s.auths, v)
	if s.required != "" && v != "Bearer "+s.required {
		return status.Error(codes.Unauthenticated, "this call needs an API token; send one with baton --token or BATON_TOKEN")
	}
	return nil
}

func (s *Server) unaryAuth(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	if err := s.checkAuth(ctx); err != nil {
		return nil, err
	}
	return h(ctx, req)
}

func (s *Server) streamAuth(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
	if err := s.checkAuth(ss.Context()); err != nil {
		return err
	}
	return h(srv, ss)
}

type tokenService struct {
	batonv1.UnimplementedTokenServiceServer
	s *Server
}

func (ts *tokenService) CreateToken(_ context.Context, req *batonv1.CreateTokenRequest) (*batonv1.CreateTokenResponse, error) {
	s := ts.s
	s.mu.Lock()
	defer s.mu.Unlock()
	if req.GetRole() == batonv1.Role_ROLE_UNSPECIFIED {
		return nil, status.Error(codes.InvalidArgument, "role: required: viewer, operator or admin")
	}
	for _, t := range s.tokens {
		if t.GetName() == req.GetName() {
			return nil, status.Errorf(codes.AlreadyExists, "a token named %q exists", req.GetName())
		}
	}
	t := &batonv1.Token{Id: int64(len(s.tokens) + 1), Name: req.GetName(), Role: req.GetRole(), Jobs: req.GetJobs(),
		CreateTime: timestamppb.New(Base), CreatedBy: "token:root"}
	if req.GetTtl() != nil {
		t.ExpireTime = timestamppb.New(Base.Add(req.GetTtl().AsDuration()))
	}
	s.tokens = append(s.tokens, t)
	return &batonv1.CreateTokenResponse{Token: proto.Clone(t).(*batonv1.Token), Secret: FakeSecret(t.GetName())}, nil
}

func (ts *tokenService) ListTokens(context.Context, *batonv1.ListTokensRequest) (*batonv1.ListTokensResponse, error) {
	s := ts.s
	s.mu.Lock()
	defer s.mu.Unlock()
	out := &batonv1.ListTokensResponse{}
	for _, t := range s.tokens {
		out.Tokens = append(out.Tokens, proto.Clone(t).(*batonv1.Token))
	}
	return out, nil
}

// RevokeToken revokes a token by name or id, at Base plus an hour.
func (ts *tokenService) RevokeToken(_ context.Context, req *batonv1.RevokeTokenRequest) (*batonv1.RevokeTokenResponse, error) {
	s := ts.s
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, t := range s.tokens {
		if t.GetName() == req.GetToken() || strconv.FormatInt(t.GetId(), 10) == req.GetToken() {
			if t.RevokeTime == nil {
				t.RevokeTime = timestamppb.New(Base.Add(time.Hour))
			}
			return &batonv1.RevokeTokenResponse{Token: proto.Clone(t).(*batonv1.Token)}, nil
		}
	}
	return nil, status.Errorf(codes.NotFound, "token %q not found", req.GetToken())
}

type auditService struct {
	batonv1.UnimplementedAuditServiceServer
	s *Server
}

// ListAudit filters the stored trail like batond: since, who, job, pages
// of page_size (default 100) with the last id as the page token.
func (as *auditService) ListAudit(_ context.Context, req *batonv1.ListAuditRequest) (*batonv1.ListAuditResponse, error) {
	s := as.s
	s.mu.Lock()
	defer s.mu.Unlock()
	s.auditCalls = append(s.auditCalls, proto.Clone(req).(*batonv1.ListAuditRequest))
	size := int(req.GetPageSize())
	if size == 0 {
		size = 100
	}
	var before int64
	if tok := req.GetPageToken(); tok != "" {
		n, err := strconv.ParseInt(tok, 10, 64)
		if err != nil {
			return nil, status.Error(codes.InvalidArgument, fmt.Sprintf("page_token %q", tok))
		}
		before = n
	}
	out := &batonv1.ListAuditResponse{}
	for _, r := range s.audit {
		switch {
		case before != 0 && r.GetId() >= before,
			req.GetSince() != nil && r.GetTime().AsTime().Before(req.GetSince().AsTime()),
			req.GetWho() != "" && r.GetWho() != req.GetWho(),
			req.GetJob() != "" && !strings.EqualFold(r.GetJob(), req.GetJob()):
			continue
		}
		out.Records = append(out.Records, proto.Clone(r).(*batonv1.AuditRecord))
		if len(out.Records) == size {
			out.NextPageToken = strconv.FormatInt(r.GetId(), 10)
			break
		}
	}
	return out, nil
}
