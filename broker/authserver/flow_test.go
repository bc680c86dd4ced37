package authserver_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/lestrrat-go/jwx/v2/jws"
	"golang.org/x/oauth2"

	"github.com/lanyardhq/lanyard/broker"
	"github.com/lanyardhq/lanyard/broker/authserver"
)

func TestDiscovery(t *testing.T) {
	e := newEnv(t)
	for _, path := range []string{"/.well-known/oauth-authorization-server", "/.well-known/openid-configuration"} {
		resp, body := e.browser().get(path)
		var md map[string]any
		if resp.StatusCode != 200 || json.Unmarshal([]byte(body), &md) != nil {
			t.Fatalf("%s: %d %s", path, resp.StatusCode, body)
		}
		if md["issuer"] != e.issuer || md["authorization_response_iss_parameter_supported"] != true ||
			md["client_id_metadata_document_supported"] != true || md["token_endpoint"] != e.issuer+"/token" {
			t.Errorf("%s: %v", path, md)
		}
		if m, _ := json.Marshal(md["code_challenge_methods_supported"]); string(m) != `["S256"]` {
			t.Errorf("code_challenge_methods_supported = %s", m)
		}
	}
	// The issuer never comes from the Host header.
	req, _ := http.NewRequest("GET", e.issuer+"/.well-known/oauth-authorization-server", nil)
	req.Host = "evil.example"
	req.Header.Set("X-Forwarded-Host", "evil.example")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var md map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&md)
	if md["issuer"] != e.issuer {
		t.Errorf("issuer with a forged Host = %v", md["issuer"])
	}
}

func TestCodeFlowWithOAuth2Client(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	conf := e.oauthConfig(publicClient, "", "mail.read", "offline_access")
	verifier := oauth2.GenerateVerifier()
	authURL := conf.AuthCodeURL("state-123", oauth2.S256ChallengeOption(verifier), oauth2.SetAuthURLParam("resource", resourceURI))
	back := e.browser().authorize(authURL, "alice", true, "conn-gh")
	q := back.Query()
	if q.Get("state") != "state-123" || q.Get("iss") != e.issuer || q.Get("code") == "" {
		t.Fatalf("authorization response %v: want state, iss and code", back)
	}
	tok, err := conf.Exchange(ctx, q.Get("code"), oauth2.VerifierOption(verifier), oauth2.SetAuthURLParam("resource", resourceURI))
	if err != nil {
		t.Fatalf("Exchange: %v", err)
	}
	if tok.RefreshToken == "" || tok.TokenType != "Bearer" {
		t.Errorf("token = %+v; want a Bearer token and a refresh token", tok)
	}
	msg, err := jws.Parse([]byte(tok.AccessToken))
	if err != nil {
		t.Fatal(err)
	}
	if typ := msg.Signatures()[0].ProtectedHeaders().Type(); typ != "at+jwt" {
		t.Errorf("typ = %q, want at+jwt", typ)
	}
	c, err := e.keys.Verify(ctx, tok.AccessToken)
	if err != nil {
		t.Fatal(err)
	}
	if c.Audience != resourceURI || c.ClientID != publicClient || c.Subject != "id-alice" || c.GrantID == "" ||
		!slices.Equal(c.Scopes, []string{"mail.read"}) || c.JTI == "" {
		t.Errorf("claims = %+v", c)
	}
	g, err := e.store.Grants().Get(ctx, c.GrantID)
	if err != nil || !slices.Equal(g.ConnectionIDs, []string{"conn-gh"}) {
		t.Errorf("grant = %+v, %v; want the chosen connection only", g, err)
	}
	// Introspection by the audience: active; by another MCP server: not.
	if got := e.introspect(resourceID, resourceSecret, tok.AccessToken); got["active"] != true || got["aud"] != resourceURI {
		t.Errorf("introspect by audience = %v", got)
	}
	if got := e.introspect(otherID, otherSecret, tok.AccessToken); got["active"] != false || len(got) != 1 {
		t.Errorf("introspect by another MCP server = %v; want only active:false", got)
	}
	// The refresh token works through x/oauth2's TokenSource.
	expired := *tok
	expired.Expiry = expired.Expiry.Add(-24 * 60 * 60 * 1e9)
	next, err := conf.TokenSource(ctx, &expired).Token()
	if err != nil || next.AccessToken == tok.AccessToken || next.RefreshToken == tok.RefreshToken {
		t.Errorf("refresh: %v, %+v; want new access and refresh tokens", err, next)
	}
}

