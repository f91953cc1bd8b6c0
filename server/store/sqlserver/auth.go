package sqlserver

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/batonhq/baton/server/store"
)

var (
	qTokenCreate = register("token_create", `
INSERT INTO {{schema}}.api_tokens (name, role, jobs, hash, created_by, expires_at)
OUTPUT inserted.id, inserted.name, inserted.role, inserted.jobs, inserted.hash, inserted.created_at,
       inserted.created_by, inserted.expires_at, inserted.revoked_at, inserted.last_used_at
VALUES (@name, @role, @jobs, @hash, @by, @expires)`)

	// One statement per key, so each seeks its own unique index.
	qTokenGetByID = register("token_get_by_id", `
SELECT id, name, role, jobs, hash, created_at, created_by, expires_at, revoked_at, last_used_at
FROM {{schema}}.api_tokens WHERE id = @id`)

	qTokenGetByName = register("token_get_by_name", `
SELECT id, name, role, jobs, hash, created_at, created_by, expires_at, revoked_at, last_used_at
FROM {{schema}}.api_tokens WHERE name = @name`)

	qTokenGetByHash = register("token_get_by_hash", `
SELECT id, name, role, jobs, hash, created_at, created_by, expires_at, revoked_at, last_used_at
FROM {{schema}}.api_tokens WHERE hash = @hash`)

	qTokenList = register("token_list", `
SELECT id, name, role, jobs, hash, created_at, created_by, expires_at, revoked_at, last_used_at
FROM {{schema}}.api_tokens ORDER BY id`)

	qTokenRevoke = register("token_revoke", `
UPDATE {{schema}}.api_tokens SET revoked_at = COALESCE(revoked_at, COALESCE(@at, CAST(SYSUTCDATETIME() AS DATETIME2(3))))
OUTPUT inserted.id, inserted.name, inserted.role, inserted.jobs, inserted.hash, inserted.created_at,
       inserted.created_by, inserted.expires_at, inserted.revoked_at, inserted.last_used_at
WHERE (@id <> 0 AND id = @id) OR (@name <> N'' AND name = @name)`)

	qTokenTouch = register("token_touch", `
UPDATE {{schema}}.api_tokens
SET last_used_at = CASE WHEN last_used_at IS NULL OR last_used_at < @at THEN @at ELSE last_used_at END
WHERE id = @id`)

	// OUTPUT INTO a table variable: the table has a trigger.
	qAuditInsert = register("audit_insert", `
DECLARE @out TABLE (id BIGINT NOT NULL, at DATETIME2(3) NOT NULL);
INSERT INTO {{schema}}.audit_log (at, who, peer, method, job, run_id, code, message)
OUTPUT inserted.id, inserted.at INTO @out
VALUES (COALESCE(@at, CAST(SYSUTCDATETIME() AS DATETIME2(3))), @who, @peer, @method, @job, @run, @code, @message);
SELECT id, at FROM @out;`)

	qAuditList = register("audit_list", `
SELECT TOP (@limit) id, at, who, peer, method, job, run_id, code, message
FROM {{schema}}.audit_log
WHERE id < @before AND (@since IS NULL OR at >= @since) AND (@who = N'' OR who = @who) AND (@job = N'' OR job = @job)
ORDER BY id DESC`)

	// The procedure deletes, so batond's login needs no DELETE on the
	// table; see migration 0004.
	qAuditPurge = register("audit_purge", `
EXEC {{schema}}.audit_purge @before = @before, @limit = @limit;`)
)

func scanToken(r *sql.Rows) (*store.Token, error) {
	var t store.Token
	if err := r.Scan(&t.ID, &t.Name, &t.Role, &t.Jobs, &t.Hash, utcTime{&t.CreatedAt}, &t.CreatedBy,
		nullTime{&t.ExpiresAt}, nullTime{&t.RevokedAt}, nullTime{&t.LastUsedAt}); err != nil {
		return nil, err
	}
	return &t, nil
}

// oneToken runs a statement returning token rows and returns the first,
// or an error wrapping sql.ErrNoRows.
func (s *Store) oneToken(ctx context.Context, st *stmt, args ...any) (*store.Token, error) {
	var tok *store.Token
	err := s.each(ctx, st, args, func(r *sql.Rows) error {
		if tok != nil {
			return nil
		}
		var err error
		tok, err = scanToken(r)
		return err
	})
	if err == nil && tok == nil {
		err = fmt.Errorf("%s: %w", st.name, sql.ErrNoRows)
	}
	return tok, err
}

