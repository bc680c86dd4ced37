package testenv

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"html"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"
)

// OIDCClient is a client registered at the test provider. An empty Secret
// registers a public client (token_endpoint_auth_method none).
type OIDCClient struct {
	ID           string
	Secret       string
	RedirectURIs []string
}

// OIDCProvider is a running npm oidc-provider (internal/testenv/oidcprovider)
// on a free 127.0.0.1 port: a certified OpenID provider with PKCE required,
// refresh tokens issued on every code grant and rotated on every use,
// revocation (RFC 7009), userinfo, RFC 9207 iss in authorization responses,
// and its development login and consent pages, which accept any user name.
type OIDCProvider struct {
	// Issuer is http://127.0.0.1:PORT, as the discovery document says.
	Issuer   string
	adminKey string
}

// StartOIDCProvider starts a provider with the given clients and stops it
// when the test ends. It needs node and the npm packages that
// scripts/setup.sh installs; without them the test is skipped, or fails
// under CI.
func StartOIDCProvider(tb testing.TB, clients ...OIDCClient) *OIDCProvider {
	tb.Helper()
	node, err := exec.LookPath("node")
	if err != nil {
		Missing(tb, "node is not installed (run scripts/setup.sh)")
	}
	dir := oidcProviderDir()
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "oidc-provider", "package.json")); err != nil {
		Missing(tb, "oidc-provider is not installed in "+dir+" (run scripts/setup.sh)")
	}
	type jsonClient struct {
		ClientID     string   `json:"client_id"`
		ClientSecret string   `json:"client_secret,omitempty"`
		RedirectURIs []string `json:"redirect_uris"`
	}
	jc := make([]jsonClient, len(clients))
	for i, c := range clients {
		jc[i] = jsonClient{c.ID, c.Secret, c.RedirectURIs}
	}
	cj, err := json.Marshal(jc)
	if err != nil {
		tb.Fatal(err)
	}
	port := FreePort(tb)
	p := &OIDCProvider{Issuer: "http://" + Addr(port), adminKey: randomHex(16)}
	cmd := exec.Command(node, "provider.mjs")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(),
		"PORT="+strconv.Itoa(port),
		"ADMIN_KEY="+p.adminKey,
		"CLIENTS="+string(cj),
		"NODE_ENV=test",
	)
	Start(tb, cmd)
	WaitTCP(tb, Addr(port), 20*time.Second)
	return p
}

// oidcProviderDir is internal/testenv/oidcprovider, found from this file so
// that tests in any package can start the provider.
func oidcProviderDir() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "oidcprovider")
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// Login drives the provider's login and consent pages for authURL (an
// authorization request at this provider) as user "alice" and returns the
// URL the provider redirected the browser to at the end: the client's
// redirect URI with code, state and iss (or error).
func (p *OIDCProvider) Login(tb testing.TB, authURL string) *url.URL {
	tb.Helper()
	return p.LoginAs(tb, authURL, "alice")
}

// LoginAs is Login as the given user (any name is accepted).
func (p *OIDCProvider) LoginAs(tb testing.TB, authURL, user string) *url.URL {
	tb.Helper()
	return p.drive(tb, authURL, user, false)
}

// Deny is Login that aborts at the consent page instead of approving: the
// callback carries error=access_denied.
func (p *OIDCProvider) Deny(tb testing.TB, authURL string) *url.URL {
	tb.Helper()
	return p.drive(tb, authURL, "alice", true)
}

var (
	formRE   = regexp.MustCompile(`(?is)<form[^>]*\baction="([^"]*)"[^>]*>(.*?)</form>`)
	hiddenRE = regexp.MustCompile(`(?is)<input[^>]*type="hidden"[^>]*name="([^"]*)"[^>]*value="([^"]*)"`)
	abortRE  = regexp.MustCompile(`(?is)<a[^>]*href="([^"]*/abort)"`)
)

