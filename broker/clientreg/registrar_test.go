package clientreg

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/time/rate"

	"github.com/lanyardhq/lanyard/broker"
	"github.com/lanyardhq/lanyard/internal/bolt"
	"github.com/lanyardhq/lanyard/internal/testenv"
)

func newRegistrar(t *testing.T, clk *testenv.Clock, opts RegistrarOptions) (*Registrar, *bolt.DB) {
	t.Helper()
	db := openStore(t, clk)
	opts.Clients = db.Clients()
	opts.Now = clk.Now
	if opts.Rate == 0 {
		opts.Rate = rate.Inf // rate limiting has its own test
	}
	return NewRegistrar(opts), db
}

// post sends body to g as a registration from addr and decodes the answer.
func post(t *testing.T, g http.Handler, addr, contentType, body string) (*httptest.ResponseRecorder, map[string]any) {
	t.Helper()
	req := httptest.NewRequest(http.MethodPost, "/register", strings.NewReader(body))
	req.RemoteAddr = addr
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	rec := httptest.NewRecorder()
	g.ServeHTTP(rec, req)
	var out map[string]any
	if err := json.Unmarshal(rec.Body.Bytes(), &out); err != nil {
		t.Fatalf("response is not JSON: %q", rec.Body.String())
	}
	if cc := rec.Header().Get("Cache-Control"); cc != "no-store" {
		t.Errorf("Cache-Control = %q, want no-store", cc)
	}
	return rec, out
}

func TestRegisterPublicNative(t *testing.T) {
	clk := newClock()
	g, db := newRegistrar(t, clk, RegistrarOptions{})
	body := `{
		"client_name": "My CLI",
		"redirect_uris": ["http://127.0.0.1:33418/callback", "com.example.cli:/oauth"],
		"grant_types": ["authorization_code", "refresh_token", "urn:ietf:params:oauth:grant-type:device_code"],
		"application_type": "native",
		"client_id": "chosen-by-client",
		"client_secret": "chosen-by-client",
		"logo_uri": "https://evil.example/logo.png",
		"unknown_field": {"nested": true}
	}`
	rec, out := post(t, g, "192.0.2.1:1234", "application/json; charset=utf-8", body)
	if rec.Code != http.StatusCreated {
		t.Fatalf("status %d: %s", rec.Code, rec.Body)
	}
	id, _ := out["client_id"].(string)
	if !strings.HasPrefix(id, "dcr_") || len(id) < 20 {
		t.Errorf("client_id = %q, want a server-assigned dcr_ id", id)
	}
	if _, ok := out["client_secret"]; ok {
		t.Error("a public client got a client_secret")
	}
	if got := int64(out["client_id_issued_at"].(float64)); got != clk.Now().Unix() {
		t.Errorf("client_id_issued_at = %d, want %d", got, clk.Now().Unix())
	}
	if out["token_endpoint_auth_method"] != AuthNone || out["application_type"] != AppNative || out["client_name"] != "My CLI" {
		t.Errorf("metadata echo = %v", out)
	}
	if _, ok := out["logo_uri"]; ok {
		t.Error("an ignored field was echoed")
	}
	c, err := db.Clients().Get(context.Background(), id)
	if err != nil {
		t.Fatalf("stored client: %v", err)
	}
	want := broker.Client{
		ID: id, Kind: broker.ClientRegistered, Name: "My CLI",
		RedirectURIs:    []string{"http://127.0.0.1:33418/callback", "com.example.cli:/oauth"},
		GrantTypes:      []string{GrantAuthorizationCode, GrantRefreshToken, GrantDeviceCode},
		ApplicationType: AppNative, TokenEndpointAuthMethod: AuthNone, CreatedAt: clk.Now(),
	}
	if !equalClient(c, want) {
		t.Errorf("stored\n %+v\nwant\n %+v", c, want)
	}
	if !c.ExpiresAt.IsZero() {
		t.Errorf("registered client expires at %v", c.ExpiresAt)
	}

	// A second registration gets another ID.
	_, out2 := post(t, g, "192.0.2.1:1234", "application/json", body)
	if out2["client_id"] == id {
		t.Error("two registrations got the same client_id")
	}
}

func TestRegisterDeviceOnly(t *testing.T) {
	clk := newClock()
	g, db := newRegistrar(t, clk, RegistrarOptions{})
	rec, out := post(t, g, "192.0.2.1:1", "application/json",
		`{"client_name":"TV","grant_types":["urn:ietf:params:oauth:grant-type:device_code"]}`)
	if rec.Code != http.StatusCreated {
		t.Fatalf("status %d: %s", rec.Code, rec.Body)
	}
	c, err := db.Clients().Get(context.Background(), out["client_id"].(string))
	if err != nil || !slices.Equal(c.GrantTypes, []string{GrantDeviceCode}) || len(c.RedirectURIs) != 0 {
		t.Errorf("stored %+v, %v", c, err)
	}
}

