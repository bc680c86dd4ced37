package oauthconn_test

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lanyardhq/lanyard/broker"
	"github.com/lanyardhq/lanyard/connectors"
	"github.com/lanyardhq/lanyard/connectors/connectortest"
	"github.com/lanyardhq/lanyard/connectors/oauthconn"
	"github.com/lanyardhq/lanyard/internal/config"
	"github.com/lanyardhq/lanyard/internal/safehttp"
	"github.com/lanyardhq/lanyard/internal/testenv"
)

const redirectURI = "http://127.0.0.1:9/callback" // never served: Login stops at it

func randomString(t *testing.T) string {
	t.Helper()
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

func newState(t *testing.T) connectors.LinkState {
	return connectors.LinkState{State: randomString(t), Verifier: randomString(t), RedirectURI: redirectURI}
}

// realProvider starts oidc-provider and an oidc connector for it.
func realProvider(t *testing.T) (*testenv.OIDCProvider, *oauthconn.Connector) {
	t.Helper()
	p := testenv.StartOIDCProvider(t, testenv.OIDCClient{ID: "lanyard", Secret: "lanyard-test-secret-0123456789abcdef", RedirectURIs: []string{redirectURI}})
	c, err := oauthconn.New(context.Background(), "idp", "Test IdP", config.OAuth2Connector{
		Preset: "oidc", Issuer: p.Issuer, ClientID: "lanyard", ClientSecret: "lanyard-test-secret-0123456789abcdef",
		Scopes: []string{"openid", "email", "profile"},
	}, oauthconn.Options{Dev: true})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return p, c
}

// link runs the whole authorization code flow against the real provider.
func link(t *testing.T, p *testenv.OIDCProvider, c *oauthconn.Connector) connectors.Linked {
	t.Helper()
	st := newState(t)
	authURL, err := c.AuthURL(context.Background(), st)
	if err != nil {
		t.Fatalf("AuthURL: %v", err)
	}
	cb := p.Login(t, authURL)
	q := cb.Query()
	if got := q.Get("state"); got != st.State {
		t.Fatalf("callback state = %q, want %q", got, st.State)
	}
	l, err := c.Complete(context.Background(), st, q)
	if err != nil {
		t.Fatalf("Complete: %v", err)
	}
	return l
}

func field(t *testing.T, s broker.Secret, name string) string {
	t.Helper()
	v, ok := s.Field(name)
	if !ok || v == "" {
		t.Fatalf("secret has no %s (fields %v)", name, s.Names())
	}
	return v
}

func TestConnectorSuite(t *testing.T) {
	p, c := realProvider(t)
	connectortest.Run(t, connectortest.Harness{
		Connector: c,
		Link: func(t *testing.T) connectors.Linked {
			l := link(t, p, c)
			// The tokens are only known now; the suite checks the client
			// secret, this checks them.
			printed := fmt.Sprintf("%v %+v %#v %s", l, l, l, l.Account)
			for _, name := range []string{"access_token", "refresh_token"} {
				if strings.Contains(printed, field(t, l.Secret, name)) {
					t.Errorf("the printed Linked value contains the %s", name)
				}
			}
			if l.Account != "alice@example.test" {
				t.Errorf("Account = %q, want alice@example.test", l.Account)
			}
			return l
		},
		Break:   func(t *testing.T, _ connectors.Linked) { p.RevokeAll(t) },
		Secrets: []string{"lanyard-test-secret-0123456789abcdef"},
	})
}

func TestAuthURL(t *testing.T) {
	_, c := realProvider(t)
	st := newState(t)
	raw, err := c.AuthURL(context.Background(), st)
	if err != nil {
		t.Fatal(err)
	}
	u, _ := url.Parse(raw)
	q := u.Query()
	for k, want := range map[string]string{
		"response_type": "code", "client_id": "lanyard", "state": st.State, "redirect_uri": redirectURI,
		"code_challenge_method": "S256", "scope": "openid email profile",
	} {
		if got := q.Get(k); got != want {
			t.Errorf("%s = %q, want %q", k, got, want)
		}
	}
	if q.Get("code_challenge") == "" || q.Get("code_challenge") == st.Verifier {
		t.Errorf("code_challenge = %q: want the S256 hash of the verifier", q.Get("code_challenge"))
	}
	for name, bad := range map[string]connectors.LinkState{
		"no state":       {Verifier: st.Verifier, RedirectURI: redirectURI},
		"short verifier": {State: "s", Verifier: "short", RedirectURI: redirectURI},
		"relative URI":   {State: "s", Verifier: st.Verifier, RedirectURI: "/cb"},
	} {
		if _, err := c.AuthURL(context.Background(), bad); !errors.Is(err, broker.ErrInvalid) {
			t.Errorf("%s: AuthURL = %v, want ErrInvalid", name, err)
		}
	}
}

func TestRefreshRotation(t *testing.T) {
	p, c := realProvider(t)
	l := link(t, p, c)
	oldRT := field(t, l.Secret, "refresh_token")
	oldAT := field(t, l.Secret, "access_token")

	r, err := c.Refresh(context.Background(), l.Secret)
	if err != nil {
		t.Fatalf("Refresh: %v", err)
	}
	newRT := field(t, r.Secret, "refresh_token")
	if newAT := field(t, r.Secret, "access_token"); newAT == oldAT {
		t.Error("Refresh returned the old access token")
	}
	if newRT == oldRT {
		t.Fatal("the provider rotates refresh tokens but Refresh kept the old one")
	}
	if r.ExpiresAt.IsZero() || field(t, r.Secret, "expiry") == "" {
		t.Error("Refresh lost the expiry")
	}
	if err := c.Verify(context.Background(), r.Secret); err != nil {
		t.Errorf("Verify of the refreshed secret: %v", err)
	}

	// The old refresh token is spent: reusing it is invalid_grant (and the
	// provider ends the grant, as OAuth 2.1 advises on reuse).
	if _, err := c.Refresh(context.Background(), l.Secret); !errors.Is(err, connectors.ErrNeedsRelink) {
		t.Fatalf("Refresh with the rotated-out token = %v, want ErrNeedsRelink", err)
	} else if strings.Contains(err.Error(), oldRT) {
		t.Error("the error repeats the refresh token")
	}
}

func TestRevokeUpstream(t *testing.T) {
	p, c := realProvider(t)
	if !c.CanRevoke() {
		t.Fatal("CanRevoke = false; the provider advertises revocation_endpoint")
	}
	l := link(t, p, c)
	if err := c.RevokeUpstream(context.Background(), l.Secret); err != nil {
		t.Fatalf("RevokeUpstream: %v", err)
	}
	if _, err := c.Refresh(context.Background(), l.Secret); !errors.Is(err, connectors.ErrNeedsRelink) {
		t.Errorf("Refresh after revocation = %v, want ErrNeedsRelink", err)
	}
	if err := c.Verify(context.Background(), l.Secret); !errors.Is(err, connectors.ErrNeedsRelink) {
		t.Errorf("Verify after revocation = %v, want ErrNeedsRelink", err)
	}
	// Revoking again is fine (RFC 7009: invalid tokens are not an error).
	if err := c.RevokeUpstream(context.Background(), l.Secret); err != nil {
		t.Errorf("second RevokeUpstream: %v", err)
	}
}

func TestCompleteCallbackChecks(t *testing.T) {
	p, c := realProvider(t)
	if c.Issuer() != p.Issuer {
		t.Fatalf("Issuer = %q, want %q", c.Issuer(), p.Issuer)
	}

	t.Run("IssMismatch", func(t *testing.T) {
		st := newState(t)
		authURL, _ := c.AuthURL(context.Background(), st)
		q := p.Login(t, authURL).Query()
		q.Set("iss", "https://evil.example")
		if _, err := c.Complete(context.Background(), st, q); !errors.Is(err, oauthconn.ErrIssuerMismatch) || !errors.Is(err, broker.ErrInvalid) {
			t.Errorf("Complete with another iss = %v, want ErrIssuerMismatch", err)
		}
	})
	t.Run("IssMissingWhenAdvertised", func(t *testing.T) {
		st := newState(t)
		authURL, _ := c.AuthURL(context.Background(), st)
		q := p.Login(t, authURL).Query()
		if q.Get("iss") != p.Issuer {
			t.Fatalf("the provider sent iss %q", q.Get("iss"))
		}
		q.Del("iss")
		if _, err := c.Complete(context.Background(), st, q); !errors.Is(err, oauthconn.ErrIssuerMismatch) {
			t.Errorf("Complete without iss = %v, want ErrIssuerMismatch", err)
		}
	})
	t.Run("AccessDenied", func(t *testing.T) {
		st := newState(t)
		authURL, _ := c.AuthURL(context.Background(), st)
		q := p.Deny(t, authURL).Query()
		if q.Get("error") != "access_denied" {
			t.Fatalf("callback = %v, want error=access_denied", q)
		}
		_, err := c.Complete(context.Background(), st, q)
		if !errors.Is(err, connectors.ErrRejected) || !strings.Contains(err.Error(), "access_denied") {
			t.Errorf("Complete of a denial = %v, want ErrRejected naming access_denied", err)
		}
	})
	t.Run("WrongVerifier", func(t *testing.T) {
		st := newState(t)
		authURL, _ := c.AuthURL(context.Background(), st)
		q := p.Login(t, authURL).Query()
		st.Verifier = randomString(t)
		if _, err := c.Complete(context.Background(), st, q); !errors.Is(err, connectors.ErrRejected) {
			t.Errorf("Complete with another PKCE verifier = %v, want ErrRejected", err)
		}
	})
	t.Run("NoCode", func(t *testing.T) {
		st := newState(t)
		if _, err := c.Complete(context.Background(), st, url.Values{"state": {st.State}, "iss": {p.Issuer}}); !errors.Is(err, broker.ErrInvalid) {
			t.Errorf("Complete without code = %v, want ErrInvalid", err)
		}
	})
}

// discoveryServer serves a metadata document made by doc(baseURL).
func discoveryServer(t *testing.T, doc func(base string) string) *httptest.Server {
	t.Helper()
	var srv *httptest.Server
	srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/.well-known/openid-configuration" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(doc(srv.URL)))
	}))
	t.Cleanup(srv.Close)
	return srv
}

