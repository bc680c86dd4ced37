package authserver_test

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"
	"golang.org/x/oauth2"

	"github.com/lanyardhq/lanyard/broker"
	"github.com/lanyardhq/lanyard/broker/authserver"
	"github.com/lanyardhq/lanyard/broker/token"
	"github.com/lanyardhq/lanyard/internal/bolt"
)

// The test world: one MCP server, two users, a public and a confidential
// client, all on the real stores (bbolt + the sealed secret store).
const (
	resourceURI    = "https://mcp.example.com/mcp"
	resourceID     = "mcp1"
	resourceSecret = "mcp1-secret-0123456789abcdef0123456789"
	otherURI       = "https://other.example.com/mcp"
	otherID        = "mcp2"
	otherSecret    = "mcp2-secret-0123456789abcdef0123456789"
	publicClient   = "agent"
	confClient     = "conf-agent"
	confSecret     = "conf-secret-0123456789abcdef0123456789"
	preClient      = "pre-agent"
	redirectURI    = "http://127.0.0.1/callback"
	alicePassword  = "alice passphrase 1"
)

type env struct {
	t      *testing.T
	ts     *httptest.Server
	issuer string
	store  *bolt.DB
	auth   *authserver.Server
	keys   *token.Keyring
	logs   *strings.Builder
}

func newEnv(t *testing.T) *env {
	t.Helper()
	return newEnvWith(t, envOptions{})
}

func (e *env) seed(ctx context.Context) {
	now := time.Now()
	must := func(err error) {
		e.t.Helper()
		if err != nil {
			e.t.Fatal(err)
		}
	}
	for _, r := range []broker.Resource{
		{ID: resourceID, URI: resourceURI, Name: "Mail MCP", Scopes: []string{"mail.read", "mail.send"},
			DefaultScopes: []string{"mail.read"}, SecretHash: broker.HashSecret(resourceSecret), CreatedAt: now},
		{ID: otherID, URI: otherURI, Name: "Other MCP", Scopes: []string{"x"}, DefaultScopes: []string{"x"},
			SecretHash: broker.HashSecret(otherSecret), CreatedAt: now},
	} {
		must(e.store.Resources().Create(ctx, r))
	}
	all := []string{authserver.GrantAuthorizationCode, authserver.GrantRefreshToken, authserver.GrantDeviceCode}
	for _, c := range []broker.Client{
		{ID: publicClient, Kind: broker.ClientStatic, Name: "Agent <b>One</b>", RedirectURIs: []string{redirectURI}, GrantTypes: all, CreatedAt: now},
		{ID: confClient, Kind: broker.ClientStatic, Name: "Confidential", RedirectURIs: []string{redirectURI}, GrantTypes: all,
			SecretHash: broker.HashSecret(confSecret), CreatedAt: now},
		{ID: preClient, Kind: broker.ClientStatic, Name: "Pre-approved", RedirectURIs: []string{redirectURI}, GrantTypes: all,
			PreApprovedGroups: []string{"eng"}, CreatedAt: now},
	} {
		must(e.store.Clients().Create(ctx, c))
	}
	for _, name := range []string{"alice", "bob"} {
		h, err := bcrypt.GenerateFromPassword([]byte(alicePassword), bcrypt.MinCost)
		must(err)
		must(e.store.Users().Create(ctx, broker.User{ID: "id-" + name, Username: name, PasswordHash: string(h),
			Groups: []string{"eng"}, CreatedAt: now, UpdatedAt: now}))
	}
	// bob is not in eng.
	_, err := e.store.Users().Update(ctx, "id-bob", func(u broker.User) (broker.User, error) { u.Groups = nil; return u, nil })
	must(err)
	must(e.store.Connections().Create(ctx, broker.Connection{ID: "conn-gh", UserID: "id-alice", Connector: "github",
		Kind: "oauth2", Account: "alice-gh", Status: broker.ConnectionActive, CreatedAt: now, UpdatedAt: now}))
	must(e.store.Connections().Create(ctx, broker.Connection{ID: "conn-mail", UserID: "id-alice", Connector: "imap",
		Kind: "basic", Account: "alice@mail", Status: broker.ConnectionActive, CreatedAt: now, UpdatedAt: now}))
}

