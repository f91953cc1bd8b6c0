package auth_test

import (
	"context"
	"errors"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/batonhq/baton/server/auth"
	"github.com/batonhq/baton/server/store"
	"github.com/batonhq/baton/server/store/sqlite"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestToken(t *testing.T) {
	t.Parallel()
	seen := map[string]bool{}
	for range 100 {
		tok := auth.NewToken()
		if len(tok) != auth.TokenLen || !strings.HasPrefix(tok, auth.TokenPrefix) {
			t.Fatalf("NewToken() = %q, want %d characters starting with %q", tok, auth.TokenLen, auth.TokenPrefix)
		}
		if err := auth.CheckToken(tok); err != nil {
			t.Fatalf("CheckToken(NewToken() = %q) = %v", tok, err)
		}
		if seen[tok] {
			t.Fatalf("NewToken() repeated %q", tok)
		}
		seen[tok] = true
	}
	good := auth.NewToken()
	flip := []byte(good)
	if flip[10] == 'a' {
		flip[10] = 'b'
	} else {
		flip[10] = 'a'
	}
	for _, tc := range []struct{ name, in string }{
		{"empty", ""},
		{"no prefix", good[len(auth.TokenPrefix):]},
		{"other prefix", "ghp_" + good[len(auth.TokenPrefix):]},
		{"truncated", good[:len(good)-1]},
		{"longer", good + "a"},
		{"upper case", strings.ToUpper(good)},
		{"typo", string(flip)},
		{"bad alphabet", good[:len(good)-1] + "1"},
	} {
		if err := auth.CheckToken(tc.in); !errors.Is(err, auth.ErrMalformed) {
			t.Errorf("CheckToken(%s %q) = %v, want ErrMalformed", tc.name, tc.in, err)
		}
	}
	if h := auth.HashToken(good); len(h) != 64 || h == auth.HashToken(auth.NewToken()) {
		t.Errorf("HashToken() = %q, want 64 hex digits, distinct per token", h)
	}
}

func TestParseBearer(t *testing.T) {
	t.Parallel()
	tok := auth.NewToken()
	for _, in := range []string{"Bearer " + tok, "bearer " + tok, "BEARER  " + tok + " "} {
		got, err := auth.ParseBearer(in)
		if err != nil || got != tok {
			t.Errorf("ParseBearer(%q) = %q, %v; want the token", in, got, err)
		}
	}
	if _, err := auth.ParseBearer(""); !errors.Is(err, auth.ErrNoToken) {
		t.Errorf("ParseBearer(\"\") = %v, want ErrNoToken", err)
	}
	for _, in := range []string{tok, "Basic " + tok, "Bearer", "Bearer ", "Bearer " + tok + "x", "Token " + tok,
		"Bearer " + strings.Repeat("a", 5000)} {
		if _, err := auth.ParseBearer(in); !errors.Is(err, auth.ErrMalformed) {
			t.Errorf("ParseBearer(%.40q) = %v, want ErrMalformed", in, err)
		}
	}
}

// FuzzBearer: parsing never panics; what it accepts is exactly a token
// that checks, round-trips and would be accepted again; everything else
// is refused as missing or malformed.
func FuzzBearer(f *testing.F) {
	tok := auth.NewToken()
	for _, s := range []string{"", "Bearer " + tok, "bearer " + tok, "Bearer  " + tok, tok, "Bearer baton_",
		"Bearer " + strings.ToUpper(tok), "Basic dXNlcjpwYXNz", "Bearer baton_" + strings.Repeat("a", 39),
		"Bearer \x00" + tok} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		got, err := auth.ParseBearer(in)
		if err != nil {
			if got != "" {
				t.Fatalf("ParseBearer(%q) = %q with error %v, want no token", in, got, err)
			}
			if !errors.Is(err, auth.ErrNoToken) && !errors.Is(err, auth.ErrMalformed) {
				t.Fatalf("ParseBearer(%q) error %v is neither ErrNoToken nor ErrMalformed", in, err)
			}
			return
		}
		if len(got) != auth.TokenLen || !strings.HasPrefix(got, auth.TokenPrefix) || auth.CheckToken(got) != nil {
			t.Fatalf("ParseBearer(%q) accepted %q, which is not a well-formed token", in, got)
		}
		again, err := auth.ParseBearer("Bearer " + got)
		if err != nil || again != got {
			t.Fatalf("ParseBearer(\"Bearer \" + %q) = %q, %v; want it to round-trip", got, again, err)
		}
		if !strings.Contains(in, got) {
			t.Fatalf("ParseBearer(%q) = %q, which is not in the input", in, got)
		}
	})
}

