package etcd

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/lanyardhq/lanyard/broker"
)

// singleUse is a table of single-use records. Consume and Rotate are one
// transaction guarded on the ModRevision of the record they read
// unconsumed, so of many concurrent callers (in any number of replicas)
// exactly one commits; the others re-read and find it consumed.
type singleUse[T broker.SingleUse[T]] struct {
	*table[T]
}

var _ broker.SingleUseTable[broker.AuthCode] = (*singleUse[broker.AuthCode])(nil)

func newSingleUse[T broker.SingleUse[T]](s *Store, kind string) *singleUse[T] {
	return &singleUse[T]{newTable[T](s, kind)}
}

// Update implements broker.Table for single-use records. The stored
// ConsumedAt always wins over the one fn returns: a consumed record stays
// consumed, and an unconsumed one is consumed only by Consume or Rotate.
func (s *singleUse[T]) Update(ctx context.Context, id string, fn func(T) (T, error)) (T, error) {
	return s.table.Update(ctx, id, broker.KeepConsumed(fn))
}

// Consume implements broker.SingleUseTable. A record consumed already is
// reported (with ErrConsumed) before check runs, so that a replay is always
// detected. check may run more than once when Consume races other writers
// of the record; each run sees the record it would consume.
func (s *singleUse[T]) Consume(ctx context.Context, id string, check func(T) error) (T, error) {
	return s.consume(ctx, s.kind+".consume", id, check, nil)
}

// Rotate implements broker.SingleUseTable: the consumed record and next
// are written in one transaction, which also requires next's ID and unique
// values to be free.
func (s *singleUse[T]) Rotate(ctx context.Context, id string, check func(T) error, next T) (T, error) {
	return s.consume(ctx, s.kind+".rotate", id, check, &next)
}

func (s *singleUse[T]) consume(ctx context.Context, op, id string, check func(T) error, next *T) (out T, err error) {
	defer s.s.observe(op, time.Now(), &err)
	if err := s.s.usable(ctx, op); err != nil {
		return out, err
	}
	if next != nil {
		if err := (*next).Validate(); err != nil {
			return out, fmt.Errorf("%s: rotate: %w", s.kind, err)
		}
	}
	var replayed T
	err = s.s.retry(ctx, op, s.recKey(id), id, func() (bool, error) {
		now := s.s.now()
		kv, rec, err := s.loadLive(ctx, op, id, now)
		if err != nil {
			return false, err
		}
		if !rec.ConsumedAt().IsZero() {
			replayed = rec
		}
		if err := broker.CheckConsume(s.kind, id, rec, check); err != nil {
			return false, err
		}
		done := rec.WithConsumedAt(now)
		p := newPlan()
		p.unchanged(s.recKey(id), kv)
		if err := s.stage(ctx, op, p, &rec, &done, now, nil); err != nil {
			return false, err
		}
		if next != nil {
			if err := s.stageCreate(ctx, op, p, *next, now); err != nil {
				return false, err
			}
		}
		ok, err := s.s.commit(ctx, op, p)
		if ok {
			out = done
		}
		return ok, err
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