func metadata(issuer, base string) string {
	return `{"issuer":"` + issuer + `","authorization_endpoint":"` + base + `/auth","token_endpoint":"` + base + `/token",` +
		`"authorization_response_iss_parameter_supported":true,"code_challenge_methods_supported":["S256"]}`
}

func TestDiscovery(t *testing.T) {
	newOIDC := func(issuer string, dev bool) error {
		_, err := oauthconn.New(context.Background(), "x", "X", config.OAuth2Connector{Preset: "oidc", Issuer: issuer, ClientID: "c"}, oauthconn.Options{Dev: dev})
		return err
	}
	t.Run("Good", func(t *testing.T) {
		srv := discoveryServer(t, func(base string) string { return metadata(base, base) })
		if err := newOIDC(srv.URL, true); err != nil {
			t.Fatalf("New: %v", err)
		}
	})
	t.Run("IssuerMismatch", func(t *testing.T) {
		srv := discoveryServer(t, func(base string) string { return metadata("https://other.example", base) })
		if err := newOIDC(srv.URL, true); !errors.Is(err, oauthconn.ErrDiscovery) || !strings.Contains(err.Error(), "issuer") {
			t.Errorf("New = %v, want ErrDiscovery about the issuer", err)
		}
	})
	t.Run("TrailingSlashIsNotTheSameIssuer", func(t *testing.T) {
		srv := discoveryServer(t, func(base string) string { return metadata(base, base) })
		if err := newOIDC(srv.URL+"/", true); !errors.Is(err, oauthconn.ErrDiscovery) {
			t.Errorf("New = %v, want ErrDiscovery (issuers compare exactly)", err)
		}
	})
	t.Run("HTTPRefusedWithoutDev", func(t *testing.T) {
		var hits atomic.Int32
		srv := discoveryServer(t, func(base string) string { hits.Add(1); return metadata(base, base) })
		err := newOIDC(srv.URL, false)
		if !errors.Is(err, oauthconn.ErrDiscovery) || !errors.Is(err, safehttp.ErrScheme) {
			t.Errorf("New over http without Dev = %v, want ErrDiscovery and safehttp.ErrScheme", err)
		}
		if hits.Load() != 0 {
			t.Error("the document was fetched")
		}
	})
	t.Run("HTTPEndpointsRefused", func(t *testing.T) {
		srv := discoveryServer(t, func(base string) string { return metadata(base, "http://example.com") })
		if err := newOIDC(srv.URL, true); !errors.Is(err, oauthconn.ErrDiscovery) {
			t.Errorf("New with http endpoints on a public host = %v, want ErrDiscovery", err)
		}
	})
	t.Run("NoS256", func(t *testing.T) {
		srv := discoveryServer(t, func(base string) string {
			return strings.Replace(metadata(base, base), `["S256"]`, `["plain"]`, 1)
		})
		if err := newOIDC(srv.URL, true); !errors.Is(err, oauthconn.ErrDiscovery) {
			t.Errorf("New without S256 = %v, want ErrDiscovery", err)
		}
	})
	t.Run("NotJSON", func(t *testing.T) {
		srv := discoveryServer(t, func(string) string { return "<html>" })
		if err := newOIDC(srv.URL, true); !errors.Is(err, oauthconn.ErrDiscovery) {
			t.Errorf("New = %v, want ErrDiscovery", err)
		}
	})
}

