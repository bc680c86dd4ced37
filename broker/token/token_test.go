package token_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lanyardhq/lanyard/broker"
	"github.com/lanyardhq/lanyard/broker/secrettest"
	"github.com/lanyardhq/lanyard/broker/token"
	"github.com/lanyardhq/lanyard/internal/testenv"
	"github.com/lanyardhq/lanyard/vault"
	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jwk"
	"github.com/lestrrat-go/jwx/v2/jws"
	"github.com/lestrrat-go/jwx/v2/jwt"
)

const (
	issuer   = "https://lanyard.example"
	resource = "https://mcp.example/mcp"
	ttl      = time.Hour
	delay    = 10 * time.Minute
)

var (
	t0          = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	keySetKey   = broker.SecretKey{Owner: "system", Name: "signing-keys"}
	privateJWKs = []string{"d", "p", "q", "dp", "dq", "qi", "k", "oth"}
)

// newClock is a clock at t0 the test moves by hand.
func newClock() *testenv.Clock { return testenv.NewClock(t0) }

// backend opens a fresh, empty secret store.
type backend struct {
	name string
	open func(t testing.TB) broker.SecretStore
}

// sealedStore is the real store token tests run against by default.
func sealedStore(t testing.TB) broker.SecretStore { return secrettest.Sealed(t) }

func vaultStore(t testing.TB) broker.SecretStore {
	t.Helper()
	addr, tok := testenv.Vault(t)
	b := make([]byte, 8)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	s, err := vault.New(t.Context(), vault.Config{
		Address: addr,
		Token:   broker.SecretString(tok),
		Prefix:  "token-test-" + hex.EncodeToString(b),
	})
	if err != nil {
		t.Fatalf("vault.New: %v", err)
	}
	t.Cleanup(s.Close)
	t.Cleanup(func() { _ = s.Delete(context.Background(), keySetKey) })
	return s
}

func backends() []backend {
	return []backend{{"sealed", sealedStore}, {"vault", vaultStore}}
}

func forEachBackend(t *testing.T, fn func(t *testing.T, s func(testing.TB) broker.SecretStore)) {
	for _, b := range backends() {
		t.Run(b.name, func(t *testing.T) { fn(t, b.open) })
	}
}

func opts(s broker.SecretStore, c *testenv.Clock) token.Options {
	return token.Options{Issuer: issuer, Now: c.Now, MaxTokenTTL: ttl, PublishDelay: delay, Secrets: s}
}

func open(t testing.TB, o token.Options) *token.Keyring {
	t.Helper()
	k, err := token.Open(t.Context(), o)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return k
}

func claims() token.Claims {
	return token.Claims{
		Subject:  "user-1",
		Audience: resource,
		ClientID: "https://client.example/meta.json",
		Scopes:   []string{"files:read", "offline_access"},
		GrantID:  "grant-1",
	}
}

func sign(t testing.TB, k *token.Keyring, c token.Claims) string {
	t.Helper()
	raw, err := k.Sign(t.Context(), c)
	if err != nil {
		t.Fatalf("Sign: %v", err)
	}
	return raw
}

// header returns the protected header of a compact JWS.
func header(t testing.TB, raw string) jws.Headers {
	t.Helper()
	msg, err := jws.Parse([]byte(raw))
	if err != nil {
		t.Fatalf("jws.Parse: %v", err)
	}
	return msg.Signatures()[0].ProtectedHeaders()
}

func kidOf(t testing.TB, raw string) string { t.Helper(); return header(t, raw).KeyID() }

func jwksKids(t testing.TB, k *token.Keyring) []string {
	t.Helper()
	b, err := k.PublicJWKS()
	if err != nil {
		t.Fatalf("PublicJWKS: %v", err)
	}
	set, err := jwk.Parse(b)
	if err != nil {
		t.Fatalf("jwk.Parse: %v", err)
	}
	var kids []string
	for i := range set.Len() {
		key, _ := set.Key(i)
		kids = append(kids, key.KeyID())
	}
	slices.Sort(kids)
	return kids
}

func sorted(s ...string) []string { s = slices.Clone(s); slices.Sort(s); return s }

// storedKeys reads the private JWKs straight from the secret store, the way
// an attacker who stole them (or a test forging tokens) would.
func storedKeys(t testing.TB, s broker.SecretStore) map[string]jwk.Key {
	t.Helper()
	sec, _, err := s.Get(t.Context(), keySetKey)
	if err != nil {
		t.Fatalf("Get key set: %v", err)
	}
	raw, ok := sec.Field("keyset")
	if !ok {
		t.Fatalf("stored secret has fields %v, want keyset", sec.Names())
	}
	var set struct {
		Keys []struct {
			Created   time.Time       `json:"created"`
			NotBefore time.Time       `json:"not_before"`
			JWK       json.RawMessage `json:"jwk"`
		} `json:"keys"`
	}
	if err := json.Unmarshal([]byte(raw), &set); err != nil {
		t.Fatalf("stored key set: %v", err)
	}
	out := map[string]jwk.Key{}
	for _, rec := range set.Keys {
		if rec.Created.IsZero() || rec.NotBefore.IsZero() {
			t.Errorf("stored key without created/not_before")
		}
		key, err := jwk.ParseKey(rec.JWK)
		if err != nil {
			t.Fatalf("stored jwk: %v", err)
		}
		out[key.KeyID()] = key
	}
	return out
}

