package store

import (
	"errors"
	"fmt"
	"path"
	"regexp"
	"time"
	"unicode/utf8"
)

// ErrExists is returned when a row would repeat a unique name (an API
// token's name).
var ErrExists = errors.New("store: already exists")

// TokenRole is what an API token may do; see server/auth.Role.
type TokenRole string

// Token roles.
const (
	TokenViewer   TokenRole = "viewer"
	TokenOperator TokenRole = "operator"
	TokenAdmin    TokenRole = "admin"
)

// Valid reports whether r is a known role.
func (r TokenRole) Valid() bool { return r == TokenViewer || r == TokenOperator || r == TokenAdmin }

// Token is an API token. Only the SHA-256 hash of its secret is stored.
type Token struct {
	ID   int64
	Name string
	Role TokenRole
	// Jobs, when not empty, is a path.Match pattern the token is limited
	// to: it may act only on jobs whose names match.
	Jobs string
	// Hash is the hex SHA-256 of the whole token string.
	Hash      string
	CreatedAt time.Time
	// CreatedBy is who created the token, as the audit trail names callers.
	CreatedBy string
	// ExpiresAt is when the token stops working; zero means never.
	ExpiresAt time.Time
	// RevokedAt is when the token was revoked; zero means it was not.
	RevokedAt time.Time
	// LastUsedAt is when the token was last seen, to within a minute or
	// so (see [Store.TokenTouch]); zero means never.
	LastUsedAt time.Time
}

// Usable reports whether t may authenticate a call at now: not revoked and
// not expired.
func (t *Token) Usable(now time.Time) bool {
	return t.RevokedAt.IsZero() && (t.ExpiresAt.IsZero() || now.Before(t.ExpiresAt))
}

// Limits on token fields. Names and patterns are stored in NVARCHAR(400)
// on SQL Server.
const (
	// MaxTokenName is the longest token name, in bytes.
	MaxTokenName = 200
	// MaxTokenJobs is the longest jobs pattern, in bytes.
	MaxTokenJobs = 400
)

// TokenCreateParams are the arguments of [Store.TokenCreate].
type TokenCreateParams struct {
	// Name is unique among tokens, revoked ones included. Required.
	Name string
	Role TokenRole
	// Jobs is an optional path.Match pattern of job names.
	Jobs string
	// Hash is the hex SHA-256 of the token (64 lower-case hex digits).
	Hash      string
	CreatedBy string
	// ExpiresAt is optional.
	ExpiresAt time.Time
}

// Check returns an error naming the first field of p that is not valid.
// Backends call it; callers may call it first.
func (p *TokenCreateParams) Check() error {
	switch {
	case p.Name == "":
		return errors.New("name is empty")
	case len(p.Name) > MaxTokenName:
		return fmt.Errorf("name is %d bytes long; the limit is %d", len(p.Name), MaxTokenName)
	case !tokenNameRE.MatchString(p.Name):
		return fmt.Errorf("name %q: want a letter followed by letters, digits, '.', '_', '@' or '-'", p.Name)
	case !p.Role.Valid():
		return fmt.Errorf("role %q: want viewer, operator or admin", p.Role)
	case len(p.Jobs) > MaxTokenJobs:
		return fmt.Errorf("jobs pattern is %d bytes long; the limit is %d", len(p.Jobs), MaxTokenJobs)
	case len(p.CreatedBy) > MaxTokenJobs:
		return fmt.Errorf("created by is %d bytes long; the limit is %d", len(p.CreatedBy), MaxTokenJobs)
	case !utf8.ValidString(p.CreatedBy) || !utf8.ValidString(p.Jobs):
		return errors.New("jobs pattern and created by must be UTF-8")
	case !isHexHash(p.Hash):
		return errors.New("hash: want 64 lower-case hex digits (a SHA-256)")
	}
	if p.Jobs != "" {
		if _, err := path.Match(p.Jobs, ""); err != nil {
			return fmt.Errorf("jobs pattern %q: %w", p.Jobs, err)
		}
	}
	return nil
}