func TestPresets(t *testing.T) {
	st := connectors.LinkState{State: "s", Verifier: strings.Repeat("v", 43), RedirectURI: "https://lanyard.example/cb"}
	for _, tc := range []struct {
		cfg      config.OAuth2Connector
		wantAuth string
		revoke   bool
		issuer   string
	}{
		{config.OAuth2Connector{Preset: "github"}, "https://github.com/login/oauth/authorize", false, ""},
		{config.OAuth2Connector{Preset: "google"}, "https://accounts.google.com/o/oauth2/auth", true, "https://accounts.google.com"},
		{config.OAuth2Connector{Preset: "microsoft", Tenant: "organizations"}, "https://login.microsoftonline.com/organizations/oauth2/v2.0/authorize", false, ""},
		{config.OAuth2Connector{Preset: "microsoft", Tenant: "0b0c4f5e-1c1a-4c9a-9d0e-1a2b3c4d5e6f"}, "https://login.microsoftonline.com/0b0c4f5e-1c1a-4c9a-9d0e-1a2b3c4d5e6f/oauth2/v2.0/authorize", false, "https://login.microsoftonline.com/0b0c4f5e-1c1a-4c9a-9d0e-1a2b3c4d5e6f/v2.0"},
		{config.OAuth2Connector{Preset: "slack"}, "https://slack.com/oauth/v2/authorize", false, ""},
		{config.OAuth2Connector{Preset: "salesforce", Domain: "acme.my.salesforce.com"}, "https://acme.my.salesforce.com/services/oauth2/authorize", true, ""},
		{config.OAuth2Connector{Preset: "workday", Domain: "wd2-impl-services1.workday.com", Tenant: "acme"}, "https://wd2-impl-services1.workday.com/ccx/oauth2/acme/authorize", false, ""},
		{config.OAuth2Connector{AuthURL: "https://idp.example/a", TokenURL: "https://idp.example/t", RevocationURL: "https://idp.example/r", Issuer: "https://idp.example"}, "https://idp.example/a", true, "https://idp.example"},
	} {
		name := tc.cfg.Preset + tc.cfg.Tenant
		if name == "" {
			name = "custom"
		}
		t.Run(name, func(t *testing.T) {
			tc.cfg.ClientID = "client"
			c, err := oauthconn.New(context.Background(), "n", "N", tc.cfg, oauthconn.Options{})
			if err != nil {
				t.Fatalf("New: %v", err)
			}
			raw, err := c.AuthURL(context.Background(), st)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.HasPrefix(raw, tc.wantAuth+"?") {
				t.Errorf("AuthURL = %s, want it at %s", raw, tc.wantAuth)
			}
			if c.CanRevoke() != tc.revoke {
				t.Errorf("CanRevoke = %v, want %v", c.CanRevoke(), tc.revoke)
			}
			if c.Issuer() != tc.issuer {
				t.Errorf("Issuer = %q, want %q", c.Issuer(), tc.issuer)
			}
		})
	}
	for name, cfg := range map[string]config.OAuth2Connector{
		"salesforce domain with path": {Preset: "salesforce", Domain: "evil.example/x"},
		"workday without tenant":      {Preset: "workday", Domain: "wd.example"},
		"unknown preset":              {Preset: "myspace"},
		"http token URL":              {AuthURL: "https://idp.example/a", TokenURL: "http://idp.example/t"},
		"no endpoints":                {},
	} {
		cfg.ClientID = "client"
		if _, err := oauthconn.New(context.Background(), "n", "N", cfg, oauthconn.Options{}); !errors.Is(err, broker.ErrInvalid) {
			t.Errorf("%s: New = %v, want ErrInvalid", name, err)
		}
	}
	if _, err := oauthconn.New(context.Background(), "n", "N", config.OAuth2Connector{Preset: "github"}, oauthconn.Options{}); !errors.Is(err, broker.ErrInvalid) {
		t.Errorf("New without client_id = %v, want ErrInvalid", err)
	}
}

