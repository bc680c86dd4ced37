package vault_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/lanyardhq/lanyard/broker"
	"github.com/lanyardhq/lanyard/broker/secrettest"
	"github.com/lanyardhq/lanyard/internal/testenv"
	"github.com/lanyardhq/lanyard/vault"
)

func randHex(t *testing.T) string {
	t.Helper()
	b := make([]byte, 6)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// rootClient is an API client with the dev server's root token, for test
// set-up and clean-up.
func rootClient(t *testing.T, addr, token string) *api.Client {
	t.Helper()
	c, err := api.NewClient(&api.Config{Address: addr, Timeout: 10 * time.Second})
	if err != nil {
		t.Fatalf("vault client: %v", err)
	}
	c.SetToken(token)
	return c
}

// uniquePrefix returns a KV path prefix no other test uses, and removes
// everything under it when the test ends.
func uniquePrefix(t *testing.T, c *api.Client) string {
	t.Helper()
	prefix := "lanyard-test/" + randHex(t)
	t.Cleanup(func() { deleteTree(t, c, "secret", prefix) })
	return prefix
}

// deleteTree removes every secret (all versions) under mount/path.
func deleteTree(t *testing.T, c *api.Client, mount, path string) {
	t.Helper()
	ctx := context.Background()
	s, err := c.Logical().ListWithContext(ctx, mount+"/metadata/"+path)
	if err != nil {
		t.Errorf("clean-up list %s: %v", path, err)
		return
	}
	if s == nil {
		return
	}
	keys, _ := s.Data["keys"].([]any)
	for _, k := range keys {
		name, _ := k.(string)
		if strings.HasSuffix(name, "/") {
			deleteTree(t, c, mount, path+"/"+strings.TrimSuffix(name, "/"))
			continue
		}
		if err := c.KVv2(mount).DeleteMetadata(ctx, path+"/"+name); err != nil {
			t.Errorf("clean-up delete %s/%s: %v", path, name, err)
		}
	}
}

func newStore(t *testing.T, cfg vault.Config) *vault.Store {
	t.Helper()
	s, err := vault.New(t.Context(), cfg)
	if err != nil {
		t.Fatalf("vault.New: %v", err)
	}
	t.Cleanup(s.Close)
	return s
}

func TestConformance(t *testing.T) {
	addr, token := testenv.Vault(t)
	root := rootClient(t, addr, token)
	secrettest.Run(t, func(t *testing.T) broker.SecretStore {
		return newStore(t, vault.Config{
			Address: addr,
			Token:   broker.SecretString(token),
			Prefix:  uniquePrefix(t, root),
		})
	})
}

func TestConfigValidate(t *testing.T) {
	const token, secretID = "hvs.config-token-value", "config-secret-id-value"
	for _, tc := range []struct {
		name string
		cfg  vault.Config
		want []string // substrings of the error; nil: valid
	}{
		{"token", vault.Config{Address: "http://127.0.0.1:8200", Token: token}, nil},
		{"approle", vault.Config{Address: "https://v:8200", AppRole: &vault.AppRoleConfig{RoleID: "r", SecretID: secretID}}, nil},
		{"empty", vault.Config{}, []string{"address is required", "one of token and approle"}},
		{"both", vault.Config{Address: "http://v", Token: token,
			AppRole: &vault.AppRoleConfig{RoleID: "r", SecretID: secretID}}, []string{"mutually exclusive"}},
		{"approle incomplete", vault.Config{Address: "http://v", AppRole: &vault.AppRoleConfig{MountPath: "../x"}},
			[]string{"role_id is required", "secret_id is required", "approle mount path"}},
		{"bad paths", vault.Config{Address: "ftp://v", Token: token, Mount: "/secret", Prefix: "a/../b", Timeout: -1},
			[]string{"not an http(s) URL", "mount", "prefix", "negative"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cfg.Validate()
			if tc.want == nil {
				if err != nil {
					t.Fatalf("Validate: %v, want nil", err)
				}
				return
			}
			if !errors.Is(err, broker.ErrInvalid) {
				t.Fatalf("Validate: %v, want ErrInvalid", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Validate error %q does not mention %q", err, w)
				}
			}
			if strings.Contains(err.Error(), token) || strings.Contains(err.Error(), secretID) {
				t.Errorf("Validate error reveals a credential: %q", err)
			}
			if _, nerr := vault.New(t.Context(), tc.cfg); !errors.Is(nerr, broker.ErrInvalid) {
				t.Errorf("New: %v, want ErrInvalid", nerr)
			}
		})
	}
}

// newAppRole enables AppRole at mount with one role whose tokens have the
// policy rules (and the default policy) and the given TTLs, and returns the
// role id and a secret id. Everything is removed when the test ends.
func newAppRole(t *testing.T, root *api.Client, mount, rules, ttl, maxTTL string) (roleID, secretID string) {
	t.Helper()
	ctx := context.Background()
	if err := root.Sys().EnableAuthWithOptionsWithContext(ctx, mount, &api.EnableAuthOptions{Type: "approle"}); err != nil {
		t.Fatalf("enable approle: %v", err)
	}
	t.Cleanup(func() { _ = root.Sys().DisableAuth(mount) })
	policy := "lanyard-test-" + mount
	if err := root.Sys().PutPolicyWithContext(ctx, policy, rules); err != nil {
		t.Fatalf("put policy: %v", err)
	}
	t.Cleanup(func() { _ = root.Sys().DeletePolicy(policy) })
	role := "auth/" + mount + "/role/lanyard"
	if _, err := root.Logical().WriteWithContext(ctx, role, map[string]any{
		"token_policies": policy,
		"token_ttl":      ttl,
		"token_max_ttl":  maxTTL,
	}); err != nil {
		t.Fatalf("create role: %v", err)
	}
	r, err := root.Logical().ReadWithContext(ctx, role+"/role-id")
	if err != nil {
		t.Fatalf("read role id: %v", err)
	}
	roleID, _ = r.Data["role_id"].(string)
	r, err = root.Logical().WriteWithContext(ctx, role+"/secret-id", nil)
	if err != nil {
		t.Fatalf("create secret id: %v", err)
	}
	secretID, _ = r.Data["secret_id"].(string)
	if roleID == "" || secretID == "" {
		t.Fatalf("role id or secret id missing from Vault's answer")
	}
	return roleID, secretID
}

// TestAppRole logs in with AppRole to a role whose tokens live 2s and at
// most 6s, and works for ~8s: the token must be renewed and, at its maximum
// lifetime, replaced by a new login, without a failed call.
func TestAppRole(t *testing.T) {
	addr, token := testenv.Vault(t)
	root := rootClient(t, addr, token)
	ctx := t.Context()
	id := randHex(t)
	mount := "approle-" + id
	prefix := uniquePrefix(t, root)

	rules := fmt.Sprintf(`
path "secret/data/%[1]s/*" { capabilities = ["create", "read", "update", "delete"] }
path "secret/metadata/%[1]s/*" { capabilities = ["read", "delete", "list"] }
`, prefix)
	roleID, secretID := newAppRole(t, root, mount, rules, "2s", "6s")

	t.Run("BadSecretID", func(t *testing.T) {
		_, err := vault.New(ctx, vault.Config{Address: addr, Prefix: prefix,
			AppRole: &vault.AppRoleConfig{MountPath: mount, RoleID: roleID, SecretID: "wrong-secret-id-value"}})
		if err == nil {
			t.Fatal("New with a wrong secret id succeeded")
		}
		if errors.Is(err, broker.ErrUnavailable) {
			t.Errorf("wrong secret id reported as unavailable: %v", err)
		}
		if strings.Contains(err.Error(), "wrong-secret-id-value") {
			t.Errorf("error reveals the secret id: %v", err)
		}
	})

	var (
		logs   testenv.Buffer
		mu     sync.Mutex
		logins int
		failed []string
	)
	s := newStore(t, vault.Config{
		Address: addr,
		Prefix:  prefix,
		AppRole: &vault.AppRoleConfig{MountPath: mount, RoleID: roleID, SecretID: broker.SecretString(secretID)},
		Logger:  slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Observer: func(component, op string, _ time.Duration, err error) {
			mu.Lock()
			defer mu.Unlock()
			if op == "login" && err == nil {
				logins++
			}
			if err != nil {
				failed = append(failed, component+" "+op+": "+err.Error())
			}
		},
	})

	k := broker.SecretKey{Owner: "approle", Name: "renewal"}
	start := time.Now()
	version := 0
	for i := 0; time.Since(start) < 8500*time.Millisecond; i++ {
		v, err := s.Put(ctx, k, broker.NewSecret(map[string]string{"i": fmt.Sprint(i)}), version)
		if err != nil {
			t.Fatalf("Put #%d after %v: %v", i, time.Since(start).Round(time.Millisecond), err)
		}
		version = v
		sec, gv, err := s.Get(ctx, k)
		if err != nil {
			t.Fatalf("Get #%d after %v: %v", i, time.Since(start).Round(time.Millisecond), err)
		}
		if got, _ := sec.Field("i"); got != fmt.Sprint(i) || gv != v {
			t.Fatalf("Get #%d: got i=%s version %d, want i=%d version %d", i, got, gv, i, v)
		}
		if _, err := s.List(ctx, "approle"); err != nil {
			t.Fatalf("List #%d: %v", i, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if err := s.Ping(ctx); err != nil {
		t.Errorf("Ping: %v", err)
	}

	out := logs.String()
	mu.Lock()
	defer mu.Unlock()
	t.Logf("%d logins, log:\n%s", logins, out)
	if logins < 2 {
		t.Errorf("%d successful logins in 8.5s with token_max_ttl=6s, want at least 2 (a re-login)", logins)
	}
	if !strings.Contains(out, "vault token renewed") {
		t.Errorf("no token renewal was logged")
	}
	if !strings.Contains(out, "replaced token revoked") {
		t.Errorf("the token replaced at its maximum lifetime was not revoked")
	}
	for _, f := range failed {
		t.Errorf("a call failed: %s", f)
	}
	if strings.Contains(out, secretID) {
		t.Errorf("the log contains the secret id")
	}
	if strings.Contains(out, "hvs.") || strings.Contains(out, token) {
		t.Errorf("the log contains a token")
	}
}

// startVault starts a non-dev Vault server with file storage, initialises
// it with one key share, unseals it and mounts KV v2 at secret/. It returns
// the address, the root token and the unseal key.
func startVault(t *testing.T) (addr, rootToken, unsealKey string, c *api.Client) {
	t.Helper()
	bin := testenv.VaultBinary(t)
	dir := t.TempDir()
	hostport := testenv.Addr(testenv.FreePort(t))
	cfgPath := filepath.Join(dir, "vault.hcl")
	cfg := fmt.Sprintf(`
storage "file" { path = %q }
listener "tcp" {
  address     = %q
  tls_disable = true
}
disable_mlock = true
api_addr      = "http://%s"
`, filepath.Join(dir, "data"), hostport, hostport)
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "server", "-config", cfgPath)
	// Vault 1.13 built with a current Go panics at start-up on a CA
	// certificate with a negative serial number (gosnowflake); this restores
	// the old parsing for that process only.
	cmd.Env = append(os.Environ(), "GODEBUG=x509negativeserial=1")
	testenv.Start(t, cmd)
	testenv.WaitTCP(t, hostport, 30*time.Second)

	addr = "http://" + hostport
	c, err := api.NewClient(&api.Config{Address: addr, Timeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	c.ClearToken() // not the dev server's VAULT_TOKEN
	ctx := t.Context()
	init, err := c.Sys().InitWithContext(ctx, &api.InitRequest{SecretShares: 1, SecretThreshold: 1})
	if err != nil {
		t.Fatalf("init: %v", err)
	}
	unsealKey, rootToken = init.Keys[0], init.RootToken
	c.SetToken(rootToken)
	unseal(t, c, unsealKey)
	if err := c.Sys().MountWithContext(ctx, "secret", &api.MountInput{Type: "kv", Options: map[string]string{"version": "2"}}); err != nil {
		t.Fatalf("mount kv-v2: %v", err)
	}
	return addr, rootToken, unsealKey, c
}

// unseal unseals Vault and waits until it is active.
func unseal(t *testing.T, c *api.Client, key string) {
	t.Helper()
	if _, err := c.Sys().UnsealWithContext(t.Context(), key); err != nil {
		t.Fatalf("unseal: %v", err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		h, err := c.Sys().HealthWithContext(t.Context())
		if err == nil && h.Initialized && !h.Sealed && !h.Standby {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("vault did not become active after unseal: %+v, %v", h, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// eventually retries fn for up to d (a freshly unsealed Vault or a new KV
// mount may refuse the first requests for a moment).
func eventually(t *testing.T, d time.Duration, what string, fn func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		err := fn()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: still failing after %v: %v", what, d, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// wantUnavailable checks that err wraps ErrUnavailable and arrived within
// a correctness bound (not a performance assertion).
func wantUnavailable(t *testing.T, what string, err error, took, bound time.Duration) {
	t.Helper()
	t.Logf("%s: %v after %v", what, err, took.Round(time.Millisecond))
	if !errors.Is(err, broker.ErrUnavailable) {
		t.Errorf("%s: got %v, want ErrUnavailable", what, err)
	}
	if took > bound {
		t.Errorf("%s took %v, want at most %v", what, took, bound)
	}
}

// TestSealedAndRecovery seals a real Vault under a live store: calls fail
// fast with ErrUnavailable, and after unsealing the same store works again.
func TestSealedAndRecovery(t *testing.T) {
	addr, rootToken, unsealKey, c := startVault(t)
	ctx := t.Context()
	const timeout = 2 * time.Second
	bound := timeout + 3*time.Second
	s := newStore(t, vault.Config{Address: addr, Token: broker.SecretString(rootToken), Timeout: timeout})

	k := broker.SecretKey{Owner: "ops", Name: "db"}
	eventually(t, 15*time.Second, "first Put on a new mount", func() error {
		_, err := s.Put(ctx, k, broker.NewSecret(map[string]string{"password": "before-seal"}), broker.CASCreate)
		return err
	})
	if sec, v, err := s.Get(ctx, k); err != nil || v != 1 {
		t.Fatalf("Get before seal: version %d, %v", v, err)
	} else if got, _ := sec.Field("password"); got != "before-seal" {
		t.Fatalf("Get before seal: wrong value")
	}
	if err := s.Ping(ctx); err != nil {
		t.Fatalf("Ping before seal: %v", err)
	}

	if err := c.Sys().SealWithContext(ctx); err != nil {
		t.Fatalf("seal: %v", err)
	}
	start := time.Now()
	_, _, err := s.Get(ctx, k)
	wantUnavailable(t, "Get while sealed", err, time.Since(start), bound)
	start = time.Now()
	err = s.Ping(ctx)
	wantUnavailable(t, "Ping while sealed", err, time.Since(start), bound)
	start = time.Now()
	_, err = s.Put(ctx, k, broker.NewSecret(map[string]string{"password": "while-sealed"}), 1)
	wantUnavailable(t, "Put while sealed", err, time.Since(start), bound)
	start = time.Now()
	_, err = s.List(ctx, "ops")
	wantUnavailable(t, "List while sealed", err, time.Since(start), bound)
	start = time.Now()
	err = s.Delete(ctx, k)
	wantUnavailable(t, "Delete while sealed", err, time.Since(start), bound)
	if err != nil && strings.Contains(err.Error(), rootToken) {
		t.Errorf("error reveals the token: %v", err)
	}

	unseal(t, c, unsealKey)
	eventually(t, 15*time.Second, "Ping after unseal", func() error { return s.Ping(ctx) })
	sec, v, err := s.Get(ctx, k)
	if err != nil || v != 1 {
		t.Fatalf("Get after unseal: version %d, %v", v, err)
	}
	if got, _ := sec.Field("password"); got != "before-seal" {
		t.Errorf("Get after unseal: the value changed")
	}
	if v, err := s.Put(ctx, k, broker.NewSecret(map[string]string{"password": "after-seal"}), 1); err != nil || v != 2 {
		t.Fatalf("Put after unseal: version %d, %v", v, err)
	}
}

// TestUnreachable: nothing listens on the port, or something accepts
// connections and never answers. Both are ErrUnavailable within the bound.
func TestUnreachable(t *testing.T) {
	const timeout = 1 * time.Second
	bound := timeout + 3*time.Second
	k := broker.SecretKey{Owner: "o", Name: "n"}

	t.Run("ClosedPort", func(t *testing.T) {
		addr := "http://" + testenv.Addr(testenv.FreePort(t))
		s := newStore(t, vault.Config{Address: addr, Token: "t", Timeout: timeout})
		start := time.Now()
		_, _, err := s.Get(t.Context(), k)
		wantUnavailable(t, "Get", err, time.Since(start), bound)
		start = time.Now()
		wantUnavailable(t, "Ping", s.Ping(t.Context()), time.Since(start), bound)
	})

	t.Run("NoAnswer", func(t *testing.T) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		var (
			mu    sync.Mutex
			conns []net.Conn
		)
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				mu.Lock()
				conns = append(conns, c) // hold it open, never answer
				mu.Unlock()
			}
		}()
		t.Cleanup(func() {
			l.Close()
			mu.Lock()
			defer mu.Unlock()
			for _, c := range conns {
				c.Close()
			}
		})
		s := newStore(t, vault.Config{Address: "http://" + l.Addr().String(), Token: "t", Timeout: timeout})
		start := time.Now()
		_, err = s.Put(t.Context(), k, broker.NewSecret(map[string]string{"v": "x"}), broker.CASAny)
		wantUnavailable(t, "Put", err, time.Since(start), bound)
		if errors.Is(err, context.Canceled) {
			t.Errorf("a timeout is not a cancellation: %v", err)
		}

		// The caller's own cancellation is reported as such.
		ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
		defer cancel()
		_, _, err = s.Get(ctx, k)
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Get with the caller's deadline: got %v, want context.DeadlineExceeded", err)
		}
	})
}

// TestWrittenByOthers reads data Lanyard did not write the way it does: a
// soft-deleted or destroyed current version is absent, and a non-string
// field is refused without revealing anything.
func TestWrittenByOthers(t *testing.T) {
	addr, token := testenv.Vault(t)
	root := rootClient(t, addr, token)
	ctx := t.Context()
	prefix := uniquePrefix(t, root)
	s := newStore(t, vault.Config{Address: addr, Token: broker.SecretString(token), Prefix: prefix})
	kv := root.KVv2("secret")

	k := broker.SecretKey{Owner: "o", Name: "soft"}
	if _, err := s.Put(ctx, k, broker.NewSecret(map[string]string{"v": "1"}), broker.CASCreate); err != nil {
		t.Fatal(err)
	}
	if err := kv.Delete(ctx, prefix+"/o/soft"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.Get(ctx, k); !errors.Is(err, broker.ErrNotFound) {
		t.Errorf("Get of a soft-deleted version: %v, want ErrNotFound", err)
	}

	k = broker.SecretKey{Owner: "o", Name: "destroyed"}
	if _, err := s.Put(ctx, k, broker.NewSecret(map[string]string{"v": "1"}), broker.CASCreate); err != nil {
		t.Fatal(err)
	}
	if err := kv.Destroy(ctx, prefix+"/o/destroyed", []int{1}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.Get(ctx, k); !errors.Is(err, broker.ErrNotFound) {
		t.Errorf("Get of a destroyed version: %v, want ErrNotFound", err)
	}

	if _, err := kv.Put(ctx, prefix+"/o/typed", map[string]any{"port": 993, "nested": map[string]any{"x": "hidden-nested"}}); err != nil {
		t.Fatal(err)
	}
	_, _, err := s.Get(ctx, broker.SecretKey{Owner: "o", Name: "typed"})
	if err == nil || !strings.Contains(err.Error(), "not a string") {
		t.Errorf("Get of non-string fields: %v, want a refusal", err)
	}
	if err != nil && (strings.Contains(err.Error(), "993") || strings.Contains(err.Error(), "hidden-nested")) {
		t.Errorf("the refusal reveals a value: %v", err)
	}
}

// TestPingNoticesARevokedToken: /readyz must not report ready while Vault
// is up but refuses Lanyard's token.
func TestPingNoticesARevokedToken(t *testing.T) {
	addr, root := testenv.Vault(t)
	admin, err := api.NewClient(&api.Config{Address: addr})
	if err != nil {
		t.Fatal(err)
	}
	admin.SetToken(root)
	sec, err := admin.Auth().Token().Create(&api.TokenCreateRequest{Policies: []string{"default"}, TTL: "10m"})
	if err != nil {
		t.Fatal(err)
	}
	s, err := vault.New(t.Context(), vault.Config{Address: addr, Token: broker.SecretString(sec.Auth.ClientToken), Timeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.Ping(t.Context()); err != nil {
		t.Fatalf("Ping with a valid token: %v", err)
	}
	if err := admin.Auth().Token().RevokeTree(sec.Auth.ClientToken); err != nil {
		t.Fatal(err)
	}
	if err := s.Ping(t.Context()); !errors.Is(err, broker.ErrUnavailable) {
		t.Errorf("Ping with a revoked token = %v, want ErrUnavailable", err)
	}
}
