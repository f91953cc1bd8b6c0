package server_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/batonhq/baton/client"
	batonv1 "github.com/batonhq/baton/gen/baton/v1"
	"github.com/batonhq/baton/server"
)

// TestNewRefuses: New refuses a config it cannot serve safely, before
// listening, and a listen error leaves no listener open.
func TestNewRefuses(t *testing.T) {
	t.Parallel()
	st := openStore(t)
	log := slog.New(slog.DiscardHandler)
	cert, key := writeCert(t)
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = busy.Close() })
	loop := "127.0.0.1:0"
	tests := []struct {
		name string
		cfg  server.Config
		want string
	}{
		{"no store", server.Config{Logger: log, GRPCAddr: loop, HTTPAddr: "off"}, "Store and Logger are required"},
		{"no logger", server.Config{Store: st, GRPCAddr: loop, HTTPAddr: "off"}, "Store and Logger are required"},
		{"cert without key", server.Config{Store: st, Logger: log, GRPCAddr: loop, HTTPAddr: "off", TLSCertFile: cert}, "must be given together"},
		{"key without cert", server.Config{Store: st, Logger: log, GRPCAddr: loop, HTTPAddr: "off", TLSKeyFile: key}, "must be given together"},
		{"unreadable cert", server.Config{Store: st, Logger: log, GRPCAddr: loop, HTTPAddr: "off", TLSCertFile: key, TLSKeyFile: key}, "load TLS certificate"},
		{"gRPC on all interfaces without TLS", server.Config{Store: st, Logger: log, GRPCAddr: "0.0.0.0:0", HTTPAddr: "off"}, "refusing to listen on 0.0.0.0:0 without TLS"},
		{"HTTP on another host without TLS", server.Config{Store: st, Logger: log, GRPCAddr: loop, HTTPAddr: "192.0.2.1:0"}, "refusing to listen on 192.0.2.1:0 without TLS"},
		{"gRPC address in use", server.Config{Store: st, Logger: log, GRPCAddr: busy.Addr().String(), HTTPAddr: "off"}, "listen for gRPC"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srv, err := server.New(tc.cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("New = %v, %v, want an error containing %q", srv, err, tc.want)
			}
		})
	}

	// The HTTP address is in use: New fails and closes the gRPC listener
	// it had opened.
	free, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	grpcAddr := free.Addr().String()
	if err := free.Close(); err != nil {
		t.Fatal(err)
	}
	_, err = server.New(server.Config{Store: st, Logger: log, GRPCAddr: grpcAddr, HTTPAddr: busy.Addr().String()})
	if err == nil || !strings.Contains(err.Error(), "listen for HTTP") {
		t.Fatalf("New with the HTTP address in use = %v, want a listen for HTTP error", err)
	}
	again, err := net.Listen("tcp", grpcAddr)
	if err != nil {
		t.Fatalf("the gRPC address %s is still taken after New failed: %v", grpcAddr, err)
	}
	_ = again.Close()
}

// TestHTTPOff: with HTTPAddr "off" there is no gateway; gRPC serves.
func TestHTTPOff(t *testing.T) {
	t.Parallel()
	b := runServer(t, server.Config{
		Store: openStore(t), Logger: newTestLogger(t, "off"), GRPCAddr: "127.0.0.1:0", HTTPAddr: "off",
	})
	if b.addrs.HTTP != "" {
		t.Errorf("Addrs().HTTP = %q, want empty with the gateway off", b.addrs.HTTP)
	}
	conn, err := client.Dial(client.DialConfig{Addr: b.addrs.GRPC})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := batonv1.NewJobServiceClient(conn).ListJobs(testContext(t), &batonv1.ListJobsRequest{}); err != nil {
		t.Errorf("ListJobs with the gateway off: %v", err)
	}
}

