package storetest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/lanyardhq/lanyard/broker"
)

const racers = 32

// testSingleUse runs the table checks and the single-use checks for k.
func testSingleUse[T broker.SingleUse[T]](t *testing.T, open Opener, k singleUseKind[T]) {
	testTable(t, open, k.kind)
	ctx := context.Background()

	t.Run("ConsumeRace", func(t *testing.T) {
		e := newEnv(t, open)
		tab := k.su(e.store)
		rec := k.fixture("code-1", "1", e.clock.Now())
		mustNoErr(t, "Create", tab.Create(ctx, rec))
		results := race(func(int) (T, error) { return tab.Consume(ctx, "code-1", nil) })
		wins := 0
		for i, r := range results {
			switch {
			case r.err == nil:
				wins++
				equal(t, "winner's record", r.rec, rec.WithConsumedAt(e.clock.Now()))
			case errors.Is(r.err, broker.ErrConsumed):
				if r.rec.RecordID() != "code-1" || r.rec.ConsumedAt().IsZero() {
					t.Errorf("loser %d: got %+v with ErrConsumed, want the consumed record", i, r.rec)
				}
			default:
				t.Errorf("loser %d: error = %v, want ErrConsumed", i, r.err)
			}
		}
		if wins != 1 {
			t.Errorf("%d of %d concurrent Consume calls won, want exactly 1", wins, racers)
		}
		got, err := tab.Consume(ctx, "code-1", nil)
		wantErr(t, "Consume again", err, broker.ErrConsumed)
		equal(t, "replayed record", got, rec.WithConsumedAt(e.clock.Now()))
		_, err = tab.Consume(ctx, "missing", nil)
		wantErr(t, "Consume missing", err, broker.ErrNotFound)
	})

	t.Run("ConsumeCheck", func(t *testing.T) {
		e := newEnv(t, open)
		tab := k.su(e.store)
		rec := k.fixture("code-1", "1", e.clock.Now())
		mustNoErr(t, "Create", tab.Create(ctx, rec))
		wrongClient := errors.New("wrong client")
		_, err := tab.Consume(ctx, "code-1", func(got T) error {
			equal(t, "check argument", got, rec)
			return wrongClient
		})
		if !errors.Is(err, wrongClient) {
			t.Errorf("Consume with failing check: error = %v, want %v", err, wrongClient)
		}
		if got, err := tab.Get(ctx, "code-1"); noErr(t, "Get", err) {
			equal(t, "record after failing check", got, rec)
		}
		e.clock.Advance(1)
		got, err := tab.Consume(ctx, "code-1", func(T) error { return nil })
		if noErr(t, "Consume after failing check", err) {
			equal(t, "consumed record", got, rec.WithConsumedAt(e.clock.Now()))
		}
		if got, err := tab.Get(ctx, "code-1"); noErr(t, "Get", err) {
			equal(t, "stored record after Consume", got, rec.WithConsumedAt(e.clock.Now()))
		}
	})

	t.Run("UpdateKeepsConsumed", func(t *testing.T) {
		e := newEnv(t, open)
		tab := k.su(e.store)
		rec := k.fixture("code-1", "1", e.clock.Now())
		mustNoErr(t, "Create", tab.Create(ctx, rec))

		// Update cannot consume: only Consume and Rotate do.
		got, err := tab.Update(ctx, "code-1", func(old T) (T, error) {
			return old.WithConsumedAt(e.clock.Now()), nil
		})
		if noErr(t, "Update setting ConsumedAt", err) && !got.ConsumedAt().IsZero() {
			t.Errorf("Update setting ConsumedAt consumed the record: result ConsumedAt = %v", got.ConsumedAt())
		}
		if got, err := tab.Get(ctx, "code-1"); noErr(t, "Get", err) && !got.ConsumedAt().IsZero() {
			t.Errorf("Update setting ConsumedAt consumed the stored record: ConsumedAt = %v", got.ConsumedAt())
		}

		e.clock.Advance(1)
		consumedAt := e.clock.Now()
		_, err = tab.Consume(ctx, "code-1", nil)
		mustNoErr(t, "Consume", err)

		// Nor can it un-consume: a replay must stay detectable.
		want := k.mutate(rec).WithConsumedAt(consumedAt)
		got, err = tab.Update(ctx, "code-1", func(old T) (T, error) {
			return k.mutate(old).WithConsumedAt(time.Time{}), nil
		})
		if noErr(t, "Update clearing ConsumedAt", err) {
			equal(t, "Update clearing ConsumedAt: result", got, want)
		}
		if got, err := tab.Get(ctx, "code-1"); noErr(t, "Get after Update", err) {
			equal(t, "stored record after Update clearing ConsumedAt", got, want)
		}
		got, err = tab.Consume(ctx, "code-1", nil)
		wantErr(t, "Consume after Update clearing ConsumedAt", err, broker.ErrConsumed)
		equal(t, "replayed record", got, want)
		_, err = tab.Rotate(ctx, "code-1", nil, k.fixture("next", "next", e.clock.Now()))
		wantErr(t, "Rotate after Update clearing ConsumedAt", err, broker.ErrConsumed)
	})

	t.Run("Rotate", func(t *testing.T) {
		e := newEnv(t, open)
		tab := k.su(e.store)
		old := k.fixture("old", "old", e.clock.Now())
		next := k.fixture("next", "next", e.clock.Now())
		other := k.fixture("other", "other", e.clock.Now())
		mustNoErr(t, "Create old", tab.Create(ctx, old))
		mustNoErr(t, "Create other", tab.Create(ctx, other))

		_, err := tab.Rotate(ctx, "old", nil, other)
		wantErr(t, "Rotate into an existing ID", err, broker.ErrAlreadyExists)
		_, err = tab.Rotate(ctx, "old", nil, k.invalid(next))
		wantErr(t, "Rotate into an invalid record", err, broker.ErrInvalid)
		failed := errors.New("check failed")
		_, err = tab.Rotate(ctx, "old", func(T) error { return failed }, next)
		if !errors.Is(err, failed) {
			t.Errorf("Rotate with failing check: error = %v, want %v", err, failed)
		}
		if got, err := tab.Get(ctx, "old"); noErr(t, "Get old", err) {
			equal(t, "old after failed Rotates", got, old)
		}
		if _, err := tab.Get(ctx, "next"); !errors.Is(err, broker.ErrNotFound) {
			t.Errorf("failed Rotate created next: Get error = %v, want ErrNotFound", err)
		}

		got, err := tab.Rotate(ctx, "old", nil, next)
		if noErr(t, "Rotate", err) {
			equal(t, "Rotate result", got, old.WithConsumedAt(e.clock.Now()))
		}
		if got, err := tab.Get(ctx, "next"); noErr(t, "Get next", err) {
			equal(t, "next after Rotate", got, next)
		}
		got, err = tab.Rotate(ctx, "old", nil, k.fixture("next-2", "next-2", e.clock.Now()))
		wantErr(t, "Rotate a consumed record", err, broker.ErrConsumed)
		equal(t, "replayed record", got, old.WithConsumedAt(e.clock.Now()))
		if _, err := tab.Get(ctx, "next-2"); !errors.Is(err, broker.ErrNotFound) {
			t.Errorf("Rotate of a consumed record created next-2: Get error = %v, want ErrNotFound", err)
		}
	})

	t.Run("RotateRace", func(t *testing.T) {
		e := newEnv(t, open)
		tab := k.su(e.store)
		mustNoErr(t, "Create", tab.Create(ctx, k.fixture("old", "old", e.clock.Now())))
		results := race(func(i int) (T, error) {
			n := fmt.Sprintf("next-%02d", i)
			return tab.Rotate(ctx, "old", nil, k.fixture(n, n, e.clock.Now()))
		})
		wins := 0
		for i, r := range results {
			if r.err == nil {
				wins++
			} else if !errors.Is(r.err, broker.ErrConsumed) {
				t.Errorf("Rotate %d: error = %v, want nil or ErrConsumed", i, r.err)
			}
		}
		if wins != 1 {
			t.Errorf("%d of %d concurrent Rotate calls won, want exactly 1", wins, racers)
		}
		page, err := tab.List(ctx, broker.Query{})
		if noErr(t, "List", err) && len(page.Items) != 2 {
			t.Errorf("after racing Rotates the table holds %q, want old and exactly one next", ids(page.Items))
		}
	})
}

type result[T any] struct {
	rec T
	err error
}

// race runs fn in racers goroutines released at once.
func race[T any](fn func(i int) (T, error)) []result[T] {
	out := make([]result[T], racers)
	var start, done sync.WaitGroup
	start.Add(1)
	for i := range racers {
		done.Add(1)
		go func() {
			defer done.Done()
			start.Wait()
			out[i].rec, out[i].err = fn(i)
		}()
	}
	start.Done()
	done.Wait()
	return out
}
