// Package pki makes a private certificate authority and the certificates
// batond and its agents present to each other: ECDSA P-256 keys, PEM files,
// keys readable by their owner only.
package pki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/batonhq/baton/client"
)

// File names in a certificate directory.
const (
	CACert    = "ca.crt"
	CAKey     = "ca.key"
	ServerCrt = "server.crt"
	ServerKey = "server.key"
)

// AgentFiles returns the certificate and key file names of agent name.
func AgentFiles(name string) (cert, key string) {
	return "agent-" + name + ".crt", "agent-" + name + ".key"
}

// CA is a loaded certificate authority.
type CA struct {
	Cert *x509.Certificate
	Key  *ecdsa.PrivateKey
}

// NewCA creates a self-signed CA valid for validity and writes ca.crt and
// ca.key into dir. It refuses to overwrite an existing CA.
func NewCA(dir, commonName string, validity time.Duration, now time.Time) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		Subject:               pkix.Name{CommonName: commonName, Organization: []string{"Baton"}},
		NotBefore:             now.Add(-5 * time.Minute),
		NotAfter:              now.Add(validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	return issue(dir, CACert, CAKey, tmpl, key, nil)
}

// LoadCA reads ca.crt and ca.key from dir.
func LoadCA(dir string) (*CA, error) {
	certPEM, err := os.ReadFile(filepath.Join(dir, CACert))
	if err != nil {
		return nil, fmt.Errorf("read the CA (make one with 'baton cert ca'): %w", err)
	}
	keyPEM, err := os.ReadFile(filepath.Join(dir, CAKey))
	if err != nil {
		return nil, fmt.Errorf("read the CA key: %w", err)
	}
	cb, _ := pem.Decode(certPEM)
	kb, _ := pem.Decode(keyPEM)
	if cb == nil || kb == nil {
		return nil, fmt.Errorf("%s: ca.crt or ca.key is not PEM", dir)
	}
	cert, err := x509.ParseCertificate(cb.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", CACert, err)
	}
	k, err := x509.ParsePKCS8PrivateKey(kb.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", CAKey, err)
	}
	key, ok := k.(*ecdsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("%s: not an ECDSA key", CAKey)
	}
	if !cert.IsCA {
		return nil, fmt.Errorf("%s is not a CA certificate", CACert)
	}
	return &CA{Cert: cert, Key: key}, nil
}

// Server issues batond's certificate for hosts (DNS names or IP
// addresses) and writes server.crt and server.key into dir.
func (ca *CA) Server(dir string, hosts []string, validity time.Duration, now time.Time) error {
	if len(hosts) == 0 {
		return errors.New("at least one host name or IP address is needed: the one agents and clients dial")
	}
	tmpl := leaf(hosts[0], validity, now, x509.ExtKeyUsageServerAuth)
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	return ca.issueLeaf(dir, ServerCrt, ServerKey, tmpl)
}

// Agent issues the client certificate of agent name (URI SAN
// baton-agent:///NAME, which batond reads as the agent's name) and writes
// agent-NAME.crt and agent-NAME.key into dir.
func (ca *CA) Agent(dir, name string, validity time.Duration, now time.Time) error {
	if name == "" || strings.ContainsAny(name, "/\\?#") || strings.TrimSpace(name) != name {
		return fmt.Errorf("agent name %q: want a plain name without /, \\, ?, # or surrounding spaces", name)
	}
	tmpl := leaf(name, validity, now, x509.ExtKeyUsageClientAuth)
	tmpl.URIs = []*url.URL{{Scheme: client.AgentCertScheme, Path: "/" + name}}
	cert, key := AgentFiles(name)
	return ca.issueLeaf(dir, cert, key, tmpl)
}

func leaf(cn string, validity time.Duration, now time.Time, usage x509.ExtKeyUsage) *x509.Certificate {
	return &x509.Certificate{
		Subject:     pkix.Name{CommonName: cn, Organization: []string{"Baton"}},
		NotBefore:   now.Add(-5 * time.Minute),
		NotAfter:    now.Add(validity),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{usage},
	}
}

func (ca *CA) issueLeaf(dir, certName, keyName string, tmpl *x509.Certificate) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	if tmpl.NotAfter.After(ca.Cert.NotAfter) {
		tmpl.NotAfter = ca.Cert.NotAfter
	}
	return issue(dir, certName, keyName, tmpl, key, ca)
}

// issue signs tmpl (by ca, or itself when ca is nil) and writes the
// certificate and key, refusing to overwrite either.
func issue(dir, certName, keyName string, tmpl *x509.Certificate, key *ecdsa.PrivateKey, ca *CA) error {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return err
	}
	tmpl.SerialNumber = serial
	parent, signer := tmpl, key
	if ca != nil {
		parent, signer = ca.Cert, ca.Key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, signer)
	if err != nil {
		return err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	certPath, keyPath := filepath.Join(dir, certName), filepath.Join(dir, keyName)
	for _, p := range []string{certPath, keyPath} {
		if _, err := os.Stat(p); err == nil {
			return fmt.Errorf("%s exists: remove it first to issue a new one", p)
		}
	}
	if err := writeNew(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return err
	}
	return writeNew(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
}

// writeNew creates path with mode, failing if it exists.
func writeNew(path string, b []byte, mode os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		_ = f.Close()
		return err
	}
	return f.Close()
}
