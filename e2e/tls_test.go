package e2e

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/batonhq/baton/client"
)

// writeCerts makes a CA and a server certificate for 127.0.0.1 and returns
// the paths of the CA, the certificate and its key.
func writeCerts(t *testing.T) (ca, cert, key string) {
	t.Helper()
	dir := t.TempDir()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "baton test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	srvKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	srvTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "batond"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
	}
	caCert, _ := x509.ParseCertificate(caDER)
	srvDER, err := x509.CreateCertificate(rand.Reader, srvTmpl, caCert, &srvKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(srvKey)
	if err != nil {
		t.Fatal(err)
	}
	write := func(name, typ string, der []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	return write("ca.pem", "CERTIFICATE", caDER), write("tls.crt", "CERTIFICATE", srvDER), write("tls.key", "EC PRIVATE KEY", keyDER)
}

// TestTLS runs a job with batond serving TLS: the agent and the CLI verify
// it against the CA file, and a plaintext client is refused.
func TestTLS(t *testing.T) {
	t.Parallel()
	ca, cert, key := writeCerts(t)
	c := &cluster{t: t, dir: t.TempDir(), agents: map[string]*proc{}}
	c.marks = filepath.Join(c.dir, "marks")
	if err := os.MkdirAll(c.marks, 0o755); err != nil {
		t.Fatal(err)
	}
	c.extra = []string{"--tls-cert", cert, "--tls-key", key, "--http-addr", "off"}
	c.dial.CAFile = ca
	c.startBatond()
	c.agent("secure", 1)
	c.waitAgents(1)
	c.apply(`
name: tls
tasks:
  - {name: a, run: [TASK, ok]}
`)
	if _, stderr, code := c.cli("run", "start", "tls", "--wait"); code != 0 {
		t.Fatalf("baton run start --wait over TLS exited %d: %s", code, stderr)
	}
	if got := c.ran("a"); len(got) != 1 {
		t.Errorf("task ran %d times over TLS, want once", len(got))
	}

	// A client that does not speak TLS gets nowhere.
	conn, err := client.Dial(client.DialConfig{Addr: c.grpc})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := client.New(conn).ListJobs(ctx); err == nil {
		t.Errorf("plaintext ListJobs against a TLS batond succeeded, want an error")
	}
	// Nor does one that does not trust the CA.
	other, _, _ := writeCerts(t)
	conn2, err := client.Dial(client.DialConfig{Addr: c.grpc, CAFile: other})
	if err != nil {
		t.Fatal(err)
	}
	defer conn2.Close()
	if _, err := client.New(conn2).ListJobs(ctx); err == nil {
		t.Errorf("ListJobs trusting another CA succeeded, want a certificate error")
	}
}

// TestRefusesPlaintextOnNetwork checks batond will not listen beyond
// loopback without TLS unless told to.
func TestRefusesPlaintextOnNetwork(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	p := start(t, "batond-open", nil, bins.batond, "--data-dir", dir, "--grpc-addr", "0.0.0.0:0", "--http-addr", "off")
	<-p.done
	if p.err == nil {
		t.Fatalf("batond on 0.0.0.0 without TLS started; want it refused")
	}
	if log := p.logText(); !strings.Contains(log, "refusing to listen on 0.0.0.0:0 without TLS") || !strings.Contains(log, "--insecure") {
		t.Errorf("batond said %q; want the refusal and the --insecure hint", log)
	}
}
