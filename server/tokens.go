package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path"
	"strconv"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	batonv1 "github.com/batonhq/baton/gen/baton/v1"
	"github.com/batonhq/baton/server/auth"
	"github.com/batonhq/baton/server/store"
)

// tokenService implements batonv1.TokenServiceServer.
type tokenService struct {
	batonv1.UnimplementedTokenServiceServer
	st    store.Store
	log   *slog.Logger
	clock func() time.Time
	// authn is nil when authentication is off.
	authn *auth.Authenticator
}

var roleToStore = map[batonv1.Role]store.TokenRole{
	batonv1.Role_ROLE_VIEWER: store.TokenViewer, batonv1.Role_ROLE_OPERATOR: store.TokenOperator,
	batonv1.Role_ROLE_ADMIN: store.TokenAdmin,
}

var roleToProto = map[store.TokenRole]batonv1.Role{
	store.TokenViewer: batonv1.Role_ROLE_VIEWER, store.TokenOperator: batonv1.Role_ROLE_OPERATOR,
	store.TokenAdmin: batonv1.Role_ROLE_ADMIN,
}

// MaxTokenTTL is the longest lifetime CreateToken gives a token.
const MaxTokenTTL = 10 * 365 * 24 * time.Hour

func (s *tokenService) CreateToken(ctx context.Context, req *batonv1.CreateTokenRequest) (*batonv1.CreateTokenResponse, error) {
	role, ok := roleToStore[req.GetRole()]
	if !ok {
		return nil, invalidArg("role", "required: viewer, operator or admin")
	}
	secret := auth.NewToken()
	p := &store.TokenCreateParams{Name: req.GetName(), Role: role, Jobs: req.GetJobs(), Hash: auth.HashToken(secret)}
	if id, ok := auth.FromContext(ctx); ok {
		p.CreatedBy = id.Who()
	}
	if ttl := req.GetTtl(); ttl != nil {
		d := ttl.AsDuration()
		if err := ttl.CheckValid(); err != nil || d <= 0 || d > MaxTokenTTL {
			return nil, invalidArg("ttl", fmt.Sprintf("want a positive duration of at most %s", MaxTokenTTL))
		}
		p.ExpiresAt = s.clock().Add(d)
	}
	switch {
	case p.Name == "":
		return nil, invalidArg("name", "required")
	case !store.TokenNameOK(p.Name):
		return nil, invalidArg("name", "want a letter followed by up to 199 letters, digits, '.', '_', '@' or '-'")
	}
	if p.Jobs != "" {
		if _, err := path.Match(p.Jobs, ""); err != nil || len(p.Jobs) > store.MaxTokenJobs {
			return nil, invalidArg("jobs", "want a glob of job names such as etl-* (path.Match syntax), at most 400 bytes")
		}
	}
	tok, err := s.st.TokenCreate(ctx, p)
	if errors.Is(err, store.ErrExists) {
		return nil, status.Errorf(codes.AlreadyExists, "a token named %q exists (names of revoked tokens are kept too); choose another name", p.Name)
	}
	if err != nil {
		return nil, toStatus(ctx, s.log, err)
	}
	s.log.InfoContext(ctx, "API token created", slog.String("token", tok.Name), slog.String("role", string(tok.Role)),
		slog.String("jobs", tok.Jobs), slog.String("by", tok.CreatedBy))
	return &batonv1.CreateTokenResponse{Token: tokenToProto(tok), Secret: secret}, nil
}

func (s *tokenService) ListTokens(ctx context.Context, _ *batonv1.ListTokensRequest) (*batonv1.ListTokensResponse, error) {
	toks, err := s.st.TokenList(ctx, &store.TokenListParams{})
	if err != nil {
		return nil, toStatus(ctx, s.log, err)
	}
	out := &batonv1.ListTokensResponse{}
	for _, t := range toks {
		out.Tokens = append(out.Tokens, tokenToProto(t))
	}
	return out, nil
}

func (s *tokenService) RevokeToken(ctx context.Context, req *batonv1.RevokeTokenRequest) (*batonv1.RevokeTokenResponse, error) {
	p, err := revokeParams(req.GetToken())
	if err != nil {
		return nil, err
	}
	tok, err := s.st.TokenRevoke(ctx, p)
	if err != nil {
		return nil, toStatus(ctx, s.log, notFound(err, "token %q", req.GetToken()))
	}
	if s.authn != nil {
		s.authn.Forget(tok.ID)
	}
	s.log.InfoContext(ctx, "API token revoked", slog.String("token", tok.Name))
	return &batonv1.RevokeTokenResponse{Token: tokenToProto(tok)}, nil
}

