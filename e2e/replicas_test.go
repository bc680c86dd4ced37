package e2e

// Several Lanyard replicas on one etcd cluster and one Vault (issue 7,
// items 2-4): three `lanyard` processes built from cmd/lanyard share a
// 3-member etcd cluster (testenv.StartEtcdCluster, store.backend etcd) and
// the real Vault (testenv.Vault, one Vault prefix), behind one issuer URL: a
// small reverse proxy in this file that sends each request to the replica
// the test names (header X-Replica: 0, 1 or 2). Every check goes through
// HTTP as a browser, an agent or an MCP server would.

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lanyardhq/lanyard/broker"
	"github.com/lanyardhq/lanyard/internal/etcd"
	"github.com/lanyardhq/lanyard/internal/testenv"
	"github.com/lanyardhq/lanyard/vault"
)

const (
	repMCPURI    = "https://mcp.example.test/mcp"
	repMCPID     = "mcp"
	repAgent     = "agent"
	repRedirect  = "http://127.0.0.1/callback"
	repUser      = "alice"
	replicaCount = 3
)

// replicas is three running Lanyard processes behind one issuer.
type replicas struct {
	bin       string
	issuer    string // the proxy: https:// (serve) or http:// (dev)
	locals    []string
	cfgs      []string // each replica's config file
	env       []string // the replicas' environment (Vault, bootstrap, MCP secret)
	password  string
	mcpSecret string
	etcdEPs   []string
	prefix    string // etcd prefix
	vaultPfx  string
	vaultAddr string
	vaultTok  string
	client    *http.Client // trusts the proxy's certificate
	cluster   *testenv.EtcdCluster
	cmds      []*exec.Cmd // the replicas' processes (TestReplicaFaults kills and restarts them)
}

// replicaOptions: dev runs `lanyard dev --config` (only dev mode lets the
// oauth2 connector reach the plain-http loopback test provider); else
// `lanyard serve --config` behind an https issuer. connectors, if set, is
// called with the issuer URL once the proxy listens and before the
// replicas start, and returns more connectors (YAML) for the config.
type replicaOptions struct {
	dev        bool
	connectors func(issuer string) string
}

func buildLanyard(t *testing.T) string {
	t.Helper()
	if bin := os.Getenv("E2E_LANYARD_BIN"); bin != "" {
		return bin
	}
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(t.TempDir(), "lanyard")
	ctx, cancel := context.WithTimeout(context.Background(), buildTimeout)
	defer cancel()
	build := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/lanyard")
	build.Dir = filepath.Dir(dir)
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/lanyard: %v\n%s", err, out)
	}
	return bin
}

