package server

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"log/slog"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	batonv1 "github.com/batonhq/baton/gen/baton/v1"
	"github.com/batonhq/baton/server/auth"
	"github.com/batonhq/baton/server/dispatch"
	"github.com/batonhq/baton/server/store"
	"github.com/batonhq/baton/server/store/sqlite"
)

// TestMethodTable: every method of every service batond registers is in
// the access table (so a new RPC cannot be served unprotected), the table
// names nothing else, and each entry is coherent.
func TestMethodTable(t *testing.T) {
	t.Parallel()
	g := grpc.NewServer()
	(&Server{}).register(g, &runService{})
	batonv1.RegisterAgentServiceServer(g, dispatch.NewService(nil, nil, dispatch.Guard{}))
	served := map[string]bool{}
	for svc, info := range g.GetServiceInfo() {
		for _, m := range info.Methods {
			name := "/" + svc + "/" + m.Name
			served[name] = true
			a, ok := methods[name]
			if !ok {
				t.Errorf("%s is served but not in the access table (server/authz.go methods): say which role it needs", name)
				continue
			}
			if a.agent {
				if name != batonv1.AgentService_Connect_FullMethodName {
					t.Errorf("%s is exempt from token authentication; only the agents' stream may be", name)
				}
				continue
			}
			if !a.role.Valid() {
				t.Errorf("%s needs role %q, want viewer, operator or admin", name, a.role)
			}
			if a.mutating && a.role == auth.RoleViewer {
				t.Errorf("%s mutates but needs only the viewer role", name)
			}
			if a.scope == scopeJob && a.subject == subjNone && name != batonv1.JobService_ApplyJob_FullMethodName {
				t.Errorf("%s acts on a job but names no subject for tokens limited to jobs", name)
			}
		}
	}
	for name := range methods {
		if !served[name] {
			t.Errorf("the access table lists %s, which batond does not serve", name)
		}
	}
	if len(served) < 19 {
		t.Errorf("found %d methods, want every method of the six services", len(served))
	}
}

// TestGuardUnknownMethod: a method missing from the table is refused, and
// the refusal audited.
func TestGuardUnknownMethod(t *testing.T) {
	t.Parallel()
	a := newAuditor(&memAudit{}, slog.New(slog.DiscardHandler), time.Now, DefaultAuditRetention, prometheus.NewRegistry(), 1)
	g := &guard{audit: a, log: slog.New(slog.DiscardHandler)}
	called := false
	_, err := g.unary(context.Background(), &batonv1.ListJobsRequest{}, &grpc.UnaryServerInfo{FullMethod: "/baton.v1.JobService/NewThing"},
		func(context.Context, any) (any, error) { called = true; return nil, nil })
	if err == nil || called || !strings.Contains(err.Error(), "access table") {
		t.Fatalf("unary(unknown method) = %v, handler called %t; want refused without calling it", err, called)
	}
	select {
	case r := <-a.queue:
		if r.Code != "PermissionDenied" || r.Method != "/baton.v1.JobService/NewThing" {
			t.Errorf("audit record = %+v, want the refusal", r)
		}
	default:
		t.Error("no audit record of the refusal")
	}
}

// memAudit is an auditStore in memory. AuditPurge returns the counts of
// purgeNs in turn, then 0.
type memAudit struct {
	mu      sync.Mutex
	recs    []*store.AuditRecord
	purges  []store.AuditPurgeParams
	purgeNs []int
}

func (m *memAudit) AuditAppend(_ context.Context, p *store.AuditAppendParams) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.recs = append(m.recs, p.Records...)
	return nil
}

func (m *memAudit) AuditPurge(_ context.Context, p *store.AuditPurgeParams) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.purges = append(m.purges, *p)
	if len(m.purgeNs) == 0 {
		return 0, nil
	}
	n := m.purgeNs[0]
	m.purgeNs = m.purgeNs[1:]
	return n, nil
}

func (m *memAudit) all() []*store.AuditRecord {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]*store.AuditRecord(nil), m.recs...)
}

func counterValue(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	t.Fatalf("metric %s not registered", name)
	return 0
}

// TestAuditorQueueFull: with the queue full, a mutating call's record is
// written by the call itself and a refused call's is dropped and counted;
// stopping writes what is queued, and later records are written directly.
func TestAuditorQueueFull(t *testing.T) {
	t.Parallel()
	st := &memAudit{}
	reg := prometheus.NewRegistry()
	a := newAuditor(st, slog.New(slog.DiscardHandler), time.Now, DefaultAuditRetention, reg, 2)
	ctx := context.Background()
	rec := func(method string) *store.AuditRecord { return &store.AuditRecord{Method: method, Code: "OK"} }

	a.record(ctx, rec("queued-1"), false)
	a.record(ctx, rec("queued-2"), true)
	a.record(ctx, rec("refused-dropped"), false)
	a.record(ctx, rec("mutating-direct"), true)
	if got := counterValue(t, reg, "baton_audit_dropped_total"); got != 1 {
		t.Errorf("baton_audit_dropped_total = %v, want 1", got)
	}
	if got := st.all(); len(got) != 1 || got[0].Method != "mutating-direct" {
		t.Fatalf("records written before the writer runs = %+v, want only the mutating one", got)
	}

	// The writer drains the queue as it stops.
	stopped, cancel := context.WithCancel(ctx)
	cancel()
	a.run(stopped)
	a.record(ctx, rec("after-stop"), false)
	var methods []string
	for _, r := range st.all() {
		methods = append(methods, r.Method)
	}
	if got, want := strings.Join(methods, ","), "mutating-direct,queued-1,queued-2,after-stop"; got != want {
		t.Errorf("records written = %s, want %s", got, want)
	}
	if got := counterValue(t, reg, "baton_audit_records_total"); got != 4 {
		t.Errorf("baton_audit_records_total = %v, want 4", got)
	}
}

