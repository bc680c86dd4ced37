package authserver

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/lanyardhq/lanyard/broker"
	"github.com/lanyardhq/lanyard/broker/oauth"
	"github.com/lanyardhq/lanyard/broker/token"
)

// AuthenticateResource authenticates a registered MCP server: by its id and
// secret (client_secret_basic or client_secret_post), or, for a server
// registered with private_key_jwt, by an RFC 7523 client assertion
// (client_assertion_type and client_assertion in p) signed with a key of
// its inline JWKS or JWKS URL. Introspection, redemption and token exchange
// use it. Errors are oauth errors (invalid_client, invalid_request).
func (s *Server) AuthenticateResource(ctx context.Context, r *http.Request, p oauth.Params) (broker.Resource, error) {
	if p.Has("client_assertion") || p.Has("client_assertion_type") {
		return s.authenticateAssertion(ctx, r, p)
	}
	id, secret, err := clientCredentials(r, p)
	if err != nil {
		return broker.Resource{}, err
	}
	if id == "" || secret == "" {
		return broker.Resource{}, oauth.ErrInvalidClient.WithDescription("MCP server authentication is required")
	}
	res, err := s.o.Store.Resources().Get(ctx, id)
	if errors.Is(err, broker.ErrNotFound) {
		broker.SecretMatches(broker.HashSecret("x"), secret) // same work whether or not the id exists
		return res, oauth.ErrInvalidClient.WithDescription("MCP server authentication failed")
	}
	if err != nil {
		return res, err
	}
	if res.TokenEndpointAuthMethod == AuthPrivateKeyJWT {
		return res, oauth.ErrInvalidClient.WithDescription("this MCP server must authenticate with private_key_jwt")
	}
	if !broker.SecretMatches(res.SecretHash, secret) {
		return res, oauth.ErrInvalidClient.WithDescription("MCP server authentication failed")
	}
	return res, nil
}

// VerifyAccessToken checks an access token's signature, type, issuer and
// expiry, that its audience is aud (when aud is not empty), and that its
// grant is live. It is the one check introspection and redemption share.
func (s *Server) VerifyAccessToken(ctx context.Context, raw, aud string) (token.Claims, broker.Grant, error) {
	return s.verifyAccessToken(ctx, raw, aud, func(g broker.Grant) error { return s.sameRegistration(ctx, g) })
}

// VerifyAccessTokenFor is VerifyAccessToken for a caller that has just
// authenticated as the registered MCP server res: the token's audience must
// be res's URI and its grant must have been made for res's registration.
// It saves VerifyAccessToken's read of the registration (the hot path of
// redemption and introspection).
func (s *Server) VerifyAccessTokenFor(ctx context.Context, raw string, res broker.Resource) (token.Claims, broker.Grant, error) {
	return s.verifyAccessToken(ctx, raw, res.URI, func(g broker.Grant) error { return madeFor(g, res) })
}

func (s *Server) verifyAccessToken(ctx context.Context, raw, aud string, registered func(broker.Grant) error) (token.Claims, broker.Grant, error) {
	c, hit := s.verified.get(raw, s.now())
	if !hit {
		var err error
		if c, err = s.o.Keys.Verify(ctx, raw); err != nil {
			// token.Verify's reasons are fixed phrases that never quote the token.
			reason := strings.TrimPrefix(err.Error(), token.ErrInvalidToken.Error()+": ")
			desc := "the access token is invalid: " + reason
			if reason == "expired" {
				desc = "the access token has expired"
			}
			return c, broker.Grant{}, oauth.ErrInvalidToken.WithDescription(desc).WithCause(err)
		}
		s.verified.put(raw, c, s.now())
	}
	if aud != "" && c.Audience != aud {
		return c, broker.Grant{}, oauth.ErrInvalidToken.WithDescription("the access token was issued for another MCP server")
	}
	g, err := s.liveGrant(ctx, c.GrantID)
	if err != nil {
		if oauth.As(err).Code == oauth.ErrInvalidGrant.Code {
			return c, g, oauth.ErrInvalidToken.WithDescription("the access token was revoked (its grant is revoked or gone)")
		}
		return c, g, err
	}
	if g.Resource != c.Audience || g.ClientID != c.ClientID || g.UserID != c.Subject {
		return c, g, oauth.ErrInvalidToken.WithDescription("the access token does not match its grant")
	}
	if err := registered(g); errors.Is(err, broker.ErrNotFound) {
		return c, g, oauth.ErrInvalidToken.WithDescription("the MCP server this token was issued for is no longer registered").WithCause(err)
	} else if err != nil {
		return c, g, err // the store failing is not the token's fault
	}
	return c, g, nil
}

