package main

import (
	"context"
	"encoding/json"
	"net/http"
	"regexp"
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