func TestRegisterConfidentialWeb(t *testing.T) {
	for _, method := range []string{AuthClientSecretBasic, AuthClientSecretPost} {
		t.Run(method, func(t *testing.T) {
			clk := newClock()
			g, db := newRegistrar(t, clk, RegistrarOptions{})
			rec, out := post(t, g, "192.0.2.1:1", "application/json", `{
				"client_name": "Web Agent",
				"redirect_uris": ["https://agent.example.com/oauth/callback"],
				"application_type": "web",
				"token_endpoint_auth_method": "`+method+`"}`)
			if rec.Code != http.StatusCreated {
				t.Fatalf("status %d: %s", rec.Code, rec.Body)
			}
			secret, _ := out["client_secret"].(string)
			if len(secret) != 43 {
				t.Fatalf("client_secret = %q, want 256 bits base64url", secret)
			}
			if exp, ok := out["client_secret_expires_at"].(float64); !ok || exp != 0 {
				t.Errorf("client_secret_expires_at = %v, want 0", out["client_secret_expires_at"])
			}
			id := out["client_id"].(string)
			c, err := db.Clients().Get(context.Background(), id)
			if err != nil {
				t.Fatal(err)
			}
			if c.SecretHash != broker.HashSecret(secret) || c.TokenEndpointAuthMethod != method || c.ApplicationType != AppWeb {
				t.Errorf("stored %+v", c)
			}
			if !VerifySecret(c, secret) {
				t.Error("VerifySecret refuses the issued secret")
			}
			// The secret itself is nowhere in the store file.
			if err := db.Close(); err != nil {
				t.Fatal(err)
			}
			raw, err := os.ReadFile(db.Path())
			if err != nil {
				t.Fatal(err)
			}
			if bytes.Contains(raw, []byte(secret)) {
				t.Error("the client secret is stored in the clear")
			}
			if !bytes.Contains(raw, []byte(c.SecretHash)) {
				t.Error("the secret hash is not in the store file (test is not looking at the right file)")
			}
		})
	}
}

