package vault_test

import (
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/lanyardhq/lanyard/broker"
	"github.com/lanyardhq/lanyard/internal/testenv"
	"github.com/lanyardhq/lanyard/vault"
)

// recorder is an HTTP server in front of the dev Vault that records the
// headers of every request it forwards.
type recorder struct {
	URL     string
	mu      sync.Mutex
	headers []http.Header
}

func newRecorder(t *testing.T, vaultAddr string) *recorder {
	t.Helper()
	target, err := url.Parse(vaultAddr)
	if err != nil {
		t.Fatal(err)
	}
	rp := httputil.NewSingleHostReverseProxy(target)
	rec := &recorder{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec.mu.Lock()
		rec.headers = append(rec.headers, r.Header.Clone())
		rec.mu.Unlock()
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	rec.URL = srv.URL
	return rec
}

func (r *recorder) seen() []http.Header {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]http.Header(nil), r.headers...)
}

// exercise runs every operation of the store once and fails the test on
// an error.
func exercise(t *testing.T, s *vault.Store) {
	t.Helper()
	ctx := t.Context()
	k := broker.SecretKey{Owner: "env", Name: "check"}
	v, err := s.Put(ctx, k, broker.NewSecret(map[string]string{"v": "1"}), broker.CASCreate)
	if err != nil {
		t.Fatalf("Put: %v", err)
	}
	if sec, gv, err := s.Get(ctx, k); err != nil || gv != v {
		t.Fatalf("Get: version %d, %v", gv, err)
	} else if got, _ := sec.Field("v"); got != "1" {
		t.Fatalf("Get: wrong value")
	}
	if keys, err := s.List(ctx, "env"); err != nil || len(keys) != 1 {
		t.Fatalf("List: %v, %v", keys, err)
	}
	if err := s.Ping(ctx); err != nil {
		t.Fatalf("Ping: %v", err)
	}
	if err := s.Delete(ctx, k); err != nil {
		t.Fatalf("Delete: %v", err)
	}
}

