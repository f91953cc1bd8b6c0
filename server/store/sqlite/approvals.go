package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"github.com/batonhq/baton/server/store"
)

// AgentApprove records an agent's approval; see [store.Store.AgentApprove].
func (s *Store) AgentApprove(ctx context.Context, p *store.AgentApproveParams) error {
	a := p.Approval
	switch {
	case a == nil:
		return errors.New("agent approve: approval is nil")
	case a.Name == "":
		return errors.New("agent approve: name is empty")
	case a.Slots < 0:
		return fmt.Errorf("agent approve %s: slots %d is negative", a.Name, a.Slots)
	case a.ApprovedAt.IsZero():
		return fmt.Errorf("agent approve %s: approval time is missing", a.Name)
	}
	err := s.write(ctx, func(tx *Store) error {
		_, err := tx.exec(ctx, `
			INSERT INTO agent_approvals (name, labels, slots, cert_sha256, approved_by, approved_at)
			VALUES (@name, @labels, @slots, @cert, @by, @at)
			ON CONFLICT (name) DO UPDATE SET labels = excluded.labels, slots = excluded.slots, cert_sha256 = excluded.cert_sha256,
			    approved_by = excluded.approved_by, approved_at = excluded.approved_at`,
			sql.Named("name", a.Name), sql.Named("labels", encodeMap(a.Labels)), sql.Named("slots", a.Slots), sql.Named("cert", a.CertSHA256),
			sql.Named("by", a.ApprovedBy), sql.Named("at", msOrNil(a.ApprovedAt)))
		return err
	})
	if err != nil {
		return fmt.Errorf("agent approve %s: %w", a.Name, err)
	}
	return nil
}

const selectApproval = `SELECT name, labels, slots, cert_sha256, approved_by, approved_at FROM agent_approvals`

// AgentApprovalGet returns one agent's approval, or store.ErrNotFound.
func (s *Store) AgentApprovalGet(ctx context.Context, p *store.AgentApprovalGetParams) (*store.AgentApproval, error) {
	out, err := collect(scanApproval)(s.query(ctx, selectApproval+` WHERE name = @name`, sql.Named("name", p.Name)))
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
	out, err := collect(scanApproval)(s.query(ctx, selectApproval+` ORDER BY name`))
	if err != nil {
		return nil, fmt.Errorf("agent approval list: %w", err)
	}
	return out, nil
}

// AgentApprovalDelete removes an agent's approval.
func (s *Store) AgentApprovalDelete(ctx context.Context, p *store.AgentApprovalDeleteParams) error {
	err := s.write(ctx, func(tx *Store) error {
		res, err := tx.exec(ctx, `DELETE FROM agent_approvals WHERE name = @name`, sql.Named("name", p.Name))
		if err != nil {
			return err
		}
		if n, err := res.RowsAffected(); err != nil {
			return err
		} else if n == 0 {
			return store.ErrNotFound
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("agent approval delete %s: %w", p.Name, err)
	}
	return nil
}

func scanApproval(sc scanner) (*store.AgentApproval, error) {
	var a store.AgentApproval
	if err := sc.Scan(&a.Name, jsonMap{&a.Labels}, &a.Slots, &a.CertSHA256, &a.ApprovedBy, nullTime{&a.ApprovedAt}); err != nil {
		return nil, err
	}
	return &a, nil
}
