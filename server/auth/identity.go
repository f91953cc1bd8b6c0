// Package auth says who is calling batond and what they may do: API
// callers present bearer tokens with a role, agents present client
// certificates. Every handler finds the caller with FromContext.
package auth

import (
	"context"
	"fmt"
	"path"
	"strings"
)

// Role is what an API token may do. Each role may do everything the roles
// before it may.
type Role string

// The roles, from least to most.
const (
	// RoleViewer reads jobs, runs, logs, agents and the audit trail.
	RoleViewer Role = "viewer"
	// RoleOperator also starts, cancels and restarts runs.
	RoleOperator Role = "operator"
	// RoleAdmin also applies and deletes jobs, manages tokens and agents.
	RoleAdmin Role = "admin"
)

// Kind is how a caller proved who it is.
type Kind string

// The kinds of caller.
const (
	// KindAnonymous is a caller batond did not authenticate: authentication
	// is off (loopback only).
	KindAnonymous Kind = "anonymous"
	// KindToken is an API caller with a bearer token.
	KindToken Kind = "token"
	// KindCert is an agent with a client certificate verified by the agent CA.
	KindCert Kind = "cert"
)

// Identity is the caller of one request.
type Identity struct {
	Kind Kind
	// Name is the token's name or the certificate's agent name; empty for
	// anonymous callers.
	Name string
	// TokenID is the token's id when Kind is KindToken.
	TokenID int64
	// Role is the token's role; anonymous callers get RoleAdmin because
	// authentication is off.
	Role Role
	// Jobs, when not empty, is the job name pattern (path.Match syntax) the
	// token is limited to.
	Jobs string
	// Peer is the caller's network address (for a REST call, the HTTP
	// client's, not the gateway's).
	Peer string
}

// Who is the identity as the audit trail names it: "token:NAME",
// "cert:NAME" or "anonymous".
func (id Identity) Who() string {
	switch id.Kind {
	case KindToken, KindCert:
		return string(id.Kind) + ":" + id.Name
	}
	return string(KindAnonymous)
}

type ctxKey struct{}

// NewContext returns ctx carrying id.
func NewContext(ctx context.Context, id Identity) context.Context {
	return context.WithValue(ctx, ctxKey{}, id)
}

// FromContext returns the caller's identity, and false when the request
// was not authenticated by batond's interceptors (a call from inside
// batond).
func FromContext(ctx context.Context) (Identity, bool) {
	id, ok := ctx.Value(ctxKey{}).(Identity)
	return id, ok
}

// rank orders the roles; unknown roles rank below viewer.
var rank = map[Role]int{RoleViewer: 1, RoleOperator: 2, RoleAdmin: 3}

// Valid reports whether r is one of the three roles.
func (r Role) Valid() bool { return rank[r] > 0 }

// Allows reports whether a caller with role r may do what needs role need.
func (r Role) Allows(need Role) bool { return rank[r] > 0 && rank[r] >= rank[need] }

// ParseRole returns the role named s ("viewer", "operator" or "admin").
func ParseRole(s string) (Role, error) {
	r := Role(strings.ToLower(s))
	if !r.Valid() {
		return "", fmt.Errorf("role %q: want viewer, operator or admin", s)
	}
	return r, nil
}

// MayJob reports whether id may act on the named job: always when its
// token is not limited to jobs, else when the name matches the pattern.
func (id Identity) MayJob(job string) bool {
	if id.Jobs == "" {
		return true
	}
	ok, err := path.Match(id.Jobs, job)
	return err == nil && ok
}