// fakeToken serves a token endpoint with handler h and returns a connector
// for it (custom endpoints, Dev for httptest's http).
func fakeToken(t *testing.T, h http.HandlerFunc, opts oauthconn.Options) *oauthconn.Connector {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	opts.Dev = true
	c, err := oauthconn.New(context.Background(), "fake", "Fake", config.OAuth2Connector{
		AuthURL: srv.URL + "/auth", TokenURL: srv.URL + "/token", ClientID: "c", ClientSecret: "client-secret-value",
	}, opts)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

var stale = broker.NewSecret(map[string]string{
	"access_token": "old-access-token", "refresh_token": "old-refresh-token", "token_type": "Bearer",
	"expiry": "2020-01-01T00:00:00Z", "scope": "read",
})

func TestTokenEndpointFailures(t *testing.T) {
	jsonHandler := func(status int, body string) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(status)
			_, _ = w.Write([]byte(body))
		}
	}
	for _, tc := range []struct {
		name string
		h    http.HandlerFunc
		want error
	}{
		{"500", jsonHandler(500, `{"error":"server_error"}`), connectors.ErrUpstream},
		{"502 HTML", func(w http.ResponseWriter, r *http.Request) {
			http.Error(w, "<html>bad gateway</html>", http.StatusBadGateway)
		}, connectors.ErrUpstream},
		{"MalformedJSON", jsonHandler(200, `{"access_token": "x", `), connectors.ErrUpstream},
		{"NoAccessToken", jsonHandler(200, `{"token_type":"Bearer"}`), connectors.ErrUpstream},
		{"InvalidGrant", jsonHandler(400, `{"error":"invalid_grant","error_description":"grant revoked"}`), connectors.ErrNeedsRelink},
		{"InvalidClient", jsonHandler(401, `{"error":"invalid_client"}`), connectors.ErrUpstream},
		{"HugeBody", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write([]byte(`{"access_token":"`))
			chunk := []byte(strings.Repeat("a", 64<<10))
			for i := 0; i < 64; i++ { // 4 MiB
				if _, err := w.Write(chunk); err != nil {
					return
				}
			}
			_, _ = w.Write([]byte(`","token_type":"Bearer"}`))
		}, connectors.ErrUpstream},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := fakeToken(t, tc.h, oauthconn.Options{})
			_, err := c.Refresh(context.Background(), stale)
			if !errors.Is(err, tc.want) {
				t.Fatalf("Refresh = %v, want %v", err, tc.want)
			}
			for _, s := range []string{"old-refresh-token", "old-access-token", "client-secret-value"} {
				if strings.Contains(err.Error(), s) {
					t.Errorf("the error %q contains a secret", err)
				}
			}
		})
	}
	t.Run("InvalidGrantDescriptionScrubbed", func(t *testing.T) {
		c := fakeToken(t, jsonHandler(400, `{"error":"invalid_grant","error_description":"token old-refresh-token is revoked"}`), oauthconn.Options{})
		_, err := c.Refresh(context.Background(), stale)
		if !errors.Is(err, connectors.ErrNeedsRelink) || strings.Contains(err.Error(), "old-refresh-token") {
			t.Errorf("Refresh = %v, want ErrNeedsRelink without the token", err)
		}
	})

	hang := func(release chan struct{}) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			select {
			case <-release:
			case <-r.Context().Done():
			}
		}
	}
	t.Run("HangBoundedByContext", func(t *testing.T) {
		release := make(chan struct{})
		defer close(release)
		c := fakeToken(t, hang(release), oauthconn.Options{})
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		start := time.Now()
		_, err := c.Refresh(ctx, stale)
		if !errors.Is(err, connectors.ErrUpstream) || !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Refresh = %v, want ErrUpstream and DeadlineExceeded", err)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("Refresh took %v", d)
		}
	})
	t.Run("HangBoundedByClientTimeout", func(t *testing.T) {
		release := make(chan struct{})
		defer close(release)
		c := fakeToken(t, hang(release), oauthconn.Options{HTTP: &http.Client{Timeout: 200 * time.Millisecond}})
		start := time.Now()
		_, err := c.Refresh(context.Background(), stale)
		if !errors.Is(err, connectors.ErrUpstream) || !strings.Contains(err.Error(), "timed out") {
			t.Errorf("Refresh = %v, want ErrUpstream (timed out)", err)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("Refresh took %v", d)
		}
	})
}

