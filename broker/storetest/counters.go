package storetest

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/lanyardhq/lanyard/broker"
)

// testCounters checks broker.Counters: counts per key and window, a new
// window starting again at 1, distinct counts for concurrent callers,
// invalid input, cancelled contexts, a closed store, and Sweep not
// counting ended windows as records.
func testCounters(t *testing.T, open Opener) {
	ctx := context.Background()
	e := newEnv(t, open)
	c := e.store.Counters()
	incr := func(key string, window time.Duration) int64 {
		t.Helper()
		n, err := c.Incr(ctx, key, window)
		noErr(t, "Incr "+key, err)
		return n
	}
	// The suite's clock is 12:00:00.123: the minute window is [12:00, 12:01).
	for want := int64(1); want <= 3; want++ {
		equal(t, "Incr signin/203.0.113.7", incr("signin/203.0.113.7", time.Minute), want)
	}
	equal(t, "Incr of another key", incr("signin/203.0.113.8", time.Minute), int64(1))
	e.clock.Advance(59 * time.Second)
	equal(t, "Incr later in the same window", incr("signin/203.0.113.7", time.Minute), int64(4))
	e.clock.Advance(time.Second)
	equal(t, "Incr in the next window", incr("signin/203.0.113.7", time.Minute), int64(1))
	equal(t, "Incr with an hour window", incr("register/203.0.113.7", time.Hour), int64(1))

	e.clock.Advance(2 * time.Hour)
	n, err := e.store.Sweep(ctx)
	if noErr(t, "Sweep", err) {
		equal(t, "records Sweep removed (ended counter windows are not records)", n, 0)
	}
	equal(t, "Incr after Sweep", incr("signin/203.0.113.7", time.Minute), int64(1))

	t.Run("Concurrent", func(t *testing.T) {
		const callers = 40
		var (
			wg  sync.WaitGroup
			mu  sync.Mutex
			got []int64
		)
		for range callers {
			wg.Go(func() {
				n, err := c.Incr(ctx, "hot", time.Hour)
				noErr(t, "concurrent Incr", err)
				mu.Lock()
				got = append(got, n)
				mu.Unlock()
			})
		}
		wg.Wait()
		slices.Sort(got)
		want := make([]int64, callers)
		for i := range want {
			want[i] = int64(i + 1)
		}
		equal(t, "counts of concurrent callers, sorted", got, want)
	})

	t.Run("Invalid", func(t *testing.T) {
		for name, call := range map[string]func() error{
			"empty key":       func() error { return second(c.Incr(ctx, "", time.Minute)) },
			"long key":        func() error { return second(c.Incr(ctx, string(make([]byte, 257)), time.Minute)) },
			"control in key":  func() error { return second(c.Incr(ctx, "a\x00b", time.Minute)) },
			"zero window":     func() error { return second(c.Incr(ctx, "k", 0)) },
			"negative window": func() error { return second(c.Incr(ctx, "k", -time.Minute)) },
		} {
			wantErr(t, "Incr with "+name, call(), broker.ErrInvalid)
		}
	})

	t.Run("Cancelled", func(t *testing.T) {
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		_, err := c.Incr(cctx, "cancelled", time.Minute)
		wantErr(t, "Incr with a cancelled context", err, context.Canceled)
		equal(t, "Incr after the cancelled one", incr("cancelled", time.Minute), int64(1))
	})

	t.Run("Closed", func(t *testing.T) {
		e := newEnv(t, open)
		mustNoErr(t, "Close", e.store.Close())
		_, err := e.store.Counters().Incr(ctx, "k", time.Minute)
		wantErr(t, "Incr after Close", err, broker.ErrUnavailable)
	})
}
