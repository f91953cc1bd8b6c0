package sqlserver

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math"

	"github.com/batonhq/baton/server/store"
)

var (
	// The same lossless upsert as qAgentUpsert.
	qAgentApprove = register("agent_approve", `
UPDATE {{schema}}.agent_approvals WITH (SERIALIZABLE)
SET labels = @labels, slots = @slots, cert_sha256 = @cert, approved_by = @by, approved_at = @at
WHERE name = @name;
IF @@ROWCOUNT = 0
    INSERT INTO {{schema}}.agent_approvals (name, labels, slots, cert_sha256, approved_by, approved_at)
    VALUES (@name, @labels, @slots, @cert, @by, @at);`)

	qAgentApprovalGet = register("agent_approval_get", `
SELECT name, labels, slots, cert_sha256, approved_by, approved_at
FROM {{schema}}.agent_approvals WHERE name = @name`)

	qAgentApprovalList = register("agent_approval_list", `
SELECT name, labels, slots, cert_sha256, approved_by, approved_at
FROM {{schema}}.agent_approvals ORDER BY name`)

	qAgentApprovalDelete = register("agent_approval_delete", `
DELETE FROM {{schema}}.agent_approvals WHERE name = @name`)
)

// AgentApprove records an agent's approval; see [store.Store.AgentApprove].
func (s *Store) AgentApprove(ctx context.Context, p *store.AgentApproveParams) error {
	a := p.Approval
	switch {
	case a == nil:
		return errors.New("agent approve: approval is nil")
	case a.Slots < 0 || a.Slots > math.MaxInt32:
		return fmt.Errorf("agent approve %s: slots %d is out of range", a.Name, a.Slots)
	case a.ApprovedAt.IsZero():
		return fmt.Errorf("agent approve %s: approval time is missing", a.Name)
	}
	if err := checkKey("agent approve: name", a.Name, false); err != nil {
		return err
	}
	if len(a.CertSHA256) > 64 {
		return fmt.Errorf("agent approve %s: certificate hash is %d characters long; a SHA-256 in hex is 64", a.Name, len(a.CertSHA256))
	}
	if err := checkKey("agent approve "+a.Name+": approved by", a.ApprovedBy, true); err != nil {
		return err
	}
	err := s.write(ctx, func(tx *Store) error {
		_, err := tx.exec(ctx, qAgentApprove,
			sql.Named("name", a.Name), sql.Named("labels", encodeMap(a.Labels)), sql.Named("slots", int32(a.Slots)), sql.Named("cert", a.CertSHA256),
			sql.Named("by", a.ApprovedBy), sql.Named("at", timeOrNil(a.ApprovedAt)))
		return err
	})
	if err != nil {
		return fmt.Errorf("agent approve %s: %w", a.Name, err)
	}
	return nil
}

// AgentApprovalGet returns one agent's approval, or store.ErrNotFound.
func (s *Store) AgentApprovalGet(ctx context.Context, p *store.AgentApprovalGetParams) (*store.AgentApproval, error) {
	var out []*store.AgentApproval
	err := s.read(ctx, func(s *Store) error {
		out = nil
		return s.each(ctx, qAgentApprovalGet, []any{sql.Named("name", p.Name)}, scanApprovals(&out))
	})
	if err != nil {
		return nil, fmt.Errorf("agent approval %s: %w", p.Name, err)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("agent approval %s: %w", p.Name, store.ErrNotFound)
	}
	return out[0], nil
}

// AgentApprovalList returns every approval ordered by name.
func (s *Store) AgentApprovalList(ctx context.Context, _ *store.AgentApprovalListParams) ([]*store.AgentApproval, error) {
	var out []*store.AgentApproval
	err := s.read(ctx, func(s *Store) error {
		out = nil
		return s.each(ctx, qAgentApprovalList, nil, scanApprovals(&out))
	})
	if err != nil {
		return nil, fmt.Errorf("agent approval list: %w", err)
	}
	return out, nil
}

// AgentApprovalDelete removes an agent's approval.
func (s *Store) AgentApprovalDelete(ctx context.Context, p *store.AgentApprovalDeleteParams) error {
	err := s.write(ctx, func(tx *Store) error {
		n, err := tx.exec(ctx, qAgentApprovalDelete, sql.Named("name", p.Name))
		if err != nil {
			return err
		}
		if n == 0 {
			return store.ErrNotFound
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("agent approval delete %s: %w", p.Name, err)
	}
	return nil
}

func scanApprovals(out *[]*store.AgentApproval) func(*sql.Rows) error {
	return func(r *sql.Rows) error {
		var a store.AgentApproval
		if err := r.Scan(&a.Name, jsonMap{&a.Labels}, &a.Slots, &a.CertSHA256, &a.ApprovedBy, nullTime{&a.ApprovedAt}); err != nil {
			return err
		}
		*out = append(*out, &a)
		return nil
	}
}
