package authserver_test

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/oauth2"

	"github.com/lanyardhq/lanyard/broker"
	"github.com/lanyardhq/lanyard/broker/authserver"
	"github.com/lanyardhq/lanyard/broker/clientreg"
	"github.com/lanyardhq/lanyard/broker/token"
	"github.com/lanyardhq/lanyard/internal/bolt"
	"github.com/lanyardhq/lanyard/internal/config"
	"github.com/lanyardhq/lanyard/internal/password"
	"github.com/lanyardhq/lanyard/internal/safehttp"
	"github.com/lanyardhq/lanyard/internal/server"
	"github.com/lanyardhq/lanyard/internal/testenv"
	"github.com/lanyardhq/lanyard/vault/sealed"
	"github.com/lanyardhq/lanyard/web"
)

// envOptions vary the test world of newEnv.
type envOptions struct {
	now             func() time.Time // one clock for store, keys, server and UI
	defaultResource string
	// audit, if set, is the audit log the authorization server writes to
	// (the store's own otherwise).
	audit broker.AuditLog
}

// newEnvWith is newEnv with options: the same world, seeded the same way.
func newEnvWith(t *testing.T, o envOptions) *env {
	t.Helper()
	ctx := context.Background()
	if o.now == nil {
		o.now = time.Now
	}
	dir := t.TempDir()
	db, err := bolt.Open(filepath.Join(dir, "l.db"), bolt.Options{Now: o.now})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	secrets, err := sealed.Open(db, filepath.Join(dir, "sealed.key"), sealed.Options{})
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, store: db, logs: &strings.Builder{}}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	srv := server.New(server.Options{HTTP: config.Default().HTTP, Logger: log})
	e.ts = httptest.NewUnstartedServer(srv.Handler())
	e.issuer = "http://" + e.ts.Listener.Addr().String()
	if e.keys, err = token.Open(ctx, token.Options{Issuer: e.issuer, Secrets: secrets, Now: o.now}); err != nil {
		t.Fatal(err)
	}
	var ui *web.UI
	e.auth, err = authserver.New(authserver.Options{
		Issuer: e.issuer, Store: withAudit(db, o.audit), Keys: e.keys, Dev: true, CIMD: true, Now: o.now, DefaultResource: o.defaultResource,
		Clients: clientreg.NewResolver(clientreg.ResolverOptions{Clients: db.Clients(), DevLoopback: true, Now: o.now,
			HTTP: safehttp.NewClient(safehttp.Options{AllowLoopback: true})}),
		Registration:   clientreg.NewRegistrar(clientreg.RegistrarOptions{Clients: db.Clients(), DevLoopback: true, Now: o.now}),
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
	if ui, err = web.New(web.Options{Store: db, Auth: e.auth, Key: key, Logger: log, Now: o.now,
		VerifyPassword: password.Verify}); err != nil {
		t.Fatal(err)
	}
	e.auth.Mount(srv)
	ui.Mount(srv)
	e.ts.Start()
	t.Cleanup(e.ts.Close)
	e.seed(ctx)
	return e
}

// postForm posts form to an endpoint of the server and returns the status,
// the JSON body (nil if it is not JSON), the raw body and the headers.
// basic, if given, is the HTTP Basic id and secret (form-urlencoded first,
// as RFC 6749 §2.3.1 requires).
func (e *env) postForm(path string, form url.Values, basic ...string) (int, map[string]any, string, http.Header) {
	e.t.Helper()
	req, _ := http.NewRequest(http.MethodPost, e.issuer+path, strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if len(basic) == 2 {
		req.SetBasicAuth(url.QueryEscape(basic[0]), url.QueryEscape(basic[1]))
	}
	return e.do(req)
}

func (e *env) do(req *http.Request) (int, map[string]any, string, http.Header) {
	e.t.Helper()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var out map[string]any
	_ = json.Unmarshal(raw, &out)
	return resp.StatusCode, out, string(raw), resp.Header
}

// codeFor runs the browser part of the code flow for clientID (a public or
// confidential client; the browser signs in as alice) with redirect and
// scopes, and returns the code and the PKCE verifier.
func (e *env) codeFor(clientID, redirect, scopes string) (code, verifier string) {
	e.t.Helper()
	verifier = oauth2.GenerateVerifier()
	conf := &oauth2.Config{ClientID: clientID, RedirectURL: redirect,
		Endpoint: oauth2.Endpoint{AuthURL: e.issuer + "/authorize", TokenURL: e.issuer + "/token"}}
	opts := []oauth2.AuthCodeOption{oauth2.S256ChallengeOption(verifier), oauth2.SetAuthURLParam("resource", resourceURI)}
	if scopes != "" {
		opts = append(opts, oauth2.SetAuthURLParam("scope", scopes))
	}
	back := e.browser().authorize(conf.AuthCodeURL("st", opts...), "alice", true)
	if back.Query().Get("code") == "" || back.Query().Get("state") != "st" || back.Query().Get("iss") != e.issuer {
		e.t.Fatalf("authorization response %v: want code, state and iss", back)
	}
	if !strings.HasPrefix(back.String(), redirect+"?") {
		e.t.Fatalf("authorization response %v went to another redirect than %s", back, redirect)
	}
	return back.Query().Get("code"), verifier
}

// deviceAuthorize starts a device authorization for clientID.
func (e *env) deviceAuthorize(clientID string, extra ...string) (int, map[string]any) {
	e.t.Helper()
	f := url.Values{"client_id": {clientID}, "resource": {resourceURI}}
	for i := 0; i+1 < len(extra); i += 2 {
		f.Set(extra[i], extra[i+1])
	}
	s, out, _, _ := e.postForm(authserver.PathDeviceAuth, f)
	return s, out
}

// decideDevice enters userCode as alice in a new browser and approves or
// denies it, ticking connections.
func (e *env) decideDevice(userCode string, approve bool, connections ...string) {
	e.t.Helper()
	t := e.t
	b := e.browser()
	if resp := b.login("alice", url.Values{}); resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("login: %d", resp.StatusCode)
	}
	_, page := b.get("/device?user_code=" + url.QueryEscape(userCode))
	resp, body := b.post("/device", url.Values{"user_code": {userCode}, "csrf_token": {csrf(t, page)}})
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("user code entry: %d\n%s", resp.StatusCode, body)
	}
	decision := "deny"
	if approve {
		decision = "approve"
	}
	resp, body = b.post("/device/decide", url.Values{"user_code": {userCode}, "decision": {decision},
		"connection": connections, "csrf_token": {csrf(t, body)}})
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("device decision: %d\n%s", resp.StatusCode, body)
	}
}

