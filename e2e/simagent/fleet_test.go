package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/batonhq/baton/client"
	"github.com/batonhq/baton/client/pki"
	batonv1 "github.com/batonhq/baton/gen/baton/v1"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const waitTimeout = 10 * time.Second

// testWriter sends log lines to t.Log.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// stream is one Connect stream the fake control plane accepted. The test
// talks through it; closing end makes the server end the stream with
// endErr.
type stream struct {
	srv    batonv1.AgentService_ConnectServer
	end    chan struct{}
	endErr error
}

// fakeServer is a control plane that hands every Connect stream to the
// test, or refuses it with refuse when set.
type fakeServer struct {
	batonv1.UnimplementedAgentServiceServer
	streams chan *stream
	refuse  error
}

func (f *fakeServer) Connect(srv batonv1.AgentService_ConnectServer) error {
	if f.refuse != nil {
		return f.refuse
	}
	s := &stream{srv: srv, end: make(chan struct{})}
	select {
	case f.streams <- s:
	case <-srv.Context().Done():
		return srv.Context().Err()
	}
	select {
	case <-s.end:
		return s.endErr
	case <-srv.Context().Done():
		return srv.Context().Err()
	}
}

type testBundle struct {
	srv      *fakeServer
	fleet    *Fleet
	welcomed chan int
	cancel   context.CancelFunc
	done     chan struct{} // closed when Run returned
	runErr   error         // what Run returned
}

// setup starts a fake control plane on an in-memory listener and a fleet
// of one agent dialing it.
func setup(t *testing.T, refuse error) *testBundle {
	t.Helper()
	lis := bufconn.Listen(1 << 20)
	fs := &fakeServer{streams: make(chan *stream, 4), refuse: refuse}
	gs := grpc.NewServer()
	batonv1.RegisterAgentServiceServer(gs, fs)
	go func() { _ = gs.Serve(lis) }()
	t.Cleanup(gs.Stop)

	b := &testBundle{srv: fs, welcomed: make(chan int, 1), done: make(chan struct{})}
	fleet, err := NewFleet(Config{
		Server: client.DialConfig{Addr: "passthrough:///bufnet"},
		Count:  1, Slots: 3, Labels: map[string]string{"role": "sim"},
		OnWelcomed: func(n int) { b.welcomed <- n },
		DialOptions: []grpc.DialOption{grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
			return lis.DialContext(ctx)
		})},
		Logger: slog.New(slog.NewTextHandler(testWriter{t}, nil)),
	})
	if err != nil {
		t.Fatalf("NewFleet: %v", err)
	}
	b.fleet = fleet
	ctx, cancel := context.WithCancel(t.Context())
	b.cancel = cancel
	go func() {
		b.runErr = fleet.Run(ctx)
		close(b.done)
	}()
	t.Cleanup(func() {
		cancel()
		// Tests that expect an error from Run check it themselves.
		_ = b.wait(t)
	})
	return b
}

// wait waits for Run to return and returns its error.
func (b *testBundle) wait(t *testing.T) error {
	t.Helper()
	select {
	case <-b.done:
		return b.runErr
	case <-time.After(waitTimeout):
		t.Fatal("Run did not return")
		return nil
	}
}

// accept waits for the fleet's next stream.
func (b *testBundle) accept(t *testing.T) *stream {
	t.Helper()
	select {
	case s := <-b.srv.streams:
		return s
	case <-time.After(waitTimeout):
		t.Fatal("no stream opened")
		return nil
	}
}

// recv returns the next message other than a Heartbeat, counting the
// heartbeats it skips in *beats when beats is not nil.
func recv(t *testing.T, s *stream, beats *int) *batonv1.ConnectRequest {
	t.Helper()
	type result struct {
		m   *batonv1.ConnectRequest
		err error
	}
	for {
		got := make(chan result, 1)
		go func() {
			m, err := s.srv.Recv()
			got <- result{m, err}
		}()
		select {
		case r := <-got:
			if r.err != nil {
				t.Fatalf("Recv: %v", r.err)
			}
			if r.m.GetHeartbeat() != nil {
				if beats != nil {
					*beats++
				}
				continue
			}
			return r.m
		case <-time.After(waitTimeout):
			t.Fatal("no message from the agent")
			return nil
		}
	}
}

func send(t *testing.T, s *stream, m *batonv1.ConnectResponse) {
	t.Helper()
	if err := s.srv.Send(m); err != nil {
		t.Fatalf("Send: %v", err)
	}
}

func welcome(interval time.Duration) *batonv1.ConnectResponse {
	return &batonv1.ConnectResponse{Msg: &batonv1.ConnectResponse_Welcome{Welcome: &batonv1.Welcome{
		HeartbeatInterval: durationpb.New(interval)}}}
}

func startTask(id int64) *batonv1.ConnectResponse {
	return &batonv1.ConnectResponse{Msg: &batonv1.ConnectResponse_StartTask{StartTask: &batonv1.StartTask{
		AttemptId: id, Argv: []string{"/bin/true"}}}}
}

