package config

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"
)

func env(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func TestParseExpandsEnvInValuesOnly(t *testing.T) {
	raw := []byte(`
issuer: https://${HOST}
listen: "127.0.0.1:${PORT}"
http:
  max_header_bytes: ${MAXHDR}
  read_timeout: ${RT}
secrets:
  backend: vault
  vault:
    address: http://127.0.0.1:8200
    token: ${VAULT_TOKEN}
    prefix: "cost$$center"
`)
	cfg, err := Parse(raw, env(map[string]string{
		"HOST": "lanyard.example.com", "PORT": "9090", "MAXHDR": "65536", "RT": "7s",
		"VAULT_TOKEN": "hvs.canary-token: {injected: true}",
	}))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	if got, want := cfg.Issuer, "https://lanyard.example.com"; got != want {
		t.Errorf("issuer = %q, want %q", got, want)
	}
	if got, want := cfg.Listen, "127.0.0.1:9090"; got != want {
		t.Errorf("listen = %q, want %q", got, want)
	}
	if got, want := cfg.HTTP.MaxHeaderBytes, 65536; got != want {
		t.Errorf("max_header_bytes = %d, want %d", got, want)
	}
	if got, want := cfg.HTTP.ReadTimeout, 7*time.Second; got != want {
		t.Errorf("read_timeout = %v, want %v", got, want)
	}
	if got, want := cfg.Secrets.Vault.Token.Reveal(), "hvs.canary-token: {injected: true}"; got != want {
		t.Errorf("token = %q, want %q (an env value must not become YAML structure)", got, want)
	}
	if got, want := cfg.Secrets.Vault.Prefix, "cost$center"; got != want {
		t.Errorf("prefix = %q, want %q", got, want)
	}
	if got, want := cfg.Store.Bolt.Path, filepath.Join(".lanyard", "lanyard.db"); got != want {
		t.Errorf("bolt path = %q, want %q", got, want)
	}
}

func TestParseListsEveryProblem(t *testing.T) {
	raw := []byte(`
issuer: http://lanyard.example.com
listen: nonsense
log: {level: loud, format: xml}
http: {read_timeout: 0s, max_header_bytes: 10}
runtime: {gc_headroom_mb: -1}
store: {backend: postgres}
secrets:
  backend: vault
  cache_ttl: 2h
  vault: {address: "ftp://x", token: "${MISSING}"}
`)
	_, err := Parse(raw, env(nil))
	var p Problems
	if !errors.As(err, &p) {
		t.Fatalf("Parse error = %v, want Problems", err)
	}
	for _, want := range []string{
		"issuer:", "listen:", "log.level:", "log.format:", "http.read_timeout:", "http.max_header_bytes:",
		"store.backend:", "secrets.vault.address:", "MISSING is not set", "token, token_file or approle",
		"runtime.gc_headroom_mb:", "secrets.cache_ttl:",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not mention %q:\n%v", want, err)
		}
	}
}

func TestParseRejectsUnknownKeys(t *testing.T) {
	_, err := Parse([]byte("issuer: https://x.example\nlisten_addr: 1.2.3.4:80\n"), env(nil))
	if err == nil || !strings.Contains(err.Error(), "listen_addr") {
		t.Fatalf("Parse error = %v, want it to name the unknown key", err)
	}
}

func TestIssuer(t *testing.T) {
	for _, tc := range []struct {
		issuer string
		dev    bool
		ok     bool
	}{
		{"https://lanyard.example.com", false, true},
		{"https://lanyard.example.com/tenant", false, true},
		{"http://lanyard.example.com", false, false},
		{"http://127.0.0.1:8080", false, false},
		{"http://127.0.0.1:8080", true, true},
		{"http://localhost:8080", true, true},
		{"http://evil.example", true, false},
		{"https://x.example/?a=b", false, false},
		{"https://x.example/#f", false, false},
		{"https://user@x.example", false, false},
		{"", false, false},
	} {
		t.Run(fmt.Sprintf("%s dev=%v", tc.issuer, tc.dev), func(t *testing.T) {
			err := checkIssuer(tc.issuer, tc.dev)
			if got := err == nil; got != tc.ok {
				t.Errorf("checkIssuer = %v, want ok=%v", err, tc.ok)
			}
		})
	}
}