func storedKids(t testing.TB, s broker.SecretStore) []string {
	t.Helper()
	var kids []string
	for kid := range storedKeys(t, s) {
		kids = append(kids, kid)
	}
	slices.Sort(kids)
	return kids
}

// forge signs claims with key under the given protected headers.
func forge(t testing.TB, alg jwa.SignatureAlgorithm, key any, hdr map[string]any, claims map[string]any) string {
	t.Helper()
	tok := jwt.New()
	for n, v := range claims {
		if err := tok.Set(n, v); err != nil {
			t.Fatalf("set %s: %v", n, err)
		}
	}
	h := jws.NewHeaders()
	for n, v := range hdr {
		if err := h.Set(n, v); err != nil {
			t.Fatalf("header %s: %v", n, err)
		}
	}
	if k, ok := key.(jwk.Key); ok {
		// A raw key, so that jwx adds no kid of its own.
		var raw any
		if err := k.Raw(&raw); err != nil {
			t.Fatal(err)
		}
		key = raw
	}
	b, err := jwt.Sign(tok, jwt.WithKey(alg, key, jws.WithProtectedHeaders(h)))
	if err != nil {
		t.Fatalf("jwt.Sign: %v", err)
	}
	return string(b)
}

func goodClaims(now time.Time) map[string]any {
	return map[string]any{
		"iss": issuer, "sub": "user-1", "aud": resource, "client_id": "c1", "grant_id": "g1",
		"jti": "j1", "scope": "a b", "iat": now, "exp": now.Add(5 * time.Minute),
	}
}

func with(m map[string]any, kv ...any) map[string]any {
	m = func() map[string]any {
		c := map[string]any{}
		for k, v := range m {
			c[k] = v
		}
		return c
	}()
	for i := 0; i < len(kv); i += 2 {
		if kv[i+1] == nil {
			delete(m, kv[i].(string))
		} else {
			m[kv[i].(string)] = kv[i+1]
		}
	}
	return m
}

// verifier is what Keyring and RemoteVerifier have in common.
type verifier interface {
	Verify(ctx context.Context, raw string) (token.Claims, error)
}

func mustVerify(t testing.TB, k verifier, raw string) token.Claims {
	t.Helper()
	c, err := k.Verify(t.Context(), raw)
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	return c
}

func mustReject(t testing.TB, k verifier, raw, why string) {
	t.Helper()
	_, err := k.Verify(t.Context(), raw)
	if !errors.Is(err, token.ErrInvalidToken) {
		t.Fatalf("Verify = %v, want ErrInvalidToken", err)
	}
	if why != "" && !strings.Contains(err.Error(), why) {
		t.Errorf("Verify error %q does not say %q", err, why)
	}
	for _, part := range strings.Split(raw, ".") {
		if len(part) >= 8 && strings.Contains(err.Error(), part) {
			t.Errorf("Verify error echoes the token: %q", err)
		}
	}
}

func TestRoundTrip(t *testing.T) {
	forEachBackend(t, func(t *testing.T, store func(testing.TB) broker.SecretStore) {
		clock := newClock()
		k := open(t, opts(store(t), clock))
		in := claims()
		in.JTI = "jti-1"
		raw := sign(t, k, in)

		h := header(t, raw)
		if got := h.Type(); got != "at+jwt" {
			t.Errorf("typ = %q, want at+jwt", got)
		}
		if got := h.Algorithm(); got != jwa.ES256 {
			t.Errorf("alg = %q, want ES256", got)
		}
		if got, want := h.KeyID(), k.Keys()[0].KID; got == "" || got != want {
			t.Errorf("kid = %q, want %q", got, want)
		}

		// The payload as a resource server sees it.
		msg, err := jws.Parse([]byte(raw))
		if err != nil {
			t.Fatal(err)
		}
		var payload map[string]any
		if err := json.Unmarshal(msg.Payload(), &payload); err != nil {
			t.Fatal(err)
		}
		want := map[string]any{
			"iss": issuer, "sub": "user-1", "aud": resource, "client_id": in.ClientID,
			"scope": "files:read offline_access", "grant_id": "grant-1", "jti": "jti-1",
			"iat": float64(t0.Unix()), "exp": float64(t0.Add(ttl).Unix()),
		}
		for n, w := range want {
			if got := payload[n]; got != w {
				t.Errorf("claim %s = %#v, want %#v", n, got, w)
			}
		}
		if len(payload) != len(want) {
			t.Errorf("payload has claims %v, want exactly %d", payload, len(want))
		}

		got := mustVerify(t, k, raw)
		wantC := in
		wantC.Issuer, wantC.IssuedAt, wantC.ExpiresAt = issuer, t0, t0.Add(ttl)
		if !claimsEqual(got, wantC) {
			t.Errorf("Verify = %+v, want %+v", got, wantC)
		}

		// Defaults: a random jti each time.
		a, b := mustVerify(t, k, sign(t, k, claims())), mustVerify(t, k, sign(t, k, claims()))
		if a.JTI == "" || a.JTI == b.JTI {
			t.Errorf("generated jti %q, %q: want distinct, non-empty", a.JTI, b.JTI)
		}
	})
}