func TestRegisterRejects(t *testing.T) {
	tests := []struct {
		name        string
		contentType string
		body        string
		dev         bool
		wantStatus  int
		wantCode    string
	}{
		{"javascript redirect", "", `{"redirect_uris":["javascript:alert(1)"]}`, false, 400, "invalid_redirect_uri"},
		{"data redirect", "", `{"redirect_uris":["data:text/html,<script>x</script>"]}`, false, 400, "invalid_redirect_uri"},
		{"file redirect", "", `{"redirect_uris":["file:///etc/passwd"]}`, false, 400, "invalid_redirect_uri"},
		{"vbscript redirect", "", `{"redirect_uris":["vbscript:msgbox"]}`, false, 400, "invalid_redirect_uri"},
		{"about redirect", "", `{"redirect_uris":["about:blank"]}`, false, 400, "invalid_redirect_uri"},
		{"blob redirect", "", `{"redirect_uris":["blob:https://a.example/x"]}`, false, 400, "invalid_redirect_uri"},
		{"ftp redirect", "", `{"redirect_uris":["ftp://a.example/x"]}`, false, 400, "invalid_redirect_uri"},
		{"non reverse-DNS scheme", "", `{"redirect_uris":["myapp:/cb"]}`, false, 400, "invalid_redirect_uri"},
		{"fragment", "", `{"redirect_uris":["https://a.example/cb#x"]}`, false, 400, "invalid_redirect_uri"},
		{"control char", "", `{"redirect_uris":["https://a.example/c\u0000b"]}`, false, 400, "invalid_redirect_uri"},
		{"newline", "", `{"redirect_uris":["https://a.example/cb\n"]}`, false, 400, "invalid_redirect_uri"},
		{"http non-loopback", "", `{"redirect_uris":["http://a.example/cb"]}`, false, 400, "invalid_redirect_uri"},
		{"user info", "", `{"redirect_uris":["https://u@a.example/cb"]}`, false, 400, "invalid_redirect_uri"},
		{"relative", "", `{"redirect_uris":["/cb"]}`, false, 400, "invalid_redirect_uri"},
		{"web with loopback", "", `{"application_type":"web","redirect_uris":["http://localhost:3000/cb"]}`, false, 400, "invalid_redirect_uri"},
		{"web with custom scheme", "", `{"application_type":"web","redirect_uris":["com.example.app:/cb"]}`, false, 400, "invalid_redirect_uri"},
		{"no redirect_uris", "", `{"client_name":"x"}`, false, 400, "invalid_redirect_uri"},
		{"empty redirect_uris", "", `{"redirect_uris":[]}`, false, 400, "invalid_redirect_uri"},
		{"too many redirect_uris", "", `{"redirect_uris":["https://a.example/1","https://a.example/2","https://a.example/3","https://a.example/4","https://a.example/5","https://a.example/6","https://a.example/7","https://a.example/8","https://a.example/9","https://a.example/10","https://a.example/11"]}`, false, 400, "invalid_redirect_uri"},
		{"redirect too long", "", `{"redirect_uris":["https://a.example/` + strings.Repeat("a", MaxRedirectURILen) + `"]}`, false, 400, "invalid_redirect_uri"},
		{"redirect_uris wrong type", "", `{"redirect_uris":"https://a.example/cb"}`, false, 400, "invalid_client_metadata"},
		{"redirect_uris numbers", "", `{"redirect_uris":[1]}`, false, 400, "invalid_client_metadata"},
		{"implicit grant", "", `{"redirect_uris":["https://a.example/cb"],"grant_types":["implicit"]}`, false, 400, "invalid_client_metadata"},
		{"password grant", "", `{"redirect_uris":["https://a.example/cb"],"grant_types":["password"]}`, false, 400, "invalid_client_metadata"},
		{"token response type", "", `{"redirect_uris":["https://a.example/cb"],"response_types":["token"]}`, false, 400, "invalid_client_metadata"},
		{"bad auth method", "", `{"redirect_uris":["https://a.example/cb"],"token_endpoint_auth_method":"client_secret_jwt"}`, false, 400, "invalid_client_metadata"},
		{"bad application_type", "", `{"redirect_uris":["https://a.example/cb"],"application_type":"browser"}`, false, 400, "invalid_client_metadata"},
		{"name too long", "", `{"redirect_uris":["https://a.example/cb"],"client_name":"` + strings.Repeat("n", MaxClientNameLen+1) + `"}`, false, 400, "invalid_client_metadata"},
		{"name control char", "", `{"redirect_uris":["https://a.example/cb"],"client_name":"a\u0007b"}`, false, 400, "invalid_client_metadata"},
		{"name bidi", "", `{"redirect_uris":["https://a.example/cb"],"client_name":"x\u202ey"}`, false, 400, "invalid_client_metadata"},
		{"name wrong type", "", `{"redirect_uris":["https://a.example/cb"],"client_name":7}`, false, 400, "invalid_client_metadata"},
		{"not an object", "", `["https://a.example/cb"]`, false, 400, "invalid_client_metadata"},
		{"not JSON", "", `redirect_uris=https://a.example/cb`, false, 400, "invalid_client_metadata"},
		{"empty body", "", ``, false, 400, "invalid_client_metadata"},
		{"trailing data", "", `{"redirect_uris":["https://a.example/cb"]}{}`, false, 400, "invalid_client_metadata"},
		{"duplicate member", "", `{"redirect_uris":["https://a.example/cb"],"redirect_uris":["javascript:x"]}`, false, 400, "invalid_client_metadata"},
		{"duplicate member, both fine", "", `{"redirect_uris":["https://a.example/cb"],"redirect_uris":["https://a.example/cb"]}`, false, 400, "invalid_client_metadata"},
		{"form content type", "application/x-www-form-urlencoded", `{"redirect_uris":["https://a.example/cb"]}`, false, 415, "invalid_request"},
		{"no content type", "-", `{"redirect_uris":["https://a.example/cb"]}`, false, 415, "invalid_request"},
		{"oversized body", "", `{"redirect_uris":["https://a.example/cb"],"pad":"` + strings.Repeat("x", MaxRegistrationBytes) + `"}`, false, 413, "invalid_client_metadata"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clk := newClock()
			g, db := newRegistrar(t, clk, RegistrarOptions{DevLoopback: tt.dev})
			ct := tt.contentType
			switch ct {
			case "":
				ct = "application/json"
			case "-":
				ct = ""
			}
			rec, out := post(t, g, "192.0.2.1:1", ct, tt.body)
			if rec.Code != tt.wantStatus || out["error"] != tt.wantCode {
				t.Errorf("got %d %v, want %d %s", rec.Code, out, tt.wantStatus, tt.wantCode)
			}
			if d, _ := out["error_description"].(string); strings.Contains(d, "javascript") || strings.Contains(d, "a.example") {
				t.Errorf("error_description %q echoes the request", d)
			}
			page, err := db.Clients().List(context.Background(), broker.Query{})
			if err != nil || len(page.Items) != 0 {
				t.Errorf("store holds %d clients after a rejection (%v)", len(page.Items), err)
			}
		})
	}
}

