package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lanyardhq/lanyard/internal/testenv"
)

// Display names of the three connectors of TestLinkedAccountsInBrowser.
var accountsConnectors = map[string]string{
	"mail":    "Mail (IMAP)",
	"idp":     "Example ID",
	"weather": "Weather API",
}

const accountsUser = "alice"

// accountsResult is the RESULT line of accounts.mjs.
type accountsResult struct {
	OK          bool `json:"ok"`
	Connections map[string]struct {
		ID      string `json:"id"`
		Status  string `json:"status"`
		Account string `json:"account"`
	} `json:"connections"`
	Unlinked             string           `json:"unlinked"`
	WrongPasswordAnswers int              `json:"wrong_password_answers"`
	WrongPasswordMessage string           `json:"wrong_password_message"`
	ExternalRequests     []map[string]any `json:"external_requests"`
	PhoneOverflow        int              `json:"phone_horizontal_overflow_px"`
	Requests             int              `json:"requests"`
	Screenshots          []string         `json:"screenshots"`
}

// TestLinkedAccountsInBrowser is the browser end-to-end test of the linked
// accounts pages (issue 4, item 7): headless Chromium signs in to a real
// Lanyard whose secrets go to the real Vault of `make test`; links an IMAP
// account at a real dovecot (a wrong password first: error, nothing stored),
// an OAuth account through a real OpenID provider's login and consent pages,
// and an API key checked by an upstream; sees the three working; unlinks
// the API key. Then Vault is asked directly: the unlinked account's secret
// is gone and exactly the two others remain.
func TestLinkedAccountsInBrowser(t *testing.T) {
	dir, root := e2eDirs(t)
	// The provider's own packages are checked by testenv.
	prerequisites(t, dir, "playwright-core")
	vaultAddr, vaultToken := testenv.Vault(t)
	tmp := t.TempDir()

	// Lanyard's port first: the provider must know its callback URL.
	lanyardPort := testenv.FreePort(t)
	base := "http://" + testenv.Addr(lanyardPort)

	imapUser, imapPassword := "alice@mail.test", randomHex(t, 10)
	dovecot := testenv.StartDovecot(t, map[string]string{imapUser: imapPassword})

	idpSecret := randomHex(t, 24)
	provider := testenv.StartOIDCProvider(t, testenv.OIDCClient{
		ID: "lanyard-e2e", Secret: idpSecret, RedirectURIs: []string{base + "/accounts/callback/idp"},
	})

	apiKey := "wk_" + randomHex(t, 16)
	api := newKeyChecker(apiKey)
	t.Cleanup(api.srv.Close)

	bin := lanyardBin(t, root, tmp)
	cfgPath := writeConfig(t, tmp, fmt.Sprintf(`# written by accounts_test.go
connectors:
  - name: mail
    kind: basic
    display_name: %q
    basic:
      protocol: imap
      address: %s
      tls: implicit
      ca_cert: %s
  - name: idp
    kind: oauth2
    display_name: %q
    oauth2:
      preset: oidc
      issuer: %s
      client_id: lanyard-e2e
      client_secret: ${E2E_IDP_SECRET}
      scopes: [openid, email, offline_access]
  - name: weather
    kind: apikey
    display_name: %q
    apikey:
      header: Authorization
      prefix: "Bearer "
      verify_url: %s/v1/me
`, accountsConnectors["mail"], dovecot.TLSAddr, dovecot.CACert,
		accountsConnectors["idp"], provider.Issuer,
		accountsConnectors["weather"], api.srv.URL))

	password := randomHex(t, 12)
	lanyardLog := testenv.Start(t, lanyardDev(bin, lanyardPort, filepath.Join(tmp, "data"), cfgPath,
		"VAULT_ADDR="+vaultAddr,
		"VAULT_TOKEN="+vaultToken,
		"LANYARD_BOOTSTRAP_USER="+accountsUser,
		"LANYARD_BOOTSTRAP_PASSWORD="+password,
		"E2E_IDP_SECRET="+idpSecret,
	))
	waitReady(t, lanyardPort, base+"/login")

	names, _ := json.Marshal(accountsConnectors)
	var r accountsResult
	runScript(t, dir, []string{
		"LANYARD_URL=" + base,
		"E2E_USERNAME=" + accountsUser,
		"E2E_PASSWORD=" + password,
		"E2E_CONNECTORS=" + string(names),
		"E2E_IMAP_USER=" + imapUser,
		"E2E_IMAP_PASSWORD=" + imapPassword,
		"E2E_IMAP_WRONG_PASSWORD=wrong-" + randomHex(t, 6),
		"E2E_IDP_ISSUER=" + provider.Issuer,
		"E2E_IDP_USER=bob",
		"E2E_API_KEY=" + apiKey,
		"E2E_SCREENSHOT_DIR=" + artifactDir(tmp),
	}, &r, "accounts.mjs")
	t.Logf("wrong-password message: %q", r.WrongPasswordMessage)
	for _, e := range r.ExternalRequests {
		t.Logf("external request answered by the script (not Lanyard's): %v", e)
	}
	if r.PhoneOverflow > 0 {
		t.Logf("note: the accounts page scrolls sideways by %d px at 390 px width", r.PhoneOverflow)
	}
	if !r.OK || r.WrongPasswordAnswers != 1 || r.Unlinked != "weather" {
		t.Fatalf("result ok=%v wrong_password_answers=%d unlinked=%q", r.OK, r.WrongPasswordAnswers, r.Unlinked)
	}
	if got := api.calls(); len(got) != 1 || got[0] != http.StatusOK {
		t.Errorf("API key verification calls answered %v, want one answered 200", got)
	}

	// What Lanyard logged: the user's id and one link per connector.
	user, linked, unlinked := accountsFromLog(t, lanyardLog)
	for c := range accountsConnectors {
		if got, want := linked[c], []string{r.Connections[c].ID}; !slices.Equal(got, want) {
			t.Errorf("Lanyard logged links %v for %s, want exactly the listed connection %v", got, c, want)
		}
	}
	if want := []string{r.Connections["weather"].ID}; !slices.Equal(unlinked, want) {
		t.Errorf("Lanyard logged unlinks %v, want %v", unlinked, want)
	}

	// What Vault holds for the user: the two linked secrets, and no other
	// (none from the wrong-password attempt, none of the unlinked account).
	v := vaultKV{addr: strings.TrimRight(vaultAddr, "/"), token: vaultToken}
	keys := v.list(t, "secret/metadata/lanyard/"+user+"/")
	t.Cleanup(func() { // leave the shared Vault as it was
		for _, k := range keys {
			v.do(t, http.MethodDelete, "secret/metadata/lanyard/"+user+"/"+k)
		}
	})
	want := []string{"conn-" + r.Connections["idp"].ID, "conn-" + r.Connections["mail"].ID}
	slices.Sort(keys)
	slices.Sort(want)
	if !slices.Equal(keys, want) {
		t.Errorf("Vault holds %v for user %s, want exactly %v (mail and idp; not weather, nothing from the wrong password)", keys, user, want)
	}
	gone := "secret/lanyard/" + user + "/conn-" + r.Connections["weather"].ID
	for _, p := range []string{"secret/data/lanyard/" + user + "/conn-" + r.Connections["weather"].ID,
		"secret/metadata/lanyard/" + user + "/conn-" + r.Connections["weather"].ID} {
		if status := v.status(t, p); status != http.StatusNotFound {
			t.Errorf("GET %s after unlink: HTTP %d, want 404 (the secret of %s must be gone)", p, status, gone)
		}
	}
	mailSecret, mailVersion := v.read(t, "secret/data/lanyard/"+user+"/conn-"+r.Connections["mail"].ID)
	if mailSecret["password"] != imapPassword || mailVersion != 1 {
		t.Errorf("the mail secret in Vault: version %d, right password %v; want version 1 holding the password that worked",
			mailVersion, mailSecret["password"] == imapPassword)
	}
	idpSecretData, _ := v.read(t, "secret/data/lanyard/"+user+"/conn-"+r.Connections["idp"].ID)
	var idpFields []string
	for k, val := range idpSecretData {
		if s, _ := val.(string); s != "" {
			idpFields = append(idpFields, k)
		}
	}
	slices.Sort(idpFields)
	if !slices.Contains(idpFields, "access_token") || !slices.Contains(idpFields, "refresh_token") {
		t.Errorf("the idp secret in Vault has fields %v, want access_token and refresh_token", idpFields)
	}
	t.Logf("Vault: user %s holds %v; idp secret fields %v", user, keys, idpFields)
}