// TestTLS: with a certificate both listeners speak only TLS: a client
// that trusts the certificate's CA is served, a plaintext one is not.
func TestTLS(t *testing.T) {
	t.Parallel()
	cert, key := writeCert(t)
	b := runServer(t, server.Config{
		Store: openStore(t), Logger: newTestLogger(t, "tls"), GRPCAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0",
		TLSCertFile: cert, TLSKeyFile: key,
	})
	ctx := testContext(t)
	conn, err := client.Dial(client.DialConfig{Addr: b.addrs.GRPC, CAFile: cert})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := batonv1.NewJobServiceClient(conn).ListJobs(ctx, &batonv1.ListJobsRequest{}); err != nil {
		t.Errorf("ListJobs over TLS: %v", err)
	}
	plain, err := grpc.NewClient("passthrough:///"+b.addrs.GRPC, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	_, err = batonv1.NewJobServiceClient(plain).ListJobs(ctx, &batonv1.ListJobsRequest{})
	wantCode(t, "ListJobs in plaintext to a TLS server", err, codes.Unavailable)

	tc, err := client.DialConfig{CAFile: cert}.TLSConfig()
	if err != nil {
		t.Fatal(err)
	}
	tr := &http.Transport{TLSClientConfig: tc}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr, Timeout: waitTimeout}).Get("https://" + b.addrs.HTTP + "/v1/jobs")
	if err != nil {
		t.Fatalf("GET https://…/v1/jobs: %v", err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("GET https://…/v1/jobs = %d, want 200", resp.StatusCode)
	}
	plainTr := &http.Transport{}
	defer plainTr.CloseIdleConnections()
	if resp, err := (&http.Client{Transport: plainTr, Timeout: waitTimeout}).Get("http://" + b.addrs.HTTP + "/v1/jobs"); err == nil {
		_ = resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			t.Errorf("GET http://…/v1/jobs on a TLS listener = 200, want it refused")
		}
	}
}

// TestWatchRunShutdown: a watch open when batond stops ends with
// UNAVAILABLE, telling the client to watch again, and Run returns.
func TestWatchRunShutdown(t *testing.T) {
	t.Parallel()
	b := setup(t)
	applyJob(t, b, etlJob)
	run := startRun(t, b, "etl")
	stream, err := b.runs.WatchRun(testContext(t), &batonv1.WatchRunRequest{RunId: run.GetId()})
	if err != nil {
		t.Fatalf("WatchRun: %v", err)
	}
	if _, err := stream.Recv(); err != nil { // the watch is being served
		t.Fatalf("WatchRun first event: %v", err)
	}
	b.srv.stop(t)
	for {
		_, err := stream.Recv()
		if err == nil {
			continue
		}
		if st := wantCode(t, "WatchRun across a shutdown", err, codes.Unavailable); !strings.Contains(st.Message(), "watch again") {
			t.Errorf("WatchRun across a shutdown: message %q does not say to watch again", st.Message())
		}
		break
	}
}

// TestWatchRunResume: a watch from after_cursor sends only the events
// after it, so a client resumes where it stopped.
func TestWatchRunResume(t *testing.T) {
	t.Parallel()
	b := setup(t)
	applyJob(t, b, etlJob)
	run := startRun(t, b, "etl")
	all := cancelAndWaitEvents(t, b, run.GetId())
	if len(all) < 3 {
		t.Fatalf("cancelled run has %d events, want at least 3", len(all))
	}
	mid := all[len(all)/2].GetCursor()
	stream, err := b.runs.WatchRun(testContext(t), &batonv1.WatchRunRequest{RunId: run.GetId(), AfterCursor: mid})
	if err != nil {
		t.Fatalf("WatchRun(after %d): %v", mid, err)
	}
	var got []int64
	for {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("WatchRun(after %d): %v", mid, err)
		}
		got = append(got, resp.GetEvent().GetCursor())
	}
	var want []int64
	for _, ev := range all[len(all)/2+1:] {
		want = append(want, ev.GetCursor())
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("WatchRun(after %d) cursors (-want +got):\n%s", mid, diff)
	}
}

// cancelAndWaitEvents cancels a run and returns all its events.
func cancelAndWaitEvents(t *testing.T, b *testBundle, id int64) []*batonv1.RunEvent {
	t.Helper()
	cancelAndWait(t, b, id)
	evs, _ := waitEnded(t, b.runs, id)
	return evs
}

// writeCert writes a self-signed certificate for 127.0.0.1 and its key,
// and returns their paths.
func writeCert(t *testing.T) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "batond test"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IsCA:         true, BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}
