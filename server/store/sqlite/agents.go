package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"github.com/batonhq/baton/server/store"
)

// AgentUpsert records an agent's identity and state; see
// [store.Store.AgentUpsert]. Zero times are stored as unknown.
func (s *Store) AgentUpsert(ctx context.Context, p *store.AgentUpsertParams) error {
	a := p.Agent
	switch {
	case a == nil:
		return errors.New("agent upsert: agent is nil")
	case a.Name == "":
		return errors.New("agent upsert: name is empty")
	case a.Slots < 0:
		return fmt.Errorf("agent upsert %s: slots %d is negative", a.Name, a.Slots)
	case !a.State.Valid():
		return fmt.Errorf("agent upsert %s: state %q: want connected, disconnected or lost", a.Name, a.State)
	}
	err := s.write(ctx, func(tx *Store) error {
		_, err := tx.exec(ctx, `
			INSERT INTO agents (name, labels, slots, version, hostname, os, state, connected_at, last_seen_at)
			VALUES (@name, @labels, @slots, @version, @hostname, @os, @state, @connected, @seen)
			ON CONFLICT (name) DO UPDATE SET labels = excluded.labels, slots = excluded.slots,
			    version = excluded.version, hostname = excluded.hostname, os = excluded.os,
			    state = excluded.state, connected_at = excluded.connected_at, last_seen_at = excluded.last_seen_at`,
			sql.Named("name", a.Name), sql.Named("labels", encodeMap(a.Labels)), sql.Named("slots", a.Slots),
			sql.Named("version", a.Version), sql.Named("hostname", a.Hostname), sql.Named("os", a.OS),
			sql.Named("state", string(a.State)), sql.Named("connected", msOrNil(a.ConnectedAt)),
			sql.Named("seen", msOrNil(a.LastSeenAt)))
		return err
	})
	if err != nil {
		return fmt.Errorf("agent upsert %s: %w", a.Name, err)
	}
	return nil
}

// AgentList returns every known agent ordered by name.
func (s *Store) AgentList(ctx context.Context, _ *store.AgentListParams) ([]*store.Agent, error) {
	out, err := collect(scanAgent)(s.query(ctx, `
		SELECT name, labels, slots, version, hostname, os, state, connected_at, last_seen_at
		FROM agents ORDER BY name`))
	if err != nil {
		return nil, fmt.Errorf("agent list: %w", err)
	}
	return out, nil
}

func scanAgent(sc scanner) (*store.Agent, error) {
	var a store.Agent
	if err := sc.Scan(&a.Name, jsonMap{&a.Labels}, &a.Slots, &a.Version, &a.Hostname, &a.OS, &a.State,
		nullTime{&a.ConnectedAt}, nullTime{&a.LastSeenAt}); err != nil {
		return nil, err
	}
	return &a, nil
}

// acquireLeader takes the lease when it is free or expired (a takeover:
// the token grows) or renews it for its holder (the token stays while
// unexpired). It changes nothing, and returns no row, while another
// holder's lease is unexpired.
const acquireLeader = `
	INSERT INTO leader_lease (name, holder, token, expires_at) VALUES (@name, @holder, 1, @expires)
	ON CONFLICT (name) DO UPDATE SET
	    token = CASE WHEN holder = excluded.holder AND expires_at > @at THEN token ELSE token + 1 END,
	    holder = excluded.holder,
	    expires_at = excluded.expires_at
	WHERE holder = excluded.holder OR holder = '' OR expires_at <= @at
	RETURNING token, expires_at`

func checkLease(name, holder string) error {
	if name == "" {
		return errors.New("name is empty")
	}
	if holder == "" {
		return errors.New("holder is empty")
	}
	return nil
}

// LeaderAcquire takes or renews the named lease; see
// [store.Store.LeaderAcquire].
func (s *Store) LeaderAcquire(ctx context.Context, p *store.LeaderAcquireParams) (*store.Lease, error) {
	if err := checkLease(p.Name, p.Holder); err != nil {
		return nil, fmt.Errorf("leader acquire: %w", err)
	}
	if err := checkTTL(p.TTL); err != nil {
		return nil, fmt.Errorf("leader acquire %s: %w", p.Name, err)
	}
	l := &store.Lease{Name: p.Name, Holder: p.Holder}
	err := s.write(ctx, func(tx *Store) error {
		at := s.now()
		var expires int64
		err := tx.queryRow(ctx, acquireLeader,
			[]any{sql.Named("name", p.Name), sql.Named("holder", p.Holder),
				sql.Named("expires", at+p.TTL.Milliseconds()), sql.Named("at", at)},
			&l.Token, &expires)
		if errors.Is(err, sql.ErrNoRows) {
			return store.ErrNotLeader
		}
		l.ExpiresAt = fromMS(expires)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("leader acquire %s for %s: %w", p.Name, p.Holder, err)
	}
	return l, nil
}

// LeaderCheck returns [store.ErrNotLeader] unless Holder holds the named
// lease with Token, unexpired. Inside InTx it fences the transaction: the
// IMMEDIATE transaction already holds SQLite's write lock, so no takeover
// can commit before it does.
func (s *Store) LeaderCheck(ctx context.Context, p *store.LeaderCheckParams) error {
	if err := checkLease(p.Name, p.Holder); err != nil {
		return fmt.Errorf("leader check: %w", err)
	}
	var ok bool
	err := s.queryRow(ctx, `
		SELECT EXISTS (SELECT 1 FROM leader_lease
		               WHERE name = @name AND holder = @holder AND token = @token AND expires_at > @at)`,
		[]any{sql.Named("name", p.Name), sql.Named("holder", p.Holder), sql.Named("token", p.Token),
			sql.Named("at", s.now())}, &ok)
	if err == nil && !ok {
		err = store.ErrNotLeader
	}
	if err != nil {
		return fmt.Errorf("leader check %s for %s: %w", p.Name, p.Holder, err)
	}
	return nil
}

// LeaderRelease frees the lease if Holder holds it with Token, so another
// replica may take over at once; otherwise it does nothing.
func (s *Store) LeaderRelease(ctx context.Context, p *store.LeaderReleaseParams) error {
	if err := checkLease(p.Name, p.Holder); err != nil {
		return fmt.Errorf("leader release: %w", err)
	}
	err := s.write(ctx, func(tx *Store) error {
		_, err := tx.exec(ctx, `
			UPDATE leader_lease SET holder = '', expires_at = 0
			WHERE name = @name AND holder = @holder AND token = @token`,
			sql.Named("name", p.Name), sql.Named("holder", p.Holder), sql.Named("token", p.Token))
		return err
	})
	if err != nil {
		return fmt.Errorf("leader release %s for %s: %w", p.Name, p.Holder, err)
	}
	return nil
}