// oauthConfig is an x/oauth2 config for a client of this server.
func (e *env) oauthConfig(clientID, secret string, scopes ...string) *oauth2.Config {
	return &oauth2.Config{
		ClientID: clientID, ClientSecret: secret, RedirectURL: redirectURI, Scopes: scopes,
		Endpoint: oauth2.Endpoint{AuthURL: e.issuer + "/authorize", TokenURL: e.issuer + "/token",
			AuthStyle: oauth2.AuthStyleInHeader},
	}
}

// browser is a cookie-keeping client that does not follow redirects.
type browser struct {
	e *env
	c *http.Client
}

func (e *env) browser() *browser {
	jar, _ := cookiejar.New(nil)
	return &browser{e: e, c: &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error {
		return http.ErrUseLastResponse
	}}}
}

func (b *browser) get(u string) (*http.Response, string) {
	b.e.t.Helper()
	if strings.HasPrefix(u, "/") {
		u = b.e.issuer + u
	}
	resp, err := b.c.Get(u)
	if err != nil {
		b.e.t.Fatalf("GET %s: %v", u, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp, string(body)
}

func (b *browser) post(path string, form url.Values, hdr ...string) (*http.Response, string) {
	b.e.t.Helper()
	req, _ := http.NewRequest(http.MethodPost, b.e.issuer+path, strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Sec-Fetch-Site", "same-origin")
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := b.c.Do(req)
	if err != nil {
		b.e.t.Fatalf("POST %s: %v", path, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp, string(body)
}

var csrfRE = regexp.MustCompile(`name="csrf_token" value="([^"]+)"`)

func csrf(t *testing.T, body string) string {
	t.Helper()
	m := csrfRE.FindStringSubmatch(body)
	if m == nil {
		t.Fatalf("no CSRF token in page:\n%s", body)
	}
	return m[1]
}

func location(t *testing.T, resp *http.Response, wantStatus int) *url.URL {
	t.Helper()
	if resp.StatusCode != wantStatus {
		t.Fatalf("status %d, want %d", resp.StatusCode, wantStatus)
	}
	u, err := url.Parse(resp.Header.Get("Location"))
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// login signs the browser in as user through the login form.
func (b *browser) login(user string, extra url.Values) *http.Response {
	b.e.t.Helper()
	_, page := b.get("/login?" + extra.Encode())
	form := url.Values{"username": {user}, "password": {alicePassword}, "csrf_token": {csrf(b.e.t, page)}}
	for k, v := range extra {
		form[k] = v
	}
	resp, _ := b.post("/login", form)
	return resp
}

// authorize runs the browser part of the code flow from authURL and returns
// the redirect back to the client. approve=false denies; connections are
// the linked accounts ticked on the consent screen.
func (b *browser) authorize(authURL, user string, approve bool, connections ...string) *url.URL {
	t := b.e.t
	t.Helper()
	resp, body := b.get(authURL)
	if resp.StatusCode != http.StatusFound {
		t.Fatalf("authorize: status %d:\n%s", resp.StatusCode, body)
	}
	next := resp.Header.Get("Location")
	if !strings.HasPrefix(next, authserver.PathConsent+"?req=") {
		return location(t, resp, http.StatusFound) // an error redirect to the client
	}
	req := strings.TrimPrefix(next, authserver.PathConsent+"?req=")
	resp, _ = b.get(next)
	if resp.StatusCode == http.StatusSeeOther && strings.HasPrefix(resp.Header.Get("Location"), "/login") {
		resp = b.login(user, url.Values{"req": {req}})
		resp, _ = b.get(location(t, resp, http.StatusSeeOther).String())
	}
	if resp.StatusCode == http.StatusSeeOther { // remembered or pre-approved: no consent screen
		return location(t, resp, http.StatusSeeOther)
	}
	_, page := b.get(next)
	decision := "deny"
	if approve {
		decision = "approve"
	}
	resp, body = b.post(authserver.PathConsent, url.Values{"req": {req}, "decision": {decision},
		"csrf_token": {csrf(t, page)}, "connection": connections})
	if resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("consent POST: status %d:\n%s", resp.StatusCode, body)
	}
	return location(t, resp, http.StatusSeeOther)
}

func pkce() (verifier string) {
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}
