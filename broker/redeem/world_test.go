package redeem_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
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
	"github.com/lanyardhq/lanyard/broker/links"
	"github.com/lanyardhq/lanyard/broker/oauth"
	"github.com/lanyardhq/lanyard/broker/redeem"
	"github.com/lanyardhq/lanyard/broker/token"
	"github.com/lanyardhq/lanyard/connectors"
	"github.com/lanyardhq/lanyard/connectors/apikey"
	"github.com/lanyardhq/lanyard/connectors/oauthconn"
	"github.com/lanyardhq/lanyard/internal/bolt"
	"github.com/lanyardhq/lanyard/internal/config"
	"github.com/lanyardhq/lanyard/internal/password"
	"github.com/lanyardhq/lanyard/internal/server"
	"github.com/lanyardhq/lanyard/internal/testenv"
	"github.com/lanyardhq/lanyard/vault/sealed"
	"github.com/lanyardhq/lanyard/web"
)

// The test world: the real authorization server, web pages, link service
// and redemption on bbolt and the sealed secret store, with real apikey
// connectors. Tokens are issued through the browser flow (login, consent)
// and x/oauth2; connections are made through links.Service.LinkForm.
const (
	mcpURI     = "https://mail-mcp.example.com/mcp"
	mcpID      = "mail-mcp"
	mcpSecret  = "mail-mcp-secret-0123456789abcdef0123456789"
	otherURI   = "https://other-mcp.example.com/mcp"
	otherID    = "other-mcp"
	otherSec   = "other-mcp-secret-0123456789abcdef0123456789"
	jwtURI     = "https://jwt-mcp.example.com/mcp"
	jwtID      = "jwt-mcp"
	agent      = "agent"
	redirect   = "http://127.0.0.1/callback"
	userPass   = "correct horse battery"
	aliceKey   = "alice-api-key-0123456789"
	bobKey     = "bob-api-key-0123456789"
	otherKey   = "alice-other-key-0123456789"
	policyRead = "read_mail"
	policySend = "send_mail"
	policyOnly = "other_only"
)

// auditSwitch wraps the real store; while fail is set its audit log
// refuses every Append (a full disk), so fail-closed can be shown.
type auditSwitch struct {
	broker.Store
	fail atomic.Bool
}

func (s *auditSwitch) Audit() broker.AuditLog {
	if s.fail.Load() {
		return brokenLog{s.Store.Audit()}
	}
	return s.Store.Audit()
}

type brokenLog struct{ broker.AuditLog }

func (brokenLog) Append(context.Context, broker.AuditEvent) (broker.AuditEvent, error) {
	return broker.AuditEvent{}, errors.New("no space left on device")
}

type world struct {
	t       testing.TB
	clock   *testenv.Clock
	issuer  string
	store   *bolt.DB
	sw      *auditSwitch
	secrets broker.SecretStore
	auth    *authserver.Server
	links   *links.Service
	onward  atomic.Bool
	jwtKey  *token.ClientKey
	// connection IDs
	aliceKeys, aliceOther, bobKeys string
}

type worldOptions struct {
	extra []connectors.Connector // more connectors (the OIDC one)
	ln    net.Listener           // listen here (the provider needs the callback URL first)
}

func newWorld(t testing.TB) *world { t.Helper(); return newWorldWith(t, worldOptions{}) }

