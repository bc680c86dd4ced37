package clientreg

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/lanyardhq/lanyard/broker"
	"github.com/lanyardhq/lanyard/broker/oauth"
)

func TestValidateRedirectURI(t *testing.T) {
	long := "https://example.com/" + strings.Repeat("a", MaxRedirectURILen)
	tests := []struct {
		uri     string
		app     string
		dev     bool
		wantErr bool
	}{
		{"https://app.example.com/cb", AppWeb, false, false},
		{"https://app.example.com/cb?x=1", AppWeb, false, false},
		{"https://app.example.com/cb", AppNative, false, false},
		{"http://127.0.0.1/cb", AppNative, false, false},
		{"http://127.0.0.1:8765/cb", AppNative, false, false},
		{"http://[::1]:8765/cb", AppNative, false, false},
		{"http://localhost:3000/callback", AppNative, false, false},
		{"com.example.app:/oauth2redirect", AppNative, false, false},
		{"com.example.app://cb", AppNative, false, false},
		{"http://localhost:3000/callback", AppWeb, false, true},
		{"http://localhost:3000/callback", AppWeb, true, false},
		{"https://127.0.0.1/cb", AppWeb, false, true},
		{"https://127.0.0.1/cb", AppWeb, true, false},
		{"http://app.example.com/cb", AppWeb, false, true},
		{"http://app.example.com/cb", AppWeb, true, true},
		{"http://app.example.com/cb", AppNative, false, true},
		{"com.example.app:/cb", AppWeb, false, true},
		{"myapp:/cb", AppNative, false, true}, // not reverse-DNS
		{"javascript:alert(1)", AppNative, false, true},
		{"javascript://example.com/%0aalert(1)", AppNative, false, true},
		{"JavaScript:alert(1)", AppNative, false, true},
		{"data:text/html,hi", AppNative, false, true},
		{"file:///etc/passwd", AppNative, false, true},
		{"vbscript:msgbox", AppNative, false, true},
		{"about:blank", AppNative, false, true},
		{"blob:https://example.com/x", AppNative, false, true},
		{"ftp://example.com/x", AppNative, false, true},
		{"HTTPS://app.example.com/cb", AppWeb, false, true},
		{"https://APP.example.com/cb", AppWeb, false, true},
		{"https://app.example.com/cb#frag", AppWeb, false, true},
		{"https://app.example.com/cb#", AppWeb, false, true},
		{"https://user@app.example.com/cb", AppWeb, false, true},
		{"https://app.example.com/c\nb", AppWeb, false, true},
		{"https://app.example.com/c\x00b", AppWeb, false, true},
		{"https://app.example.com/c\x7fb", AppWeb, false, true},
		{"https://app.example.com/c b", AppWeb, false, true},
		{"https://аpp.example.com/cb", AppWeb, false, true}, // Cyrillic а
		{`https://app.example.com\@evil.com/cb`, AppWeb, false, true},
		{"https:///cb", AppWeb, false, true},
		{"https:app.example.com", AppWeb, false, true},
		{"/cb", AppWeb, false, true},
		{"", AppWeb, false, true},
		{long, AppWeb, false, true},
		{"https://app.example.com/cb", "service", false, true},
	}
	for _, tt := range tests {
		t.Run(tt.app+"/"+tt.uri[:min(len(tt.uri), 50)], func(t *testing.T) {
			err := ValidateRedirectURI(tt.uri, tt.app, tt.dev)
			if (err != nil) != tt.wantErr {
				t.Fatalf("ValidateRedirectURI(%q, %q, dev=%v) = %v, want error %v", tt.uri, tt.app, tt.dev, err, tt.wantErr)
			}
			if err == nil {
				return
			}
			if !errors.Is(err, oauth.ErrInvalidRedirectURI) && !errors.Is(err, oauth.ErrInvalidClientMetadata) {
				t.Errorf("error %v is neither invalid_redirect_uri nor invalid_client_metadata", err)
			}
			if len(tt.uri) > 10 && strings.Contains(err.Error(), tt.uri) {
				t.Errorf("error %q echoes the URI", err)
			}
		})
	}
}