func TestRegisterDevLoopbackWeb(t *testing.T) {
	clk := newClock()
	g, _ := newRegistrar(t, clk, RegistrarOptions{DevLoopback: true})
	rec, out := post(t, g, "192.0.2.1:1", "application/json",
		`{"application_type":"web","redirect_uris":["http://localhost:3000/cb"]}`)
	if rec.Code != http.StatusCreated {
		t.Errorf("dev mode web loopback: %d %v", rec.Code, out)
	}
}

func TestRegisterInferredApplicationType(t *testing.T) {
	// The MCP SDKs register loopback redirects without application_type.
	clk := newClock()
	g, _ := newRegistrar(t, clk, RegistrarOptions{})
	rec, out := post(t, g, "192.0.2.1:1", "application/json",
		`{"client_name":"MCP Inspector","redirect_uris":["http://localhost:6274/oauth/callback"],"grant_types":["authorization_code","refresh_token"],"response_types":["code"],"token_endpoint_auth_method":"none"}`)
	if rec.Code != http.StatusCreated || out["application_type"] != AppNative {
		t.Errorf("got %d %v, want 201 with application_type native", rec.Code, out)
	}
}

func TestRegisterMethod(t *testing.T) {
	clk := newClock()
	g, _ := newRegistrar(t, clk, RegistrarOptions{})
	req := httptest.NewRequest(http.MethodGet, "/register", nil)
	rec := httptest.NewRecorder()
	g.ServeHTTP(rec, req)
	if rec.Code != http.StatusMethodNotAllowed || rec.Header().Get("Allow") != http.MethodPost {
		t.Errorf("GET: %d Allow=%q", rec.Code, rec.Header().Get("Allow"))
	}
}

func TestRegisterRateLimit(t *testing.T) {
	clk := newClock()
	g, _ := newRegistrar(t, clk, RegistrarOptions{Rate: rate.Every(6 * time.Second), Burst: 5})
	body := `{"redirect_uris":["https://a.example/cb"]}`
	for i := range 5 {
		if rec, out := post(t, g, "203.0.113.7:4000", "application/json", body); rec.Code != http.StatusCreated {
			t.Fatalf("request %d: %d %v", i, rec.Code, out)
		}
	}
	rec, out := post(t, g, "203.0.113.7:4001", "application/json", body)
	if rec.Code != http.StatusTooManyRequests || out["error"] != "too_many_requests" || rec.Header().Get("Retry-After") == "" {
		t.Errorf("6th request: %d %v Retry-After=%q, want 429 too_many_requests", rec.Code, out, rec.Header().Get("Retry-After"))
	}
	// Rejected requests count too: the limit is on attempts.
	if rec, _ := post(t, g, "203.0.113.7:4002", "application/json", `{}`); rec.Code != http.StatusTooManyRequests {
		t.Errorf("invalid request over the limit: %d, want 429", rec.Code)
	}
	// Another address is not affected.
	if rec, out := post(t, g, "198.51.100.1:1", "application/json", body); rec.Code != http.StatusCreated {
		t.Errorf("other address: %d %v", rec.Code, out)
	}
	// IPv6 addresses in one /64 share a bucket.
	for i := range 5 {
		addr := "[2001:db8:1:2::" + string(rune('a'+i)) + "]:1"
		if rec, _ := post(t, g, addr, "application/json", body); rec.Code != http.StatusCreated {
			t.Fatalf("ipv6 request %d: %d", i, rec.Code)
		}
	}
	if rec, _ := post(t, g, "[2001:db8:1:2::ffff]:1", "application/json", body); rec.Code != http.StatusTooManyRequests {
		t.Errorf("same /64: %d, want 429", rec.Code)
	}
	// Time refills the bucket.
	clk.Advance(7 * time.Second)
	if rec, out := post(t, g, "203.0.113.7:4000", "application/json", body); rec.Code != http.StatusCreated {
		t.Errorf("after refill: %d %v", rec.Code, out)
	}
}

func TestLimitKey(t *testing.T) {
	tests := []struct{ addr, want string }{
		{"192.0.2.1:80", "192.0.2.1/32"},
		{"[::ffff:192.0.2.1]:80", "192.0.2.1/32"},
		{"[2001:db8:1:2:3:4:5:6]:80", "2001:db8:1:2::/64"},
		{"[fe80::1%eth0]:80", "fe80::/64"},
		{"192.0.2.1", "192.0.2.1/32"},
		{"garbage", "invalid Prefix"},
	}
	for _, tt := range tests {
		if got := limitKey(tt.addr).String(); got != tt.want {
			t.Errorf("limitKey(%q) = %s, want %s", tt.addr, got, tt.want)
		}
	}
}