// TokenNameOK reports whether name is a valid token name: a letter
// followed by letters, digits, '.', '_', '@' or '-', at most MaxTokenName
// bytes.
func TokenNameOK(name string) bool { return len(name) <= MaxTokenName && tokenNameRE.MatchString(name) }

// tokenNameRE is the form of a token name. It starts with a letter, so a
// name is never mistaken for an id, and needs no escaping in a URL path.
var tokenNameRE = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9._@-]*$`)

func isHexHash(s string) bool {
	if len(s) != 64 {
		return false
	}
	for i := range len(s) {
		c := s[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// TokenGetParams are the arguments of [Store.TokenGet]. Set exactly one
// of ID, Name and Hash.
type TokenGetParams struct {
	ID   int64
	Name string
	Hash string
}

// Check returns an error unless exactly one lookup key is set.
func (p *TokenGetParams) Check() error {
	n := 0
	for _, set := range []bool{p.ID != 0, p.Name != "", p.Hash != ""} {
		if set {
			n++
		}
	}
	if n != 1 {
		return errors.New("set exactly one of id, name and hash")
	}
	return nil
}

// TokenListParams are the arguments of [Store.TokenList].
type TokenListParams struct{}

// TokenRevokeParams are the arguments of [Store.TokenRevoke]. Set ID or
// Name.
type TokenRevokeParams struct {
	ID   int64
	Name string
	// At is the revocation time; zero means now.
	At time.Time
}

// TokenTouchParams are the arguments of [Store.TokenTouch].
type TokenTouchParams struct {
	ID int64
	// At is when the token was used; zero means now.
	At time.Time
}

// AuditRecord is one entry of the audit trail: a mutating call, or a call
// refused for want of a valid token or a sufficient role.
type AuditRecord struct {
	// ID orders the records; it is assigned by AuditAppend.
	ID int64
	// At is when the call was made.
	At time.Time
	// Who is the caller: "token:NAME", "cert:NAME" or "anonymous".
	Who string
	// Peer is the caller's network address.
	Peer string
	// Method is the gRPC full method name, or "GET /metrics" and the like
	// for the HTTP endpoints.
	Method string
	// Job and RunID are what the call acted on, when known.
	Job   string
	RunID int64
	// Code is the result: "OK" or a gRPC code name ("PermissionDenied").
	Code string
	// Message is the error message of a failed call.
	Message string
}

// Limits on audit record fields: longer values are cut by the caller (see
// [AuditRecord.Clip]) so a record is never refused for its size.
const (
	MaxAuditField   = 400
	MaxAuditMessage = 2000
)

// Clip cuts r's fields to the stored limits, at a UTF-8 boundary, and
// replaces invalid UTF-8.
func (r *AuditRecord) Clip() {
	for _, f := range []*string{&r.Who, &r.Peer, &r.Method, &r.Job, &r.Code} {
		*f = clip(*f, MaxAuditField)
	}
	r.Message = clip(r.Message, MaxAuditMessage)
}

func clip(s string, n int) string {
	if !utf8.ValidString(s) {
		s = string([]rune(s)) // replaces invalid bytes with U+FFFD
	}
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

// AuditAppendParams are the arguments of [Store.AuditAppend].
type AuditAppendParams struct {
	Records []*AuditRecord
}

// MaxAuditList is the most records AuditList returns at once.
const MaxAuditList = 1000

// AuditListParams are the arguments of [Store.AuditList].
type AuditListParams struct {
	// Since, when set, lists only records at or after it.
	Since time.Time
	// Who and Job, when set, list only records with exactly that value.
	Who string
	Job string
	// BeforeID lists only records with a smaller id (paging); 0 means none.
	BeforeID int64
	// Limit caps the records; 0 means 100, at most MaxAuditList.
	Limit int
}

// MinAuditRetention is the youngest a purged audit record may be: no purge
// removes records of the last day, whatever it is asked, so a caller that
// may purge cannot erase what it just did.
const MinAuditRetention = 24 * time.Hour

// AuditPurgeParams are the arguments of [Store.AuditPurge].
type AuditPurgeParams struct {
	// Before: records older than this are removed. It must be at least
	// MinAuditRetention in the past.
	Before time.Time
	// Limit is how many records one call removes at most; 0 means 1000.
	Limit int
}