// TestAuditorPurge: the purge removes records older than the retention, a
// batch at a time until a batch comes back short.
func TestAuditorPurge(t *testing.T) {
	t.Parallel()
	st := &memAudit{purgeNs: []int{purgeBatch, purgeBatch, 3}}
	now := time.Date(2026, 11, 21, 2, 0, 0, 0, time.UTC)
	a := newAuditor(st, slog.New(slog.DiscardHandler), func() time.Time { return now }, 30*24*time.Hour, prometheus.NewRegistry(), 1)
	a.purge(context.Background())
	if len(st.purges) != 3 {
		t.Fatalf("AuditPurge calls = %d, want 3 (two full batches, one short)", len(st.purges))
	}
	for _, p := range st.purges {
		if want := now.Add(-30 * 24 * time.Hour); !p.Before.Equal(want) || p.Limit != purgeBatch {
			t.Errorf("AuditPurge(%v, %d), want before %v in batches of %d", p.Before, p.Limit, want, purgeBatch)
		}
	}
}

// selfSigned writes a certificate and key for 127.0.0.1 and returns their
// paths.
func selfSigned(t *testing.T) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "batond"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), DNSNames: []string{"localhost"}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

// TestAuthOffNonLoopback: --auth=off on a non-loopback address is refused,
// even with TLS, unless --insecure; the default there is on.
func TestAuthOffNonLoopback(t *testing.T) {
	t.Parallel()
	cert, key := selfSigned(t)
	st, err := sqlite.Open(context.Background(), sqlite.Config{Path: filepath.Join(t.TempDir(), "baton.db")})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = st.Close() }()
	cfg := Config{Store: st, Logger: slog.New(slog.DiscardHandler), GRPCAddr: "0.0.0.0:0", HTTPAddr: "off",
		TLSCertFile: cert, TLSKeyFile: key, AgentCAFile: cert, Auth: AuthOff}
	if _, err := New(cfg); err == nil || !strings.Contains(err.Error(), "--auth=off") {
		t.Fatalf("New(auth off on 0.0.0.0 with TLS) = %v, want refused naming --auth=off", err)
	}
	for _, tc := range []struct {
		name     string
		auth     AuthMode
		insecure bool
		want     AuthMode
	}{
		{"off with --insecure", AuthOff, true, AuthOff},
		{"default", AuthAuto, false, AuthOn},
	} {
		c := cfg
		c.Auth, c.Insecure = tc.auth, tc.insecure
		s, err := New(c)
		if err != nil {
			t.Fatalf("New(%s) = %v", tc.name, err)
		}
		_ = s.grpcLis.Close()
		if s.cfg.Auth != tc.want {
			t.Errorf("New(%s): auth %q, want %q", tc.name, s.cfg.Auth, tc.want)
		}
	}
}

// BenchmarkGuard measures what authentication, authorization and the
// audit decision add to a call with a cached token.
func BenchmarkGuard(b *testing.B) {
	ctx := context.Background()
	st, err := sqlite.Open(ctx, sqlite.Config{Path: filepath.Join(b.TempDir(), "baton.db")})
	if err != nil {
		b.Fatal(err)
	}
	defer func() { _ = st.Close() }()
	if err := st.Migrate(ctx); err != nil {
		b.Fatal(err)
	}
	secret := auth.NewToken()
	if _, err := st.TokenCreate(ctx, &store.TokenCreateParams{Name: "bench", Role: store.TokenOperator, Hash: auth.HashToken(secret)}); err != nil {
		b.Fatal(err)
	}
	log := slog.New(slog.DiscardHandler)
	authn, err := auth.NewAuthenticator(auth.AuthenticatorConfig{Store: st, Logger: log})
	if err != nil {
		b.Fatal(err)
	}
	g := &guard{authn: authn, audit: newAuditor(st, log, time.Now, DefaultAuditRetention, prometheus.NewRegistry(), 1), runs: st, log: log}
	info := &grpc.UnaryServerInfo{FullMethod: batonv1.RunService_GetRun_FullMethodName}
	req := &batonv1.GetRunRequest{RunId: 1}
	resp := &batonv1.GetRunResponse{}
	handler := func(context.Context, any) (any, error) { return resp, nil }
	callCtx := metadata.NewIncomingContext(ctx, metadata.Pairs("authorization", "Bearer "+secret))
	if _, err := g.unary(callCtx, req, info, handler); err != nil { // fills the cache
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, err := g.unary(callCtx, req, info, handler); err != nil {
			b.Fatal(err)
		}
	}
}