// keyChecker is the upstream API: 200 for the right bearer key, 401
// otherwise. It records the status of every call.
type keyChecker struct {
	srv    *httptest.Server
	mu     sync.Mutex
	status []int
}

func newKeyChecker(key string) *keyChecker {
	k := &keyChecker{}
	k.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		status := http.StatusUnauthorized
		if r.URL.Path == "/v1/me" && r.Header.Get("Authorization") == "Bearer "+key {
			status = http.StatusOK
		}
		k.mu.Lock()
		k.status = append(k.status, status)
		k.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		if status == http.StatusOK {
			io.WriteString(w, `{"plan":"free"}`)
		} else {
			io.WriteString(w, `{"error":"invalid key"}`)
		}
	}))
	return k
}

func (k *keyChecker) calls() []int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return slices.Clone(k.status)
}

var (
	linkedRE   = regexp.MustCompile(`msg="account linked" user=(\S+) connector=(\S+) connection=(\S+)`)
	unlinkedRE = regexp.MustCompile(`msg="account unlinked" user=(\S+) connector=(\S+) connection=(\S+)`)
)

// accountsFromLog reads Lanyard's log: the one user who linked, the
// connections linked per connector and those unlinked.
func accountsFromLog(t *testing.T, path string) (user string, linked map[string][]string, unlinked []string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	linked = map[string][]string{}
	users := map[string]bool{}
	for _, m := range linkedRE.FindAllStringSubmatch(string(b), -1) {
		users[m[1]] = true
		linked[m[2]] = append(linked[m[2]], m[3])
	}
	for _, m := range unlinkedRE.FindAllStringSubmatch(string(b), -1) {
		users[m[1]] = true
		unlinked = append(unlinked, m[3])
	}
	if len(users) != 1 {
		t.Fatalf("Lanyard's log names %d users linking accounts, want 1:\n%s", len(users), b)
	}
	for u := range users {
		user = u
	}
	if url.PathEscape(user) != user {
		t.Fatalf("user id %q from the log is not a plain path segment", user)
	}
	return user, linked, unlinked
}

