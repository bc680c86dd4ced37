package authserver

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"

	"github.com/lanyardhq/lanyard/broker"
	"github.com/lanyardhq/lanyard/broker/oauth"
)

// authorize validates an authorization request. Until the client and its
// redirect URI are known to be valid, errors are shown to the user by
// Lanyard itself; after that they go back to the client. A valid request is
// stored as an AuthRequest and the browser continues at the consent page.
func (s *Server) authorize(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	p, err := oauth.ParseQuery(r)
	if err != nil {
		s.o.ShowError(w, r, http.StatusBadRequest, "Invalid authorization request", oauth.As(err).Description)
		return
	}
	clientID := p.Get("client_id")
	if clientID == "" {
		s.o.ShowError(w, r, http.StatusBadRequest, "Invalid authorization request", "The request names no client_id.")
		return
	}
	client, err := s.o.Clients.Resolve(ctx, clientID)
	if err != nil {
		s.o.Logger.InfoContext(ctx, "authorize: unknown or invalid client", "err", err)
		s.o.ShowError(w, r, http.StatusBadRequest, "Unknown application",
			"The application that sent you here is not registered with Lanyard or its registration is invalid.")
		return
	}
	redirectURI := p.Get("redirect_uri")
	if redirectURI == "" && len(client.RedirectURIs) == 1 {
		redirectURI = client.RedirectURIs[0]
	}
	if redirectURI == "" || !oauth.MatchRedirectURI(client.RedirectURIs, redirectURI) {
		s.o.ShowError(w, r, http.StatusBadRequest, "Invalid redirect",
			"The application asked to return you to an address it did not register. Lanyard will not send you there.")
		return
	}
	// From here on errors go to the client.
	state := p.Get("state")
	req, oerr := s.validateAuthorization(ctx, client, p)
	if oerr != nil {
		http.Redirect(w, r, s.errorRedirect(redirectURI, state, oerr), http.StatusFound)
		return
	}
	req.ID = broker.NewToken("")
	req.ClientID, req.RedirectURI, req.State = client.ID, redirectURI, state
	now := s.now()
	req.CreatedAt, req.ExpiresAt = now, now.Add(AuthRequestTTL)
	if err := s.o.Store.AuthRequests().Create(ctx, req); err != nil {
		s.o.Logger.ErrorContext(ctx, "authorize: store request", "err", err)
		http.Redirect(w, r, s.errorRedirect(redirectURI, state, oauth.ErrServerError.WithDescription("internal error")), http.StatusFound)
		return
	}
	http.Redirect(w, r, PathConsent+"?"+url.Values{"req": {req.ID}}.Encode(), http.StatusFound)
}

// validateAuthorization checks the parts of a request whose errors may go
// back to the client.
func (s *Server) validateAuthorization(ctx context.Context, client broker.Client, p oauth.Params) (broker.AuthRequest, *oauth.Error) {
	var req broker.AuthRequest
	if rt := p.Get("response_type"); rt != "code" {
		return req, oauth.ErrUnsupportedResponseType.WithDescription("response_type must be code")
	}
	if p.Has("request") || p.Has("request_uri") {
		return req, oauth.ErrInvalidRequest.WithDescription("request objects are not supported")
	}
	if !slices.Contains(grantTypes(client), GrantAuthorizationCode) {
		return req, oauth.ErrUnauthorizedClient.WithDescription("client may not use the authorization code grant")
	}
	if err := oauth.CheckChallenge(p.Get("code_challenge"), p.Get("code_challenge_method")); err != nil {
		return req, oauth.As(err)
	}
	res, oerr := s.resolveResource(ctx, p.Get("resource"))
	if oerr != nil {
		return req, oerr
	}
	scopes, oerr := grantableScopes(res, p.Get("scope"))
	if oerr != nil {
		return req, oerr
	}
	req.CodeChallenge, req.Resource, req.Scopes = p.Get("code_challenge"), res.URI, scopes
	return req, nil
}