// pollDevice polls the token endpoint once for deviceCode, first moving
// the last poll into the past so that the interval is never the answer.
func (e *env) pollDevice(clientID, deviceCode string) (int, map[string]any) {
	e.t.Helper()
	e.resetDevicePoll(e.t, deviceCode)
	s, out, _, _ := e.postForm("/token", url.Values{"grant_type": {authserver.GrantDeviceCode},
		"device_code": {deviceCode}, "client_id": {clientID}})
	return s, out
}

// ---- 1. Client ID Metadata Documents ----

// cimdServer serves client metadata documents from 127.0.0.1. docs maps a
// path to a function that builds the document from the server's base URL.
// The returned counter counts fetches of each path.
func cimdServer(t *testing.T, docs map[string]func(base string) map[string]any) (base string, fetches func(path string) int64) {
	t.Helper()
	counts := map[string]*atomic.Int64{}
	for p := range docs {
		counts[p] = &atomic.Int64{}
	}
	mux := http.NewServeMux()
	ts := httptest.NewUnstartedServer(mux)
	base = "http://" + ts.Listener.Addr().String()
	for p, doc := range docs {
		body, err := json.Marshal(doc(base))
		if err != nil {
			t.Fatal(err)
		}
		mux.HandleFunc("GET "+p, func(w http.ResponseWriter, _ *http.Request) {
			counts[p].Add(1)
			w.Header().Set("Content-Type", "application/json")
			w.Header().Set("Cache-Control", "max-age=3600")
			_, _ = w.Write(body)
		})
	}
	ts.Start()
	t.Cleanup(ts.Close)
	return base, func(p string) int64 { return counts[p].Load() }
}

func cimdDoc(path string, grantTypes ...string) func(base string) map[string]any {
	return func(base string) map[string]any {
		d := map[string]any{"client_id": base + path, "client_name": "CIMD Agent", "redirect_uris": []string{redirectURI}}
		if len(grantTypes) > 0 {
			d["grant_types"] = grantTypes
		}
		return d
	}
}

func TestCIMDCodeFlow(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	base, fetches := cimdServer(t, map[string]func(string) map[string]any{"/client.json": cimdDoc("/client.json")})
	clientID := base + "/client.json"
	// Basic credentials: x/oauth2 form-encodes the URL client_id, the
	// server must decode it.
	conf := &oauth2.Config{ClientID: clientID, RedirectURL: redirectURI, Scopes: []string{"mail.read", "offline_access"},
		Endpoint: oauth2.Endpoint{AuthURL: e.issuer + "/authorize", TokenURL: e.issuer + "/token", AuthStyle: oauth2.AuthStyleInHeader}}
	verifier := oauth2.GenerateVerifier()
	b := e.browser()
	authURL := conf.AuthCodeURL("cimd-state", oauth2.S256ChallengeOption(verifier), oauth2.SetAuthURLParam("resource", resourceURI))

	// The consent page names the client as its document does.
	resp, _ := b.get(authURL)
	next := resp.Header.Get("Location")
	if !strings.HasPrefix(next, authserver.PathConsent+"?req=") {
		t.Fatalf("authorize with a CIMD client_id: %d %q", resp.StatusCode, next)
	}
	b.login("alice", url.Values{"req": {strings.TrimPrefix(next, authserver.PathConsent+"?req=")}})
	if _, page := b.get(next); !strings.Contains(page, "CIMD Agent") || !strings.Contains(page, clientID) {
		t.Errorf("consent page lacks the document's client_name or the client_id URL")
	}

	back := b.authorize(authURL, "alice", true)
	q := back.Query()
	if q.Get("code") == "" || q.Get("state") != "cimd-state" || q.Get("iss") != e.issuer {
		t.Fatalf("authorization response %v", back)
	}
	tok, err := conf.Exchange(ctx, q.Get("code"), oauth2.VerifierOption(verifier), oauth2.SetAuthURLParam("resource", resourceURI))
	if err != nil {
		t.Fatalf("Exchange with a CIMD client: %v", err)
	}
	c, err := e.keys.Verify(ctx, tok.AccessToken)
	if err != nil {
		t.Fatal(err)
	}
	if c.Audience != resourceURI || c.ClientID != clientID || c.Subject != "id-alice" {
		t.Errorf("claims = %+v; want aud %s, client_id %s", c, resourceURI, clientID)
	}
	if got := e.introspect(resourceID, resourceSecret, tok.AccessToken); got["active"] != true || got["client_id"] != clientID {
		t.Errorf("introspection = %v", got)
	}
	if tok.RefreshToken == "" {
		t.Fatal("no refresh token with offline_access")
	}
	expired := *tok
	expired.Expiry = time.Now().Add(-time.Hour)
	if next, err := conf.TokenSource(ctx, &expired).Token(); err != nil || next.AccessToken == tok.AccessToken {
		t.Errorf("refresh by the CIMD client: %v", err)
	}
	// The document was cached (Cache-Control: max-age=3600): one fetch for
	// authorize, consent, token and refresh.
	if n := fetches("/client.json"); n != 1 {
		t.Errorf("document fetched %d times, want 1 (cached)", n)
	}
	if cl, err := e.store.Clients().Get(ctx, clientID); err != nil || cl.Kind != broker.ClientMetadata || cl.Name != "CIMD Agent" {
		t.Errorf("cached client = %+v, %v", cl, err)
	}
}

