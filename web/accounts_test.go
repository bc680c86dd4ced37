package web_test

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/lanyardhq/lanyard/broker"
	"github.com/lanyardhq/lanyard/connectors"
	"github.com/lanyardhq/lanyard/connectors/apikey"
	"github.com/lanyardhq/lanyard/connectors/oauthconn"
	"github.com/lanyardhq/lanyard/internal/config"
	"github.com/lanyardhq/lanyard/internal/testenv"
	"github.com/lanyardhq/lanyard/web"
)

// TestLinkedAccountsWithAPIKey drives the linked-accounts pages with the
// real apikey connector, verified against an upstream that accepts one key.
func TestLinkedAccountsWithAPIKey(t *testing.T) {
	const goodKey, badKey = "sk-live-canary-0123456789-WXYZ", "sk-wrong-key-000000000000"
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer "+goodKey {
			w.WriteHeader(http.StatusUnauthorized)
		}
	}))
	defer upstream.Close()
	ak, err := apikey.New("weather", "Weather <API>", config.APIKeyConnector{Header: "Authorization", Prefix: "Bearer ",
		VerifyURL: upstream.URL + "/me"}, apikey.Options{Dev: true})
	if err != nil {
		t.Fatal(err)
	}
	ts, st := newUIWith(t, false, []connectors.Connector{ak}, nil)
	c := &client{t: t, base: ts.URL, cookies: map[string]string{}}
	_, page := c.do("GET", "/login", nil)
	if resp, _ := c.do("POST", "/login", url.Values{"username": {"alice"}, "password": {pw}, "csrf_token": {csrf(t, page)}}); resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("login: %d", resp.StatusCode)
	}
	resp, page := c.do("GET", "/accounts", nil)
	if resp.StatusCode != 200 || !strings.Contains(page, "Link Weather &lt;API&gt;") {
		t.Fatalf("accounts page: %d\n%s", resp.StatusCode, page)
	}
	_, form := c.do("GET", "/accounts/link?connector=weather", nil)
	resp, body := c.do("POST", "/accounts/link", url.Values{"connector": {"weather"}, "api_key": {badKey}, "csrf_token": {csrf(t, form)}})
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(body, "refused") || strings.Contains(body, badKey) {
		t.Errorf("bad key: %d; want 400 with a clear message and the key not echoed\n%s", resp.StatusCode, body)
	}
	if keys, _ := st.secrets.List(context.Background(), "id-alice"); len(keys) != 0 {
		t.Errorf("a rejected key was stored: %v", keys)
	}
	resp, _ = c.do("POST", "/accounts/link", url.Values{"connector": {"weather"}, "api_key": {goodKey}, "csrf_token": {csrf(t, form)}})
	if resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("good key: %d", resp.StatusCode)
	}
	_, page = c.do("GET", resp.Header.Get("Location"), nil)
	if !strings.Contains(page, "Account linked.") || !strings.Contains(page, "WXYZ") || strings.Contains(page, "0123456789") || !strings.Contains(page, "Working") {
		t.Errorf("after linking: want the account, masked to the last 4 characters, shown as working\n%s", page)
	}
	conns, err := st.store.Connections().List(context.Background(), brokerQuery("id-alice"))
	if err != nil || len(conns.Items) != 1 {
		t.Fatalf("connections: %v %v", conns, err)
	}
	id := conns.Items[0].ID
	if resp, _ := c.do("POST", "/accounts/verify", url.Values{"connection": {id}, "csrf_token": {csrf(t, page)}}); resp.Header.Get("Location") != "/accounts?done=verified" {
		t.Errorf("test now: %v", resp.Header.Get("Location"))
	}
	// Another browser's CSRF token does not work; a missing one neither.
	if resp, _ := c.do("POST", "/accounts/unlink", url.Values{"connection": {id}}); resp.StatusCode != http.StatusForbidden {
		t.Errorf("unlink without CSRF token: %d", resp.StatusCode)
	}
	resp, confirm := c.do("GET", "/accounts/unlink?connection="+id, nil)
	if resp.StatusCode != 200 || !strings.Contains(confirm, `id="unlink"`) {
		t.Fatalf("unlink confirmation page: %d", resp.StatusCode)
	}
	resp, _ = c.do("POST", "/accounts/unlink", url.Values{"connection": {id}, "csrf_token": {csrf(t, confirm)}})
	if resp.Header.Get("Location") != "/accounts?done=unlinked" {
		t.Fatalf("unlink: %d %v", resp.StatusCode, resp.Header)
	}
	if keys, _ := st.secrets.List(context.Background(), "id-alice"); len(keys) != 0 {
		t.Errorf("secret still stored after unlink: %v", keys)
	}
}

