// Package password hashes and verifies user passwords with bcrypt from
// golang.org/x/crypto. Passwords arrive and leave as broker.SecretString so
// they cannot be logged by accident; only hashes are stored.
package password

import (
	"errors"
	"fmt"

	"golang.org/x/crypto/bcrypt"

	"github.com/lanyardhq/lanyard/broker"
)

// DefaultCost is the bcrypt work factor used unless a caller asks for
// another (tests use bcrypt's minimum to stay fast under the race detector).
const DefaultCost = 12

// Length limits. bcrypt reads at most 72 bytes; a longer password would be
// silently truncated, so it is refused instead.
const (
	MinLen = 12
	MaxLen = 72
)

// ErrMismatch: the password does not match the hash.
var ErrMismatch = errors.New("password does not match")

// Check reports whether p is acceptable as a new password.
func Check(p broker.SecretString) error {
	switch n := len(p.Reveal()); {
	case n < MinLen:
		return fmt.Errorf("password must be at least %d bytes: %w", MinLen, broker.ErrInvalid)
	case n > MaxLen:
		return fmt.Errorf("password must be at most %d bytes: %w", MaxLen, broker.ErrInvalid)
	}
	return nil
}

// Hash checks p and returns its bcrypt hash with the given cost (0 means
// DefaultCost).
func Hash(p broker.SecretString, cost int) (string, error) {
	if err := Check(p); err != nil {
		return "", err
	}
	if cost == 0 {
		cost = DefaultCost
	}
	h, err := bcrypt.GenerateFromPassword([]byte(p.Reveal()), cost)
	if err != nil {
		return "", fmt.Errorf("hash password: %w", err)
	}
	return string(h), nil
}

// Verify returns nil if p matches hash, ErrMismatch if not.
func Verify(hash string, p broker.SecretString) error {
	err := bcrypt.CompareHashAndPassword([]byte(hash), []byte(p.Reveal()))
	if errors.Is(err, bcrypt.ErrMismatchedHashAndPassword) {
		return ErrMismatch
	}
	if err != nil {
		return fmt.Errorf("verify password: %w", err)
	}
	return nil
}
