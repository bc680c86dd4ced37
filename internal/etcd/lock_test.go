package etcd

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lanyardhq/lanyard/broker"
)

// TestLock runs three Stores on one prefix, as three replicas: holders of
// one lock never overlap (in a process or across processes), other names
// are independent, a waiter gives up when its context ends, and closing a
// Store releases the locks it held.
func TestLock(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	stores := []*Store{e.replica(t, nil), e.replica(t, nil), e.replica(t, nil)}

	t.Run("MutualExclusion", func(t *testing.T) {
		var holders, maxHolders, done atomic.Int64
		var wg sync.WaitGroup
		for i := range 30 {
			wg.Go(func() {
				unlock, err := stores[i%3].Lock(ctx, "refresh/conn-1")
				if err != nil {
					t.Errorf("Lock %d: %v", i, err)
					return
				}
				n := holders.Add(1)
				for {
					m := maxHolders.Load()
					if n <= m || maxHolders.CompareAndSwap(m, n) {
						break
					}
				}
				time.Sleep(2 * time.Millisecond)
				holders.Add(-1)
				done.Add(1)
				unlock()
			})
		}
		wg.Wait()
		if done.Load() != 30 || maxHolders.Load() != 1 {
			t.Errorf("30 lockers on 3 replicas: %d held the lock, at most %d at once; want 30, 1", done.Load(), maxHolders.Load())
		}
	})

	t.Run("WaitAndRelease", func(t *testing.T) {
		unlock, err := stores[0].Lock(ctx, "a")
		if err != nil {
			t.Fatal(err)
		}
		other, err := stores[1].Lock(ctx, "b")
		if err != nil {
			t.Fatalf("another name while a is held: %v", err)
		}
		other()
		wctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
		defer cancel()
		if _, err := stores[1].Lock(wctx, "a"); !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Lock of a held lock until the deadline: %v, want context.DeadlineExceeded", err)
		}
		got := make(chan error, 1)
		go func() {
			u, err := stores[2].Lock(ctx, "a")
			if err == nil {
				u()
			}
			got <- err
		}()
		select {
		case err := <-got:
			t.Fatalf("Lock returned (%v) while another replica held the lock", err)
		case <-time.After(100 * time.Millisecond):
		}
		unlock()
		select {
		case err := <-got:
			if err != nil {
				t.Errorf("Lock after the release: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Error("Lock still waiting 5s after the release")
		}
	})

	t.Run("CloseReleases", func(t *testing.T) {
		s := e.replica(t, nil)
		if _, err := s.Lock(ctx, "c"); err != nil {
			t.Fatal(err)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		lctx, cancel := context.WithTimeout(ctx, 2*time.Second) // well under LockTTL
		defer cancel()
		unlock, err := stores[0].Lock(lctx, "c")
		if err != nil {
			t.Fatalf("Lock after the holder closed its store: %v", err)
		}
		unlock()
		if _, err := s.Lock(ctx, "c"); !errors.Is(err, broker.ErrUnavailable) {
			t.Errorf("Lock on a closed store: %v, want ErrUnavailable", err)
		}
	})

	t.Run("Invalid", func(t *testing.T) {
		if _, err := stores[0].Lock(ctx, ""); !errors.Is(err, broker.ErrInvalid) {
			t.Errorf("Lock with an empty name: %v, want ErrInvalid", err)
		}
	})
}
