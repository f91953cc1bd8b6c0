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
	// An upsert that cannot lose a write: UPDATE under a serializable
	// range lock, then INSERT if no row matched. (A bare MERGE or IF
	// EXISTS can, under concurrency.)
	qAgentUpsert = register("agent_upsert", `
UPDATE {{schema}}.agents WITH (SERIALIZABLE)
SET labels = @labels, slots = @slots, version = @version, hostname = @hostname, os = @os,
    state = @state, connected_at = @connected, last_seen_at = @seen
WHERE name = @name;
IF @@ROWCOUNT = 0
    INSERT INTO {{schema}}.agents (name, labels, slots, version, hostname, os, state, connected_at, last_seen_at)
    VALUES (@name, @labels, @slots, @version, @hostname, @os, @state, @connected, @seen);`)

	qAgentList = register("agent_list", `
SELECT name, labels, slots, version, hostname, os, state, connected_at, last_seen_at
FROM {{schema}}.agents ORDER BY name`)

	// qLeaderAcquire takes the lease when it is free or expired (a
	// takeover: the token grows) or renews it for its holder (the token
	// stays while unexpired). It changes nothing, and returns no row, while
	// another holder's lease is unexpired. The first acquirer of a name
	// creates its row; the serializable UPDATE range-locks the absent key,
	// so two first acquirers run one after the other. Expiry is judged by
	// the server clock only.
	qLeaderAcquire = register("leader_acquire", `
DECLARE @out TABLE (token BIGINT NOT NULL, expires_at DATETIME2(3) NOT NULL);
UPDATE {{schema}}.leader_lease WITH (SERIALIZABLE)
SET token = CASE WHEN holder = @holder AND expires_at > SYSUTCDATETIME() THEN token ELSE token + 1 END,
    holder = @holder,
    expires_at = DATEADD(millisecond, @ttl_ms, SYSUTCDATETIME())
OUTPUT inserted.token, inserted.expires_at INTO @out
WHERE name = @name AND (holder = @holder OR holder = N'' OR expires_at <= SYSUTCDATETIME());
IF @@ROWCOUNT = 0
    INSERT INTO {{schema}}.leader_lease (name, holder, token, expires_at)
    OUTPUT inserted.token, inserted.expires_at INTO @out
    SELECT @name, @holder, 1, DATEADD(millisecond, @ttl_ms, SYSUTCDATETIME())
    WHERE NOT EXISTS (SELECT 1 FROM {{schema}}.leader_lease WITH (UPDLOCK, HOLDLOCK) WHERE name = @name);
SELECT token, expires_at FROM @out;`)

	// qLeaderCheck fences the transaction it runs in: REPEATABLEREAD keeps
	// the shared lock on the lease row until commit, so a takeover (an
	// UPDATE of that row) waits until this transaction has committed. It
	// is a locking read under READ_COMMITTED_SNAPSHOT too.
	qLeaderCheck = register("leader_check", `
SELECT COUNT(*) FROM {{schema}}.leader_lease WITH (REPEATABLEREAD)
WHERE name = @name AND holder = @holder AND token = @token AND expires_at > SYSUTCDATETIME()`)

	qLeaderRelease = register("leader_release", `
UPDATE {{schema}}.leader_lease
SET holder = N'', expires_at = CAST('19700101' AS DATETIME2(3))
WHERE name = @name AND holder = @holder AND token = @token`)
)