// describe names a message for comparisons: "started 7", "finished 7
// SUCCEEDED".
func describe(m *batonv1.ConnectRequest) string {
	switch m := m.GetMsg().(type) {
	case *batonv1.ConnectRequest_TaskStarted:
		return fmt.Sprintf("started %d", m.TaskStarted.GetAttemptId())
	case *batonv1.ConnectRequest_TaskFinished:
		return fmt.Sprintf("finished %d %s", m.TaskFinished.GetAttemptId(),
			strings.TrimPrefix(m.TaskFinished.GetOutcome().String(), "ATTEMPT_OUTCOME_"))
	}
	return fmt.Sprintf("%T", m.GetMsg())
}

func TestFleetAnswersAndHonoursAcks(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)

	s1 := b.accept(t)
	hello := recv(t, s1, nil).GetHello()
	if hello == nil {
		t.Fatal("first message is not a Hello")
	}
	if hello.GetName() != "sim-1" || hello.GetSlots() != 3 || hello.GetLabels()["role"] != "sim" || len(hello.GetUnacked()) != 0 {
		t.Errorf("Hello = %v, want sim-1 with 3 slots, role=sim and nothing unacked", hello)
	}
	send(t, s1, welcome(5*time.Millisecond))
	select {
	case n := <-b.welcomed:
		if n != 1 {
			t.Errorf("OnWelcomed(%d), want 1", n)
		}
	case <-time.After(waitTimeout):
		t.Fatal("OnWelcomed not called")
	}

	// Each start is answered at once; a repeated one gets the outcome
	// again; an acknowledged one nothing at all (the next answer is 9's).
	send(t, s1, startTask(7))
	send(t, s1, startTask(7))
	send(t, s1, startTask(8))
	send(t, s1, &batonv1.ConnectResponse{Msg: &batonv1.ConnectResponse_Ack{Ack: &batonv1.Ack{AttemptIds: []int64{8}}}})
	beats := 0
	var got []string
	for range 5 {
		got = append(got, describe(recv(t, s1, &beats)))
	}
	want := []string{"started 7", "finished 7 SUCCEEDED", "finished 7 SUCCEEDED", "started 8", "finished 8 SUCCEEDED"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("answers (-want +got):\n%s", diff)
	}
	for beats == 0 {
		// Heartbeats follow the Welcome's 5ms interval.
		send(t, s1, startTask(7))
		recv(t, s1, &beats)
	}

	// A broken stream is reconnected; the new Hello lists what was not
	// acknowledged, under the same boot id.
	s1.endErr = status.Error(codes.Unavailable, "restarting")
	close(s1.end)
	s2 := b.accept(t)
	hello2 := recv(t, s2, nil).GetHello()
	if hello2.GetBootId() != hello.GetBootId() {
		t.Errorf("reconnect boot id = %q, want %q", hello2.GetBootId(), hello.GetBootId())
	}
	var unacked []int64
	for _, tf := range hello2.GetUnacked() {
		unacked = append(unacked, tf.GetAttemptId())
	}
	if diff := cmp.Diff([]int64{7}, unacked); diff != "" {
		t.Errorf("unacked in the reconnect Hello (-want +got):\n%s", diff)
	}
	send(t, s2, welcome(time.Hour))
	send(t, s2, startTask(8))
	send(t, s2, startTask(9))
	if got := describe(recv(t, s2, nil)); got != "started 9" {
		t.Errorf("after a repeated start of acknowledged attempt 8, got %q, want started 9", got)
	}
	recv(t, s2, nil) // finished 9

	// A draining agent rejects new work.
	send(t, s2, &batonv1.ConnectResponse{Msg: &batonv1.ConnectResponse_Drain{Drain: &batonv1.Drain{Reason: "test"}}})
	send(t, s2, startTask(10))
	if got := describe(recv(t, s2, nil)); got != "finished 10 REJECTED" {
		t.Errorf("start while draining: got %q, want finished 10 REJECTED", got)
	}

	b.cancel()
	if err := b.wait(t); err != nil {
		t.Errorf("Run = %v, want nil after cancel", err)
	}
	tot := b.fleet.Totals()
	tot.Heartbeats = 0
	wantTot := Totals{Agents: 1, Welcomed: 1, Started: 3, Repeated: tot.Repeated, Rejected: 1, Acked: 1, Unacked: 3, Reconnects: 1}
	if tot.Repeated < 2 {
		t.Errorf("Totals().Repeated = %d, want at least 2", tot.Repeated)
	}
	if diff := cmp.Diff(wantTot, tot); diff != "" {
		t.Errorf("Totals() (-want +got):\n%s", diff)
	}
}

func TestFleetStopsWhenRefused(t *testing.T) {
	t.Parallel()
	b := setup(t, status.Error(codes.PermissionDenied, "not allowed"))
	if err := b.wait(t); status.Code(err) != codes.PermissionDenied {
		t.Errorf("Run = %v, want PermissionDenied", err)
	}
}

