package server_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	batonv1 "github.com/batonhq/baton/gen/baton/v1"
	"github.com/batonhq/baton/server"
	"github.com/batonhq/baton/server/store/sqlite"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// waitTimeout bounds every wait for the server under test.
const waitTimeout = 15 * time.Second

// testBundle is one batond started in-process on a fresh SQLite store, and
// clients for it.
type testBundle struct {
	st    *sqlite.Store
	srv   *batond
	jobs  batonv1.JobServiceClient
	runs  batonv1.RunServiceClient
	admin batonv1.AgentAdminServiceClient
}

// setup starts a batond on a fresh store and waits until it serves.
func setup(t *testing.T) *testBundle {
	t.Helper()
	st := openStore(t)
	srv := startBatond(t, st, "node-a", 0)
	srv.waitServing(t)
	return &testBundle{
		st: st, srv: srv,
		jobs:  batonv1.NewJobServiceClient(srv.conn),
		runs:  batonv1.NewRunServiceClient(srv.conn),
		admin: batonv1.NewAgentAdminServiceClient(srv.conn),
	}
}

// testContext is a context for the calls of one test.
func testContext(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), waitTimeout)
	t.Cleanup(cancel)
	return ctx
}

// openStore opens and migrates a SQLite store in the test's directory.
func openStore(t *testing.T) *sqlite.Store {
	t.Helper()
	ctx := context.Background()
	st, err := sqlite.Open(ctx, sqlite.Config{Path: filepath.Join(t.TempDir(), "baton.db")})
	if err != nil {
		t.Fatalf("sqlite.Open: %v", err)
	}
	t.Cleanup(func() {
		if err := st.Close(); err != nil {
			t.Errorf("close store: %v", err)
		}
	})
	if err := st.Migrate(ctx); err != nil {
		t.Fatalf("Migrate: %v", err)
	}
	return st
}

// batond is a server.Server running in-process.
type batond struct {
	srv    *server.Server
	addrs  server.Addrs
	conn   *grpc.ClientConn
	http   *http.Client
	cancel context.CancelFunc
	done   chan error
	once   sync.Once
}

// startBatond starts a server.Server on st as node, with a plaintext gRPC
// connection and an HTTP client for it, and stops it when the test ends.
// agentTimeout 0 is batond's default; the scheduler's leader lease lasts
// half of it (at most 15s), and a standby retries taking it every third of
// that.
func startBatond(t *testing.T, st *sqlite.Store, node string, agentTimeout time.Duration) *batond {
	t.Helper()
	b := runServer(t, server.Config{
		Store: st, Logger: newTestLogger(t, node), GRPCAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0",
		AgentTimeout: agentTimeout, ShutdownTimeout: 5 * time.Second, Version: "test", NodeID: node,
	})
	conn, err := grpc.NewClient("passthrough:///"+b.addrs.GRPC, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatalf("grpc.NewClient: %v", err)
	}
	t.Cleanup(func() { conn.Close() })
	b.conn = conn
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	b.http = &http.Client{Transport: tr, Timeout: waitTimeout}
	return b
}

