package broker

import (
	"context"
	"fmt"
	"regexp"
)

// Check-and-set values for SecretStore.Put.
const (
	// CASAny writes whatever the current version is.
	CASAny = -1
	// CASCreate writes only if the key does not exist yet.
	CASCreate = 0
)

// SecretKey names a secret: Owner groups the secrets of one user (or of the
// system, for signing keys) so that they can be listed and removed together.
// Both parts match [A-Za-z0-9][A-Za-z0-9._-]{0,127}.
type SecretKey struct {
	Owner string
	Name  string
}

var secretKeyPart = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

// Validate reports whether both parts of the key are well formed.
func (k SecretKey) Validate() error {
	if !secretKeyPart.MatchString(k.Owner) {
		return fmt.Errorf("secret key owner %q: %w", k.Owner, ErrInvalid)
	}
	if !secretKeyPart.MatchString(k.Name) {
		return fmt.Errorf("secret key name %q: %w", k.Name, ErrInvalid)
	}
	return nil
}

// ValidateOwner reports whether owner is a well-formed SecretKey owner.
func ValidateOwner(owner string) error {
	if !secretKeyPart.MatchString(owner) {
		return fmt.Errorf("secret key owner %q: %w", owner, ErrInvalid)
	}
	return nil
}

// String returns "owner/name"; keys are not secret.
func (k SecretKey) String() string { return k.Owner + "/" + k.Name }

// SecretStore holds every upstream secret, and nothing else does. Versions
// start at 1 and grow by one with every Put.
//
// Errors: ErrNotFound, ErrAlreadyExists (Put with CASCreate on an existing
// key), ErrConflict (Put with a version that is not the current one),
// ErrInvalid, ErrUnavailable (sealed, unreachable, or not answering within the
// store's time bound), ErrTampered (embedded store: ciphertext failed
// authentication), each wrapped.
type SecretStore interface {
	// Put writes s under key if the current version equals cas (CASAny:
	// unconditionally; CASCreate: only if absent) and returns the new version.
	Put(ctx context.Context, key SecretKey, s Secret, cas int) (version int, err error)
	// Get returns the current value and its version.
	Get(ctx context.Context, key SecretKey) (Secret, int, error)
	// Delete removes every version of the secret.
	Delete(ctx context.Context, key SecretKey) error
	// List returns the keys of owner's secrets, sorted by name.
	List(ctx context.Context, owner string) ([]SecretKey, error)
	// Ping reports whether the store can serve requests now.
	Ping(ctx context.Context) error
}
