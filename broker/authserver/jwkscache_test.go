package authserver

import (
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lanyardhq/lanyard/internal/safehttp"
)

// TestJWKSCacheNegative: a JWKS URL that fails is not fetched again within
// jwksMinRefetch, however many requests (unauthenticated: the resource id
// comes from the assertion's unverified sub) name its server.
func TestJWKSCacheNegative(t *testing.T) {
	var hits atomic.Int64
	var fail atomic.Bool
	fail.Store(true)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		hits.Add(1)
		if fail.Load() {
			http.Error(w, "down", http.StatusInternalServerError)
			return
		}
		_, _ = w.Write([]byte(`{"keys":[]}`))
	}))
	defer srv.Close()
	c := newJWKSCache(safehttp.NewClient(safehttp.Options{AllowLoopback: true}))
	url := srv.URL + "/jwks"
	t0 := time.Now()

	for i := range 50 {
		if _, err := c.get(t.Context(), url, t0, i%2 == 0); err == nil {
			t.Fatal("a failing JWKS URL gave a set")
		}
	}
	if n := hits.Load(); n != 1 {
		t.Fatalf("%d fetches for 50 requests at once, want 1", n)
	}
	if _, err := c.get(t.Context(), url, t0.Add(jwksMinRefetch-time.Second), true); err == nil {
		t.Fatal("a failing JWKS URL gave a set")
	}
	if n := hits.Load(); n != 1 {
		t.Errorf("%d fetches within jwksMinRefetch of a failure, want 1", n)
	}

	// After the interval: one more try, which now succeeds and is cached.
	fail.Store(false)
	t1 := t0.Add(jwksMinRefetch)
	if b, err := c.get(t.Context(), url, t1, false); err != nil || string(b) != `{"keys":[]}` {
		t.Fatalf("after the interval: %q %v", b, err)
	}
	if n := hits.Load(); n != 2 {
		t.Errorf("%d fetches after the interval, want 2", n)
	}

	// A refetch for an unknown kid is rate-limited too; a failed one keeps
	// serving the set while it is within its age, and is itself not retried
	// within the interval.
	fail.Store(true)
	for range 10 {
		if _, err := c.get(t.Context(), url, t1.Add(time.Second), true); err != nil {
			t.Fatal(err)
		}
	}
	if n := hits.Load(); n != 2 {
		t.Errorf("%d fetches for refreshes right after a fetch, want 2", n)
	}
	t2 := t1.Add(jwksMinRefetch)
	for range 10 {
		if b, err := c.get(t.Context(), url, t2, true); err != nil || b == nil {
			t.Fatalf("failed refresh of a set within its age: %q %v", b, err)
		}
	}
	if n := hits.Load(); n != 3 {
		t.Errorf("%d fetches after a failed refresh, want 3", n)
	}
	// Past its age the set is no longer served; the failure is remembered.
	t3 := t1.Add(jwksMaxAge)
	for range 10 {
		if _, err := c.get(t.Context(), url, t3, false); err == nil {
			t.Fatal("a set past its age was served after a failed fetch")
		}
	}
	if n := hits.Load(); n != 4 {
		t.Errorf("%d fetches past the set's age, want 4", n)
	}
}
