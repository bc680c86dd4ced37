package oauthconn_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/lanyardhq/lanyard/broker"
	"github.com/lanyardhq/lanyard/connectors"
	"github.com/lanyardhq/lanyard/connectors/oauthconn"
	"github.com/lanyardhq/lanyard/internal/config"
	"github.com/lanyardhq/lanyard/internal/testenv"
)

const testClientSecret = "lanyard-test-secret-0123456789abcdef"

// introspect asks the provider's RFC 7662 endpoint (from its discovery
// document) about token, as the client lanyard.
func introspect(t *testing.T, issuer, token string) map[string]any {
	t.Helper()
	resp, err := http.Get(issuer + "/.well-known/openid-configuration")
	if err != nil {
		t.Fatal(err)
	}
	var md struct {
		Introspection string `json:"introspection_endpoint"`
	}
	err = json.NewDecoder(resp.Body).Decode(&md)
	resp.Body.Close()
	if err != nil || md.Introspection == "" {
		t.Fatalf("discovery: no introspection_endpoint (%v)", err)
	}
	req, _ := http.NewRequest(http.MethodPost, md.Introspection, strings.NewReader(url.Values{"token": {token}}.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.SetBasicAuth("lanyard", testClientSecret)
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil || resp.StatusCode != 200 {
		t.Fatalf("introspection: %d %v", resp.StatusCode, err)
	}
	return out
}

// TestExchangeAtRealProvider: RFC 8693 token exchange at a real provider
// (npm oidc-provider with the test-only token exchange grant of
// internal/testenv/oidcprovider) yields a new, short-lived access token for
// the requested audience, leaving the stored token alone; once the grant is
// revoked the subject token is refused and the connection needs re-linking.
func TestExchangeAtRealProvider(t *testing.T) {
	ctx := context.Background()
	p := testenv.StartOIDCProvider(t, testenv.OIDCClient{ID: "lanyard", Secret: testClientSecret, RedirectURIs: []string{redirectURI}})
	c, err := oauthconn.New(ctx, "idp", "Test IdP", config.OAuth2Connector{
		Preset: "oidc", Issuer: p.Issuer, ClientID: "lanyard", ClientSecret: testClientSecret,
		Scopes: []string{"openid", "email", "profile"}, TokenExchange: true, ExchangeAudience: "https://api.example.test",
	}, oauthconn.Options{Dev: true})
	if err != nil {
		t.Fatalf("New with token_exchange (the provider lists the grant): %v", err)
	}
	l := link(t, p, c)
	storedAT := field(t, l.Secret, "access_token")

	start := time.Now()
	cred, err := c.Exchange(ctx, l.Secret, "", nil)
	if err != nil {
		t.Fatalf("Exchange: %v", err)
	}
	at, _ := cred.Fields["access_token"].(string)
	if cred.Type != connectors.KindOAuth2 || at == "" || at == storedAT || cred.Fields["token_type"] != "Bearer" {
		t.Fatalf("Exchange = %+v; want a new Bearer access token", cred)
	}
	// The provider issues exchanged tokens for 300s (provider.mjs).
	if d := cred.ExpiresAt.Sub(start); d < 290*time.Second || d > 310*time.Second {
		t.Errorf("ExpiresAt is %v from now, want about 300s", d)
	}
	info := introspect(t, p.Issuer, at)
	if info["active"] != true || info["aud"] != "https://api.example.test" || info["sub"] != "alice" || info["client_id"] != "lanyard" ||
		info["scope"] != "openid email profile" {
		t.Errorf("introspection of the exchanged token = %v; want active, aud https://api.example.test, alice's", info)
	}
	if info := introspect(t, p.Issuer, storedAT); info["active"] != true || info["aud"] != nil {
		t.Errorf("introspection of the stored token = %v; want active without an audience", info)
	}

	// An explicit audience and a narrower scope win over the configuration.
	cred, err = c.Exchange(ctx, l.Secret, "https://other.example.test", []string{"openid"})
	if err != nil {
		t.Fatalf("Exchange with audience and scope: %v", err)
	}
	at2, _ := cred.Fields["access_token"].(string)
	if info := introspect(t, p.Issuer, at2); at2 == at || info["aud"] != "https://other.example.test" || info["scope"] != "openid" {
		t.Errorf("introspection = %v; want aud https://other.example.test, scope openid", info)
	}
	// A wider scope is the provider's invalid_scope: an upstream refusal,
	// not the user's problem.
	if _, err := c.Exchange(ctx, l.Secret, "", []string{"openid", "offline_access"}); !errors.Is(err, connectors.ErrUpstream) ||
		!strings.Contains(err.Error(), "invalid_scope") {
		t.Errorf("Exchange with a wider scope = %v, want ErrUpstream (invalid_scope)", err)
	}

	// Revoked upstream: the subject token is invalid_grant → ErrNeedsRelink.
	if err := c.RevokeUpstream(ctx, l.Secret); err != nil {
		t.Fatal(err)
	}
	_, err = c.Exchange(ctx, l.Secret, "", nil)
	if !errors.Is(err, connectors.ErrNeedsRelink) {
		t.Fatalf("Exchange after revocation = %v, want ErrNeedsRelink", err)
	}
	for _, s := range []string{storedAT, testClientSecret} {
		if strings.Contains(err.Error(), s) {
			t.Errorf("the error %q carries a secret", err)
		}
	}
	if info := introspect(t, p.Issuer, at); info["active"] != false {
		t.Errorf("the exchanged token outlived the grant: %v", info)
	}
}

// TestExchangeRequestAndFailures: the request on the wire, and how
// answers map to errors.
func TestExchangeRequestAndFailures(t *testing.T) {
	now := time.Date(2030, 1, 1, 12, 0, 0, 0, time.UTC)
	live := broker.NewSecret(map[string]string{"access_token": "stored-access-token", "refresh_token": "stored-refresh-token",
		"token_type": "Bearer", "expiry": "2030-01-01T13:00:00Z"})
	reply := func(status int, body string) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(status)
			_, _ = w.Write([]byte(body))
		}
	}
	t.Run("Request", func(t *testing.T) {
		var form url.Values
		var user, pass string
		c := fakeToken(t, func(w http.ResponseWriter, r *http.Request) {
			_ = r.ParseForm()
			form = r.PostForm
			user, pass, _ = r.BasicAuth()
			reply(200, `{"access_token":"exchanged","issued_token_type":"urn:ietf:params:oauth:token-type:access_token","token_type":"Bearer","expires_in":"120"}`)(w, r)
		}, oauthconn.Options{Now: func() time.Time { return now }})
		cred, err := c.Exchange(context.Background(), live, "api://mail", []string{"mail.read", "mail.list"})
		if err != nil {
			t.Fatal(err)
		}
		for k, want := range map[string]string{
			"grant_type": oauthconn.GrantTokenExchange, "subject_token": "stored-access-token",
			"subject_token_type": oauthconn.TokenTypeAccessToken, "requested_token_type": oauthconn.TokenTypeAccessToken,
			"audience": "api://mail", "scope": "mail.read mail.list", "client_secret": "",
		} {
			if got := form.Get(k); got != want {
				t.Errorf("%s = %q, want %q", k, got, want)
			}
		}
		if user != "c" || pass != "client-secret-value" {
			t.Errorf("basic auth = %q:%q", user, pass)
		}
		if cred.Fields["access_token"] != "exchanged" || !cred.ExpiresAt.Equal(now.Add(2*time.Minute)) {
			t.Errorf("credential = %+v", cred)
		}
		// No audience anywhere: none is sent.
		if _, err := c.Exchange(context.Background(), live, "", nil); err != nil || form.Has("audience") || form.Has("scope") {
			t.Errorf("without audience: err %v, form %v", err, form)
		}
	})
	t.Run("NoExpiresIn", func(t *testing.T) {
		c := fakeToken(t, reply(200, `{"access_token":"exchanged","token_type":"bearer"}`), oauthconn.Options{})
		cred, err := c.Exchange(context.Background(), live, "", nil)
		if err != nil || !cred.ExpiresAt.IsZero() || cred.Fields["token_type"] != "bearer" {
			t.Errorf("Exchange = %+v, %v; want no expiry", cred, err)
		}
	})
	t.Run("ExpiredSubject", func(t *testing.T) {
		c := fakeToken(t, reply(500, `{}`), oauthconn.Options{})
		if _, err := c.Exchange(context.Background(), stale, "", nil); !errors.Is(err, oauthconn.ErrAccessTokenExpired) {
			t.Errorf("Exchange of an expired token = %v, want ErrAccessTokenExpired", err)
		}
	})
	for _, tc := range []struct {
		name string
		h    http.HandlerFunc
		want error
	}{
		{"InvalidGrant", reply(400, `{"error":"invalid_grant","error_description":"stored-access-token was revoked"}`), connectors.ErrNeedsRelink},
		{"InvalidTarget", reply(400, `{"error":"invalid_target"}`), connectors.ErrUpstream},
		{"UnsupportedGrant", reply(400, `{"error":"unsupported_grant_type"}`), connectors.ErrUpstream},
		{"InvalidClient", reply(401, `{"error":"invalid_client"}`), connectors.ErrUpstream},
		{"500HTML", func(w http.ResponseWriter, r *http.Request) { http.Error(w, "<html>oops</html>", 500) }, connectors.ErrUpstream},
		{"NotJSON", reply(200, `access_token=x`), connectors.ErrUpstream},
		{"NoAccessToken", reply(200, `{"token_type":"Bearer"}`), connectors.ErrUpstream},
		{"NotAnAccessToken", reply(200, `{"access_token":"x","issued_token_type":"urn:ietf:params:oauth:token-type:id_token","token_type":"N_A"}`), connectors.ErrUpstream},
		{"NA", reply(200, `{"access_token":"x","token_type":"N_A"}`), connectors.ErrUpstream},
		{"BadExpiresIn", reply(200, `{"access_token":"x","expires_in":-5}`), connectors.ErrUpstream},
		{"HugeBody", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write([]byte(`{"access_token":"`))
			chunk := []byte(strings.Repeat("a", 64<<10))
			for range 64 { // 4 MiB
				if _, err := w.Write(chunk); err != nil {
					return
				}
			}
			_, _ = w.Write([]byte(`"}`))
		}, connectors.ErrUpstream},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := fakeToken(t, tc.h, oauthconn.Options{})
			_, err := c.Exchange(context.Background(), live, "", nil)
			if !errors.Is(err, tc.want) {
				t.Fatalf("Exchange = %v, want %v", err, tc.want)
			}
			for _, s := range []string{"stored-access-token", "stored-refresh-token", "client-secret-value"} {
				if strings.Contains(err.Error(), s) {
					t.Errorf("the error %q contains a secret", err)
				}
			}
		})
	}
}

// TestTokenExchangeNotAdvertised: with token_exchange set, a provider
// whose discovery document lists its grant types without token exchange is
// a configuration error; one that lists none is given the benefit of the
// doubt.
func TestTokenExchangeNotAdvertised(t *testing.T) {
	for _, tc := range []struct {
		grants string
		ok     bool
	}{
		{`,"grant_types_supported":["authorization_code","refresh_token"]`, false},
		{`,"grant_types_supported":["authorization_code","` + oauthconn.GrantTokenExchange + `"]`, true},
		{``, true},
	} {
		srv := discoveryServer(t, func(base string) string { return strings.TrimSuffix(metadata(base, base), "}") + tc.grants + "}" })
		_, err := oauthconn.New(context.Background(), "x", "X", config.OAuth2Connector{Preset: "oidc", Issuer: srv.URL, ClientID: "c",
			TokenExchange: true}, oauthconn.Options{Dev: true})
		if (err == nil) != tc.ok || (err != nil && !errors.Is(err, broker.ErrInvalid)) {
			t.Errorf("grants %s: New = %v, want ok=%v", tc.grants, err, tc.ok)
		}
	}
}
