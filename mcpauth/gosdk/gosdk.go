// Package gosdk adapts mcpauth to the official Go MCP SDK
// (github.com/modelcontextprotocol/go-sdk): RequireBearer protects the
// SDK's HTTP handlers, and tool handlers find the agent's verified token
// with TokenFromRequest and pass it to mcpauth.Client.Redeem.
//
// It is a separate package so that MCP servers on plain net/http use
// mcpauth without importing the SDK.
package gosdk

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	"github.com/modelcontextprotocol/go-sdk/auth"
	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/lanyardhq/lanyard/broker/token"
	"github.com/lanyardhq/lanyard/mcpauth"
)

// ExtraKey is the key of the *mcpauth.Token in auth.TokenInfo.Extra.
const ExtraKey = "lanyard_token"

// Verifier returns an auth.TokenVerifier that verifies with c.Verify. The
// TokenInfo it returns has the token's Scopes, Expiration, UserID (the
// Lanyard user, which the SDK's streamable transport uses to tie a session
// to its user) and Extra[ExtraKey], the *mcpauth.Token. Its errors wrap
// auth.ErrInvalidToken for bad tokens.
func Verifier(c *mcpauth.Client) auth.TokenVerifier {
	return func(ctx context.Context, raw string, _ *http.Request) (*auth.TokenInfo, error) {
		tok, err := c.Verify(ctx, raw)
		if err != nil {
			if errors.Is(err, mcpauth.ErrInvalidToken) {
				return nil, fmt.Errorf("%w: %w", auth.ErrInvalidToken, err)
			}
			return nil, err
		}
		return tokenInfo(tok), nil
	}
}

func tokenInfo(tok *mcpauth.Token) *auth.TokenInfo {
	return &auth.TokenInfo{
		Scopes:     tok.Scopes,
		Expiration: tok.Expiry,
		UserID:     tok.Subject,
		Extra:      map[string]any{ExtraKey: tok},
	}
}

// TokenFromRequest returns the agent's token of a tool call that came
// through RequireBearer (or auth.RequireBearerToken with Verifier).
func TokenFromRequest(req *mcp.CallToolRequest) (*mcpauth.Token, bool) {
	if req == nil || req.Extra == nil {
		return nil, false
	}
	return FromTokenInfo(req.Extra.TokenInfo)
}

// FromTokenInfo returns the *mcpauth.Token in ti.Extra.
func FromTokenInfo(ti *auth.TokenInfo) (*mcpauth.Token, bool) {
	if ti == nil {
		return nil, false
	}
	tok, ok := ti.Extra[ExtraKey].(*mcpauth.Token)
	return tok, ok && tok != nil
}

// RequireBearer returns middleware for the SDK's HTTP handlers (e.g.
// mcp.NewStreamableHTTPHandler) that admits only requests with a valid
// Lanyard token carrying scopes. Refusals are c.Middleware's: 401 and 403
// with RFC 6750 challenges that carry resource_metadata (c.MetadataURL),
// error and scope. Admitted requests then pass through
// auth.RequireBearerToken, so that the SDK puts the token's TokenInfo in
// each request's Extra (TokenFromRequest); the token is verified once.
func RequireBearer(c *mcpauth.Client, scopes ...string) func(http.Handler) http.Handler {
	outer := c.Middleware(scopes...)
	inner := auth.RequireBearerToken(func(ctx context.Context, raw string, r *http.Request) (*auth.TokenInfo, error) {
		if tok, ok := mcpauth.TokenFromContext(ctx); ok && tok.Raw == raw {
			return tokenInfo(tok), nil
		}
		return Verifier(c)(ctx, raw, r)
	}, &auth.RequireBearerTokenOptions{ResourceMetadataURL: c.MetadataURL(), Scopes: scopes, ClockSkew: token.ClockSkew})
	return func(next http.Handler) http.Handler { return outer(inner(next)) }
}
