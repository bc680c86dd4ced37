package token_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
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