// TestIgnoresEnvironment: VAULT_* and proxy variables change nothing that is
// sent, nor where. github.com/hashicorp/vault/api would add VAULT_HEADERS to
// every request (next to the token), send VAULT_TOKEN and VAULT_NAMESPACE,
// response-wrap every answer with VAULT_WRAP_TTL, and use VAULT_ADDR and the
// proxies; the store undoes all of it. A malformed variable is different: the
// library refuses to start, and New says which variable to fix or unset.
func TestIgnoresEnvironment(t *testing.T) {
	addr, token := testenv.Vault(t)
	root := rootClient(t, addr, token)
	// The standard library reads the proxy variables once per process:
	// read them now, so that the ones set below cannot leak into other
	// tests (the store must not use them at all; see TestNoProxy).
	_, _ = http.ProxyFromEnvironment(httptest.NewRequest(http.MethodGet, "http://vault.example/", nil))
	closed := "http://" + testenv.Addr(testenv.FreePort(t))
	for _, name := range []string{"HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy", "VAULT_HTTP_PROXY", "VAULT_PROXY_ADDR"} {
		t.Setenv(name, closed)
	}
	t.Setenv("NO_PROXY", "")
	t.Setenv("no_proxy", "")
	t.Setenv("VAULT_ADDR", closed)
	t.Setenv("VAULT_AGENT_ADDR", closed)
	t.Setenv("VAULT_TOKEN", "hvs.from-the-environment")

	check := func(t *testing.T, rec *recorder) {
		t.Helper()
		seen := rec.seen()
		if len(seen) == 0 {
			t.Fatal("no request went through the recorder")
		}
		for i, h := range seen {
			if got := h.Get("X-Env-Header"); got != "" {
				t.Errorf("request %d carries X-Env-Header %q from VAULT_HEADERS", i, got)
			}
			if got := h.Get("X-Vault-Namespace"); got != "" {
				t.Errorf("request %d carries X-Vault-Namespace %q from VAULT_NAMESPACE", i, got)
			}
			if got := h.Get("X-Vault-Token"); got != "" && got != token {
				t.Errorf("request %d carries a token that is not the configured one", i)
			}
			for name := range h {
				switch name {
				case "X-Vault-Request", "X-Vault-Token", "Content-Type", "Content-Length", "User-Agent", "Accept-Encoding",
					"X-Forwarded-For":
				default:
					t.Errorf("request %d carries header %s", i, name)
				}
			}
		}
	}

	t.Run("Headers", func(t *testing.T) {
		t.Setenv("VAULT_HEADERS", `{"X-Env-Header": "leak"}`)
		t.Setenv("VAULT_NAMESPACE", "env-namespace")
		t.Setenv("VAULT_WRAP_TTL", "5m")
		t.Setenv("VAULT_MAX_RETRIES", "5")
		t.Setenv("VAULT_CLIENT_TIMEOUT", "1s")
		t.Setenv("VAULT_DISABLE_REDIRECTS", "false")
		rec := newRecorder(t, addr)
		s := newStore(t, vault.Config{Address: rec.URL, Token: broker.SecretString(token), Prefix: uniquePrefix(t, root)})
		exercise(t, s)
		check(t, rec)
	})

	// The library parses every VAULT_* variable when the client is built,
	// and fails on a malformed one even though the store ignores it: New
	// fails too, with an error that names the variable and says why.
	t.Run("Malformed", func(t *testing.T) {
		for _, tc := range []struct {
			name, value string
			also        map[string]string
		}{
			{"VAULT_HEADERS", `{"X-Vault-Forbidden": 1`, nil},
			{"VAULT_HEADERS", `{"X-Vault-Forbidden": "1"}`, nil},
			{"VAULT_CACERT", "/nonexistent/ca.pem", nil},
			{"VAULT_CAPATH", "/nonexistent-dir", nil},
			{"VAULT_CLIENT_CERT", "/nonexistent/cert.pem", nil},
			{"VAULT_CLIENT_CERT", "/nonexistent/cert.pem", map[string]string{"VAULT_CLIENT_KEY": "/nonexistent/key.pem"}},
			{"VAULT_MAX_RETRIES", "not-a-number", nil},
			{"VAULT_CLIENT_TIMEOUT", "not-a-duration", nil},
			{"VAULT_SKIP_VERIFY", "maybe", nil},
			{"VAULT_RATE_LIMIT", "fast", nil},
			{"VAULT_SRV_LOOKUP", "perhaps", nil},
			{"VAULT_DISABLE_REDIRECTS", "perhaps", nil},
			{"VAULT_PROXY_ADDR", "http://user:proxy-password@bad host/", nil}, // supersedes VAULT_HTTP_PROXY
		} {
			t.Run(tc.name, func(t *testing.T) {
				t.Setenv(tc.name, tc.value)
				for k, v := range tc.also {
					t.Setenv(k, v)
				}
				_, err := vault.New(t.Context(), vault.Config{Address: addr, Token: broker.SecretString(token)})
				if err == nil {
					t.Fatalf("New with %s=%q succeeded; the library parses it and should have refused", tc.name, tc.value)
				}
				msg := err.Error()
				t.Logf("%s: %v", tc.name, msg)
				if !errors.Is(err, broker.ErrInvalid) {
					t.Errorf("error does not wrap ErrInvalid")
				}
				for _, want := range []string{"fix or unset " + tc.name, "must be valid or unset", "own configuration"} {
					if !strings.Contains(msg, want) {
						t.Errorf("error does not say %q", want)
					}
				}
				for _, secret := range []string{token, "hvs.from-the-environment", "proxy-password"} {
					if strings.Contains(msg, secret) {
						t.Errorf("error reveals %q", secret)
					}
				}
			})
		}
	})

	t.Run("Valid", func(t *testing.T) {
		// Well-formed values the store does not use are harmless.
		for name, v := range map[string]string{
			"VAULT_SKIP_VERIFY": "true",
			"VAULT_RATE_LIMIT":  "0.001:1",
			"VAULT_SRV_LOOKUP":  "true",
		} {
			t.Setenv(name, v)
		}
		rec := newRecorder(t, addr)
		s := newStore(t, vault.Config{Address: rec.URL, Token: broker.SecretString(token), Prefix: uniquePrefix(t, root)})
		exercise(t, s)
		check(t, rec)
	})
}

