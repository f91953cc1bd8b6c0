package client

import (
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"strings"
)

// AgentCertScheme is the scheme of the URI SAN that names an agent in its
// client certificate: baton-agent:///NAME.
const AgentCertScheme = "baton-agent"

// AgentCertName returns the agent name a client certificate proves: the
// path of its first baton-agent:///NAME URI SAN, or else its subject's
// common name. batond and baton-agent both read it so.
func AgentCertName(cert *x509.Certificate) (string, error) {
	for _, u := range cert.URIs {
		if u.Scheme != AgentCertScheme {
			continue
		}
		name := strings.TrimPrefix(u.Path, "/")
		if name == "" || u.Host != "" || strings.Contains(name, "/") || u.RawQuery != "" {
			return "", fmt.Errorf("certificate URI %q: want %s:///NAME", u, AgentCertScheme)
		}
		return name, nil
	}
	if cert.Subject.CommonName != "" {
		return cert.Subject.CommonName, nil
	}
	return "", fmt.Errorf("certificate %q names no agent: it has no %s:///NAME URI and no common name", cert.Subject, AgentCertScheme)
}

// AgentCertFileName reads a PEM certificate file and returns the agent
// name it proves.
func AgentCertFileName(file string) (string, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return "", err
	}
	block, _ := pem.Decode(b)
	if block == nil || block.Type != "CERTIFICATE" {
		return "", fmt.Errorf("%s: no PEM certificate", file)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return "", fmt.Errorf("%s: %w", file, err)
	}
	name, err := AgentCertName(cert)
	if err != nil {
		return "", fmt.Errorf("%s: %w", file, err)
	}
	return name, nil
}
