package token_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwa"

	"github.com/lanyardhq/lanyard/broker"
	"github.com/lanyardhq/lanyard/broker/token"
	"github.com/lanyardhq/lanyard/internal/testenv"
)

// jwksServer publishes a keyring's public JWKS over HTTP, the way the
// authorization server does, and counts the requests.
type jwksServer struct {
	*httptest.Server
	hits atomic.Int32
	down atomic.Bool // answer 503
	body atomic.Pointer[string]
}

func serveJWKS(t testing.TB, k *token.Keyring) *jwksServer {
	t.Helper()
	s := &jwksServer{}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.hits.Add(1)
		if s.down.Load() {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		if b := s.body.Load(); b != nil {
			_, _ = w.Write([]byte(*b))
			return
		}
		b, err := k.PublicJWKS()
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/jwk-set+json")
		_, _ = w.Write(b)
	}))
	t.Cleanup(s.Close)
	return s
}

func newRemote(t testing.TB, k *token.Keyring, clock *testenv.Clock, o token.RemoteOptions) *token.RemoteVerifier {
	t.Helper()
	v, _ := newRemoteServed(t, k, clock, o)
	return v
}

func newRemoteServed(t testing.TB, k *token.Keyring, clock *testenv.Clock, o token.RemoteOptions) (*token.RemoteVerifier, *jwksServer) {
	t.Helper()
	srv := serveJWKS(t, k)
	if o.Issuer == "" {
		o.Issuer = issuer
	}
	o.JWKSURL = srv.URL + "/jwks.json"
	o.Now = clock.Now
	v, err := token.NewRemoteVerifier(o)
	if err != nil {
		t.Fatalf("NewRemoteVerifier: %v", err)
	}
	return v, srv
}

func TestRemoteVerifierMatchesKeyring(t *testing.T) {
	clock := newClock()
	k := open(t, opts(sealedStore(t), clock))
	for _, alg := range []string{"ES256", "RS256", "EdDSA"} {
		t.Run(alg, func(t *testing.T) {
			o := opts(sealedStore(t), clock)
			o.Alg = alg
			k := open(t, o)
			v := newRemote(t, k, clock, token.RemoteOptions{})
			raw := sign(t, k, claims())
			if got, want := mustVerify(t, v, raw), mustVerify(t, k, raw); !claimsEqual(got, want) {
				t.Errorf("remote claims %+v, keyring claims %+v", got, want)
			}
		})
	}
	t.Run("wrong issuer configured", func(t *testing.T) {
		v := newRemote(t, k, clock, token.RemoteOptions{Issuer: "https://other.example"})
		mustReject(t, v, sign(t, k, claims()), "issuer")
	})
	t.Run("another issuer's keys", func(t *testing.T) {
		v := newRemote(t, open(t, opts(sealedStore(t), clock)), clock, token.RemoteOptions{})
		mustReject(t, v, sign(t, k, claims()), "unknown key")
	})
}

