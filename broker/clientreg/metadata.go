// Package clientreg is how Lanyard learns of OAuth clients other than the
// ones pre-registered in the config file:
//
//   - Resolver turns a client_id into a broker.Client. A client_id that is an
//     https URL is a Client ID Metadata Document (CIMD,
//     draft-ietf-oauth-client-id-metadata-document): the document is fetched
//     with internal/safehttp's SSRF guards, validated, and cached in the
//     Clients table for as long as its Cache-Control allows (clamped). Any
//     other client_id is looked up in the Clients table.
//   - Registrar is the RFC 7591 dynamic registration endpoint (POST
//     /register) for clients that predate CIMD.
//
// Both share one validation of client metadata (ValidateMetadata), above
// all of redirect URIs: the redirect URI is where authorization codes go,
// so only https, http to loopback hosts, and private-use (reverse-DNS)
// schemes of native apps are accepted, never javascript:, data:, file: and
// the like, never fragments, user info, control characters or non-ASCII.
//
// The package sits between the authorization server handlers (its callers)
// and the metadata store (broker.Table[broker.Client]); it depends on the
// broker and broker/oauth packages, internal/safehttp and x/time/rate.
package clientreg

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/lanyardhq/lanyard/broker"
	"github.com/lanyardhq/lanyard/broker/oauth"
)

// Grant types a CIMD or dynamically registered client may use.
const (
	GrantAuthorizationCode = "authorization_code"
	GrantRefreshToken      = "refresh_token"
	GrantDeviceCode        = "urn:ietf:params:oauth:grant-type:device_code"
)

// Application types (OpenID Connect Dynamic Client Registration §2).
const (
	AppWeb    = "web"
	AppNative = "native"
)

// Token endpoint authentication methods.
const (
	AuthNone              = "none"
	AuthClientSecretBasic = "client_secret_basic"
	AuthClientSecretPost  = "client_secret_post"
)

// Limits on client metadata.
const (
	MaxRedirectURIs   = 10
	MaxRedirectURILen = 2000
	MaxClientNameLen  = 200 // characters
)

// Metadata is the client metadata Lanyard understands (RFC 7591 §2, plus
// application_type from OpenID Connect registration). Other fields of a
// registration request or metadata document are ignored.
type Metadata struct {
	RedirectURIs            []string `json:"redirect_uris,omitempty"`
	ClientName              string   `json:"client_name,omitempty"`
	GrantTypes              []string `json:"grant_types,omitempty"`
	ResponseTypes           []string `json:"response_types,omitempty"`
	TokenEndpointAuthMethod string   `json:"token_endpoint_auth_method,omitempty"`
	ApplicationType         string   `json:"application_type,omitempty"`
}

// ValidateMetadata checks m and returns it with defaults filled in:
// grant_types [authorization_code, refresh_token], response_types [code]
// when the authorization code grant is used, token_endpoint_auth_method
// none, and application_type inferred when absent ("web" if every redirect
// URI is https to a non-loopback host, "native" otherwise; OIDC's default of
// "web" would refuse the loopback redirects MCP clients register without
// naming a type). devLoopback lets web clients use loopback redirects.
//
// Errors are *oauth.Error: invalid_redirect_uri or invalid_client_metadata,
// with a description that never echoes the submitted values.
func ValidateMetadata(m Metadata, devLoopback bool) (Metadata, error) {
	if len(m.GrantTypes) == 0 {
		m.GrantTypes = []string{GrantAuthorizationCode, GrantRefreshToken}
	}
	m.GrantTypes = dedupe(m.GrantTypes)
	for _, g := range m.GrantTypes {
		switch g {
		case GrantAuthorizationCode, GrantRefreshToken, GrantDeviceCode:
		default:
			return m, metaErr("grant_types may contain only authorization_code, refresh_token and urn:ietf:params:oauth:grant-type:device_code")
		}
	}
	usesCode := slices.Contains(m.GrantTypes, GrantAuthorizationCode)
	if slices.Equal(m.GrantTypes, []string{GrantRefreshToken}) {
		return m, metaErr("grant_types must include authorization_code or the device_code grant")
	}
	switch {
	case len(m.ResponseTypes) == 0 && usesCode:
		m.ResponseTypes = []string{"code"}
	case len(m.ResponseTypes) == 0:
	case !slices.Equal(dedupe(m.ResponseTypes), []string{"code"}):
		return m, metaErr(`response_types must be ["code"]`)
	case !usesCode:
		return m, metaErr("response_types code requires the authorization_code grant type")
	default:
		m.ResponseTypes = []string{"code"}
	}

	switch m.TokenEndpointAuthMethod {
	case "":
		m.TokenEndpointAuthMethod = AuthNone
	case AuthNone, AuthClientSecretBasic, AuthClientSecretPost:
	default:
		return m, metaErr("token_endpoint_auth_method must be none, client_secret_basic or client_secret_post")
	}

	if err := validateName(m.ClientName); err != nil {
		return m, err
	}

	switch {
	case len(m.RedirectURIs) == 0 && usesCode:
		return m, redirectErr("redirect_uris is required for the authorization_code grant")
	case len(m.RedirectURIs) > MaxRedirectURIs:
		return m, redirectErr(fmt.Sprintf("at most %d redirect_uris are allowed", MaxRedirectURIs))
	case len(m.RedirectURIs) > 0 && !usesCode:
		return m, redirectErr("redirect_uris are only allowed with the authorization_code grant")
	}
	m.RedirectURIs = dedupe(m.RedirectURIs)
	switch m.ApplicationType {
	case "":
		m.ApplicationType = inferAppType(m.RedirectURIs)
	case AppWeb, AppNative:
	default:
		return m, metaErr("application_type must be web or native")
	}
	for i, u := range m.RedirectURIs {
		if err := ValidateRedirectURI(u, m.ApplicationType, devLoopback); err != nil {
			e := oauth.As(err)
			return m, e.WithDescription(fmt.Sprintf("redirect_uris[%d]: %s", i, e.Description))
		}
	}
	return m, nil
}

