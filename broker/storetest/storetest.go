// Package storetest is the conformance suite of broker.Store: every metadata
// store backend (internal/bolt, etcd) runs it from its own tests with
//
//	storetest.Run(t, func(t *testing.T, now func() time.Time) broker.Store { ... })
//
// The suite drives a fake clock, so expiry is tested without sleeping and
// without the wall clock. Like testing/fstest it reports every problem it
// finds rather than stopping at the first.
package storetest

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"testing"
	"time"

	"github.com/lanyardhq/lanyard/broker"
	"github.com/lanyardhq/lanyard/internal/testenv"
)

// Opener returns a fresh, empty store that measures expiry with now. It
// should close the store in t.Cleanup and ignore the error of closing a
// store the suite already closed.
type Opener func(t *testing.T, now func() time.Time) broker.Store

// Run runs the conformance suite against the stores open returns. Every
// subtest gets its own store.
func Run(t *testing.T, open func(t *testing.T, now func() time.Time) broker.Store) {
	t.Helper()
	o := Opener(open)
	t.Run("Users", func(t *testing.T) { testTable(t, o, users) })
	t.Run("Clients", func(t *testing.T) { testTable(t, o, clients) })
	t.Run("Resources", func(t *testing.T) { testTable(t, o, resources) })
	t.Run("Connections", func(t *testing.T) { testTable(t, o, connections) })
	t.Run("Grants", func(t *testing.T) { testTable(t, o, grants) })
	t.Run("AuthCodes", func(t *testing.T) { testSingleUse(t, o, authCodes) })
	t.Run("RefreshTokens", func(t *testing.T) { testSingleUse(t, o, refreshTokens) })
	t.Run("DeviceCodes", func(t *testing.T) { testSingleUse(t, o, deviceCodes) })
	t.Run("Sessions", func(t *testing.T) { testTable(t, o, sessions) })
	t.Run("AuthRequests", func(t *testing.T) { testSingleUse(t, o, authRequests) })
	t.Run("PendingLinks", func(t *testing.T) { testSingleUse(t, o, pendingLinks) })
	t.Run("CompareAndSwap", func(t *testing.T) { testCompareAndSwap(t, o) })
	t.Run("Expiry", func(t *testing.T) { testExpiry(t, o) })
	t.Run("Sweep", func(t *testing.T) { testSweep(t, o) })
	t.Run("Pagination", func(t *testing.T) { testPagination(t, o) })
	t.Run("Cancelled", func(t *testing.T) { testCancelled(t, o) })
	t.Run("Closed", func(t *testing.T) { testClosed(t, o) })
	t.Run("Counters", func(t *testing.T) { testCounters(t, o) })
}

// env is one subtest's store and clock.
type env struct {
	store broker.Store
	clock *testenv.Clock
}

func newEnv(t *testing.T, open Opener) env {
	t.Helper()
	c := testenv.NewClock(time.Date(2026, 3, 1, 12, 0, 0, 123456789, time.UTC))
	s := open(t, c.Now)
	if s == nil {
		t.Fatal("open returned a nil store")
	}
	return env{store: s, clock: c}
}

// wantErr reports unless err matches target with errors.Is, also after one
// more wrapping, and is not the bare sentinel (stores add context).
func wantErr(t *testing.T, what string, err, target error) {
	t.Helper()
	switch {
	case !errors.Is(err, target):
		t.Errorf("%s: error = %v, want one matching %q", what, err, target)
	case !errors.Is(fmt.Errorf("caller: %w", err), target):
		t.Errorf("%s: error %v no longer matches %q once wrapped", what, err, target)
	case err == target:
		t.Errorf("%s: returned the bare sentinel %q, want it wrapped with context", what, err)
	}
}

// noErr reports err as unexpected and returns whether it was nil.
func noErr(t *testing.T, what string, err error) bool {
	t.Helper()
	if err != nil {
		t.Errorf("%s: unexpected error: %v", what, err)
		return false
	}
	return true
}

func mustNoErr(t *testing.T, what string, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

func equal[T any](t *testing.T, what string, got, want T) {
	t.Helper()
	if !reflect.DeepEqual(got, want) {
		t.Errorf("%s:\n got %+v\nwant %+v", what, got, want)
	}
}

func ids[T broker.Record](items []T) []string {
	out := make([]string, len(items))
	for i, r := range items {
		out[i] = r.RecordID()
	}
	return out
}

// listAll pages through a listing with the given limit and returns every
// item, reporting duplicates, disorder and runaway cursors.
func listAll[T broker.Record](t *testing.T, tab broker.Table[T], q broker.Query) (all []T, sizes []int) {
	t.Helper()
	seen := map[string]bool{}
	for range 1000 {
		page, err := tab.List(context.Background(), q)
		if !noErr(t, fmt.Sprintf("List(%+v)", q), err) {
			return all, sizes
		}
		sizes = append(sizes, len(page.Items))
		for _, r := range page.Items {
			id := r.RecordID()
			if seen[id] {
				t.Errorf("List(%+v): %q listed twice", q, id)
			}
			if n := len(all); n > 0 && all[n-1].RecordID() >= id {
				t.Errorf("List(%+v): %q listed after %q, want ID order", q, id, all[n-1].RecordID())
			}
			seen[id] = true
			all = append(all, r)
		}
		if page.Next == "" {
			return all, sizes
		}
		if len(page.Items) == 0 {
			t.Errorf("List(%+v): empty page with Next %q", q, page.Next)
			return all, sizes
		}
		q.After = page.Next
	}
	t.Errorf("List(%+v): cursor never ended", q)
	return all, sizes
}