func TestNewFleetValidates(t *testing.T) {
	t.Parallel()
	log := slog.New(slog.DiscardHandler)
	tests := []struct {
		name string
		cfg  Config
		want string
	}{
		{name: "no agents", cfg: Config{Logger: log}, want: "count: must be at least 1, got 0"},
		{name: "negative slots", cfg: Config{Count: 1, Slots: -1, Logger: log}, want: "slots: must be positive, got -1"},
		{name: "no logger", cfg: Config{Count: 1}, want: "logger is required"},
		{name: "missing CA file", cfg: Config{Count: 1, Logger: log, Server: client.DialConfig{CAFile: "/nonexistent/ca.pem"}}, want: "server: read CA file"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := NewFleet(tc.cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("NewFleet() = %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestRunRejectsBadUsage(t *testing.T) {
	t.Parallel()
	var stdout, stderr bytes.Buffer
	if code := run(t.Context(), []string{"--count", "0"}, &stdout, &stderr); code != 2 {
		t.Errorf("run(--count 0) = %d, want 2", code)
	}
	if !strings.Contains(stderr.String(), "count: must be at least 1") {
		t.Errorf("stderr = %q, want the count named", stderr.String())
	}
	stderr.Reset()
	if code := run(t.Context(), []string{"--label", "=x"}, &stdout, &stderr); code != 2 {
		t.Errorf("run(--label =x) = %d, want 2", code)
	}
}

// TestFleetPresentsEachAgentsCertificate runs two agents with a
// certificate directory against a control plane that requires client
// certificates from its agent CA: each stream's verified certificate names
// the agent whose Hello it carries.
func TestFleetPresentsEachAgentsCertificate(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	now := time.Now()
	if err := pki.NewCA(dir, "Test CA", time.Hour, now); err != nil {
		t.Fatal(err)
	}
	ca, err := pki.LoadCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := ca.Server(dir, []string{"localhost"}, time.Hour, now); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"sim-1", "sim-2"} {
		if err := ca.Agent(dir, name, time.Hour, now); err != nil {
			t.Fatal(err)
		}
	}
	srvCert, err := tls.LoadX509KeyPair(filepath.Join(dir, pki.ServerCrt), filepath.Join(dir, pki.ServerKey))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	lis := bufconn.Listen(1 << 20)
	fs := &fakeServer{streams: make(chan *stream, 4)}
	gs := grpc.NewServer(grpc.Creds(credentials.NewTLS(&tls.Config{
		Certificates: []tls.Certificate{srvCert}, ClientCAs: pool,
		ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS12,
	})))
	batonv1.RegisterAgentServiceServer(gs, fs)
	go func() { _ = gs.Serve(lis) }()
	t.Cleanup(gs.Stop)

	fleet, err := NewFleet(Config{
		Server: client.DialConfig{Addr: "passthrough:///bufnet", CAFile: filepath.Join(dir, pki.CACert), ServerName: "localhost"},
		Count:  2, CertDir: dir,
		DialOptions: []grpc.DialOption{grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
			return lis.DialContext(ctx)
		})},
		Logger: slog.New(slog.NewTextHandler(testWriter{t}, nil)),
	})
	if err != nil {
		t.Fatalf("NewFleet: %v", err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- fleet.Run(ctx) }()

	got := map[string]string{} // Hello name -> certificate's agent name
	for range 2 {
		var s *stream
		select {
		case s = <-fs.streams:
		case <-time.After(waitTimeout):
			t.Fatal("no stream opened")
		}
		hello := recv(t, s, nil).GetHello()
		p, ok := peer.FromContext(s.srv.Context())
		if !ok {
			t.Fatal("stream has no peer")
		}
		info, ok := p.AuthInfo.(credentials.TLSInfo)
		if !ok || len(info.State.VerifiedChains) == 0 {
			t.Fatalf("%s: connection has no verified client certificate (auth info %T)", hello.GetName(), p.AuthInfo)
		}
		name, err := client.AgentCertName(info.State.PeerCertificates[0])
		if err != nil {
			t.Fatal(err)
		}
		got[hello.GetName()] = name
	}
	if diff := cmp.Diff(map[string]string{"sim-1": "sim-1", "sim-2": "sim-2"}, got); diff != "" {
		t.Errorf("certificate of each agent (-want +got):\n%s", diff)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run = %v, want nil after cancel", err)
		}
	case <-time.After(waitTimeout):
		t.Fatal("Run did not return")
	}

	// An agent without a certificate in the directory is refused at once.
	_, err = NewFleet(Config{Count: 3, CertDir: dir, Server: client.DialConfig{CAFile: filepath.Join(dir, pki.CACert)},
		Logger: slog.New(slog.DiscardHandler)})
	if err == nil || !strings.Contains(err.Error(), "agent sim-3: client certificate") {
		t.Errorf("NewFleet with no certificate for sim-3 = %v, want it named", err)
	}
}
