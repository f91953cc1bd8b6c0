package storetest

import (
	"crypto/sha256"
	"encoding/hex"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/google/go-cmp/cmp"

	"github.com/batonhq/baton/server/store"
)

// hashOf returns a token hash as the auth package computes it.
func hashOf(s string) string {
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:])
}

func (b *bundle) token(t *testing.T, p *store.TokenCreateParams) *store.Token {
	t.Helper()
	tok, err := b.s.TokenCreate(b.ctx, p)
	if err != nil {
		t.Fatalf("TokenCreate(%s) = %v", p.Name, err)
	}
	return tok
}

func (b *bundle) getToken(t *testing.T, p *store.TokenGetParams) *store.Token {
	t.Helper()
	tok, err := b.s.TokenGet(b.ctx, p)
	if err != nil {
		t.Fatalf("TokenGet(%+v) = %v", p, err)
	}
	return tok
}

func testToken(t *testing.T, h Harness) {
	b := setup(t, h)
	list := func() []*store.Token {
		t.Helper()
		got, err := b.s.TokenList(b.ctx, &store.TokenListParams{})
		if err != nil {
			t.Fatalf("TokenList() = %v", err)
		}
		return got
	}
	if got := list(); len(got) != 0 {
		t.Fatalf("TokenList() on a new store = %v, want none", got)
	}

	expires := ms(time.Now().Add(time.Hour))
	root := b.token(t, &store.TokenCreateParams{Name: "root", Role: store.TokenAdmin, Hash: hashOf("a"), CreatedBy: "batond init"})
	if root.ID <= 0 {
		t.Fatalf("TokenCreate(root).ID = %d, want positive", root.ID)
	}
	checkTime(t, "TokenCreate(root).CreatedAt", root.CreatedAt)
	ci := b.token(t, &store.TokenCreateParams{Name: "ci", Role: store.TokenOperator, Jobs: "etl-*",
		Hash: hashOf("b"), CreatedBy: "token:root", ExpiresAt: expires})
	want := &store.Token{ID: ci.ID, Name: "ci", Role: store.TokenOperator, Jobs: "etl-*", Hash: hashOf("b"),
		CreatedAt: ci.CreatedAt, CreatedBy: "token:root", ExpiresAt: expires}
	if diff := cmp.Diff(want, ci); diff != "" {
		t.Errorf("TokenCreate(ci) mismatch (-want +got):\n%s", diff)
	}
	if ci.ID <= root.ID {
		t.Errorf("TokenCreate ids %d then %d, want increasing", root.ID, ci.ID)
	}

	// A name or a hash is used once.
	for _, dup := range []*store.TokenCreateParams{
		{Name: "ci", Role: store.TokenViewer, Hash: hashOf("c")},
		{Name: "other", Role: store.TokenViewer, Hash: hashOf("b")},
	} {
		_, err := b.s.TokenCreate(b.ctx, dup)
		wantErr(t, "TokenCreate(duplicate "+dup.Name+")", err, store.ErrExists)
	}
	for _, bad := range []*store.TokenCreateParams{
		{Name: "", Role: store.TokenViewer, Hash: hashOf("d")},
		{Name: "has space", Role: store.TokenViewer, Hash: hashOf("d")},
		{Name: "123", Role: store.TokenViewer, Hash: hashOf("d")},
		{Name: "a/b", Role: store.TokenViewer, Hash: hashOf("d")},
		{Name: strings.Repeat("n", store.MaxTokenName+1), Role: store.TokenViewer, Hash: hashOf("d")},
		{Name: "x", Role: "root", Hash: hashOf("d")},
		{Name: "x", Role: store.TokenViewer, Hash: "abc"},
		{Name: "x", Role: store.TokenViewer, Hash: strings.ToUpper(hashOf("d"))},
		{Name: "x", Role: store.TokenViewer, Jobs: "etl-[", Hash: hashOf("d")},
	} {
		_, err := b.s.TokenCreate(b.ctx, bad)
		wantBadInput(t, "TokenCreate(bad "+bad.Name+")", err)
	}

	// Lookups by id, name and hash find the same token.
	for _, p := range []*store.TokenGetParams{{ID: ci.ID}, {Name: "ci"}, {Hash: hashOf("b")}} {
		if diff := cmp.Diff(ci, b.getToken(t, p)); diff != "" {
			t.Errorf("TokenGet(%+v) mismatch (-want +got):\n%s", p, diff)
		}
	}
	for _, p := range []*store.TokenGetParams{{ID: 999999}, {Name: "nobody"}, {Hash: hashOf("zzz")}} {
		_, err := b.s.TokenGet(b.ctx, p)
		wantErr(t, "TokenGet(unknown)", err, store.ErrNotFound)
	}
	for _, p := range []*store.TokenGetParams{{}, {ID: 1, Name: "root"}} {
		_, err := b.s.TokenGet(b.ctx, p)
		wantBadInput(t, "TokenGet(bad)", err)
	}
	if diff := cmp.Diff([]*store.Token{root, ci}, list()); diff != "" {
		t.Errorf("TokenList() mismatch (-want +got):\n%s", diff)
	}

	// last_used_at only moves forward.
	t1 := ms(time.Now().Add(-time.Minute))
	for _, at := range []time.Time{t1, t1.Add(-time.Hour)} {
		if err := b.s.TokenTouch(b.ctx, &store.TokenTouchParams{ID: ci.ID, At: at}); err != nil {
			t.Fatalf("TokenTouch(%v) = %v", at, err)
		}
	}
	if got := b.getToken(t, &store.TokenGetParams{ID: ci.ID}).LastUsedAt; !got.Equal(t1) {
		t.Errorf("LastUsedAt after touches at t1 and t1-1h = %v, want %v", got, t1)
	}
	t2 := t1.Add(30 * time.Second)
	if err := b.s.TokenTouch(b.ctx, &store.TokenTouchParams{ID: ci.ID, At: t2}); err != nil {
		t.Fatalf("TokenTouch(t2) = %v", err)
	}
	if got := b.getToken(t, &store.TokenGetParams{ID: ci.ID}).LastUsedAt; !got.Equal(t2) {
		t.Errorf("LastUsedAt after a touch at t2 = %v, want %v", got, t2)
	}
	wantErr(t, "TokenTouch(unknown)", b.s.TokenTouch(b.ctx, &store.TokenTouchParams{ID: 999999, At: t2}), store.ErrNotFound)

	// Revoking keeps the token (and its name) and the first revocation time.
	if !ci.Usable(time.Now()) || ci.Usable(expires) {
		t.Errorf("Usable() of a live token expiring at %v: now %t, at expiry %t; want true, false",
			expires, ci.Usable(time.Now()), ci.Usable(expires))
	}
	tr := ms(time.Now())
	revoked, err := b.s.TokenRevoke(b.ctx, &store.TokenRevokeParams{Name: "ci", At: tr})
	if err != nil {
		t.Fatalf("TokenRevoke(ci) = %v", err)
	}
	if !revoked.RevokedAt.Equal(tr) || revoked.Usable(time.Now()) {
		t.Errorf("TokenRevoke(ci).RevokedAt = %v (usable %t), want %v and unusable", revoked.RevokedAt, revoked.Usable(time.Now()), tr)
	}
	again, err := b.s.TokenRevoke(b.ctx, &store.TokenRevokeParams{ID: ci.ID, At: tr.Add(time.Minute)})
	if err != nil {
		t.Fatalf("TokenRevoke(ci) again = %v", err)
	}
	if !again.RevokedAt.Equal(tr) {
		t.Errorf("TokenRevoke(ci) again: RevokedAt = %v, want the first %v", again.RevokedAt, tr)
	}
	if diff := cmp.Diff(again, b.getToken(t, &store.TokenGetParams{Hash: hashOf("b")})); diff != "" {
		t.Errorf("TokenGet(revoked) mismatch (-want +got):\n%s", diff)
	}
	_, err = b.s.TokenRevoke(b.ctx, &store.TokenRevokeParams{Name: "nobody"})
	wantErr(t, "TokenRevoke(unknown)", err, store.ErrNotFound)
	_, err = b.s.TokenRevoke(b.ctx, &store.TokenRevokeParams{})
	wantBadInput(t, "TokenRevoke(no key)", err)
	_, err = b.s.TokenCreate(b.ctx, &store.TokenCreateParams{Name: "ci", Role: store.TokenViewer, Hash: hashOf("e")})
	wantErr(t, "TokenCreate(name of a revoked token)", err, store.ErrExists)

	// Revoking with a zero time uses the store's clock.
	r2, err := b.s.TokenRevoke(b.ctx, &store.TokenRevokeParams{ID: root.ID})
	if err != nil {
		t.Fatalf("TokenRevoke(root) = %v", err)
	}
	checkTime(t, "TokenRevoke(root).RevokedAt", r2.RevokedAt)
}