// vaultKV reads Vault's HTTP API with the root token of the test Vault.
type vaultKV struct{ addr, token string }

func (v vaultKV) do(t *testing.T, method, p string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, v.addr+"/v1/"+p, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("X-Vault-Token", v.token)
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		t.Fatalf("Vault %s %s: %v", method, p, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, body
}

func (v vaultKV) status(t *testing.T, p string) int {
	t.Helper()
	status, _ := v.do(t, http.MethodGet, p)
	return status
}

// list is a KV metadata LIST; a missing folder is empty.
func (v vaultKV) list(t *testing.T, p string) []string {
	t.Helper()
	status, body := v.do(t, "LIST", p)
	if status == http.StatusNotFound {
		return nil
	}
	if status != http.StatusOK {
		t.Fatalf("Vault LIST %s: HTTP %d: %s", p, status, body)
	}
	var out struct {
		Data struct {
			Keys []string `json:"keys"`
		} `json:"data"`
	}
	if err := json.Unmarshal(body, &out); err != nil {
		t.Fatalf("Vault LIST %s: %v", p, err)
	}
	return out.Data.Keys
}

// read is a KV v2 GET: the secret's fields and its version.
func (v vaultKV) read(t *testing.T, p string) (map[string]any, int) {
	t.Helper()
	status, body := v.do(t, http.MethodGet, p)
	if status != http.StatusOK {
		t.Fatalf("Vault GET %s: HTTP %d", p, status) // never the body: it is the secret
	}
	var out struct {
		Data struct {
			Data     map[string]any `json:"data"`
			Metadata struct {
				Version int `json:"version"`
			} `json:"metadata"`
		} `json:"data"`
	}
	if err := json.Unmarshal(body, &out); err != nil {
		t.Fatalf("Vault GET %s: undecodable answer", p)
	}
	return out.Data.Data, out.Data.Metadata.Version
}
