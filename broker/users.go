package broker

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"regexp"
	"time"
)

// NewID returns a random 128-bit identifier for records that are not named
// by a secret (users, connections, grants).
func NewID() string { return rand.Text() }

var usernameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}$`)

// ValidateUsername reports whether name is an acceptable user name.
func ValidateUsername(name string) error {
	if !usernameRE.MatchString(name) {
		return fmt.Errorf("user name %q: 1-64 characters from A-Z a-z 0-9 . _ @ + -, starting with a letter or digit: %w", name, ErrInvalid)
	}
	return nil
}

// EnsureAdmin creates the admin user username with passwordHash, or, if the
// user exists, sets its password hash and makes it an admin. A user an
// operator disabled stays disabled (the caller should warn). It reports
// whether the user was created.
func EnsureAdmin(ctx context.Context, users Table[User], username, passwordHash string, now time.Time) (bool, error) {
	if err := ValidateUsername(username); err != nil {
		return false, err
	}
	if passwordHash == "" {
		return false, fmt.Errorf("ensure admin: empty password hash: %w", ErrInvalid)
	}
	existing, err := users.GetBy(ctx, IndexUsername, username)
	switch {
	case errors.Is(err, ErrNotFound):
		u := User{ID: NewID(), Username: username, PasswordHash: passwordHash, Admin: true, CreatedAt: now, UpdatedAt: now}
		if err := users.Create(ctx, u); err != nil {
			return false, fmt.Errorf("ensure admin: %w", err)
		}
		return true, nil
	case err != nil:
		return false, fmt.Errorf("ensure admin: %w", err)
	}
	_, err = users.Update(ctx, existing.ID, func(u User) (User, error) {
		u.PasswordHash, u.Admin, u.FailedLogins, u.LockedUntil, u.UpdatedAt = passwordHash, true, 0, time.Time{}, now
		return u, nil
	})
	if err != nil {
		return false, fmt.Errorf("ensure admin: %w", err)
	}
	return false, nil
}

// NewToken returns a 256-bit random value, base64url without padding, after
// prefix (a prefix lets secret scanners recognise Lanyard's tokens). It is
// the one source of codes, refresh tokens, state values, session cookies
// and client secrets.
func NewToken(prefix string) string {
	b := make([]byte, 32)
	_, _ = rand.Read(b) // never fails (crypto/rand panics instead)
	return prefix + base64.RawURLEncoding.EncodeToString(b)
}