// AgentUpsert records an agent's identity and state; see
// [store.Store.AgentUpsert]. Zero times are stored as unknown.
func (s *Store) AgentUpsert(ctx context.Context, p *store.AgentUpsertParams) error {
	a := p.Agent
	switch {
	case a == nil:
		return errors.New("agent upsert: agent is nil")
	case a.Slots < 0 || a.Slots > math.MaxInt32:
		return fmt.Errorf("agent upsert %s: slots %d is out of range", a.Name, a.Slots)
	case !a.State.Valid():
		return fmt.Errorf("agent upsert %s: state %q: want connected, disconnected or lost", a.Name, a.State)
	}
	if err := checkKey("agent upsert: name", a.Name, false); err != nil {
		return err
	}
	for _, f := range []struct{ name, v string }{{"version", a.Version}, {"hostname", a.Hostname}, {"os", a.OS}} {
		if err := checkKey("agent upsert "+a.Name+": "+f.name, f.v, true); err != nil {
			return err
		}
	}
	err := s.write(ctx, func(tx *Store) error {
		_, err := tx.exec(ctx, qAgentUpsert,
			sql.Named("name", a.Name), sql.Named("labels", encodeMap(a.Labels)), sql.Named("slots", int32(a.Slots)),
			sql.Named("version", a.Version), sql.Named("hostname", a.Hostname), sql.Named("os", a.OS),
			sql.Named("state", string(a.State)), sql.Named("connected", timeOrNil(a.ConnectedAt)),
			sql.Named("seen", timeOrNil(a.LastSeenAt)))
		return err
	})
	if err != nil {
		return fmt.Errorf("agent upsert %s: %w", a.Name, err)
	}
	return nil
}

// AgentList returns every known agent ordered by name.
func (s *Store) AgentList(ctx context.Context, _ *store.AgentListParams) ([]*store.Agent, error) {
	var out []*store.Agent
	err := s.read(ctx, func(s *Store) error {
		out = nil
		return s.each(ctx, qAgentList, nil, func(r *sql.Rows) error {
			var a store.Agent
			if err := r.Scan(&a.Name, jsonMap{&a.Labels}, &a.Slots, &a.Version, &a.Hostname, &a.OS, &a.State,
				nullTime{&a.ConnectedAt}, nullTime{&a.LastSeenAt}); err != nil {
				return err
			}
			out = append(out, &a)
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("agent list: %w", err)
	}
	return out, nil
}

func checkLease(name, holder string) error {
	if err := checkKey("name", name, false); err != nil {
		return err
	}
	return checkKey("holder", holder, false)
}

// LeaderAcquire takes or renews the named lease; see
// [store.Store.LeaderAcquire]. ExpiresAt is by the server's clock; a
// holder should act as leader only until its own monotonic clock, started
// before the call, has run TTL minus a safety margin.
func (s *Store) LeaderAcquire(ctx context.Context, p *store.LeaderAcquireParams) (*store.Lease, error) {
	if err := checkLease(p.Name, p.Holder); err != nil {
		return nil, fmt.Errorf("leader acquire: %w", err)
	}
	if err := checkTTL(p.TTL); err != nil {
		return nil, fmt.Errorf("leader acquire %s: %w", p.Name, err)
	}
	l := &store.Lease{Name: p.Name, Holder: p.Holder}
	err := s.write(ctx, func(tx *Store) error {
		var expires time.Time
		err := tx.one(ctx, qLeaderAcquire, []any{
			sql.Named("name", p.Name), sql.Named("holder", p.Holder), sql.Named("ttl_ms", ms(p.TTL)),
		}, &l.Token, utcTime{&expires})
		if errors.Is(err, sql.ErrNoRows) {
			return store.ErrNotLeader
		}
		l.ExpiresAt = expires
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("leader acquire %s for %s: %w", p.Name, p.Holder, err)
	}
	return l, nil
}

// LeaderCheck returns [store.ErrNotLeader] unless Holder holds the named
// lease with Token, unexpired. Inside InTx it fences the transaction: it
// keeps a shared lock on the lease row until commit, so no takeover can
// commit before this transaction does.
func (s *Store) LeaderCheck(ctx context.Context, p *store.LeaderCheckParams) error {
	if err := checkLease(p.Name, p.Holder); err != nil {
		return fmt.Errorf("leader check: %w", err)
	}
	var n int
	err := s.read(ctx, func(s *Store) error {
		return s.one(ctx, qLeaderCheck, []any{
			sql.Named("name", p.Name), sql.Named("holder", p.Holder), sql.Named("token", p.Token),
		}, &n)
	})
	if err == nil && n == 0 {
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
		_, err := tx.exec(ctx, qLeaderRelease,
			sql.Named("name", p.Name), sql.Named("holder", p.Holder), sql.Named("token", p.Token))
		return err
	})
	if err != nil {
		return fmt.Errorf("leader release %s for %s: %w", p.Name, p.Holder, err)
	}
	return nil
}
