package oauthconn

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"

	"github.com/lanyardhq/lanyard/internal/safehttp"
)

// discovery is the part of an OpenID Provider Metadata document (OIDC
// Discovery 1.0, RFC 8414) the connector uses.
type discovery struct {
	Issuer                   string   `json:"issuer"`
	AuthorizationEndpoint    string   `json:"authorization_endpoint"`
	TokenEndpoint            string   `json:"token_endpoint"`
	RevocationEndpoint       string   `json:"revocation_endpoint"`
	UserinfoEndpoint         string   `json:"userinfo_endpoint"`
	CodeChallengeMethods     []string `json:"code_challenge_methods_supported"`
	TokenEndpointAuthMethods []string `json:"token_endpoint_auth_methods_supported"`
	ResponseTypes            []string `json:"response_types_supported"`
	GrantTypes               []string `json:"grant_types_supported"`
	// RFC 9207: the provider puts iss in every authorization response.
	ISSParameterSupported bool `json:"authorization_response_iss_parameter_supported"`
}

// discover fetches ISSUER/.well-known/openid-configuration through
// safehttp (the SSRF-guarded client: https only, public addresses only,
// no redirects, capped body; http to loopback only with dev) and checks it:
// the document's issuer must equal the configured one exactly (OIDC
// Discovery 4.3; otherwise a document could redirect the whole flow to
// another provider), the authorization and token endpoints must be
// present and https, and if the provider lists PKCE methods S256 must be
// one of them.
func discover(ctx context.Context, issuer string, dev bool) (*discovery, error) {
	u, err := url.Parse(issuer)
	if err != nil || issuer == "" || u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("%w: issuer %q must be a URL without query or fragment", ErrDiscovery, issuer)
	}
	if err := safehttp.CheckURL(u, dev); err != nil {
		return nil, fmt.Errorf("%w: issuer %q: %w", ErrDiscovery, issuer, err)
	}
	hc := safehttp.NewClient(safehttp.Options{AllowLoopback: dev})
	docURL := strings.TrimSuffix(issuer, "/") + "/.well-known/openid-configuration"
	resp, err := safehttp.Get(ctx, hc, docURL, maxDiscovery)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // without the URL, said once below
		}
		return nil, fmt.Errorf("%w: %s: %w", ErrDiscovery, docURL, err)
	}
	if resp.Status != 200 {
		return nil, fmt.Errorf("%w: %s: status %d", ErrDiscovery, docURL, resp.Status)
	}
	var d discovery
	if err := json.Unmarshal(resp.Body, &d); err != nil {
		return nil, fmt.Errorf("%w: %s: not a JSON metadata document", ErrDiscovery, docURL)
	}
	if d.Issuer != issuer {
		return nil, fmt.Errorf("%w: the document's issuer %q is not the configured %q", ErrDiscovery, clean(d.Issuer, 200), issuer)
	}
	if d.AuthorizationEndpoint == "" || d.TokenEndpoint == "" {
		return nil, fmt.Errorf("%w: %s: authorization_endpoint and token_endpoint are required", ErrDiscovery, docURL)
	}
	for name, v := range map[string]string{
		"authorization_endpoint": d.AuthorizationEndpoint, "token_endpoint": d.TokenEndpoint,
		"revocation_endpoint": d.RevocationEndpoint, "userinfo_endpoint": d.UserinfoEndpoint,
	} {
		if v == "" {
			continue
		}
		if err := checkURL(v, dev); err != nil {
			return nil, fmt.Errorf("%w: %s: %v", ErrDiscovery, name, err)
		}
	}
	if len(d.CodeChallengeMethods) > 0 && !slices.Contains(d.CodeChallengeMethods, "S256") {
		return nil, fmt.Errorf("%w: the provider does not support PKCE S256", ErrDiscovery)
	}
	if len(d.ResponseTypes) > 0 && !slices.Contains(d.ResponseTypes, "code") {
		return nil, fmt.Errorf("%w: the provider does not support response_type code", ErrDiscovery)
	}
	return &d, nil
}