func TestCIMDDocumentClientIDMismatch(t *testing.T) {
	e := newEnv(t)
	base, _ := cimdServer(t, map[string]func(string) map[string]any{
		// The document claims to be another document.
		"/wrong.json": cimdDoc("/client.json"),
		"/client.json": func(base string) map[string]any {
			d := cimdDoc("/client.json")(base)
			d["redirect_uris"] = []string{"https://agent.example/callback"}
			return d
		},
	})
	b := e.browser()
	for name, tc := range map[string]struct{ clientID, redirect string }{
		"client_id differs from URL":      {base + "/wrong.json", redirectURI},
		"redirect not in document":        {base + "/client.json", redirectURI},
		"document not found":              {base + "/missing.json", redirectURI},
		"client_id URL with a fragment":   {base + "/client.json#x", redirectURI},
		"client_id URL with dot segments": {base + "/x/../client.json", redirectURI},
		"client_id URL with user info":    {"http://u@" + strings.TrimPrefix(base, "http://") + "/client.json", redirectURI},
		"non-loopback http client_id URL": {"http://agent.example/client.json", redirectURI},
		"other https redirect":            {base + "/client.json", "https://agent.example/other"},
	} {
		q := url.Values{"response_type": {"code"}, "client_id": {tc.clientID}, "redirect_uri": {tc.redirect},
			"code_challenge": {"E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"}, "code_challenge_method": {"S256"},
			"resource": {resourceURI}, "state": {"s"}}
		resp, body := b.get("/authorize?" + q.Encode())
		if resp.StatusCode != http.StatusBadRequest || resp.Header.Get("Location") != "" || !strings.Contains(body, "<h1>") {
			t.Errorf("%s: status %d location %q; want a 400 error page and no redirect", name, resp.StatusCode, resp.Header.Get("Location"))
		}
	}
	if _, err := e.store.Clients().Get(context.Background(), base+"/wrong.json"); !errors.Is(err, broker.ErrNotFound) {
		t.Errorf("a document with a mismatched client_id was cached: %v", err)
	}
	// The token endpoint refuses the mismatched document as a client too.
	s, out, _, _ := e.postForm("/token", url.Values{"grant_type": {"authorization_code"}, "code": {"x"},
		"client_id": {base + "/wrong.json"}, "redirect_uri": {redirectURI}, "code_verifier": {pkce()}})
	if s != http.StatusUnauthorized || out["error"] != "invalid_client" {
		t.Errorf("token request by a mismatched document: %d %v; want invalid_client", s, out)
	}
}

func TestCIMDDeviceGrant(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	base, _ := cimdServer(t, map[string]func(string) map[string]any{
		"/device.json":   cimdDoc("/device.json", clientreg.GrantAuthorizationCode, clientreg.GrantRefreshToken, clientreg.GrantDeviceCode),
		"/nodevice.json": cimdDoc("/nodevice.json"),
	})
	clientID := base + "/device.json"
	conf := &oauth2.Config{ClientID: clientID, Scopes: []string{"mail.read"},
		Endpoint: oauth2.Endpoint{DeviceAuthURL: e.issuer + authserver.PathDeviceAuth, TokenURL: e.issuer + "/token"}}
	da, err := conf.DeviceAuth(ctx, oauth2.SetAuthURLParam("resource", resourceURI))
	if err != nil {
		t.Fatalf("device authorization by a CIMD client that lists the device grant: %v", err)
	}
	if da.DeviceCode == "" || da.UserCode == "" || da.VerificationURI != e.issuer+"/device" || da.Interval != 5 {
		t.Fatalf("device authorization response = %+v", da)
	}
	if s, out := e.pollDevice(clientID, da.DeviceCode); s != 400 || out["error"] != "authorization_pending" {
		t.Errorf("poll before approval: %d %v", s, out)
	}
	e.decideDevice(da.UserCode, true, "conn-gh")
	s, out := e.pollDevice(clientID, da.DeviceCode)
	if s != 200 || out["access_token"] == nil {
		t.Fatalf("poll after approval: %d %v", s, out)
	}
	c, err := e.keys.Verify(ctx, out["access_token"].(string))
	if err != nil || c.ClientID != clientID || c.Audience != resourceURI || !slices.Equal(c.Scopes, []string{"mail.read"}) {
		t.Errorf("device token claims = %+v, %v", c, err)
	}
	// A CIMD client whose document does not list the device grant may not
	// use it.
	if s, out := e.deviceAuthorize(base + "/nodevice.json"); s != 400 || out["error"] != "unauthorized_client" {
		t.Errorf("CIMD client without the device grant: %d %v; want unauthorized_client", s, out)
	}
}

// ---- 2. Dynamic client registration ----