func startReplicas(t *testing.T, o replicaOptions) *replicas {
	t.Helper()
	vaultAddr, vaultTok := testenv.Vault(t)
	cluster := testenv.StartEtcdCluster(t, 3)
	r := &replicas{
		bin: buildLanyard(t), password: randomHex(t, 12), mcpSecret: randomHex(t, 32),
		etcdEPs: cluster.Endpoints(), prefix: "/lanyard-e2e-" + randomHex(t, 6) + "/",
		vaultPfx: "lanyard-e2e-" + randomHex(t, 6), vaultAddr: vaultAddr, vaultTok: vaultTok,
		cluster: cluster,
	}
	ports := make([]int, replicaCount)
	for i := range ports {
		ports[i] = testenv.FreePort(t)
		r.locals = append(r.locals, "http://"+testenv.Addr(ports[i]))
	}

	// The proxy: X-Replica picks the replica, else round robin.
	var next sync.Mutex
	rr := 0
	proxies := make([]*httputil.ReverseProxy, replicaCount)
	for i, l := range r.locals {
		u, _ := url.Parse(l)
		proxies[i] = httputil.NewSingleHostReverseProxy(u)
	}
	lb := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		i, err := strconv.Atoi(req.Header.Get("X-Replica"))
		if err != nil || i < 0 || i >= replicaCount {
			next.Lock()
			i, rr = rr, (rr+1)%replicaCount
			next.Unlock()
		}
		req.Header.Del("X-Replica")
		proxies[i].ServeHTTP(w, req)
	}))
	if o.dev {
		lb.Start()
		r.client = &http.Client{Transport: http.DefaultTransport.(*http.Transport).Clone()}
	} else {
		lb.StartTLS()
		r.client = lb.Client()
	}
	t.Cleanup(lb.Close)
	r.issuer = lb.URL
	r.client.Transport.(*http.Transport).MaxIdleConnsPerHost = 64

	conns, names := "", "weather"
	if o.connectors != nil {
		conns, names = o.connectors(r.issuer), "weather, up"
	}
	tmp := t.TempDir()
	r.env = append(baseEnv(),
		"VAULT_TOKEN="+vaultTok, "E2E_MCP_SECRET="+r.mcpSecret,
		"LANYARD_BOOTSTRAP_USER="+repUser, "LANYARD_BOOTSTRAP_PASSWORD="+r.password)
	for i := range replicaCount {
		cfg := fmt.Sprintf(`# written by replicas_test.go: replica %d
issuer: %s
listen: %s
data_dir: %s
log: {level: info, format: text}
store:
  backend: etcd
  etcd:
    endpoints: [%s]
    prefix: %s
secrets:
  backend: vault
  vault: {address: %s, token: "${VAULT_TOKEN}", prefix: %s}
oauth:
  device_interval: 1s
  registration: {enabled: true, rate_per_minute: 5}
resources:
  - id: %s
    uri: %s
    name: Test MCP server
    scopes: [tools]
    client_secret: ${E2E_MCP_SECRET}
    connectors: [%s]
    policy: {default: allow}
clients:
  - client_id: %s
    name: Test agent
    redirect_uris: [%q]
    grant_types: [authorization_code, refresh_token, "urn:ietf:params:oauth:grant-type:device_code"]
connectors:
  - name: weather
    kind: apikey
    display_name: Weather API
    apikey: {header: X-API-Key}
%s`, i, r.issuer, testenv.Addr(ports[i]), filepath.Join(tmp, fmt.Sprintf("data-%d", i)),
			strings.Join(r.etcdEPs, ", "), r.prefix, vaultAddr, r.vaultPfx,
			repMCPID, repMCPURI, names, repAgent, repRedirect, conns)
		path := filepath.Join(tmp, fmt.Sprintf("replica-%d.yaml", i))
		if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
			t.Fatal(err)
		}
		r.cfgs = append(r.cfgs, path)
	}
	// One after the other: the first bootstraps the admin and the keys.
	for i := range replicaCount {
		var cmd *exec.Cmd
		if o.dev {
			cmd = exec.Command(r.bin, "dev", "--config", r.cfgs[i], "--addr", testenv.Addr(ports[i]),
				"--data", filepath.Join(tmp, fmt.Sprintf("data-%d", i)))
		} else {
			cmd = exec.Command(r.bin, "serve", "--config", r.cfgs[i])
		}
		cmd.Env = r.env
		testenv.Start(t, cmd)
		r.cmds = append(r.cmds, cmd)
		testenv.WaitTCP(t, testenv.Addr(ports[i]), startTimeout)
		waitHTTP(t, r.locals[i]+"/readyz", startTimeout)
	}
	return r
}