// runServer creates a server.Server from cfg and runs it until the test
// ends.
func runServer(t *testing.T, cfg server.Config) *batond {
	t.Helper()
	srv, err := server.New(cfg)
	if err != nil {
		t.Fatalf("server.New: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	b := &batond{srv: srv, addrs: srv.Addrs(), cancel: cancel, done: make(chan error, 1)}
	go func() { b.done <- srv.Run(ctx) }()
	t.Cleanup(func() { b.stop(t) })
	return b
}

// waitServing waits until the server's gRPC listener serves: Run serves
// only once the scheduler has settled its leadership.
func (b *batond) waitServing(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	b.conn.Connect()
	for {
		s := b.conn.GetState()
		if s == connectivity.Ready {
			return
		}
		if !b.conn.WaitForStateChange(ctx, s) {
			t.Fatalf("batond at %s did not serve within %s (state %v)", b.addrs.GRPC, waitTimeout, s)
		}
	}
}

// stop cancels Run and waits for it to return.
func (b *batond) stop(t *testing.T) {
	t.Helper()
	b.once.Do(func() {
		b.cancel()
		select {
		case err := <-b.done:
			if err != nil {
				t.Errorf("Run = %v, want nil after cancel", err)
			}
		case <-time.After(waitTimeout):
			t.Errorf("Run did not return within %s of cancel", waitTimeout)
		}
	})
}

// url is the gateway URL of path.
func (b *batond) url(path string) string { return "http://" + b.addrs.HTTP + path }

// do sends an HTTP request to the gateway and returns the status and body.
func (b *batond) do(t *testing.T, method, path, body string) (int, string) {
	t.Helper()
	var r io.Reader
	if body != "" {
		r = strings.NewReader(body)
	}
	req, err := http.NewRequestWithContext(testContext(t), method, b.url(path), r)
	if err != nil {
		t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := b.http.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer func() { _ = resp.Body.Close() }()
	out, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read body: %v", method, path, err)
	}
	return resp.StatusCode, string(out)
}

// wantCode fails the test unless err is a status with code.
func wantCode(t *testing.T, what string, err error, code codes.Code) *status.Status {
	t.Helper()
	st, ok := status.FromError(err)
	if !ok || st.Code() != code {
		t.Fatalf("%s: error = %v, want %v", what, err, code)
	}
	return st
}

// violations returns the fields a status's google.rpc.BadRequest names.
func violations(st *status.Status) []string {
	var fields []string
	for _, d := range st.Details() {
		if br, ok := d.(*errdetails.BadRequest); ok {
			for _, v := range br.GetFieldViolations() {
				fields = append(fields, v.GetField())
			}
		}
	}
	return fields
}

// wantInvalid fails the test unless err is INVALID_ARGUMENT with a
// BadRequest naming field.
func wantInvalid(t *testing.T, what string, err error, field string) {
	t.Helper()
	st := wantCode(t, what, err, codes.InvalidArgument)
	fields := violations(st)
	for _, f := range fields {
		if f == field {
			return
		}
	}
	t.Errorf("%s: BadRequest fields = %q, want %q among them (%v)", what, fields, field, st.Message())
}

// testLogger is a slog.Handler writing to t.Log until the test is over.
type testLogger struct {
	mu    *sync.Mutex
	t     *testing.T
	over  *bool
	attrs string
}

func newTestLogger(t *testing.T, node string) *slog.Logger {
	over := false
	h := &testLogger{mu: &sync.Mutex{}, t: t, over: &over, attrs: " node=" + node}
	// Registered first, so it runs after every other cleanup: the server
	// is stopped by then.
	t.Cleanup(func() {
		h.mu.Lock()
		*h.over = true
		h.mu.Unlock()
	})
	return slog.New(h)
}

func (h *testLogger) Enabled(context.Context, slog.Level) bool { return true }

func (h *testLogger) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s %s%s", r.Time.Format("15:04:05.000"), r.Level, r.Message, h.attrs)
	r.Attrs(func(a slog.Attr) bool {
		fmt.Fprintf(&b, " %s=%v", a.Key, a.Value)
		return true
	})
	h.mu.Lock()
	defer h.mu.Unlock()
	if !*h.over {
		h.t.Log(b.String())
	}
	return nil
}

func (h *testLogger) WithAttrs(attrs []slog.Attr) slog.Handler {
	var b strings.Builder
	b.WriteString(h.attrs)
	for _, a := range attrs {
		fmt.Fprintf(&b, " %s=%v", a.Key, a.Value)
	}
	return &testLogger{mu: h.mu, t: h.t, over: h.over, attrs: b.String()}
}

func (h *testLogger) WithGroup(string) slog.Handler { return h }
