package token_test

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jwk"

	"github.com/lanyardhq/lanyard/broker/token"
)

// TestAssertionTyp: an access token (typ at+jwt) signed by the client's
// key is not a client assertion; absent, JWT and client-authentication+jwt
// are.
func TestAssertionTyp(t *testing.T) {
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := jwk.FromRaw(priv.Public())
	if err != nil {
		t.Fatal(err)
	}
	_ = pub.Set(jwk.KeyIDKey, "k1")
	set := jwk.NewSet()
	_ = set.AddKey(pub)
	jwks, _ := json.Marshal(set)

	now := time.Now()
	const client, aud = "mcp-1", "https://lanyard.example"
	claims := map[string]any{"iss": client, "sub": client, "aud": aud, "jti": "j1",
		"iat": now.Unix(), "exp": now.Add(time.Minute).Unix()}
	opts := token.AssertionOptions{ClientID: client, Audiences: []string{aud}, Now: now}
	for _, tc := range []struct {
		typ string
		ok  bool
	}{
		{"", true},
		{"JWT", true},
		{"jwt", true},
		{"client-authentication+jwt", true},
		{"application/client-authentication+jwt", true},
		{"at+jwt", false},
		{"AT+JWT", false},
		{"application/at+jwt", false},
		{"JWT2", false},
		{"logout+jwt", false},
	} {
		hdr := map[string]any{"kid": "k1"}
		if tc.typ != "" {
			hdr["typ"] = tc.typ
		}
		raw := forge(t, jwa.ES256, priv, hdr, claims)
		_, err := token.VerifyAssertion(raw, jwks, opts)
		switch {
		case tc.ok && err != nil:
			t.Errorf("typ %q: %v, want accepted", tc.typ, err)
		case !tc.ok && err == nil:
			t.Errorf("typ %q accepted", tc.typ)
		case !tc.ok && (!errors.Is(err, token.ErrInvalidAssertion) || errors.Is(err, token.ErrUnknownKey) || !strings.Contains(err.Error(), "typ")):
			// Not ErrUnknownKey: a wrong typ must not cause a JWKS refetch.
			t.Errorf("typ %q: %v, want an invalid assertion naming typ", tc.typ, err)
		}
	}

	// What SignAssertion makes passes.
	k, err := token.NewClientKey("")
	if err != nil {
		t.Fatal(err)
	}
	kjwks, _ := k.PublicJWKS()
	a, err := k.SignAssertion(token.AssertionClaims{ClientID: client, Audience: aud, IssuedAt: now})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := token.VerifyAssertion(a, kjwks, opts); err != nil {
		t.Errorf("SignAssertion's assertion: %v", err)
	}
}

// TestPublicJWKSet: what the CLI stores of a --jwks-file is the public half
// of each key; symmetric keys and empty or malformed sets are refused.
func TestPublicJWKSet(t *testing.T) {
	ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ecJWK, _ := jwk.FromRaw(ec)
	_ = ecJWK.Set(jwk.KeyIDKey, "ec-1")
	_ = ecJWK.Set(jwk.AlgorithmKey, jwa.ES256)
	_ = ecJWK.Set(jwk.KeyUsageKey, "sig")
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	rsaJWK, _ := jwk.FromRaw(rsaKey)
	_ = rsaJWK.Set(jwk.KeyIDKey, "rsa-1")
	_, edPriv, _ := ed25519.GenerateKey(rand.Reader)
	edJWK, _ := jwk.FromRaw(edPriv)
	_ = edJWK.Set(jwk.KeyIDKey, "ed-1")
	set := jwk.NewSet()
	for _, k := range []jwk.Key{ecJWK, rsaJWK, edJWK} {
		_ = set.AddKey(k)
	}
	raw, _ := json.Marshal(set)
	if !strings.Contains(string(raw), `"d":`) {
		t.Fatal("the test set has no private key")
	}

	pub, err := token.PublicJWKSet(raw)
	if err != nil {
		t.Fatal(err)
	}
	var doc struct{ Keys []map[string]any }
	if err := json.Unmarshal(pub, &doc); err != nil || len(doc.Keys) != 3 {
		t.Fatalf("PublicJWKSet = %s, %v", pub, err)
	}
	for _, k := range doc.Keys {
		for _, private := range []string{"d", "p", "q", "dp", "dq", "qi", "k"} {
			if _, ok := k[private]; ok {
				t.Errorf("key %v kept the private parameter %q", k["kid"], private)
			}
		}
	}
	if doc.Keys[0]["kid"] != "ec-1" || doc.Keys[0]["alg"] != "ES256" || doc.Keys[0]["use"] != "sig" {
		t.Errorf("kid, alg or use lost: %v", doc.Keys[0])
	}
	// An assertion signed with the private key verifies against what is kept.
	now := time.Now()
	a := forge(t, jwa.ES256, ec, map[string]any{"kid": "ec-1"}, map[string]any{"iss": "m", "sub": "m", "aud": "a",
		"jti": "j", "exp": now.Add(time.Minute).Unix()})
	if _, err := token.VerifyAssertion(a, pub, token.AssertionOptions{ClientID: "m", Audiences: []string{"a"}, Now: now}); err != nil {
		t.Errorf("assertion against the public set: %v", err)
	}

	for name, bad := range map[string]string{
		"symmetric":   `{"keys":[{"kty":"oct","k":"c2VjcmV0LXNlY3JldC1zZWNyZXQ","kid":"h"}]}`,
		"mixed":       `{"keys":[` + string(must(json.Marshal(ecJWK))) + `,{"kty":"oct","k":"c2VjcmV0","kid":"h"}]}`,
		"empty":       `{"keys":[]}`,
		"not JSON":    `-----BEGIN PRIVATE KEY-----`,
		"unknown kty": `{"keys":[{"kty":"XYZ","kid":"x"}]}`,
	} {
		if out, err := token.PublicJWKSet([]byte(bad)); err == nil {
			t.Errorf("%s: accepted as %s", name, out)
		}
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}