func newWorldWith(t testing.TB, o worldOptions) *world {
	t.Helper()
	ctx := context.Background()
	w := &world{t: t, clock: testenv.NewClock(time.Now().Truncate(time.Second))}
	dir := t.TempDir()
	db, err := bolt.Open(filepath.Join(dir, "l.db"), bolt.Options{Now: w.clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	w.store, w.sw = db, &auditSwitch{Store: db}
	if w.secrets, err = sealed.Open(db, filepath.Join(dir, "sealed.key"), sealed.Options{}); err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	srv := server.New(server.Options{HTTP: config.Default().HTTP, Logger: log})
	ts := httptest.NewUnstartedServer(srv.Handler())
	if o.ln != nil {
		_ = ts.Listener.Close()
		ts.Listener = o.ln
	}
	w.issuer = "http://" + ts.Listener.Addr().String()
	keys, err := token.Open(ctx, token.Options{Issuer: w.issuer, Secrets: w.secrets, Now: w.clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	var ui *web.UI
	var rd *redeem.Service
	w.auth, err = authserver.New(authserver.Options{
		Issuer: w.issuer, Store: db, Keys: keys, Dev: true, Now: w.clock.Now, Logger: log,
		AccessTokenTTL: 10 * time.Minute, RefreshTokenTTL: time.Hour, DeviceCodeTTL: time.Minute, DeviceInterval: time.Second,
		ShowError: func(rw http.ResponseWriter, r *http.Request, status int, title, detail string) {
			ui.ShowError(rw, r, status, title, detail)
		},
		TokenExchange: func(rw http.ResponseWriter, r *http.Request, p oauth.Params) { rd.Exchange(rw, r, p) },
	})
	if err != nil {
		t.Fatal(err)
	}
	var conns []connectors.Connector
	for _, name := range []string{"keys", "other-keys", "spare"} {
		c, err := apikey.New(name, strings.ToUpper(name), config.APIKeyConnector{Header: "X-Api-Key"}, apikey.Options{Dev: true})
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	if o.extra == nil {
		// An oauth2 connector whose provider is never called: enough for
		// the exchange checks that stop before the credential.
		idp, err := oauthconn.New(ctx, "idp", "IdP", config.OAuth2Connector{ClientID: "lanyard",
			AuthURL: "http://127.0.0.1:9/authorize", TokenURL: "http://127.0.0.1:9/token"}, oauthconn.Options{Dev: true})
		if err != nil {
			t.Fatal(err)
		}
		o.extra = []connectors.Connector{idp}
	}
	conns = append(conns, o.extra...)
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	if w.links, err = links.New(links.Options{Store: db, Secrets: w.secrets, Connectors: conns, Key: key,
		CallbackURL: w.issuer + web.PathCallback, Now: w.clock.Now, Logger: log}); err != nil {
		t.Fatal(err)
	}
	if ui, err = web.New(web.Options{Store: db, Auth: w.auth, Links: w.links, Key: key, Logger: log, Now: w.clock.Now,
		VerifyPassword: password.Verify}); err != nil {
		t.Fatal(err)
	}
	if rd, err = redeem.New(redeem.Options{Auth: w.auth, Store: w.sw, Links: w.links, Now: w.clock.Now, Logger: log,
		OnwardExchange: func(name string) bool { return w.onward.Load() && name == "idp" }}); err != nil {
		t.Fatal(err)
	}
	w.auth.Mount(srv)
	ui.Mount(srv)
	rd.Mount(srv)
	ts.Start()
	t.Cleanup(ts.Close)
	w.seed(ctx)
	return w
}

func (w *world) must(err error) {
	w.t.Helper()
	if err != nil {
		w.t.Fatal(err)
	}
}

func (w *world) seed(ctx context.Context) {
	now := w.clock.Now()
	var err error
	w.jwtKey, err = token.NewClientKey("")
	w.must(err)
	jwks, err := w.jwtKey.PublicJWKS()
	w.must(err)
	policy := broker.ToolPolicy{Tools: []broker.ToolRule{
		{Name: policyRead, Scopes: []string{"mail.read"}},
		{Name: policySend, Scopes: []string{"mail.read", "mail.send"}},
		{Name: policyOnly, Connectors: []string{"other-keys"}},
		{Name: "exchange", Scopes: []string{"mail.read"}},
	}}
	for _, r := range []broker.Resource{
		{ID: mcpID, URI: mcpURI, Name: "Mail MCP", Scopes: []string{"mail.read", "mail.send"}, DefaultScopes: []string{"mail.read"},
			SecretHash: broker.HashSecret(mcpSecret), Connectors: []string{"keys", "other-keys", "idp"}, Policy: policy, CreatedAt: now},
		{ID: otherID, URI: otherURI, Name: "Other MCP", Scopes: []string{"mail.read"}, SecretHash: broker.HashSecret(otherSec),
			Connectors: []string{"keys"}, Policy: broker.ToolPolicy{DefaultAllow: true}, CreatedAt: now},
		{ID: jwtID, URI: jwtURI, Name: "JWT MCP", Scopes: []string{"mail.read"}, TokenEndpointAuthMethod: authserver.AuthPrivateKeyJWT,
			JWKS: string(jwks), Connectors: []string{"keys"}, Policy: broker.ToolPolicy{DefaultAllow: true}, CreatedAt: now},
	} {
		w.must(w.store.Resources().Create(ctx, r))
	}
	w.must(w.store.Clients().Create(ctx, broker.Client{ID: agent, Kind: broker.ClientStatic, Name: "Agent",
		RedirectURIs: []string{redirect}, GrantTypes: []string{authserver.GrantAuthorizationCode, authserver.GrantRefreshToken}, CreatedAt: now}))
	h, err := bcrypt.GenerateFromPassword([]byte(userPass), bcrypt.MinCost)
	w.must(err)
	for _, name := range []string{"alice", "bob"} {
		w.must(w.store.Users().Create(ctx, broker.User{ID: "id-" + name, Username: name, PasswordHash: string(h), CreatedAt: now, UpdatedAt: now}))
	}
	w.aliceKeys = w.link("id-alice", "keys", aliceKey)
	w.aliceOther = w.link("id-alice", "other-keys", otherKey)
	w.bobKeys = w.link("id-bob", "keys", bobKey)
}

// link links an API key account through the link service.
func (w *world) link(user, connector, key string) string {
	w.t.Helper()
	c, err := w.links.LinkForm(context.Background(), user, connector, "", connectors.Input{apikey.FieldKey: broker.SecretString(key)})
	w.must(err)
	return c.ID
}

// tokenFor runs the code flow for the agent as user, for the MCP server at
// resource, with scopes, ticking connections on the consent page, and
// returns the access token.
func (w *world) tokenFor(user, resource, scopes string, connections ...string) string {
	w.t.Helper()
	conf := &oauth2.Config{ClientID: agent, RedirectURL: redirect,
		Endpoint: oauth2.Endpoint{AuthURL: w.issuer + "/authorize", TokenURL: w.issuer + "/token", AuthStyle: oauth2.AuthStyleInParams}}
	verifier := oauth2.GenerateVerifier()
	authURL := conf.AuthCodeURL("st", oauth2.S256ChallengeOption(verifier), oauth2.SetAuthURLParam("resource", resource),
		oauth2.SetAuthURLParam("scope", scopes))
	back := w.browser().authorize(authURL, user, connections)
	code := back.Query().Get("code")
	if code == "" {
		w.t.Fatalf("no code in %v", back)
	}
	tok, err := conf.Exchange(context.Background(), code, oauth2.VerifierOption(verifier), oauth2.SetAuthURLParam("resource", resource))
	w.must(err)
	return tok.AccessToken
}

func (w *world) grantOf(raw string) broker.Grant {
	w.t.Helper()
	_, g, err := w.auth.VerifyAccessToken(context.Background(), raw, "")
	w.must(err)
	return g
}

// browser is a cookie-keeping client that does not follow redirects.
type browser struct {
	w *world
	c *http.Client
}

func (w *world) browser() *browser {
	jar, _ := cookiejar.New(nil)
	return &browser{w: w, c: &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error {
		return http.ErrUseLastResponse
	}}}
}

func (b *browser) do(method, u string, form url.Values) (*http.Response, string) {
	b.w.t.Helper()
	if strings.HasPrefix(u, "/") {
		u = b.w.issuer + u
	}
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	req, _ := http.NewRequest(method, u, body)
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.Header.Set("Sec-Fetch-Site", "same-origin")
	}
	resp, err := b.c.Do(req)
	b.w.must(err)
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	return resp, string(raw)
}

var csrfRE = regexp.MustCompile(`name="csrf_token" value="([^"]+)"`)

func (b *browser) csrf(page string) string {
	b.w.t.Helper()
	m := csrfRE.FindStringSubmatch(page)
	if m == nil {
		b.w.t.Fatalf("no CSRF token in page:\n%s", page)
	}
	return m[1]
}

// authorize signs in as user at the consent step and approves with the
// given connections; it returns the redirect back to the agent.
func (b *browser) authorize(authURL, user string, connections []string) *url.URL {
	t := b.w.t
	t.Helper()
	resp, body := b.do("GET", authURL, nil)
	next := resp.Header.Get("Location")
	if !strings.HasPrefix(next, authserver.PathConsent+"?req=") {
		t.Fatalf("authorize: %d %q\n%s", resp.StatusCode, next, body)
	}
	req := strings.TrimPrefix(next, authserver.PathConsent+"?req=")
	resp, _ = b.do("GET", next, nil)
	if resp.StatusCode == http.StatusSeeOther && strings.HasPrefix(resp.Header.Get("Location"), "/login") {
		_, page := b.do("GET", "/login?"+url.Values{"req": {req}}.Encode(), nil)
		resp, _ = b.do("POST", "/login", url.Values{"username": {user}, "password": {userPass}, "csrf_token": {b.csrf(page)}, "req": {req}})
		resp, _ = b.do("GET", resp.Header.Get("Location"), nil)
	}
	if loc := resp.Header.Get("Location"); resp.StatusCode == http.StatusSeeOther && strings.HasPrefix(loc, redirect) {
		u, err := url.Parse(loc) // consent remembered: no consent screen
		b.w.must(err)
		return u
	}
	_, page := b.do("GET", next, nil)
	resp, body = b.do("POST", authserver.PathConsent, url.Values{"req": {req}, "decision": {"approve"},
		"csrf_token": {b.csrf(page)}, "connection": connections})
	if resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("consent: %d\n%s", resp.StatusCode, body)
	}
	u, err := url.Parse(resp.Header.Get("Location"))
	b.w.must(err)
	return u
}

// result is an HTTP answer: status, JSON body, headers.
type result struct {
	status int
	body   map[string]any
	hdr    http.Header
}

func (r result) str(k string) string { s, _ := r.body[k].(string); return s }

// redeem POSTs body (JSON-encoded unless it is a string) to /v1/redeem
// with HTTP Basic id:secret (none if id is empty).
func (w *world) redeem(id, secret string, body any) result {
	w.t.Helper()
	raw, ok := body.(string)
	if !ok {
		b, err := json.Marshal(body)
		w.must(err)
		raw = string(b)
	}
	req, _ := http.NewRequest("POST", w.issuer+authserver.PathRedeem, strings.NewReader(raw))
	req.Header.Set("Content-Type", "application/json")
	if id != "" {
		req.SetBasicAuth(id, secret)
	}
	return w.send(req)
}

func (w *world) send(req *http.Request) result {
	w.t.Helper()
	resp, err := http.DefaultClient.Do(req)
	w.must(err)
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var out map[string]any
	_ = json.NewDecoder(bytes.NewReader(raw)).Decode(&out)
	return result{status: resp.StatusCode, body: out, hdr: resp.Header}
}

// exchange POSTs an RFC 8693 token exchange to the token endpoint.
func (w *world) exchange(id, secret string, form url.Values) result {
	w.t.Helper()
	req, _ := http.NewRequest("POST", w.issuer+"/token", strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if id != "" {
		req.SetBasicAuth(url.QueryEscape(id), url.QueryEscape(secret))
	}
	return w.send(req)
}

// lastAudit returns the newest audit record.
func (w *world) lastAudit() broker.AuditEvent {
	w.t.Helper()
	var last broker.AuditEvent
	var after uint64
	for {
		page, err := w.store.Audit().Range(context.Background(), after, broker.MaxLimit)
		w.must(err)
		if len(page) == 0 {
			return last
		}
		last = page[len(page)-1]
		after = last.Seq
	}
}

func req(tok, connector, tool string) map[string]string {
	return map[string]string{"token": tok, "connector": connector, "tool": tool}
}

func jsonDecode(resp *http.Response, v any) error { return json.NewDecoder(resp.Body).Decode(v) }

func containsStr(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