func (e *env) register(body string) (int, map[string]any) {
	e.t.Helper()
	req, _ := http.NewRequest(http.MethodPost, e.issuer+authserver.PathRegister, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	s, out, _, _ := e.do(req)
	return s, out
}

func TestDCRPublicClientCodeAndDeviceFlow(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	// A native app with a loopback redirect: any port at authorization time
	// (RFC 8252 §7.3).
	s, reg := e.register(`{"client_name":"DCR Agent","application_type":"native","token_endpoint_auth_method":"none",
		"redirect_uris":["http://127.0.0.1/callback"],
		"grant_types":["authorization_code","refresh_token","urn:ietf:params:oauth:grant-type:device_code"],
		"client_id":"chosen-by-client","client_secret":"chosen-too"}`)
	if s != http.StatusCreated {
		t.Fatalf("register: %d %v", s, reg)
	}
	clientID, _ := reg["client_id"].(string)
	if !strings.HasPrefix(clientID, "dcr_") || reg["client_secret"] != nil {
		t.Fatalf("registration response %v: want a server-assigned client_id and no secret", reg)
	}
	redirect := "http://127.0.0.1:49321/callback"
	code, verifier := e.codeFor(clientID, redirect, "mail.read offline_access")
	conf := &oauth2.Config{ClientID: clientID, RedirectURL: redirect,
		Endpoint: oauth2.Endpoint{TokenURL: e.issuer + "/token", AuthStyle: oauth2.AuthStyleInParams}}
	tok, err := conf.Exchange(ctx, code, oauth2.VerifierOption(verifier), oauth2.SetAuthURLParam("resource", resourceURI))
	if err != nil {
		t.Fatalf("Exchange with a DCR client: %v", err)
	}
	if c, err := e.keys.Verify(ctx, tok.AccessToken); err != nil || c.ClientID != clientID || c.Audience != resourceURI {
		t.Errorf("claims = %+v, %v", c, err)
	}
	if tok.RefreshToken == "" {
		t.Errorf("no refresh token for a DCR client with offline_access")
	}
	// The device grant, registered, works.
	s, da := e.deviceAuthorize(clientID)
	if s != 200 || da["device_code"] == nil {
		t.Fatalf("device authorization by the DCR client: %d %v", s, da)
	}
	e.decideDevice(da["user_code"].(string), true)
	if s, out := e.pollDevice(clientID, da["device_code"].(string)); s != 200 || out["access_token"] == nil {
		t.Errorf("device poll after approval: %d %v", s, out)
	}
	// Registered without the device grant: refused at /device_authorization.
	s, reg = e.register(`{"client_name":"Code only","redirect_uris":["http://127.0.0.1/callback"]}`)
	if s != http.StatusCreated {
		t.Fatalf("register: %d %v", s, reg)
	}
	if s, out := e.deviceAuthorize(reg["client_id"].(string)); s != 400 || out["error"] != "unauthorized_client" {
		t.Errorf("DCR client without the device grant: %d %v; want unauthorized_client", s, out)
	}
}

func TestDCRRejectsDangerousRedirects(t *testing.T) {
	e := newEnv(t)
	for name, uri := range map[string]string{
		"javascript": "javascript:alert(1)",
		"data":       "data:text/html,hi",
		"control":    "http://127.0.0.1/cb\u0007",
	} {
		body, _ := json.Marshal(map[string]any{"client_name": "x", "application_type": "native", "redirect_uris": []string{uri}})
		s, out := e.register(string(body))
		if s != http.StatusBadRequest || out["error"] != "invalid_redirect_uri" {
			t.Errorf("%s: %d %v; want 400 invalid_redirect_uri", name, s, out)
		}
		if d, _ := out["error_description"].(string); strings.Contains(d, uri) {
			t.Errorf("%s: the error echoes the URI: %q", name, d)
		}
	}
	// Nothing was stored.
	page, err := e.store.Clients().List(context.Background(), broker.Query{Limit: broker.MaxLimit})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range page.Items {
		if c.Kind == broker.ClientRegistered {
			t.Errorf("a refused registration stored client %s", c.ID)
		}
	}
}

func TestDCRConfidentialClientAuthentication(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	s, reg := e.register(`{"client_name":"Confidential DCR","application_type":"native",
		"token_endpoint_auth_method":"client_secret_basic","redirect_uris":["http://127.0.0.1/callback"]}`)
	if s != http.StatusCreated {
		t.Fatalf("register: %d %v", s, reg)
	}
	id, _ := reg["client_id"].(string)
	secret, _ := reg["client_secret"].(string)
	if id == "" || len(secret) < 43 || reg["client_secret_expires_at"] != float64(0) {
		t.Fatalf("registration response %v: want a 256-bit secret that does not expire", reg)
	}
	// Returned once: the store holds only its hash.
	c, err := e.store.Clients().Get(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if raw, _ := json.Marshal(c); strings.Contains(string(raw), secret) || c.SecretHash != broker.HashSecret(secret) {
		t.Errorf("stored client %s: want only the secret's hash", raw)
	}

	exchange := func(code, verifier string) url.Values {
		return url.Values{"grant_type": {"authorization_code"}, "code": {code}, "code_verifier": {verifier},
			"redirect_uri": {redirectURI}, "resource": {resourceURI}}
	}
	// client_secret_basic.
	code, verifier := e.codeFor(id, redirectURI, "mail.read")
	if s, out, _, _ := e.postForm("/token", exchange(code, verifier), id, secret); s != 200 || out["access_token"] == nil {
		t.Errorf("client_secret_basic: %d %v", s, out)
	}
	// client_secret_post.
	code, verifier = e.codeFor(id, redirectURI, "mail.read")
	f := exchange(code, verifier)
	// The wrong tries below do not consume the code.
	for name, tc := range map[string]struct {
		mod    func(url.Values) []string
		status int
		want   string
	}{
		"both methods": {func(f url.Values) []string {
			f.Set("client_id", id)
			f.Set("client_secret", secret)
			return []string{id, secret}
		},
			400, "invalid_request"},
		"no secret":    {func(f url.Values) []string { f.Set("client_id", id); return nil }, 401, "invalid_client"},
		"wrong secret": {func(f url.Values) []string { f.Set("client_id", id); f.Set("client_secret", secret+"x"); return nil }, 401, "invalid_client"},
		"wrong basic":  {func(url.Values) []string { return []string{id, "nope"} }, 401, "invalid_client"},
	} {
		g := url.Values{}
		for k, v := range f {
			g[k] = slices.Clone(v)
		}
		basic := tc.mod(g)
		s, out, body, _ := e.postForm("/token", g, basic...)
		if s != tc.status || out["error"] != tc.want {
			t.Errorf("%s: %d %s; want %d %s", name, s, body, tc.status, tc.want)
		}
	}
	f.Set("client_id", id)
	f.Set("client_secret", secret)
	if s, out, _, _ := e.postForm("/token", f); s != 200 || out["access_token"] == nil {
		t.Errorf("client_secret_post: %d %v", s, out)
	}
}

// ---- 3. Sessions ----

func sessionCookie(t *testing.T, b *browser) string {
	t.Helper()
	u, _ := url.Parse(b.e.issuer)
	for _, c := range b.c.Jar.Cookies(u) {
		if c.Name == "lanyard_session" {
			return c.Value
		}
	}
	return ""
}

// jarWith is a browser whose only cookie is a session cookie with value.
func (e *env) jarWith(value string) *browser {
	b := e.browser()
	u, _ := url.Parse(e.issuer)
	b.c.Jar.SetCookies(u, []*http.Cookie{{Name: "lanyard_session", Value: value, Path: "/"}})
	return b
}

var grantRE = regexp.MustCompile(`name="grant" value="([^"]+)"`)

func TestSessionRotationAtLogin(t *testing.T) {
	e := newEnv(t)
	b := e.browser()
	// A session cookie planted before sign-in (fixation) is not adopted.
	b.c.Jar.SetCookies(mustURL(t, e.issuer), []*http.Cookie{{Name: "lanyard_session", Value: "planted-by-attacker-0123456789abcdefghijklmno", Path: "/"}})
	if resp := b.login("alice", url.Values{}); resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("login: %d", resp.StatusCode)
	}
	first := sessionCookie(t, b)
	if first == "" || strings.HasPrefix(first, "planted") {
		t.Fatalf("session cookie after login = %q; want a new value", first)
	}
	// Sign in again in the same browser (the form is on the home page's
	// CSRF token, since /login redirects a signed-in browser).
	_, home := b.get("/")
	resp, _ := b.post("/login", url.Values{"username": {"alice"}, "password": {alicePassword}, "csrf_token": {csrf(t, home)}})
	if resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("second login: %d", resp.StatusCode)
	}
	second := sessionCookie(t, b)
	if second == "" || second == first {
		t.Fatalf("session cookie after the second login = %q, first %q; want a new value", second, first)
	}
	// A pending authorization request to open with each cookie.
	conf := e.oauthConfig(publicClient, "")
	resp, _ = e.browser().get(conf.AuthCodeURL("s", oauth2.S256ChallengeOption(pkce()), oauth2.SetAuthURLParam("resource", resourceURI)))
	consent := resp.Header.Get("Location")
	if resp, _ := e.jarWith(first).get(consent); resp.StatusCode != http.StatusSeeOther || !strings.HasPrefix(resp.Header.Get("Location"), "/login") {
		t.Errorf("old session cookie at /consent: %d %q; want a redirect to /login", resp.StatusCode, resp.Header.Get("Location"))
	}
	if resp, body := e.jarWith(second).get(consent); resp.StatusCode != http.StatusOK || !strings.Contains(body, `id="approve"`) {
		t.Errorf("current session cookie at /consent: %d; want the consent page", resp.StatusCode)
	}
	if _, err := e.store.Sessions().Get(context.Background(), broker.HashSecret(first)); !errors.Is(err, broker.ErrNotFound) {
		t.Errorf("the session replaced at login still exists: %v", err)
	}
}