func inferAppType(uris []string) string {
	for _, raw := range uris {
		u, err := url.Parse(raw)
		if err != nil || u.Scheme != "https" || oauth.IsLoopbackHost(u.Hostname()) {
			return AppNative
		}
	}
	return AppWeb
}

// Schemes refused even though they would pass the private-use scheme rule
// or are well known; listed so that the error names the problem. Private-use
// schemes must contain a dot (RFC 8252 §7.1), which already rules out all of
// these bare names.
var dangerousSchemes = map[string]bool{
	"javascript": true, "vbscript": true, "data": true, "file": true, "about": true,
	"blob": true, "ftp": true, "filesystem": true, "view-source": true, "ws": true,
	"wss": true, "mailto": true, "tel": true, "sms": true, "chrome": true,
	"chrome-extension": true, "ms-appx": true, "intent": true, "content": true, "jar": true,
}

// RFC 3986 scheme syntax, lower case only (exact matching compares strings,
// so the registered form must be canonical), with at least one dot: a
// reverse domain name such as com.example.app (RFC 8252 §7.1).
var privateSchemeRE = regexp.MustCompile(`^[a-z][a-z0-9+-]*(\.[a-z0-9+-]+)+$`)

// ValidateRedirectURI checks one redirect URI for a client of the given
// application type (AppWeb or AppNative):
//
//   - printable ASCII only, at most MaxRedirectURILen bytes, an absolute URI
//     with a lower-case scheme, no fragment (RFC 6749 §3.1.2), no user info;
//   - web: https to a non-loopback host; with devLoopback also http or https
//     to a loopback host;
//   - native: http to a loopback host (RFC 8252 §7.3), https (claimed URLs,
//     §7.2), or a private-use reverse-DNS scheme such as
//     com.example.app:/callback (§7.1);
//   - never javascript:, data:, file:, vbscript: and their kind.
//
// The error is oauth.ErrInvalidRedirectURI with a description that does
// not echo the URI.
func ValidateRedirectURI(raw, applicationType string, devLoopback bool) error {
	switch {
	case raw == "":
		return redirectErr("empty redirect URI")
	case len(raw) > MaxRedirectURILen:
		return redirectErr(fmt.Sprintf("redirect URI longer than %d bytes", MaxRedirectURILen))
	}
	for i := 0; i < len(raw); i++ {
		if c := raw[i]; c <= 0x20 || c >= 0x7f {
			return redirectErr("redirect URI has a control, space or non-ASCII character")
		}
	}
	if strings.Contains(raw, "#") {
		return redirectErr("redirect URI must not have a fragment")
	}
	if strings.Contains(raw, `\`) {
		return redirectErr("redirect URI must not contain a backslash")
	}
	u, err := url.Parse(raw)
	if err != nil || u.Scheme == "" {
		return redirectErr("redirect URI is not an absolute URI")
	}
	if !strings.HasPrefix(raw, u.Scheme+":") {
		return redirectErr("redirect URI scheme must be lower case")
	}
	if dangerousSchemes[u.Scheme] {
		return redirectErr("redirect URI scheme is not allowed")
	}
	if u.User != nil {
		return redirectErr("redirect URI must not have user info")
	}
	host := u.Hostname()
	loopback := host != "" && oauth.IsLoopbackHost(host)
	switch u.Scheme {
	case "https", "http":
		if u.Opaque != "" || host == "" {
			return redirectErr("redirect URI must have a host")
		}
		if host != strings.ToLower(host) {
			return redirectErr("redirect URI host must be lower case")
		}
	}
	switch {
	case applicationType == AppWeb && u.Scheme == "https" && !loopback:
	case applicationType == AppWeb && devLoopback && loopback && (u.Scheme == "https" || u.Scheme == "http"):
	case applicationType == AppWeb && loopback:
		return redirectErr("web clients must not use loopback redirect URIs")
	case applicationType == AppWeb:
		return redirectErr("web clients must use https redirect URIs")
	case applicationType != AppNative:
		return metaErr("application_type must be web or native")
	case u.Scheme == "https":
	case u.Scheme == "http" && loopback:
	case u.Scheme == "http":
		return redirectErr("http redirect URIs are allowed only for loopback hosts")
	case privateSchemeRE.MatchString(u.Scheme):
	default:
		return redirectErr("redirect URI scheme must be https, http to a loopback host, or a reverse-DNS private-use scheme")
	}
	return nil
}

// validateName checks client_name: at most MaxClientNameLen characters of
// valid UTF-8 without control or format characters (format characters
// include bidi overrides that could disguise the name on the consent page).
// The name remains untrusted text that pages must escape.
func validateName(name string) error {
	switch {
	case !utf8.ValidString(name):
		return metaErr("client_name is not valid UTF-8")
	case utf8.RuneCountInString(name) > MaxClientNameLen:
		return metaErr(fmt.Sprintf("client_name longer than %d characters", MaxClientNameLen))
	case name != strings.TrimSpace(name):
		return metaErr("client_name has leading or trailing space")
	}
	for _, r := range name {
		if unicode.IsControl(r) || unicode.Is(unicode.Cf, r) || r == utf8.RuneError {
			return metaErr("client_name has a control or format character")
		}
	}
	return nil
}

func metaErr(d string) error     { return oauth.ErrInvalidClientMetadata.WithDescription(d) }
func redirectErr(d string) error { return oauth.ErrInvalidRedirectURI.WithDescription(d) }

func dedupe(s []string) []string {
	out := make([]string, 0, len(s))
	for _, v := range s {
		if !slices.Contains(out, v) {
			out = append(out, v)
		}
	}
	return out
}

// decodeObject parses body as one JSON object and returns its members.
// Duplicate member names are refused: another parser in the path (a proxy,
// a WAF, a log pipeline) may keep the first where encoding/json keeps the
// last, and the value checked must be the value used.
func decodeObject(body []byte) (map[string]json.RawMessage, error) {
	dec := json.NewDecoder(bytes.NewReader(body))
	tok, err := dec.Token()
	if err != nil || tok != json.Delim('{') {
		return nil, metaErr("not a JSON object")
	}
	members := map[string]json.RawMessage{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, metaErr("not a JSON object: invalid JSON")
		}
		name, _ := tok.(string)
		if _, dup := members[name]; dup {
			return nil, metaErr("JSON object has a duplicate member name")
		}
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return nil, metaErr("not a JSON object: invalid JSON")
		}
		members[name] = v
	}
	if tok, err := dec.Token(); err != nil || tok != json.Delim('}') {
		return nil, metaErr("not a JSON object: invalid JSON")
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, metaErr("not a JSON object: data after the object")
	}
	return members, nil
}

// parseMetadata extracts the fields of Metadata from members, requiring
// each present, non-null field to have the right JSON type.
func parseMetadata(members map[string]json.RawMessage) (Metadata, error) {
	var m Metadata
	fields := []struct {
		name string
		dst  any
	}{
		{"redirect_uris", &m.RedirectURIs},
		{"client_name", &m.ClientName},
		{"grant_types", &m.GrantTypes},
		{"response_types", &m.ResponseTypes},
		{"token_endpoint_auth_method", &m.TokenEndpointAuthMethod},
		{"application_type", &m.ApplicationType},
	}
	for _, f := range fields {
		raw, ok := members[f.name]
		if !ok {
			continue
		}
		if err := json.Unmarshal(raw, f.dst); err != nil {
			return m, metaErr(f.name + " has the wrong type")
		}
	}
	return m, nil
}

// VerifySecret reports, in constant time, whether secret is c's client
// secret. It is false for a client without one.
func VerifySecret(c broker.Client, secret string) bool {
	return secret != "" && broker.SecretMatches(c.SecretHash, secret)
}