// TokenCreate stores an API token; see [store.Store.TokenCreate].
func (s *Store) TokenCreate(ctx context.Context, p *store.TokenCreateParams) (*store.Token, error) {
	if err := p.Check(); err != nil {
		return nil, fmt.Errorf("token create: %w", err)
	}
	var tok *store.Token
	err := s.write(ctx, func(tx *Store) error {
		var err error
		tok, err = tx.oneToken(ctx, qTokenCreate, sql.Named("name", p.Name), sql.Named("role", string(p.Role)),
			sql.Named("jobs", p.Jobs), sql.Named("hash", p.Hash), sql.Named("by", p.CreatedBy),
			sql.Named("expires", timeOrNil(p.ExpiresAt)))
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

// TokenGet returns one token; see [store.Store.TokenGet].
func (s *Store) TokenGet(ctx context.Context, p *store.TokenGetParams) (*store.Token, error) {
	if err := p.Check(); err != nil {
		return nil, fmt.Errorf("token get: %w", err)
	}
	st, arg := qTokenGetByID, sql.Named("id", p.ID)
	switch {
	case p.Name != "":
		st, arg = qTokenGetByName, sql.Named("name", p.Name)
	case p.Hash != "":
		st, arg = qTokenGetByHash, sql.Named("hash", p.Hash)
	}
	var tok *store.Token
	err := s.read(ctx, func(s *Store) error {
		var err error
		tok, err = s.oneToken(ctx, st, arg)
		return err
	})
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
	var out []*store.Token
	err := s.read(ctx, func(s *Store) error {
		out = nil
		return s.each(ctx, qTokenList, nil, func(r *sql.Rows) error {
			t, err := scanToken(r)
			if err == nil {
				out = append(out, t)
			}
			return err
		})
	})
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
		tok, err = tx.oneToken(ctx, qTokenRevoke, sql.Named("id", p.ID), sql.Named("name", p.Name),
			sql.Named("at", timeOrNil(p.At)))
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
	at := p.At
	if at.IsZero() {
		at = time.Now()
	}
	err := s.write(ctx, func(tx *Store) error {
		n, err := tx.exec(ctx, qTokenTouch, sql.Named("id", p.ID), sql.Named("at", timeOrNil(at)))
		if err == nil && n == 0 {
			err = store.ErrNotFound
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
	ids := make([]int64, len(p.Records))
	ats := make([]time.Time, len(p.Records))
	err := s.write(ctx, func(tx *Store) error {
		for i, r := range p.Records {
			c := *r
			c.Clip()
			err := tx.one(ctx, qAuditInsert, []any{
				sql.Named("at", timeOrNil(c.At)), sql.Named("who", c.Who), sql.Named("peer", c.Peer),
				sql.Named("method", c.Method), sql.Named("job", c.Job), sql.Named("run", c.RunID),
				sql.Named("code", c.Code), sql.Named("message", nvarcharMax(c.Message)),
			}, &ids[i], utcTime{&ats[i]})
			if err != nil {
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

// AuditList returns audit records newest first; see [store.Store.AuditList].
func (s *Store) AuditList(ctx context.Context, p *store.AuditListParams) ([]*store.AuditRecord, error) {
	switch {
	case p.Limit < 0 || p.Limit > store.MaxAuditList:
		return nil, fmt.Errorf("audit list: limit %d: want 0 (100) to %d", p.Limit, store.MaxAuditList)
	case p.BeforeID < 0:
		return nil, fmt.Errorf("audit list: before id %d is negative", p.BeforeID)
	}
	limit := p.Limit
	if limit == 0 {
		limit = 100
	}
	before := p.BeforeID
	if before == 0 {
		before = math.MaxInt64
	}
	var out []*store.AuditRecord
	err := s.read(ctx, func(s *Store) error {
		out = nil
		return s.each(ctx, qAuditList, []any{
			sql.Named("limit", int64(limit)), sql.Named("before", before), sql.Named("since", timeOrNil(p.Since)),
			sql.Named("who", p.Who), sql.Named("job", p.Job),
		}, func(r *sql.Rows) error {
			var a store.AuditRecord
			if err := r.Scan(&a.ID, utcTime{&a.At}, &a.Who, &a.Peer, &a.Method, &a.Job, &a.RunID, &a.Code, &a.Message); err != nil {
				return err
			}
			out = append(out, &a)
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("audit list: %w", err)
	}
	return out, nil
}

// AuditPurge removes the oldest audit records through the audit_purge
// procedure; see [store.Store.AuditPurge]. The procedure itself refuses a
// Before within [store.MinAuditRetention] of the server's clock; the
// check here, by batond's clock, only gives the clearer message first.
func (s *Store) AuditPurge(ctx context.Context, p *store.AuditPurgeParams) (int, error) {
	switch {
	case p.Limit < 0 || p.Limit > math.MaxInt32:
		return 0, fmt.Errorf("audit purge: limit %d is out of range", p.Limit)
	case p.Before.After(time.Now().Add(-store.MinAuditRetention)):
		return 0, fmt.Errorf("audit purge: before %s is less than %s ago", p.Before.UTC().Format(time.RFC3339),
			store.MinAuditRetention)
	}
	limit := p.Limit
	if limit == 0 {
		limit = 1000
	}
	var n int
	err := s.write(ctx, func(tx *Store) error {
		return tx.one(ctx, qAuditPurge, []any{sql.Named("before", timeOrNil(p.Before)), sql.Named("limit", int32(limit))}, &n)
	})
	if err != nil {
		return 0, fmt.Errorf("audit purge: %w", err)
	}
	return n, nil
}