func claimsEqual(a, b token.Claims) bool {
	return a.Issuer == b.Issuer && a.Subject == b.Subject && a.Audience == b.Audience &&
		a.ClientID == b.ClientID && slices.Equal(a.Scopes, b.Scopes) && a.GrantID == b.GrantID &&
		a.JTI == b.JTI && a.IssuedAt.Equal(b.IssuedAt) && a.ExpiresAt.Equal(b.ExpiresAt)
}

func TestAlgorithms(t *testing.T) {
	for _, alg := range []string{"ES256", "RS256", "EdDSA"} {
		t.Run(alg, func(t *testing.T) {
			clock := newClock()
			o := opts(sealedStore(t), clock)
			o.Alg = alg
			k := open(t, o)
			raw := sign(t, k, claims())
			if got := header(t, raw).Algorithm().String(); got != alg {
				t.Errorf("alg = %q, want %q", got, alg)
			}
			if c := mustVerify(t, k, raw); c.Subject != "user-1" {
				t.Errorf("sub = %q", c.Subject)
			}
			if got := k.Keys()[0].Alg; got != alg {
				t.Errorf("KeyInfo.Alg = %q, want %q", got, alg)
			}
			checkPublicJWKS(t, k, alg)
		})
	}
}

// checkPublicJWKS checks that every published key has kid, alg and use and
// no private member.
func checkPublicJWKS(t *testing.T, k *token.Keyring, alg string) {
	t.Helper()
	b, err := k.PublicJWKS()
	if err != nil {
		t.Fatal(err)
	}
	var set struct{ Keys []map[string]any }
	if err := json.Unmarshal(b, &set); err != nil {
		t.Fatal(err)
	}
	if len(set.Keys) == 0 {
		t.Fatalf("JWKS %s has no keys", b)
	}
	for _, key := range set.Keys {
		for _, p := range privateJWKs {
			if _, ok := key[p]; ok {
				t.Errorf("JWKS key has private member %q", p)
			}
		}
		if key["kid"] == "" || key["kid"] == nil {
			t.Errorf("JWKS key without kid: %v", key)
		}
		if alg != "" && key["alg"] != alg {
			t.Errorf("JWKS alg = %v, want %s", key["alg"], alg)
		}
		if key["use"] != "sig" {
			t.Errorf("JWKS use = %v, want sig", key["use"])
		}
	}
}

func TestPublicJWKSHasNoPrivateParts(t *testing.T) {
	clock := newClock()
	s := sealedStore(t)
	k := open(t, opts(s, clock))
	for _, alg := range []string{"RS256", "EdDSA"} {
		o := opts(s, clock)
		o.Alg = alg
		if _, err := open(t, o).Rotate(t.Context()); err != nil {
			t.Fatal(err)
		}
	}
	if err := k.Reload(t.Context()); err != nil {
		t.Fatal(err)
	}
	if got := len(jwksKids(t, k)); got != 3 {
		t.Fatalf("JWKS has %d keys, want 3 (ES256, RS256, EdDSA)", got)
	}
	checkPublicJWKS(t, k, "")
}