// revokeParams reads a token's id (digits) or name.
func revokeParams(s string) (*store.TokenRevokeParams, error) {
	if s == "" {
		return nil, invalidArg("token", "required: the token's name or id")
	}
	if id, err := strconv.ParseInt(s, 10, 64); err == nil {
		if id <= 0 {
			return nil, invalidArg("token", "an id must be positive")
		}
		return &store.TokenRevokeParams{ID: id}, nil
	}
	return &store.TokenRevokeParams{Name: s}, nil
}

func tokenToProto(t *store.Token) *batonv1.Token {
	return &batonv1.Token{
		Id: t.ID, Name: t.Name, Role: roleToProto[t.Role], Jobs: t.Jobs, CreateTime: ts(t.CreatedAt),
		CreatedBy: t.CreatedBy, ExpireTime: ts(t.ExpiresAt), RevokeTime: ts(t.RevokedAt), LastUseTime: ts(t.LastUsedAt),
	}
}

// auditService implements batonv1.AuditServiceServer.
type auditService struct {
	batonv1.UnimplementedAuditServiceServer
	st  store.Store
	log *slog.Logger
}

func (s *auditService) ListAudit(ctx context.Context, req *batonv1.ListAuditRequest) (*batonv1.ListAuditResponse, error) {
	size := int(req.GetPageSize())
	switch {
	case size < 0 || size > store.MaxAuditList:
		return nil, invalidArg("page_size", fmt.Sprintf("want 0 (100) to %d", store.MaxAuditList))
	case size == 0:
		size = 100
	}
	p := &store.AuditListParams{Who: req.GetWho(), Job: req.GetJob(), Limit: size}
	if since := req.GetSince(); since != nil {
		if err := since.CheckValid(); err != nil {
			return nil, invalidArg("since", "not a valid time")
		}
		p.Since = since.AsTime()
	}
	if tok := req.GetPageToken(); tok != "" {
		id, err := strconv.ParseInt(tok, 10, 64)
		if err != nil || id <= 0 {
			return nil, invalidArg("page_token", "not a token from a ListAuditResponse")
		}
		p.BeforeID = id
	}
	recs, err := s.st.AuditList(ctx, p)
	if err != nil {
		return nil, toStatus(ctx, s.log, err)
	}
	out := &batonv1.ListAuditResponse{}
	for _, r := range recs {
		out.Records = append(out.Records, &batonv1.AuditRecord{
			Id: r.ID, Time: timestamppb.New(r.At), Who: r.Who, Peer: r.Peer, Method: r.Method, Job: r.Job,
			RunId: r.RunID, Code: r.Code, Message: r.Message,
		})
	}
	if len(recs) == size {
		out.NextPageToken = strconv.FormatInt(recs[len(recs)-1].ID, 10)
	}
	return out, nil
}

// ErrAdminExists is returned by [CreateFirstAdmin] when a usable admin
// token exists.
var ErrAdminExists = errors.New("an admin token exists")

// CreateFirstAdmin creates an admin token named name when no usable
// (unrevoked, unexpired) admin token exists, and returns its secret. It is
// `batond init`: whoever may open the store may call it, so it also
// recovers a control plane whose admin tokens were all revoked or expired.
func CreateFirstAdmin(ctx context.Context, st store.Store, name string) (string, *store.Token, error) {
	secret := auth.NewToken()
	var tok *store.Token
	err := st.InTx(ctx, func(tx store.Store) error {
		toks, err := tx.TokenList(ctx, &store.TokenListParams{})
		if err != nil {
			return err
		}
		now := time.Now()
		for _, t := range toks {
			if t.Role == store.TokenAdmin && t.Usable(now) {
				return fmt.Errorf("%w: %q (id %d)", ErrAdminExists, t.Name, t.ID)
			}
		}
		tok, err = tx.TokenCreate(ctx, &store.TokenCreateParams{Name: name, Role: store.TokenAdmin,
			Hash: auth.HashToken(secret), CreatedBy: "batond init"})
		return err
	})
	if err != nil {
		return "", nil, err
	}
	return secret, tok, nil
}