// resolveResource maps an RFC 8707 resource parameter to a registered MCP
// server by exact canonical URI; empty means the configured default.
func (s *Server) resolveResource(ctx context.Context, raw string) (broker.Resource, *oauth.Error) {
	if raw == "" {
		raw = s.o.DefaultResource
		if raw == "" {
			return broker.Resource{}, oauth.ErrInvalidTarget.WithDescription("resource is required")
		}
	}
	canon, err := oauth.CanonicalResource(raw, s.o.Dev)
	if err != nil {
		return broker.Resource{}, oauth.As(err)
	}
	res, err := s.o.Store.Resources().GetBy(ctx, broker.IndexURI, canon)
	if errors.Is(err, broker.ErrNotFound) {
		return res, oauth.ErrInvalidTarget.WithDescription("resource is not an MCP server registered with this authorization server")
	}
	if err != nil {
		return res, oauth.ErrServerError.WithDescription("internal error").WithCause(err)
	}
	return res, nil
}

// grantableScopes checks requested scopes against what the resource
// understands (plus offline_access); an empty request gets the resource's
// default scopes.
func grantableScopes(res broker.Resource, raw string) ([]string, *oauth.Error) {
	req := oauth.Scopes(raw)
	if len(req) == 0 {
		return slices.Clone(res.DefaultScopes), nil
	}
	for _, sc := range req {
		if sc != ScopeOfflineAccess && !slices.Contains(res.Scopes, sc) {
			return nil, oauth.ErrInvalidScope.WithDescription(fmt.Sprintf("scope %q is not offered by this MCP server", oauth.Printable(sc)))
		}
	}
	return req, nil
}

func grantTypes(c broker.Client) []string {
	if len(c.GrantTypes) == 0 {
		return []string{GrantAuthorizationCode, GrantRefreshToken}
	}
	return c.GrantTypes
}

// Pending is what the consent page shows about a waiting request.
type Pending struct {
	Request  broker.AuthRequest
	Client   broker.Client
	Resource broker.Resource
	// PreApproved: the client is pre-approved for this user, or an earlier
	// grant already covers the request; no consent screen is needed.
	PreApproved bool
	// Connections are the user's linked upstream accounts to choose from.
	Connections []broker.Connection
}

// ErrRequestGone is returned for an authorization request that expired, was
// used already, or belongs to another user.
var ErrRequestGone = errors.New("this sign-in request has expired or was already used; start again from the application")

// Pending loads request id for user, binding the request to the first user
// who opens it.
func (s *Server) Pending(ctx context.Context, id string, user broker.User) (Pending, error) {
	var pd Pending
	req, err := s.o.Store.AuthRequests().Update(ctx, id, func(a broker.AuthRequest) (broker.AuthRequest, error) {
		switch {
		case !a.Consumed.IsZero():
			return a, ErrRequestGone
		case a.UserID == "":
			a.UserID = user.ID
		case a.UserID != user.ID:
			return a, ErrRequestGone
		}
		return a, nil
	})
	if errors.Is(err, broker.ErrNotFound) || errors.Is(err, ErrRequestGone) {
		return pd, ErrRequestGone
	}
	if err != nil {
		return pd, err
	}
	pd.Request = req
	if pd.Client, err = s.o.Clients.Resolve(ctx, req.ClientID); err != nil {
		return pd, ErrRequestGone
	}
	if pd.Resource, err = s.o.Store.Resources().GetBy(ctx, broker.IndexURI, req.Resource); err != nil {
		return pd, ErrRequestGone
	}
	if pd.Connections, err = s.connections(ctx, user.ID); err != nil {
		return pd, err
	}
	if preApproved(pd.Client, user) {
		pd.PreApproved = true
	} else if g, err := s.coveringGrant(ctx, user.ID, req); err != nil {
		return pd, err
	} else if g != nil {
		pd.PreApproved = true
	}
	return pd, nil
}

func preApproved(c broker.Client, u broker.User) bool {
	if slices.Contains(c.PreApprovedUsers, u.Username) {
		return true
	}
	for _, g := range u.Groups {
		if slices.Contains(c.PreApprovedGroups, g) {
			return true
		}
	}
	return false
}

