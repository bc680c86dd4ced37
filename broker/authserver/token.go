package authserver

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/lanyardhq/lanyard/broker"
	"github.com/lanyardhq/lanyard/broker/oauth"
	"github.com/lanyardhq/lanyard/broker/token"
	"github.com/lanyardhq/lanyard/internal/httpx"
)

// LastUsedGranularity: Grant.LastUsedAt is written at most this often
// (RecordGrantUse, by token requests and redemptions). Each write is an
// fsynced update of the grant on the request's path, so the store takes
// (active grants / LastUsedGranularity) of them a second: with 100,000
// grants in use, 1,700 a second at one minute; 170 at ten.
const LastUsedGranularity = 10 * time.Minute

// tokenResponse is RFC 6749 §5.1.
type tokenResponse struct {
	AccessToken  string `json:"access_token"`
	TokenType    string `json:"token_type"`
	ExpiresIn    int64  `json:"expires_in"`
	Scope        string `json:"scope,omitempty"`
	RefreshToken string `json:"refresh_token,omitempty"`
}

// token is the token endpoint: one handler per grant type.
func (s *Server) token(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	p, err := oauth.ParseForm(w, r)
	if err != nil {
		oauth.WriteError(w, r, err)
		return
	}
	if p.Get("grant_type") == GrantTokenExchange && s.o.TokenExchange != nil {
		// The caller is an MCP server, not an OAuth client: the exchanger
		// authenticates it (AuthenticateResource).
		s.o.TokenExchange(w, r, p)
		return
	}
	client, err := s.authenticateClient(ctx, r, p)
	if err != nil {
		s.logOAuthError(ctx, "token: client authentication failed", err)
		oauth.WriteError(w, r, err)
		return
	}
	gt := p.Get("grant_type")
	if gt == "" {
		oauth.WriteError(w, r, oauth.ErrInvalidRequest.WithDescription("grant_type is required"))
		return
	}
	if !slices.Contains([]string{GrantAuthorizationCode, GrantRefreshToken, GrantDeviceCode}, gt) {
		oauth.WriteError(w, r, oauth.ErrUnsupportedGrantType)
		return
	}
	if !slices.Contains(grantTypes(client), gt) {
		oauth.WriteError(w, r, oauth.ErrUnauthorizedClient.WithDescription("client may not use this grant type"))
		return
	}
	var resp tokenResponse
	switch gt {
	case GrantAuthorizationCode:
		resp, err = s.codeGrant(ctx, client, p)
	case GrantRefreshToken:
		resp, err = s.refreshGrant(ctx, client, p)
	case GrantDeviceCode:
		resp, err = s.deviceGrant(ctx, client, p)
	}
	if err != nil {
		s.logOAuthError(ctx, "token: request refused", err, "client_id", client.ID, "grant_type", gt)
		if oauth.As(err).Code != oauth.ErrAuthorizationPending.Code && oauth.As(err).Code != oauth.ErrSlowDown.Code {
			s.auditDenied(ctx, broker.AuditIssue, err, broker.AuditEvent{ClientID: client.ID, Reason: gt})
		}
		oauth.WriteError(w, r, err)
		return
	}
	oauth.WriteJSON(w, http.StatusOK, resp)
}

func (s *Server) logOAuthError(ctx context.Context, msg string, err error, args ...any) {
	e := oauth.As(err)
	args = append(args, "error", e.Code, "err", err)
	if e.Status >= 500 {
		s.o.Logger.ErrorContext(ctx, msg, args...)
		return
	}
	s.o.Logger.InfoContext(ctx, msg, args...)
}

// clientForm parses a form-encoded request and authenticates the client
// that sent it; on failure it has written the OAuth error and ok is false.
func (s *Server) clientForm(w http.ResponseWriter, r *http.Request) (p oauth.Params, client broker.Client, ok bool) {
	p, err := oauth.ParseForm(w, r)
	if err == nil {
		client, err = s.authenticateClient(r.Context(), r, p)
	}
	if err != nil {
		oauth.WriteError(w, r, err)
		return p, client, false
	}
	return p, client, true
}