func TestLogoutDeletesSession(t *testing.T) {
	e := newEnv(t)
	b := e.browser()
	b.login("alice", url.Values{})
	val := sessionCookie(t, b)
	_, home := b.get("/")
	resp, _ := b.post("/logout", url.Values{"csrf_token": {csrf(t, home)}})
	if loc := location(t, resp, http.StatusSeeOther); loc.Path != "/login" {
		t.Errorf("logout redirects to %v", loc)
	}
	if sessionCookie(t, b) != "" {
		t.Errorf("logout left the session cookie in the browser")
	}
	if _, err := e.store.Sessions().Get(context.Background(), broker.HashSecret(val)); !errors.Is(err, broker.ErrNotFound) {
		t.Errorf("session still stored after logout: %v", err)
	}
	// The old cookie value, replayed, is not signed in.
	if resp, _ := e.jarWith(val).get("/"); resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/login" {
		t.Errorf("replayed cookie after logout: %d %q; want a redirect to /login", resp.StatusCode, resp.Header.Get("Location"))
	}
	// Logout needs the CSRF token: a cross-site form cannot sign a user out.
	b2 := e.browser()
	b2.login("alice", url.Values{})
	if resp, _ := b2.post("/logout", url.Values{}); resp.StatusCode != http.StatusForbidden {
		t.Errorf("logout without a CSRF token: %d, want 403", resp.StatusCode)
	}
	if resp, _ := b2.get("/"); resp.StatusCode != http.StatusOK {
		t.Errorf("still signed in after a refused logout: %d", resp.StatusCode)
	}
}