// TestRedirectNotFollowed: a Vault address that answers 307 elsewhere gets
// the request; the other host never sees the token nor the secret id.
func TestRedirectNotFollowed(t *testing.T) {
	const tok, secretID = "hvs.redirect-token-value", "redirect-secret-id-value"
	var elsewhere atomic.Int32
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		elsewhere.Add(1)
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, `{"data":{"data":{"v":"from elsewhere"},"metadata":{"version":1}},"auth":{"client_token":"hvs.x","lease_duration":60}}`)
	}))
	t.Cleanup(other.Close)
	redir := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, other.URL+r.URL.RequestURI(), http.StatusTemporaryRedirect)
	}))
	t.Cleanup(redir.Close)

	ctx := t.Context()
	k := broker.SecretKey{Owner: "o", Name: "n"}
	s := newStore(t, vault.Config{Address: redir.URL, Token: tok, Timeout: 2 * time.Second})
	if _, _, err := s.Get(ctx, k); err == nil {
		t.Errorf("Get through a redirect succeeded")
	} else if strings.Contains(err.Error(), tok) {
		t.Errorf("the error reveals the token: %v", err)
	}
	if _, err := s.Put(ctx, k, broker.NewSecret(map[string]string{"v": "x"}), broker.CASAny); err == nil {
		t.Errorf("Put through a redirect succeeded")
	}
	if _, err := s.List(ctx, "o"); err == nil {
		t.Errorf("List through a redirect succeeded")
	}
	if err := s.Delete(ctx, k); err == nil {
		t.Errorf("Delete through a redirect succeeded")
	}
	if err := s.Ping(ctx); err == nil {
		t.Errorf("Ping through a redirect succeeded")
	}
	if _, err := vault.New(ctx, vault.Config{Address: redir.URL, Timeout: 2 * time.Second,
		AppRole: &vault.AppRoleConfig{RoleID: "r", SecretID: secretID}}); err == nil {
		t.Errorf("AppRole login through a redirect succeeded")
	}
	if n := elsewhere.Load(); n != 0 {
		t.Errorf("the redirect target received %d requests", n)
	}
}

// TestWritesNotRetried: a write that fails with a 5xx may have been applied,
// so it is not sent again (a CASAny write could land twice, a CAS write
// that did land would be reported as a conflict); a read is retried once.
func TestWritesNotRetried(t *testing.T) {
	var mu sync.Mutex
	count := map[string]int{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		if r.Method == http.MethodGet {
			count["read"]++
		} else {
			count["write"]++
		}
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusInternalServerError)
		fmt.Fprint(w, `{"errors":["internal error"]}`)
	}))
	t.Cleanup(srv.Close)
	s := newStore(t, vault.Config{Address: srv.URL, Token: "t", Timeout: 2 * time.Second})
	k := broker.SecretKey{Owner: "o", Name: "n"}
	if _, err := s.Put(t.Context(), k, broker.NewSecret(map[string]string{"v": "x"}), broker.CASAny); err == nil {
		t.Fatal("Put succeeded against a failing server")
	}
	if _, err := s.Put(t.Context(), k, broker.NewSecret(map[string]string{"v": "x"}), 3); errors.Is(err, broker.ErrConflict) || err == nil {
		t.Errorf("Put cas=3 against a failing server: %v, want a plain error", err)
	}
	if _, _, err := s.Get(t.Context(), k); err == nil {
		t.Fatal("Get succeeded against a failing server")
	}
	mu.Lock()
	defer mu.Unlock()
	if count["write"] != 2 {
		t.Errorf("2 Puts sent %d writes, want 2 (no retry)", count["write"])
	}
	if count["read"] != 2 {
		t.Errorf("a Get sent %d reads, want 2 (one retry)", count["read"])
	}
}

