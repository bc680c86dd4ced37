// Package redeem is the second hop of Lanyard: an MCP server that received
// an agent's access token asks Lanyard for the upstream credential that one
// tool call needs, and gets it only if every rule holds.
//
// Two doors lead in. POST /v1/redeem (JSON) answers with the credential of
// one linked account (an OAuth access token, an API key, a password, a
// socket secret). RFC 8693 token exchange at the token endpoint
// (grant_type urn:ietf:params:oauth:grant-type:token-exchange) answers
// with an upstream OAuth access token only. Both run the same checks, in
// this order, each with its own error and an audit record:
//
//  1. the caller authenticates as a registered MCP server
//     (authserver.AuthenticateResource: a secret, or private_key_jwt);
//  2. the agent token verifies and its audience is that server;
//  3. its grant is live;
//  4. the server may redeem the connector (Resource.Connectors), and the
//     grant's credential set holds a connection of that connector that
//     belongs to the grant's user;
//  5. the connection is healthy;
//  6. the server's tool policy allows the tool with the token's scopes;
//  7. the credential is fetched (an expiring OAuth token is refreshed
//     first, single-flight, by broker/links) or, for a connector
//     configured to exchange onward (Options.OnwardExchange), obtained by
//     RFC 8693 token exchange at the connector's own provider.
//
// Onward exchange applies at both doors: for such a connector the stored
// upstream token never leaves Lanyard (otherwise /v1/redeem would undo
// the operator's choice). The subject of the onward exchange is the stored
// access token; its audience is the connector's exchange_audience (none if
// unset; the MCP server's URI means nothing to an upstream provider); the
// scope parameter of a token exchange at Lanyard is not passed on. The
// audit record of an onward exchange says so in its reason.
//
// The audit record of a success is appended (durably) before the response
// is written; if it cannot be, no credential leaves (503). Denials are
// audited too; a failure to audit a denial is logged and the denial stands.
//
// The package sits on top of broker/authserver (authentication, token
// verification) and broker/links (credentials); cmd/lanyard wires it and
// hands Exchange to the authorization server as its token-exchange handler.
package redeem

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/lanyardhq/lanyard/broker"
	"github.com/lanyardhq/lanyard/broker/authserver"
	"github.com/lanyardhq/lanyard/broker/links"
	"github.com/lanyardhq/lanyard/broker/oauth"
	"github.com/lanyardhq/lanyard/connectors"
	"github.com/lanyardhq/lanyard/internal/codec"
	"github.com/lanyardhq/lanyard/internal/httpx"
)

// Limits and names.
const (
	// MaxBody caps the JSON body of POST /v1/redeem.
	MaxBody = 16 << 10
	// maxName bounds connector and tool names.
	maxName = 256
	// TokenTypeAccessToken is the RFC 8693 token type of access tokens.
	TokenTypeAccessToken = "urn:ietf:params:oauth:token-type:access_token"
	// ConnectorURNPrefix may precede a connector name in the resource or
	// audience of a token exchange.
	ConnectorURNPrefix = "urn:lanyard:connector:"
)

// Errors of redemption beyond the OAuth ones.
var (
	// ErrNeedsRelink: the linked account stopped working; only its user can
	// fix it, by linking it again in Lanyard.
	ErrNeedsRelink = &oauth.Error{Code: "needs_relink", Status: http.StatusConflict}
)

// Options configures a Service.
type Options struct {
	// Auth authenticates MCP servers and verifies agent tokens. Required.
	Auth *authserver.Server
	// Store holds grants, connections and the audit chain. Required.
	Store broker.Store
	// Links hands out (and refreshes) credentials. Required.
	Links *links.Service
	// OnwardExchange reports whether a connector is configured to exchange
	// tokens onward at its provider (config oauth2.token_exchange): then
	// both /v1/redeem and token exchange answer with a token the provider
	// issues by RFC 8693 exchange of the stored one (links.Exchange), never
	// with the stored token. Nil: none is.
	OnwardExchange func(connector string) bool
	Now            func() time.Time
	Logger         *slog.Logger
}