func TestRole(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		have, need auth.Role
		want       bool
	}{
		{auth.RoleViewer, auth.RoleViewer, true},
		{auth.RoleViewer, auth.RoleOperator, false},
		{auth.RoleOperator, auth.RoleViewer, true},
		{auth.RoleOperator, auth.RoleAdmin, false},
		{auth.RoleAdmin, auth.RoleOperator, true},
		{"", auth.RoleViewer, false},
		{"root", auth.RoleViewer, false},
	} {
		if got := tc.have.Allows(tc.need); got != tc.want {
			t.Errorf("Role(%q).Allows(%q) = %t, want %t", tc.have, tc.need, got, tc.want)
		}
	}
	if r, err := auth.ParseRole("Operator"); err != nil || r != auth.RoleOperator {
		t.Errorf("ParseRole(Operator) = %q, %v; want operator", r, err)
	}
	if _, err := auth.ParseRole("root"); err == nil {
		t.Error("ParseRole(root) = nil error, want one")
	}
	for _, tc := range []struct {
		jobs, job string
		want      bool
	}{
		{"", "anything", true},
		{"etl-*", "etl-orders", true},
		{"etl-*", "load", false},
		{"[", "[", false},
	} {
		if got := (auth.Identity{Jobs: tc.jobs}).MayJob(tc.job); got != tc.want {
			t.Errorf("Identity{Jobs: %q}.MayJob(%q) = %t, want %t", tc.jobs, tc.job, got, tc.want)
		}
	}
}

// fakeClock is a clock a test moves by hand.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// countingStore counts the token reads and writes that reach the store.
type countingStore struct {
	store.Store
	gets, touches atomic.Int64
}

func (s *countingStore) TokenGet(ctx context.Context, p *store.TokenGetParams) (*store.Token, error) {
	s.gets.Add(1)
	return s.Store.TokenGet(ctx, p)
}

func (s *countingStore) TokenTouch(ctx context.Context, p *store.TokenTouchParams) error {
	s.touches.Add(1)
	return s.Store.TokenTouch(ctx, p)
}

type testBundle struct {
	ctx   context.Context
	st    *countingStore
	clock *fakeClock
	a     *auth.Authenticator
}

