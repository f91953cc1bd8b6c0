package dispatch

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"

	"github.com/batonhq/baton/client"
	"github.com/batonhq/baton/server/store"
)

// CertFingerprint is the hex SHA-256 of a certificate's DER bytes.
func CertFingerprint(cert *x509.Certificate) string {
	sum := sha256.Sum256(cert.Raw)
	return hex.EncodeToString(sum[:])
}

// Guard decides who an agent's connection is and what it may claim. The
// zero Guard admits every agent by the name it says (authentication off).
type Guard struct {
	// RequireCert refuses agents that present no client certificate
	// verified by the agent CA.
	RequireCert bool
	// RequireApproval keeps an agent pending, with no work, until an
	// approval covers the labels and slots it claims (and pins its
	// certificate, when the approval does).
	RequireApproval bool
	// Approval looks an agent's approval up; store.ErrNotFound when it
	// has none. Required with RequireApproval.
	Approval func(ctx context.Context, name string) (*store.AgentApproval, error)
	// Refused, when set, hears of every refused connection (the audit
	// trail): the name the agent said, its peer address and why.
	Refused func(ctx context.Context, name, peer string, err error)
}

// Why Guard refuses an agent.
var (
	// ErrNoCert: no verified client certificate where one is required
	// (UNAUTHENTICATED; the agent does not retry).
	ErrNoCert = errors.New("no client certificate")
	// ErrWrongCert: the certificate proves another name than the agent
	// says (PERMISSION_DENIED; the agent does not retry).
	ErrWrongCert = errors.New("certificate is for another agent")
	// ErrUnverifiable: the approval could not be read (UNAVAILABLE; the
	// agent retries).
	ErrUnverifiable = errors.New("cannot check the agent's approval")
)

// peerCert returns the verified client certificate of ctx's connection,
// or nil.
func peerCert(ctx context.Context) *x509.Certificate {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return nil
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(info.State.VerifiedChains) == 0 || len(info.State.PeerCertificates) == 0 {
		return nil
	}
	return info.State.PeerCertificates[0]
}

// PeerCertName returns the agent name the verified client certificate of
// ctx's connection proves, or "" without one.
func PeerCertName(ctx context.Context) string {
	if c := peerCert(ctx); c != nil {
		if name, err := client.AgentCertName(c); err == nil {
			return name
		}
	}
	return ""
}

// StatusOf returns the status error an agent sees for err.
func StatusOf(err error) error { return toStatus(err) }

// PeerAddr returns ctx's peer address, or "".
func PeerAddr(ctx context.Context) string {
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		return p.Addr.String()
	}
	return ""
}

// check authenticates h against the connection's certificate and decides
// whether the agent is pending approval (h.Pending). It changes nothing
// but h.
func (g *Guard) check(ctx context.Context, h *Hello) error {
	cert := peerCert(ctx)
	switch {
	case cert != nil:
		name, err := client.AgentCertName(cert)
		if err != nil {
			return fmt.Errorf("%w: %w", ErrWrongCert, err)
		}
		if name != h.Name {
			return fmt.Errorf("%w: the client certificate is for agent %q; this connection says it is %q", ErrWrongCert, name, h.Name)
		}
		h.CertSHA256 = CertFingerprint(cert)
	case g.RequireCert:
		return fmt.Errorf("%w: this control plane requires agents to present a client certificate issued by its agent CA "+
			"(baton-agent --tls-cert and --tls-key; 'baton cert agent %s' makes one)", ErrNoCert, h.Name)
	}
	if !g.RequireApproval {
		return nil
	}
	a, err := g.Approval(ctx, h.Name)
	switch {
	case errors.Is(err, store.ErrNotFound):
		h.Pending = fmt.Sprintf("waiting for approval: an admin approves what it claims with 'baton agents approve %s'", h.Name)
		return nil
	case err != nil:
		return fmt.Errorf("%w: %w", ErrUnverifiable, err)
	}
	h.Pending = Uncovered(h, a)
	return nil
}

// Uncovered says what of h's claims approval a does not cover, or "" when
// it covers them all: every label h claims must be approved with the same
// value, its slots must not exceed the approved ones (0: any), and its
// certificate must be the approved one when the approval pins one.
func Uncovered(h *Hello, a *store.AgentApproval) string {
	var bad []string
	for _, k := range slices.Sorted(maps.Keys(h.Labels)) {
		if v, ok := a.Labels[k]; !ok || v != h.Labels[k] {
			bad = append(bad, k+"="+h.Labels[k])
		}
	}
	var why []string
	if len(bad) > 0 {
		why = append(why, "claims label(s) "+strings.Join(bad, ", ")+" beyond its approval")
	}
	if a.Slots > 0 && h.Slots > a.Slots {
		why = append(why, fmt.Sprintf("claims %d slots; approved for %d", h.Slots, a.Slots))
	}
	if a.CertSHA256 != "" && h.CertSHA256 != a.CertSHA256 {
		why = append(why, "presents another certificate than the approved one")
	}
	if len(why) == 0 {
		return ""
	}
	return "pending approval: " + strings.Join(why, "; ") + fmt.Sprintf(" (approve with 'baton agents approve %s')", h.Name)
}
