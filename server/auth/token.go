package auth

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base32"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"strings"
)

// Token format. A token is TokenPrefix followed by 39 characters of
// lower-case base32 (a-z, 2-7) without padding, which encode 24 bytes: 20
// random bytes (160 bits from crypto/rand) and the CRC-32 (IEEE) of those
// 20 bytes, big-endian.
//
// The fixed prefix makes tokens easy to find for secret scanners and in
// logs, with the regular expression
//
//	\bbaton_[a-z2-7]{39}\b
//
// and the checksum lets batond (and a scanner) refuse a mistyped or made-up
// token without a store lookup. batond stores only [HashToken] of a token.
const (
	TokenPrefix = "baton_"
	// TokenLen is the length of every token.
	TokenLen = len(TokenPrefix) + 39

	secretBytes = 20
)

var tokenEncoding = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

// NewToken returns a fresh random token.
func NewToken() string {
	b := make([]byte, secretBytes, secretBytes+4)
	_, _ = rand.Read(b) // crypto/rand.Read never fails
	b = binary.BigEndian.AppendUint32(b, crc32.ChecksumIEEE(b))
	return TokenPrefix + tokenEncoding.EncodeToString(b)
}

// Errors of [CheckToken] and [ParseBearer].
var (
	// ErrNoToken means the call carried no token at all.
	ErrNoToken = errors.New("no API token")
	// ErrMalformed means what was sent is not a Baton token: wrong form,
	// wrong length or a bad checksum (a mistyped or truncated token).
	ErrMalformed = errors.New("malformed API token")
)

// CheckToken returns nil when s has the form of a token, with a valid
// checksum, and an error wrapping [ErrMalformed] otherwise. It does not say
// whether batond knows the token.
func CheckToken(s string) error {
	if !strings.HasPrefix(s, TokenPrefix) {
		return fmt.Errorf("%w: it does not start with %q", ErrMalformed, TokenPrefix)
	}
	if len(s) != TokenLen {
		return fmt.Errorf("%w: %d characters long, want %d", ErrMalformed, len(s), TokenLen)
	}
	body := s[len(TokenPrefix):]
	b, err := tokenEncoding.DecodeString(body)
	// Re-encoding catches the non-zero spare bits the decoder ignores, so
	// one token has exactly one spelling.
	if err != nil || len(b) != secretBytes+4 || tokenEncoding.EncodeToString(b) != body {
		return fmt.Errorf("%w: want %q and 39 of a-z and 2-7", ErrMalformed, TokenPrefix)
	}
	if crc32.ChecksumIEEE(b[:secretBytes]) != binary.BigEndian.Uint32(b[secretBytes:]) {
		return fmt.Errorf("%w: bad checksum (mistyped or truncated?)", ErrMalformed)
	}
	return nil
}

// HashToken returns what batond stores of a token: the hex SHA-256 of the
// whole token string. A fast hash suffices because tokens carry 160 random
// bits: there is no dictionary to try, so the slow, salted hashes meant
// for passwords would only slow down every call.
func HashToken(token string) string {
	h := sha256.Sum256([]byte(token))
	return hex.EncodeToString(h[:])
}

// MaxHeader is the longest authorization value ParseBearer looks at.
const MaxHeader = 1024

// ParseBearer returns the token of an authorization header or metadata
// value "Bearer <token>" (the scheme is case-insensitive, RFC 6750). An
// empty value is [ErrNoToken]; anything else that is not a well-formed
// token wraps [ErrMalformed].
func ParseBearer(v string) (string, error) {
	if v == "" {
		return "", ErrNoToken
	}
	if len(v) > MaxHeader {
		return "", fmt.Errorf("%w: the authorization value is longer than %d bytes", ErrMalformed, MaxHeader)
	}
	scheme, tok, ok := strings.Cut(v, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", fmt.Errorf("%w: want the authorization value \"Bearer %s...\"", ErrMalformed, TokenPrefix)
	}
	tok = strings.Trim(tok, " ")
	if err := CheckToken(tok); err != nil {
		return "", err
	}
	return tok, nil
}
