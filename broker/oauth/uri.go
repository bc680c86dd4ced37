package oauth

import (
	"net"
	"net/url"
	"strings"
)

// CanonicalResource returns the canonical form of an RFC 8707 resource
// indicator or MCP server URI: absolute, lower-case scheme and host, the
// scheme's default port dropped, no fragment, no user info, "/" for an empty
// path. https is required except for loopback hosts when allowHTTPLoopback.
// Matching is exact on the canonical form; there is no prefix matching.
func CanonicalResource(raw string, allowHTTPLoopback bool) (string, error) {
	bad := ErrInvalidTarget.WithDescription("resource must be an absolute https URI without fragment")
	u, err := url.Parse(raw)
	if err != nil || !u.IsAbs() || u.Host == "" || u.Fragment != "" || u.User != nil || u.Opaque != "" {
		return "", bad
	}
	u.Scheme = strings.ToLower(u.Scheme)
	host, port := strings.ToLower(u.Hostname()), u.Port()
	switch {
	case u.Scheme == "https":
	case u.Scheme == "http" && allowHTTPLoopback && IsLoopbackHost(host):
	default:
		return "", bad
	}
	if (u.Scheme == "https" && port == "443") || (u.Scheme == "http" && port == "80") {
		port = ""
	}
	if strings.Contains(host, ":") {
		host = "[" + host + "]"
	}
	u.Host = host
	if port != "" {
		u.Host += ":" + port
	}
	if u.Path == "" {
		u.Path = "/"
		u.RawPath = ""
	}
	return u.String(), nil
}

// IsLoopbackHost reports whether host is localhost or a loopback IP.
func IsLoopbackHost(host string) bool {
	host = strings.Trim(host, "[]")
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// MatchRedirectURI reports whether got is one of the registered redirect
// URIs: an exact string match, except that for a registered loopback IP
// literal redirect (http://127.0.0.1/... or http://[::1]/...) any port is
// accepted, as RFC 8252 §7.3 requires for native apps. "localhost" gets no
// such exception (RFC 8252 §8.3).
func MatchRedirectURI(registered []string, got string) bool {
	for _, r := range registered {
		if r == got {
			return true
		}
	}
	g, err := url.Parse(got)
	if err != nil || g.Scheme != "http" || g.User != nil || g.Fragment != "" {
		return false
	}
	gip := net.ParseIP(g.Hostname())
	if gip == nil || !gip.IsLoopback() {
		return false
	}
	for _, r := range registered {
		ru, err := url.Parse(r)
		if err != nil || ru.Scheme != "http" {
			continue
		}
		rip := net.ParseIP(ru.Hostname())
		if rip == nil || !rip.IsLoopback() || ru.Hostname() != g.Hostname() {
			continue
		}
		if ru.EscapedPath() == g.EscapedPath() && ru.RawQuery == g.RawQuery {
			return true
		}
	}
	return false
}