func (s *Server) connections(ctx context.Context, userID string) ([]broker.Connection, error) {
	return broker.ListAll(ctx, s.o.Store.Connections(), broker.Query{Index: broker.IndexUser, Value: userID})
}

// userGrants returns the live (unrevoked) grants of user for client and
// resource.
func (s *Server) userGrants(ctx context.Context, userID, clientID, resource string) ([]broker.Grant, error) {
	all, err := broker.ListAll(ctx, s.o.Store.Grants(), broker.Query{Index: broker.IndexUser, Value: userID})
	if err != nil {
		return nil, err
	}
	return slices.DeleteFunc(all, func(g broker.Grant) bool {
		return g.ClientID != clientID || g.Resource != resource || g.Revoked()
	}), nil
}

// coveringGrant returns a live grant of the user for the same client and
// resource whose scopes include every requested scope: consent remembered.
func (s *Server) coveringGrant(ctx context.Context, userID string, req broker.AuthRequest) (*broker.Grant, error) {
	grants, err := s.userGrants(ctx, userID, req.ClientID, req.Resource)
	if err != nil {
		return nil, err
	}
	for _, g := range grants {
		if subset(req.Scopes, g.Scopes) {
			return &g, nil
		}
	}
	return nil, nil
}

func subset(a, b []string) bool {
	for _, x := range a {
		if !slices.Contains(b, x) {
			return false
		}
	}
	return true
}

// Decision is the user's answer on the consent page.
type Decision struct {
	Approve bool
	// ConnectionIDs are the linked accounts the user chose for the grant.
	// Only the user's own connections are accepted.
	ConnectionIDs []string
	// Remembered: approve with the covering grant or pre-approval, without
	// a consent form (ConnectionIDs is then ignored for an existing grant).
	Remembered bool
}

// Decide consumes request id (once) with the user's decision and returns the
// URL to send the browser to: the client's redirect URI with a code (or an
// access_denied error), state and iss.
func (s *Server) Decide(ctx context.Context, id string, user broker.User, d Decision) (string, error) {
	req, err := s.o.Store.AuthRequests().Consume(ctx, id, func(a broker.AuthRequest) error {
		if a.UserID != user.ID {
			return ErrRequestGone
		}
		return nil
	})
	if errors.Is(err, broker.ErrNotFound) || errors.Is(err, broker.ErrConsumed) || errors.Is(err, ErrRequestGone) {
		return "", ErrRequestGone
	}
	if err != nil {
		return "", err
	}
	if !d.Approve {
		s.o.Logger.InfoContext(ctx, "consent denied", "user", user.ID, "client_id", req.ClientID, "aud", req.Resource)
		if err := s.audit(ctx, broker.AuditEvent{Action: broker.AuditConsent, Outcome: broker.OutcomeDenied, Reason: "denied by the user",
			UserID: user.ID, ClientID: req.ClientID, Resource: req.Resource}); err != nil {
			return "", err
		}
		return s.errorRedirect(req.RedirectURI, req.State, oauth.ErrAccessDenied.WithDescription("the user denied the request")), nil
	}
	grant, err := s.grantFor(ctx, user, req, d, func(g broker.Grant) error {
		return s.audit(ctx, broker.AuditEvent{Action: broker.AuditConsent, Outcome: broker.OutcomeOK, UserID: user.ID,
			ClientID: req.ClientID, Resource: req.Resource, GrantID: g.ID,
			Reason: "scope " + strings.Join(req.Scopes, " ") + "; connections " + strings.Join(g.ConnectionIDs, " ")})
	})
	if err != nil {
		return "", err
	}
	code := broker.NewToken("lyc_")
	now := s.now()
	rec := broker.AuthCode{
		ID: broker.HashSecret(code), ClientID: req.ClientID, UserID: user.ID, GrantID: grant.ID,
		RedirectURI: req.RedirectURI, CodeChallenge: req.CodeChallenge, Resource: req.Resource,
		Scopes: req.Scopes, IssuedAt: now, ExpiresAt: now.Add(CodeTTL),
	}
	if err := s.o.Store.AuthCodes().Create(ctx, rec); err != nil {
		return "", err
	}
	s.o.Logger.InfoContext(ctx, "consent granted", "user", user.ID, "client_id", req.ClientID, "aud", req.Resource,
		"grant", grant.ID, "scopes", req.Scopes, "connections", len(grant.ConnectionIDs))
	q := url.Values{"code": {code}, "iss": {s.o.Issuer}}
	if req.State != "" {
		q.Set("state", req.State)
	}
	return withQuery(req.RedirectURI, q), nil
}