func TestVerifyRejects(t *testing.T) {
	clock := newClock()
	s := sealedStore(t)
	k := open(t, opts(s, clock))
	kid := k.Keys()[0].KID
	priv := storedKeys(t, s)[kid]
	pub, err := priv.PublicKey()
	if err != nil {
		t.Fatal(err)
	}
	now := clock.Now()
	hdr := map[string]any{"typ": "at+jwt", "kid": kid}

	// Sanity: the forging helper makes tokens Verify accepts.
	mustVerify(t, k, forge(t, jwa.ES256, priv, hdr, goodClaims(now)))
	for _, typ := range []string{"AT+JWT", "application/at+jwt", "Application/AT+JWT"} {
		mustVerify(t, k, forge(t, jwa.ES256, priv, with(hdr, "typ", typ), goodClaims(now)))
	}

	other, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	rsaKey := func() jwk.Key {
		o := opts(sealedStore(t), clock)
		o.Alg = "RS256"
		s2 := o.Secrets
		open(t, o)
		for _, key := range storedKeys(t, s2) {
			return key
		}
		panic("no key")
	}()
	pubJSON, err := json.Marshal(pub)
	if err != nil {
		t.Fatal(err)
	}
	good := sign(t, k, claims())
	parts := strings.Split(good, ".")
	sig := []byte(parts[2])
	sig[10] = 'A' // a different, still valid base64url character
	if parts[2][10] == 'A' {
		sig[10] = 'B'
	}
	badSig := parts[0] + "." + parts[1] + "." + string(sig)

	noneTok := func() string {
		payload, err := json.Marshal(goodClaims(now))
		if err != nil {
			t.Fatal(err)
		}
		h := jws.NewHeaders()
		_ = h.Set("typ", "at+jwt")
		_ = h.Set("kid", kid)
		b, err := jws.Sign(payload, jws.WithInsecureNoSignature(jws.WithProtectedHeaders(h)))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}()
	jsonTok := func() string {
		payload, _ := json.Marshal(goodClaims(now))
		h := jws.NewHeaders()
		_ = h.Set("typ", "at+jwt")
		_ = h.Set("kid", kid)
		b, err := jws.Sign(payload, jws.WithJSON(), jws.WithKey(jwa.ES256, priv, jws.WithProtectedHeaders(h)))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}()
	otherIssuer := func() string {
		o := opts(s, clock)
		o.Issuer = "https://evil.example"
		return sign(t, open(t, o), claims())
	}()

	tests := []struct {
		name, raw, why string
	}{
		{"unknown kid", forge(t, jwa.ES256, other, with(hdr, "kid", "nope"), goodClaims(now)), "unknown key"},
		{"no kid", forge(t, jwa.ES256, priv, with(hdr, "kid", nil), goodClaims(now)), "unknown key"},
		{"other key under our kid", forge(t, jwa.ES256, other, hdr, goodClaims(now)), "bad signature"},
		{"wrong alg for the key", forge(t, jwa.RS256, rsaKey, hdr, goodClaims(now)), "algorithm"},
		{"HS256 with the public key as secret", forge(t, jwa.HS256, pubJSON, hdr, goodClaims(now)), "algorithm"},
		{"alg none", noneTok, ""},
		{"typ JWT", forge(t, jwa.ES256, priv, with(hdr, "typ", "JWT"), goodClaims(now)), "typ"},
		{"no typ", forge(t, jwa.ES256, priv, with(hdr, "typ", nil), goodClaims(now)), "typ"},
		{"typ at+jwt with suffix", forge(t, jwa.ES256, priv, with(hdr, "typ", "at+jwt2"), goodClaims(now)), "typ"},
		{"other issuer (forged)", forge(t, jwa.ES256, priv, hdr, with(goodClaims(now), "iss", "https://evil.example")), "issuer"},
		{"other issuer (its own keyring)", otherIssuer, "issuer"},
		{"no issuer", forge(t, jwa.ES256, priv, hdr, with(goodClaims(now), "iss", nil)), ""},
		{"expired", forge(t, jwa.ES256, priv, hdr, with(goodClaims(now), "iat", now.Add(-time.Hour), "exp", now.Add(-31*time.Second))), "expired"},
		{"issued in the future", forge(t, jwa.ES256, priv, hdr, with(goodClaims(now), "iat", now.Add(time.Minute), "exp", now.Add(time.Hour))), "future"},
		{"not yet valid", forge(t, jwa.ES256, priv, hdr, with(goodClaims(now), "nbf", now.Add(time.Minute))), "not yet valid"},
		{"no exp", forge(t, jwa.ES256, priv, hdr, with(goodClaims(now), "exp", nil)), "missing"},
		{"no iat", forge(t, jwa.ES256, priv, hdr, with(goodClaims(now), "iat", nil)), "missing"},
		{"no client_id", forge(t, jwa.ES256, priv, hdr, with(goodClaims(now), "client_id", nil)), "missing"},
		{"no grant_id", forge(t, jwa.ES256, priv, hdr, with(goodClaims(now), "grant_id", nil)), "missing"},
		{"no jti", forge(t, jwa.ES256, priv, hdr, with(goodClaims(now), "jti", nil)), "missing"},
		{"no sub", forge(t, jwa.ES256, priv, hdr, with(goodClaims(now), "sub", nil)), "missing"},
		{"two audiences", forge(t, jwa.ES256, priv, hdr, with(goodClaims(now), "aud", []string{resource, "https://other"})), "aud"},
		{"client_id not a string", forge(t, jwa.ES256, priv, hdr, with(goodClaims(now), "client_id", 7)), "client_id"},
		{"bad signature", badSig, "bad signature"},
		{"signature stripped", parts[0] + "." + parts[1] + ".", ""},
		{"JSON serialization", jsonTok, "compact"},
		{"garbage", "garbage", ""},
		{"three garbage parts", "a.b.c", ""},
		{"empty", "", ""},
		{"oversized", forge(t, jwa.ES256, priv, hdr, with(goodClaims(now), "pad", strings.Repeat("x", token.MaxTokenSize))), "too large"},
	}
	remote := newRemote(t, k, clock, token.RemoteOptions{})
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { mustReject(t, k, tc.raw, tc.why) })
		t.Run(tc.name+"/remote", func(t *testing.T) { mustReject(t, remote, tc.raw, tc.why) })
	}

	t.Run("expiry within clock skew", func(t *testing.T) {
		raw := forge(t, jwa.ES256, priv, hdr, with(goodClaims(now), "exp", now.Add(-29*time.Second), "iat", now.Add(-time.Hour)))
		mustVerify(t, k, raw)
	})
	t.Run("signed token expires", func(t *testing.T) {
		c := claims()
		c.ExpiresAt = now.Add(time.Minute)
		raw := sign(t, k, c)
		clock.Set(now.Add(time.Minute + token.ClockSkew - time.Second))
		mustVerify(t, k, raw)
		clock.Set(now.Add(time.Minute + token.ClockSkew + time.Second))
		mustReject(t, k, raw, "expired")
		clock.Set(now)
	})
}