// introspect is RFC 7662 for MCP servers: only an authenticated MCP server
// may ask, and a token is active only if its audience is that server.
// Everything else is {"active": false}, whatever the reason.
func (s *Server) introspect(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	p, err := oauth.ParseForm(w, r)
	if err != nil {
		oauth.WriteError(w, r, err)
		return
	}
	res, err := s.AuthenticateResource(ctx, r, p)
	if err != nil {
		s.logOAuthError(ctx, "introspect: authentication failed", err)
		oauth.WriteError(w, r, err)
		return
	}
	raw := p.Get("token")
	if raw == "" {
		oauth.WriteError(w, r, oauth.ErrInvalidRequest.WithDescription("token is required"))
		return
	}
	if hint := p.Get("token_type_hint"); hint == GrantRefreshToken {
		oauth.WriteJSON(w, http.StatusOK, map[string]any{"active": false})
		return
	}
	c, g, err := s.VerifyAccessTokenFor(ctx, raw, res)
	if err != nil {
		s.o.Logger.InfoContext(ctx, "introspect: inactive token", "resource", res.ID, "err", err)
		oauth.WriteJSON(w, http.StatusOK, map[string]any{"active": false})
		return
	}
	oauth.WriteJSON(w, http.StatusOK, map[string]any{
		"active": true, "iss": c.Issuer, "sub": c.Subject, "aud": c.Audience, "client_id": c.ClientID,
		"scope": strings.Join(c.Scopes, " "), "token_type": "Bearer", "exp": c.ExpiresAt.Unix(),
		"iat": c.IssuedAt.Unix(), "jti": c.JTI, "grant_id": g.ID,
	})
}

// revoke is RFC 7009. A client can revoke only its own tokens; revoking a
// refresh or access token revokes the grant behind it (every token from
// it). Unknown tokens, and tokens of other clients, get the same 200.
func (s *Server) revoke(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	p, client, ok := s.clientForm(w, r)
	if !ok {
		return
	}
	raw := p.Get("token")
	if raw == "" {
		oauth.WriteError(w, r, oauth.ErrInvalidRequest.WithDescription("token is required"))
		return
	}
	grantID := ""
	if rt, err := s.o.Store.RefreshTokens().Get(ctx, broker.HashSecret(raw)); err == nil {
		if rt.ClientID == client.ID {
			grantID = rt.GrantID
		}
	} else if c, err := s.o.Keys.Verify(ctx, raw); err == nil && c.ClientID == client.ID {
		grantID = c.GrantID
	}
	if grantID != "" {
		if err := s.RevokeGrant(ctx, grantID, "revoked by the client"); err != nil && !errors.Is(err, broker.ErrNotFound) {
			oauth.WriteError(w, r, oauth.ErrServerError.WithCause(err))
			return
		}
	}
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
}

// sameRegistration checks that the grant's MCP server is still registered,
// and as the same registration: a server registered later at the same URI
// does not inherit grants made for an earlier one.
func (s *Server) sameRegistration(ctx context.Context, g broker.Grant) error {
	res, err := s.o.Store.Resources().GetBy(ctx, broker.IndexURI, g.Resource)
	if err != nil {
		return err
	}
	return madeFor(g, res)
}

// madeFor reports whether g was made for the registration res (grants from
// before registrations were recorded in them pass).
func madeFor(g broker.Grant, res broker.Resource) error {
	if g.ResourceID != "" && g.ResourceID != res.ID {
		return fmt.Errorf("grant %s was made for registration %s, not %s: %w", g.ID, g.ResourceID, res.ID, broker.ErrNotFound)
	}
	return nil
}
