package oauth

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"regexp"
)

// RFC 7636 §4.1: code_verifier = 43*128unreserved. An S256 challenge is the
// base64url (no padding) SHA-256 of the verifier: exactly 43 characters.
var (
	verifierRE  = regexp.MustCompile(`^[A-Za-z0-9._~-]{43,128}$`)
	challengeRE = regexp.MustCompile(`^[A-Za-z0-9_-]{43}$`)
)

// CheckChallenge validates the PKCE parameters of an authorization request:
// S256 only; a missing challenge, a missing or other method (plain), or a
// malformed challenge is invalid_request.
func CheckChallenge(challenge, method string) error {
	switch {
	case challenge == "":
		return ErrInvalidRequest.WithDescription("code_challenge is required (PKCE)")
	case method == "":
		return ErrInvalidRequest.WithDescription("code_challenge_method is required and must be S256")
	case method != "S256":
		return ErrInvalidRequest.WithDescription("code_challenge_method must be S256")
	case !challengeRE.MatchString(challenge):
		return ErrInvalidRequest.WithDescription("code_challenge is not a base64url SHA-256 value")
	}
	return nil
}

// VerifyPKCE checks a code_verifier against an S256 challenge in constant
// time.
func VerifyPKCE(verifier, challenge string) error {
	if !verifierRE.MatchString(verifier) {
		return ErrInvalidGrant.WithDescription("code_verifier is missing or malformed")
	}
	sum := sha256.Sum256([]byte(verifier))
	want := base64.RawURLEncoding.EncodeToString(sum[:])
	if subtle.ConstantTimeCompare([]byte(want), []byte(challenge)) != 1 {
		return ErrInvalidGrant.WithDescription("code_verifier does not match the code_challenge")
	}
	return nil
}