func TestRefreshKeepsRefreshTokenWhenNotRotated(t *testing.T) {
	var form url.Values
	c := fakeToken(t, func(w http.ResponseWriter, r *http.Request) {
		_ = r.ParseForm()
		form = r.PostForm
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"access_token":"new-access","token_type":"Bearer","expires_in":3600}`))
	}, oauthconn.Options{})
	l, err := c.Refresh(context.Background(), stale)
	if err != nil {
		t.Fatal(err)
	}
	if form.Get("grant_type") != "refresh_token" || form.Get("refresh_token") != "old-refresh-token" {
		t.Errorf("token request form = %v", form)
	}
	got := l.Secret.Fields()
	want := map[string]string{"access_token": "new-access", "refresh_token": "old-refresh-token", "token_type": "Bearer", "scope": "read"}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %q, want %q", k, got[k], v)
		}
	}
	if e, err := time.Parse(time.RFC3339, got["expiry"]); err != nil || time.Until(e) < 50*time.Minute {
		t.Errorf("expiry = %q, want about an hour from now", got["expiry"])
	}
	if _, err := c.Refresh(context.Background(), broker.NewSecret(map[string]string{"access_token": "a"})); !errors.Is(err, connectors.ErrNeedsRelink) {
		t.Errorf("Refresh without a refresh token = %v, want ErrNeedsRelink", err)
	}
}

func TestMaterializeAndExpiry(t *testing.T) {
	now := time.Date(2030, 1, 1, 12, 0, 0, 0, time.UTC)
	c := fakeToken(t, http.NotFound, oauthconn.Options{Now: func() time.Time { return now }})
	live := broker.NewSecret(map[string]string{"access_token": "at", "token_type": "bearer", "expiry": "2030-01-01T13:00:00Z"})
	cred, err := c.Materialize(context.Background(), live)
	if err != nil {
		t.Fatal(err)
	}
	if cred.Type != "oauth2" || cred.Fields["access_token"] != "at" || cred.Fields["token_type"] != "bearer" || !cred.ExpiresAt.Equal(now.Add(time.Hour)) {
		t.Errorf("Materialize = %+v", cred)
	}
	if _, err := c.Materialize(context.Background(), stale); !errors.Is(err, oauthconn.ErrAccessTokenExpired) {
		t.Errorf("Materialize of an expired token = %v, want ErrAccessTokenExpired", err)
	}
	if err := c.Verify(context.Background(), stale); !errors.Is(err, oauthconn.ErrAccessTokenExpired) {
		t.Errorf("Verify of an expired token = %v, want ErrAccessTokenExpired", err)
	}
	if err := c.Verify(context.Background(), live); err != nil {
		t.Errorf("Verify without userinfo of a live token = %v", err)
	}
	if err := c.RevokeUpstream(context.Background(), live); !errors.Is(err, errors.ErrUnsupported) {
		t.Errorf("RevokeUpstream without an endpoint = %v, want ErrUnsupported", err)
	}
}

func TestUserinfo(t *testing.T) {
	var mode atomic.Value
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer at" {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		switch mode.Load() {
		case "huge":
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write([]byte(`{"sub":"`))
			for i := 0; i < 32; i++ { // 2 MiB
				if _, err := w.Write([]byte(strings.Repeat("x", 64<<10))); err != nil {
					return
				}
			}
			_, _ = w.Write([]byte(`"}`))
		case "500":
			w.WriteHeader(http.StatusInternalServerError)
		case "slack":
			_, _ = w.Write([]byte(`{"ok":false,"error":"invalid_auth"}`))
		default:
			_, _ = w.Write([]byte(`{"sub":"123","login":"octocat"}`))
		}
	}))
	t.Cleanup(srv.Close)
	c, err := oauthconn.New(context.Background(), "u", "U", config.OAuth2Connector{
		AuthURL: srv.URL + "/a", TokenURL: srv.URL + "/t", UserInfoURL: srv.URL + "/me", ClientID: "c",
	}, oauthconn.Options{Dev: true})
	if err != nil {
		t.Fatal(err)
	}
	live := broker.NewSecret(map[string]string{"access_token": "at"})
	for _, tc := range []struct {
		mode string
		want error
	}{
		{"ok", nil},
		{"huge", connectors.ErrUpstream},
		{"500", connectors.ErrUpstream},
		{"slack", connectors.ErrNeedsRelink},
	} {
		mode.Store(tc.mode)
		err := c.Verify(context.Background(), live)
		if !errors.Is(err, tc.want) || (tc.want == nil) != (err == nil) {
			t.Errorf("%s: Verify = %v, want %v", tc.mode, err, tc.want)
		}
	}
	mode.Store("ok")
	if err := c.Verify(context.Background(), broker.NewSecret(map[string]string{"access_token": "other"})); !errors.Is(err, connectors.ErrNeedsRelink) {
		t.Errorf("Verify of a refused token = %v, want ErrNeedsRelink", err)
	}
}