// A rotated-in key is learnt by one refetch when the first token it signed
// arrives; the old key's tokens keep verifying from the cache.
func TestRemoteVerifierRotation(t *testing.T) {
	clock := newClock()
	k := open(t, opts(sealedStore(t), clock))
	// MaxAge beyond the test, so that only an unknown kid can cause a fetch.
	v, srv := newRemoteServed(t, k, clock, token.RemoteOptions{MaxAge: 24 * time.Hour, MinRefetch: time.Minute})
	old := sign(t, k, claims())
	mustVerify(t, v, old)
	mustVerify(t, v, old)
	if got := srv.hits.Load(); got != 1 {
		t.Fatalf("JWKS fetched %d times for two tokens of one key, want 1", got)
	}

	// Rotate: the new key is pending (published) for PublishDelay, then signs.
	// The verifier cached the JWKS before the rotation, so it has never seen it.
	newKid, err := k.Rotate(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	clock.Set(t0.Add(delay + time.Second))
	fresh := sign(t, k, claims())
	if kidOf(t, fresh) != newKid {
		t.Fatalf("token signed by %s, want the rotated-in %s", kidOf(t, fresh), newKid)
	}
	mustVerify(t, v, fresh)
	if got := srv.hits.Load(); got != 2 {
		t.Errorf("JWKS fetched %d times, want 2 (one refetch for the unknown kid)", got)
	}
	mustVerify(t, v, old)
	mustVerify(t, v, fresh)
	if got := srv.hits.Load(); got != 2 {
		t.Errorf("JWKS fetched %d times after the refetch, want still 2", got)
	}
}

// However many tokens with unknown kids arrive, concurrently or not, the
// verifier fetches the JWKS at most once per MinRefetch.
func TestRemoteVerifierUnknownKidFlood(t *testing.T) {
	clock := newClock()
	k := open(t, opts(sealedStore(t), clock))
	v, srv := newRemoteServed(t, k, clock, token.RemoteOptions{MaxAge: 24 * time.Hour, MinRefetch: time.Minute})
	mustVerify(t, v, sign(t, k, claims())) // first fetch
	other, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	flood := func(round int) {
		var wg sync.WaitGroup
		for i := range 200 {
			wg.Go(func() {
				raw := forge(t, jwa.ES256, other, map[string]any{"typ": "at+jwt", "kid": fmt.Sprintf("forged-%d-%d", round, i)}, goodClaims(clock.Now()))
				_, err := v.Verify(context.Background(), raw)
				if !errors.Is(err, token.ErrInvalidToken) || !strings.Contains(err.Error(), "unknown key") {
					t.Errorf("forged kid: %v, want unknown key", err)
				}
			})
		}
		wg.Wait()
	}
	flood(1)
	if got := srv.hits.Load(); got != 1 {
		t.Errorf("after a flood within MinRefetch of the first fetch: %d fetches, want 1", got)
	}
	clock.Set(t0.Add(time.Minute))
	flood(2)
	if got := srv.hits.Load(); got != 2 {
		t.Errorf("after a flood one MinRefetch later: %d fetches, want 2", got)
	}
	clock.Set(t0.Add(time.Minute + 59*time.Second))
	flood(3)
	if got := srv.hits.Load(); got != 2 {
		t.Errorf("after a flood 59s after the last refetch: %d fetches, want 2", got)
	}
	if got := v.Fetches(); got != 2 {
		t.Errorf("Fetches() = %d, want 2", got)
	}
	// Good tokens were never held up.
	mustVerify(t, v, sign(t, k, claims()))
}

func TestRemoteVerifierUnavailable(t *testing.T) {
	clock := newClock()
	k := open(t, opts(sealedStore(t), clock))
	raw := sign(t, k, claims())

	t.Run("down from the start", func(t *testing.T) {
		v, srv := newRemoteServed(t, k, clock, token.RemoteOptions{})
		srv.down.Store(true)
		for range 3 { // the second and third do not fetch (MinRefetch) but still say unavailable
			_, err := v.Verify(t.Context(), raw)
			if !errors.Is(err, broker.ErrUnavailable) || errors.Is(err, token.ErrInvalidToken) {
				t.Fatalf("Verify with the JWKS down = %v, want ErrUnavailable and not ErrInvalidToken", err)
			}
		}
		if got := srv.hits.Load(); got != 1 {
			t.Errorf("%d fetches, want 1", got)
		}
		if err := v.Refresh(t.Context()); !errors.Is(err, broker.ErrUnavailable) {
			t.Errorf("Refresh = %v, want ErrUnavailable", err)
		}
		srv.down.Store(false)
		if err := v.Refresh(t.Context()); err != nil {
			t.Fatalf("Refresh = %v", err)
		}
		mustVerify(t, v, raw)
	})
	t.Run("down later: the cached set keeps working", func(t *testing.T) {
		v, srv := newRemoteServed(t, k, clock, token.RemoteOptions{MaxAge: time.Minute, MinRefetch: time.Minute})
		mustVerify(t, v, raw)
		srv.down.Store(true)
		clock.Set(t0.Add(2 * time.Minute)) // the set is old: Verify tries to refresh it
		defer clock.Set(t0)
		mustVerify(t, v, raw)
		if got := srv.hits.Load(); got != 2 {
			t.Errorf("%d fetches, want 2", got)
		}
	})
	t.Run("unusable documents", func(t *testing.T) {
		for name, body := range map[string]string{
			"not JSON":          "<html>",
			"no keys":           `{"keys":[]}`,
			"only a secret key": `{"keys":[{"kty":"oct","k":"c2VjcmV0","kid":"x","alg":"HS256"}]}`,
			"too large":         `{"keys":[],"pad":"` + strings.Repeat("x", token.MaxJWKSSize) + `"}`,
		} {
			t.Run(name, func(t *testing.T) {
				v, srv := newRemoteServed(t, k, clock, token.RemoteOptions{})
				srv.body.Store(&body)
				if _, err := v.Verify(t.Context(), raw); !errors.Is(err, broker.ErrUnavailable) {
					t.Errorf("Verify = %v, want ErrUnavailable", err)
				}
			})
		}
	})
}

// An old JWKS is replaced after MaxAge: a key the issuer stopped
// publishing stops being trusted.
func TestRemoteVerifierMaxAge(t *testing.T) {
	clock := newClock()
	k := open(t, opts(sealedStore(t), clock))
	v, srv := newRemoteServed(t, k, clock, token.RemoteOptions{MaxAge: 5 * time.Minute})
	raw := sign(t, k, claims())
	mustVerify(t, v, raw)
	other := open(t, opts(sealedStore(t), clock))
	otherJWKS, err := other.PublicJWKS()
	if err != nil {
		t.Fatal(err)
	}
	s := string(otherJWKS)
	srv.body.Store(&s)
	clock.Set(t0.Add(4 * time.Minute))
	mustVerify(t, v, raw)
	clock.Set(t0.Add(5 * time.Minute))
	mustReject(t, v, raw, "unknown key")
}

func TestRemoteOptionsValidation(t *testing.T) {
	_, err := token.NewRemoteVerifier(token.RemoteOptions{MinRefetch: -1, MaxAge: -1})
	if !errors.Is(err, broker.ErrInvalid) {
		t.Fatalf("err = %v, want ErrInvalid", err)
	}
	for _, want := range []string{"issuer", "JWKS URL", "min refetch", "max age"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %s", err, want)
		}
	}
}
