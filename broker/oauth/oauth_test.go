package oauth

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestCanonicalResource(t *testing.T) {
	for _, tc := range []struct {
		in, want string
		dev      bool
	}{
		{"https://MCP.Example.com:443/mcp", "https://mcp.example.com/mcp", false},
		{"HTTPS://mcp.example.com", "https://mcp.example.com/", false},
		{"https://mcp.example.com:8443/a/b", "https://mcp.example.com:8443/a/b", false},
		{"https://[::1]:443/x", "https://[::1]/x", false},
		{"http://127.0.0.1:80/mcp", "http://127.0.0.1/mcp", true},
		{"http://localhost:9000/mcp", "http://localhost:9000/mcp", true},
		{"http://127.0.0.1/mcp", "", false},
		{"http://mcp.example.com/mcp", "", true},
		{"https://mcp.example.com/mcp#frag", "", false},
		{"https://user@mcp.example.com/mcp", "", false},
		{"mcp.example.com/mcp", "", false},
		{"urn:example:mcp", "", false},
		{"", "", false},
	} {
		got, err := CanonicalResource(tc.in, tc.dev)
		if got != tc.want || (tc.want == "") != (err != nil) {
			t.Errorf("CanonicalResource(%q, dev=%v) = %q, %v; want %q", tc.in, tc.dev, got, err, tc.want)
		}
		if err != nil && !errors.Is(err, ErrInvalidTarget) {
			t.Errorf("error %v does not match invalid_target", err)
		}
	}
}

func TestMatchRedirectURI(t *testing.T) {
	reg := []string{"https://app.example/cb", "http://127.0.0.1/callback", "http://[::1]/cb", "http://localhost:8000/cb", "com.example.app:/cb"}
	for _, tc := range []struct {
		got string
		ok  bool
	}{
		{"https://app.example/cb", true},
		{"http://127.0.0.1:51234/callback", true},
		{"http://127.0.0.1/callback", true},
		{"http://[::1]:8080/cb", true},
		{"com.example.app:/cb", true},
		{"http://localhost:8000/cb", true},
		{"http://localhost:8001/cb", false}, // no port exception for localhost
		{"https://app.example/cb/", false},
		{"https://app.example/cb?x=1", false},
		{"https://APP.example/cb", false},
		{"http://127.0.0.1:51234/callback/x", false},
		{"http://127.0.0.1:51234/callback?a=b", false},
		{"https://127.0.0.1:51234/callback", false},
		{"http://127.0.0.2:51234/callback", false},
		{"http://user@127.0.0.1:5/callback", false},
		{"http://127.0.0.1:5/callback#f", false},
		{"http://[::1]:8080/callback", false},
	} {
		if got := MatchRedirectURI(reg, tc.got); got != tc.ok {
			t.Errorf("MatchRedirectURI(%q) = %v, want %v", tc.got, got, tc.ok)
		}
	}
}

func TestPKCE(t *testing.T) {
	verifier := "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk" // RFC 7636 appendix B
	challenge := "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
	if err := CheckChallenge(challenge, "S256"); err != nil {
		t.Errorf("valid challenge: %v", err)
	}
	for _, tc := range [][2]string{{"", "S256"}, {challenge, ""}, {challenge, "plain"}, {challenge, "s256"}, {"short", "S256"}, {challenge + "=", "S256"}, {strings.Repeat("a", 44), "S256"}} {
		if err := CheckChallenge(tc[0], tc[1]); !errors.Is(err, ErrInvalidRequest) {
			t.Errorf("CheckChallenge(%q, %q) = %v, want invalid_request", tc[0], tc[1], err)
		}
	}
	if err := VerifyPKCE(verifier, challenge); err != nil {
		t.Errorf("RFC 7636 example: %v", err)
	}
	for _, v := range []string{"", "short", verifier[:42], verifier + "x", strings.Repeat("a", 129), verifier[:42] + "!"} {
		if err := VerifyPKCE(v, challenge); !errors.Is(err, ErrInvalidGrant) {
			t.Errorf("VerifyPKCE(%q) = %v, want invalid_grant", v, err)
		}
	}
}

func TestParse(t *testing.T) {
	req := httptest.NewRequest("GET", "/authorize?a=1&b=&c=x&c=y", nil)
	if _, err := ParseQuery(req); !errors.Is(err, ErrInvalidRequest) || !strings.Contains(err.Error(), `"c" is repeated`) {
		t.Errorf("repeated parameter: %v", err)
	}
	req = httptest.NewRequest("GET", "/authorize?a=1&b=", nil)
	p, err := ParseQuery(req)
	if err != nil || p.Get("a") != "1" || p.Has("b") {
		t.Errorf("empty parameter must be absent: %v %v", p, err)
	}
	post := func(ct, body, query string) error {
		r := httptest.NewRequest("POST", "/token"+query, strings.NewReader(body))
		r.Header.Set("Content-Type", ct)
		_, err := ParseForm(httptest.NewRecorder(), r)
		return err
	}
	if err := post("application/x-www-form-urlencoded; charset=utf-8", "a=1", ""); err != nil {
		t.Errorf("form with charset: %v", err)
	}
	for name, err := range map[string]error{
		"json":      post("application/json", `{"a":1}`, ""),
		"query too": post("application/x-www-form-urlencoded", "a=1", "?b=2"),
		"huge":      post("application/x-www-form-urlencoded", "a="+strings.Repeat("x", MaxFormBytes+1), ""),
		"nul":       post("application/x-www-form-urlencoded", "a=%00", ""),
		"bad utf8":  post("application/x-www-form-urlencoded", "a=%ff", ""),
		"malformed": post("application/x-www-form-urlencoded", "a=%zz", ""),
	} {
		if !errors.Is(err, ErrInvalidRequest) {
			t.Errorf("%s: %v, want invalid_request", name, err)
		}
	}
}

func TestErrorsAreImmutablePrototypes(t *testing.T) {
	e := ErrInvalidGrant.WithDescription("x").WithCause(errors.New("secret cause"))
	if ErrInvalidGrant.Description != "" {
		t.Fatal("WithDescription changed the prototype")
	}
	if !errors.Is(e, ErrInvalidGrant) || errors.Is(e, ErrInvalidClient) {
		t.Error("errors.Is does not match by code")
	}
	rec := httptest.NewRecorder()
	req := httptest.NewRequest("POST", "/token", nil)
	req.SetBasicAuth("c", "s")
	WriteError(rec, req, ErrInvalidClient.WithCause(errors.New("secret cause")))
	if rec.Code != http.StatusUnauthorized || rec.Header().Get("WWW-Authenticate") == "" ||
		rec.Header().Get("Cache-Control") != "no-store" || strings.Contains(rec.Body.String(), "secret cause") {
		t.Errorf("WriteError: %d %v %s", rec.Code, rec.Header(), rec.Body)
	}
	rec = httptest.NewRecorder()
	WriteError(rec, req, errors.New("boom"))
	if rec.Code != 500 || !strings.Contains(rec.Body.String(), "server_error") || strings.Contains(rec.Body.String(), "boom") {
		t.Errorf("plain error: %d %s", rec.Code, rec.Body)
	}
}
