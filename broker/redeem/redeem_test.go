package redeem_test

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/lanyardhq/lanyard/broker"
	"github.com/lanyardhq/lanyard/broker/authserver"
	"github.com/lanyardhq/lanyard/broker/token"
	"github.com/lanyardhq/lanyard/connectors"
	"github.com/lanyardhq/lanyard/connectors/apikey"
	"github.com/lanyardhq/lanyard/connectors/oauthconn"
	"github.com/lanyardhq/lanyard/internal/config"
	"github.com/lanyardhq/lanyard/internal/testenv"
	"github.com/lanyardhq/lanyard/web"
)

func TestRedeemSuccess(t *testing.T) {
	w := newWorld(t)
	tok := w.tokenFor("alice", mcpURI, "mail.read", w.aliceKeys)
	before := w.lastAudit().Seq
	r := w.redeem(mcpID, mcpSecret, req(tok, "keys", policyRead))
	if r.status != http.StatusOK {
		t.Fatalf("redeem: %d %v", r.status, r.body)
	}
	cred, _ := r.body["credential"].(map[string]any)
	if r.str("connection_id") != w.aliceKeys || r.str("connector") != "keys" || r.str("type") != "apikey" ||
		cred[apikey.FieldKey] != aliceKey || cred["header"] != "X-Api-Key" {
		t.Errorf("response = %v", r.body)
	}
	if r.hdr.Get("Cache-Control") != "no-store" || r.hdr.Get("Pragma") != "no-cache" {
		t.Errorf("caching headers: %v", r.hdr)
	}
	ev := w.lastAudit()
	g := w.grantOf(tok)
	want := broker.AuditEvent{Action: broker.AuditRedeem, Outcome: broker.OutcomeOK, UserID: "id-alice", ClientID: agent,
		Resource: mcpURI, Tool: policyRead, Connector: "keys", ConnectionID: w.aliceKeys, GrantID: g.ID}
	if ev.Seq != before+1 || ev.Action != want.Action || ev.Outcome != want.Outcome || ev.UserID != want.UserID ||
		ev.ClientID != want.ClientID || ev.Resource != want.Resource || ev.Tool != want.Tool || ev.Connector != want.Connector ||
		ev.ConnectionID != want.ConnectionID || ev.GrantID != want.GrantID || ev.RequestID == "" {
		t.Errorf("audit record = %+v\nwant like %+v with a request id", ev, want)
	}
	if strings.Contains(ev.Reason, aliceKey) {
		t.Errorf("audit record holds the secret: %+v", ev)
	}
	if g.LastUsedAt.IsZero() {
		t.Errorf("grant last use not recorded")
	}
}

