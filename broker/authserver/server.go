// Package authserver is Lanyard's OAuth 2.1 authorization server for MCP
// clients: RFC 8414 metadata, the authorization endpoint (code + PKCE S256,
// RFC 8707 resource indicators, RFC 9207 iss), the token endpoint (code,
// refresh with rotation and reuse detection, device code), RFC 7009
// revocation, RFC 7662 introspection for MCP servers, and RFC 8628 device
// authorization.
//
// The pages a person sees (login, consent, device code entry) live in the
// web package, which calls this package's Pending, Decide and device
// methods; this package never writes HTML itself (Options.ShowError does).
// It is wired in cmd/lanyard and mounted on the router through Mounter, so
// it does not depend on a router library.
package authserver

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"sort"
	"time"

	"github.com/lanyardhq/lanyard/broker"
	"github.com/lanyardhq/lanyard/broker/oauth"
	"github.com/lanyardhq/lanyard/broker/token"
	"github.com/lanyardhq/lanyard/internal/safehttp"
)

// Endpoint paths, relative to the issuer.
const (
	PathAuthorize  = "/authorize"
	PathToken      = "/token"
	PathJWKS       = "/jwks.json"
	PathRevoke     = "/revoke"
	PathIntrospect = "/introspect"
	PathRegister   = "/register"
	PathDeviceAuth = "/device_authorization"
	PathDevice     = "/device"  // user code entry page (web)
	PathConsent    = "/consent" // consent page (web)
	// PathRedeem is where MCP servers redeem agent tokens (broker/redeem);
	// a client assertion may name it as its audience.
	PathRedeem = "/v1/redeem"
)

// Grant type URNs.
const (
	GrantAuthorizationCode = "authorization_code"
	GrantRefreshToken      = "refresh_token"
	GrantDeviceCode        = "urn:ietf:params:oauth:grant-type:device_code"
	GrantTokenExchange     = "urn:ietf:params:oauth:grant-type:token-exchange" // RFC 8693, for MCP servers
	ScopeOfflineAccess     = "offline_access"
)

// Lifetimes fixed by the security requirements.
const (
	CodeTTL        = 60 * time.Second
	AuthRequestTTL = 10 * time.Minute
)

// ClientResolver finds an OAuth client by its client_id: pre-registered and
// dynamically registered clients from the store, and Client ID Metadata
// Documents fetched from their URL (broker/clientreg). Errors match
// oauth.ErrInvalidClient.
type ClientResolver interface {
	Resolve(ctx context.Context, clientID string) (broker.Client, error)
}

// Mounter is where routes go (internal/server implements it).
type Mounter interface {
	Handle(path string, h http.Handler, methods ...string)
}

// Options configures a Server.
type Options struct {
	Issuer          string
	Store           broker.Store
	Keys            *token.Keyring
	Clients         ClientResolver // nil: store lookup only
	AccessTokenTTL  time.Duration
	RefreshTokenTTL time.Duration
	DeviceCodeTTL   time.Duration
	DeviceInterval  time.Duration
	DefaultResource string
	Registration    http.Handler // POST /register; nil disables registration
	CIMD            bool         // advertise client_id_metadata_document_supported
	Dev             bool         // allow http loopback resources
	Now             func() time.Time
	Logger          *slog.Logger
	// ShowError renders an error page for the user when an authorization
	// request cannot be answered at the client's redirect URI.
	ShowError func(w http.ResponseWriter, r *http.Request, status int, title, detail string)
	// TokenExchange, if set, answers RFC 8693 token exchange requests at
	// the token endpoint (broker/redeem). It is called before any client
	// authentication: the caller is an MCP server, which it authenticates
	// with AuthenticateResource.
	TokenExchange func(w http.ResponseWriter, r *http.Request, p oauth.Params)
	// JWKSClient fetches the JWKS URLs of MCP servers that use
	// private_key_jwt; nil means a safehttp client (SSRF-guarded;
	// loopback allowed only with Dev).
	JWKSClient *http.Client
	// VerifiedTokens bounds how many verified access tokens
	// VerifyAccessToken remembers (see verifiedCache); 0 means
	// DefaultVerifiedTokens, negative turns the cache off.
	VerifiedTokens int
}

// Server is the authorization server.
type Server struct {
	o         Options
	jwksCache *jwksCache
	verified  *verifiedCache
}

