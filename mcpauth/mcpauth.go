// Package mcpauth is what an MCP server imports to take part in Lanyard:
// the server-side half of MCP authorization, and the client of Lanyard's
// credential redemption.
//
//   - MetadataHandler serves the server's OAuth 2.0 Protected Resource
//     Metadata (RFC 9728) at MetadataPath, naming Lanyard as its
//     authorization server, so that MCP clients find where to sign in.
//   - Middleware checks the bearer token of every request against Lanyard's
//     published keys (the JWKS, cached; a token signed with an unknown kid
//     causes at most one refetch per Config.JWKSMinRefetch) and answers
//     401 and 403 with the RFC 6750 WWW-Authenticate challenges that MCP
//     clients act on (resource_metadata, error, scope). Handlers find the
//     verified token with TokenFromContext.
//   - Redeem exchanges the agent's token, for one tool call, for the
//     upstream credential (an OAuth access token, an API key, an IMAP
//     password, ...) of the connection the user put in the grant. Lanyard
//     decides and audits every redemption; the credential never reaches the
//     agent.
//
// The package depends on the standard library, golang.org/x/sync and
// Lanyard's broker/token (where JWT verification lives). The adapter for the
// official Go MCP SDK is in the subpackage gosdk, so that servers on plain
// net/http do not import the SDK.
//
// A Client is made once, with New, and is safe for concurrent use.
package mcpauth

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/singleflight"

	"github.com/lanyardhq/lanyard/broker/token"
)

// Defaults and limits.
const (
	// DefaultMaxCredentialTTL is Config.MaxCredentialTTL when it is zero.
	DefaultMaxCredentialTTL = 60 * time.Second
	// NoCredentialCache as Config.MaxCredentialTTL redeems at every call.
	NoCredentialCache time.Duration = -1
	// CredentialExpirySkew is how long before its own expiry a redeemed
	// credential stops being served from the cache.
	CredentialExpirySkew = 30 * time.Second
	// MaxResponseSize is the largest response body read from Lanyard.
	MaxResponseSize = 1 << 20
	// WellKnownPath is the prefix of the protected resource metadata path
	// (RFC 9728 §3).
	WellKnownPath = "/.well-known/oauth-protected-resource"
	// RedeemPath is the redemption endpoint, relative to the issuer.
	RedeemPath = "/v1/redeem"

	defaultHTTPTimeout = 15 * time.Second
)

// Errors. Errors of Verify wrap ErrInvalidToken (the token is no good: the
// client should get a new one) or ErrUnavailable (Lanyard's keys could not
// be fetched: try again later).
var (
	ErrInvalidToken = errors.New("mcpauth: invalid access token")
	ErrUnavailable  = errors.New("mcpauth: Lanyard is unavailable")
)