// TestRedeemDenials: every check refuses with its own status, code and
// description, hands out nothing, and leaves an audit record of the denial.
func TestRedeemDenials(t *testing.T) {
	w := newWorld(t)
	ctx := context.Background()
	read := w.tokenFor("alice", mcpURI, "mail.read", w.aliceKeys, w.aliceOther)
	otherTok := w.tokenFor("alice", otherURI, "mail.read", w.aliceKeys)
	// A grant without connections (bob, nothing ticked).
	bare := w.tokenFor("bob", mcpURI, "mail.read")
	// A grant into which another user's connection was put behind the
	// consent screen's back.
	foreign := w.tokenFor("bob", otherURI, "mail.read")
	_, err := w.store.Grants().Update(ctx, w.grantOf(foreign).ID, func(g broker.Grant) (broker.Grant, error) {
		g.ConnectionIDs = []string{w.aliceKeys}
		return g, nil
	})
	w.must(err)

	tests := []struct {
		name       string
		id, secret string
		body       any
		status     int
		code, desc string
		scope      string
	}{
		{"no authentication", "", "", req(read, "keys", policyRead), 401, "invalid_client", "authentication is required", ""},
		{"wrong secret", mcpID, "nope", req(read, "keys", policyRead), 401, "invalid_client", "authentication failed", ""},
		{"public client calling by itself", agent, "", req(read, "keys", policyRead), 401, "invalid_client", "authentication", ""},
		{"public client with a made-up secret", agent, "whatever", req(read, "keys", policyRead), 401, "invalid_client", "authentication failed", ""},
		{"token for another MCP server", mcpID, mcpSecret, req(otherTok, "keys", policyRead), 401, "invalid_token", "another MCP server", ""},
		{"another MCP server with this server's token", otherID, otherSec, req(read, "keys", "x"), 401, "invalid_token", "another MCP server", ""},
		{"garbage token", mcpID, mcpSecret, req("not.a.token", "keys", policyRead), 401, "invalid_token", "the access token is invalid", ""},
		{"connector the server may not redeem", mcpID, mcpSecret, req(read, "spare", policyRead), 403, "unauthorized_client", `may not redeem connector "spare"`, ""},
		{"connector not in the grant", mcpID, mcpSecret, req(bare, "keys", policyRead), 403, "access_denied", "not in the grant", ""},
		{"another user's connection in the grant", otherID, otherSec, req(foreign, "keys", "any"), 403, "access_denied", "not in the grant", ""},
		{"missing scope", mcpID, mcpSecret, req(read, "keys", policySend), 403, "insufficient_scope", "mail.send", "mail.send"},
		{"rule limits connectors", mcpID, mcpSecret, req(read, "keys", policyOnly), 403, "access_denied", `may not use connector "keys"`, ""},
		{"tool without a rule, default deny", mcpID, mcpSecret, req(read, "keys", "delete_everything"), 403, "access_denied", "tool not allowed", ""},
		{"tool missing", mcpID, mcpSecret, req(read, "keys", ""), 400, "invalid_request", "tool is required", ""},
		{"token missing", mcpID, mcpSecret, req("", "keys", policyRead), 400, "invalid_request", "token is required", ""},
		{"unknown member", mcpID, mcpSecret, `{"token":"x","connector":"keys","tool":"t","scope":"all"}`, 400, "invalid_request", "no other members", ""},
		{"not JSON", mcpID, mcpSecret, `token=x`, 400, "invalid_request", "JSON object", ""},
		{"two objects", mcpID, mcpSecret, `{"token":"x"}{"token":"y"}`, 400, "invalid_request", "one JSON object", ""},
		// encoding/json would let the last "token" win; a proxy or an MCP
		// server reading the first would see another request.
		{"duplicate member", mcpID, mcpSecret, `{"token":"x","connector":"keys","tool":"t","token":"y"}`, 400, "invalid_request", "each once", ""},
		{"invalid UTF-8", mcpID, mcpSecret, "{\"token\":\"x\xff\",\"connector\":\"keys\",\"tool\":\"t\"}", 400, "invalid_request", "JSON object", ""},
		{"body over 16 KiB", mcpID, mcpSecret, `{"token":"` + strings.Repeat("a", 17<<10) + `"}`, 413, "invalid_request", "larger than", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			w.t = t
			before := w.lastAudit().Seq
			r := w.redeem(tc.id, tc.secret, tc.body)
			checkDenied(t, r, tc.status, tc.code, tc.desc)
			if r.str("scope") != tc.scope {
				t.Errorf("scope member = %q, want %q", r.str("scope"), tc.scope)
			}
			ev := w.lastAudit()
			// A caller not (yet) known as an MCP server is refused and
			// logged, but anyone could send such requests: they do not
			// go into the durable audit chain.
			unauthenticated := tc.code == "invalid_client" || tc.status == 413 ||
				slices.Contains([]string{"unknown member", "not JSON", "two objects", "duplicate member", "invalid UTF-8"}, tc.name)
			switch {
			case unauthenticated && ev.Seq != before:
				t.Errorf("an unauthenticated request added audit record %+v", ev)
			case !unauthenticated && (ev.Seq != before+1 || ev.Action != broker.AuditRedeem || ev.Outcome != broker.OutcomeDenied || !strings.HasPrefix(ev.Reason, tc.code)):
				t.Errorf("audit record = %+v; want one redeem denial with reason %s", ev, tc.code)
			}
		})
	}
	w.t = t

	t.Run("another user's connection is named in the audit record", func(t *testing.T) {
		w.t = t
		w.redeem(otherID, otherSec, req(foreign, "keys", "any"))
		if ev := w.lastAudit(); ev.UserID != "id-bob" || !strings.Contains(ev.Reason, "belongs to another user") {
			t.Errorf("audit record = %+v", ev)
		}
	})
	t.Run("body without a length (chunked)", func(t *testing.T) {
		w.t = t
		chunked := func(body string) *http.Request {
			// A reader of unknown length: the client sends it chunked.
			rq, _ := http.NewRequest("POST", w.issuer+authserver.PathRedeem, io.MultiReader(strings.NewReader(body)))
			rq.Header.Set("Content-Type", "application/json")
			rq.SetBasicAuth(mcpID, mcpSecret)
			return rq
		}
		good, _ := json.Marshal(req(read, "keys", policyRead))
		if r := w.send(chunked(string(good))); r.status != 200 || r.body["credential"] == nil {
			t.Errorf("chunked redemption = %d %v, want 200 with a credential", r.status, r.body)
		}
		checkDenied(t, w.send(chunked(`{"token":"`+strings.Repeat("a", 17<<10)+`"}`)), 413, "invalid_request", "larger than")
	})
	t.Run("wrong content type", func(t *testing.T) {
		w.t = t
		rq, _ := http.NewRequest("POST", w.issuer+authserver.PathRedeem, strings.NewReader(`{}`))
		rq.Header.Set("Content-Type", "text/plain")
		rq.SetBasicAuth(mcpID, mcpSecret)
		checkDenied(t, w.send(rq), 415, "invalid_request", "application/json")
	})
	t.Run("needs relink", func(t *testing.T) {
		w.t = t
		_, err := w.store.Connections().Update(ctx, w.aliceKeys, func(c broker.Connection) (broker.Connection, error) {
			c.Status = broker.ConnectionNeedsRelink
			return c, nil
		})
		w.must(err)
		defer func() {
			_, err := w.store.Connections().Update(ctx, w.aliceKeys, func(c broker.Connection) (broker.Connection, error) {
				c.Status = broker.ConnectionActive
				return c, nil
			})
			w.must(err)
		}()
		r := w.redeem(mcpID, mcpSecret, req(read, "keys", policyRead))
		checkDenied(t, r, 409, "needs_relink", "re-link it on Lanyard")
		if ev := w.lastAudit(); ev.Outcome != broker.OutcomeDenied || ev.ConnectionID != w.aliceKeys {
			t.Errorf("audit record = %+v", ev)
		}
	})
	t.Run("expired token", func(t *testing.T) {
		w.t = t
		w.clock.Advance(11 * time.Minute)
		defer w.clock.Advance(-11 * time.Minute)
		checkDenied(t, w.redeem(mcpID, mcpSecret, req(read, "keys", policyRead)), 401, "invalid_token", "expired")
	})
	t.Run("the rule's connector is allowed", func(t *testing.T) {
		w.t = t
		r := w.redeem(mcpID, mcpSecret, req(read, "other-keys", policyOnly))
		if cred, _ := r.body["credential"].(map[string]any); r.status != 200 || cred[apikey.FieldKey] != otherKey {
			t.Errorf("redeem other-keys for %s: %d %v", policyOnly, r.status, r.body)
		}
	})
	t.Run("revoked grant", func(t *testing.T) {
		w.t = t
		tok := w.tokenFor("alice", mcpURI, "mail.read mail.send", w.aliceKeys)
		if r := w.redeem(mcpID, mcpSecret, req(tok, "keys", policySend)); r.status != 200 {
			t.Fatalf("before revocation: %d %v", r.status, r.body)
		}
		w.must(w.auth.RevokeGrant(ctx, w.grantOf(tok).ID, "revoked by the user"))
		checkDenied(t, w.redeem(mcpID, mcpSecret, req(tok, "keys", policySend)), 401, "invalid_token", "revoked")
		if ev := w.lastAudit(); ev.Outcome != broker.OutcomeDenied || ev.UserID != "id-alice" {
			t.Errorf("audit record = %+v", ev)
		}
	})
}