// drive is a tiny browser: it follows redirects within the provider, posts
// the login form (user, any password) and the consent form, and stops at
// the first redirect away from the provider.
func (p *OIDCProvider) drive(tb testing.TB, authURL, user string, deny bool) *url.URL {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	jar, _ := cookiejar.New(nil)
	c := &http.Client{
		Jar:           jar,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	iss, _ := url.Parse(p.Issuer)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, authURL, nil)
	if err != nil {
		tb.Fatalf("login: %v", err)
	}
	for step := 0; step < 12; step++ {
		resp, err := c.Do(req)
		if err != nil {
			tb.Fatalf("login: %v", err)
		}
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		resp.Body.Close()
		if resp.StatusCode >= 300 && resp.StatusCode < 400 {
			loc, err := req.URL.Parse(resp.Header.Get("Location"))
			if err != nil {
				tb.Fatalf("login: bad Location %q: %v", resp.Header.Get("Location"), err)
			}
			if loc.Host != iss.Host {
				return loc
			}
			req, _ = http.NewRequestWithContext(ctx, http.MethodGet, loc.String(), nil)
			continue
		}
		if resp.StatusCode != http.StatusOK {
			tb.Fatalf("login: %s %s: status %d: %s", req.Method, req.URL, resp.StatusCode, body)
		}
		m := formRE.FindSubmatch(body)
		if m == nil {
			tb.Fatalf("login: %s: no form in page: %s", req.URL, body)
		}
		action, err := req.URL.Parse(html.UnescapeString(string(m[1])))
		if err != nil {
			tb.Fatalf("login: form action: %v", err)
		}
		form := url.Values{}
		for _, h := range hiddenRE.FindAllSubmatch(m[2], -1) {
			form.Set(html.UnescapeString(string(h[1])), html.UnescapeString(string(h[2])))
		}
		switch form.Get("prompt") {
		case "login":
			form.Set("login", user)
			form.Set("password", "any")
		case "consent":
			if deny {
				a := abortRE.FindSubmatch(body)
				if a == nil {
					tb.Fatalf("login: no abort link on the consent page: %s", body)
				}
				abort, err := req.URL.Parse(html.UnescapeString(string(a[1])))
				if err != nil {
					tb.Fatal(err)
				}
				req, _ = http.NewRequestWithContext(ctx, http.MethodGet, abort.String(), nil)
				continue
			}
		default:
			tb.Fatalf("login: unexpected form (prompt %q): %s", form.Get("prompt"), body)
		}
		req, _ = http.NewRequestWithContext(ctx, http.MethodPost, action.String(), strings.NewReader(form.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	tb.Fatal("login: too many steps")
	return nil
}

// RevokeAll makes the provider forget every grant and token it issued, so
// every access and refresh token stops working (connectortest's Break).
func (p *OIDCProvider) RevokeAll(tb testing.TB) {
	tb.Helper()
	req, err := http.NewRequest(http.MethodPost, p.Issuer+"/_test/revoke-all", nil)
	if err != nil {
		tb.Fatal(err)
	}
	req.Header.Set("X-Test-Admin", p.adminKey)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		tb.Fatalf("revoke all: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		tb.Fatalf("revoke all: status %d: %s", resp.StatusCode, b)
	}
}

// RefreshCounts returns how many refresh_token grants the provider has
// answered with tokens (ok) and with an error (failed) since it started.
func (p *OIDCProvider) RefreshCounts(tb testing.TB) (ok, failed int) {
	tb.Helper()
	req, err := http.NewRequest(http.MethodPost, p.Issuer+"/_test/counts", nil)
	if err != nil {
		tb.Fatal(err)
	}
	req.Header.Set("X-Test-Admin", p.adminKey)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		tb.Fatalf("refresh counts: %v", err)
	}
	defer resp.Body.Close()
	var c struct {
		Refresh       int `json:"refresh"`
		RefreshFailed int `json:"refresh_failed"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&c); err != nil || resp.StatusCode != http.StatusOK {
		tb.Fatalf("refresh counts: status %d: %v", resp.StatusCode, err)
	}
	return c.Refresh, c.RefreshFailed
}

// String is for test logs.
func (p *OIDCProvider) String() string { return fmt.Sprintf("oidc-provider at %s", p.Issuer) }
