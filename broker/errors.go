package broker

import "errors"

// Store errors. Implementations wrap them with context (fmt.Errorf("...: %w",
// ErrNotFound)); callers match them with errors.Is, never with ==.
var (
	// ErrNotFound: no record (or secret) with that key exists, or it expired.
	ErrNotFound = errors.New("not found")
	// ErrAlreadyExists: Create found a record with the same ID or the same
	// value of a unique index.
	ErrAlreadyExists = errors.New("already exists")
	// ErrConflict: a compare-and-swap lost against a concurrent writer, or a
	// check-and-set version did not match. The caller may re-read and retry.
	ErrConflict = errors.New("conflict")
	// ErrConsumed: a single-use record was already consumed. Consume returns
	// the consumed record alongside it so that a replay can be acted upon
	// (for example: revoke every token issued from a replayed code).
	ErrConsumed = errors.New("already consumed")
	// ErrUnavailable: the backend cannot serve requests right now (a sealed
	// or unreachable Vault, a closed store). Retrying later may succeed.
	ErrUnavailable = errors.New("unavailable")
	// ErrInvalid: the caller passed a record or key that fails validation.
	// Nothing was written.
	ErrInvalid = errors.New("invalid argument")
	// ErrTampered: stored ciphertext failed authentication. The value is
	// never returned.
	ErrTampered = errors.New("stored data failed authentication")
)
