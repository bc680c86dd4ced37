package broker

import (
	"encoding/binary"
	"fmt"
	"time"
)

// This file holds the pure rules every Store backend applies the same way,
// so that internal/bolt and internal/etcd do not each keep a copy.

// Live reports whether rec has not expired at now.
func Live(rec Record, now time.Time) bool {
	exp := rec.RecordExpiry()
	return exp.IsZero() || exp.After(now)
}

// IndexNames is the set of index names T declares: those RecordIndexes of
// a zero T lists (names do not depend on values).
type IndexNames map[string]bool

// IndexNamesOf returns the index names T declares.
func IndexNamesOf[T Record]() IndexNames {
	var zero T
	names := IndexNames{}
	for _, ix := range zero.RecordIndexes() {
		names[ix.Name] = true
	}
	return names
}

// Check returns an error wrapping ErrInvalid unless index is one of names;
// kind and op name the table and the operation in the message.
func (names IndexNames) Check(kind, op, index string) error {
	if !names[index] {
		return fmt.Errorf("%s: %s: unknown index %q: %w", kind, op, index, ErrInvalid)
	}
	return nil
}

// CheckQuery returns q's page size (Limit, defaulted and clamped), or an
// error wrapping ErrInvalid for a Value without an Index, an Index not
// among names, or an Index without a Value: none of them may fall back to
// listing everything, or nothing.
func (names IndexNames) CheckQuery(kind string, q Query) (limit int, err error) {
	switch {
	case q.Index == "" && q.Value != "":
		return 0, fmt.Errorf("%s: list: value %q without an index: %w", kind, q.Value, ErrInvalid)
	case q.Index == "":
	case !names[q.Index]:
		return 0, names.Check(kind, "list", q.Index)
	case q.Value == "":
		return 0, fmt.Errorf("%s: list by %s: empty value: %w", kind, q.Index, ErrInvalid)
	}
	switch {
	case q.Limit <= 0:
		return DefaultLimit, nil
	case q.Limit > MaxLimit:
		return MaxLimit, nil
	}
	return q.Limit, nil
}

// CheckConsume is the test Consume and Rotate apply to the live record rec
// (id, of kind) before marking it consumed: a record consumed already is an
// error wrapping ErrConsumed, reported before check runs so that a replay
// is always detected; then check, if non-nil, decides.
func CheckConsume[T SingleUse[T]](kind, id string, rec T, check func(T) error) error {
	if at := rec.ConsumedAt(); !at.IsZero() {
		return fmt.Errorf("%s %q consumed at %s: %w", kind, id, at.UTC().Format(time.RFC3339), ErrConsumed)
	}
	if check != nil {
		return check(rec)
	}
	return nil
}

// ExpiryStamp encodes exp so that byte order is time order, for every
// time.Time (unix nanoseconds would overflow outside 1678-2262): the unix
// seconds, big-endian with the sign bit flipped, then the nanoseconds,
// big-endian. Backends key their expiry indexes by it.
func ExpiryStamp(exp time.Time) [12]byte {
	var b [12]byte
	binary.BigEndian.PutUint64(b[:], uint64(exp.Unix())^(1<<63))
	binary.BigEndian.PutUint32(b[8:], uint32(exp.Nanosecond()))
	return b
}

// KeepConsumed wraps fn, the function given to a SingleUseTable's Update,
// so that the stored ConsumedAt always wins over the one fn returns: a
// consumed record stays consumed (an Update cannot re-open it to a
// replay), and an unconsumed one is consumed only by Consume or Rotate.
func KeepConsumed[T SingleUse[T]](fn func(T) (T, error)) func(T) (T, error) {
	return func(old T) (T, error) {
		rec, err := fn(old)
		if err != nil {
			return rec, err
		}
		return rec.WithConsumedAt(old.ConsumedAt()), nil
	}
}