// New returns a Server.
func New(o Options) (*Server, error) {
	if o.Store == nil || o.Keys == nil || o.Issuer == "" || o.ShowError == nil {
		return nil, errors.New("authserver: Issuer, Store, Keys and ShowError are required")
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Clients == nil {
		o.Clients = storeResolver{o.Store.Clients()}
	}
	if o.JWKSClient == nil {
		o.JWKSClient = safehttp.NewClient(safehttp.Options{AllowLoopback: o.Dev})
	}
	return &Server{o: o, jwksCache: newJWKSCache(o.JWKSClient), verified: newVerifiedCache(o.VerifiedTokens)}, nil
}

// Mount adds the server's endpoints.
func (s *Server) Mount(m Mounter) {
	m.Handle("/.well-known/oauth-authorization-server", http.HandlerFunc(s.metadata), http.MethodGet)
	m.Handle("/.well-known/openid-configuration", http.HandlerFunc(s.metadata), http.MethodGet)
	m.Handle(PathJWKS, http.HandlerFunc(s.jwks), http.MethodGet)
	m.Handle(PathAuthorize, http.HandlerFunc(s.authorize), http.MethodGet)
	m.Handle(PathToken, http.HandlerFunc(s.token), http.MethodPost)
	m.Handle(PathRevoke, http.HandlerFunc(s.revoke), http.MethodPost)
	m.Handle(PathIntrospect, http.HandlerFunc(s.introspect), http.MethodPost)
	m.Handle(PathDeviceAuth, http.HandlerFunc(s.deviceAuthorization), http.MethodPost)
	if s.o.Registration != nil {
		m.Handle(PathRegister, s.o.Registration, http.MethodPost)
	}
}

func (s *Server) url(path string) string { return s.o.Issuer + path }

// Metadata returns the RFC 8414 document.
func (s *Server) Metadata(ctx context.Context) map[string]any {
	scopes := []string{ScopeOfflineAccess}
	if page, err := s.o.Store.Resources().List(ctx, broker.Query{Limit: broker.MaxLimit}); err == nil {
		for _, r := range page.Items {
			for _, sc := range r.Scopes {
				if !slices.Contains(scopes, sc) {
					scopes = append(scopes, sc)
				}
			}
		}
	}
	sort.Strings(scopes)
	authMethods := []string{"none", "client_secret_basic", "client_secret_post"}
	grants := []string{GrantAuthorizationCode, GrantRefreshToken, GrantDeviceCode}
	if s.o.TokenExchange != nil {
		// Only MCP servers may use it (authenticated with a secret or
		// private_key_jwt); the auth methods listed are those of OAuth clients.
		grants = append(grants, GrantTokenExchange)
	}
	md := map[string]any{
		"issuer":                                         s.o.Issuer,
		"authorization_endpoint":                         s.url(PathAuthorize),
		"token_endpoint":                                 s.url(PathToken),
		"jwks_uri":                                       s.url(PathJWKS),
		"revocation_endpoint":                            s.url(PathRevoke),
		"introspection_endpoint":                         s.url(PathIntrospect),
		"device_authorization_endpoint":                  s.url(PathDeviceAuth),
		"response_types_supported":                       []string{"code"},
		"response_modes_supported":                       []string{"query"},
		"grant_types_supported":                          grants,
		"token_endpoint_auth_methods_supported":          authMethods,
		"revocation_endpoint_auth_methods_supported":     authMethods,
		"introspection_endpoint_auth_methods_supported":  []string{"client_secret_basic", "client_secret_post", "private_key_jwt"},
		"code_challenge_methods_supported":               []string{"S256"},
		"authorization_response_iss_parameter_supported": true,
		"client_id_metadata_document_supported":          s.o.CIMD,
		"scopes_supported":                               scopes,
		"subject_types_supported":                        []string{"public"},
	}
	if s.o.Registration != nil {
		md["registration_endpoint"] = s.url(PathRegister)
	}
	return md
}

func (s *Server) metadata(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "public, max-age=300")
	_ = json.NewEncoder(w).Encode(s.Metadata(r.Context()))
}

func (s *Server) jwks(w http.ResponseWriter, r *http.Request) {
	b, err := s.o.Keys.PublicJWKS()
	if err != nil {
		oauth.WriteError(w, r, oauth.ErrServerError.WithCause(err))
		return
	}
	w.Header().Set("Content-Type", "application/jwk-set+json")
	w.Header().Set("Cache-Control", "public, max-age=300")
	_, _ = w.Write(b)
}

// storeResolver resolves clients from the store only.
type storeResolver struct{ clients broker.Table[broker.Client] }

func (r storeResolver) Resolve(ctx context.Context, id string) (broker.Client, error) {
	c, err := r.clients.Get(ctx, id)
	if errors.Is(err, broker.ErrNotFound) {
		return c, oauth.ErrInvalidClient.WithDescription("unknown client")
	}
	return c, err
}

// errorRedirect builds the redirect that reports err to the client
// (RFC 6749 §4.1.2.1), with state and the RFC 9207 iss parameter.
func (s *Server) errorRedirect(redirectURI, state string, e *oauth.Error) string {
	q := url.Values{"error": {e.Code}, "iss": {s.o.Issuer}}
	if e.Description != "" {
		q.Set("error_description", e.Description)
	}
	if state != "" {
		q.Set("state", state)
	}
	return withQuery(redirectURI, q)
}

func withQuery(base string, q url.Values) string {
	u, err := url.Parse(base)
	if err != nil {
		return base
	}
	existing := u.Query()
	for k, v := range q {
		existing[k] = v
	}
	u.RawQuery = existing.Encode()
	return u.String()
}

func (s *Server) now() time.Time { return s.o.Now() }
