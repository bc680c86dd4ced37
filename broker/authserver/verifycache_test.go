package authserver

import (
	"fmt"
	"testing"
	"time"

	"github.com/lanyardhq/lanyard/broker/token"
)

func TestVerifiedCacheBounded(t *testing.T) {
	now := time.Date(2026, 11, 22, 3, 0, 0, 0, time.UTC)
	live := token.Claims{Subject: "u", IssuedAt: now, ExpiresAt: now.Add(time.Hour)}
	dead := token.Claims{Subject: "u", IssuedAt: now.Add(-2 * time.Hour), ExpiresAt: now.Add(-time.Hour)}
	c := newVerifiedCache(4)
	for i := range 100 {
		c.put(fmt.Sprint("tok", i), live, now)
		if len(c.m) > 4 {
			t.Fatalf("after %d puts the cache holds %d, max 4", i+1, len(c.m))
		}
	}
	if _, ok := c.get("tok99", now); !ok {
		t.Error("the token just put is not there")
	}
	// Putting a token that is there again evicts nothing.
	c.put("tok99", live, now)
	if len(c.m) != 4 {
		t.Errorf("re-put of a cached token: %d entries, want 4", len(c.m))
	}
	// Expired entries go first: with three expired and one live, putting
	// a new one keeps the live one (the cache is small enough for a full
	// look).
	c = newVerifiedCache(4)
	c.put("live", live, now)
	for i := range 3 {
		c.put(fmt.Sprint("dead", i), dead, now)
	}
	c.put("new", live, now)
	if _, ok := c.get("live", now); !ok {
		t.Error("a live entry was evicted while expired ones were there")
	}
	if _, ok := c.get("new", now); !ok || len(c.m) > 4 {
		t.Errorf("new entry present = %v, size %d", ok, len(c.m))
	}
}

// BenchmarkVerifiedCachePutFull: a put into a full cache costs the same
// whatever its size (it used to scan the whole map under the lock).
func BenchmarkVerifiedCachePutFull(b *testing.B) {
	now := time.Now()
	live := token.Claims{Subject: "u", IssuedAt: now, ExpiresAt: now.Add(time.Hour)}
	for _, n := range []int{1_000, 100_000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			c := newVerifiedCache(n)
			for i := range n {
				c.put(fmt.Sprint("fill", i), live, now)
			}
			i := 0
			for b.Loop() {
				i++
				c.put(fmt.Sprint("new", i), live, now)
			}
		})
	}
}
