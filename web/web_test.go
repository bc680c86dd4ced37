package web_test

import (
	"context"
	"crypto/rand"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/lanyardhq/lanyard/broker"
	"github.com/lanyardhq/lanyard/broker/authserver"
	"github.com/lanyardhq/lanyard/broker/links"
	"github.com/lanyardhq/lanyard/broker/token"
	"github.com/lanyardhq/lanyard/connectors"
	"github.com/lanyardhq/lanyard/internal/bolt"
	"github.com/lanyardhq/lanyard/internal/config"
	"github.com/lanyardhq/lanyard/internal/password"
	"github.com/lanyardhq/lanyard/internal/server"
	"github.com/lanyardhq/lanyard/vault/sealed"
	"github.com/lanyardhq/lanyard/web"
)

const pw = "correct horse battery"

// newUI serves the UI (and the authorization server it needs) on the real
// stores, with one user, alice.
func newUI(t *testing.T, secure bool) *httptest.Server {
	t.Helper()
	ts, _ := newUIWith(t, secure, nil, nil)
	return ts
}

// stack is what a test may look at behind the UI.
type stack struct {
	store   *bolt.DB
	secrets broker.SecretStore
}

// newUIWith is newUI with the linked-accounts pages for conns (when not nil).
// ln, if not nil, is the listener to serve on (a test that must know the
// URL before building its connectors).
func newUIWith(t *testing.T, secure bool, conns []connectors.Connector, ln net.Listener) (*httptest.Server, stack) {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	db, err := bolt.Open(filepath.Join(dir, "l.db"), bolt.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	secrets, err := sealed.Open(db, filepath.Join(dir, "sealed.key"), sealed.Options{})
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	srv := server.New(server.Options{HTTP: config.Default().HTTP, Logger: log})
	ts := httptest.NewUnstartedServer(srv.Handler())
	if ln != nil {
		ts.Listener.Close()
		ts.Listener = ln
	}
	issuer := "http://" + ts.Listener.Addr().String()
	keys, err := token.Open(ctx, token.Options{Issuer: issuer, Secrets: secrets})
	if err != nil {
		t.Fatal(err)
	}
	var ui *web.UI
	auth, err := authserver.New(authserver.Options{Issuer: issuer, Store: db, Keys: keys, Logger: log,
		AccessTokenTTL: time.Minute, RefreshTokenTTL: time.Hour, DeviceCodeTTL: time.Minute, DeviceInterval: 5 * time.Second,
		ShowError: func(w http.ResponseWriter, r *http.Request, status int, title, detail string) {
			ui.ShowError(w, r, status, title, detail)
		}})
	if err != nil {
		t.Fatal(err)
	}
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	var linkSvc *links.Service
	if conns != nil {
		if linkSvc, err = links.New(links.Options{Store: db, Secrets: secrets, Connectors: conns, Key: key,
			CallbackURL: issuer + web.PathCallback, Logger: log}); err != nil {
			t.Fatal(err)
		}
	}
	if ui, err = web.New(web.Options{Store: db, Auth: auth, Links: linkSvc, Secure: secure, Key: key, Logger: log, VerifyPassword: password.Verify}); err != nil {
		t.Fatal(err)
	}
	ui.Mount(srv)
	ts.Start()
	t.Cleanup(ts.Close)
	h, err := bcrypt.GenerateFromPassword([]byte(pw), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	if err := db.Users().Create(ctx, broker.User{ID: "id-alice", Username: "alice", PasswordHash: string(h), CreatedAt: now, UpdatedAt: now}); err != nil {
		t.Fatal(err)
	}
	return ts, stack{store: db, secrets: secrets}
}

// client is a browser that keeps cookies by hand: the standard jar would
// not send Secure cookies over the test server's plain http. It records
// every Set-Cookie header it sees.
type client struct {
	t       *testing.T
	base    string
	cookies map[string]string
	set     []string // raw Set-Cookie headers
	lastCSP string
}

func (c *client) do(method, path string, form url.Values) (*http.Response, string) {
	c.t.Helper()
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	req, _ := http.NewRequest(method, c.base+path, body)
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.Header.Set("Sec-Fetch-Site", "same-origin")
	}
	for k, v := range c.cookies {
		req.AddCookie(&http.Cookie{Name: k, Value: v})
	}
	resp, err := http.DefaultTransport.RoundTrip(req)
	if err != nil {
		c.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	c.set = append(c.set, resp.Header.Values("Set-Cookie")...)
	c.lastCSP = resp.Header.Get("Content-Security-Policy")
	for _, ck := range resp.Cookies() {
		if ck.MaxAge < 0 {
			delete(c.cookies, ck.Name)
		} else {
			c.cookies[ck.Name] = ck.Value
		}
	}
	return resp, string(b)
}

var csrfRE = regexp.MustCompile(`name="csrf_token" value="([^"]+)"`)

func csrf(t *testing.T, page string) string {
	t.Helper()
	m := csrfRE.FindStringSubmatch(page)
	if m == nil {
		t.Fatalf("no CSRF token in page:\n%s", page)
	}
	return m[1]
}

// signInAndOut signs alice in, loads the home page and signs out, and
// returns the client with every Set-Cookie header seen.
func signInAndOut(t *testing.T, secure bool) *client {
	t.Helper()
	ts := newUI(t, secure)
	c := &client{t: t, base: ts.URL, cookies: map[string]string{}}
	_, page := c.do(http.MethodGet, "/login", nil)
	resp, body := c.do(http.MethodPost, "/login", url.Values{"username": {"alice"}, "password": {pw}, "csrf_token": {csrf(t, page)}})
	if resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("login: %d\n%s", resp.StatusCode, body)
	}
	resp, home := c.do(http.MethodGet, "/", nil)
	if resp.StatusCode != http.StatusOK || !strings.Contains(home, "alice") {
		t.Fatalf("home after login: %d (the session cookie was not accepted)", resp.StatusCode)
	}
	resp, _ = c.do(http.MethodPost, "/logout", url.Values{"csrf_token": {csrf(t, home)}})
	if resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("logout: %d", resp.StatusCode)
	}
	return c
}

