package client_test

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"net/url"
	"testing"

	"github.com/batonhq/baton/client"
)

func TestAgentCertName(t *testing.T) {
	u := func(s string) []*url.URL {
		p, err := url.Parse(s)
		if err != nil {
			t.Fatal(err)
		}
		return []*url.URL{p}
	}
	for _, tc := range []struct {
		name string
		cert x509.Certificate
		want string // "" means an error
	}{
		{"URI SAN", x509.Certificate{URIs: u("baton-agent:///sql01"), Subject: pkix.Name{CommonName: "other"}}, "sql01"},
		{"common name", x509.Certificate{Subject: pkix.Name{CommonName: "etl-02"}}, "etl-02"},
		{"another scheme is not a name", x509.Certificate{URIs: u("spiffe://corp/sql01"), Subject: pkix.Name{CommonName: "cn"}}, "cn"},
		{"host in the URI", x509.Certificate{URIs: u("baton-agent://host/sql01")}, ""},
		{"nested path", x509.Certificate{URIs: u("baton-agent:///a/b")}, ""},
		{"query", x509.Certificate{URIs: u("baton-agent:///a?role=ssis")}, ""},
		{"empty", x509.Certificate{URIs: u("baton-agent:///")}, ""},
		{"nothing", x509.Certificate{}, ""},
	} {
		got, err := client.AgentCertName(&tc.cert)
		if tc.want == "" {
			if err == nil {
				t.Errorf("%s: AgentCertName = %q, want an error", tc.name, got)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("%s: AgentCertName = %q, %v; want %q", tc.name, got, err, tc.want)
		}
	}
}