// TestInsecureHTTP: a plain-http address is only accepted for loopback, or
// when explicitly allowed.
func TestInsecureHTTP(t *testing.T) {
	for _, tc := range []struct {
		addr  string
		allow bool
		ok    bool
	}{
		{"http://vault.internal:8200", false, false},
		{"http://10.0.0.5:8200", false, false},
		{"http://127.0.0.1.nip.io:8200", false, false},
		{"http://vault.internal:8200", true, true},
		{"https://vault.internal:8200", false, true},
		{"http://127.0.0.1:8200", false, true},
		{"http://127.8.9.10:8200", false, true},
		{"http://localhost:8200", false, true},
		{"http://[::1]:8200", false, true},
	} {
		err := vault.Config{Address: tc.addr, Token: "t", AllowInsecureHTTP: tc.allow}.Validate()
		if tc.ok && err != nil {
			t.Errorf("%s (allow %v): %v, want valid", tc.addr, tc.allow, err)
		}
		if !tc.ok && (!errors.Is(err, broker.ErrInvalid) || !strings.Contains(err.Error(), "cleartext")) {
			t.Errorf("%s (allow %v): %v, want a refusal that says cleartext", tc.addr, tc.allow, err)
		}
	}
}

// TestDeniedPathNoRelogin: a path the AppRole's policy denies answers 403
// with a valid token. Logging in again cannot help, and used to happen on
// every such call, minting a token each time that was never revoked.
func TestDeniedPathNoRelogin(t *testing.T) {
	addr, token := testenv.Vault(t)
	root := rootClient(t, addr, token)
	ctx := t.Context()
	prefix := uniquePrefix(t, root)
	mount := "approle-" + randHex(t)
	rules := fmt.Sprintf(`
path "secret/data/%[1]s/*" { capabilities = ["create", "read", "update", "delete"] }
path "secret/metadata/%[1]s/*" { capabilities = ["read", "delete", "list"] }
path "secret/data/%[1]s/o/denied" { capabilities = ["deny"] }
`, prefix)
	roleID, secretID := newAppRole(t, root, mount, rules, "1h", "2h")

	var logins, failedLogins atomic.Int32
	s := newStore(t, vault.Config{
		Address: addr,
		Prefix:  prefix,
		AppRole: &vault.AppRoleConfig{MountPath: mount, RoleID: roleID, SecretID: broker.SecretString(secretID)},
		Observer: func(_, op string, _ time.Duration, err error) {
			if op == "login" {
				if err != nil {
					failedLogins.Add(1)
				}
				logins.Add(1)
			}
		},
	})
	denied := broker.SecretKey{Owner: "o", Name: "denied"}
	for i := range 20 {
		_, _, err := s.Get(ctx, denied)
		if err == nil || !strings.Contains(err.Error(), "403") {
			t.Fatalf("Get #%d of the denied path: %v, want a 403 refusal", i, err)
		}
	}
	if n := logins.Load(); n > 1 {
		t.Errorf("20 calls to a denied path: %d logins, want 1 (the first)", n)
	}
	allowed := broker.SecretKey{Owner: "o", Name: "allowed"}
	if _, err := s.Put(ctx, allowed, broker.NewSecret(map[string]string{"v": "1"}), broker.CASCreate); err != nil {
		t.Fatalf("Put of an allowed path: %v", err)
	}

	// A token that really is invalid (revoked behind the store's back) is
	// still replaced at once, and the call succeeds.
	if _, err := root.Logical().WriteWithContext(ctx, "sys/leases/revoke-prefix/auth/"+mount+"/login", nil); err != nil {
		t.Fatalf("revoke the approle's tokens: %v", err)
	}
	if _, _, err := s.Get(ctx, allowed); err != nil {
		t.Fatalf("Get after the token was revoked: %v", err)
	}
	if n := logins.Load(); n != 2 || failedLogins.Load() != 0 {
		t.Errorf("after revocation: %d logins (%d failed), want 2", n, failedLogins.Load())
	}
	for i := range 5 {
		if _, _, err := s.Get(ctx, denied); err == nil {
			t.Fatalf("Get #%d of the denied path succeeded", i)
		}
	}
	if n := logins.Load(); n != 2 {
		t.Errorf("denied calls after a re-login: %d logins, want still 2", n)
	}
	if n := countTokens(t, root, mount); n != 1 {
		t.Errorf("%d live tokens from %s, want 1 (replaced tokens are revoked)", n, mount)
	}
}