// Config configures a Client. It is plain data; New checks it all at once.
type Config struct {
	// Issuer is Lanyard's issuer URL. New reads its metadata from
	// {Issuer}/.well-known/oauth-authorization-server (RFC 8414; for an
	// issuer with a path, the well-known segment goes before the path) and
	// requires the issuer there to be exactly this one. Required.
	Issuer string
	// Resource is this MCP server's canonical URI, e.g.
	// https://mail.example.com/mcp: the audience of the tokens it accepts
	// and the resource Lanyard knows it by. Required; no query or fragment.
	Resource string
	// ResourceName is the human-readable name in the metadata (optional).
	ResourceName string
	// Scopes are the scopes_supported of the metadata (optional).
	Scopes []string
	// ClientID and ClientSecret are this MCP server's credentials at
	// Lanyard, sent with HTTP Basic authentication to the redemption
	// endpoint. Only Redeem needs them.
	ClientID     string
	ClientSecret string
	// HTTPClient talks to Lanyard; nil means a client with a 15 second
	// timeout.
	HTTPClient *http.Client
	// MaxCredentialTTL bounds how long a redeemed credential is served from
	// the cache; it is also how long a revoked grant may go unnoticed by
	// Redeem. A credential is never cached beyond its own expiry (less
	// CredentialExpirySkew) either. Zero means DefaultMaxCredentialTTL;
	// NoCredentialCache (any negative value) turns the cache off, so every
	// tool call is decided and audited by Lanyard and a revocation is seen
	// at once.
	MaxCredentialTTL time.Duration
	// JWKSMinRefetch is the least time between two fetches of Lanyard's
	// JWKS caused by tokens with unknown key ids. Default
	// token.DefaultMinRefetch.
	JWKSMinRefetch time.Duration
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

func (cfg Config) withDefaults() Config {
	if cfg.HTTPClient == nil {
		cfg.HTTPClient = &http.Client{Timeout: defaultHTTPTimeout}
	}
	if cfg.MaxCredentialTTL == 0 {
		cfg.MaxCredentialTTL = DefaultMaxCredentialTTL
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	cfg.Scopes = slices.Clone(cfg.Scopes)
	return cfg
}

// validate lists every problem at once.
func (cfg Config) validate() error {
	var errs []error
	if err := checkURL("issuer", cfg.Issuer); err != nil {
		errs = append(errs, err)
	}
	if err := checkURL("resource", cfg.Resource); err != nil {
		errs = append(errs, err)
	}
	if cfg.JWKSMinRefetch < 0 {
		errs = append(errs, errors.New("JWKS min refetch is negative"))
	}
	if (cfg.ClientID == "") != (cfg.ClientSecret == "") {
		errs = append(errs, errors.New("client id and client secret go together"))
	}
	for _, s := range cfg.Scopes {
		if !validToken(s) {
			errs = append(errs, fmt.Errorf("scope %q is not a scope-token (RFC 6749 §3.3)", s))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("mcpauth: config: %w", err)
	}
	return nil
}

// checkURL accepts an absolute https URL, or http on a loopback host (for
// development), without query or fragment.
func checkURL(name, s string) error {
	if s == "" {
		return fmt.Errorf("%s is required", name)
	}
	u, err := url.Parse(s)
	if err != nil || u.Host == "" || u.User != nil {
		return fmt.Errorf("%s %q is not an absolute URL", name, s)
	}
	if u.RawQuery != "" || u.Fragment != "" || strings.Contains(s, "#") {
		return fmt.Errorf("%s %q has a query or fragment", name, s)
	}
	switch u.Scheme {
	case "https":
	case "http":
		if !isLoopback(u.Hostname()) {
			return fmt.Errorf("%s %q: http only on a loopback host", name, s)
		}
	default:
		return fmt.Errorf("%s %q is not https", name, s)
	}
	return nil
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// validToken reports whether s is a scope-token: 1*( %x21 / %x23-5B / %x5D-7E ).
func validToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x21 || c > 0x7e || c == '"' || c == '\\' {
			return false
		}
	}
	return true
}

// Client verifies Lanyard's tokens and redeems them. Make one with New; it
// is safe for concurrent use.
type Client struct {
	cfg         Config
	verifier    *token.RemoteVerifier
	metaPath    string
	metaURL     string
	metaJSON    []byte
	redeemURL   string
	credentials credCache
	flight      singleflight.Group

	mu   sync.Mutex
	dead map[string]deadGrant // grants Lanyard reported revoked, by id
}

// New checks cfg, fetches Lanyard's authorization server metadata (its
// issuer must be cfg.Issuer) and Lanyard's JWKS, and returns a Client.
func New(ctx context.Context, cfg Config) (*Client, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	c := &Client{cfg: cfg, redeemURL: strings.TrimSuffix(cfg.Issuer, "/") + RedeemPath, dead: map[string]deadGrant{}}
	c.credentials.init(c.cfg.MaxCredentialTTL)
	u, _ := url.Parse(cfg.Resource)
	c.metaPath = WellKnownPath + strings.TrimSuffix(u.EscapedPath(), "/")
	c.metaURL = u.Scheme + "://" + u.Host + c.metaPath
	md := map[string]any{
		"resource":                 cfg.Resource,
		"authorization_servers":    []string{cfg.Issuer},
		"bearer_methods_supported": []string{"header"},
	}
	if len(cfg.Scopes) > 0 {
		md["scopes_supported"] = cfg.Scopes
	}
	if cfg.ResourceName != "" {
		md["resource_name"] = cfg.ResourceName
	}
	c.metaJSON, _ = json.Marshal(md)

	jwksURI, err := c.discover(ctx)
	if err != nil {
		return nil, err
	}
	c.verifier, err = token.NewRemoteVerifier(token.RemoteOptions{
		Issuer: cfg.Issuer, JWKSURL: jwksURI, HTTP: cfg.HTTPClient, MinRefetch: cfg.JWKSMinRefetch, Now: cfg.Now,
	})
	if err != nil {
		return nil, fmt.Errorf("mcpauth: %w", err)
	}
	if err := c.verifier.Refresh(ctx); err != nil {
		return nil, fmt.Errorf("mcpauth: %w: %w", ErrUnavailable, err)
	}
	return c, nil
}

// discover reads the RFC 8414 metadata and returns the jwks_uri.
func (c *Client) discover(ctx context.Context) (string, error) {
	u, _ := url.Parse(c.cfg.Issuer)
	var candidates []string
	if p := strings.TrimSuffix(u.EscapedPath(), "/"); p != "" {
		// RFC 8414 §3.1 inserts the well-known segment before the path;
		// some servers serve it after the issuer instead.
		candidates = append(candidates, u.Scheme+"://"+u.Host+"/.well-known/oauth-authorization-server"+p)
	}
	candidates = append(candidates, strings.TrimSuffix(c.cfg.Issuer, "/")+"/.well-known/oauth-authorization-server")
	var errs []error
	for _, mdURL := range candidates {
		var md struct {
			Issuer  string `json:"issuer"`
			JWKSURI string `json:"jwks_uri"`
		}
		status, err := c.getJSON(ctx, mdURL, &md)
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("%s: %w", mdURL, err))
			continue
		case status == http.StatusNotFound:
			errs = append(errs, fmt.Errorf("%s: not found", mdURL))
			continue
		case status != http.StatusOK:
			return "", fmt.Errorf("mcpauth: authorization server metadata %s: status %d: %w", mdURL, status, ErrUnavailable)
		case md.Issuer != c.cfg.Issuer:
			return "", fmt.Errorf("mcpauth: authorization server metadata %s names issuer %q, want %q", mdURL, md.Issuer, c.cfg.Issuer)
		}
		if j, err := url.Parse(md.JWKSURI); err != nil || j.Host == "" || (j.Scheme != "https" && j.Scheme != "http") {
			return "", fmt.Errorf("mcpauth: authorization server metadata %s: jwks_uri %q is not an absolute URL", mdURL, md.JWKSURI)
		}
		return md.JWKSURI, nil
	}
	return "", fmt.Errorf("mcpauth: authorization server metadata: %w: %w", ErrUnavailable, errors.Join(errs...))
}