// authenticateClient identifies the client of a token, revocation or device
// authorization request: HTTP Basic (client_secret_basic), client_secret in
// the body (client_secret_post), or client_id alone for public clients.
// Exactly one method may be used.
func (s *Server) authenticateClient(ctx context.Context, r *http.Request, p oauth.Params) (broker.Client, error) {
	id, secret, err := clientCredentials(r, p)
	if err != nil {
		return broker.Client{}, err
	}
	if id == "" {
		return broker.Client{}, oauth.ErrInvalidClient.WithDescription("client authentication is required")
	}
	c, err := s.o.Clients.Resolve(ctx, id)
	if err != nil {
		if e := oauth.As(err); e.Code == oauth.ErrInvalidClient.Code {
			return c, oauth.ErrInvalidClient.WithDescription("unknown client").WithCause(err)
		}
		return c, err
	}
	switch {
	case c.SecretHash == "" && secret != "":
		return c, oauth.ErrInvalidClient.WithDescription("public client must not send a secret")
	case c.SecretHash != "" && !broker.SecretMatches(c.SecretHash, secret):
		return c, oauth.ErrInvalidClient.WithDescription("client authentication failed")
	}
	return c, nil
}

// clientCredentials extracts client_id and secret. Basic credentials are
// form-urlencoded (RFC 6749 §2.3.1).
func clientCredentials(r *http.Request, p oauth.Params) (id, secret string, err error) {
	if u, pw, ok := r.BasicAuth(); ok {
		id, err1 := url.QueryUnescape(u)
		secret, err2 := url.QueryUnescape(pw)
		if err1 != nil || err2 != nil {
			return "", "", oauth.ErrInvalidClient.WithDescription("malformed HTTP Basic credentials")
		}
		if p.Has("client_secret") {
			return "", "", oauth.ErrInvalidRequest.WithDescription("use one client authentication method")
		}
		if p.Has("client_id") && p.Get("client_id") != id {
			return "", "", oauth.ErrInvalidRequest.WithDescription("client_id does not match the authenticated client")
		}
		return id, secret, nil
	} else if r.Header.Get("Authorization") != "" {
		return "", "", oauth.ErrInvalidClient.WithDescription("unsupported Authorization scheme")
	}
	return p.Get("client_id"), p.Get("client_secret"), nil
}

// codeGrant exchanges an authorization code. The code is consumed only if
// the client, redirect URI, PKCE verifier and resource all match, so a
// wrong try leaves it usable; a replayed code revokes its grant.
func (s *Server) codeGrant(ctx context.Context, client broker.Client, p oauth.Params) (tokenResponse, error) {
	code := p.Get("code")
	if code == "" {
		return tokenResponse{}, oauth.ErrInvalidRequest.WithDescription("code is required")
	}
	var resource string
	if raw := p.Get("resource"); raw != "" {
		canon, err := oauth.CanonicalResource(raw, s.o.Dev)
		if err != nil {
			return tokenResponse{}, err
		}
		resource = canon
	}
	check := func(c broker.AuthCode) error {
		switch {
		case c.ClientID != client.ID:
			return oauth.ErrInvalidGrant.WithDescription("code was issued to another client")
		case p.Get("redirect_uri") != c.RedirectURI:
			return oauth.ErrInvalidGrant.WithDescription("redirect_uri does not match the authorization request")
		case resource != "" && resource != c.Resource:
			return oauth.ErrInvalidTarget.WithDescription("resource does not match the authorization request")
		}
		return oauth.VerifyPKCE(p.Get("code_verifier"), c.CodeChallenge)
	}
	rec, err := s.o.Store.AuthCodes().Consume(ctx, broker.HashSecret(code), check)
	switch {
	case errors.Is(err, broker.ErrConsumed):
		if rerr := s.RevokeGrant(ctx, rec.GrantID, "authorization code replayed"); rerr != nil {
			s.o.Logger.ErrorContext(ctx, "revoke grant after code replay", "grant", rec.GrantID, "err", rerr)
		}
		return tokenResponse{}, oauth.ErrInvalidGrant.WithDescription("code was already used; tokens issued from it are revoked")
	case errors.Is(err, broker.ErrNotFound):
		return tokenResponse{}, oauth.ErrInvalidGrant.WithDescription("code is invalid or expired")
	case err != nil:
		return tokenResponse{}, err
	}
	grant, err := s.liveGrant(ctx, rec.GrantID)
	if err != nil {
		return tokenResponse{}, err
	}
	return s.issue(ctx, client, grant, rec.Scopes, rec.Scopes, "")
}