// checkDenied checks a refusal: status, code, description, no credential.
func checkDenied(t *testing.T, r result, status int, code, desc string) {
	t.Helper()
	if r.status != status || r.str("error") != code || !strings.Contains(r.str("error_description"), desc) {
		t.Errorf("got %d %v; want %d %s with a description containing %q", r.status, r.body, status, code, desc)
	}
	for _, k := range []string{"credential", "access_token"} {
		if _, ok := r.body[k]; ok {
			t.Errorf("a refusal carries %s: %v", k, r.body)
		}
	}
	if r.hdr.Get("Cache-Control") != "no-store" {
		t.Errorf("Cache-Control = %q", r.hdr.Get("Cache-Control"))
	}
}

// TestRedeemFailsClosedWithoutAudit: when the audit record cannot be
// written, no credential leaves (503).
func TestRedeemFailsClosedWithoutAudit(t *testing.T) {
	w := newWorld(t)
	tok := w.tokenFor("alice", mcpURI, "mail.read", w.aliceKeys)
	w.sw.fail.Store(true)
	r := w.redeem(mcpID, mcpSecret, req(tok, "keys", policyRead))
	checkDenied(t, r, 503, "temporarily_unavailable", "audit record could not be written")
	// A denial is still answered as a denial when its record cannot be written.
	checkDenied(t, w.redeem(mcpID, mcpSecret, req(tok, "keys", "nope")), 403, "access_denied", "tool not allowed")
	w.sw.fail.Store(false)
	if r := w.redeem(mcpID, mcpSecret, req(tok, "keys", policyRead)); r.status != 200 {
		t.Errorf("after the audit log recovers: %d %v", r.status, r.body)
	}
}