func (c *Client) getJSON(ctx context.Context, u string, v any) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return 0, err
	}
	req.Header.Set("Accept", "application/json")
	resp, err := c.cfg.HTTPClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, MaxResponseSize))
	if err != nil || resp.StatusCode != http.StatusOK {
		return resp.StatusCode, err
	}
	if err := json.Unmarshal(body, v); err != nil {
		return resp.StatusCode, errors.New("not a JSON object")
	}
	return resp.StatusCode, nil
}

// String describes the client without secrets.
func (c *Client) String() string {
	return fmt.Sprintf("mcpauth.Client{issuer: %q, resource: %q, client_id: %q}", c.cfg.Issuer, c.cfg.Resource, c.cfg.ClientID)
}

// Issuer returns Config.Issuer.
func (c *Client) Issuer() string { return c.cfg.Issuer }

// Resource returns Config.Resource.
func (c *Client) Resource() string { return c.cfg.Resource }

// MetadataPath is the path at which to serve MetadataHandler:
// "/.well-known/oauth-protected-resource" followed by the path of
// Config.Resource without a trailing slash (RFC 9728 §3.1), e.g.
// "/.well-known/oauth-protected-resource/mcp".
func (c *Client) MetadataPath() string { return c.metaPath }

// MetadataURL is the absolute URL of the metadata: the origin of
// Config.Resource followed by MetadataPath. It is the resource_metadata
// of the WWW-Authenticate challenges.
func (c *Client) MetadataURL() string { return c.metaURL }

