package client

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	batonv1 "github.com/batonhq/baton/gen/baton/v1"
)

// CreateTokenParams describes a token to create.
type CreateTokenParams struct {
	// Name is required: a letter followed by letters, digits, '.', '_',
	// '@' or '-'.
	Name string
	// Role is required.
	Role batonv1.Role
	// Jobs, when set, limits the token to job names matching this glob.
	Jobs string
	// TTL, when positive, makes the token expire that long after now.
	TTL time.Duration
}

// CreateToken creates an API token and returns it with its secret, which
// the server shows only this once. It needs an admin token not limited to
// jobs. A name already used fails with codes.AlreadyExists.
func (c *Client) CreateToken(ctx context.Context, p *CreateTokenParams) (tok *batonv1.Token, secret string, err error) {
	if p == nil || p.Name == "" {
		return nil, "", errors.New("create token: name is required")
	}
	req := &batonv1.CreateTokenRequest{Name: p.Name, Role: p.Role, Jobs: p.Jobs}
	if p.TTL > 0 {
		req.Ttl = durationpb.New(p.TTL)
	}
	resp, err := c.tokens.CreateToken(ctx, req)
	if err != nil {
		return nil, "", wrap(fmt.Sprintf("create token %q", p.Name), err)
	}
	return resp.GetToken(), resp.GetSecret(), nil
}

// ListTokens returns every token, without secrets, oldest first.
func (c *Client) ListTokens(ctx context.Context) ([]*batonv1.Token, error) {
	resp, err := c.tokens.ListTokens(ctx, &batonv1.ListTokensRequest{})
	if err != nil {
		return nil, wrap("list tokens", err)
	}
	return resp.GetTokens(), nil
}

// RevokeToken revokes the token with this name or id (decimal) and
// returns it. An unknown token fails with codes.NotFound.
func (c *Client) RevokeToken(ctx context.Context, nameOrID string) (*batonv1.Token, error) {
	resp, err := c.tokens.RevokeToken(ctx, &batonv1.RevokeTokenRequest{Token: nameOrID})
	if err != nil {
		return nil, wrap(fmt.Sprintf("revoke token %q", nameOrID), err)
	}
	return resp.GetToken(), nil
}

// AuditFilter selects audit records.
type AuditFilter struct {
	// Since, when set, lists only records at or after it.
	Since time.Time
	// Who ("token:ci") and Job, when set, must match exactly.
	Who string
	Job string
}

// ListAudit returns audit records newest first, at most limit (when
// positive) or every matching one, following the server's pages.
func (c *Client) ListAudit(ctx context.Context, f AuditFilter, limit int) ([]*batonv1.AuditRecord, error) {
	var (
		out   []*batonv1.AuditRecord
		token string
		prev  int64
	)
	for {
		size := maxPageSize
		if limit > 0 {
			size = min(limit-len(out), maxPageSize)
		}
		req := &batonv1.ListAuditRequest{Who: f.Who, Job: f.Job, PageSize: int32(size), PageToken: token}
		if !f.Since.IsZero() {
			req.Since = timestamppb.New(f.Since)
		}
		resp, err := c.audit.ListAudit(ctx, req)
		if err != nil {
			return nil, wrap("list audit records", err)
		}
		out = append(out, resp.GetRecords()...)
		next := resp.GetNextPageToken()
		if next == "" || (limit > 0 && len(out) >= limit) {
			if limit > 0 && len(out) > limit {
				out = out[:limit]
			}
			return out, nil
		}
		// Tokens are record ids and go down; one that does not would loop.
		n, err := strconv.ParseInt(next, 10, 64)
		if err != nil || n <= 0 || (prev != 0 && n >= prev) {
			return nil, fmt.Errorf("list audit records: server returned page token %q after %q", next, token)
		}
		prev, token = n, next
	}
}