// TestRedeemPrivateKeyJWT: an MCP server registered with an inline JWKS
// authenticates with a client assertion; a replayed jti, a wrong audience,
// a foreign key and a secret are refused.
func TestRedeemPrivateKeyJWT(t *testing.T) {
	w := newWorld(t)
	tok := w.tokenFor("alice", jwtURI, "mail.read", w.aliceKeys)
	assertion := func(k *token.ClientKey, aud string) string {
		a, err := k.SignAssertion(token.AssertionClaims{ClientID: jwtID, Audience: aud, IssuedAt: w.clock.Now()})
		w.must(err)
		return a
	}
	body := func(a string) map[string]string {
		b := req(tok, "keys", "anything")
		b["client_assertion_type"], b["client_assertion"] = token.AssertionType, a
		return b
	}
	good := assertion(w.jwtKey, w.issuer+authserver.PathRedeem)
	r := w.redeem("", "", body(good))
	if cred, _ := r.body["credential"].(map[string]any); r.status != 200 || cred[apikey.FieldKey] != aliceKey {
		t.Fatalf("redeem with private_key_jwt: %d %v", r.status, r.body)
	}
	if ev := w.lastAudit(); ev.Outcome != broker.OutcomeOK || ev.Resource != jwtURI {
		t.Errorf("audit record = %+v", ev)
	}
	checkDenied(t, w.redeem("", "", body(good)), 401, "invalid_client", "already used")
	// The issuer and the token endpoint are acceptable audiences too.
	for _, aud := range []string{w.issuer, w.issuer + "/token"} {
		if r := w.redeem("", "", body(assertion(w.jwtKey, aud))); r.status != 200 {
			t.Errorf("aud %s: %d %v", aud, r.status, r.body)
		}
	}
	checkDenied(t, w.redeem("", "", body(assertion(w.jwtKey, "https://elsewhere.example/token"))), 401, "invalid_client", "aud")
	stranger, err := token.NewClientKey("EdDSA")
	w.must(err)
	checkDenied(t, w.redeem("", "", body(assertion(stranger, w.issuer))), 401, "invalid_client", "client assertion rejected")
	long, err := w.jwtKey.SignAssertion(token.AssertionClaims{ClientID: jwtID, Audience: w.issuer, IssuedAt: w.clock.Now(),
		ExpiresAt: w.clock.Now().Add(time.Hour)})
	w.must(err)
	checkDenied(t, w.redeem("", "", body(long)), 401, "invalid_client", "exp is more than")
	// Signed by its key but claiming to be another MCP server.
	forged, err := w.jwtKey.SignAssertion(token.AssertionClaims{ClientID: mcpID, Audience: w.issuer, IssuedAt: w.clock.Now()})
	w.must(err)
	checkDenied(t, w.redeem("", "", body(forged)), 401, "invalid_client", "not registered for private_key_jwt")
	// A server registered for private_key_jwt cannot use a secret instead.
	checkDenied(t, w.redeem(jwtID, "guess", req(tok, "keys", "anything")), 401, "invalid_client", "must authenticate with private_key_jwt")
	// Basic and an assertion together: one method only.
	b := body(assertion(w.jwtKey, w.issuer))
	checkDenied(t, w.redeem(mcpID, mcpSecret, b), 400, "invalid_request", "one client authentication method")
}