// MetadataHandler serves the protected resource metadata (RFC 9728 §2):
// resource, authorization_servers (Lanyard's issuer), scopes_supported,
// bearer_methods_supported ["header"] and resource_name. It answers GET,
// HEAD and CORS preflight requests from any origin: the document is public.
func (c *Client) MetadataHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Access-Control-Allow-Origin", "*")
		switch r.Method {
		case http.MethodGet, http.MethodHead:
		case http.MethodOptions:
			h.Set("Access-Control-Allow-Methods", "GET, HEAD, OPTIONS")
			h.Set("Access-Control-Allow-Headers", "Content-Type, MCP-Protocol-Version")
			w.WriteHeader(http.StatusNoContent)
			return
		default:
			h.Set("Allow", "GET, HEAD, OPTIONS")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		h.Set("Content-Type", "application/json")
		h.Set("Cache-Control", "public, max-age=300")
		if r.Method == http.MethodGet {
			_, _ = w.Write(c.metaJSON)
		}
	})
}

// Token is a verified Lanyard access token (RFC 9068 claims). Its String,
// GoString, LogValue and MarshalJSON leave Raw out.
type Token struct {
	// Raw is the token as the client sent it: what Redeem sends to Lanyard.
	// Never log it and never send it upstream.
	Raw string
	// Subject is the Lanyard user ("sub").
	Subject string
	// ClientID is the agent (the OAuth client) the token was issued to.
	ClientID string
	// GrantID is the user's grant to that agent, which Lanyard can revoke.
	GrantID string
	// Scopes are the granted scopes.
	Scopes []string
	// Expiry is "exp".
	Expiry time.Time
	// ID is "jti" and IssuedAt is "iat".
	ID       string
	IssuedAt time.Time

	// verified is what Verify checked, set only by Verify: Redeem refuses a
	// Token without it (one a program built itself, say from unverified
	// input) and uses these values, not the exported fields, which anyone
	// may change.
	verified *verifiedToken
}

// verifiedToken is the part of a Token that Verify vouches for.
type verifiedToken struct {
	client   *Client
	raw      string
	grant    string
	scopes   string // scopeKey of the scopes
	expiry   time.Time
	issuedAt time.Time
	id       string
}

// HasScopes reports whether t carries every one of scopes.
func (t *Token) HasScopes(scopes ...string) bool {
	for _, s := range scopes {
		if !slices.Contains(t.Scopes, s) {
			return false
		}
	}
	return true
}

// String describes t without the raw token.
func (t Token) String() string {
	return fmt.Sprintf("mcpauth.Token{sub: %q, client_id: %q, grant: %q, scopes: %q, exp: %s}",
		t.Subject, t.ClientID, t.GrantID, t.Scopes, t.Expiry.UTC().Format(time.RFC3339))
}

// GoString is String.
func (t Token) GoString() string { return t.String() }