// TestDeniedPathNoLookupSelf: when the role's tokens may not even look
// themselves up (no default policy), a 403 cannot tell a denied path from an
// invalid token; re-logins are then limited to one per 30s.
func TestDeniedPathNoLookupSelf(t *testing.T) {
	addr, token := testenv.Vault(t)
	root := rootClient(t, addr, token)
	ctx := t.Context()
	prefix := uniquePrefix(t, root)
	mount := "approle-" + randHex(t)
	rules := fmt.Sprintf(`path "secret/data/%s/o/allowed" { capabilities = ["create", "read", "update"] }`, prefix)
	roleID, secretID := newAppRole(t, root, mount, rules, "1h", "2h")
	if _, err := root.Logical().WriteWithContext(ctx, "auth/"+mount+"/role/lanyard",
		map[string]any{"token_no_default_policy": true}); err != nil {
		t.Fatalf("update role: %v", err)
	}
	var logins atomic.Int32
	s := newStore(t, vault.Config{
		Address: addr,
		Prefix:  prefix,
		AppRole: &vault.AppRoleConfig{MountPath: mount, RoleID: roleID, SecretID: broker.SecretString(secretID)},
		Observer: func(_, op string, _ time.Duration, err error) {
			if op == "login" && err == nil {
				logins.Add(1)
			}
		},
	})
	for i := range 20 {
		if _, _, err := s.Get(ctx, broker.SecretKey{Owner: "o", Name: "denied"}); err == nil {
			t.Fatalf("Get #%d of the denied path succeeded", i)
		}
	}
	if n := logins.Load(); n > 2 {
		t.Errorf("20 calls to a denied path: %d logins, want at most 2", n)
	}
	if _, err := s.Put(ctx, broker.SecretKey{Owner: "o", Name: "allowed"}, broker.NewSecret(nil), broker.CASAny); err != nil {
		t.Errorf("Put of the allowed path: %v", err)
	}
}

// countTokens counts the live tokens created by the auth method at mount.
func countTokens(t *testing.T, root *api.Client, mount string) int {
	t.Helper()
	ctx := t.Context()
	sec, err := root.Logical().ListWithContext(ctx, "auth/token/accessors")
	if err != nil || sec == nil {
		t.Fatalf("list token accessors: %v", err)
	}
	keys, _ := sec.Data["keys"].([]any)
	n := 0
	for _, k := range keys {
		acc, _ := k.(string)
		info, err := root.Logical().WriteWithContext(ctx, "auth/token/lookup-accessor", map[string]any{"accessor": acc})
		if err != nil || info == nil {
			continue // expired meanwhile
		}
		if p, _ := info.Data["path"].(string); strings.HasPrefix(p, "auth/"+mount+"/") {
			n++
		}
	}
	return n
}