// TestPrivateKeyJWTFromJWKSURL: the keys come from the server's JWKS URL
// (fetched through safehttp; loopback allowed in dev mode) and a rotated
// key is found by one refetch.
func TestPrivateKeyJWTFromJWKSURL(t *testing.T) {
	w := newWorld(t)
	ctx := context.Background()
	current := w.jwtKey
	fetches := 0
	jwks := httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		fetches++
		b, _ := current.PublicJWKS()
		rw.Header().Set("Content-Type", "application/json")
		_, _ = rw.Write(b)
	}))
	defer jwks.Close()
	_, err := w.store.Resources().Update(ctx, jwtID, func(r broker.Resource) (broker.Resource, error) {
		r.JWKS, r.JWKSURL = "", jwks.URL+"/jwks.json"
		return r, nil
	})
	w.must(err)
	tok := w.tokenFor("alice", jwtURI, "mail.read", w.aliceKeys)
	try := func(k *token.ClientKey) result {
		a, err := k.SignAssertion(token.AssertionClaims{ClientID: jwtID, Audience: w.issuer, IssuedAt: w.clock.Now()})
		w.must(err)
		b := req(tok, "keys", "t")
		b["client_assertion_type"], b["client_assertion"] = token.AssertionType, a
		return w.redeem("", "", b)
	}
	for range 2 {
		if r := try(current); r.status != 200 {
			t.Fatalf("redeem: %d %v", r.status, r.body)
		}
	}
	if fetches != 1 {
		t.Errorf("JWKS fetched %d times for two redemptions; want 1 (cached)", fetches)
	}
	// The server rotates its key: the first assertion with the new key
	// refetches (after the minimum interval) and succeeds.
	current, err = token.NewClientKey("RS256")
	w.must(err)
	w.clock.Advance(time.Minute)
	if r := try(current); r.status != 200 {
		t.Errorf("after rotation: %d %v", r.status, r.body)
	}
	if fetches != 2 {
		t.Errorf("fetches = %d, want 2", fetches)
	}
}

func exchangeForm(subject, target string) url.Values {
	return url.Values{"grant_type": {authserver.GrantTokenExchange}, "subject_token": {subject},
		"subject_token_type": {"urn:ietf:params:oauth:token-type:access_token"}, "audience": {target}}
}

