// Package lanyardtest runs the real Lanyard authorization server (bbolt,
// the sealed secret store, token.Keyring, authserver, the web pages) on an
// httptest server and gets real access tokens from it through the
// authorization code flow, for the tests of mcpauth and its adapters.
// Only tests import it.
package lanyardtest

import (
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"
	"golang.org/x/oauth2"

	"github.com/lanyardhq/lanyard/broker"
	"github.com/lanyardhq/lanyard/broker/authserver"
	"github.com/lanyardhq/lanyard/broker/clientreg"
	"github.com/lanyardhq/lanyard/broker/links"
	"github.com/lanyardhq/lanyard/broker/oauth"
	"github.com/lanyardhq/lanyard/broker/redeem"
	"github.com/lanyardhq/lanyard/broker/token"
	"github.com/lanyardhq/lanyard/connectors"
	"github.com/lanyardhq/lanyard/connectors/apikey"
	"github.com/lanyardhq/lanyard/internal/bolt"
	"github.com/lanyardhq/lanyard/internal/config"
	"github.com/lanyardhq/lanyard/internal/password"
	"github.com/lanyardhq/lanyard/internal/safehttp"
	"github.com/lanyardhq/lanyard/internal/server"
	"github.com/lanyardhq/lanyard/vault/sealed"
	"github.com/lanyardhq/lanyard/web"
)

// The seeded world: one MCP server (the resource), one user with a linked
// IMAP account, one public agent.
const (
	ResourceURI    = "https://mail.example.com/mcp"
	ResourceID     = "mail-mcp"
	ResourceSecret = "mail-mcp-secret-0123456789abcdef0123456789"
	Agent          = "agent"
	RedirectURI    = "http://127.0.0.1/callback"
	User           = "alice"
	UserID         = "id-alice"
	Password       = "alice passphrase 1"
	ConnectionID   = "conn-mail"
	Connector      = "imap"
)

// TB is the part of testing.TB that World uses.
type TB interface {
	Helper()
	Fatal(args ...any)
	Fatalf(format string, args ...any)
	Cleanup(func())
	TempDir() string
}

var _ TB = testing.TB(nil)

// Options vary the world.
type Options struct {
	// Now is the clock of the store, keys and server (nil: time.Now).
	Now func() time.Time
	// Redeem, if not nil, serves POST /v1/redeem.
	Redeem http.Handler
	// RealRedeem mounts Lanyard's own /v1/redeem (broker/redeem) with an
	// API key connector named APIKeyConnector, and links AliceAPIKey for
	// the user through the link service; Token then puts that connection in
	// the grant. The MCP server's policy allows ToolRead with mail.read and
	// ToolSend with mail.send.
	RealRedeem bool
}

// The world of Options.RealRedeem.
const (
	APIKeyConnector = "keys"
	AliceAPIKey     = "alice-api-key-0123456789"
	ToolRead        = "search_messages"
	ToolSend        = "send_message"
)

// World is a running Lanyard.
type World struct {
	t        TB
	Issuer   string
	Server   *httptest.Server
	Store    *bolt.DB
	Keys     *token.Keyring
	JWKSHits atomic.Int64 // requests to /jwks.json
	// Auth is the authorization server (RevokeGrant revokes).
	Auth *authserver.Server
	// Connection is the connection Token puts in the grant.
	Connection string
	links      *links.Service
}