// liveGrant returns the grant if it exists and is not revoked.
func (s *Server) liveGrant(ctx context.Context, id string) (broker.Grant, error) {
	g, err := s.o.Store.Grants().Get(ctx, id)
	if errors.Is(err, broker.ErrNotFound) || (err == nil && g.Revoked()) {
		return g, oauth.ErrInvalidGrant.WithDescription("the authorization was revoked")
	}
	return g, err
}

// issue signs an access token for scopes and, when the grant allows it,
// creates a refresh token carrying refreshScopes. If oldRefresh is set the
// new refresh token replaces it in one atomic rotation.
func (s *Server) issue(ctx context.Context, client broker.Client, g broker.Grant, scopes, refreshScopes []string, oldRefresh string) (tokenResponse, error) {
	now := s.now()
	if err := s.sameRegistration(ctx, g); errors.Is(err, broker.ErrNotFound) {
		return tokenResponse{}, oauth.ErrInvalidGrant.WithDescription("the MCP server of this authorization is no longer registered")
	} else if err != nil {
		return tokenResponse{}, err
	}
	accessScopes := slices.DeleteFunc(slices.Clone(scopes), func(s string) bool { return s == ScopeOfflineAccess })
	at, err := s.o.Keys.Sign(ctx, token.Claims{
		Issuer: s.o.Issuer, Subject: g.UserID, Audience: g.Resource, ClientID: client.ID,
		Scopes: accessScopes, GrantID: g.ID, JTI: broker.NewID(), IssuedAt: now, ExpiresAt: now.Add(s.o.AccessTokenTTL),
	})
	if err != nil {
		return tokenResponse{}, err
	}
	resp := tokenResponse{AccessToken: at, TokenType: "Bearer", ExpiresIn: int64(s.o.AccessTokenTTL / time.Second),
		Scope: strings.Join(accessScopes, " ")}
	// The audit record goes first: if it cannot be written nothing has
	// changed (no refresh token consumed), and the client may simply retry.
	action := broker.AuditIssue
	if oldRefresh != "" {
		action = broker.AuditRefresh
	}
	if err := s.audit(ctx, broker.AuditEvent{Action: action, Outcome: broker.OutcomeOK, UserID: g.UserID, ClientID: client.ID,
		Resource: g.Resource, GrantID: g.ID, Reason: "scope " + resp.Scope}); err != nil {
		return tokenResponse{}, err
	}
	if slices.Contains(refreshScopes, ScopeOfflineAccess) && slices.Contains(grantTypes(client), GrantRefreshToken) {
		rt := broker.NewToken("lyr_")
		rec := broker.RefreshToken{ID: broker.HashSecret(rt), GrantID: g.ID, ClientID: client.ID, Scopes: refreshScopes,
			IssuedAt: now, ExpiresAt: now.Add(s.o.RefreshTokenTTL)}
		if oldRefresh == "" {
			err = s.o.Store.RefreshTokens().Create(ctx, rec)
		} else {
			_, err = s.o.Store.RefreshTokens().Rotate(ctx, oldRefresh, refreshCheck(client), rec)
			err = s.refreshError(ctx, err, oldRefresh)
		}
		if err != nil {
			return tokenResponse{}, err
		}
		resp.RefreshToken = rt
	}
	s.RecordGrantUse(ctx, g, now)
	httpx.Annotate(ctx, "token issued", slog.String("client_id", client.ID), slog.String("user", g.UserID),
		slog.String("aud", g.Resource), slog.String("grant", g.ID), slog.Bool("refresh", resp.RefreshToken != ""))
	return resp, nil
}