// do sends req to replica i (through the proxy).
func (r *replicas) do(t *testing.T, i int, req *http.Request) (*http.Response, []byte) {
	t.Helper()
	req.Header.Set("X-Replica", strconv.Itoa(i))
	resp, err := r.client.Transport.RoundTrip(req)
	if err != nil {
		t.Fatalf("%s %s on replica %d: %v", req.Method, req.URL.Path, i, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp, body
}

// form POSTs an OAuth form to replica i and decodes the JSON answer.
func (r *replicas) form(t *testing.T, i int, path string, v url.Values, basic ...string) (int, map[string]any) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, r.issuer+path, strings.NewReader(v.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if len(basic) == 2 {
		req.SetBasicAuth(basic[0], basic[1])
	}
	resp, body := r.do(t, i, req)
	var out map[string]any
	_ = json.Unmarshal(body, &out)
	return resp.StatusCode, out
}

// redeem calls /v1/redeem on replica i as the MCP server.
func (r *replicas) redeem(t *testing.T, i int, tok, connector string) (int, map[string]any) {
	t.Helper()
	b, _ := json.Marshal(map[string]string{"token": tok, "connector": connector, "tool": "forecast"})
	req, _ := http.NewRequest(http.MethodPost, r.issuer+"/v1/redeem", strings.NewReader(string(b)))
	req.Header.Set("Content-Type", "application/json")
	req.SetBasicAuth(repMCPID, r.mcpSecret)
	resp, body := r.do(t, i, req)
	var out map[string]any
	_ = json.Unmarshal(body, &out)
	return resp.StatusCode, out
}

// browser is a user's browser whose every request goes to a replica the
// test names; cookies are shared, so the session moves between replicas.
type browser struct {
	r   *replicas
	jar http.CookieJar
}

func (r *replicas) browser() *browser {
	jar, _ := cookiejar.New(nil)
	return &browser{r: r, jar: jar}
}

func (b *browser) do(t *testing.T, i int, method, path string, form url.Values) (*http.Response, string) {
	t.Helper()
	u := path
	if strings.HasPrefix(path, "/") {
		u = b.r.issuer + path
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
	for _, c := range b.jar.Cookies(req.URL) {
		req.AddCookie(c)
	}
	resp, raw := b.r.do(t, i, req)
	b.jar.SetCookies(req.URL, resp.Cookies())
	return resp, string(raw)
}

var (
	repCSRF = regexp.MustCompile(`name="csrf_token" value="([^"]+)"`)
	repConn = regexp.MustCompile(`name="connection" value="([^"]+)"`)
)

func csrfOf(t *testing.T, page string) string {
	t.Helper()
	m := repCSRF.FindStringSubmatch(page)
	if m == nil {
		t.Fatalf("no CSRF token in page:\n%s", page)
	}
	return m[1]
}

// login signs the browser in on replica i.
func (b *browser) login(t *testing.T, i int, req string) {
	t.Helper()
	_, page := b.do(t, i, http.MethodGet, "/login?"+url.Values{"req": {req}}.Encode(), nil)
	resp, body := b.do(t, i, http.MethodPost, "/login", url.Values{"username": {repUser}, "password": {b.r.password},
		"csrf_token": {csrfOf(t, page)}, "req": {req}})
	if resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("login on replica %d: %d\n%s", i, resp.StatusCode, body)
	}
}

// linkAPIKey links a Weather API key on replica i.
func (b *browser) linkAPIKey(t *testing.T, i int, key string) {
	t.Helper()
	_, page := b.do(t, i, http.MethodGet, "/accounts/link?connector=weather", nil)
	resp, body := b.do(t, i, http.MethodPost, "/accounts/link", url.Values{"connector": {"weather"}, "api_key": {key},
		"csrf_token": {csrfOf(t, page)}})
	if resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("link on replica %d: %d\n%s", i, resp.StatusCode, body)
	}
}

// pkce returns a verifier and its S256 challenge.
func pkce(t *testing.T) (verifier, challenge string) {
	verifier = randomHex(t, 32)
	sum := sha256.Sum256([]byte(verifier))
	return verifier, base64.RawURLEncoding.EncodeToString(sum[:])
}

// authorize starts the code flow on replica at, consents on replica on
// (signing in there first if needed) with the connections whose IDs
// choose picks from the page, and returns the code and verifier.
func (b *browser) authorize(t *testing.T, at, on int, choose func(ids []string) []string) (code, verifier string) {
	t.Helper()
	verifier, challenge := pkce(t)
	q := url.Values{"response_type": {"code"}, "client_id": {repAgent}, "redirect_uri": {repRedirect},
		"code_challenge": {challenge}, "code_challenge_method": {"S256"}, "state": {"st"},
		"resource": {repMCPURI}, "scope": {"tools offline_access"}}
	resp, body := b.do(t, at, http.MethodGet, "/authorize?"+q.Encode(), nil)
	next := resp.Header.Get("Location")
	if !strings.HasPrefix(next, "/consent?req=") {
		t.Fatalf("authorize on replica %d: %d %q\n%s", at, resp.StatusCode, next, body)
	}
	req := strings.TrimPrefix(next, "/consent?req=")
	resp, page := b.do(t, on, http.MethodGet, next, nil)
	if resp.StatusCode == http.StatusSeeOther && strings.HasPrefix(resp.Header.Get("Location"), "/login") {
		b.login(t, on, req)
		resp, page = b.do(t, on, http.MethodGet, next, nil)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("consent page on replica %d: %d %q", on, resp.StatusCode, resp.Header.Get("Location"))
	}
	var ids []string
	for _, m := range repConn.FindAllStringSubmatch(page, -1) {
		ids = append(ids, m[1])
	}
	resp, body = b.do(t, on, http.MethodPost, "/consent", url.Values{"req": {req}, "decision": {"approve"},
		"csrf_token": {csrfOf(t, page)}, "connection": choose(ids)})
	loc, err := url.Parse(resp.Header.Get("Location"))
	if resp.StatusCode != http.StatusSeeOther || err != nil || loc.Query().Get("code") == "" {
		t.Fatalf("consent on replica %d: %d %q\n%s", on, resp.StatusCode, resp.Header.Get("Location"), body)
	}
	return loc.Query().Get("code"), verifier
}

func all(ids []string) []string { return ids }

// token redeems a code at replica i.
func (r *replicas) token(t *testing.T, i int, code, verifier string) (int, map[string]any) {
	t.Helper()
	return r.form(t, i, "/token", url.Values{"grant_type": {"authorization_code"}, "code": {code},
		"redirect_uri": {repRedirect}, "client_id": {repAgent}, "code_verifier": {verifier}})
}

// accessToken runs authorize (at), consent (on) and token (tok) and returns
// the access token and its grant ID.
func (b *browser) accessToken(t *testing.T, at, on, tok int, choose func([]string) []string) (string, string) {
	t.Helper()
	code, verifier := b.authorize(t, at, on, choose)
	st, out := b.r.token(t, tok, code, verifier)
	at2, _ := out["access_token"].(string)
	if st != http.StatusOK || at2 == "" {
		t.Fatalf("token on replica %d: %d %v", tok, st, out)
	}
	return at2, grantOf(t, at2)
}

// grantOf reads the grant_id claim of a JWT (no verification: the replicas
// verify it).
func grantOf(t *testing.T, jwt string) string {
	t.Helper()
	parts := strings.Split(jwt, ".")
	if len(parts) != 3 {
		t.Fatalf("not a JWT: %q", jwt)
	}
	raw, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatal(err)
	}
	var c struct {
		GrantID string `json:"grant_id"`
	}
	if err := json.Unmarshal(raw, &c); err != nil || c.GrantID == "" {
		t.Fatalf("no grant_id in %s: %v", raw, err)
	}
	return c.GrantID
}