// New starts Lanyard; it stops when t's test ends.
func New(t TB, o Options) *World {
	t.Helper()
	ctx := context.Background()
	now := o.Now
	if now == nil {
		now = time.Now
	}
	dir := t.TempDir()
	db, err := bolt.Open(filepath.Join(dir, "l.db"), bolt.Options{Now: now})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	secrets, err := sealed.Open(db, filepath.Join(dir, "sealed.key"), sealed.Options{})
	if err != nil {
		t.Fatal(err)
	}
	w := &World{t: t, Store: db}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	srv := server.New(server.Options{HTTP: config.Default().HTTP, Logger: log})
	h := srv.Handler()
	w.Server = httptest.NewUnstartedServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		if r.URL.Path == authserver.PathJWKS {
			w.JWKSHits.Add(1)
		}
		if r.URL.Path == "/v1/redeem" && o.Redeem != nil {
			o.Redeem.ServeHTTP(rw, r)
			return
		}
		h.ServeHTTP(rw, r)
	}))
	w.Issuer = "http://" + w.Server.Listener.Addr().String()
	if w.Keys, err = token.Open(ctx, token.Options{Issuer: w.Issuer, Secrets: secrets, Now: now}); err != nil {
		t.Fatal(err)
	}
	var ui *web.UI
	var rd *redeem.Service
	var exchange func(http.ResponseWriter, *http.Request, oauth.Params)
	if o.RealRedeem {
		exchange = func(rw http.ResponseWriter, r *http.Request, p oauth.Params) { rd.Exchange(rw, r, p) }
	}
	auth, err := authserver.New(authserver.Options{
		TokenExchange: exchange,
		Issuer:        w.Issuer, Store: db, Keys: w.Keys, Dev: true, Now: now,
		Clients: clientreg.NewResolver(clientreg.ResolverOptions{Clients: db.Clients(), DevLoopback: true, Now: now,
			HTTP: safehttp.NewClient(safehttp.Options{AllowLoopback: true})}),
		AccessTokenTTL: 10 * time.Minute, RefreshTokenTTL: 24 * time.Hour, DeviceCodeTTL: 10 * time.Minute,
		DeviceInterval: 5 * time.Second, Logger: log,
		ShowError: func(w http.ResponseWriter, r *http.Request, status int, title, detail string) {
			ui.ShowError(w, r, status, title, detail)
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	w.Auth = auth
	if o.RealRedeem {
		conn, err := apikey.New(APIKeyConnector, "Keys", config.APIKeyConnector{Header: "X-Api-Key"}, apikey.Options{Dev: true})
		if err != nil {
			t.Fatal(err)
		}
		if w.links, err = links.New(links.Options{Store: db, Secrets: secrets, Connectors: []connectors.Connector{conn}, Key: key,
			CallbackURL: w.Issuer + web.PathCallback, Now: now, Logger: log}); err != nil {
			t.Fatal(err)
		}
		if rd, err = redeem.New(redeem.Options{Auth: auth, Store: db, Links: w.links, Now: now, Logger: log}); err != nil {
			t.Fatal(err)
		}
	}
	if ui, err = web.New(web.Options{Store: db, Auth: auth, Links: w.links, Key: key, Logger: log, Now: now,
		VerifyPassword: password.Verify}); err != nil {
		t.Fatal(err)
	}
	auth.Mount(srv)
	ui.Mount(srv)
	if rd != nil {
		rd.Mount(srv)
	}
	w.Server.Start()
	t.Cleanup(w.Server.Close)
	w.seed(ctx, now())
	return w
}

func (w *World) seed(ctx context.Context, now time.Time) {
	must := func(err error) {
		w.t.Helper()
		if err != nil {
			w.t.Fatal(err)
		}
	}
	must(w.Store.Resources().Create(ctx, broker.Resource{ID: ResourceID, URI: ResourceURI, Name: "Mail MCP",
		Scopes: []string{"mail.read", "mail.send"}, DefaultScopes: []string{"mail.read"},
		SecretHash: broker.HashSecret(ResourceSecret), Connectors: []string{Connector, APIKeyConnector},
		Policy: broker.ToolPolicy{Tools: []broker.ToolRule{
			{Name: ToolRead, Scopes: []string{"mail.read"}},
			{Name: ToolSend, Scopes: []string{"mail.send"}},
		}}, CreatedAt: now}))
	must(w.Store.Clients().Create(ctx, broker.Client{ID: Agent, Kind: broker.ClientStatic, Name: "Agent",
		RedirectURIs: []string{RedirectURI}, GrantTypes: []string{authserver.GrantAuthorizationCode, authserver.GrantRefreshToken},
		CreatedAt: now}))
	h, err := bcrypt.GenerateFromPassword([]byte(Password), bcrypt.MinCost)
	must(err)
	must(w.Store.Users().Create(ctx, broker.User{ID: UserID, Username: User, PasswordHash: string(h), CreatedAt: now, UpdatedAt: now}))
	must(w.Store.Connections().Create(ctx, broker.Connection{ID: ConnectionID, UserID: UserID, Connector: Connector,
		Kind: "basic", Account: "alice@mail", Status: broker.ConnectionActive, CreatedAt: now, UpdatedAt: now}))
	w.Connection = ConnectionID
	if w.links != nil {
		c, err := w.links.LinkForm(ctx, UserID, APIKeyConnector, "", connectors.Input{apikey.FieldKey: broker.SecretString(AliceAPIKey)})
		must(err)
		w.Connection = c.ID
	}
}

// Token runs the authorization code flow with PKCE for the agent, the way
// an MCP client does (x/oauth2 for the client, a cookie-keeping HTTP client
// filling in the login and consent forms for the user), and returns the
// access token for ResourceURI with scopes, the linked IMAP account in the
// grant.
func (w *World) Token(scopes ...string) *oauth2.Token {
	t := w.t
	t.Helper()
	ctx := context.Background()
	conf := &oauth2.Config{ClientID: Agent, RedirectURL: RedirectURI, Scopes: scopes,
		Endpoint: oauth2.Endpoint{AuthURL: w.Issuer + authserver.PathAuthorize, TokenURL: w.Issuer + authserver.PathToken,
			AuthStyle: oauth2.AuthStyleInParams}}
	verifier := oauth2.GenerateVerifier()
	authURL := conf.AuthCodeURL("st", oauth2.S256ChallengeOption(verifier), oauth2.SetAuthURLParam("resource", ResourceURI))
	b := w.browser()
	resp, _ := b.get(authURL)
	next := resp.Header.Get("Location")
	reqID, ok := strings.CutPrefix(next, authserver.PathConsent+"?req=")
	if !ok {
		t.Fatalf("authorize: redirected to %q, want the consent page", next)
	}
	resp, _ = b.get(next)
	if resp.StatusCode == http.StatusSeeOther && strings.HasPrefix(resp.Header.Get("Location"), "/login") {
		_, page := b.get("/login?" + url.Values{"req": {reqID}}.Encode())
		resp, _ = b.post("/login", url.Values{"username": {User}, "password": {Password}, "csrf_token": {csrf(t, page)}, "req": {reqID}})
		if resp.StatusCode != http.StatusSeeOther {
			t.Fatalf("login: status %d", resp.StatusCode)
		}
	}
	_, page := b.get(next)
	resp, body := b.post(authserver.PathConsent, url.Values{"req": {reqID}, "decision": {"approve"},
		"csrf_token": {csrf(t, page)}, "connection": {w.Connection}})
	if resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("consent: status %d:\n%s", resp.StatusCode, body)
	}
	back, err := url.Parse(resp.Header.Get("Location"))
	if err != nil || back.Query().Get("code") == "" {
		t.Fatalf("consent redirected to %q, want a code", resp.Header.Get("Location"))
	}
	tok, err := conf.Exchange(ctx, back.Query().Get("code"), oauth2.VerifierOption(verifier), oauth2.SetAuthURLParam("resource", ResourceURI))
	if err != nil {
		t.Fatalf("token exchange: %v", err)
	}
	return tok
}

// Sign signs claims for ResourceURI with Lanyard's keys directly, for
// tests that need many tokens or tokens of a given key.
func (w *World) Sign(c token.Claims) string {
	w.t.Helper()
	if c.Subject == "" {
		c.Subject = UserID
	}
	if c.Audience == "" {
		c.Audience = ResourceURI
	}
	if c.ClientID == "" {
		c.ClientID = Agent
	}
	if c.GrantID == "" {
		c.GrantID = "grant-1"
	}
	raw, err := w.Keys.Sign(context.Background(), c)
	if err != nil {
		w.t.Fatalf("Sign: %v", err)
	}
	return raw
}

type browser struct {
	w *World
	c *http.Client
}

func (w *World) browser() *browser {
	jar, _ := cookiejar.New(nil)
	return &browser{w: w, c: &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error {
		return http.ErrUseLastResponse
	}}}
}