// TestCASRequiredMount: on a KV mount with cas_required, a CASAny write used
// to be reported as a conflict (callers retry a conflict, forever); it must
// write over the current version.
func TestCASRequiredMount(t *testing.T) {
	addr, token := testenv.Vault(t)
	root := rootClient(t, addr, token)
	ctx := t.Context()
	mount := "kv-cas-" + randHex(t)
	if err := root.Sys().MountWithContext(ctx, mount, &api.MountInput{Type: "kv", Options: map[string]string{"version": "2"}}); err != nil {
		t.Fatalf("mount kv-v2: %v", err)
	}
	t.Cleanup(func() { _ = root.Sys().Unmount(mount) })
	eventually(t, 15*time.Second, "configure cas_required", func() error {
		_, err := root.Logical().WriteWithContext(ctx, mount+"/config", map[string]any{"cas_required": true})
		return err
	})
	s := newStore(t, vault.Config{Address: addr, Token: broker.SecretString(token), Mount: mount})
	k := broker.SecretKey{Owner: "o", Name: "cas"}
	put := func(cas int) (int, error) {
		return s.Put(ctx, k, broker.NewSecret(map[string]string{"cas": fmt.Sprint(cas)}), cas)
	}
	if v, err := put(broker.CASAny); err != nil || v != 1 {
		t.Fatalf("CASAny on a new key: version %d, %v", v, err)
	}
	if v, err := put(broker.CASAny); err != nil || v != 2 {
		t.Fatalf("CASAny on an existing key: version %d, %v", v, err)
	}
	if _, err := put(broker.CASCreate); !errors.Is(err, broker.ErrAlreadyExists) {
		t.Errorf("CASCreate on an existing key: %v, want ErrAlreadyExists", err)
	}
	if _, err := put(1); !errors.Is(err, broker.ErrConflict) {
		t.Errorf("stale cas=1: %v, want ErrConflict", err)
	}
	if v, err := put(2); err != nil || v != 3 {
		t.Errorf("cas=2: version %d, %v", v, err)
	}
	if sec, v, err := s.Get(ctx, k); err != nil || v != 3 {
		t.Errorf("Get: version %d, %v", v, err)
	} else if got, _ := sec.Field("cas"); got != "2" {
		t.Errorf("Get: cas=%s, want 2", got)
	}
}

// TestCreateOverDeleted: a secret whose current version was deleted or
// destroyed (by another Vault client) is absent for Get, so CASCreate must
// create it (it used to answer ErrAlreadyExists), and Get then returns it.
func TestCreateOverDeleted(t *testing.T) {
	addr, token := testenv.Vault(t)
	root := rootClient(t, addr, token)
	ctx := t.Context()
	prefix := uniquePrefix(t, root)
	s := newStore(t, vault.Config{Address: addr, Token: broker.SecretString(token), Prefix: prefix})
	kv := root.KVv2("secret")

	for _, how := range []string{"deleted", "destroyed"} {
		k := broker.SecretKey{Owner: "o", Name: how}
		p := prefix + "/o/" + how
		if _, err := kv.Put(ctx, p, map[string]any{"v": "old"}); err != nil {
			t.Fatal(err)
		}
		if how == "deleted" {
			if err := kv.Delete(ctx, p); err != nil {
				t.Fatal(err)
			}
		} else if err := kv.Destroy(ctx, p, []int{1}); err != nil {
			t.Fatal(err)
		}
		if _, _, err := s.Get(ctx, k); !errors.Is(err, broker.ErrNotFound) {
			t.Fatalf("%s: Get = %v, want ErrNotFound", how, err)
		}
		v, err := s.Put(ctx, k, broker.NewSecret(map[string]string{"v": "new"}), broker.CASCreate)
		if err != nil {
			t.Fatalf("%s: CASCreate = %v, want success", how, err)
		}
		sec, gv, err := s.Get(ctx, k)
		if err != nil || gv != v {
			t.Fatalf("%s: Get after CASCreate: version %d (Put said %d), %v", how, gv, v, err)
		}
		if got, _ := sec.Field("v"); got != "new" {
			t.Errorf("%s: Get after CASCreate: v=%q, want new", how, got)
		}
		if _, err := s.Put(ctx, k, broker.NewSecret(nil), broker.CASCreate); !errors.Is(err, broker.ErrAlreadyExists) {
			t.Errorf("%s: second CASCreate = %v, want ErrAlreadyExists", how, err)
		}
	}
}