func TestSignRejects(t *testing.T) {
	clock := newClock()
	k := open(t, opts(sealedStore(t), clock))
	now := clock.Now()
	tests := []struct {
		name string
		edit func(c *token.Claims)
	}{
		{"no subject", func(c *token.Claims) { c.Subject = "" }},
		{"no audience", func(c *token.Claims) { c.Audience = "" }},
		{"no client_id", func(c *token.Claims) { c.ClientID = "" }},
		{"no grant_id", func(c *token.Claims) { c.GrantID = "" }},
		{"other issuer", func(c *token.Claims) { c.Issuer = "https://evil.example" }},
		{"scope with a space", func(c *token.Claims) { c.Scopes = []string{"a b"} }},
		{"empty scope", func(c *token.Claims) { c.Scopes = []string{""} }},
		{"longer than MaxTokenTTL", func(c *token.Claims) { c.ExpiresAt = now.Add(ttl + time.Second) }},
		{"expired already", func(c *token.Claims) { c.ExpiresAt = now.Add(-time.Second) }},
		{"issued in the past", func(c *token.Claims) { c.IssuedAt = now.Add(-time.Hour) }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := claims()
			tc.edit(&c)
			if raw, err := k.Sign(t.Context(), c); !errors.Is(err, broker.ErrInvalid) {
				t.Errorf("Sign = %q, %v; want ErrInvalid", raw, err)
			}
		})
	}
}