func (b *browser) get(u string) (*http.Response, string) {
	b.w.t.Helper()
	if strings.HasPrefix(u, "/") {
		u = b.w.Issuer + u
	}
	resp, err := b.c.Get(u)
	if err != nil {
		b.w.t.Fatalf("GET %s: %v", u, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp, string(body)
}

func (b *browser) post(path string, form url.Values) (*http.Response, string) {
	b.w.t.Helper()
	req, _ := http.NewRequest(http.MethodPost, b.w.Issuer+path, strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Sec-Fetch-Site", "same-origin")
	resp, err := b.c.Do(req)
	if err != nil {
		b.w.t.Fatalf("POST %s: %v", path, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp, string(body)
}

var csrfRE = regexp.MustCompile(`name="csrf_token" value="([^"]+)"`)

func csrf(t TB, body string) string {
	t.Helper()
	m := csrfRE.FindStringSubmatch(body)
	if m == nil {
		t.Fatalf("no CSRF token in page:\n%s", body)
	}
	return m[1]
}

// Start starts Lanyard outside a test (for Examples): it panics on error;
// stop stops it and removes its files.
func Start(o Options) (w *World, stop func()) {
	e := &exampleTB{}
	w = New(e, o)
	return w, e.cleanup
}

type exampleTB struct{ cleanups []func() }

func (*exampleTB) Helper()                           {}
func (*exampleTB) Fatal(args ...any)                 { panic(fmt.Sprint(args...)) }
func (*exampleTB) Fatalf(format string, args ...any) { panic(fmt.Sprintf(format, args...)) }
func (e *exampleTB) Cleanup(f func())                { e.cleanups = append(e.cleanups, f) }
func (e *exampleTB) TempDir() string {
	d, err := os.MkdirTemp("", "lanyardtest")
	if err != nil {
		panic(err)
	}
	e.Cleanup(func() { _ = os.RemoveAll(d) })
	return d
}

func (e *exampleTB) cleanup() {
	for i := len(e.cleanups) - 1; i >= 0; i-- {
		e.cleanups[i]()
	}
}