// grantFor returns the grant a new code belongs to: the covering grant when
// consent is remembered, else a new or widened grant with the chosen
// connections.
// record is called with the grant as it will be, before anything is
// written: the consent's audit record goes first, so a failure to write it
// leaves the grant as it was.
func (s *Server) grantFor(ctx context.Context, user broker.User, req broker.AuthRequest, d Decision, record func(broker.Grant) error) (broker.Grant, error) {
	if d.Remembered {
		if g, err := s.coveringGrant(ctx, user.ID, req); err != nil {
			return broker.Grant{}, err
		} else if g != nil {
			return *g, record(*g)
		}
	}
	res, err := s.o.Store.Resources().GetBy(ctx, broker.IndexURI, req.Resource)
	if err != nil {
		return broker.Grant{}, fmt.Errorf("MCP server %s: %w", req.Resource, err)
	}
	conns, err := s.connections(ctx, user.ID)
	if err != nil {
		return broker.Grant{}, err
	}
	var chosen []string
	for _, id := range d.ConnectionIDs {
		if slices.ContainsFunc(conns, func(c broker.Connection) bool { return c.ID == id }) && !slices.Contains(chosen, id) {
			chosen = append(chosen, id)
		}
	}
	now := s.now()
	existing, err := s.userGrants(ctx, user.ID, req.ClientID, req.Resource)
	if err != nil {
		return broker.Grant{}, err
	}
	widen := func(g broker.Grant) broker.Grant {
		g.Scopes = slices.Clone(g.Scopes)
		for _, sc := range req.Scopes {
			if !slices.Contains(g.Scopes, sc) {
				g.Scopes = append(g.Scopes, sc)
			}
		}
		if !d.Remembered {
			g.ConnectionIDs = chosen
		}
		g.UpdatedAt = now
		return g
	}
	if len(existing) > 0 {
		if err := record(widen(existing[0])); err != nil {
			return broker.Grant{}, err
		}
		return s.o.Store.Grants().Update(ctx, existing[0].ID, func(g broker.Grant) (broker.Grant, error) {
			return widen(g), nil
		})
	}
	g := broker.Grant{
		ID: broker.NewID(), UserID: user.ID, ClientID: req.ClientID, Resource: req.Resource, ResourceID: res.ID,
		Scopes: slices.Clone(req.Scopes), ConnectionIDs: chosen, CreatedAt: now, UpdatedAt: now,
	}
	if err := record(g); err != nil {
		return broker.Grant{}, err
	}
	return g, s.o.Store.Grants().Create(ctx, g)
}

// RevokeGrant marks a grant revoked: every access token (checked at
// introspection and redemption) and refresh token issued under it stops
// working.
func (s *Server) RevokeGrant(ctx context.Context, id, reason string) error {
	_, err := s.o.Store.Grants().Update(ctx, id, func(g broker.Grant) (broker.Grant, error) {
		if !g.Revoked() {
			g.RevokedAt, g.RevokeReason = s.now(), reason
		}
		return g, nil
	})
	if err != nil {
		return err
	}
	s.o.Logger.InfoContext(ctx, "grant revoked", "grant", id, "reason", reason)
	g, _ := s.o.Store.Grants().Get(ctx, id)
	return s.audit(ctx, broker.AuditEvent{Action: broker.AuditRevoke, Outcome: broker.OutcomeOK, Reason: reason,
		UserID: g.UserID, ClientID: g.ClientID, Resource: g.Resource, GrantID: id})
}