func TestRotation(t *testing.T) {
	forEachBackend(t, func(t *testing.T, store func(testing.TB) broker.SecretStore) {
		clock := newClock()
		s := store(t)
		k := open(t, opts(s, clock))
		replica := open(t, opts(s, clock))
		kidA := k.Keys()[0].KID
		if st := k.Keys()[0].State; st != token.StateActive {
			t.Fatalf("first key state = %s, want active", st)
		}
		tokA := sign(t, k, claims())
		privA := storedKeys(t, s)[kidA]
		// A token signed by A that outlives A's retention: it verifies until
		// A is pruned, and only the pruning makes it fail.
		longA := forge(t, jwa.ES256, privA, map[string]any{"typ": "at+jwt", "kid": kidA},
			with(goodClaims(t0), "exp", t0.Add(48*time.Hour)))

		kidB, err := k.Rotate(t.Context())
		if err != nil {
			t.Fatalf("Rotate: %v", err)
		}
		if got, want := jwksKids(t, k), sorted(kidA, kidB); !slices.Equal(got, want) {
			t.Errorf("JWKS after Rotate = %v, want %v", got, want)
		}
		checkStates(t, k, map[string]token.KeyState{kidA: token.StateActive, kidB: token.StatePending})
		if got := k.Keys()[1].NotBefore; !got.Equal(t0.Add(delay)) {
			t.Errorf("new key not_before = %v, want %v", got, t0.Add(delay))
		}

		clock.Set(t0.Add(delay - time.Second))
		tokA2 := sign(t, k, claims())
		if got := kidOf(t, tokA2); got != kidA {
			t.Errorf("before PublishDelay Sign used %q, want the old key %q", got, kidA)
		}

		clock.Set(t0.Add(delay))
		tokB := sign(t, k, claims())
		if got := kidOf(t, tokB); got != kidB {
			t.Errorf("after PublishDelay Sign used %q, want the new key %q", got, kidB)
		}
		checkStates(t, k, map[string]token.KeyState{kidA: token.StateRetiring, kidB: token.StateActive})
		for _, raw := range []string{tokA, tokA2, tokB, longA} {
			mustVerify(t, k, raw)
		}

		// The replica learns of B by Reload and verifies its tokens.
		mustReject(t, replica, tokB, "unknown key")
		if err := replica.Reload(t.Context()); err != nil {
			t.Fatal(err)
		}
		mustVerify(t, replica, tokB)
		if got := kidOf(t, sign(t, replica, claims())); got != kidB {
			t.Errorf("replica signs with %q, want %q", got, kidB)
		}

		// A is kept until every token it signed has expired.
		deleteAt := t0.Add(delay + ttl + token.ClockSkew)
		if got := k.Keys()[0].DeleteAt; !got.Equal(deleteAt) {
			t.Errorf("DeleteAt = %v, want %v", got, deleteAt)
		}
		clock.Set(t0.Add(delay - time.Second + ttl)) // tokA2's exp
		mustVerify(t, k, tokA2)
		clock.Set(deleteAt.Add(-time.Second))
		mustVerify(t, k, longA)
		if got := jwksKids(t, k); !slices.Contains(got, kidA) {
			t.Errorf("JWKS before A's deletion = %v, want it to hold %s", got, kidA)
		}

		clock.Set(deleteAt)
		for _, kr := range []*token.Keyring{k, replica} {
			mustReject(t, kr, longA, "unknown key")
			mustReject(t, kr, tokA2, "")
			if got, want := jwksKids(t, kr), []string{kidB}; !slices.Equal(got, want) {
				t.Errorf("JWKS after A expired = %v, want %v", got, want)
			}
		}
		checkStates(t, k, map[string]token.KeyState{kidA: token.StateExpired, kidB: token.StateActive})
		if got := storedKids(t, s); !slices.Contains(got, kidA) {
			t.Errorf("A was deleted before the next Rotate: stored %v", got)
		}

		// The next Rotate deletes A from the store; Reload drops it elsewhere.
		kidC, err := k.Rotate(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		if got, want := storedKids(t, s), sorted(kidB, kidC); !slices.Equal(got, want) {
			t.Errorf("stored after second Rotate = %v, want %v", got, want)
		}
		if err := replica.Reload(t.Context()); err != nil {
			t.Fatal(err)
		}
		for _, kr := range []*token.Keyring{k, replica} {
			checkStates(t, kr, map[string]token.KeyState{kidB: token.StateActive, kidC: token.StatePending})
			mustReject(t, kr, longA, "unknown key")
			if got := kidOf(t, sign(t, kr, claims())); got != kidB {
				t.Errorf("Sign used %q, want %q", got, kidB)
			}
		}
	})
}

func checkStates(t *testing.T, k *token.Keyring, want map[string]token.KeyState) {
	t.Helper()
	got := map[string]token.KeyState{}
	for _, ki := range k.Keys() {
		got[ki.KID] = ki.State
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("Keys states = %v, want %v", got, want)
	}
}

func TestReplicasShareJWKS(t *testing.T) {
	forEachBackend(t, func(t *testing.T, store func(testing.TB) broker.SecretStore) {
		clock := newClock()
		s := store(t)
		r1, r2 := open(t, opts(s, clock)), open(t, opts(s, clock))
		if !slices.Equal(jwksKids(t, r1), jwksKids(t, r2)) {
			t.Fatal("replicas opened different key sets")
		}
		if _, err := r1.Rotate(t.Context()); err != nil {
			t.Fatal(err)
		}
		if err := r2.Reload(t.Context()); err != nil {
			t.Fatal(err)
		}
		j1, _ := r1.PublicJWKS()
		j2, _ := r2.PublicJWKS()
		if string(j1) != string(j2) {
			t.Errorf("JWKS differ after Reload:\n%s\n%s", j1, j2)
		}
		clock.Set(t0.Add(delay))
		mustVerify(t, r2, sign(t, r1, claims()))
		mustVerify(t, r1, sign(t, r2, claims()))
	})
}

func TestConcurrentRotate(t *testing.T) {
	forEachBackend(t, func(t *testing.T, store func(testing.TB) broker.SecretStore) {
		clock := newClock()
		s := store(t)
		r1, r2 := open(t, opts(s, clock)), open(t, opts(s, clock))
		first := r1.Keys()[0].KID
		const perReplica = 3
		var mu sync.Mutex
		kids := []string{first}
		var wg sync.WaitGroup
		for _, r := range []*token.Keyring{r1, r2} {
			for range perReplica {
				wg.Go(func() {
					kid, err := r.Rotate(t.Context())
					if err != nil {
						t.Errorf("Rotate: %v", err)
						return
					}
					mu.Lock()
					kids = append(kids, kid)
					mu.Unlock()
				})
			}
		}
		wg.Wait()
		slices.Sort(kids)
		if got := storedKids(t, s); !slices.Equal(got, kids) {
			t.Errorf("stored kids = %v, want every rotated key %v", got, kids)
		}
		for _, r := range []*token.Keyring{r1, r2} {
			if err := r.Reload(t.Context()); err != nil {
				t.Fatal(err)
			}
			if got := jwksKids(t, r); !slices.Equal(got, kids) {
				t.Errorf("JWKS = %v, want %v", got, kids)
			}
		}
	})
}

func TestOpenConcurrent(t *testing.T) {
	forEachBackend(t, func(t *testing.T, store func(testing.TB) broker.SecretStore) {
		clock := newClock()
		s := store(t)
		const n = 8
		rings := make([]*token.Keyring, n)
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() {
				k, err := token.Open(t.Context(), opts(s, clock))
				if err != nil {
					t.Errorf("Open: %v", err)
					return
				}
				rings[i] = k
			})
		}
		wg.Wait()
		if t.Failed() {
			return
		}
		_, version, err := s.Get(t.Context(), keySetKey)
		if err != nil {
			t.Fatal(err)
		}
		if version != 1 {
			t.Errorf("key set version = %d, want 1 (created once, never rewritten)", version)
		}
		want := storedKids(t, s)
		if len(want) != 1 {
			t.Fatalf("stored kids = %v, want exactly one", want)
		}
		for i, k := range rings {
			if got := jwksKids(t, k); !slices.Equal(got, want) {
				t.Errorf("keyring %d JWKS = %v, want %v", i, got, want)
			}
		}
		raw := sign(t, rings[3], claims())
		mustVerify(t, rings[5], raw)
	})
}

