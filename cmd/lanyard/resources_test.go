package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/lanyardhq/lanyard/broker"
	"github.com/lanyardhq/lanyard/internal/bolt"
	"github.com/lanyardhq/lanyard/internal/config"
)

var secretRE = regexp.MustCompile(`lys_[A-Za-z0-9_-]{43}`)

// redeemStatus posts a redemption with a bogus token as id:secret and
// returns the status and error code: invalid_client means the secret was
// refused, invalid_token that it was accepted.
func redeemStatus(t *testing.T, base, id, secret string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest("POST", base+"/v1/redeem", strings.NewReader(`{"token":"x.y.z","connector":"c","tool":"t"}`))
	req.Header.Set("Content-Type", "application/json")
	req.SetBasicAuth(id, secret)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body map[string]string
	_ = json.NewDecoder(resp.Body).Decode(&body)
	return resp.StatusCode, body["error"]
}

// TestResourcesCommands: add prints a secret once and stores only its
// hash; the running server accepts it at /v1/redeem; rotate-secret
// replaces it; list never shows secrets; config-defined servers cannot be
// deleted or rotated; delete removes.
func TestResourcesCommands(t *testing.T) {
	dir := t.TempDir()
	code, out, stderr := run(t, nil, "", "resources", "add", "--data", dir, "--id", "mail", "--uri", "https://mail.example.com/mcp",
		"--name", "Mail", "--scopes", "mail.read,mail.send", "--connectors", "imap,gh", "--tool", "search:mail.read:imap")
	secret := secretRE.FindString(out)
	if code != 0 || secret == "" {
		t.Fatalf("resources add: exit %d\n%s%s", code, out, stderr)
	}
	code, out, _ = run(t, nil, "", "resources", "list", "--data", dir)
	if code != 0 || !strings.Contains(out, "https://mail.example.com/mcp") || !strings.Contains(out, "imap,gh") ||
		!strings.Contains(out, "default deny; rules: search") || strings.Contains(out, "lys_") {
		t.Errorf("resources list = %d\n%s", code, out)
	}
	if code, _, stderr := run(t, nil, "", "resources", "add", "--data", dir, "--id", "mail", "--uri", "https://x.example.com/mcp"); code != exitUsage || !strings.Contains(stderr, "exists") {
		t.Errorf("duplicate add: %d %s", code, stderr)
	}
	if code, _, stderr := run(t, nil, "", "resources", "add", "--data", dir, "--id", "bad", "--uri", "http://evil.example/mcp"); code != exitUsage || !strings.Contains(stderr, "--uri") {
		t.Errorf("add with an http URI: %d %s", code, stderr)
	}

	// Only the hash is stored; a config-defined server is protected.
	cfg, err := finish(func() (c config.Config) { c = config.Default(); c.DataDir, c.Dev = dir, true; return }())
	if err != nil {
		t.Fatal(err)
	}
	db, err := bolt.Open(cfg.Store.Bolt.Path, bolt.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	r, err := db.Resources().Get(ctx, "mail")
	if err != nil || r.SecretHash != broker.HashSecret(secret) || len(r.Policy.Tools) != 1 || r.Policy.Tools[0].Connectors[0] != "imap" {
		t.Errorf("stored resource = %+v, %v", r, err)
	}
	if err := db.Resources().Create(ctx, broker.Resource{ID: "cfg", URI: "https://cfg.example.com/mcp", FromConfig: true, CreatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	_ = db.Close()
	for _, verb := range []string{"delete", "rotate-secret"} {
		if code, _, stderr := run(t, nil, "", "resources", verb, "--data", dir, "cfg"); code != exitUsage || !strings.Contains(stderr, "config file") {
			t.Errorf("resources %s of a config-defined server: %d %s", verb, code, stderr)
		}
	}

	in := start(t, nil, "dev", "--addr", "127.0.0.1:0", "--data", dir)
	if st, e := redeemStatus(t, in.url, "mail", secret); st != 401 || e != "invalid_token" {
		t.Errorf("redeem with the new secret: %d %s; want the secret accepted (invalid_token for the bogus token)", st, e)
	}
	if st, e := redeemStatus(t, in.url, "mail", "lys_wrong"); st != 401 || e != "invalid_client" {
		t.Errorf("redeem with a wrong secret: %d %s", st, e)
	}
	in.stop()

	code, out, _ = run(t, nil, "", "resources", "rotate-secret", "--data", dir, "mail")
	rotated := secretRE.FindString(out)
	if code != 0 || rotated == "" || rotated == secret {
		t.Fatalf("rotate-secret: %d %s", code, out)
	}
	in = start(t, nil, "dev", "--addr", "127.0.0.1:0", "--data", dir)
	if st, e := redeemStatus(t, in.url, "mail", secret); e != "invalid_client" {
		t.Errorf("old secret after rotation: %d %s", st, e)
	}
	if st, e := redeemStatus(t, in.url, "mail", rotated); e != "invalid_token" {
		t.Errorf("new secret after rotation: %d %s", st, e)
	}
	in.stop()

	if code, out, _ := run(t, nil, "", "resources", "delete", "--data", dir, "mail"); code != 0 || !strings.Contains(out, "deleted") {
		t.Errorf("delete: %d %s", code, out)
	}
	if code, out, _ := run(t, nil, "", "resources", "list", "--data", dir); code != 0 || strings.Contains(out, "mail.example.com") {
		t.Errorf("list after delete: %s", out)
	}
	if code, out, _ := run(t, nil, "", "resources", "--help"); code != 0 || !strings.Contains(out, "rotate-secret") {
		t.Errorf("resources --help: %d %s", code, out)
	}
}

// TestGrantsAndAuditCommands: grants list shows a grant, revoke revokes it
// and records the revocation; audit verify passes and export writes it as
// JSON lines.
func TestGrantsAndAuditCommands(t *testing.T) {
	dir := t.TempDir()
	cfg, err := finish(func() (c config.Config) { c = config.Default(); c.DataDir, c.Dev = dir, true; return }())
	if err != nil {
		t.Fatal(err)
	}
	// The data dir must exist before bolt opens its file.
	if code, _, stderr := run(t, nil, "a long enough password\n", "users", "add", "--data", dir, "alice"); code != 0 {
		t.Fatal(stderr)
	}
	db, err := bolt.Open(cfg.Store.Bolt.Path, bolt.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	u, err := db.Users().GetBy(ctx, broker.IndexUsername, "alice")
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	if err := db.Grants().Create(ctx, broker.Grant{ID: "g1", UserID: u.ID, ClientID: "agent", Resource: "https://m.example.com/mcp",
		Scopes: []string{"mail.read"}, ConnectionIDs: []string{"c1"}, CreatedAt: now, UpdatedAt: now}); err != nil {
		t.Fatal(err)
	}
	_ = db.Close()
	code, out, _ := run(t, nil, "", "grants", "list", "--data", dir, "--user", "alice")
	if code != 0 || !strings.Contains(out, "g1") || !strings.Contains(out, "alice") || !strings.Contains(out, "active") {
		t.Errorf("grants list: %d\n%s", code, out)
	}
	if code, _, stderr := run(t, nil, "", "grants", "list", "--data", dir, "--user", "nobody"); code != exitUsage || !strings.Contains(stderr, "no user") {
		t.Errorf("grants list for an unknown user: %d %s", code, stderr)
	}
	if code, out, _ := run(t, nil, "", "grants", "revoke", "--data", dir, "g1"); code != 0 || !strings.Contains(out, "revoked grant g1") {
		t.Errorf("grants revoke: %d %s", code, out)
	}
	if code, out, _ := run(t, nil, "", "grants", "revoke", "--data", dir, "g1"); code != 0 || !strings.Contains(out, "already revoked") {
		t.Errorf("second revoke: %d %s", code, out)
	}
	if code, _, _ := run(t, nil, "", "grants", "revoke", "--data", dir, "nope"); code != exitUsage {
		t.Errorf("revoke of an unknown grant: exit %d", code)
	}
	if _, out, _ := run(t, nil, "", "grants", "list", "--data", dir); !strings.Contains(out, "revoked ") {
		t.Errorf("grants list after revoke:\n%s", out)
	}
	code, out, stderr := run(t, nil, "", "audit", "verify", "--data", dir)
	if code != 0 || !strings.Contains(out, "audit chain intact") {
		t.Errorf("audit verify: %d %s%s", code, out, stderr)
	}
	code, out, _ = run(t, nil, "", "audit", "export", "--data", dir)
	var last broker.AuditEvent
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &last); code != 0 || err != nil ||
		last.Action != broker.AuditRevoke || last.GrantID != "g1" || last.UserID != u.ID {
		t.Errorf("audit export: %d %v\n%s", code, err, out)
	}
	if _, out, _ := run(t, nil, "", "audit", "export", "--data", dir, "--after", "1000"); out != "" {
		t.Errorf("export after the last record = %q", out)
	}
}

// TestResourcesAddChecks: `resources add` checks what the config file's
// resources are checked for: plain-http loopback URIs only for a dev
// instance (--data; with --config, the configuration's Dev flag, which a
// served configuration does not have), unique tool rules with the server's
// connectors, and a --jwks-file stored as public keys only.
func TestResourcesAddChecks(t *testing.T) {
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "lanyard.yaml")
	if err := os.WriteFile(cfgPath, []byte("issuer: https://l.example\nlisten: 127.0.0.1:0\ndata_dir: "+filepath.Join(dir, "served")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	dev := []string{"--data", filepath.Join(dir, "dev")}
	served := []string{"--config", cfgPath}
	add := func(where []string, args ...string) (int, string) {
		t.Helper()
		code, out, stderr := run(t, nil, "", append(append([]string{"resources", "add"}, where...), args...)...)
		return code, out + stderr
	}
	n := 0
	id := func() string { n++; return fmt.Sprintf("r%d", n) }
	uri := func() string { return fmt.Sprintf("https://m%d.example.com/mcp", n) }

	for _, tc := range []struct {
		name  string
		where []string
		args  []string
		ok    bool
		why   string
	}{
		{"dev: loopback http URI", dev, []string{"--uri", "http://127.0.0.1:8090/mcp"}, true, ""},
		{"dev: non-loopback http URI", dev, []string{"--uri", "http://evil.example/mcp"}, false, "--uri"},
		{"served: loopback http URI", served, []string{"--uri", "http://127.0.0.1:8091/mcp"}, false, "--uri"},
		{"served: https URI", served, []string{"--uri", "https://served.example.com/mcp"}, true, ""},
		{"dev: loopback http JWKS URL", dev, []string{"--jwks-url", "http://127.0.0.1:9/jwks.json"}, true, ""},
		{"dev: non-loopback http JWKS URL", dev, []string{"--jwks-url", "http://keys.example/jwks.json"}, false, "--jwks-url"},
		{"served: loopback http JWKS URL", served, []string{"--jwks-url", "http://127.0.0.1:9/jwks.json"}, false, "--jwks-url"},
		{"JWKS URL with user info", dev, []string{"--jwks-url", "https://u:p@keys.example/jwks.json"}, false, "--jwks-url"},
		{"duplicate tool rule", dev, []string{"--connectors", "imap", "--tool", "search::imap", "--tool", "search"}, false, `"search" is given twice`},
		{"tool connector not the server's", dev, []string{"--connectors", "imap", "--tool", "search::github"}, false, `connector "github" is not in --connectors`},
		{"tool rules fine", dev, []string{"--connectors", "imap,github", "--tool", "search::imap", "--tool", "send::github,imap"}, true, ""},
	} {
		args := append([]string{"--id", id()}, tc.args...)
		if !slices.Contains(args, "--uri") {
			args = append(args, "--uri", uri())
		}
		code, out := add(tc.where, args...)
		switch {
		case tc.ok && code != 0:
			t.Errorf("%s: exit %d, want success\n%s", tc.name, code, out)
		case !tc.ok && (code != exitUsage || !strings.Contains(out, tc.why)):
			t.Errorf("%s: exit %d, want a usage error saying %q\n%s", tc.name, code, tc.why, out)
		}
	}

	// --jwks-file: a private key given by mistake is stored as its public
	// half; a symmetric key is refused.
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	b64 := func(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }
	point, err := priv.PublicKey.Bytes() // 0x04 || x || y
	if err != nil {
		t.Fatal(err)
	}
	raw, err := priv.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	x, y, d := point[1:33], point[33:], b64(raw)
	privJWKS := fmt.Sprintf(`{"keys":[{"kty":"EC","crv":"P-256","kid":"k1","alg":"ES256","x":%q,"y":%q,"d":%q}]}`, b64(x), b64(y), d)
	privFile := filepath.Join(dir, "private.jwks")
	octFile := filepath.Join(dir, "oct.jwks")
	_ = os.WriteFile(privFile, []byte(privJWKS), 0o600)
	_ = os.WriteFile(octFile, []byte(`{"keys":[{"kty":"oct","k":"c2VjcmV0LXNlY3JldC1zZWNyZXQ","kid":"h"}]}`), 0o600)
	if code, out := add(dev, "--id", "jwtsrv", "--uri", "https://jwt.example.com/mcp", "--jwks-file", privFile); code != 0 {
		t.Fatalf("--jwks-file with a private key: exit %d\n%s", code, out)
	}
	if code, out := add(dev, "--id", "octsrv", "--uri", "https://oct.example.com/mcp", "--jwks-file", octFile); code != exitUsage || !strings.Contains(out, "symmetric") {
		t.Errorf("--jwks-file with a symmetric key: exit %d\n%s", code, out)
	}
	if code, out := add(dev, "--id", "junksrv", "--uri", "https://junk.example.com/mcp", "--jwks-file", cfgPath); code != exitUsage || !strings.Contains(out, "--jwks-file") {
		t.Errorf("--jwks-file that is no JWK Set: exit %d\n%s", code, out)
	}
	cfg, err := finish(func() (c config.Config) {
		c = config.Default()
		c.DataDir, c.Dev = filepath.Join(dir, "dev"), true
		return
	}())
	if err != nil {
		t.Fatal(err)
	}
	db, err := bolt.Open(cfg.Store.Bolt.Path, bolt.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	r, err := db.Resources().Get(t.Context(), "jwtsrv")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(r.JWKS, d) || strings.Contains(r.JWKS, `"d"`) || !strings.Contains(r.JWKS, `"k1"`) || r.TokenEndpointAuthMethod != "private_key_jwt" {
		t.Errorf("stored JWKS %s (auth %s): want the public key only", r.JWKS, r.TokenEndpointAuthMethod)
	}
	for _, id := range []string{"octsrv", "junksrv"} {
		if _, err := db.Resources().Get(t.Context(), id); err == nil {
			t.Errorf("%s was registered", id)
		}
	}
}
