package broker

import (
	"context"
	"fmt"
	"strings"
	"time"
)

// Record is implemented by every kind of record the metadata store holds.
// Records are plain values; stores serialise them as JSON, so a record must
// never carry a secret (secrets go to the SecretStore, records keep a
// reference).
type Record interface {
	// RecordID is the primary key: unique within its kind, non-empty.
	RecordID() string
	// RecordIndexes lists the secondary-index entries of this record. An
	// entry with an empty Value is skipped.
	RecordIndexes() []Index
	// RecordExpiry is when the record stops existing; zero means never.
	// Stores compare it with their injected clock, never the wall clock.
	RecordExpiry() time.Time
	// Validate reports what is wrong with the record, or nil.
	Validate() error
}

// Index is one secondary-index entry of a record.
type Index struct {
	Name   string
	Value  string
	Unique bool // at most one live record per Value; Create and Update enforce it
}

// SingleUse is a record that can be consumed exactly once (authorization
// codes, refresh tokens, device codes). T is the record type itself.
type SingleUse[T any] interface {
	Record
	// ConsumedAt is when the record was consumed; zero if it was not.
	ConsumedAt() time.Time
	// WithConsumedAt returns a copy marked consumed at t.
	WithConsumedAt(t time.Time) T
}

// Query selects a page of records, ordered by RecordID.
type Query struct {
	// Index and Value select records whose index entry Index equals Value.
	// Empty Index and Value list every record of the kind. A Value without
	// an Index, an Index without a Value, or an Index the kind does not
	// declare (RecordIndexes names) is an error wrapping ErrInvalid, never
	// a listing of everything or of nothing.
	Index, Value string
	// After is the cursor returned as Page.Next by the previous call.
	After string
	// Limit caps the page size; 0 means DefaultLimit, above MaxLimit is
	// clamped.
	Limit int
}

// Page sizes.
const (
	DefaultLimit = 100
	MaxLimit     = 1000
)

// Page is one page of a listing. Next is empty on the last page.
type Page[T any] struct {
	Items []T
	Next  string
}

// Table stores one kind of record. Every method takes a context first; a
// cancelled context returns an error matching context.Canceled and changes
// nothing. Expired records behave as absent.
//
// Errors: ErrNotFound, ErrAlreadyExists (duplicate ID or unique index value),
// ErrConflict (Update lost a compare-and-swap more times than the backend
// retries), ErrInvalid (Validate failed), ErrUnavailable, each wrapped.
type Table[T Record] interface {
	Create(ctx context.Context, rec T) error
	Get(ctx context.Context, id string) (T, error)
	// GetBy returns the record whose unique index entry name equals value.
	// An index the kind does not declare is an error wrapping ErrInvalid.
	GetBy(ctx context.Context, index, value string) (T, error)
	// Update reads the record, calls fn with it and stores what fn returns,
	// atomically: if another writer changed the record in between, the
	// backend calls fn again with the new value (compare-and-swap). An error
	// from fn aborts the update and is returned unchanged. fn must not
	// change the RecordID.
	Update(ctx context.Context, id string, fn func(T) (T, error)) (T, error)
	Delete(ctx context.Context, id string) error
	List(ctx context.Context, q Query) (Page[T], error)
}

// SingleUseTable stores single-use records. Consumed records stay until they
// expire so that a replay can be detected.
//
// Update keeps the stored ConsumedAt whatever fn returns: it may change
// other fields of a consumed record but never un-consumes it, and it never
// consumes one either (only Consume and Rotate do).
type SingleUseTable[T SingleUse[T]] interface {
	Table[T]
	// Consume marks the record consumed in one atomic step and returns it.
	// Of many concurrent callers exactly one succeeds. If the record was
	// consumed already it returns the consumed record and ErrConsumed. If
	// check is non-nil it runs first, inside the same atomic step; when it
	// returns an error nothing changes (the record stays usable) and that
	// error is returned.
	Consume(ctx context.Context, id string, check func(T) error) (T, error)
	// Rotate consumes the record like Consume and creates next in the same
	// atomic step (refresh-token rotation: consume old, insert new). If next
	// cannot be created, nothing changes.
	Rotate(ctx context.Context, id string, check func(T) error, next T) (T, error)
}