func TestReloadNoop(t *testing.T) {
	clock := newClock()
	s := sealedStore(t)
	k := open(t, opts(s, clock))
	before := k.Snapshot()
	if err := k.Reload(t.Context()); err != nil {
		t.Fatal(err)
	}
	if k.Snapshot() != before {
		t.Error("Reload replaced the key set although the stored version did not change")
	}
	if _, err := open(t, opts(s, clock)).Rotate(t.Context()); err != nil {
		t.Fatal(err)
	}
	if err := k.Reload(t.Context()); err != nil {
		t.Fatal(err)
	}
	if k.Snapshot() == before {
		t.Error("Reload kept the old key set after another replica rotated")
	}
	if got := len(k.Keys()); got != 2 {
		t.Errorf("after Reload %d keys, want 2", got)
	}
}

func TestCorruptStoredSet(t *testing.T) {
	clock := newClock()
	s := sealedStore(t)
	k := open(t, opts(s, clock))
	raw := sign(t, k, claims())
	secretD := fmt.Sprint(mustJSONField(t, storedKeys(t, s)[k.Keys()[0].KID], "d"))
	bad := `{"format":1,"keys":[{"created":"2030-01-01T00:00:00Z","not_before":"2030-01-01T00:00:00Z","jwk":{"kty":"EC","d":"` + secretD + `x",`
	if _, err := s.Put(t.Context(), keySetKey, broker.NewSecret(map[string]string{"keyset": bad}), broker.CASAny); err != nil {
		t.Fatal(err)
	}
	err := k.Reload(t.Context())
	if err == nil {
		t.Fatal("Reload of a corrupt set succeeded")
	}
	if strings.Contains(err.Error(), secretD) {
		t.Errorf("Reload error quotes key material: %v", err)
	}
	mustVerify(t, k, raw) // the keyring keeps the set it had
	if _, err := token.Open(t.Context(), opts(s, clock)); err == nil || strings.Contains(err.Error(), secretD) {
		t.Errorf("Open of a corrupt set = %v, want an error without key material", err)
	}
}

func mustJSONField(t *testing.T, key jwk.Key, name string) any {
	t.Helper()
	b, err := json.Marshal(key)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	if m[name] == nil {
		t.Fatalf("stored key has no %q", name)
	}
	return m[name]
}

func TestNothingPrintsPrivateKeys(t *testing.T) {
	clock := newClock()
	s := sealedStore(t)
	k := open(t, opts(s, clock))
	d := fmt.Sprint(mustJSONField(t, storedKeys(t, s)[k.Keys()[0].KID], "d"))
	raw, _ := base64.RawURLEncoding.DecodeString(d)
	out := fmt.Sprintf("%v %+v %#v %s %v %+v %#v", k, k, k, k, k.Keys(), k.Keys(), k.Keys())
	jwks, _ := k.PublicJWKS()
	out += string(jwks)
	for _, secret := range []string{d, hex.EncodeToString(raw), fmt.Sprint(raw)} {
		if strings.Contains(out, secret) {
			t.Errorf("private key material printed: %s", out)
		}
	}
}