func mustURL(t *testing.T, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// ---- 5. Security headers ----

// cspDirective returns the sources of directive name in a CSP header.
func cspDirective(csp, name string) []string {
	for _, d := range strings.Split(csp, ";") {
		f := strings.Fields(d)
		if len(f) > 0 && f[0] == name {
			return f[1:]
		}
	}
	return nil
}

func checkPageHeaders(t *testing.T, name string, resp *http.Response) {
	t.Helper()
	h := resp.Header
	csp := h.Get("Content-Security-Policy")
	if !slices.Equal(cspDirective(csp, "frame-ancestors"), []string{"'none'"}) ||
		!slices.Equal(cspDirective(csp, "default-src"), []string{"'none'"}) {
		t.Errorf("%s: CSP %q; want frame-ancestors 'none' and default-src 'none'", name, csp)
	}
	for k, want := range map[string]string{
		"X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer", "Cache-Control": "no-store",
		"X-Content-Type-Options": "nosniff",
	} {
		if got := h.Get(k); got != want {
			t.Errorf("%s: %s = %q, want %q", name, k, got, want)
		}
	}
	if !strings.HasPrefix(h.Get("Content-Type"), "text/html") {
		t.Errorf("%s: Content-Type %q, want an HTML page", name, h.Get("Content-Type"))
	}
}

func TestSecurityHeadersOnEveryPage(t *testing.T) {
	e := newEnv(t)
	b := e.browser()
	resp, _ := b.get("/login")
	checkPageHeaders(t, "login", resp)
	resp, _ = b.get("/authorize?client_id=nobody")
	checkPageHeaders(t, "error (unknown client)", resp)
	resp, _ = b.post("/login", url.Values{"username": {"alice"}})
	checkPageHeaders(t, "error (CSRF)", resp)
	resp, _ = b.get("/consent?req=unknown")
	checkPageHeaders(t, "error (expired request)", resp)

	conf := e.oauthConfig(publicClient, "")
	resp, _ = b.get(conf.AuthCodeURL("s", oauth2.S256ChallengeOption(pkce()), oauth2.SetAuthURLParam("resource", resourceURI)))
	consent := resp.Header.Get("Location")
	req := strings.TrimPrefix(consent, authserver.PathConsent+"?req=")
	// The login page of a pending request may lead straight to the client.
	resp, _ = b.get("/login?req=" + url.QueryEscape(req))
	checkPageHeaders(t, "login (pending request)", resp)
	if fa := cspDirective(resp.Header.Get("Content-Security-Policy"), "form-action"); !slices.Contains(fa, "http://127.0.0.1") {
		t.Errorf("login page of a pending request: form-action %v lacks the client's redirect origin", fa)
	}
	b.login("alice", url.Values{"req": {req}})
	resp, _ = b.get(consent)
	checkPageHeaders(t, "consent", resp)
	if fa := cspDirective(resp.Header.Get("Content-Security-Policy"), "form-action"); !slices.Equal(fa, []string{"'self'", "http://127.0.0.1"}) {
		t.Errorf("consent: form-action %v; want 'self' and the client's redirect origin", fa)
	}
	resp, _ = b.get("/")
	checkPageHeaders(t, "home", resp)
	resp, page := b.get("/device")
	checkPageHeaders(t, "device", resp)

	s, da := e.deviceAuthorize(publicClient)
	if s != 200 {
		t.Fatalf("device authorization: %d %v", s, da)
	}
	resp, body := b.post("/device", url.Values{"user_code": {da["user_code"].(string)}, "csrf_token": {csrf(t, page)}})
	checkPageHeaders(t, "device confirmation", resp)
	resp, _ = b.post("/device/decide", url.Values{"user_code": {da["user_code"].(string)}, "decision": {"deny"}, "csrf_token": {csrf(t, body)}})
	checkPageHeaders(t, "device done", resp)
	resp, _ = b.post("/device", url.Values{"user_code": {"BCDF-GHJK"}, "csrf_token": {csrf(t, page)}})
	checkPageHeaders(t, "device (wrong code)", resp)

	// A loopback redirect on another port: form-action names that origin.
	resp, _ = b.get(conf.AuthCodeURL("s", oauth2.S256ChallengeOption(pkce()), oauth2.SetAuthURLParam("resource", resourceURI),
		oauth2.SetAuthURLParam("redirect_uri", "http://127.0.0.1:49152/callback"), oauth2.SetAuthURLParam("scope", "mail.send")))
	resp, _ = b.get(resp.Header.Get("Location"))
	if fa := cspDirective(resp.Header.Get("Content-Security-Policy"), "form-action"); resp.StatusCode != 200 ||
		!slices.Equal(fa, []string{"'self'", "http://127.0.0.1:49152"}) {
		t.Errorf("consent with a port: %d, form-action %v; want 'self' http://127.0.0.1:49152", resp.StatusCode, fa)
	}
}

// ---- 6. Resource and scope defaults ----

func TestResourceRequiredWithoutDefault(t *testing.T) {
	e := newEnv(t)
	conf := e.oauthConfig(publicClient, "")
	resp, _ := e.browser().get(conf.AuthCodeURL("st", oauth2.S256ChallengeOption(pkce())))
	loc := location(t, resp, http.StatusFound)
	if !strings.HasPrefix(loc.String(), redirectURI+"?") || loc.Query().Get("error") != "invalid_target" ||
		loc.Query().Get("state") != "st" || loc.Query().Get("iss") != e.issuer {
		t.Errorf("authorize without resource: %v; want invalid_target at the client", loc)
	}
	if s, out := e.deviceAuthorize(publicClient, "resource", ""); s != 400 || out["error"] != "invalid_target" {
		t.Errorf("device authorization without resource: %d %v; want invalid_target", s, out)
	}
}

func TestDefaultResource(t *testing.T) {
	e := newEnvWith(t, envOptions{defaultResource: otherURI})
	ctx := context.Background()
	conf := e.oauthConfig(publicClient, "")
	verifier := pkce()
	back := e.browser().authorize(conf.AuthCodeURL("st", oauth2.S256ChallengeOption(verifier)), "alice", true)
	tok, err := conf.Exchange(ctx, back.Query().Get("code"), oauth2.VerifierOption(verifier))
	if err != nil {
		t.Fatalf("Exchange: %v", err)
	}
	if c, err := e.keys.Verify(ctx, tok.AccessToken); err != nil || c.Audience != otherURI || !slices.Equal(c.Scopes, []string{"x"}) {
		t.Errorf("token without a resource parameter: %+v, %v; want aud = the default resource and its default scopes", c, err)
	}
}

func TestScopeDefaultsAndOfflineAccess(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	// No scope: the resource's default scopes, and no refresh token.
	code, verifier := e.code("")
	s, tok, _ := e.token(codeForm(code, verifier))
	if s != 200 || tok["scope"] != "mail.read" || tok["refresh_token"] != nil {
		t.Fatalf("no scope requested: %d %v; want scope mail.read and no refresh token", s, tok)
	}
	if c, err := e.keys.Verify(ctx, tok["access_token"].(string)); err != nil || !slices.Equal(c.Scopes, []string{"mail.read"}) {
		t.Errorf("claims: %+v %v", c, err)
	}
	// Scopes without offline_access: no refresh token.
	code, verifier = e.code("mail.read mail.send")
	s, tok, _ = e.token(codeForm(code, verifier))
	if s != 200 || tok["scope"] != "mail.read mail.send" || tok["refresh_token"] != nil {
		t.Errorf("without offline_access: %d %v; want no refresh token", s, tok)
	}
	// With it: a refresh token, and offline_access is not in the access token.
	code, verifier = e.code("mail.send offline_access")
	s, tok, _ = e.token(codeForm(code, verifier))
	if s != 200 || tok["refresh_token"] == nil || tok["scope"] != "mail.send" {
		t.Errorf("with offline_access: %d %v; want a refresh token and scope mail.send", s, tok)
	}
}

// ---- 7. Introspection: audience, expiry, revocation by the user ----

func TestIntrospectionOnlyForTheAudience(t *testing.T) {
	e := newEnv(t)
	code, verifier := e.code("mail.read")
	_, tok, _ := e.token(codeForm(code, verifier))
	at := tok["access_token"].(string)
	if got := e.introspect(otherID, otherSecret, at); got["active"] != false || len(got) != 1 {
		t.Errorf("introspection by MCP server B of a token for A = %v; want only active:false", got)
	}
	if got := e.introspect(resourceID, resourceSecret, at); got["active"] != true {
		t.Errorf("introspection by the audience = %v", got)
	}
	// An OAuth client is not an MCP server.
	if got := e.introspect(confClient, confSecret, at); got["error"] != "invalid_client" {
		t.Errorf("introspection by a client = %v; want invalid_client", got)
	}
	// Tampered token: inactive.
	if got := e.introspect(resourceID, resourceSecret, at[:len(at)-4]+"AAAA"); got["active"] != false {
		t.Errorf("tampered token = %v", got)
	}
}

func TestIntrospectionExpiredToken(t *testing.T) {
	clock := testenv.NewClock(time.Now())
	e := newEnvWith(t, envOptions{now: clock.Now})
	code, verifier := e.code("mail.read")
	_, tok, _ := e.token(codeForm(code, verifier))
	at := tok["access_token"].(string)
	if got := e.introspect(resourceID, resourceSecret, at); got["active"] != true {
		t.Fatalf("fresh token = %v", got)
	}
	clock.Advance(10*time.Minute + token.ClockSkew + time.Second)
	if got := e.introspect(resourceID, resourceSecret, at); got["active"] != false || len(got) != 1 {
		t.Errorf("expired token = %v; want only active:false", got)
	}
}

func TestRevokeGrantFromHomePage(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	alice := e.browser()
	conf := e.oauthConfig(publicClient, "")
	verifier := pkce()
	back := alice.authorize(conf.AuthCodeURL("s", oauth2.S256ChallengeOption(verifier), oauth2.SetAuthURLParam("resource", resourceURI),
		oauth2.SetAuthURLParam("scope", "mail.read offline_access")), "alice", true)
	s, tok, _ := e.token(codeForm(back.Query().Get("code"), verifier))
	if s != 200 {
		t.Fatalf("exchange: %d %v", s, tok)
	}
	at := tok["access_token"].(string)
	_, home := alice.get("/")
	m := grantRE.FindStringSubmatch(home)
	if m == nil {
		t.Fatalf("home page lists no grant:\n%s", home)
	}
	grantID := m[1]

	// bob cannot revoke alice's grant, nor learn that it exists.
	bob := e.browser()
	bob.login("bob", url.Values{})
	_, bobHome := bob.get("/")
	resp, body := bob.post("/grants/revoke", url.Values{"grant": {grantID}, "csrf_token": {csrf(t, bobHome)}})
	if resp.StatusCode != http.StatusNotFound || !strings.Contains(body, "<h1>") {
		t.Errorf("bob revoking alice's grant: %d; want a 404 page", resp.StatusCode)
	}
	checkPageHeaders(t, "revoke error", resp)
	_, unknown := bob.post("/grants/revoke", url.Values{"grant": {"no-such-grant"}, "csrf_token": {csrf(t, bobHome)}})
	if stripped := strings.ReplaceAll(body, grantID, ""); stripped != unknown {
		t.Errorf("bob can tell alice's grant from an unknown one")
	}
	if g, err := e.store.Grants().Get(ctx, grantID); err != nil || g.Revoked() {
		t.Fatalf("alice's grant after bob's attempt: %+v %v", g, err)
	}
	if got := e.introspect(resourceID, resourceSecret, at); got["active"] != true {
		t.Fatalf("token inactive after bob's refused revoke: %v", got)
	}
	// Without the CSRF token: refused.
	if resp, _ := alice.post("/grants/revoke", url.Values{"grant": {grantID}}); resp.StatusCode != http.StatusForbidden {
		t.Errorf("revoke without CSRF: %d, want 403", resp.StatusCode)
	}
	// alice revokes it.
	resp, _ = alice.post("/grants/revoke", url.Values{"grant": {grantID}, "csrf_token": {csrf(t, home)}})
	if loc := location(t, resp, http.StatusSeeOther); loc.Path != "/" {
		t.Errorf("after revoking: redirect to %v", loc)
	}
	if got := e.introspect(resourceID, resourceSecret, at); got["active"] != false {
		t.Errorf("token of a revoked grant = %v; want active:false", got)
	}
	if s, out, _ := e.token(url.Values{"grant_type": {"refresh_token"}, "refresh_token": {tok["refresh_token"].(string)},
		"client_id": {publicClient}}); s != 400 || out["error"] != "invalid_grant" {
		t.Errorf("refresh of a revoked grant: %d %v", s, out)
	}
	if _, home := alice.get("/"); strings.Contains(home, grantID) {
		t.Errorf("home page still lists the revoked grant")
	}
}

// ---- 8. Hygiene of the JSON endpoints ----

func TestOAuthEndpointsRefuseMalformedRequests(t *testing.T) {
	e := newEnv(t)
	for _, path := range []string{"/token", "/revoke", "/introspect", authserver.PathDeviceAuth} {
		check := func(name string, s int, out map[string]any, body string, hdr http.Header, wantStatus int, wantErr string) {
			t.Helper()
			if s != wantStatus || (wantErr != "" && out["error"] != wantErr) || out["error"] == nil {
				t.Errorf("%s %s: %d %s; want %d with error %s", path, name, s, body, wantStatus, wantErr)
			}
			if !strings.HasPrefix(hdr.Get("Content-Type"), "application/json") {
				t.Errorf("%s %s: Content-Type %q", path, name, hdr.Get("Content-Type"))
			}
			for _, bad := range []string{"panic", "goroutine", ".go:", "runtime/"} {
				if strings.Contains(body, bad) {
					t.Errorf("%s %s: body contains %q: %s", path, name, bad, body)
				}
			}
		}
		req, _ := http.NewRequest(http.MethodGet, e.issuer+path+"?client_id=agent", nil)
		s, out, body, hdr := e.do(req)
		check("GET", s, out, body, hdr, http.StatusMethodNotAllowed, "")

		req, _ = http.NewRequest(http.MethodPost, e.issuer+path, strings.NewReader(`{"client_id":"agent","grant_type":"refresh_token","token":"x"}`))
		req.Header.Set("Content-Type", "application/json")
		req.SetBasicAuth(resourceID, resourceSecret)
		s, out, body, hdr = e.do(req)
		check("JSON body", s, out, body, hdr, http.StatusBadRequest, "invalid_request")

		req, _ = http.NewRequest(http.MethodPost, e.issuer+path+"?client_id=agent", strings.NewReader("grant_type=refresh_token&token=x"))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		s, out, body, hdr = e.do(req)
		check("query parameters", s, out, body, hdr, http.StatusBadRequest, "invalid_request")

		for name, form := range map[string]string{
			"malformed form": "client_id=%zz&token=x",
			"invalid UTF-8":  "client_id=agent&token=%ff%fe",
			"NUL byte":       "client_id=agent&token=a%00b",
			"duplicate":      "client_id=agent&client_id=agent&token=x",
		} {
			req, _ = http.NewRequest(http.MethodPost, e.issuer+path, strings.NewReader(form))
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			s, out, body, hdr = e.do(req)
			check(name, s, out, body, hdr, http.StatusBadRequest, "invalid_request")
		}
		// Malformed Basic credentials.
		req, _ = http.NewRequest(http.MethodPost, e.issuer+path, strings.NewReader("token=x&grant_type=refresh_token&refresh_token=x"))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.SetBasicAuth("%zz", "%zz")
		s, out, body, hdr = e.do(req)
		check("bad Basic", s, out, body, hdr, http.StatusUnauthorized, "invalid_client")
	}
	// Registration is JSON only, and POST only.
	req, _ := http.NewRequest(http.MethodGet, e.issuer+authserver.PathRegister, nil)
	if s, out, body, _ := e.do(req); s != http.StatusMethodNotAllowed || out["error"] == nil {
		t.Errorf("GET /register: %d %s", s, body)
	}
	req, _ = http.NewRequest(http.MethodPost, e.issuer+authserver.PathRegister, strings.NewReader("client_name=x"))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if s, out, body, _ := e.do(req); s/100 != 4 || out["error"] != "invalid_request" {
		t.Errorf("form POST /register: %d %s", s, body)
	}
}

// ---- 9. Device flow outcomes ----

func TestDeviceFlowDenied(t *testing.T) {
	e := newEnv(t)
	s, da := e.deviceAuthorize(publicClient)
	if s != 200 {
		t.Fatalf("device authorization: %d %v", s, da)
	}
	e.decideDevice(da["user_code"].(string), false)
	dc := da["device_code"].(string)
	if s, out := e.pollDevice(publicClient, dc); s != 400 || out["error"] != "access_denied" {
		t.Errorf("poll after denial: %d %v; want access_denied", s, out)
	}
	if s, out := e.pollDevice(publicClient, dc); s == 200 {
		t.Errorf("second poll after denial issued a token: %v", out)
	}
	// A denied code cannot be approved afterwards.
	b := e.browser()
	b.login("alice", url.Values{})
	_, page := b.get("/device")
	if resp, _ := b.post("/device", url.Values{"user_code": {da["user_code"].(string)}, "csrf_token": {csrf(t, page)}}); resp.StatusCode != 400 {
		t.Errorf("entering a denied code: %d, want 400", resp.StatusCode)
	}
	if resp, _ := b.post("/device/decide", url.Values{"user_code": {da["user_code"].(string)}, "decision": {"approve"},
		"csrf_token": {csrf(t, page)}}); resp.StatusCode != 400 {
		t.Errorf("approving a denied code: %d, want 400", resp.StatusCode)
	}
	if s, out := e.pollDevice(publicClient, dc); s == 200 {
		t.Errorf("token for a denied code: %v", out)
	}
	// The refused approval left no grant behind: a grant is remembered
	// consent, and would let the client skip the consent screen.
	grants, err := e.store.Grants().List(context.Background(), broker.Query{Index: broker.IndexUser, Value: "id-alice", Limit: broker.MaxLimit})
	if err != nil {
		t.Fatal(err)
	}
	if len(grants.Items) != 0 {
		t.Errorf("approving a denied device code created or changed grants: %+v", grants.Items)
	}
	conf := e.oauthConfig(publicClient, "")
	resp, _ := b.get(conf.AuthCodeURL("s", oauth2.S256ChallengeOption(pkce()), oauth2.SetAuthURLParam("resource", resourceURI)))
	if resp, _ := b.get(resp.Header.Get("Location")); resp.StatusCode != http.StatusOK {
		t.Errorf("code flow after a refused device approval: %d %q; want the consent screen", resp.StatusCode, resp.Header.Get("Location"))
	}
}

func TestDeviceCodeExpired(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	s, da := e.deviceAuthorize(publicClient)
	if s != 200 || da["expires_in"] != float64(600) {
		t.Fatalf("device authorization: %d %v", s, da)
	}
	dc := da["device_code"].(string)
	if _, err := e.store.DeviceCodes().Update(ctx, broker.HashSecret(dc), func(d broker.DeviceCode) (broker.DeviceCode, error) {
		d.ExpiresAt = time.Now().Add(-time.Second)
		return d, nil
	}); err != nil {
		t.Fatal(err)
	}
	s, out, _, _ := e.postForm("/token", url.Values{"grant_type": {authserver.GrantDeviceCode}, "device_code": {dc}, "client_id": {publicClient}})
	if s != 400 || out["error"] != "expired_token" {
		t.Errorf("poll of an expired device code: %d %v; want expired_token", s, out)
	}
	// Its user code is no longer accepted either.
	b := e.browser()
	b.login("alice", url.Values{})
	_, page := b.get("/device")
	if resp, _ := b.post("/device", url.Values{"user_code": {da["user_code"].(string)}, "csrf_token": {csrf(t, page)}}); resp.StatusCode != 400 {
		t.Errorf("entering an expired code: %d, want 400", resp.StatusCode)
	}
}

func TestDeviceAuthorizationNeedsTheDeviceGrant(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	if err := e.store.Clients().Create(ctx, broker.Client{ID: "code-only", Kind: broker.ClientStatic, Name: "Code only",
		RedirectURIs: []string{redirectURI}, GrantTypes: []string{authserver.GrantAuthorizationCode, authserver.GrantRefreshToken},
		CreatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	// No grant_types at all means authorization_code and refresh_token.
	if err := e.store.Clients().Create(ctx, broker.Client{ID: "defaults", Kind: broker.ClientStatic, Name: "Defaults",
		RedirectURIs: []string{redirectURI}, CreatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"code-only", "defaults"} {
		if s, out := e.deviceAuthorize(id); s != 400 || out["error"] != "unauthorized_client" {
			t.Errorf("%s: %d %v; want unauthorized_client", id, s, out)
		}
		// Nor can it poll with the grant type.
		s, out, _, _ := e.postForm("/token", url.Values{"grant_type": {authserver.GrantDeviceCode}, "device_code": {"x"}, "client_id": {id}})
		if s != 400 || out["error"] != "unauthorized_client" {
			t.Errorf("%s polling: %d %v; want unauthorized_client", id, s, out)
		}
	}
	page, err := e.store.DeviceCodes().List(ctx, broker.Query{Limit: broker.MaxLimit})
	if err != nil {
		t.Fatal(err)
	}
	if len(page.Items) != 0 {
		t.Errorf("refused device authorizations left %d device codes", len(page.Items))
	}
}