func TestSecureCookies(t *testing.T) {
	c := signInAndOut(t, true)
	names := map[string]bool{}
	for _, raw := range c.set {
		ck, err := http.ParseSetCookie(raw)
		if err != nil {
			t.Errorf("Set-Cookie %q: %v", raw, err)
			continue
		}
		names[ck.Name] = true
		if !strings.HasPrefix(ck.Name, "__Host-") || !ck.Secure || !ck.HttpOnly || ck.Path != "/" ||
			ck.SameSite != http.SameSiteLaxMode || ck.Domain != "" || strings.Contains(strings.ToLower(raw), "domain=") {
			t.Errorf("Set-Cookie %q: want __Host- prefix, Secure, HttpOnly, Path=/, SameSite=Lax and no Domain", raw)
		}
	}
	for _, want := range []string{"__Host-lanyard_session", "__Host-lanyard_csrf"} {
		if !names[want] {
			t.Errorf("no %s cookie was set (saw %v)", want, names)
		}
	}
}

// A session cookie without the prefix is not read when cookies are Secure:
// a sibling subdomain could set that one.
func TestSecureUIIgnoresUnprefixedCookies(t *testing.T) {
	ts := newUI(t, true)
	c := &client{t: t, base: ts.URL, cookies: map[string]string{}}
	_, page := c.do(http.MethodGet, "/login", nil)
	c.do(http.MethodPost, "/login", url.Values{"username": {"alice"}, "password": {pw}, "csrf_token": {csrf(t, page)}})
	session := c.cookies["__Host-lanyard_session"]
	if session == "" {
		t.Fatal("no session cookie")
	}
	tossed := &client{t: t, base: ts.URL, cookies: map[string]string{"lanyard_session": session}}
	if resp, _ := tossed.do(http.MethodGet, "/", nil); resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/login" {
		t.Errorf("unprefixed session cookie: %d %q; want a redirect to /login", resp.StatusCode, resp.Header.Get("Location"))
	}
	// And a CSRF token bound to an unprefixed cookie is refused.
	csrfVal := c.cookies["__Host-lanyard_csrf"]
	_, home := c.do(http.MethodGet, "/", nil)
	tossed.cookies["lanyard_csrf"] = csrfVal
	if resp, _ := tossed.do(http.MethodPost, "/logout", url.Values{"csrf_token": {csrf(t, home)}}); resp.StatusCode != http.StatusForbidden {
		t.Errorf("CSRF token with an unprefixed cookie: %d, want 403", resp.StatusCode)
	}
}

// Plain-http dev mode: no prefix and no Secure (the browser would drop
// them), the other attributes unchanged.
func TestDevCookies(t *testing.T) {
	c := signInAndOut(t, false)
	if len(c.set) == 0 {
		t.Fatal("no cookies set")
	}
	for _, raw := range c.set {
		ck, err := http.ParseSetCookie(raw)
		if err != nil {
			t.Fatal(err)
		}
		if strings.HasPrefix(ck.Name, "__Host-") || ck.Secure || !ck.HttpOnly || ck.Path != "/" || ck.SameSite != http.SameSiteLaxMode || ck.Domain != "" {
			t.Errorf("dev Set-Cookie %q", raw)
		}
	}
}

func TestErrorPageHeadersAndNoOpenRedirect(t *testing.T) {
	ts := newUI(t, true)
	c := &client{t: t, base: ts.URL, cookies: map[string]string{}}
	_, page := c.do(http.MethodGet, "/login", nil)
	// afterLogin only builds its own targets: next= is not a URL.
	resp, _ := c.do(http.MethodPost, "/login", url.Values{"username": {"alice"}, "password": {pw}, "csrf_token": {csrf(t, page)},
		"next": {"https://evil.example/"}})
	if loc := resp.Header.Get("Location"); resp.StatusCode != http.StatusSeeOther || loc != "/" {
		t.Errorf("login with next=URL: %d %q; want 303 to /", resp.StatusCode, loc)
	}
	resp, body := c.do(http.MethodGet, "/consent?req=nope", nil)
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(body, "<h1>") {
		t.Errorf("unknown request: %d", resp.StatusCode)
	}
	h := resp.Header
	if !strings.Contains(h.Get("Content-Security-Policy"), "frame-ancestors 'none'") || h.Get("X-Frame-Options") != "DENY" ||
		h.Get("Referrer-Policy") != "no-referrer" || h.Get("Cache-Control") != "no-store" {
		t.Errorf("error page headers: %v", h)
	}
}