// RecordGrantUse sets g's LastUsedAt to now, best effort (a failure is
// logged). LastUsedAt is for display (grants list): it is written at most
// once per LastUsedGranularity, sparing each token request and redemption
// an fsynced write.
func (s *Server) RecordGrantUse(ctx context.Context, g broker.Grant, now time.Time) {
	if now.Sub(g.LastUsedAt) < LastUsedGranularity {
		return
	}
	if _, err := s.o.Store.Grants().Update(ctx, g.ID, func(x broker.Grant) (broker.Grant, error) {
		x.LastUsedAt = now
		return x, nil
	}); err != nil {
		s.o.Logger.WarnContext(ctx, "record grant use", "grant", g.ID, "err", err)
	}
}

func refreshCheck(client broker.Client) func(broker.RefreshToken) error {
	return func(t broker.RefreshToken) error {
		if t.ClientID != client.ID {
			return oauth.ErrInvalidGrant.WithDescription("refresh token was issued to another client")
		}
		return nil
	}
}

// refreshError maps a failed rotation; reuse of a rotated token revokes the
// whole grant.
func (s *Server) refreshError(ctx context.Context, err error, id string) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, broker.ErrConsumed):
		if old, gerr := s.o.Store.RefreshTokens().Get(ctx, id); gerr == nil {
			if rerr := s.RevokeGrant(ctx, old.GrantID, "refresh token reused"); rerr != nil {
				s.o.Logger.ErrorContext(ctx, "revoke grant after refresh reuse", "grant", old.GrantID, "err", rerr)
			}
		}
		return oauth.ErrInvalidGrant.WithDescription("refresh token was already used; the authorization is revoked")
	case errors.Is(err, broker.ErrNotFound):
		return oauth.ErrInvalidGrant.WithDescription("refresh token is invalid or expired")
	}
	return err
}

// refreshGrant rotates a refresh token. Scopes may narrow, never widen; the
// audience never changes.
func (s *Server) refreshGrant(ctx context.Context, client broker.Client, p oauth.Params) (tokenResponse, error) {
	raw := p.Get("refresh_token")
	if raw == "" {
		return tokenResponse{}, oauth.ErrInvalidRequest.WithDescription("refresh_token is required")
	}
	id := broker.HashSecret(raw)
	old, err := s.o.Store.RefreshTokens().Get(ctx, id)
	if err != nil {
		return tokenResponse{}, s.refreshError(ctx, err, id)
	}
	if !old.Consumed.IsZero() {
		return tokenResponse{}, s.refreshError(ctx, broker.ErrConsumed, id)
	}
	if err := refreshCheck(client)(old); err != nil {
		return tokenResponse{}, err
	}
	grant, err := s.liveGrant(ctx, old.GrantID)
	if err != nil {
		return tokenResponse{}, err
	}
	if raw := p.Get("resource"); raw != "" {
		canon, err := oauth.CanonicalResource(raw, s.o.Dev)
		if err != nil || canon != grant.Resource {
			return tokenResponse{}, oauth.ErrInvalidTarget.WithDescription("a refresh cannot change the audience")
		}
	}
	scopes := old.Scopes
	if req := oauth.Scopes(p.Get("scope")); len(req) > 0 {
		if !subset(req, old.Scopes) {
			return tokenResponse{}, oauth.ErrInvalidScope.WithDescription("a refresh cannot widen the scope")
		}
		scopes = req
	}
	return s.issue(ctx, client, grant, scopes, old.Scopes, id)
}