// revokeGrant revokes a grant on the "my agents" page of replica i.
func (b *browser) revokeGrant(t *testing.T, i int, grant string) {
	t.Helper()
	_, home := b.do(t, i, http.MethodGet, "/", nil)
	resp, body := b.do(t, i, http.MethodPost, "/grants/revoke", url.Values{"grant": {grant}, "csrf_token": {csrfOf(t, home)}})
	if resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("revoke on replica %d: %d\n%s", i, resp.StatusCode, body)
	}
}

// unlink removes a connection on replica i.
func (b *browser) unlink(t *testing.T, i int, conn string) {
	t.Helper()
	_, page := b.do(t, i, http.MethodGet, "/accounts/unlink?connection="+url.QueryEscape(conn), nil)
	resp, body := b.do(t, i, http.MethodPost, "/accounts/unlink", url.Values{"connection": {conn}, "csrf_token": {csrfOf(t, page)}})
	if resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("unlink on replica %d: %d\n%s", i, resp.StatusCode, body)
	}
}

func (r *replicas) jwks(t *testing.T, i int) string {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, r.issuer+"/jwks.json", nil)
	resp, body := r.do(t, i, req)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("jwks on replica %d: %d", i, resp.StatusCode)
	}
	return string(body)
}

// openStore opens the replicas' etcd store, for looking behind their backs.
func (r *replicas) openStore(t *testing.T) *etcd.Store {
	t.Helper()
	s, err := etcd.Open(context.Background(), etcd.Options{Endpoints: r.etcdEPs, Prefix: r.prefix})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// waitSameMinuteLeft waits, if needed, until at least need is left of the
// current minute, so that a burst of attempts falls in one fixed window.
func waitSameMinuteLeft(need time.Duration) {
	now := time.Now()
	if left := now.Truncate(time.Minute).Add(time.Minute).Sub(now); left < need {
		time.Sleep(left + 100*time.Millisecond)
	}
}

// TestReplicas: a flow begun on one replica finishes on any other, every
// replica serves the same JWKS (also after `lanyard keys rotate`),
// single-use codes and refresh tokens are single-use across replicas, the
// propagation of revokes and unlinks to the next redemption on another
// replica is measured, and the sign-in and registration rate limits hold
// across replicas (last: they use up this address's sign-ins).
func TestReplicas(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test: skipped with -short")
	}
	r := startReplicas(t, replicaOptions{})
	const A, B, C = 0, 1, 2

	// The user links an API key on C in a browser of their own.
	setup := r.browser()
	setup.login(t, C, "")
	setup.linkAPIKey(t, C, "weather-key-0123456789")

	var access, refresh, code, verifier string
	t.Run("CodeFlowAcrossReplicas", func(t *testing.T) {
		b := r.browser()
		code, verifier = b.authorize(t, A, B, all) // authorize on A, login and consent on B
		st, out := r.token(t, C, code, verifier)   // token on C
		access, _ = out["access_token"].(string)
		refresh, _ = out["refresh_token"].(string)
		if st != http.StatusOK || access == "" || refresh == "" {
			t.Fatalf("token on C: %d %v", st, out)
		}
		st, out = r.redeem(t, A, access, "weather") // redeem on A
		cred, _ := out["credential"].(map[string]any)
		if st != http.StatusOK || cred["api_key"] != "weather-key-0123456789" {
			t.Errorf("redeem on A: %d %v", st, out)
		}
		for i := range replicaCount {
			if st, _ := r.redeem(t, i, access, "weather"); st != http.StatusOK {
				t.Errorf("redeem on replica %d: %d", i, st)
			}
		}
	})

	t.Run("SingleUseAcrossReplicas", func(t *testing.T) {
		st, out := r.form(t, B, "/token", url.Values{"grant_type": {"refresh_token"}, "refresh_token": {refresh}, "client_id": {repAgent}})
		if st != http.StatusOK || out["refresh_token"] == nil {
			t.Fatalf("refresh on B: %d %v", st, out)
		}
		if st, out := r.form(t, C, "/token", url.Values{"grant_type": {"refresh_token"}, "refresh_token": {refresh}, "client_id": {repAgent}}); st != http.StatusBadRequest || out["error"] != "invalid_grant" {
			t.Errorf("the used refresh token on C: %d %v, want 400 invalid_grant", st, out)
		}
		// The code, used on C, replayed on A: refused, and (RFC 9700
		// §4.2.4) the grant it made is revoked, on every replica.
		if st, out := r.token(t, A, code, verifier); st != http.StatusBadRequest || out["error"] != "invalid_grant" {
			t.Errorf("the code replayed on A: %d %v, want 400 invalid_grant", st, out)
		}
		for i := range replicaCount {
			if st, out := r.redeem(t, i, access, "weather"); st != http.StatusUnauthorized {
				t.Errorf("redeem on replica %d after the replays: %d %v, want 401", i, st, out)
			}
		}
	})

	t.Run("DeviceFlowAcrossReplicas", func(t *testing.T) {
		st, da := r.form(t, A, "/device_authorization", url.Values{"client_id": {repAgent}, "resource": {repMCPURI}, "scope": {"tools"}})
		userCode, _ := da["user_code"].(string)
		deviceCode, _ := da["device_code"].(string)
		if st != http.StatusOK || userCode == "" {
			t.Fatalf("device authorization on A: %d %v", st, da)
		}
		poll := func(i int) (int, map[string]any) {
			return r.form(t, i, "/token", url.Values{"grant_type": {"urn:ietf:params:oauth:grant-type:device_code"},
				"device_code": {deviceCode}, "client_id": {repAgent}})
		}
		if st, out := poll(C); st != http.StatusBadRequest || out["error"] != "authorization_pending" {
			t.Errorf("poll on C before approval: %d %v, want authorization_pending", st, out)
		}
		b := r.browser()
		b.login(t, B, "")
		_, page := b.do(t, B, http.MethodGet, "/device", nil)
		resp, confirm := b.do(t, B, http.MethodPost, "/device", url.Values{"user_code": {userCode}, "csrf_token": {csrfOf(t, page)}})
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("device code entry on B: %d\n%s", resp.StatusCode, confirm)
		}
		var ids []string
		for _, m := range repConn.FindAllStringSubmatch(confirm, -1) {
			ids = append(ids, m[1])
		}
		resp, body := b.do(t, B, http.MethodPost, "/device/decide", url.Values{"user_code": {userCode}, "decision": {"approve"},
			"connection": ids, "csrf_token": {csrfOf(t, confirm)}})
		if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusSeeOther {
			t.Fatalf("device approval on B: %d\n%s", resp.StatusCode, body)
		}
		time.Sleep(1100 * time.Millisecond) // the polling interval
		st, out := poll(C)
		tok, _ := out["access_token"].(string)
		if st != http.StatusOK || tok == "" {
			t.Fatalf("poll on C after approval on B: %d %v", st, out)
		}
		if st, _ := r.redeem(t, A, tok, "weather"); st != http.StatusOK {
			t.Errorf("redeem of the device-flow token on A: %d", st)
		}
		time.Sleep(1100 * time.Millisecond)
		if st, out := poll(B); st != http.StatusBadRequest || out["error"] != "invalid_grant" {
			t.Errorf("the device code polled again on B: %d %v, want invalid_grant", st, out)
		}
	})

	t.Run("SameJWKS", func(t *testing.T) {
		first := r.jwks(t, A)
		for i := 1; i < replicaCount; i++ {
			if got := r.jwks(t, i); got != first {
				t.Errorf("replica %d JWKS differs:\n%s\nreplica 0:\n%s", i, got, first)
			}
		}
		cmd := exec.Command(r.bin, "keys", "rotate", "--config", r.cfgs[B])
		cmd.Env = r.env
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("lanyard keys rotate against the shared stores (servers running): %v\n%s", err, out)
		}
		kid := strings.Fields(strings.TrimPrefix(string(out), "new signing key "))[0]
		// Replicas reload their keys every minute.
		deadline := time.Now().Add(75 * time.Second)
		for {
			var sets []string
			for i := range replicaCount {
				sets = append(sets, r.jwks(t, i))
			}
			if !slices.ContainsFunc(sets, func(s string) bool { return !strings.Contains(s, kid) }) {
				if sets[1] != sets[0] || sets[2] != sets[0] {
					t.Errorf("after rotation the replicas' JWKS differ:\n%s", strings.Join(sets, "\n"))
				}
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("the new key %s is not in every replica's JWKS after 75s:\n%s", kid, strings.Join(sets, "\n"))
			}
			time.Sleep(time.Second)
		}
	})

	t.Run("Propagation", func(t *testing.T) {
		u := r.browser()
		u.login(t, A, "")
		measure := func(t *testing.T, what string, trials int, trial func(t *testing.T) time.Duration) {
			var ds []time.Duration
			for range trials {
				ds = append(ds, trial(t))
			}
			slices.Sort(ds)
			p := func(q float64) time.Duration { return ds[min(len(ds)-1, int(q*float64(len(ds))))] }
			t.Logf("%s on A -> first refused redemption on B, %d trials: p50 %v, p99 %v, max %v",
				what, trials, p(0.50), p(0.99), ds[len(ds)-1])
			if p(0.99) > 100*time.Millisecond {
				t.Errorf("%s propagation p99 %v, want at most 100ms", what, p(0.99))
			}
		}
		// until redeems on B until it is refused, and returns the time from
		// since to that refusal; a revoke or unlink must never be honoured
		// later than 5 s.
		until := func(t *testing.T, tok string, since time.Time) time.Duration {
			for n := 0; ; n++ {
				st, out := r.redeem(t, B, tok, "weather")
				if st != http.StatusOK {
					if st != http.StatusUnauthorized && st != http.StatusForbidden {
						t.Errorf("refusal: %d %v", st, out)
					}
					if n > 0 {
						t.Errorf("%d redemptions on B accepted after the change on A had answered", n)
					}
					return time.Since(since)
				}
				if time.Since(since) > 5*time.Second {
					t.Fatalf("still redeemed on B 5s after the change on A")
				}
			}
		}
		measure(t, "grant revoke", 50, func(t *testing.T) time.Duration {
			tok, grant := u.accessToken(t, A, A, A, all)
			if st, _ := r.redeem(t, B, tok, "weather"); st != http.StatusOK {
				t.Fatalf("redeem on B before the revoke: %d", st)
			}
			u.revokeGrant(t, A, grant)
			return until(t, tok, time.Now())
		})
		var n int
		measure(t, "unlink", 20, func(t *testing.T) time.Duration {
			n++
			u.linkAPIKey(t, A, fmt.Sprintf("weather-key-%04d-0123456789", n))
			tok, grant := u.accessToken(t, A, A, A, all)
			g, err := r.openStore(t).Grants().Get(context.Background(), grant)
			if err != nil {
				t.Fatal(err)
			}
			if st, _ := r.redeem(t, B, tok, "weather"); st != http.StatusOK {
				t.Fatalf("redeem on B before the unlink: %d", st)
			}
			// Every weather connection of the user that is in the grant
			// goes, so that none can serve it.
			var last time.Time
			for _, id := range g.ConnectionIDs {
				u.unlink(t, A, id)
				last = time.Now()
			}
			d := until(t, tok, last)
			u.revokeGrant(t, A, grant)
			return d
		})
	})
	t.Run("SignInLimitAcrossReplicas", func(t *testing.T) {
		waitSameMinuteLeft(30 * time.Second)
		b := r.browser()
		_, page := b.do(t, A, http.MethodGet, "/login", nil)
		tok := csrfOf(t, page)
		var statuses []int
		refusedAt := -1
		for n := 0; n < 3*10+3 && (refusedAt < 0 || n < refusedAt+3); n++ {
			resp, _ := b.do(t, n%replicaCount, http.MethodPost, "/login", url.Values{"username": {"mallory"}, "password": {"guess"}, "csrf_token": {tok}})
			statuses = append(statuses, resp.StatusCode)
			if resp.StatusCode == http.StatusTooManyRequests && refusedAt < 0 {
				refusedAt = n
			}
		}
		// One address, the default 10 a minute: at most 10 attempts are
		// checked, whichever replicas they reach (3×10 if per replica), and
		// once refused every replica refuses.
		if refusedAt < 0 || refusedAt > 10 {
			t.Fatalf("sign-in attempts round robin over 3 replicas: %v; want 429 by the 11th", statuses)
		}
		for n := refusedAt; n < len(statuses); n++ {
			if statuses[n] != http.StatusTooManyRequests {
				t.Errorf("attempt %d (replica %d) after the limit: %d, want 429 (%v)", n+1, n%replicaCount, statuses[n], statuses)
			}
		}
		t.Logf("sign-in statuses: %v", statuses)
	})

	t.Run("RegistrationLimitAcrossReplicas", func(t *testing.T) {
		waitSameMinuteLeft(20 * time.Second)
		var statuses []int
		for n := range 8 {
			req, _ := http.NewRequest(http.MethodPost, r.issuer+"/register",
				strings.NewReader(`{"redirect_uris":["http://127.0.0.1/cb"],"token_endpoint_auth_method":"none","client_name":"n"}`))
			req.Header.Set("Content-Type", "application/json")
			resp, _ := r.do(t, n%replicaCount, req)
			statuses = append(statuses, resp.StatusCode)
		}
		want := []int{201, 201, 201, 201, 201, 429, 429, 429}
		if !slices.Equal(statuses, want) {
			t.Errorf("registrations round robin over 3 replicas with 5 a minute: %v, want %v", statuses, want)
		}
	})

}