func TestValidateMetadata(t *testing.T) {
	web := []string{"https://app.example.com/cb"}
	tests := []struct {
		name     string
		in       Metadata
		dev      bool
		wantCode string // "" means valid
		check    func(t *testing.T, m Metadata)
	}{
		{name: "defaults", in: Metadata{RedirectURIs: web}, check: func(t *testing.T, m Metadata) {
			if !slices.Equal(m.GrantTypes, []string{GrantAuthorizationCode, GrantRefreshToken}) ||
				!slices.Equal(m.ResponseTypes, []string{"code"}) || m.TokenEndpointAuthMethod != AuthNone ||
				m.ApplicationType != AppWeb {
				t.Errorf("got %+v", m)
			}
		}},
		{name: "inferred native", in: Metadata{RedirectURIs: []string{"https://a.example/cb", "http://127.0.0.1/cb"}},
			check: func(t *testing.T, m Metadata) {
				if m.ApplicationType != AppNative {
					t.Errorf("application_type = %q, want native", m.ApplicationType)
				}
			}},
		{name: "device only, no redirects", in: Metadata{GrantTypes: []string{GrantDeviceCode, GrantRefreshToken}},
			check: func(t *testing.T, m Metadata) {
				if len(m.ResponseTypes) != 0 {
					t.Errorf("response_types = %v", m.ResponseTypes)
				}
			}},
		{name: "duplicates dropped", in: Metadata{RedirectURIs: []string{web[0], web[0]}, GrantTypes: []string{"authorization_code", "authorization_code"}},
			check: func(t *testing.T, m Metadata) {
				if len(m.RedirectURIs) != 1 || len(m.GrantTypes) != 1 {
					t.Errorf("got %+v", m)
				}
			}},
		{name: "confidential", in: Metadata{RedirectURIs: web, TokenEndpointAuthMethod: AuthClientSecretPost}},
		{name: "no redirects", in: Metadata{}, wantCode: "invalid_redirect_uri"},
		{name: "too many redirects", in: Metadata{RedirectURIs: func() []string {
			var s []string
			for i := range MaxRedirectURIs + 1 {
				s = append(s, "https://a.example/"+string(rune('a'+i)))
			}
			return s
		}()}, wantCode: "invalid_redirect_uri"},
		{name: "redirects without code grant", in: Metadata{RedirectURIs: web, GrantTypes: []string{GrantDeviceCode}}, wantCode: "invalid_redirect_uri"},
		{name: "bad redirect", in: Metadata{RedirectURIs: []string{web[0], "javascript:alert(1)"}}, wantCode: "invalid_redirect_uri"},
		{name: "implicit", in: Metadata{RedirectURIs: web, GrantTypes: []string{"implicit"}}, wantCode: "invalid_client_metadata"},
		{name: "password", in: Metadata{RedirectURIs: web, GrantTypes: []string{"password"}}, wantCode: "invalid_client_metadata"},
		{name: "client credentials", in: Metadata{RedirectURIs: web, GrantTypes: []string{"client_credentials"}}, wantCode: "invalid_client_metadata"},
		{name: "refresh only", in: Metadata{GrantTypes: []string{GrantRefreshToken}}, wantCode: "invalid_client_metadata"},
		{name: "token response type", in: Metadata{RedirectURIs: web, ResponseTypes: []string{"token"}}, wantCode: "invalid_client_metadata"},
		{name: "code id_token", in: Metadata{RedirectURIs: web, ResponseTypes: []string{"code", "id_token"}}, wantCode: "invalid_client_metadata"},
		{name: "code without grant", in: Metadata{GrantTypes: []string{GrantDeviceCode}, ResponseTypes: []string{"code"}}, wantCode: "invalid_client_metadata"},
		{name: "private_key_jwt", in: Metadata{RedirectURIs: web, TokenEndpointAuthMethod: "private_key_jwt"}, wantCode: "invalid_client_metadata"},
		{name: "bad application_type", in: Metadata{RedirectURIs: web, ApplicationType: "service"}, wantCode: "invalid_client_metadata"},
		{name: "web with loopback", in: Metadata{RedirectURIs: []string{"http://127.0.0.1/cb"}, ApplicationType: AppWeb}, wantCode: "invalid_redirect_uri"},
		{name: "web with loopback in dev", in: Metadata{RedirectURIs: []string{"http://127.0.0.1/cb"}, ApplicationType: AppWeb}, dev: true},
		{name: "native with custom scheme", in: Metadata{RedirectURIs: []string{"com.example.app:/cb"}, ApplicationType: AppNative}},
		{name: "name ok", in: Metadata{RedirectURIs: web, ClientName: "Claude — Ünïcode 🤖"}},
		{name: "name too long", in: Metadata{RedirectURIs: web, ClientName: strings.Repeat("é", MaxClientNameLen+1)}, wantCode: "invalid_client_metadata"},
		{name: "name max", in: Metadata{RedirectURIs: web, ClientName: strings.Repeat("é", MaxClientNameLen)}},
		{name: "name control", in: Metadata{RedirectURIs: web, ClientName: "a\nb"}, wantCode: "invalid_client_metadata"},
		{name: "name bidi override", in: Metadata{RedirectURIs: web, ClientName: "abc\u202egnp.exe"}, wantCode: "invalid_client_metadata"},
		{name: "name invalid utf8", in: Metadata{RedirectURIs: web, ClientName: "a\xffb"}, wantCode: "invalid_client_metadata"},
		{name: "name padded", in: Metadata{RedirectURIs: web, ClientName: " Official "}, wantCode: "invalid_client_metadata"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ValidateMetadata(tt.in, tt.dev)
			if tt.wantCode == "" {
				if err != nil {
					t.Fatalf("ValidateMetadata: %v", err)
				}
				if tt.check != nil {
					tt.check(t, got)
				}
				return
			}
			if code := oauth.As(err).Code; err == nil || code != tt.wantCode {
				t.Fatalf("got error %v, want code %s", err, tt.wantCode)
			}
		})
	}
}

func TestDecodeObject(t *testing.T) {
	tests := []struct {
		body    string
		wantErr bool
	}{
		{`{"a":1,"b":[1,2],"c":{"a":1,"a":2}}`, false}, // nested duplicates are not ours to judge
		{`{}`, false},
		{` {"a":1} `, false},
		{`{"a":1,"a":1}`, true},
		{`{"redirect_uris":["https://a.example/cb"],"redirect_uris":["javascript:x"]}`, true},
		{`[]`, true},
		{`"x"`, true},
		{`null`, true},
		{``, true},
		{`{"a":1}{"b":2}`, true},
		{`{"a":1} x`, true},
		{`{"a":}`, true},
		{`{"a":1`, true},
		{`<html>`, true},
	}
	for _, tt := range tests {
		_, err := decodeObject([]byte(tt.body))
		if (err != nil) != tt.wantErr {
			t.Errorf("decodeObject(%s) = %v, want error %v", tt.body, err, tt.wantErr)
		}
	}
}

func TestVerifySecret(t *testing.T) {
	c := broker.Client{SecretHash: broker.HashSecret("s3cret")}
	if !VerifySecret(c, "s3cret") {
		t.Error("right secret refused")
	}
	if VerifySecret(c, "other") || VerifySecret(c, "") || VerifySecret(broker.Client{}, "") {
		t.Error("wrong secret accepted")
	}
}
