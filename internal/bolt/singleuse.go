package bolt

import (
	"context"
	"errors"
	"fmt"

	"github.com/lanyardhq/lanyard/broker"
	bbolt "go.etcd.io/bbolt"
)

// singleUse is a table of single-use records. Consume and Rotate run in one
// bbolt write transaction; bbolt admits one writer at a time, so of many
// concurrent callers exactly one sees the record unconsumed.
type singleUse[T broker.SingleUse[T]] struct {
	*table[T]
}

var _ broker.SingleUseTable[broker.AuthCode] = (*singleUse[broker.AuthCode])(nil)

func newSingleUse[T broker.SingleUse[T]](db *DB, kind string) *singleUse[T] {
	return &singleUse[T]{newTable[T](db, kind)}
}

// Update implements broker.Table for single-use records. The stored
// ConsumedAt always wins over the one fn returns: a consumed record stays
// consumed (an Update cannot un-consume it and re-open it to a replay), and
// an unconsumed one is consumed only by Consume or Rotate.
func (s *singleUse[T]) Update(ctx context.Context, id string, fn func(T) (T, error)) (T, error) {
	return s.table.Update(ctx, id, broker.KeepConsumed(fn))
}

// Consume implements broker.SingleUseTable. A record consumed already is
// reported (with ErrConsumed) before check runs, so that a replay is always
// detected.
func (s *singleUse[T]) Consume(ctx context.Context, id string, check func(T) error) (T, error) {
	return s.consume(ctx, s.kind+".consume", id, check, nil)
}

// Rotate implements broker.SingleUseTable.
func (s *singleUse[T]) Rotate(ctx context.Context, id string, check func(T) error, next T) (T, error) {
	return s.consume(ctx, s.kind+".rotate", id, check, &next)
}

func (s *singleUse[T]) consume(ctx context.Context, op, id string, check func(T) error, next *T) (T, error) {
	var out, replayed T
	err := s.db.update(ctx, op, func(tx *bbolt.Tx) error {
		if next != nil {
			if err := (*next).Validate(); err != nil {
				return fmt.Errorf("%s: rotate: %w", s.kind, err)
			}
		}
		now := s.db.now()
		rec, err := s.get(tx, id, now)
		if err != nil {
			return err
		}
		if !rec.ConsumedAt().IsZero() {
			replayed = rec
		}
		if err := broker.CheckConsume(s.kind, id, rec, check); err != nil {
			return err
		}
		done := rec.WithConsumedAt(now)
		if err := s.store(tx, &rec, done, now); err != nil {
			return err
		}
		if next != nil {
			if err := s.create(tx, *next, now); err != nil {
				return err
			}
		}
		out = done
		return nil
	})
	switch {
	case errors.Is(err, broker.ErrConsumed):
		return replayed, err
	case err != nil:
		var zero T
		return zero, err
	}
	return out, nil
}