// LogValue implements slog.LogValuer without the raw token.
func (t Token) LogValue() slog.Value {
	return slog.GroupValue(slog.String("sub", t.Subject), slog.String("client_id", t.ClientID),
		slog.String("grant_id", t.GrantID), slog.Any("scopes", t.Scopes), slog.Time("exp", t.Expiry))
}

// MarshalJSON encodes t without the raw token.
func (t Token) MarshalJSON() ([]byte, error) {
	return json.Marshal(struct {
		Subject  string    `json:"sub"`
		ClientID string    `json:"client_id"`
		GrantID  string    `json:"grant_id"`
		Scopes   []string  `json:"scopes,omitempty"`
		Expiry   time.Time `json:"exp"`
	}{t.Subject, t.ClientID, t.GrantID, t.Scopes, t.Expiry})
}

type tokenKey struct{}

// TokenFromContext returns the token that Middleware verified.
func TokenFromContext(ctx context.Context) (*Token, bool) {
	t, ok := ctx.Value(tokenKey{}).(*Token)
	return t, ok && t != nil
}

// ContextWithToken returns ctx carrying t, as Middleware does (for
// adapters and tests). Only a Token that Verify returned can be redeemed:
// Redeem refuses one built by hand.
func ContextWithToken(ctx context.Context, t *Token) context.Context {
	return context.WithValue(ctx, tokenKey{}, t)
}

// Verify checks raw as a token for this MCP server: signed by Lanyard
// (typ at+jwt, a published key and its algorithm), issued by
// Config.Issuer, unexpired, and with Config.Resource as its audience. A
// token of a grant that a redemption found revoked is refused as well.
// Errors wrap ErrInvalidToken or ErrUnavailable and never contain the
// token.
func (c *Client) Verify(ctx context.Context, raw string) (*Token, error) {
	claims, err := c.verifier.Verify(ctx, raw)
	switch {
	case errors.Is(err, token.ErrInvalidToken):
		return nil, fmt.Errorf("%w: %s", ErrInvalidToken, strings.TrimPrefix(err.Error(), token.ErrInvalidToken.Error()+": "))
	case err != nil:
		return nil, fmt.Errorf("%w: cannot fetch its keys", ErrUnavailable)
	case claims.Audience != c.cfg.Resource:
		return nil, fmt.Errorf("%w: issued for another resource", ErrInvalidToken)
	}
	t := &Token{
		Raw: raw, Subject: claims.Subject, ClientID: claims.ClientID, GrantID: claims.GrantID,
		Scopes: claims.Scopes, Expiry: claims.ExpiresAt, ID: claims.JTI, IssuedAt: claims.IssuedAt,
	}
	t.verified = &verifiedToken{client: c, raw: raw, grant: claims.GrantID, scopes: scopeKey(claims.Scopes),
		expiry: claims.ExpiresAt, issuedAt: claims.IssuedAt, id: claims.JTI}
	if c.revoked(t.GrantID, t.IssuedAt) {
		return nil, fmt.Errorf("%w: grant revoked", ErrInvalidToken)
	}
	return t, nil
}

// deadGrant records that Lanyard refused a token of a grant as invalid:
// tokens of that grant issued up to seen are refused until until (when
// every such token has expired).
type deadGrant struct{ seen, until time.Time }

func (c *Client) markRevoked(grant string, expiry time.Time) {
	now := c.cfg.Now()
	if !now.Before(expiry) {
		return // refused because it expired, not because the grant was revoked
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for id, d := range c.dead {
		if now.After(d.until) {
			delete(c.dead, id)
		}
	}
	d := c.dead[grant]
	d.seen = now
	// Tokens live at most token.DefaultMaxTokenTTL; those issued before now
	// are dead by then (plus skew).
	d.until = now.Add(token.DefaultMaxTokenTTL + token.ClockSkew)
	c.dead[grant] = d
}

func (c *Client) revoked(grant string, issuedAt time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	d, ok := c.dead[grant]
	return ok && !issuedAt.After(d.seen)
}