func TestSecretFilesAndRedaction(t *testing.T) {
	dir := t.TempDir()
	f := filepath.Join(dir, "secret-id")
	if err := os.WriteFile(f, []byte("canary-secret-id-8842\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	raw := fmt.Sprintf(`
issuer: https://x.example
secrets:
  backend: vault
  vault:
    address: https://vault.example:8200
    approle: {role_id: r1, secret_id_file: %q}
`, f)
	cfg, err := Parse([]byte(raw), env(nil))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	if got := cfg.Secrets.Vault.AppRole.SecretID.Reveal(); got != "canary-secret-id-8842" {
		t.Errorf("secret id = %q", got)
	}
	var buf bytes.Buffer
	slog.New(slog.NewJSONHandler(&buf, nil)).Info("config", "cfg", cfg)
	fmt.Fprintf(&buf, "%v %+v %#v", cfg, cfg, cfg)
	if strings.Contains(buf.String(), "canary-secret-id-8842") {
		t.Errorf("config printing leaked the secret id:\n%s", buf.String())
	}
}

func TestLoadMissingFile(t *testing.T) {
	if _, err := Load(filepath.Join(t.TempDir(), "nope.yaml"), env(nil)); err == nil {
		t.Fatal("Load of a missing file succeeded")
	}
}

func TestExampleConfigIsValid(t *testing.T) {
	cfg, err := Load("../../configs/lanyard.example.yaml", env(map[string]string{
		"VAULT_ADDR": "https://vault.example:8200", "VAULT_TOKEN": "hvs.example",
		"MAIL_MCP_SECRET": "0123456789abcdef0123456789abcdef", "GITHUB_CLIENT_SECRET": "gh-secret",
	}))
	if err != nil {
		t.Fatalf("example config: %v", err)
	}
	if cfg.Secrets.Backend != "vault" || cfg.Issuer == "" {
		t.Errorf("example config parsed as %+v", cfg)
	}
}

// TestExampleDocumentsEveryKey fails when a key is added to Config but not to
// configs/lanyard.example.yaml.
func TestExampleDocumentsEveryKey(t *testing.T) {
	raw, err := os.ReadFile("../../configs/lanyard.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var walk func(typ reflect.Type, path string)
	walk = func(typ reflect.Type, path string) {
		for typ.Kind() == reflect.Pointer {
			typ = typ.Elem()
		}
		for i := 0; i < typ.NumField(); i++ {
			f := typ.Field(i)
			key := strings.Split(f.Tag.Get("yaml"), ",")[0]
			if key == "-" || key == "" {
				continue
			}
			if !regexp.MustCompile(`(?m)^[\s#-]*` + regexp.QuoteMeta(key) + `:`).Match(raw) {
				t.Errorf("key %s%s is not documented in the example config", path, key)
			}
			ft := f.Type
			for ft.Kind() == reflect.Pointer || ft.Kind() == reflect.Slice {
				ft = ft.Elem()
			}
			if ft.Kind() == reflect.Struct && ft != reflect.TypeOf(time.Time{}) {
				walk(ft, path+key+".")
			}
		}
	}
	walk(reflect.TypeOf(Config{}), "")
}

func TestResourcesAndClients(t *testing.T) {
	raw := []byte(`
issuer: https://x.example
resources:
  - {id: a, uri: "HTTPS://MCP.Example.com:443/mcp", scopes: [s1, s2], client_secret: "${S}"}
  - {id: a, uri: "https://mcp.example.com/mcp", scopes: [], default_scopes: [zz], client_secret: short}
  - {id: "bad id", uri: "http://evil.example/mcp", scopes: [x], client_secret: "${S}"}
clients:
  - {client_id: c1, redirect_uris: ["javascript:alert(1)", "https://app.example/cb#frag", "http://10.0.0.1/cb"]}
  - {client_id: c1, redirect_uris: ["https://app.example/cb"], grant_types: [password], client_secret: short}
oauth: {default_resource: "https://other.example/"}
`)
	_, err := Parse(raw, env(map[string]string{"S": "0123456789abcdef0123456789abcdef"}))
	for _, want := range []string{
		`resources[1].id: "a" is used twice`, `resources[1].uri: "https://mcp.example.com/mcp" is used twice`,
		"resources[1].scopes:", `resources[1].default_scopes: "zz"`, "resources[1].client_secret:",
		"resources[2].id:", "resources[2].uri:", `clients[0].redirect_uris: "javascript:alert(1)"`,
		`clients[0].redirect_uris: "https://app.example/cb#frag"`, `clients[0].redirect_uris: "http://10.0.0.1/cb"`,
		`clients[1].client_id: "c1" is used twice`, `clients[1].grant_types: "password"`, "clients[1].client_secret:",
		"oauth.default_resource:",
	} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error does not mention %q:\n%v", want, err)
		}
	}
	cfg, err := Parse([]byte(`
issuer: https://x.example
resources: [{id: a, uri: "HTTPS://MCP.Example.com:443", scopes: [s1], client_secret: "${S}"}]
`), env(map[string]string{"S": "0123456789abcdef0123456789abcdef"}))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := cfg.Resources[0].URI, "https://mcp.example.com/"; got != want {
		t.Errorf("canonical uri = %q, want %q", got, want)
	}
	if got := cfg.Resources[0].DefaultScopes; len(got) != 1 || got[0] != "s1" {
		t.Errorf("default scopes = %v, want all scopes", got)
	}
}

func TestTypeErrorsHideValues(t *testing.T) {
	_, err := Parse([]byte("issuer: https://x.example\nhttp:\n  max_header_bytes: ${SECRET}\n"), env(map[string]string{"SECRET": "hvs.SECRETVALUE"}))
	if err == nil || strings.Contains(err.Error(), "hvs.SEC") || !strings.Contains(err.Error(), "max_header_bytes") && !strings.Contains(err.Error(), "int") {
		t.Errorf("error = %v; want a type error that does not echo the value", err)
	}
}