// TestTokenExchangeRefusals: unsupported targets are invalid_target, bad
// subject tokens invalid_request, and only MCP servers may exchange.
func TestTokenExchangeRefusals(t *testing.T) {
	w := newWorld(t)
	tok := w.tokenFor("alice", mcpURI, "mail.read", w.aliceKeys)
	otherTok := w.tokenFor("alice", otherURI, "mail.read", w.aliceKeys)
	tests := []struct {
		name       string
		id, secret string
		form       url.Values
		status     int
		code, desc string
	}{
		{"api key connector", mcpID, mcpSecret, exchangeForm(tok, "keys"), 400, "invalid_target", "OAuth access tokens only"},
		{"api key connector by URN", mcpID, mcpSecret, exchangeForm(tok, "urn:lanyard:connector:keys"), 400, "invalid_target", "OAuth access tokens only"},
		{"unknown connector", mcpID, mcpSecret, exchangeForm(tok, "nope"), 400, "invalid_target", `no connector "nope"`},
		{"no target", mcpID, mcpSecret, exchangeForm(tok, ""), 400, "invalid_request", "resource or audience"},
		{"garbage subject token", mcpID, mcpSecret, exchangeForm("x.y.z", "idp"), 400, "invalid_request", "subject_token: the access token is invalid"},
		{"subject token for another MCP server", mcpID, mcpSecret, exchangeForm(otherTok, "idp"), 400, "invalid_request", "another MCP server"},
		{"resource and audience disagree", mcpID, mcpSecret, withForm(exchangeForm(tok, "idp"), "resource", "keys"), 400, "invalid_target", "different connectors"},
		{"oauth2 connector not in the grant", mcpID, mcpSecret, exchangeForm(tok, "idp"), 403, "access_denied", "not in the grant"},
		{"missing subject_token_type", mcpID, mcpSecret, withForm(exchangeForm(tok, "keys"), "subject_token_type", ""), 400, "invalid_request", "subject_token_type"},
		{"public client calling by itself", agent, "", exchangeForm(tok, "keys"), 401, "invalid_client", "authentication"},
		{"wrong secret", mcpID, "nope", exchangeForm(tok, "keys"), 401, "invalid_client", "authentication failed"},
		{"actor token", mcpID, mcpSecret, withForm(exchangeForm(tok, "keys"), "actor_token", "a"), 400, "invalid_request", "actor_token"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			w.t = t
			before := w.lastAudit().Seq
			r := w.exchange(tc.id, tc.secret, tc.form)
			checkDenied(t, r, tc.status, tc.code, tc.desc)
			ev := w.lastAudit()
			switch {
			case tc.code == "invalid_client" && ev.Seq != before:
				t.Errorf("an unauthenticated request added audit record %+v", ev)
			case tc.code != "invalid_client" && (ev.Seq != before+1 || ev.Action != broker.AuditExchange || ev.Outcome != broker.OutcomeDenied):
				t.Errorf("audit record = %+v", ev)
			}
		})
	}
	w.t = t
	// The metadata advertises the grant type.
	resp, err := http.Get(w.issuer + "/.well-known/oauth-authorization-server")
	w.must(err)
	defer resp.Body.Close()
	var md struct {
		Grants []string `json:"grant_types_supported"`
	}
	_ = jsonDecode(resp, &md)
	if !containsStr(md.Grants, authserver.GrantTokenExchange) {
		t.Errorf("grant_types_supported = %v", md.Grants)
	}
}

func withForm(v url.Values, k, val string) url.Values {
	out := url.Values{}
	for kk, vv := range v {
		out[kk] = vv
	}
	if val == "" {
		out.Del(k)
	} else {
		out.Set(k, val)
	}
	return out
}

