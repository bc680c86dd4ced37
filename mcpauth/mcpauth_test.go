package mcpauth_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lanyardhq/lanyard/broker/token"
	"github.com/lanyardhq/lanyard/internal/testenv"
	"github.com/lanyardhq/lanyard/mcpauth"
	"github.com/lanyardhq/lanyard/mcpauth/internal/lanyardtest"
)

const metadataURL = "https://mail.example.com/.well-known/oauth-protected-resource/mcp"

// newClient makes a Client for the world's MCP server; edit changes the
// config first.
func newClient(t testing.TB, w *lanyardtest.World, edit func(*mcpauth.Config)) *mcpauth.Client {
	t.Helper()
	cfg := mcpauth.Config{
		Issuer: w.Issuer, Resource: lanyardtest.ResourceURI, ResourceName: "Mail MCP",
		Scopes:   []string{"mail.read", "mail.send"},
		ClientID: lanyardtest.ResourceID, ClientSecret: lanyardtest.ResourceSecret,
	}
	if edit != nil {
		edit(&cfg)
	}
	c, err := mcpauth.New(context.Background(), cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return c
}

// protected serves c.Middleware(scopes) in front of a handler that
// reports the token it saw.
func protected(t testing.TB, c *mcpauth.Client, scopes ...string) *httptest.Server {
	t.Helper()
	mux := http.NewServeMux()
	mux.Handle(c.MetadataPath(), c.MetadataHandler())
	mux.Handle("/mcp", c.Middleware(scopes...)(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tok, ok := mcpauth.TokenFromContext(r.Context())
		if !ok {
			http.Error(w, "no token in context", http.StatusInternalServerError)
			return
		}
		_ = json.NewEncoder(w).Encode(tok)
	})))
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv
}

type answer struct {
	status    int
	challenge map[string]string // parsed WWW-Authenticate; nil if none
	rawChal   string
	body      map[string]any
}

func call(t testing.TB, url string, authz ...string) answer {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, url, strings.NewReader(`{}`))
	for _, a := range authz {
		req.Header.Add("Authorization", a)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	a := answer{status: resp.StatusCode, rawChal: resp.Header.Get("WWW-Authenticate")}
	if len(resp.Header.Values("WWW-Authenticate")) > 1 {
		t.Errorf("%d WWW-Authenticate headers, want at most 1", len(resp.Header.Values("WWW-Authenticate")))
	}
	if a.rawChal != "" {
		a.challenge = parseChallenge(t, a.rawChal)
	}
	b, _ := io.ReadAll(resp.Body)
	_ = json.Unmarshal(b, &a.body)
	return a
}