func TestOptionsValidation(t *testing.T) {
	s := sealedStore(t)
	for _, tc := range []struct {
		name string
		o    token.Options
	}{
		{"no issuer", token.Options{Secrets: s}},
		{"no store", token.Options{Issuer: issuer}},
		{"bad alg", token.Options{Issuer: issuer, Secrets: s, Alg: "HS256"}},
		{"alg none", token.Options{Issuer: issuer, Secrets: s, Alg: "none"}},
		{"negative TTL", token.Options{Issuer: issuer, Secrets: s, MaxTokenTTL: -1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := token.Open(t.Context(), tc.o); !errors.Is(err, broker.ErrInvalid) {
				t.Errorf("Open = %v, want ErrInvalid", err)
			}
		})
	}
	if _, _, err := s.Get(t.Context(), keySetKey); !errors.Is(err, broker.ErrNotFound) {
		t.Errorf("invalid options wrote a key set: Get = %v", err)
	}
}

func TestObserver(t *testing.T) {
	var mu sync.Mutex
	var ops []string
	o := opts(sealedStore(t), newClock())
	o.Observer = func(component, op string, _ time.Duration, err error) {
		mu.Lock()
		defer mu.Unlock()
		ops = append(ops, fmt.Sprintf("%s/%s/%v", component, op, err))
	}
	k := open(t, o)
	if _, err := k.Rotate(t.Context()); err != nil {
		t.Fatal(err)
	}
	if err := k.Reload(t.Context()); err != nil {
		t.Fatal(err)
	}
	want := []string{"token/open/<nil>", "token/rotate/<nil>", "token/reload/<nil>"}
	if !slices.Equal(ops, want) {
		t.Errorf("observed %v, want %v", ops, want)
	}
}

func BenchmarkSign(b *testing.B) {
	k := open(b, opts(sealedStore(b), newClock()))
	c := claims()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := k.Sign(context.Background(), c); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

func BenchmarkVerify(b *testing.B) {
	k := open(b, opts(sealedStore(b), newClock()))
	raw := sign(b, k, claims())
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := k.Verify(context.Background(), raw); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// interferingStore runs interfere once, just before the first Put it sees,
// so that Put loses its check-and-set deterministically.
type interferingStore struct {
	broker.SecretStore
	once      sync.Once
	interfere func()
	conflicts int
	mu        sync.Mutex
}

func (s *interferingStore) Put(ctx context.Context, key broker.SecretKey, sec broker.Secret, cas int) (int, error) {
	s.once.Do(s.interfere)
	v, err := s.SecretStore.Put(ctx, key, sec, cas)
	if errors.Is(err, broker.ErrConflict) {
		s.mu.Lock()
		s.conflicts++
		s.mu.Unlock()
	}
	return v, err
}

func TestRotateRetriesOnConflict(t *testing.T) {
	forEachBackend(t, func(t *testing.T, store func(testing.TB) broker.SecretStore) {
		clock := newClock()
		s := store(t)
		other := open(t, opts(s, clock))
		var otherKid string
		is := &interferingStore{SecretStore: s, interfere: func() {
			var err error
			if otherKid, err = other.Rotate(t.Context()); err != nil {
				t.Errorf("interfering Rotate: %v", err)
			}
		}}
		k := open(t, opts(is, clock)) // the set exists: Open does not Put
		kid, err := k.Rotate(t.Context())
		if err != nil {
			t.Fatalf("Rotate: %v", err)
		}
		if is.conflicts != 1 {
			t.Errorf("Put conflicts = %d, want 1", is.conflicts)
		}
		want := sorted(other.Keys()[0].KID, otherKid, kid)
		if got := storedKids(t, s); !slices.Equal(got, want) {
			t.Errorf("stored kids = %v, want %v (no key lost)", got, want)
		}
		if got := jwksKids(t, k); !slices.Equal(got, want) {
			t.Errorf("JWKS after Rotate = %v, want %v", got, want)
		}
	})
}

func TestOpenLosesCreateRace(t *testing.T) {
	forEachBackend(t, func(t *testing.T, store func(testing.TB) broker.SecretStore) {
		clock := newClock()
		s := store(t)
		var other *token.Keyring
		is := &interferingStore{SecretStore: s, interfere: func() { other = open(t, opts(s, clock)) }}
		k := open(t, opts(is, clock))
		if got, want := k.Keys()[0].KID, other.Keys()[0].KID; len(k.Keys()) != 1 || got != want {
			t.Errorf("Open after losing the race uses %v, want the winner's key %s", k.Keys(), want)
		}
		mustVerify(t, k, sign(t, other, claims()))
	})
}