// TestTokenExchangeAtRealProvider: alice links an account at a real OpenID
// provider (npm oidc-provider); the MCP server exchanges her agent's token
// for the upstream access token, which is refreshed first when it is about
// to expire. Policy still applies. (Onward exchange: TestTokenExchangeOnward.)
func TestTokenExchangeAtRealProvider(t *testing.T) {
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
	w := newWorldWith(t, worldOptions{extra: []connectors.Connector{idp}, ln: ln})
	authURL, err := w.links.BeginLink(ctx, "id-alice", "session-1", "idp", "")
	w.must(err)
	conn, err := w.links.CompleteLink(ctx, "id-alice", "session-1", "idp", prov.Login(t, authURL).Query())
	w.must(err)
	stored := func() string {
		sec, _, err := w.secrets.Get(ctx, conn.SecretKey)
		w.must(err)
		at, _ := sec.Field("access_token")
		return at
	}
	tok := w.tokenFor("alice", mcpURI, "mail.read", conn.ID, w.aliceKeys)

	form := withForm(exchangeForm(tok, "urn:lanyard:connector:idp"), "tool", "exchange")
	r := w.exchange(mcpID, mcpSecret, form)
	if r.status != 200 || r.str("access_token") != stored() || r.str("issued_token_type") != "urn:ietf:params:oauth:token-type:access_token" ||
		r.str("token_type") != "Bearer" {
		t.Fatalf("exchange: %d %v", r.status, r.body)
	}
	if in, _ := r.body["expires_in"].(float64); in <= 0 || in > 3600*24 {
		t.Errorf("expires_in = %v", r.body["expires_in"])
	}
	if r.hdr.Get("Cache-Control") != "no-store" {
		t.Errorf("Cache-Control = %q", r.hdr.Get("Cache-Control"))
	}
	if ev := w.lastAudit(); ev.Action != broker.AuditExchange || ev.Outcome != broker.OutcomeOK || ev.ConnectionID != conn.ID ||
		ev.Tool != "exchange" || ev.UserID != "id-alice" || ev.Resource != mcpURI {
		t.Errorf("audit record = %+v", ev)
	}
	// /v1/redeem hands out the same token as an oauth2 credential.
	rr := w.redeem(mcpID, mcpSecret, req(tok, "idp", policyRead))
	if cred, _ := rr.body["credential"].(map[string]any); rr.status != 200 || rr.str("type") != "oauth2" || cred["access_token"] != stored() {
		t.Errorf("redeem idp: %d %v", rr.status, rr.body)
	}
	// Policy: a tool needing mail.send, and no tool at all (default deny).
	checkDenied(t, w.exchange(mcpID, mcpSecret, withForm(form, "tool", policySend)), 403, "insufficient_scope", "mail.send")
	checkDenied(t, w.exchange(mcpID, mcpSecret, withForm(form, "tool", "")), 403, "access_denied", "tool not allowed")
	// Close to its expiry the upstream token is refreshed before it is
	// handed out, and the rotated secret is what the server gets.
	before := stored()
	w.clock.Advance(2 * time.Hour) // the provider's tokens live 1h; ours within the skew now
	tok = w.tokenFor("alice", mcpURI, "mail.read", conn.ID)
	r = w.exchange(mcpID, mcpSecret, withForm(form, "subject_token", tok))
	if r.status != 200 || r.str("access_token") == before || r.str("access_token") != stored() {
		t.Errorf("exchange near expiry: %d %v; want a refreshed token (old %q)", r.status, r.body, before)
	}
}

// BenchmarkRedeem measures the hot path: authenticate the MCP server,
// verify the token, load grant and connection, apply policy, read the
// secret, append the audit record (fsync), record the grant's use.
func BenchmarkRedeem(b *testing.B) {
	w := newWorld(b)
	tok := w.tokenFor("alice", mcpURI, "mail.read", w.aliceKeys)
	body := req(tok, "keys", policyRead)
	b.ResetTimer()
	for b.Loop() {
		if r := w.redeem(mcpID, mcpSecret, body); r.status != 200 {
			b.Fatalf("redeem: %d %v", r.status, r.body)
		}
	}
}
