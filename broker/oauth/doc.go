// Package oauth holds the protocol rules Lanyard's authorization server and
// its MCP-server endpoints share: OAuth errors as immutable prototypes (the
// one place that writes RFC 6749 §5.2 JSON errors), strict request parsing
// (size caps, duplicate parameters rejected, empty parameters absent), PKCE
// (S256 only), redirect URI matching (exact, plus RFC 8252 loopback ports),
// and canonical resource URIs (RFC 8707).
//
// It depends only on the standard library and broker. The package is named
// oauth, not oauth2, so that it never shadows golang.org/x/oauth2.
package oauth
