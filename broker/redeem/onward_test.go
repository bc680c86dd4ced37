package redeem_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/lanyardhq/lanyard/broker"
	"github.com/lanyardhq/lanyard/connectors"
	"github.com/lanyardhq/lanyard/connectors/oauthconn"
	"github.com/lanyardhq/lanyard/internal/config"
	"github.com/lanyardhq/lanyard/internal/testenv"
	"github.com/lanyardhq/lanyard/web"
)

const (
	provSecret  = "provider-client-secret-0123456789"
	upstreamAud = "https://api.example.test"
)

// introspectAt asks the provider's RFC 7662 endpoint about token as the
// client lanyard.
func introspectAt(t *testing.T, issuer, token string) map[string]any {
	t.Helper()
	form := url.Values{"token": {token}}
	req, _ := http.NewRequest(http.MethodPost, issuer+"/token/introspection", strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.SetBasicAuth("lanyard", provSecret)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil || resp.StatusCode != 200 {
		t.Fatalf("introspection: %d %v", resp.StatusCode, err)
	}
	return out
}

// TestTokenExchangeOnward: the idp connector is configured to exchange
// onward (token_exchange, exchange_audience) at a real OpenID provider
// (npm oidc-provider with the test-only RFC 8693 grant). Both doors, token
// exchange and /v1/redeem, hand the MCP server a new token the provider
// issued for the configured audience, never the stored one; the audit
// record says "onward exchange". When the provider ends the grant, the
// connection needs re-linking and nothing is handed out.
func TestTokenExchangeOnward(t *testing.T) {
	ctx := context.Background()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	base := "http://" + ln.Addr().String()
	prov := testenv.StartOIDCProvider(t, testenv.OIDCClient{ID: "lanyard", Secret: provSecret,
		RedirectURIs: []string{base + web.PathCallback + "/idp"}})
	idp, err := oauthconn.New(ctx, "idp", "Company IdP", config.OAuth2Connector{Preset: "oidc", Issuer: prov.Issuer,
		ClientID: "lanyard", ClientSecret: provSecret, Scopes: []string{"openid", "email", "offline_access"},
		TokenExchange: true, ExchangeAudience: upstreamAud}, oauthconn.Options{Dev: true})
	if err != nil {
		t.Fatal(err)
	}
	w := newWorldWith(t, worldOptions{extra: []connectors.Connector{idp}, ln: ln})
	w.onward.Store(true)
	authURL, err := w.links.BeginLink(ctx, "id-alice", "session-1", "idp", "")
	w.must(err)
	conn, err := w.links.CompleteLink(ctx, "id-alice", "session-1", "idp", prov.Login(t, authURL).Query())
	w.must(err)
	storedSecret := func() broker.Secret {
		sec, _, err := w.secrets.Get(ctx, conn.SecretKey)
		w.must(err)
		return sec
	}
	storedAT, _ := storedSecret().Field("access_token")
	storedRT, _ := storedSecret().Field("refresh_token")
	neverStored := func(what string, r result) {
		t.Helper()
		raw := fmt.Sprint(r.body)
		if strings.Contains(raw, storedAT) || strings.Contains(raw, storedRT) {
			t.Errorf("%s: the answer carries the stored token: %v", what, r.body)
		}
	}
	tok := w.tokenFor("alice", mcpURI, "mail.read", conn.ID)

	// Token exchange at Lanyard → exchange onward at the provider.
	form := withForm(exchangeForm(tok, "idp"), "tool", "exchange")
	r := w.exchange(mcpID, mcpSecret, form)
	if r.status != 200 || r.str("issued_token_type") != "urn:ietf:params:oauth:token-type:access_token" || r.str("token_type") != "Bearer" {
		t.Fatalf("exchange: %d %v", r.status, r.body)
	}
	neverStored("exchange", r)
	exchanged := r.str("access_token")
	if info := introspectAt(t, prov.Issuer, exchanged); exchanged == "" || info["active"] != true || info["aud"] != upstreamAud ||
		info["sub"] != "alice" {
		t.Errorf("introspection of the exchanged token = %v; want active, aud %s, alice's", info, upstreamAud)
	}
	// The provider's exchanged tokens live 300s; Lanyard's clock stood
	// still meanwhile, so allow for the seconds the test took.
	if in, _ := r.body["expires_in"].(float64); in < 250 || in > 400 {
		t.Errorf("expires_in = %v, want about 300 (the exchanged token's life)", r.body["expires_in"])
	}
	if r.hdr.Get("Cache-Control") != "no-store" {
		t.Errorf("Cache-Control = %q", r.hdr.Get("Cache-Control"))
	}
	if ev := w.lastAudit(); ev.Action != broker.AuditExchange || ev.Outcome != broker.OutcomeOK || ev.Reason != "onward exchange" ||
		ev.ConnectionID != conn.ID || ev.UserID != "id-alice" || ev.Resource != mcpURI || ev.Tool != "exchange" {
		t.Errorf("audit record = %+v", ev)
	}

	// /v1/redeem exchanges onward too: the operator's choice holds at
	// both doors.
	rr := w.redeem(mcpID, mcpSecret, req(tok, "idp", policyRead))
	cred, _ := rr.body["credential"].(map[string]any)
	at, _ := cred["access_token"].(string)
	if rr.status != 200 || rr.str("type") != "oauth2" || at == "" || at == exchanged || rr.str("expires_at") == "" {
		t.Fatalf("redeem: %d %v", rr.status, rr.body)
	}
	neverStored("redeem", rr)
	if info := introspectAt(t, prov.Issuer, at); info["active"] != true || info["aud"] != upstreamAud {
		t.Errorf("introspection of the redeemed token = %v", info)
	}
	if ev := w.lastAudit(); ev.Outcome != broker.OutcomeOK || ev.Reason != "onward exchange" || ev.Tool != policyRead {
		t.Errorf("audit record = %+v", ev)
	}
	// The stored token is untouched (still valid, not replaced).
	if at, _ := storedSecret().Field("access_token"); at != storedAT {
		t.Error("the stored access token changed")
	}
	// Policy still comes first.
	checkDenied(t, w.exchange(mcpID, mcpSecret, withForm(form, "tool", policySend)), 403, "insufficient_scope", "mail.send")

	// The provider ends the grant: the exchange is refused, the refresh
	// too, and the connection needs re-linking.
	prov.RevokeAll(t)
	checkDenied(t, w.exchange(mcpID, mcpSecret, form), 409, "needs_relink", "re-link")
	if ev := w.lastAudit(); ev.Outcome != broker.OutcomeDenied || !strings.Contains(ev.Reason, "onward exchange") {
		t.Errorf("audit record = %+v", ev)
	}
	if c, err := w.store.Connections().Get(ctx, conn.ID); err != nil || c.Status != broker.ConnectionNeedsRelink {
		t.Errorf("connection status %q (%v), want needs_relink", c.Status, err)
	}
	checkDenied(t, w.redeem(mcpID, mcpSecret, req(tok, "idp", policyRead)), 409, "needs_relink", "re-link")
}