func (b *bundle) audit(t *testing.T, p *store.AuditListParams) []*store.AuditRecord {
	t.Helper()
	got, err := b.s.AuditList(b.ctx, p)
	if err != nil {
		t.Fatalf("AuditList(%+v) = %v", p, err)
	}
	return got
}

func auditIDs(recs []*store.AuditRecord) []int64 {
	out := []int64{}
	for _, r := range recs {
		out = append(out, r.ID)
	}
	return out
}

func testAudit(t *testing.T, h Harness) {
	b := setup(t, h)
	if got := b.audit(t, &store.AuditListParams{}); len(got) != 0 {
		t.Fatalf("AuditList() on a new store = %v, want none", got)
	}
	now := ms(time.Now())
	old := now.Add(-72 * time.Hour)
	recs := []*store.AuditRecord{
		{At: old, Who: "token:root", Peer: "10.0.0.1:5000", Method: "/baton.v1.JobService/ApplyJob", Job: "etl", Code: "OK"},
		{At: old.Add(time.Second), Who: "anonymous", Peer: "10.0.0.2:5000", Method: "/baton.v1.RunService/StartRun",
			Job: "etl", Code: "Unauthenticated", Message: "no token"},
		{Who: "token:ci", Peer: "127.0.0.1:1", Method: "/baton.v1.RunService/StartRun", Job: "etl", RunID: 7, Code: "OK"},
		{At: now, Who: "token:ci", Peer: "127.0.0.1:1", Method: "/baton.v1.RunService/CancelRun", Job: "load", RunID: 8,
			Code: "PermissionDenied", Message: "needs operator"},
	}
	if err := b.s.AuditAppend(b.ctx, &store.AuditAppendParams{Records: recs}); err != nil {
		t.Fatalf("AuditAppend() = %v", err)
	}
	for i, r := range recs {
		if r.ID <= 0 || (i > 0 && r.ID <= recs[i-1].ID) {
			t.Fatalf("AuditAppend ids = %v, want positive and increasing", auditIDs(recs))
		}
		checkTime(t, "AuditRecord.At", r.At)
	}
	if err := b.s.AuditAppend(b.ctx, &store.AuditAppendParams{}); err != nil {
		t.Fatalf("AuditAppend(none) = %v", err)
	}
	wantBadInput(t, "AuditAppend(nil record)", b.s.AuditAppend(b.ctx, &store.AuditAppendParams{Records: []*store.AuditRecord{nil}}))

	newestFirst := []*store.AuditRecord{recs[3], recs[2], recs[1], recs[0]}
	if diff := cmp.Diff(newestFirst, b.audit(t, &store.AuditListParams{})); diff != "" {
		t.Errorf("AuditList() mismatch (-want +got):\n%s", diff)
	}
	for _, tc := range []struct {
		name string
		p    store.AuditListParams
		want []int64
	}{
		{"who", store.AuditListParams{Who: "token:ci"}, auditIDs(newestFirst[:2])},
		{"job", store.AuditListParams{Job: "etl"}, auditIDs(newestFirst[1:])},
		{"since", store.AuditListParams{Since: now.Add(-time.Hour)}, auditIDs(newestFirst[:2])},
		{"since the second old one", store.AuditListParams{Since: old.Add(time.Second)}, auditIDs(newestFirst[:3])},
		{"page 1", store.AuditListParams{Limit: 2}, auditIDs(newestFirst[:2])},
		{"page 2", store.AuditListParams{Limit: 2, BeforeID: recs[2].ID}, auditIDs(newestFirst[2:])},
		{"who and job", store.AuditListParams{Who: "token:ci", Job: "etl"}, []int64{recs[2].ID}},
		{"nobody", store.AuditListParams{Who: "token:nobody"}, []int64{}},
	} {
		if diff := cmp.Diff(tc.want, auditIDs(b.audit(t, &tc.p))); diff != "" {
			t.Errorf("AuditList(%s) ids mismatch (-want +got):\n%s", tc.name, diff)
		}
	}
	for _, bad := range []store.AuditListParams{{Limit: -1}, {Limit: store.MaxAuditList + 1}, {BeforeID: -1}} {
		_, err := b.s.AuditList(b.ctx, &bad)
		wantBadInput(t, "AuditList(bad)", err)
	}

	// Oversized fields are clipped, and invalid UTF-8 replaced, not refused.
	long := &store.AuditRecord{Who: "token:\xff", Method: strings.Repeat("m", 1000), Code: "Internal",
		Message: strings.Repeat("é", 3000)}
	if err := b.s.AuditAppend(b.ctx, &store.AuditAppendParams{Records: []*store.AuditRecord{long}}); err != nil {
		t.Fatalf("AuditAppend(long) = %v", err)
	}
	got := b.audit(t, &store.AuditListParams{Limit: 1})[0]
	if len(got.Method) != store.MaxAuditField || len(got.Message) > store.MaxAuditMessage ||
		!utf8.ValidString(got.Message) || got.Who != "token:\uFFFD" {
		t.Errorf("AuditList() of a long record = method %d bytes, message %d bytes (valid %t), who %q; "+
			"want %d, at most %d, valid, %q", len(got.Method), len(got.Message), utf8.ValidString(got.Message), got.Who,
			store.MaxAuditField, store.MaxAuditMessage, "token:\uFFFD")
	}

	// Purge removes the oldest records in batches, never the last day's.
	_, err := b.s.AuditPurge(b.ctx, &store.AuditPurgeParams{Before: now.Add(-time.Hour)})
	wantBadInput(t, "AuditPurge(before an hour ago)", err)
	_, err = b.s.AuditPurge(b.ctx, &store.AuditPurgeParams{Before: now.Add(-48 * time.Hour), Limit: -1})
	wantBadInput(t, "AuditPurge(negative limit)", err)
	for i, want := range []int{1, 1, 0} {
		n, err := b.s.AuditPurge(b.ctx, &store.AuditPurgeParams{Before: now.Add(-48 * time.Hour), Limit: 1})
		if err != nil || n != want {
			t.Fatalf("AuditPurge #%d = %d, %v; want %d", i+1, n, err, want)
		}
	}
	rest := b.audit(t, &store.AuditListParams{})
	if diff := cmp.Diff([]int64{long.ID, recs[3].ID, recs[2].ID}, auditIDs(rest)); diff != "" {
		t.Errorf("AuditList() after purge ids mismatch (-want +got):\n%s", diff)
	}
}