func (e *env) introspect(id, secret, tok string) map[string]any {
	e.t.Helper()
	req, _ := http.NewRequest("POST", e.issuer+"/introspect", strings.NewReader(url.Values{"token": {tok}}.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.SetBasicAuth(id, secret)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		e.t.Fatal(err)
	}
	return out
}

// token posts to the token endpoint and returns the status and JSON body.
func (e *env) token(form url.Values, basic ...string) (int, map[string]any, http.Header) {
	e.t.Helper()
	req, _ := http.NewRequest("POST", e.issuer+"/token", strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if len(basic) == 2 {
		req.SetBasicAuth(basic[0], basic[1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&out)
	return resp.StatusCode, out, resp.Header
}

// code runs the flow for the public client and returns code and verifier.
func (e *env) code(scopes string) (code, verifier string) {
	e.t.Helper()
	verifier = pkce()
	conf := e.oauthConfig(publicClient, "")
	u := conf.AuthCodeURL("s", oauth2.S256ChallengeOption(verifier), oauth2.SetAuthURLParam("resource", resourceURI),
		oauth2.SetAuthURLParam("scope", scopes))
	back := e.browser().authorize(u, "alice", true)
	if back.Query().Get("code") == "" {
		e.t.Fatalf("no code: %v", back)
	}
	return back.Query().Get("code"), verifier
}

func codeForm(code, verifier string) url.Values {
	return url.Values{"grant_type": {"authorization_code"}, "code": {code}, "code_verifier": {verifier},
		"redirect_uri": {redirectURI}, "client_id": {publicClient}, "resource": {resourceURI}}
}

func TestCodeReplayRevokesTokens(t *testing.T) {
	e := newEnv(t)
	code, verifier := e.code("mail.read offline_access")
	status, tok, hdr := e.token(codeForm(code, verifier))
	if status != 200 || hdr.Get("Cache-Control") != "no-store" {
		t.Fatalf("first exchange: %d %v %v", status, tok, hdr)
	}
	status, out, _ := e.token(codeForm(code, verifier))
	if status != 400 || out["error"] != "invalid_grant" {
		t.Errorf("replay: %d %v; want invalid_grant", status, out)
	}
	if got := e.introspect(resourceID, resourceSecret, tok["access_token"].(string)); got["active"] != false {
		t.Errorf("token from a replayed code still active: %v", got)
	}
	status, out, _ = e.token(url.Values{"grant_type": {"refresh_token"}, "refresh_token": {tok["refresh_token"].(string)},
		"client_id": {publicClient}})
	if status != 400 || out["error"] != "invalid_grant" {
		t.Errorf("refresh after replay: %d %v; want invalid_grant", status, out)
	}
}

func TestWrongTriesDoNotConsumeTheCode(t *testing.T) {
	e := newEnv(t)
	code, verifier := e.code("")
	for name, mod := range map[string]func(url.Values){
		"wrong verifier":     func(f url.Values) { f.Set("code_verifier", pkce()) },
		"missing verifier":   func(f url.Values) { f.Del("code_verifier") },
		"wrong redirect":     func(f url.Values) { f.Set("redirect_uri", "http://127.0.0.1/other") },
		"missing redirect":   func(f url.Values) { f.Del("redirect_uri") },
		"other client":       func(f url.Values) { f.Set("client_id", preClient) },
		"other resource":     func(f url.Values) { f.Set("resource", otherURI) },
		"malformed verifier": func(f url.Values) { f.Set("code_verifier", "short") },
	} {
		f := codeForm(code, verifier)
		mod(f)
		status, out, _ := e.token(f)
		want := "invalid_grant"
		if name == "other resource" {
			want = "invalid_target"
		}
		if status != 400 || out["error"] != want {
			t.Errorf("%s: %d %v; want %s", name, status, out, want)
		}
	}
	if status, out, _ := e.token(codeForm(code, verifier)); status != 200 {
		t.Errorf("correct retry after wrong tries: %d %v", status, out)
	}
}

func TestRefreshRotationAndReuse(t *testing.T) {
	e := newEnv(t)
	code, verifier := e.code("mail.read mail.send offline_access")
	_, tok, _ := e.token(codeForm(code, verifier))
	rt := tok["refresh_token"].(string)
	refresh := func(rt string, extra ...string) (int, map[string]any) {
		f := url.Values{"grant_type": {"refresh_token"}, "refresh_token": {rt}, "client_id": {publicClient}}
		for i := 0; i+1 < len(extra); i += 2 {
			f.Set(extra[i], extra[i+1])
		}
		s, out, _ := e.token(f)
		return s, out
	}
	if s, out := refresh(rt, "scope", "mail.read mail.send mail.delete"); s != 400 || out["error"] != "invalid_scope" {
		t.Errorf("widening: %d %v", s, out)
	}
	if s, out := refresh(rt, "resource", otherURI); s != 400 || out["error"] != "invalid_target" {
		t.Errorf("other audience: %d %v", s, out)
	}
	s, out := refresh(rt, "scope", "mail.read")
	if s != 200 || out["scope"] != "mail.read" {
		t.Fatalf("narrowing: %d %v", s, out)
	}
	rt2 := out["refresh_token"].(string)
	// The rotated token keeps the original scopes.
	if s, out := refresh(rt2); s != 200 || out["scope"] != "mail.read mail.send" {
		t.Fatalf("after narrowing: %d %v", s, out)
	} else {
		// Reusing rt (rotated long ago) revokes the whole grant.
		if s, o := refresh(rt); s != 400 || o["error"] != "invalid_grant" {
			t.Errorf("reuse: %d %v", s, o)
		}
		if s, o := refresh(out["refresh_token"].(string)); s != 400 {
			t.Errorf("newest refresh token after reuse: %d %v; want refused (grant revoked)", s, o)
		}
		if got := e.introspect(resourceID, resourceSecret, out["access_token"].(string)); got["active"] != false {
			t.Errorf("access token after reuse still active")
		}
	}
}

func TestConcurrentRefreshOneWins(t *testing.T) {
	e := newEnv(t)
	code, verifier := e.code("mail.read offline_access")
	_, tok, _ := e.token(codeForm(code, verifier))
	rt := tok["refresh_token"].(string)
	var wg sync.WaitGroup
	var mu sync.Mutex
	wins := 0
	for range 16 {
		wg.Go(func() {
			s, _, _ := e.token(url.Values{"grant_type": {"refresh_token"}, "refresh_token": {rt}, "client_id": {publicClient}})
			if s == 200 {
				mu.Lock()
				wins++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if wins != 1 {
		t.Errorf("%d of 16 concurrent refreshes succeeded, want exactly 1", wins)
	}
}

func TestPKCEAndRedirectRules(t *testing.T) {
	e := newEnv(t)
	b := e.browser()
	base := url.Values{"response_type": {"code"}, "client_id": {publicClient}, "redirect_uri": {redirectURI},
		"code_challenge": {"E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"}, "code_challenge_method": {"S256"},
		"resource": {resourceURI}, "state": {"st"}}
	for name, tc := range map[string]struct {
		mod  func(url.Values)
		want string
	}{
		"no challenge":        {func(v url.Values) { v.Del("code_challenge") }, "invalid_request"},
		"plain":               {func(v url.Values) { v.Set("code_challenge_method", "plain") }, "invalid_request"},
		"no method":           {func(v url.Values) { v.Del("code_challenge_method") }, "invalid_request"},
		"malformed challenge": {func(v url.Values) { v.Set("code_challenge", "abc") }, "invalid_request"},
		"token response":      {func(v url.Values) { v.Set("response_type", "token") }, "unsupported_response_type"},
		"unknown resource":    {func(v url.Values) { v.Set("resource", "https://mcp.example.com/mcp/other") }, "invalid_target"},
		"resource prefix":     {func(v url.Values) { v.Set("resource", "https://mcp.example.com/") }, "invalid_target"},
		"unknown scope":       {func(v url.Values) { v.Set("scope", "mail.read admin") }, "invalid_scope"},
	} {
		v := url.Values{}
		for k, x := range base {
			v[k] = x
		}
		tc.mod(v)
		resp, _ := b.get("/authorize?" + v.Encode())
		loc := location(t, resp, http.StatusFound)
		if got := loc.Query().Get("error"); got != tc.want || loc.Query().Get("state") != "st" ||
			loc.Query().Get("iss") != e.issuer || !strings.HasPrefix(loc.String(), redirectURI) {
			t.Errorf("%s: redirect %v; want error %s with state and iss at the client", name, loc, tc.want)
		}
	}
	// Canonical forms of the resource match.
	v := url.Values{}
	for k, x := range base {
		v[k] = x
	}
	v.Set("resource", "HTTPS://MCP.EXAMPLE.COM:443/mcp")
	if resp, _ := b.get("/authorize?" + v.Encode()); !strings.HasPrefix(resp.Header.Get("Location"), authserver.PathConsent) {
		t.Errorf("canonical resource refused: %v", resp.Header.Get("Location"))
	}
	// Look-alike redirects and unknown clients: Lanyard shows the error itself.
	for name, mod := range map[string]func(url.Values){
		"other path":      func(v url.Values) { v.Set("redirect_uri", "http://127.0.0.1/callback/evil") },
		"dot segments":    func(v url.Values) { v.Set("redirect_uri", "http://127.0.0.1/callback/../x") },
		"subdomain trick": func(v url.Values) { v.Set("redirect_uri", "http://127.0.0.1.evil.example/callback") },
		"localhost":       func(v url.Values) { v.Set("redirect_uri", "http://localhost/callback") },
		"userinfo":        func(v url.Values) { v.Set("redirect_uri", "http://evil@127.0.0.1/callback") },
		"query added":     func(v url.Values) { v.Set("redirect_uri", "http://127.0.0.1/callback?x=1") },
		"unknown client":  func(v url.Values) { v.Set("client_id", "nobody") },
		"no client":       func(v url.Values) { v.Del("client_id") },
		"duplicate param": func(v url.Values) { v.Add("state", "again") },
	} {
		v := url.Values{}
		for k, x := range base {
			v[k] = slices.Clone(x)
		}
		mod(v)
		resp, body := b.get("/authorize?" + v.Encode())
		if resp.StatusCode != http.StatusBadRequest || resp.Header.Get("Location") != "" || !strings.Contains(body, "<h1>") {
			t.Errorf("%s: status %d location %q; want a 400 error page and no redirect", name, resp.StatusCode, resp.Header.Get("Location"))
		}
		if resp.Header.Get("X-Frame-Options") != "DENY" || !strings.Contains(resp.Header.Get("Content-Security-Policy"), "frame-ancestors 'none'") {
			t.Errorf("%s: error page lacks security headers: %v", name, resp.Header)
		}
	}
	// RFC 8252: a loopback IP redirect may use any port.
	v = url.Values{}
	for k, x := range base {
		v[k] = x
	}
	v.Set("redirect_uri", "http://127.0.0.1:49152/callback")
	if resp, _ := b.get("/authorize?" + v.Encode()); !strings.HasPrefix(resp.Header.Get("Location"), authserver.PathConsent) {
		t.Errorf("loopback port refused: %v", resp.Header.Get("Location"))
	}
}

func TestDenyAndRememberedConsent(t *testing.T) {
	e := newEnv(t)
	b := e.browser()
	conf := e.oauthConfig(publicClient, "", "mail.read")
	url1 := conf.AuthCodeURL("s1", oauth2.S256ChallengeOption(pkce()), oauth2.SetAuthURLParam("resource", resourceURI))
	back := b.authorize(url1, "alice", false)
	if back.Query().Get("error") != "access_denied" || back.Query().Get("iss") != e.issuer {
		t.Errorf("deny: %v", back)
	}
	back = b.authorize(url1, "alice", true)
	if back.Query().Get("code") == "" {
		t.Fatalf("approve: %v", back)
	}
	// Same client, resource and scopes: no consent screen this time.
	resp, _ := b.get(url1)
	resp, _ = b.get(resp.Header.Get("Location"))
	if loc := location(t, resp, http.StatusSeeOther); loc.Query().Get("code") == "" {
		t.Errorf("remembered consent: %v; want a code without a consent screen", loc)
	}
	// Pre-approved client for the eng group: no consent screen even the first time.
	pre := e.oauthConfig(preClient, "", "mail.read")
	back = e.browser().authorize(pre.AuthCodeURL("s", oauth2.S256ChallengeOption(pkce()), oauth2.SetAuthURLParam("resource", resourceURI)), "alice", true)
	if back.Query().Get("code") == "" {
		t.Errorf("pre-approved: %v", back)
	}
	// bob is not in eng: he gets the consent screen.
	bb := e.browser()
	resp, _ = bb.get(pre.AuthCodeURL("s", oauth2.S256ChallengeOption(pkce()), oauth2.SetAuthURLParam("resource", resourceURI)))
	next := resp.Header.Get("Location")
	bb.login("bob", url.Values{"req": {strings.TrimPrefix(next, "/consent?req=")}})
	resp, body := bb.get(next)
	if resp.StatusCode != 200 || !strings.Contains(body, `id="approve"`) {
		t.Errorf("bob: %d; want the consent page", resp.StatusCode)
	}
	if !strings.Contains(body, "Pre-approved") {
		t.Errorf("consent page lacks the client name")
	}
}

func TestConsentPageEscapesClientName(t *testing.T) {
	e := newEnv(t)
	b := e.browser()
	conf := e.oauthConfig(publicClient, "")
	resp, _ := b.get(conf.AuthCodeURL("s", oauth2.S256ChallengeOption(pkce()), oauth2.SetAuthURLParam("resource", resourceURI)))
	next := resp.Header.Get("Location")
	b.login("alice", url.Values{"req": {strings.TrimPrefix(next, "/consent?req=")}})
	_, body := b.get(next)
	if strings.Contains(body, "<b>One</b>") || !strings.Contains(body, "&lt;b&gt;One&lt;/b&gt;") {
		t.Errorf("client name not escaped")
	}
	for _, want := range []string{"127.0.0.1", "localhost", "Mail MCP", "mail.read", "alice-gh", "alice@mail"} {
		if !strings.Contains(body, want) {
			t.Errorf("consent page lacks %q", want)
		}
	}
}

func TestCSRFAndCookies(t *testing.T) {
	e := newEnv(t)
	b := e.browser()
	resp, page := b.get("/login")
	token := csrf(t, page)
	var names []string
	for _, c := range resp.Cookies() {
		names = append(names, c.Name)
		if !c.HttpOnly || c.SameSite != http.SameSiteLaxMode || c.Path != "/" {
			t.Errorf("cookie %s: %+v; want HttpOnly, SameSite=Lax, Path=/", c.Name, c)
		}
	}
	if len(names) == 0 {
		t.Fatal("login page set no CSRF cookie")
	}
	form := url.Values{"username": {"alice"}, "password": {alicePassword}}
	if resp, _ := b.post("/login", form); resp.StatusCode != http.StatusForbidden {
		t.Errorf("login without CSRF token: %d, want 403", resp.StatusCode)
	}
	form.Set("csrf_token", token)
	if resp, _ := b.post("/login", form, "Sec-Fetch-Site", "cross-site"); resp.StatusCode != http.StatusForbidden {
		t.Errorf("cross-site login POST: %d, want 403", resp.StatusCode)
	}
	other := e.browser()
	if resp, _ := other.post("/login", form); resp.StatusCode != http.StatusForbidden {
		t.Errorf("CSRF token of another browser: %d, want 403", resp.StatusCode)
	}
	resp, _ = b.post("/login", form)
	if resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("login: %d", resp.StatusCode)
	}
	for _, h := range []string{"Content-Security-Policy", "X-Frame-Options", "Referrer-Policy"} {
		if resp.Header.Get(h) == "" {
			t.Errorf("login response lacks %s", h)
		}
	}
	if resp.Header.Get("Referrer-Policy") != "no-referrer" {
		t.Errorf("Referrer-Policy = %q", resp.Header.Get("Referrer-Policy"))
	}
}

func TestLoginLockout(t *testing.T) {
	e := newEnv(t)
	b := e.browser()
	for i := range 5 {
		_, page := b.get("/login")
		resp, _ := b.post("/login", url.Values{"username": {"alice"}, "password": {"wrong password!"}, "csrf_token": {csrf(t, page)}})
		if resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("attempt %d: %d", i, resp.StatusCode)
		}
	}
	if resp := b.login("alice", url.Values{}); resp.StatusCode != http.StatusTooManyRequests {
		t.Errorf("right password after 5 failures: %d, want 429 (locked)", resp.StatusCode)
	}
	if resp := b.login("bob", url.Values{}); resp.StatusCode != http.StatusSeeOther {
		t.Errorf("another user: %d, want 303", resp.StatusCode)
	}
}

func TestTokenEndpointHygiene(t *testing.T) {
	e := newEnv(t)
	for name, tc := range map[string]struct {
		body   string
		status int
		want   string
	}{
		"duplicate":       {"grant_type=authorization_code&grant_type=refresh_token&client_id=agent", 400, "invalid_request"},
		"unknown grant":   {"grant_type=password&client_id=agent&username=a&password=b", 400, "unsupported_grant_type"},
		"no grant":        {"client_id=agent", 400, "invalid_request"},
		"empty is absent": {"grant_type=&client_id=agent", 400, "invalid_request"},
		"no client":       {"grant_type=authorization_code&code=x", 401, "invalid_client"},
		"unknown client":  {"grant_type=authorization_code&code=x&client_id=nobody", 401, "invalid_client"},
		"huge":            {"grant_type=authorization_code&client_id=agent&code=" + strings.Repeat("a", 70000), 413, "invalid_request"},
	} {
		req, _ := http.NewRequest("POST", e.issuer+"/token", strings.NewReader(tc.body))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var out map[string]any
		_ = json.NewDecoder(resp.Body).Decode(&out)
		resp.Body.Close()
		if resp.StatusCode != tc.status || out["error"] != tc.want || resp.Header.Get("Cache-Control") != "no-store" {
			t.Errorf("%s: %d %v; want %d %s with no-store", name, resp.StatusCode, out, tc.status, tc.want)
		}
	}
	// Confidential client: wrong secret, and WWW-Authenticate on Basic.
	status, out, hdr := e.token(url.Values{"grant_type": {"authorization_code"}, "code": {"x"}}, confClient, "wrong")
	if status != 401 || out["error"] != "invalid_client" || !strings.HasPrefix(hdr.Get("WWW-Authenticate"), "Basic") {
		t.Errorf("wrong secret: %d %v %v", status, out, hdr)
	}
	status, out, _ = e.token(url.Values{"grant_type": {"authorization_code"}, "code": {"x"}}, confClient, confSecret)
	if status != 400 || out["error"] != "invalid_grant" {
		t.Errorf("right secret, bad code: %d %v", status, out)
	}
}

func TestRevocation(t *testing.T) {
	e := newEnv(t)
	code, verifier := e.code("mail.read offline_access")
	_, tok, _ := e.token(codeForm(code, verifier))
	revoke := func(client, tokenValue string) int {
		req, _ := http.NewRequest("POST", e.issuer+"/revoke", strings.NewReader(url.Values{"token": {tokenValue}, "client_id": {client}}.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	at := tok["access_token"].(string)
	if s := revoke(preClient, tok["refresh_token"].(string)); s != 200 {
		t.Errorf("revoke by another client: %d, want 200 (same answer)", s)
	}
	if got := e.introspect(resourceID, resourceSecret, at); got["active"] != true {
		t.Errorf("another client revoked our token")
	}
	if s := revoke(publicClient, "unknown-token"); s != 200 {
		t.Errorf("unknown token: %d", s)
	}
	if s := revoke(publicClient, tok["refresh_token"].(string)); s != 200 {
		t.Errorf("revoke: %d", s)
	}
	if got := e.introspect(resourceID, resourceSecret, at); got["active"] != false {
		t.Errorf("access token still active after its refresh token was revoked")
	}
	if got := e.introspect(resourceID, "wrong", at); got["error"] != "invalid_client" {
		t.Errorf("introspection with a wrong secret: %v", got)
	}
}

func TestDeviceFlow(t *testing.T) {
	e := newEnv(t)
	post := func(path string, form url.Values) (int, map[string]any) {
		req, _ := http.NewRequest("POST", e.issuer+path, strings.NewReader(form.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var out map[string]any
		_ = json.NewDecoder(resp.Body).Decode(&out)
		return resp.StatusCode, out
	}
	s, da := post("/device_authorization", url.Values{"client_id": {publicClient}, "resource": {resourceURI}, "scope": {"mail.read"}})
	if s != 200 || da["device_code"] == nil || da["verification_uri"] != e.issuer+"/device" {
		t.Fatalf("device authorization: %d %v", s, da)
	}
	poll := url.Values{"grant_type": {authserver.GrantDeviceCode}, "device_code": {da["device_code"].(string)}, "client_id": {publicClient}}
	if s, out := post("/token", poll); s != 400 || out["error"] != "authorization_pending" {
		t.Errorf("first poll: %d %v", s, out)
	}
	if s, out := post("/token", poll); s != 400 || out["error"] != "slow_down" {
		t.Errorf("immediate second poll: %d %v; want slow_down", s, out)
	}
	other := url.Values{"grant_type": {authserver.GrantDeviceCode}, "device_code": {da["device_code"].(string)}, "client_id": {preClient}}
	if s, out := post("/token", other); s != 400 || out["error"] != "invalid_grant" {
		t.Errorf("other client polling: %d %v", s, out)
	}
	// The user enters the code in the browser.
	b := e.browser()
	b.login("alice", url.Values{})
	_, page := b.get("/device")
	for i := range 5 {
		resp, body := b.post("/device", url.Values{"user_code": {"BCDF-GHJK"}, "csrf_token": {csrf(t, page)}})
		if resp.StatusCode != 400 {
			t.Fatalf("wrong code %d: %d %s", i, resp.StatusCode, body)
		}
	}
	if resp, _ := b.post("/device", url.Values{"user_code": {da["user_code"].(string)}, "csrf_token": {csrf(t, page)}}); resp.StatusCode != http.StatusTooManyRequests {
		t.Errorf("after 5 wrong codes: %d, want 429", resp.StatusCode)
	}
	b = e.browser()
	b.login("alice", url.Values{})
	_, page = b.get("/device?user_code=" + url.QueryEscape(da["user_code"].(string)))
	resp, body := b.post("/device", url.Values{"user_code": {strings.ToLower(da["user_code"].(string))}, "csrf_token": {csrf(t, page)}})
	if resp.StatusCode != 200 || !strings.Contains(body, "Mail MCP") {
		t.Fatalf("code entry: %d %s", resp.StatusCode, body)
	}
	resp, _ = b.post("/device/decide", url.Values{"user_code": {da["user_code"].(string)}, "decision": {"approve"},
		"connection": {"conn-mail"}, "csrf_token": {csrf(t, body)}})
	if resp.StatusCode != 200 {
		t.Fatalf("approve: %d", resp.StatusCode)
	}
	// Wait out the (grown) interval without sleeping: the poll interval is
	// enforced against the server clock, so reset LastPolled directly.
	e.resetDevicePoll(t, da["device_code"].(string))
	s, out := post("/token", poll)
	if s != 200 || out["access_token"] == nil {
		t.Fatalf("poll after approval: %d %v", s, out)
	}
	if s, out := post("/token", poll); s == 200 {
		t.Errorf("device code used twice: %v", out)
	}
}

func (e *env) resetDevicePoll(t *testing.T, deviceCode string) {
	t.Helper()
	_, err := e.store.DeviceCodes().Update(context.Background(), broker.HashSecret(deviceCode), func(d broker.DeviceCode) (broker.DeviceCode, error) {
		d.LastPolled = d.LastPolled.Add(-10 * 60 * 1e9)
		return d, nil
	})
	if err != nil && !errors.Is(err, context.Canceled) {
		t.Fatal(err)
	}
}