func brokerQuery(user string) broker.Query {
	return broker.Query{Index: broker.IndexUser, Value: user}
}

// TestLinkOAuthAccountAtRealProvider links an account at a real OpenID
// provider (npm oidc-provider) through the linked-accounts pages, and shows
// that a response arriving at another connector's callback cannot complete
// the link (mix-up defence).
func TestLinkOAuthAccountAtRealProvider(t *testing.T) {
	ctx := context.Background()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	base := "http://" + ln.Addr().String()
	prov := testenv.StartOIDCProvider(t, testenv.OIDCClient{ID: "lanyard", Secret: "provider-client-secret-0123456789",
		RedirectURIs: []string{base + web.PathCallback + "/idp"}})
	idp, err := oauthconn.New(ctx, "idp", "Company IdP", config.OAuth2Connector{Preset: "oidc", Issuer: prov.Issuer,
		ClientID: "lanyard", ClientSecret: "provider-client-secret-0123456789", Scopes: []string{"openid", "email", "offline_access"}},
		oauthconn.Options{Dev: true})
	if err != nil {
		t.Fatal(err)
	}
	other, err := apikey.New("other", "Other", config.APIKeyConnector{Header: "X-Key"}, apikey.Options{Dev: true})
	if err != nil {
		t.Fatal(err)
	}
	ts, st := newUIWith(t, false, []connectors.Connector{idp, other}, ln)
	c := &client{t: t, base: ts.URL, cookies: map[string]string{}}
	_, page := c.do("GET", "/login", nil)
	c.do("POST", "/login", url.Values{"username": {"alice"}, "password": {pw}, "csrf_token": {csrf(t, page)}})
	_, page = c.do("GET", "/accounts", nil)
	if csp := c.lastCSP; !strings.Contains(csp, prov.Issuer) {
		t.Errorf("accounts page CSP form-action does not allow the provider: %q", csp)
	}
	start := func() string {
		resp, body := c.do("POST", "/accounts/start", url.Values{"connector": {"idp"}, "csrf_token": {csrf(t, page)}})
		if resp.StatusCode != http.StatusSeeOther || !strings.HasPrefix(resp.Header.Get("Location"), prov.Issuer) {
			t.Fatalf("start: %d %v\n%s", resp.StatusCode, resp.Header, body)
		}
		return resp.Header.Get("Location")
	}
	// A response delivered at another connector's callback is refused.
	cb := prov.Login(t, start())
	resp, _ := c.do("GET", web.PathCallback+"/other?"+cb.RawQuery, nil)
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("callback at another connector's URI: %d, want 400", resp.StatusCode)
	}
	// The real round trip.
	cb = prov.Login(t, start())
	if !strings.HasPrefix(cb.String(), base+web.PathCallback+"/idp") {
		t.Fatalf("provider redirected to %v", cb)
	}
	resp, _ = c.do("GET", cb.RequestURI(), nil)
	if resp.Header.Get("Location") != "/accounts?done=linked" {
		t.Fatalf("callback: %d %v", resp.StatusCode, resp.Header)
	}
	// Replaying the callback does nothing more.
	if resp, _ := c.do("GET", cb.RequestURI(), nil); resp.StatusCode != http.StatusBadRequest {
		t.Errorf("replayed callback: %d, want 400", resp.StatusCode)
	}
	conns, err := st.store.Connections().List(ctx, brokerQuery("id-alice"))
	if err != nil || len(conns.Items) != 1 || conns.Items[0].Connector != "idp" {
		t.Fatalf("connections: %+v %v", conns, err)
	}
	sec, _, err := st.secrets.Get(ctx, conns.Items[0].SecretKey)
	if at, _ := sec.Field("access_token"); err != nil || at == "" {
		t.Errorf("stored secret: %v %v", sec, err)
	}
	_, page = c.do("GET", "/accounts", nil)
	if !strings.Contains(page, "Company IdP") || !strings.Contains(page, "Working") {
		t.Errorf("accounts page after link:\n%s", page)
	}
	// Unlink revokes upstream and deletes the secret.
	c.do("POST", "/accounts/unlink", url.Values{"connection": {conns.Items[0].ID}, "csrf_token": {csrf(t, page)}})
	if _, _, err := st.secrets.Get(ctx, conns.Items[0].SecretKey); !errors.Is(err, broker.ErrNotFound) {
		t.Errorf("secret after unlink: %v", err)
	}
}