// Store is the metadata store: every record Lanyard keeps except secrets.
// Implementations: internal/bolt (embedded), etcd (distributed). Each passes
// broker/storetest.
type Store interface {
	Users() Table[User]
	Clients() Table[Client]
	Resources() Table[Resource]
	Connections() Table[Connection]
	Grants() Table[Grant]
	AuthCodes() SingleUseTable[AuthCode]
	RefreshTokens() SingleUseTable[RefreshToken]
	DeviceCodes() SingleUseTable[DeviceCode]
	Sessions() Table[Session]
	AuthRequests() SingleUseTable[AuthRequest]
	PendingLinks() SingleUseTable[PendingLink]
	Audit() AuditLog
	// Counters are fixed-window counters shared by everyone using the
	// store (rate limits that hold across replicas).
	Counters() Counters

	// Sweep deletes expired records and returns how many it removed.
	Sweep(ctx context.Context) (int, error)
	// Ping reports whether the store can serve requests (ErrUnavailable
	// once closed).
	Ping(ctx context.Context) error
	Close() error
}

// Counters is a set of fixed-window counters: rate limits that hold across
// every process sharing the store.
type Counters interface {
	// Incr adds one to counter key in the current window and returns the
	// count so far in that window, this call included. Windows are the
	// store clock's time truncated to a multiple of window (CounterWindow),
	// so every process agrees on them; a counter starts again at 1
	// in each window, and Sweep deletes the windows that have ended. Of
	// concurrent calls each gets its own count (no two the same). An empty
	// key, a key of over 256 bytes or one with control characters, or a
	// window under a millisecond, is an error wrapping ErrInvalid.
	Incr(ctx context.Context, key string, window time.Duration) (int64, error)
}

// CounterWindow returns the window [start, end) of the counters holding
// now for the given window length.
func CounterWindow(now time.Time, window time.Duration) (start, end time.Time) {
	start = now.Truncate(window)
	return start, start.Add(window)
}

// ValidCounter reports what is wrong with a counter key and window, or nil.
func ValidCounter(key string, window time.Duration) error {
	switch {
	case key == "" || len(key) > 256:
		return fmt.Errorf("counter key must be 1 to 256 bytes: %w", ErrInvalid)
	case strings.IndexFunc(key, func(r rune) bool { return r < 0x20 || r == 0x7f }) >= 0:
		return fmt.Errorf("counter key must not hold control characters: %w", ErrInvalid)
	case window < time.Millisecond:
		return fmt.Errorf("counter window %v is under a millisecond: %w", window, ErrInvalid)
	}
	return nil
}

// Observer is told about every backend call: which component ("bolt",
// "vault", "sealed"), which operation, how long it took and how it ended.
// The metrics package provides one; nil means nobody is listening.
type Observer func(component, op string, d time.Duration, err error)

// Observe calls o if it is not nil.
func (o Observer) Observe(component, op string, start time.Time, err error) {
	if o != nil {
		o(component, op, time.Since(start), err)
	}
}

// ListAll reads every page of q (q.Limit sets the page size) and returns all
// records. Use it where the result is known to be small (one user's
// connections or grants).
func ListAll[T Record](ctx context.Context, t Table[T], q Query) ([]T, error) {
	if q.Limit == 0 {
		q.Limit = MaxLimit
	}
	var out []T
	for {
		page, err := t.List(ctx, q)
		if err != nil {
			return nil, err
		}
		out = append(out, page.Items...)
		if page.Next == "" {
			return out, nil
		}
		q.After = page.Next
	}
}
