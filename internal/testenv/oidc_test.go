package testenv_test

import (
	"encoding/json"
	"net/http"
	"testing"

	"github.com/lanyardhq/lanyard/internal/testenv"
)

// TestOIDCProvider checks that the provider starts with the promised
// metadata and that its test endpoint answers (the full login flow is
// exercised by connectors/oauthconn).
func TestOIDCProvider(t *testing.T) {
	p := testenv.StartOIDCProvider(t, testenv.OIDCClient{ID: "c", Secret: "s", RedirectURIs: []string{"http://127.0.0.1:9/cb"}})
	resp, err := http.Get(p.Issuer + "/.well-known/openid-configuration")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var md struct {
		Issuer     string   `json:"issuer"`
		Revocation string   `json:"revocation_endpoint"`
		Userinfo   string   `json:"userinfo_endpoint"`
		PKCE       []string `json:"code_challenge_methods_supported"`
		ISS        bool     `json:"authorization_response_iss_parameter_supported"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&md); err != nil {
		t.Fatal(err)
	}
	if md.Issuer != p.Issuer || md.Revocation == "" || md.Userinfo == "" || len(md.PKCE) == 0 || !md.ISS {
		t.Errorf("metadata = %+v", md)
	}
	p.RevokeAll(t)
}
