package web_test

import (
	"crypto/rand"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lanyardhq/lanyard/broker"
	"github.com/lanyardhq/lanyard/internal/bolt"
	"github.com/lanyardhq/lanyard/internal/config"
	"github.com/lanyardhq/lanyard/internal/server"
	"github.com/lanyardhq/lanyard/web"
)

// TestSignInRateLimit runs two UIs on one store, as two replicas: the
// sign-in attempts of one address are counted in the store's counters, so
// the 4th attempt in a minute with LoginRate 3 is refused with 429 whichever
// replica it reaches, before any password is looked at; the next minute
// starts again.
func TestSignInRateLimit(t *testing.T) {
	var clock atomic.Int64 // unix seconds
	clock.Store(time.Date(2026, 3, 1, 12, 0, 30, 0, time.UTC).Unix())
	db, err := bolt.Open(filepath.Join(t.TempDir(), "l.db"), bolt.Options{Now: func() time.Time { return time.Unix(clock.Load(), 0) }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	var verified atomic.Int32
	var replicas []*client
	for range 2 {
		srv := server.New(server.Options{HTTP: config.Default().HTTP, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
		ui, err := web.New(web.Options{Store: db, Key: key, LoginRate: 3,
			VerifyPassword: func(string, broker.SecretString) error { verified.Add(1); return errors.New("wrong") }})
		if err != nil {
			t.Fatal(err)
		}
		ui.Mount(srv)
		ts := httptest.NewServer(srv.Handler())
		t.Cleanup(ts.Close)
		replicas = append(replicas, &client{t: t, base: ts.URL, cookies: map[string]string{}})
	}
	attempt := func(c *client) int {
		_, page := c.do(http.MethodGet, "/login", nil)
		resp, _ := c.do(http.MethodPost, "/login", url.Values{"username": {"nobody"}, "password": {"x"}, "csrf_token": {csrf(t, page)}})
		return resp.StatusCode
	}
	for i, want := range []int{401, 401, 401, 429, 429} {
		if got := attempt(replicas[i%2]); got != want {
			t.Errorf("attempt %d (replica %d): status %d, want %d", i+1, i%2, got, want)
		}
	}
	if verified.Load() != 3 {
		t.Errorf("passwords checked: %d, want 3 (none over the limit)", verified.Load())
	}
	clock.Add(60)
	if got := attempt(replicas[1]); got != 401 {
		t.Errorf("attempt in the next minute: status %d, want 401", got)
	}
}