// parseChallenge parses a Bearer challenge (RFC 6750 §3, RFC 9110 §11.6.1
// auth-params with quoted-string values) strictly.
func parseChallenge(t testing.TB, v string) map[string]string {
	t.Helper()
	rest, ok := strings.CutPrefix(v, "Bearer")
	if !ok {
		t.Fatalf("challenge %q is not Bearer", v)
	}
	out := map[string]string{}
	rest = strings.TrimPrefix(rest, " ")
	for rest != "" {
		name, after, ok := strings.Cut(rest, `="`)
		if !ok || strings.ContainsAny(name, ` ,="`) {
			t.Fatalf("challenge %q: bad parameter at %q", v, rest)
		}
		val, after, ok := strings.Cut(after, `"`)
		if !ok || strings.Contains(val, `\`) {
			t.Fatalf("challenge %q: unterminated value", v)
		}
		if _, dup := out[name]; dup {
			t.Fatalf("challenge %q: %s twice", v, name)
		}
		out[name] = val
		rest, ok = strings.CutPrefix(after, ", ")
		if !ok && after != "" {
			t.Fatalf("challenge %q: want ', ' between parameters, got %q", v, after)
		}
	}
	return out
}

func TestMiddlewareWithRealToken(t *testing.T) {
	w := lanyardtest.New(t, lanyardtest.Options{})
	c := newClient(t, w, nil)
	if got := w.JWKSHits.Load(); got != 1 {
		t.Errorf("New fetched the JWKS %d times, want 1", got)
	}
	srv := protected(t, c, "mail.read")
	tok := w.Token("mail.read")

	a := call(t, srv.URL+"/mcp", "Bearer "+tok.AccessToken)
	if a.status != http.StatusOK {
		t.Fatalf("status %d (%v), want 200", a.status, a.body)
	}
	if a.body["sub"] != lanyardtest.UserID || a.body["client_id"] != lanyardtest.Agent || a.body["grant_id"] == "" {
		t.Errorf("token in context = %v", a.body)
	}
	if s, _ := json.Marshal(a.body["scopes"]); string(s) != `["mail.read"]` {
		t.Errorf("scopes = %s, want [mail.read]", s)
	}
	// The scheme is case-insensitive (RFC 9110 §11.1).
	if a := call(t, srv.URL+"/mcp", "bearer "+tok.AccessToken); a.status != http.StatusOK {
		t.Errorf("lower-case scheme: status %d", a.status)
	}
	got, err := c.Verify(t.Context(), tok.AccessToken)
	if err != nil {
		t.Fatal(err)
	}
	if got.Raw != tok.AccessToken || got.Expiry.Before(time.Now()) || got.ID == "" {
		t.Errorf("Verify = %+v", got)
	}
	if got := w.JWKSHits.Load(); got != 1 {
		t.Errorf("JWKS fetched %d times, want 1 (cached)", got)
	}
}

func TestChallenges(t *testing.T) {
	w := lanyardtest.New(t, lanyardtest.Options{})
	c := newClient(t, w, nil)
	srv := protected(t, c, "mail.read")
	srvSend := protected(t, c, "mail.read", "mail.send")
	good := w.Token("mail.read").AccessToken
	other := w.Sign(token.Claims{Audience: "https://other.example.com/mcp"})
	late := newClient(t, w, func(cfg *mcpauth.Config) {
		cfg.Now = func() time.Time { return time.Now().Add(11*time.Minute + token.ClockSkew) }
	})
	srvLate := protected(t, late)

	tests := []struct {
		name   string
		url    string
		authz  []string
		status int
		want   map[string]string // the challenge's parameters, exactly
	}{
		{"no token", srv.URL, nil, 401, map[string]string{"resource_metadata": metadataURL, "scope": "mail.read"}},
		{"Basic credentials", srv.URL, []string{"Basic YTpi"}, 401, map[string]string{"resource_metadata": metadataURL, "scope": "mail.read"}},
		{"empty bearer", srv.URL, []string{"Bearer "}, 401, map[string]string{"resource_metadata": metadataURL, "scope": "mail.read"}},
		{"garbage", srv.URL, []string{"Bearer abc"}, 401, map[string]string{"resource_metadata": metadataURL,
			"error": "invalid_token", "error_description": "not a compact JWS"}},
		{"tampered", srv.URL, []string{"Bearer " + good[:len(good)-4] + "AAAA"}, 401, map[string]string{"resource_metadata": metadataURL,
			"error": "invalid_token", "error_description": "bad signature"}},
		{"other audience", srv.URL, []string{"Bearer " + other}, 401, map[string]string{"resource_metadata": metadataURL,
			"error": "invalid_token", "error_description": "issued for another resource"}},
		{"expired", srvLate.URL, []string{"Bearer " + good}, 401, map[string]string{"resource_metadata": metadataURL,
			"error": "invalid_token", "error_description": "expired"}},
		{"insufficient scope", srvSend.URL, []string{"Bearer " + good}, 403, map[string]string{"resource_metadata": metadataURL,
			"error": "insufficient_scope", "scope": "mail.read mail.send", "error_description": "the token lacks a required scope"}},
		{"two Authorization headers", srv.URL, []string{"Bearer " + good, "Bearer " + good}, 400, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			a := call(t, tc.url+"/mcp", tc.authz...)
			if a.status != tc.status {
				t.Fatalf("status %d, want %d", a.status, tc.status)
			}
			if fmt.Sprint(a.challenge) != fmt.Sprint(tc.want) {
				t.Errorf("WWW-Authenticate %q\n got %v\nwant %v", a.rawChal, a.challenge, tc.want)
			}
			if code := a.body["error"]; code == nil || code == "" {
				t.Errorf("body %v has no error", a.body)
			}
			if strings.Contains(a.rawChal, good) || strings.Contains(fmt.Sprint(a.body), good[:20]) {
				t.Error("the answer echoes the token")
			}
		})
	}
	// The exact form for the two common cases.
	if a := call(t, srv.URL+"/mcp"); a.rawChal != `Bearer resource_metadata="`+metadataURL+`", scope="mail.read"` {
		t.Errorf("401 challenge = %q", a.rawChal)
	}
	if a := call(t, srv.URL+"/mcp", "Bearer abc"); a.rawChal != `Bearer resource_metadata="`+metadataURL+`", error="invalid_token", error_description="not a compact JWS"` {
		t.Errorf("invalid_token challenge = %q", a.rawChal)
	}
}

func TestMetadata(t *testing.T) {
	w := lanyardtest.New(t, lanyardtest.Options{})
	c := newClient(t, w, nil)
	if c.MetadataPath() != "/.well-known/oauth-protected-resource/mcp" || c.MetadataURL() != metadataURL {
		t.Errorf("MetadataPath %q, MetadataURL %q", c.MetadataPath(), c.MetadataURL())
	}
	srv := protected(t, c)
	resp, err := http.Get(srv.URL + c.MetadataPath())
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/json" || resp.Header.Get("Access-Control-Allow-Origin") != "*" {
		t.Errorf("status %d, headers %v", resp.StatusCode, resp.Header)
	}
	var md map[string]any
	if err := json.Unmarshal(b, &md); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{
		"resource":                 lanyardtest.ResourceURI,
		"authorization_servers":    []any{w.Issuer},
		"scopes_supported":         []any{"mail.read", "mail.send"},
		"bearer_methods_supported": []any{"header"},
		"resource_name":            "Mail MCP",
	}
	if fmt.Sprint(md) != fmt.Sprint(want) {
		t.Errorf("metadata\n got %v\nwant %v", md, want)
	}
	for method, status := range map[string]int{http.MethodOptions: 204, http.MethodHead: 200, http.MethodPost: 405} {
		req, _ := http.NewRequest(method, srv.URL+c.MetadataPath(), nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != status {
			t.Errorf("%s: status %d, want %d", method, resp.StatusCode, status)
		}
	}

	for resource, path := range map[string]string{
		"https://mail.example.com/":      "/.well-known/oauth-protected-resource",
		"https://mail.example.com":       "/.well-known/oauth-protected-resource",
		"https://mail.example.com/a/b/":  "/.well-known/oauth-protected-resource/a/b",
		"http://127.0.0.1:8090/mcp":      "/.well-known/oauth-protected-resource/mcp",
		"https://mail.example.com/x%20y": "/.well-known/oauth-protected-resource/x%20y",
	} {
		c := newClient(t, w, func(cfg *mcpauth.Config) { cfg.Resource = resource })
		if c.MetadataPath() != path {
			t.Errorf("resource %s: MetadataPath %q, want %q", resource, c.MetadataPath(), path)
		}
	}
}

func TestNewChecks(t *testing.T) {
	w := lanyardtest.New(t, lanyardtest.Options{})
	_, err := mcpauth.New(t.Context(), mcpauth.Config{Resource: "ftp://x/y#f", JWKSMinRefetch: -1, ClientID: "a", Scopes: []string{"a b"}})
	for _, want := range []string{"issuer is required", "resource", "JWKS min refetch", "client secret", "scope"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("New with a bad config: %v; want it to mention %q", err, want)
		}
	}
	if _, err := mcpauth.New(t.Context(), mcpauth.Config{Issuer: "http://mail.example.com", Resource: lanyardtest.ResourceURI}); err == nil {
		t.Error("http issuer on a non-loopback host accepted")
	}
	// An issuer that is not the one in the metadata (mix-up).
	_, err = mcpauth.New(t.Context(), mcpauth.Config{Issuer: w.Issuer + "/", Resource: lanyardtest.ResourceURI})
	if err == nil || !strings.Contains(err.Error(), "names issuer") {
		t.Errorf("New with issuer + slash: %v, want an issuer mismatch", err)
	}
	// Lanyard down.
	dead := httptest.NewServer(http.NotFoundHandler())
	dead.Close()
	_, err = mcpauth.New(t.Context(), mcpauth.Config{Issuer: dead.URL, Resource: lanyardtest.ResourceURI})
	if !errors.Is(err, mcpauth.ErrUnavailable) {
		t.Errorf("New with Lanyard down: %v, want ErrUnavailable", err)
	}
}

// Lanyard rotates its key; the first token signed by the new key makes
// the client fetch the JWKS once more.
func TestKeyRotation(t *testing.T) {
	clock := testenv.NewClock(time.Now())
	w := lanyardtest.New(t, lanyardtest.Options{Now: clock.Now})
	c := newClient(t, w, func(cfg *mcpauth.Config) { cfg.Now = clock.Now; cfg.JWKSMinRefetch = time.Minute })
	srv := protected(t, c)
	old := w.Sign(token.Claims{})
	if a := call(t, srv.URL+"/mcp", "Bearer "+old); a.status != 200 {
		t.Fatalf("old key: %d", a.status)
	}
	if _, err := w.Keys.Rotate(t.Context()); err != nil {
		t.Fatal(err)
	}
	clock.Advance(token.DefaultPublishDelay + time.Second) // the new key signs now
	fresh := w.Sign(token.Claims{})
	if header(t, fresh)["kid"] == header(t, old)["kid"] {
		t.Fatal("rotation did not change the signing key")
	}
	before := w.JWKSHits.Load()
	for range 3 {
		if a := call(t, srv.URL+"/mcp", "Bearer "+fresh); a.status != 200 {
			t.Fatalf("new key: %d %v", a.status, a.body)
		}
	}
	if a := call(t, srv.URL+"/mcp", "Bearer "+old); a.status != 200 {
		t.Fatalf("old key after rotation: %d", a.status)
	}
	if got := w.JWKSHits.Load() - before; got != 1 {
		t.Errorf("JWKS fetched %d times after the rotation, want 1", got)
	}
}

// A flood of tokens with unknown kids costs at most one JWKS fetch per
// JWKSMinRefetch.
func TestUnknownKidFlood(t *testing.T) {
	clock := testenv.NewClock(time.Now())
	w := lanyardtest.New(t, lanyardtest.Options{Now: clock.Now})
	c := newClient(t, w, func(cfg *mcpauth.Config) { cfg.Now = clock.Now; cfg.JWKSMinRefetch = time.Minute })
	srv := protected(t, c)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	flood := func() {
		var wg sync.WaitGroup
		for range 50 {
			wg.Go(func() {
				raw := forge(t, key, w.Issuer, clock.Now())
				a := call(t, srv.URL+"/mcp", "Bearer "+raw)
				if a.status != 401 || a.challenge["error_description"] != "unknown key" {
					t.Errorf("forged kid: %d %v", a.status, a.challenge)
				}
			})
		}
		wg.Wait()
	}
	start := w.JWKSHits.Load()
	flood()
	if got := w.JWKSHits.Load() - start; got != 0 {
		t.Errorf("flood right after New: %d fetches, want 0", got)
	}
	clock.Advance(time.Minute)
	flood()
	if got := w.JWKSHits.Load() - start; got != 1 {
		t.Errorf("flood a minute later: %d fetches, want 1", got)
	}
	flood()
	if got := w.JWKSHits.Load() - start; got != 1 {
		t.Errorf("second flood in the same minute: %d fetches, want still 1", got)
	}
}

// forge returns an ES256 at+jwt with a random kid that Lanyard never
// published, built by hand (this package does not import jwx).
func forge(t testing.TB, key *ecdsa.PrivateKey, iss string, now time.Time) string {
	t.Helper()
	kid := make([]byte, 12)
	_, _ = rand.Read(kid)
	enc := func(v any) string {
		b, _ := json.Marshal(v)
		return base64.RawURLEncoding.EncodeToString(b)
	}
	signing := enc(map[string]any{"alg": "ES256", "typ": "at+jwt", "kid": base64.RawURLEncoding.EncodeToString(kid)}) + "." +
		enc(map[string]any{"iss": iss, "sub": "mallory", "aud": lanyardtest.ResourceURI, "client_id": "x", "grant_id": "g",
			"jti": "j", "iat": now.Unix(), "exp": now.Add(time.Minute).Unix()})
	h := sha256.Sum256([]byte(signing))
	r, s, err := ecdsa.Sign(rand.Reader, key, h[:])
	if err != nil {
		t.Fatal(err)
	}
	sig := make([]byte, 64)
	r.FillBytes(sig[:32])
	s.FillBytes(sig[32:])
	return signing + "." + base64.RawURLEncoding.EncodeToString(sig)
}

func header(t testing.TB, raw string) map[string]any {
	t.Helper()
	h, _, _ := strings.Cut(raw, ".")
	b, err := base64.RawURLEncoding.DecodeString(h)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	_ = json.Unmarshal(b, &m)
	return m
}

func TestTokenAndCredentialRedact(t *testing.T) {
	tok := mcpauth.Token{Raw: "RAW-TOKEN-VALUE", Subject: "u", GrantID: "g", Scopes: []string{"a"}}
	cred := mcpauth.Credential{ConnectionID: "c", Connector: "imap", Type: "basic",
		Fields: map[string]any{"username": "alice", "password": "SECRET-PASSWORD"}}
	js1, _ := json.Marshal(tok)
	js2, _ := json.Marshal(cred)
	for _, s := range []string{
		fmt.Sprint(tok), fmt.Sprintf("%+v", tok), fmt.Sprintf("%#v", tok), fmt.Sprintf("%v", &tok), string(js1),
		fmt.Sprint(cred), fmt.Sprintf("%+v", cred), fmt.Sprintf("%#v", &cred), string(js2),
		tok.LogValue().String(), cred.LogValue().String(),
	} {
		if strings.Contains(s, "RAW-TOKEN-VALUE") || strings.Contains(s, "SECRET-PASSWORD") {
			t.Errorf("leaks a secret: %s", s)
		}
	}
	if !strings.Contains(string(js2), `"password":"[redacted]"`) {
		t.Errorf("credential JSON %s: want field names with redacted values", js2)
	}
	if !slices.Equal([]string{"a"}, tok.Scopes) || !tok.HasScopes("a") || tok.HasScopes("a", "b") {
		t.Error("HasScopes")
	}
}
