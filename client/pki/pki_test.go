package pki_test

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/batonhq/baton/client"
	"github.com/batonhq/baton/client/pki"
)

func readCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(b)
	if block == nil {
		t.Fatalf("%s: not PEM", path)
	}
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestIssue(t *testing.T) {
	dir := t.TempDir()
	now := time.Now()
	if err := pki.NewCA(dir, "Test CA", 24*time.Hour, now); err != nil {
		t.Fatal(err)
	}
	if err := pki.NewCA(dir, "Test CA", 24*time.Hour, now); err == nil || !strings.Contains(err.Error(), "exists") {
		t.Fatalf("second NewCA = %v, want it refused: a CA is never overwritten", err)
	}
	ca, err := pki.LoadCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := ca.Server(dir, []string{"batond.example.com", "10.0.0.5"}, 48*time.Hour, now); err != nil {
		t.Fatal(err)
	}
	if err := ca.Agent(dir, "sql01", time.Hour, now); err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)

	srv := readCert(t, filepath.Join(dir, pki.ServerCrt))
	if _, err := srv.Verify(x509.VerifyOptions{Roots: pool, DNSName: "batond.example.com"}); err != nil {
		t.Errorf("server certificate does not verify for its DNS name: %v", err)
	}
	if _, err := srv.Verify(x509.VerifyOptions{Roots: pool, DNSName: "10.0.0.5"}); err != nil {
		t.Errorf("server certificate does not verify for its IP address: %v", err)
	}
	if !srv.NotAfter.Equal(ca.Cert.NotAfter) {
		t.Errorf("server certificate ends %v, want capped at the CA's end %v", srv.NotAfter, ca.Cert.NotAfter)
	}
	// A server certificate cannot be used as an agent's.
	if _, err := srv.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err == nil {
		t.Error("server certificate verifies as a client certificate, want it refused")
	}

	crt, key := pki.AgentFiles("sql01")
	ag := readCert(t, filepath.Join(dir, crt))
	if _, err := ag.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("agent certificate does not verify as a client certificate: %v", err)
	}
	if name, err := client.AgentCertName(ag); err != nil || name != "sql01" {
		t.Errorf("AgentCertName = %q, %v; want sql01", name, err)
	}
	if name, err := client.AgentCertFileName(filepath.Join(dir, crt)); err != nil || name != "sql01" {
		t.Errorf("AgentCertFileName = %q, %v; want sql01", name, err)
	}
	if _, err := tls.LoadX509KeyPair(filepath.Join(dir, crt), filepath.Join(dir, key)); err != nil {
		t.Errorf("agent key pair: %v", err)
	}
	if runtime.GOOS != "windows" {
		for _, k := range []string{pki.CAKey, pki.ServerKey, key} {
			fi, err := os.Stat(filepath.Join(dir, k))
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode().Perm() != 0o600 {
				t.Errorf("%s mode = %v, want 0600", k, fi.Mode().Perm())
			}
		}
	}

	for _, bad := range []string{"", "a/b", " x", "q?x"} {
		if err := ca.Agent(dir, bad, time.Hour, now); err == nil {
			t.Errorf("Agent(%q) = nil, want a bad name refused", bad)
		}
	}
	if err := ca.Server(dir, nil, time.Hour, now); err == nil {
		t.Error("Server with no hosts = nil, want an error")
	}
	if _, err := pki.LoadCA(t.TempDir()); err == nil || !strings.Contains(err.Error(), "baton cert ca") {
		t.Errorf("LoadCA of an empty directory = %v, want it to say how to make one", err)
	}
}