func setup(t *testing.T) *testBundle {
	t.Helper()
	ctx := context.Background()
	sq, err := sqlite.Open(ctx, sqlite.Config{Path: filepath.Join(t.TempDir(), "baton.db")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sq.Close() })
	if err := sq.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	b := &testBundle{ctx: ctx, st: &countingStore{Store: sq}, clock: &fakeClock{now: time.Date(2026, 11, 21, 2, 0, 0, 0, time.UTC)}}
	b.a, err = auth.NewAuthenticator(auth.AuthenticatorConfig{Store: b.st, Logger: slog.New(slog.DiscardHandler), Clock: b.clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func (b *testBundle) create(t *testing.T, name string, role store.TokenRole, expires time.Time) (string, *store.Token) {
	t.Helper()
	secret := auth.NewToken()
	tok, err := b.st.TokenCreate(b.ctx, &store.TokenCreateParams{Name: name, Role: role, Hash: auth.HashToken(secret), ExpiresAt: expires})
	if err != nil {
		t.Fatal(err)
	}
	return "Bearer " + secret, tok
}

func TestAuthenticate(t *testing.T) {
	t.Parallel()
	b := setup(t)
	bearer, tok := b.create(t, "ci", store.TokenOperator, time.Time{})

	id, err := b.a.Authenticate(b.ctx, bearer)
	want := auth.Identity{Kind: auth.KindToken, Name: "ci", TokenID: tok.ID, Role: auth.RoleOperator}
	if err != nil || id != want {
		t.Fatalf("Authenticate() = %+v, %v; want %+v", id, err, want)
	}
	// Cached: the next calls within the TTL read nothing and write nothing.
	for range 10 {
		if _, err := b.a.Authenticate(b.ctx, bearer); err != nil {
			t.Fatalf("Authenticate() again = %v", err)
		}
	}
	if g, w := b.st.gets.Load(), int64(1); g != w {
		t.Errorf("store reads after 11 calls = %d, want %d", g, w)
	}
	if g := b.st.touches.Load(); g != 1 {
		t.Errorf("last-use writes after 11 calls = %d, want 1", g)
	}
	got, _ := b.st.TokenGet(b.ctx, &store.TokenGetParams{ID: tok.ID})
	if !got.LastUsedAt.Equal(b.clock.Now()) {
		t.Errorf("LastUsedAt = %v, want %v", got.LastUsedAt, b.clock.Now())
	}

	// A revocation straight in the store (another replica) applies once
	// the cached copy is older than the TTL, not before.
	if _, err := b.st.TokenRevoke(b.ctx, &store.TokenRevokeParams{ID: tok.ID}); err != nil {
		t.Fatal(err)
	}
	b.clock.Advance(auth.DefaultCacheTTL - time.Second)
	if _, err := b.a.Authenticate(b.ctx, bearer); err != nil {
		t.Fatalf("Authenticate() within the cache TTL after a remote revoke = %v, want the cached token", err)
	}
	b.clock.Advance(time.Second)
	if _, err := b.a.Authenticate(b.ctx, bearer); !errors.Is(err, auth.ErrRevoked) {
		t.Fatalf("Authenticate() a cache TTL after a revoke = %v, want ErrRevoked", err)
	}

	// Forget (a revoke through this batond) applies at once.
	bearer2, tok2 := b.create(t, "ops", store.TokenAdmin, time.Time{})
	if _, err := b.a.Authenticate(b.ctx, bearer2); err != nil {
		t.Fatal(err)
	}
	if _, err := b.st.TokenRevoke(b.ctx, &store.TokenRevokeParams{ID: tok2.ID}); err != nil {
		t.Fatal(err)
	}
	b.a.Forget(tok2.ID)
	if _, err := b.a.Authenticate(b.ctx, bearer2); !errors.Is(err, auth.ErrRevoked) {
		t.Fatalf("Authenticate() after Forget = %v, want ErrRevoked", err)
	}

	// Expiry is checked on every call, cached or not.
	bearer3, _ := b.create(t, "temp", store.TokenViewer, b.clock.Now().Add(10*time.Second))
	if _, err := b.a.Authenticate(b.ctx, bearer3); err != nil {
		t.Fatal(err)
	}
	b.clock.Advance(10 * time.Second)
	if _, err := b.a.Authenticate(b.ctx, bearer3); !errors.Is(err, auth.ErrExpired) {
		t.Fatalf("Authenticate() at expiry = %v, want ErrExpired", err)
	}

	// Unknown and malformed tokens; an unknown one is cached as unknown.
	reads := b.st.gets.Load()
	unknown := "Bearer " + auth.NewToken()
	for range 3 {
		if _, err := b.a.Authenticate(b.ctx, unknown); !errors.Is(err, auth.ErrUnknown) {
			t.Fatalf("Authenticate(unknown) = %v, want ErrUnknown", err)
		}
	}
	if g := b.st.gets.Load() - reads; g != 1 {
		t.Errorf("store reads for 3 calls with one unknown token = %d, want 1", g)
	}
	if _, err := b.a.Authenticate(b.ctx, "Bearer nope"); !errors.Is(err, auth.ErrMalformed) {
		t.Errorf("Authenticate(malformed) = %v, want ErrMalformed", err)
	}
	if _, err := b.a.Authenticate(b.ctx, ""); !errors.Is(err, auth.ErrNoToken) {
		t.Errorf("Authenticate(\"\") = %v, want ErrNoToken", err)
	}
}

// TestTouchThrottled: a token used all the time writes its last use once a
// minute.
func TestTouchThrottled(t *testing.T) {
	t.Parallel()
	b := setup(t)
	bearer, _ := b.create(t, "ci", store.TokenViewer, time.Time{})
	for range 240 { // 4 minutes, a call every second
		if _, err := b.a.Authenticate(b.ctx, bearer); err != nil {
			t.Fatal(err)
		}
		b.clock.Advance(time.Second)
	}
	if g := b.st.touches.Load(); g != 4 {
		t.Errorf("last-use writes over 4 minutes = %d, want 4", g)
	}
	if g := b.st.gets.Load(); g != 8 {
		t.Errorf("store reads over 4 minutes with a 30s cache = %d, want 8", g)
	}
}