// Service answers redemptions and token exchanges.
type Service struct{ o Options }

// New returns a Service.
func New(o Options) (*Service, error) {
	if o.Auth == nil || o.Store == nil || o.Links == nil {
		return nil, errors.New("redeem: Auth, Store and Links are required")
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.OnwardExchange == nil {
		o.OnwardExchange = func(string) bool { return false }
	}
	return &Service{o: o}, nil
}

// Mount adds POST /v1/redeem.
func (s *Service) Mount(m authserver.Mounter) {
	m.Handle(authserver.PathRedeem, http.HandlerFunc(s.redeem), http.MethodPost)
}

// Request is the body of POST /v1/redeem. An MCP server registered for
// private_key_jwt sends its client assertion in the body too (a JSON body
// has no form parameters); one registered with a secret uses HTTP Basic.
type Request struct {
	Token               string `json:"token"`
	Connector           string `json:"connector"`
	Tool                string `json:"tool"`
	ClientAssertionType string `json:"client_assertion_type,omitempty"`
	ClientAssertion     string `json:"client_assertion,omitempty"`
}

// Response is the answer of POST /v1/redeem. Credential holds the secret:
// String leaves it out.
type Response struct {
	ConnectionID string         `json:"connection_id"`
	Connector    string         `json:"connector"`
	Type         string         `json:"type"`
	Credential   map[string]any `json:"credential"`
	ExpiresAt    time.Time      `json:"expires_at,omitzero"`
}

// String describes the response without the credential.
func (r Response) String() string {
	return fmt.Sprintf("redeem.Response{connection: %s, connector: %s, type: %s}", r.ConnectionID, r.Connector, r.Type)
}

// failure is a refusal: the OAuth error to send, the missing scopes of an
// insufficient_scope, a detail for the audit record only, and whether the
// agent token itself was at fault.
type failure struct {
	err    *oauth.Error
	scope  string
	detail string
	token  bool
}

func fail(e *oauth.Error, format string, args ...any) *failure {
	return &failure{err: e.WithDescription(fmt.Sprintf(format, args...))}
}

func (s *Service) redeem(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	ev := broker.AuditEvent{Action: broker.AuditRedeem}
	req, f := parseRequest(w, r)
	if f != nil {
		s.deny(ctx, w, r, ev, f)
		return
	}
	p := oauth.Params{}
	if req.ClientAssertionType != "" || req.ClientAssertion != "" {
		p["client_assertion_type"], p["client_assertion"] = req.ClientAssertionType, req.ClientAssertion
	}
	res, err := s.o.Auth.AuthenticateResource(ctx, r, p)
	if err != nil {
		s.deny(ctx, w, r, ev, &failure{err: oauth.As(err), detail: claimed(r, p)})
		return
	}
	// Caller-chosen text enters the audit record only once the caller is
	// known.
	ev.Resource, ev.Tool, ev.Connector = res.URI, req.Tool, req.Connector
	switch {
	case req.Token == "":
		f = fail(oauth.ErrInvalidRequest, "token is required")
	case req.Connector == "":
		f = fail(oauth.ErrInvalidRequest, "connector is required")
	case req.Tool == "":
		f = fail(oauth.ErrInvalidRequest, "tool is required (the MCP tool the credential is for)")
	}
	if f != nil {
		s.deny(ctx, w, r, ev, f)
		return
	}
	g, conn, cred, f := s.decide(ctx, res, req.Token, req.Connector, req.Tool, &ev)
	if f != nil {
		s.deny(ctx, w, r, ev, f)
		return
	}
	if !s.granted(ctx, w, r, ev, g) {
		return
	}
	oauth.WriteJSON(w, http.StatusOK, Response{ConnectionID: conn.ID, Connector: conn.Connector, Type: cred.Type,
		Credential: cred.Fields, ExpiresAt: cred.ExpiresAt})
}

// Exchange answers an RFC 8693 token exchange at the token endpoint (set
// it as authserver.Options.TokenExchange). subject_token is the agent's
// access token; resource or audience names the upstream connector (its
// name, or urn:lanyard:connector:NAME); the optional tool parameter names
// the MCP tool. Without tool the policy is applied to the tool name "":
// allowed only when the MCP server's policy is default-allow (or has a
// rule named ""). The answer is the upstream OAuth access token with its
// remaining life (or, for a connector that exchanges onward, the token its
// provider issued for it). Connectors of other kinds than oauth2 are invalid_target
// (use /v1/redeem); problems with the subject token are invalid_request.
func (s *Service) Exchange(w http.ResponseWriter, r *http.Request, p oauth.Params) {
	ctx := r.Context()
	ev := broker.AuditEvent{Action: broker.AuditExchange, Tool: p.Get("tool")}
	res, err := s.o.Auth.AuthenticateResource(ctx, r, p)
	if err != nil {
		s.deny(ctx, w, r, ev, &failure{err: oauth.As(err), detail: claimed(r, p)})
		return
	}
	ev.Resource = res.URI
	name, f := s.exchangeRequest(p)
	ev.Connector = name
	if f != nil {
		s.deny(ctx, w, r, ev, f)
		return
	}
	g, _, cred, f := s.decide(ctx, res, p.Get("subject_token"), name, ev.Tool, &ev)
	if f != nil {
		if f.token { // RFC 8693 §2.2.2: a bad subject_token is invalid_request
			f.err = oauth.ErrInvalidRequest.WithDescription("subject_token: " + f.err.Description)
		}
		s.deny(ctx, w, r, ev, f)
		return
	}
	at, _ := cred.Fields["access_token"].(string)
	if cred.Type != connectors.KindOAuth2 || at == "" {
		s.deny(ctx, w, r, ev, fail(oauth.ErrInvalidTarget, "connector %q did not yield an OAuth access token", name))
		return
	}
	if !s.granted(ctx, w, r, ev, g) {
		return
	}
	resp := map[string]any{"access_token": at, "issued_token_type": TokenTypeAccessToken, "token_type": "Bearer"}
	if !cred.ExpiresAt.IsZero() {
		resp["expires_in"] = max(int64(cred.ExpiresAt.Sub(s.o.Now())/time.Second), 0)
	}
	oauth.WriteJSON(w, http.StatusOK, resp)
}

// exchangeRequest checks the token exchange parameters and returns the
// connector named by resource or audience.
func (s *Service) exchangeRequest(p oauth.Params) (string, *failure) {
	switch {
	case p.Get("subject_token") == "":
		return "", fail(oauth.ErrInvalidRequest, "subject_token is required")
	case p.Get("subject_token_type") != TokenTypeAccessToken:
		return "", fail(oauth.ErrInvalidRequest, "subject_token_type must be %s", TokenTypeAccessToken)
	case p.Has("actor_token") || p.Has("actor_token_type"):
		return "", fail(oauth.ErrInvalidRequest, "actor_token is not supported")
	case p.Has("requested_token_type") && p.Get("requested_token_type") != TokenTypeAccessToken:
		return "", fail(oauth.ErrInvalidRequest, "requested_token_type must be %s (or absent)", TokenTypeAccessToken)
	case !validName(p.Get("tool"), true):
		return "", fail(oauth.ErrInvalidRequest, "tool is not a valid tool name")
	}
	var names []string
	for _, param := range []string{"resource", "audience"} {
		if v := p.Get(param); v != "" {
			names = append(names, strings.TrimPrefix(v, ConnectorURNPrefix))
		}
	}
	switch {
	case len(names) == 0:
		return "", fail(oauth.ErrInvalidRequest, "resource or audience must name the upstream connector")
	case len(names) == 2 && names[0] != names[1]:
		return "", fail(oauth.ErrInvalidTarget, "resource and audience name different connectors")
	case !validName(names[0], false):
		return "", fail(oauth.ErrInvalidTarget, "resource or audience is not a connector name")
	}
	name := names[0]
	c, err := s.o.Links.Connector(name)
	if err != nil {
		return name, fail(oauth.ErrInvalidTarget, "no connector %q", name)
	}
	if c.Kind() != connectors.KindOAuth2 {
		return name, fail(oauth.ErrInvalidTarget, "connector %q is of kind %s; token exchange issues OAuth access tokens only (use /v1/redeem)", name, c.Kind())
	}
	return name, nil
}

// decide runs checks 2 to 7 for an authenticated MCP server and fills ev
// with what it learns.
func (s *Service) decide(ctx context.Context, res broker.Resource, raw, connector, tool string, ev *broker.AuditEvent) (broker.Grant, broker.Connection, connectors.Credential, *failure) {
	var (
		g    broker.Grant
		conn broker.Connection
		cred connectors.Credential
	)
	c, g, err := s.o.Auth.VerifyAccessTokenFor(ctx, raw, res)
	ev.UserID, ev.ClientID, ev.GrantID = c.Subject, c.ClientID, c.GrantID
	if err != nil {
		e := oauth.As(err)
		return g, conn, cred, &failure{err: e, token: e.Code == oauth.ErrInvalidToken.Code}
	}
	if !slices.Contains(res.Connectors, connector) {
		return g, conn, cred, fail(oauth.ErrUnauthorizedClient.WithStatus(http.StatusForbidden),
			"this MCP server may not redeem connector %q", connector)
	}
	foreign := ""
	for _, id := range g.ConnectionIDs {
		x, err := s.o.Store.Connections().Get(ctx, id)
		if errors.Is(err, broker.ErrNotFound) {
			continue // unlinked since the consent
		}
		if err != nil {
			return g, conn, cred, &failure{err: oauth.ErrTemporarilyUnavailable.WithDescription("try again").WithCause(err)}
		}
		if x.Connector != connector {
			continue
		}
		if x.UserID != g.UserID {
			foreign = x.ID // never hand out another user's account
			continue
		}
		conn = x
		break
	}
	if conn.ID == "" {
		f := fail(oauth.ErrAccessDenied, "the user's linked %q account is not in the grant this agent holds", connector)
		if foreign != "" {
			f.detail = "connection " + foreign + " in the grant belongs to another user"
			s.o.Logger.WarnContext(ctx, "redeem: grant names another user's connection", "grant", g.ID, "connection", foreign)
		}
		return g, conn, cred, f
	}
	ev.ConnectionID = conn.ID
	if conn.Status != broker.ConnectionActive {
		return g, conn, cred, needsRelink(conn)
	}
	if f := checkPolicy(res.Policy, tool, connector, c.Scopes); f != nil {
		return g, conn, cred, f
	}
	onward := s.o.OnwardExchange(connector)
	if onward {
		ev.Reason = reasonOnward
		cred, err = s.o.Links.Exchange(ctx, conn, "")
	} else {
		cred, err = s.o.Links.Credential(ctx, conn)
	}
	if err == nil {
		return g, conn, cred, nil
	}
	f := credentialFailure(err, conn)
	if onward {
		f.detail = reasonOnward
		if f.err.Status == http.StatusBadGateway {
			f.err = f.err.WithDescription("the upstream provider did not exchange the token; try again")
		}
	}
	return g, conn, cred, f
}

// reasonOnward marks the audit record of a credential obtained by onward
// token exchange at the upstream provider.
const reasonOnward = "onward exchange"

// credentialFailure maps an error of links.Credential or links.Exchange.
func credentialFailure(err error, conn broker.Connection) *failure {
	switch {
	case errors.Is(err, links.ErrNeedsRelink):
		return needsRelink(conn)
	case errors.Is(err, links.ErrUnknownConnector):
		return &failure{err: oauth.ErrServerError.WithDescription(
			fmt.Sprintf("connector %q is not configured on this Lanyard", conn.Connector)).WithCause(err)}
	case errors.Is(err, errors.ErrUnsupported):
		return &failure{err: oauth.ErrServerError.WithDescription(
			fmt.Sprintf("connector %q is configured to exchange tokens onward but cannot", conn.Connector)).WithCause(err)}
	case errors.Is(err, broker.ErrUnavailable):
		return &failure{err: oauth.ErrTemporarilyUnavailable.WithDescription(
			"the secret store is unavailable; try again").WithCause(err)}
	}
	return &failure{err: oauth.ErrTemporarilyUnavailable.WithStatus(http.StatusBadGateway).
		WithDescription("the upstream service could not be reached; try again").WithCause(err)}
}

func needsRelink(conn broker.Connection) *failure {
	acct := conn.Connector
	if conn.Account != "" {
		acct += " (" + conn.Account + ")"
	}
	return fail(ErrNeedsRelink, "the linked account %s no longer works; the user must re-link it on Lanyard's Linked accounts page", acct)
}

// checkPolicy applies a tool policy to one call: the rule named tool, if
// there is one, must find every one of its scopes among the token's scopes
// (else insufficient_scope naming the missing ones) and, if it lists
// connectors, the connector among them (else access_denied); a tool
// without a rule is allowed only when the policy is default-allow.
func checkPolicy(p broker.ToolPolicy, tool, connector string, scopes []string) *failure {
	for _, rule := range p.Tools {
		if rule.Name != tool {
			continue
		}
		var missing []string
		for _, sc := range rule.Scopes {
			if !slices.Contains(scopes, sc) {
				missing = append(missing, sc)
			}
		}
		if len(missing) > 0 {
			f := fail(oauth.ErrInsufficientScope, "tool %q needs scope %s, which the token lacks", tool, strings.Join(missing, " "))
			f.scope = strings.Join(missing, " ")
			return f
		}
		if len(rule.Connectors) > 0 && !slices.Contains(rule.Connectors, connector) {
			return fail(oauth.ErrAccessDenied, "tool %q may not use connector %q", tool, connector)
		}
		return nil
	}
	if p.DefaultAllow {
		return nil
	}
	return fail(oauth.ErrAccessDenied, "tool not allowed: this MCP server's policy has no rule for tool %q and denies by default", tool)
}

// granted appends the audit record of a success. Only if it is durable may
// the credential go out; otherwise the answer is 503 and nothing else.
// It also records the grant's use (best effort).
func (s *Service) granted(ctx context.Context, w http.ResponseWriter, r *http.Request, ev broker.AuditEvent, g broker.Grant) bool {
	ev.Outcome, ev.RequestID = broker.OutcomeOK, httpx.RequestID(ctx)
	if _, err := s.o.Store.Audit().Append(ctx, ev); err != nil {
		s.o.Logger.ErrorContext(ctx, "redeem: audit append failed; no credential issued", "action", ev.Action,
			"resource", ev.Resource, "grant", ev.GrantID, "err", err)
		oauth.WriteError(w, r, oauth.ErrTemporarilyUnavailable.WithDescription("the audit record could not be written, so no credential was issued; try again"))
		return false
	}
	s.o.Auth.RecordGrantUse(ctx, g, s.o.Now())
	// On the request's access log line (one line per redemption); the
	// audit record has the same facts.
	httpx.Annotate(ctx, "credential redeemed", slog.String("action", ev.Action), slog.String("resource", ev.Resource),
		slog.String("user", ev.UserID), slog.String("client_id", ev.ClientID), slog.String("tool", ev.Tool),
		slog.String("connection", ev.ConnectionID), slog.String("grant", ev.GrantID))
	return true
}

// deny audits and writes a refusal. If the audit record cannot be written
// the refusal still goes out (nothing is handed out either way). A caller
// that has not authenticated as an MCP server (ev.Resource empty) is
// refused and logged but not put in the audit chain: anyone can send such
// requests, and each would otherwise be a durable, fsynced record.
func (s *Service) deny(ctx context.Context, w http.ResponseWriter, r *http.Request, ev broker.AuditEvent, f *failure) {
	ev.Outcome, ev.RequestID = broker.OutcomeDenied, httpx.RequestID(ctx)
	if f.err.Status >= 500 {
		ev.Outcome = broker.OutcomeError
	}
	ev.Reason = f.err.Code
	if f.err.Description != "" {
		ev.Reason += ": " + f.err.Description
	}
	if f.detail != "" {
		ev.Reason += " (" + f.detail + ")"
	}
	if ev.Resource != "" {
		if _, err := s.o.Store.Audit().Append(ctx, ev); err != nil {
			s.o.Logger.ErrorContext(ctx, "redeem: audit append of a denial failed", "reason", ev.Reason, "err", err)
		}
	}
	lvl := slog.LevelInfo
	if f.err.Status >= 500 {
		lvl = slog.LevelError
	}
	s.o.Logger.Log(ctx, lvl, "redemption refused", "action", ev.Action, "resource", ev.Resource, "user", ev.UserID,
		"client_id", ev.ClientID, "tool", ev.Tool, "connector", ev.Connector, "reason", ev.Reason, "err", f.err)
	if f.scope == "" {
		oauth.WriteError(w, r, f.err)
		return
	}
	oauth.WriteJSON(w, f.err.Status, map[string]string{"error": f.err.Code, "error_description": f.err.Description, "scope": f.scope})
}

// claimed names who the caller said it was, for the audit record of a
// failed authentication (bounded; it is the caller's text).
func claimed(r *http.Request, p oauth.Params) string {
	id, _, ok := r.BasicAuth()
	if !ok {
		id = p.Get("client_id")
	}
	if id == "" {
		return ""
	}
	if len(id) > 200 {
		id = id[:200]
	}
	return fmt.Sprintf("caller claimed to be %q", id)
}

// parseRequest reads the JSON body: application/json, at most MaxBody
// bytes, one object with known members only.
func parseRequest(w http.ResponseWriter, r *http.Request) (Request, *failure) {
	var req Request
	mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || mt != "application/json" {
		return req, fail(oauth.ErrInvalidRequest.WithStatus(http.StatusUnsupportedMediaType), "content type must be application/json")
	}
	if r.URL.RawQuery != "" {
		return req, fail(oauth.ErrInvalidRequest, "parameters must be sent in the body, not the query string")
	}
	// With a Content-Length (the server holds the body to it), one buffer
	// of that size; otherwise read to the end, bounded by MaxBody.
	rd := http.MaxBytesReader(w, r.Body, MaxBody)
	var body []byte
	if n := r.ContentLength; n >= 0 && n <= MaxBody {
		body = make([]byte, n)
		_, err = io.ReadFull(rd, body)
	} else {
		body, err = io.ReadAll(rd)
	}
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return req, fail(oauth.ErrInvalidRequest.WithStatus(http.StatusRequestEntityTooLarge), "request body is larger than %d bytes", MaxBody)
		}
		return req, fail(oauth.ErrInvalidRequest, "request body could not be read")
	}
	// One JSON object, each member once, nothing after it.
	if err := codec.DecodeStrict(body, &req); err != nil {
		return req, fail(oauth.ErrInvalidRequest, "request body must be one JSON object with token, connector and tool, each once (and no other members)")
	}
	if !validName(req.Connector, true) || !validName(req.Tool, true) {
		return req, fail(oauth.ErrInvalidRequest, "connector and tool must be short printable names")
	}
	return req, nil
}

// validName: at most maxName bytes of printable UTF-8 (empty only if
// allowed).
func validName(s string, emptyOK bool) bool {
	if s == "" {
		return emptyOK
	}
	if len(s) > maxName || !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if r < 0x20 || r == 0x7f {
			return false
		}
	}
	return true
}
