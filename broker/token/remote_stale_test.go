package token_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/lanyardhq/lanyard/broker"
	"github.com/lanyardhq/lanyard/broker/token"
)

// A JWKS whose refetches keep failing is trusted for MaxStale after its
// last successful fetch, not forever.
func TestRemoteVerifierMaxStale(t *testing.T) {
	clock := newClock()
	defer clock.Set(t0)
	k := open(t, opts(sealedStore(t), clock))
	v, srv := newRemoteServed(t, k, clock, token.RemoteOptions{MaxAge: time.Minute, MinRefetch: time.Minute, MaxStale: time.Hour})
	mustVerify(t, v, sign(t, k, claims()))
	srv.down.Store(true)

	clock.Set(t0.Add(59 * time.Minute))
	mustVerify(t, v, sign(t, k, claims())) // stale, within the limit
	clock.Set(t0.Add(time.Hour))
	raw := sign(t, k, claims())
	for range 3 { // a failed refetch, then rate-limited ones: unavailable all the same
		_, err := v.Verify(t.Context(), raw)
		if !errors.Is(err, broker.ErrUnavailable) || errors.Is(err, token.ErrInvalidToken) || !strings.Contains(err.Error(), "last fetched") {
			t.Fatalf("Verify with a JWKS past MaxStale = %v, want ErrUnavailable", err)
		}
	}
	// The issuer is back: the next refetch (after MinRefetch) restores it.
	srv.down.Store(false)
	clock.Set(t0.Add(time.Hour + time.Minute))
	mustVerify(t, v, sign(t, k, claims()))
}

func TestRemoteOptionsMaxStale(t *testing.T) {
	if token.DefaultJWKSMaxStale != 24*time.Hour {
		t.Errorf("DefaultJWKSMaxStale = %s, want 24h", token.DefaultJWKSMaxStale)
	}
	base := token.RemoteOptions{Issuer: issuer, JWKSURL: "https://lanyard.example/jwks.json"}
	for _, tc := range []struct {
		name             string
		maxAge, maxStale time.Duration
		want             string
	}{
		{"negative", 0, -time.Second, "max stale is negative"},
		{"shorter than max age", time.Hour, time.Minute, "shorter than max age"},
	} {
		o := base
		o.MaxAge, o.MaxStale = tc.maxAge, tc.maxStale
		if _, err := token.NewRemoteVerifier(o); !errors.Is(err, broker.ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want ErrInvalid saying %q", tc.name, err, tc.want)
		}
	}
	o := base
	o.MaxAge = 48 * time.Hour // a long max age with the default max stale is fine
	if _, err := token.NewRemoteVerifier(o); err != nil {
		t.Errorf("MaxAge 48h, MaxStale default: %v", err)
	}
}