// TestReplicasRefresh: three replicas, 50 concurrent redemptions each, for
// one connection whose upstream OAuth token has just expired: the real
// OpenID provider (refresh tokens rotated, reuse revokes the grant) sees
// exactly one refresh, every caller gets the fresh access token, and the
// rotated refresh token is the one stored (a later refresh with it works).
func TestReplicasRefresh(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test: skipped with -short")
	}
	// The provider's redirect URI needs the issuer, known once the proxy
	// listens; the replicas discover the provider at start-up, so it is
	// started in between.
	var provider *testenv.OIDCProvider
	clientSecret := randomHex(t, 24)
	r := startReplicas(t, replicaOptions{dev: true, connectors: func(issuer string) string {
		provider = testenv.StartOIDCProvider(t, testenv.OIDCClient{ID: "lanyard", Secret: clientSecret,
			RedirectURIs: []string{issuer + "/accounts/callback/up"}})
		return fmt.Sprintf(`  - name: up
    kind: oauth2
    display_name: Upstream
    oauth2:
      preset: oidc
      issuer: %s
      client_id: lanyard
      client_secret: %s
      scopes: [openid, offline_access, email]
`, provider.Issuer, clientSecret)
	}})
	const A, B, C = 0, 1, 2
	ctx := context.Background()

	// Link through the real flow: start on A, the provider's pages, the
	// callback on B.
	u := r.browser()
	u.login(t, A, "")
	_, page := u.do(t, A, http.MethodGet, "/accounts", nil)
	resp, body := u.do(t, A, http.MethodPost, "/accounts/start", url.Values{"connector": {"up"}, "csrf_token": {csrfOf(t, page)}})
	if resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("start link on A: %d\n%s", resp.StatusCode, body)
	}
	cb := provider.Login(t, resp.Header.Get("Location"))
	resp, body = u.do(t, B, http.MethodGet, cb.String(), nil)
	if resp.StatusCode != http.StatusSeeOther || !strings.Contains(resp.Header.Get("Location"), "linked") {
		t.Fatalf("link callback on B: %d %q\n%s", resp.StatusCode, resp.Header.Get("Location"), body)
	}
	tok, grant := u.accessToken(t, C, C, C, all)

	// The stored token expired a minute ago (written as Lanyard writes it).
	store := r.openStore(t)
	g, err := store.Grants().Get(ctx, grant)
	if err != nil || len(g.ConnectionIDs) != 1 {
		t.Fatalf("grant %s: %+v %v", grant, g, err)
	}
	conn, err := store.Connections().Get(ctx, g.ConnectionIDs[0])
	if err != nil {
		t.Fatal(err)
	}
	secrets, err := vault.New(ctx, vault.Config{Address: r.vaultAddr, Token: broker.SecretString(r.vaultTok), Mount: "secret",
		Prefix: r.vaultPfx, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(secrets.Close)
	expire := func() (access, refresh string) {
		t.Helper()
		sec, ver, err := secrets.Get(ctx, conn.SecretKey)
		if err != nil {
			t.Fatal(err)
		}
		f := sec.Fields()
		f["expiry"] = time.Now().Add(-time.Minute).UTC().Format(time.RFC3339)
		nv, err := secrets.Put(ctx, conn.SecretKey, broker.NewSecret(f), ver)
		if err != nil {
			t.Fatal(err)
		}
		// As Lanyard does after writing a secret: the record names the
		// version (replicas' credential caches serve only that version).
		if _, err := store.Connections().Update(ctx, conn.ID, func(c broker.Connection) (broker.Connection, error) {
			c.SecretVer = nv
			return c, nil
		}); err != nil {
			t.Fatal(err)
		}
		return f["access_token"], f["refresh_token"]
	}
	oldAccess, oldRefresh := expire()
	ok0, failed0 := provider.RefreshCounts(t)

	const perReplica = 50
	var (
		wg     sync.WaitGroup
		mu     sync.Mutex
		tokens = map[string]int{}
		errs   []string
	)
	start := make(chan struct{})
	for i := range replicaCount * perReplica {
		wg.Go(func() {
			<-start
			st, out := r.redeem(t, i%replicaCount, tok, "up")
			cred, _ := out["credential"].(map[string]any)
			at, _ := cred["access_token"].(string)
			mu.Lock()
			defer mu.Unlock()
			if st != http.StatusOK || at == "" {
				errs = append(errs, fmt.Sprintf("replica %d: %d %v", i%replicaCount, st, out))
				return
			}
			tokens[at]++
		})
	}
	began := time.Now()
	close(start)
	wg.Wait()
	ok1, failed1 := provider.RefreshCounts(t)
	t.Logf("%d concurrent redemptions over 3 replicas in %v: %d upstream refreshes (%d failed), %d distinct access tokens",
		replicaCount*perReplica, time.Since(began), ok1-ok0, failed1-failed0, len(tokens))
	if len(errs) > 0 {
		t.Errorf("%d redemptions failed, e.g. %s", len(errs), errs[0])
	}
	if ok1-ok0 != 1 || failed1 != failed0 {
		t.Errorf("upstream refreshes: %d ok, %d failed; want exactly 1 ok, 0 failed", ok1-ok0, failed1-failed0)
	}
	if len(tokens) != 1 || tokens[oldAccess] > 0 {
		t.Errorf("access tokens handed out: %d distinct (the old one %d times); want every caller the one fresh token", len(tokens), tokens[oldAccess])
	}

	// The rotated refresh token is stored: expire again, and one more
	// redemption refreshes with it successfully.
	sec, _, err := secrets.Get(ctx, conn.SecretKey)
	if err != nil {
		t.Fatal(err)
	}
	if rt, _ := sec.Field("refresh_token"); rt == "" || rt == oldRefresh {
		t.Errorf("stored refresh token after the refresh: rotated=%v; want the provider's new one", rt != oldRefresh)
	}
	expire()
	if st, out := r.redeem(t, C, tok, "up"); st != http.StatusOK {
		t.Errorf("redeem after a second expiry: %d %v", st, out)
	}
	if ok2, failed2 := provider.RefreshCounts(t); ok2-ok1 != 1 || failed2 != failed1 {
		t.Errorf("second refresh: %d ok, %d failed; want 1, 0 (the stored refresh token was the live one)", ok2-ok1, failed2-failed1)
	}
}
