package auth

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/batonhq/baton/server/store"
)

// Errors of [Authenticator.Authenticate] besides [ErrNoToken] and
// [ErrMalformed].
var (
	// ErrUnknown means no token with this secret exists.
	ErrUnknown = errors.New("unknown API token")
	// ErrRevoked means the token was revoked.
	ErrRevoked = errors.New("revoked API token")
	// ErrExpired means the token's expiry has passed.
	ErrExpired = errors.New("expired API token")
)

// Defaults of [AuthenticatorConfig].
const (
	// DefaultCacheTTL is how long a looked-up token is trusted before it is
	// read from the store again: the longest a revocation made on another
	// batond replica (or straight in the store) takes to apply.
	DefaultCacheTTL = 30 * time.Second
	// TouchEvery is how often, at most, a token's last use is written.
	TouchEvery = time.Minute
	// maxCache bounds the cache; past it the cache starts over.
	maxCache = 10000
)

// TokenStore is the part of the store an Authenticator reads.
type TokenStore interface {
	TokenGet(ctx context.Context, p *store.TokenGetParams) (*store.Token, error)
	TokenTouch(ctx context.Context, p *store.TokenTouchParams) error
}

// AuthenticatorConfig configures [NewAuthenticator].
type AuthenticatorConfig struct {
	// Store is required.
	Store TokenStore
	// Logger is required.
	Logger *slog.Logger
	// Clock defaults to time.Now.
	Clock func() time.Time
	// CacheTTL defaults to DefaultCacheTTL.
	CacheTTL time.Duration
}

// Authenticator turns bearer tokens into identities. It caches what it
// reads from the store for CacheTTL, so the cost of a call with a known
// token is a hash and a map lookup; a token unknown to the store is cached
// as unknown for as long. A token revoked through [Authenticator.Forget]
// (the TokenService of this batond) is refused at once; one revoked
// elsewhere, within CacheTTL. Expiry is checked on every call. It is safe
// for concurrent use.
type Authenticator struct {
	st    TokenStore
	log   *slog.Logger
	clock func() time.Time
	ttl   time.Duration

	mu    sync.Mutex
	cache map[string]*cached // by token hash
}

type cached struct {
	tok     *store.Token // nil: no such token
	fetched time.Time
	touched time.Time
}

// NewAuthenticator returns an Authenticator reading tokens from cfg.Store.
func NewAuthenticator(cfg AuthenticatorConfig) (*Authenticator, error) {
	if cfg.Store == nil || cfg.Logger == nil {
		return nil, errors.New("auth: Store and Logger are required")
	}
	if cfg.Clock == nil {
		cfg.Clock = time.Now
	}
	if cfg.CacheTTL <= 0 {
		cfg.CacheTTL = DefaultCacheTTL
	}
	return &Authenticator{st: cfg.Store, log: cfg.Logger, clock: cfg.Clock, ttl: cfg.CacheTTL,
		cache: make(map[string]*cached)}, nil
}

// Now returns the Authenticator's clock.
func (a *Authenticator) Now() time.Time { return a.clock() }

// Authenticate returns the identity of the caller presenting the
// authorization value (the whole "Bearer ..." string). Its errors wrap
// [ErrNoToken], [ErrMalformed], [ErrUnknown], [ErrRevoked] or
// [ErrExpired] when the caller is at fault; any other error is the
// store's.
func (a *Authenticator) Authenticate(ctx context.Context, authorization string) (Identity, error) {
	secret, err := ParseBearer(authorization)
	if err != nil {
		return Identity{}, err
	}
	hash := HashToken(secret)
	now := a.clock()

	a.mu.Lock()
	c, ok := a.cache[hash]
	if !ok || now.Sub(c.fetched) >= a.ttl || now.Before(c.fetched) {
		a.mu.Unlock()
		tok, err := a.st.TokenGet(ctx, &store.TokenGetParams{Hash: hash})
		switch {
		case errors.Is(err, store.ErrNotFound):
			tok = nil
		case err != nil:
			return Identity{}, fmt.Errorf("look the token up: %w", err)
		}
		a.mu.Lock()
		if len(a.cache) >= maxCache {
			clear(a.cache)
		}
		var touched time.Time
		if old, ok := a.cache[hash]; ok {
			touched = old.touched
		}
		c = &cached{tok: tok, fetched: now, touched: touched}
		a.cache[hash] = c
	}
	tok := c.tok
	touch := tok != nil && tok.Usable(now) && now.Sub(c.touched) >= TouchEvery
	if touch {
		c.touched = now
	}
	a.mu.Unlock()

	switch {
	case tok == nil:
		return Identity{}, ErrUnknown
	case !tok.RevokedAt.IsZero():
		return Identity{}, fmt.Errorf("%w: token %q was revoked at %s", ErrRevoked, tok.Name, tok.RevokedAt.UTC().Format(time.RFC3339))
	case !tok.Usable(now):
		return Identity{}, fmt.Errorf("%w: token %q expired at %s", ErrExpired, tok.Name, tok.ExpiresAt.UTC().Format(time.RFC3339))
	}
	if touch {
		// Once a minute per token: a failure costs only the last-used time.
		if err := a.st.TokenTouch(ctx, &store.TokenTouchParams{ID: tok.ID, At: now}); err != nil && ctx.Err() == nil {
			a.log.WarnContext(ctx, "cannot record a token's last use", slog.String("token", tok.Name), slog.Any("error", err))
		}
	}
	return Identity{Kind: KindToken, Name: tok.Name, TokenID: tok.ID, Role: Role(tok.Role), Jobs: tok.Jobs}, nil
}

// Forget drops the cached copy of token id, so its revocation applies to
// the next call.
func (a *Authenticator) Forget(id int64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for h, c := range a.cache {
		if c.tok != nil && c.tok.ID == id {
			delete(a.cache, h)
		}
	}
}
