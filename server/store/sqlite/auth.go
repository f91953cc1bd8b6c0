package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/batonhq/baton/server/store"
)

const tokenColumns = `id, name, role, jobs, hash, created_at, created_by, expires_at, revoked_at, last_used_at`

func scanToken(sc scanner) (*store.Token, error) {
	var (
		t       store.Token
		created int64
	)
	if err := sc.Scan(&t.ID, &t.Name, &t.Role, &t.Jobs, &t.Hash, &created, &t.CreatedBy,
		nullTime{&t.ExpiresAt}, nullTime{&t.RevokedAt}, nullTime{&t.LastUsedAt}); err != nil {
		return nil, err
	}
	t.CreatedAt = fromMS(created)
	return &t, nil
}

// TokenCreate stores an API token; see [store.Store.TokenCreate].
func (s *Store) TokenCreate(ctx context.Context, p *store.TokenCreateParams) (*store.Token, error) {
	if err := p.Check(); err != nil {
		return nil, fmt.Errorf("token create: %w", err)
	}
	var tok *store.Token
	err := s.write(ctx, func(tx *Store) error {
		var err error
		tok, err = scanToken(tx.rowOf(ctx, `
			INSERT INTO api_tokens (name, role, jobs, hash, created_at, created_by, expires_at)
			VALUES (@name, @role, @jobs, @hash, @at, @by, @expires)
			RETURNING `+tokenColumns,
			sql.Named("name", p.Name), sql.Named("role", string(p.Role)), sql.Named("jobs", p.Jobs),
			sql.Named("hash", p.Hash), sql.Named("at", s.now()), sql.Named("by", p.CreatedBy),
			sql.Named("expires", msOrNil(p.ExpiresAt))))
		if isUnique(err) {
			return fmt.Errorf("name %q or its secret is taken: %w", p.Name, store.ErrExists)
		}
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("token create %s: %w", p.Name, err)
	}
	return tok, nil
}

// rowOf runs q and returns its first row for scanning.
func (s *Store) rowOf(ctx context.Context, q string, args ...any) scanner {
	st, err := s.stmt(ctx, q)
	if err != nil {
		return errScanner{err}
	}
	return st.QueryRowContext(ctx, args...)
}

type errScanner struct{ err error }

func (e errScanner) Scan(...any) error { return e.err }

// TokenGet returns one token; see [store.Store.TokenGet].
func (s *Store) TokenGet(ctx context.Context, p *store.TokenGetParams) (*store.Token, error) {
	if err := p.Check(); err != nil {
		return nil, fmt.Errorf("token get: %w", err)
	}
	tok, err := scanToken(s.rowOf(ctx, `SELECT `+tokenColumns+` FROM api_tokens
		WHERE (@id <> 0 AND id = @id) OR (@name <> '' AND name = @name) OR (@hash <> '' AND hash = @hash)`,
		sql.Named("id", p.ID), sql.Named("name", p.Name), sql.Named("hash", p.Hash)))
	if errors.Is(err, sql.ErrNoRows) {
		err = store.ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("token get: %w", err)
	}
	return tok, nil
}

// TokenList returns every token ordered by id.
func (s *Store) TokenList(ctx context.Context, _ *store.TokenListParams) ([]*store.Token, error) {
	out, err := collect(scanToken)(s.query(ctx, `SELECT `+tokenColumns+` FROM api_tokens ORDER BY id`))
	if err != nil {
		return nil, fmt.Errorf("token list: %w", err)
	}
	return out, nil
}

// TokenRevoke marks a token revoked; see [store.Store.TokenRevoke].
func (s *Store) TokenRevoke(ctx context.Context, p *store.TokenRevokeParams) (*store.Token, error) {
	if (p.ID == 0) == (p.Name == "") {
		return nil, errors.New("token revoke: set exactly one of id and name")
	}
	var tok *store.Token
	err := s.write(ctx, func(tx *Store) error {
		var err error
		tok, err = scanToken(tx.rowOf(ctx, `
			UPDATE api_tokens SET revoked_at = COALESCE(revoked_at, @at)
			WHERE (@id <> 0 AND id = @id) OR (@name <> '' AND name = @name)
			RETURNING `+tokenColumns,
			sql.Named("id", p.ID), sql.Named("name", p.Name), sql.Named("at", msOr(p.At, s.now()))))
		if errors.Is(err, sql.ErrNoRows) {
			return store.ErrNotFound
		}
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("token revoke: %w", err)
	}
	return tok, nil
}

// TokenTouch records that a token was used; see [store.Store.TokenTouch].
func (s *Store) TokenTouch(ctx context.Context, p *store.TokenTouchParams) error {
	err := s.write(ctx, func(tx *Store) error {
		var found bool
		err := tx.queryRow(ctx, `
			UPDATE api_tokens SET last_used_at = MAX(COALESCE(last_used_at, @at), @at)
			WHERE id = @id RETURNING 1`,
			[]any{sql.Named("id", p.ID), sql.Named("at", msOr(p.At, s.now()))}, &found)
		if errors.Is(err, sql.ErrNoRows) {
			return store.ErrNotFound
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("token touch %d: %w", p.ID, err)
	}
	return nil
}

// AuditAppend appends audit records; see [store.Store.AuditAppend].
func (s *Store) AuditAppend(ctx context.Context, p *store.AuditAppendParams) error {
	for i, r := range p.Records {
		if r == nil {
			return fmt.Errorf("audit append: records[%d] is nil", i)
		}
	}
	if len(p.Records) == 0 {
		return nil
	}
	at := s.now()
	ids := make([]int64, len(p.Records))
	ats := make([]time.Time, len(p.Records))
	err := s.write(ctx, func(tx *Store) error {
		for i, r := range p.Records {
			c := *r
			c.Clip()
			ats[i] = fromMS(msOr(c.At, at))
			res, err := tx.exec(ctx, `
				INSERT INTO audit_log (at, who, peer, method, job, run_id, code, message)
				VALUES (@at, @who, @peer, @method, @job, @run, @code, @message)`,
				sql.Named("at", ats[i].UnixMilli()), sql.Named("who", c.Who), sql.Named("peer", c.Peer),
				sql.Named("method", c.Method), sql.Named("job", c.Job), sql.Named("run", c.RunID),
				sql.Named("code", c.Code), sql.Named("message", c.Message))
			if err != nil {
				return err
			}
			if ids[i], err = res.LastInsertId(); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("audit append: %w", err)
	}
	for i, r := range p.Records {
		r.Clip()
		r.ID, r.At = ids[i], ats[i]
	}
	return nil
}

// auditLimit checks an AuditListParams' paging fields and returns its limit.
func auditLimit(p *store.AuditListParams) (int, error) {
	switch {
	case p.Limit < 0 || p.Limit > store.MaxAuditList:
		return 0, fmt.Errorf("limit %d: want 0 (100) to %d", p.Limit, store.MaxAuditList)
	case p.BeforeID < 0:
		return 0, fmt.Errorf("before id %d is negative", p.BeforeID)
	case p.Limit == 0:
		return 100, nil
	}
	return p.Limit, nil
}

// AuditList returns audit records newest first; see [store.Store.AuditList].
func (s *Store) AuditList(ctx context.Context, p *store.AuditListParams) ([]*store.AuditRecord, error) {
	limit, err := auditLimit(p)
	if err != nil {
		return nil, fmt.Errorf("audit list: %w", err)
	}
	before := p.BeforeID
	if before == 0 {
		before = math.MaxInt64
	}
	since := int64(math.MinInt64)
	if !p.Since.IsZero() {
		since = p.Since.UnixMilli()
	}
	out, err := collect(scanAudit)(s.query(ctx, `
		SELECT id, at, who, peer, method, job, run_id, code, message FROM audit_log
		WHERE id < @before AND at >= @since AND (@who = '' OR who = @who) AND (@job = '' OR job = @job)
		ORDER BY id DESC LIMIT @limit`,
		sql.Named("before", before), sql.Named("since", since), sql.Named("who", p.Who), sql.Named("job", p.Job),
		sql.Named("limit", limit)))
	if err != nil {
		return nil, fmt.Errorf("audit list: %w", err)
	}
	return out, nil
}

func scanAudit(sc scanner) (*store.AuditRecord, error) {
	var (
		r  store.AuditRecord
		at int64
	)
	if err := sc.Scan(&r.ID, &at, &r.Who, &r.Peer, &r.Method, &r.Job, &r.RunID, &r.Code, &r.Message); err != nil {
		return nil, err
	}
	r.At = fromMS(at)
	return &r, nil
}

// AuditPurge removes the oldest audit records; see [store.Store.AuditPurge].
func (s *Store) AuditPurge(ctx context.Context, p *store.AuditPurgeParams) (int, error) {
	switch {
	case p.Limit < 0:
		return 0, fmt.Errorf("audit purge: limit %d is negative", p.Limit)
	case p.Before.After(fromMS(s.now()).Add(-store.MinAuditRetention)):
		return 0, fmt.Errorf("audit purge: before %s is less than %s ago", p.Before.UTC().Format(time.RFC3339),
			store.MinAuditRetention)
	}
	limit := p.Limit
	if limit == 0 {
		limit = 1000
	}
	var n int64
	err := s.write(ctx, func(tx *Store) error {
		res, err := tx.exec(ctx, `
			DELETE FROM audit_log WHERE id IN (
			    SELECT id FROM audit_log WHERE at < @before ORDER BY at, id LIMIT @limit)`,
			sql.Named("before", p.Before.UnixMilli()), sql.Named("limit", limit))
		if err != nil {
			return err
		}
		n, err = res.RowsAffected()
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("audit purge: %w", err)
	}
	return int(n), nil
}
