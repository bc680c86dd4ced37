// Package oauthconn is the "oauth2" connector kind: it links an account at
// an OAuth 2.0 / OpenID Connect provider with the authorization code flow
// (PKCE S256, exact redirect URI, RFC 9207 iss check), refreshes and revokes
// the tokens it got, and hands out the access token at redemption. It is the
// one home of golang.org/x/oauth2 in Lanyard's connectors.
//
// Endpoints come from a preset (github, google, microsoft, slack,
// salesforce, workday), from OIDC discovery (preset "oidc"), or from the
// config (auth_url, token_url, ...); see New. The connector never stores
// anything and never decides who may use a token: the link service keeps
// the secret (check-and-set), makes refreshes single-flight per connection,
// and binds the state to the user's session.
package oauthconn

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"time"
	"unicode"

	"golang.org/x/oauth2"
	"golang.org/x/oauth2/endpoints"

	"github.com/lanyardhq/lanyard/broker"
	"github.com/lanyardhq/lanyard/connectors"
	"github.com/lanyardhq/lanyard/internal/config"
	"github.com/lanyardhq/lanyard/internal/safehttp"
)

// Compile-time checks of the capabilities this kind has.
var (
	_ connectors.Connector      = (*Connector)(nil)
	_ connectors.RedirectLinker = (*Connector)(nil)
	_ connectors.Verifier       = (*Connector)(nil)
	_ connectors.Refresher      = (*Connector)(nil)
	_ connectors.Revoker        = (*Connector)(nil)
	_ connectors.Materializer   = (*Connector)(nil)
	_ connectors.Exchanger      = (*Connector)(nil)
)

// Errors of this kind besides the connectors ones.
var (
	// ErrIssuerMismatch: the authorization response's iss is not the
	// provider's issuer, or it is missing although the provider promises it
	// (RFC 9207). The response may come from another provider (a mix-up
	// attack) and is refused. It matches broker.ErrInvalid too.
	ErrIssuerMismatch = fmt.Errorf("%w: the authorization response is not from this provider (iss, RFC 9207)", broker.ErrInvalid)
	// ErrAccessTokenExpired: the stored access token has expired; refresh it
	// (Refresher) and try again. Verify and Materialize never refresh on
	// their own, because a refresh rotates the refresh token and that write
	// belongs to the link service.
	ErrAccessTokenExpired = errors.New("oauthconn: the access token has expired; refresh it first")
	// ErrDiscovery: the OIDC discovery document could not be fetched or is
	// not acceptable (issuer mismatch, http, missing endpoints).
	ErrDiscovery = errors.New("oauthconn: OIDC discovery failed")
)

// MaxBody caps every response body read from the provider (token,
// userinfo, revocation): a hostile or broken provider cannot make Lanyard
// buffer more.
const MaxBody = 1 << 20

// maxDiscovery caps the discovery document.
const maxDiscovery = 256 << 10

// DefaultTimeout bounds one call to the provider when Options.HTTP is nil.
const DefaultTimeout = 15 * time.Second

// Options configures New. The zero value is the production setting.
type Options struct {
	// HTTP is the client for calls to the provider's token, userinfo and
	// revocation endpoints (configured by the operator, so not
	// SSRF-guarded). Nil: a client with DefaultTimeout. Its transport is
	// wrapped to cap response bodies at MaxBody. Discovery never uses it:
	// it always goes through internal/safehttp.
	HTTP *http.Client
	// Dev allows http issuers and endpoints on loopback hosts (tests,
	// `lanyard dev`). Everything else must be https.
	Dev bool
	// Now is the clock for token expiry; nil is time.Now.
	Now func() time.Time
}

func (o Options) withDefaults() Options {
	if o.Now == nil {
		o.Now = time.Now
	}
	var c http.Client
	if o.HTTP != nil {
		c = *o.HTTP
	} else {
		c.Timeout = DefaultTimeout
	}
	base := c.Transport
	if base == nil {
		base = http.DefaultTransport
	}
	c.Transport = capTransport{base: base, max: MaxBody}
	o.HTTP = &c
	return o
}

// Connector is one configured OAuth provider. It is safe for concurrent use.
type Connector struct {
	connectors.Named
	preset string
	conf   *oauth2.Config // shared, never copied (its auth style cache)
	// issuer is the provider's issuer identifier when known ("" otherwise:
	// iss in a response cannot be checked and is ignored).
	issuer string
	// issRequired: the provider advertises
	// authorization_response_iss_parameter_supported, so a response
	// without iss is refused.
	issRequired   bool
	revocationURL string
	userinfoURL   string
	// exchangeAudience is the audience of an onward token exchange when
	// the caller names none (config exchange_audience).
	exchangeAudience string
	authParams       []oauth2.AuthCodeOption
	http             *http.Client
	now              func() time.Time
}

// New builds the connector from its config. With preset "oidc" it fetches
// the discovery document from cfg.Issuer (so ctx bounds that fetch). The
// presets and their endpoints:
//
//   - github: github.com/login/oauth/{authorize,access_token} (x/oauth2
//     endpoints.GitHub); account from https://api.github.com/user. GitHub
//     has no RFC 7009 endpoint (its grant deletion API differs), so no
//     upstream revocation unless revocation_url is set.
//   - google: endpoints.Google, issuer https://accounts.google.com,
//     userinfo https://openidconnect.googleapis.com/v1/userinfo, revocation
//     https://oauth2.googleapis.com/revoke; asks for offline access.
//   - microsoft: Entra ID v2 for the tenant (endpoints.AzureAD: common when
//     empty); userinfo https://graph.microsoft.com/oidc/userinfo; issuer
//     https://login.microsoftonline.com/TENANT/v2.0 only for a tenant id
//     (the multi-tenant aliases have no single issuer). No RFC 7009.
//   - slack: endpoints.Slack (OAuth v2); userinfo
//     https://slack.com/api/openid.connect.userInfo (with openid scopes).
//   - salesforce: https://DOMAIN/services/oauth2/{authorize,token,revoke,userinfo}.
//   - workday: https://DOMAIN/ccx/oauth2/TENANT/{authorize,token}.
//   - oidc: discovery from Issuer (see discover).
//   - "": auth_url and token_url from the config.
//
// issuer, revocation_url and userinfo_url in the config override a
// preset's. Every URL must be https (http only to loopback with Dev).
func New(ctx context.Context, name, displayName string, cfg config.OAuth2Connector, opts Options) (*Connector, error) {
	opts = opts.withDefaults()
	named, err := connectors.NewNamed(connectors.KindOAuth2, name, displayName)
	if err != nil {
		return nil, err
	}
	if cfg.ClientID == "" {
		return nil, fmt.Errorf("%w: oauth2 connector %s: client_id is required", broker.ErrInvalid, name)
	}
	c := &Connector{
		Named: named, preset: cfg.Preset,
		http: opts.HTTP, now: opts.Now,
	}
	ep := oauth2.Endpoint{AuthURL: cfg.AuthURL, TokenURL: cfg.TokenURL}
	scopes := slices.Clone(cfg.Scopes)
	switch cfg.Preset {
	case "github":
		ep = endpoints.GitHub
		c.userinfoURL = "https://api.github.com/user"
	case "google":
		ep = endpoints.Google
		c.issuer = "https://accounts.google.com"
		c.userinfoURL = "https://openidconnect.googleapis.com/v1/userinfo"
		c.revocationURL = "https://oauth2.googleapis.com/revoke"
		// Without these Google returns no refresh token after the first link.
		c.authParams = append(c.authParams, oauth2.AccessTypeOffline, oauth2.ApprovalForce)
	case "microsoft":
		if cfg.Tenant != "" && !hostLabelRE.MatchString(cfg.Tenant) {
			return nil, fmt.Errorf("%w: oauth2 connector %s: tenant %q is not a tenant id or name", broker.ErrInvalid, name, cfg.Tenant)
		}
		ep = endpoints.AzureAD(cfg.Tenant)
		c.userinfoURL = "https://graph.microsoft.com/oidc/userinfo"
		if uuidRE.MatchString(cfg.Tenant) {
			c.issuer = "https://login.microsoftonline.com/" + cfg.Tenant + "/v2.0"
		}
	case "slack":
		ep = endpoints.Slack
		c.userinfoURL = "https://slack.com/api/openid.connect.userInfo"
	case "salesforce":
		base, err := domainBase(name, cfg.Domain)
		if err != nil {
			return nil, err
		}
		ep = oauth2.Endpoint{AuthURL: base + "/services/oauth2/authorize", TokenURL: base + "/services/oauth2/token"}
		c.revocationURL = base + "/services/oauth2/revoke"
		c.userinfoURL = base + "/services/oauth2/userinfo"
	case "workday":
		base, err := domainBase(name, cfg.Domain)
		if err != nil {
			return nil, err
		}
		if !hostLabelRE.MatchString(cfg.Tenant) {
			return nil, fmt.Errorf("%w: oauth2 connector %s: workday needs tenant", broker.ErrInvalid, name)
		}
		ep = oauth2.Endpoint{
			AuthURL:  base + "/ccx/oauth2/" + cfg.Tenant + "/authorize",
			TokenURL: base + "/ccx/oauth2/" + cfg.Tenant + "/token",
		}
	case "oidc":
		d, err := discover(ctx, cfg.Issuer, opts.Dev)
		if err != nil {
			return nil, fmt.Errorf("oauth2 connector %s: %w", name, err)
		}
		ep = oauth2.Endpoint{AuthURL: d.AuthorizationEndpoint, TokenURL: d.TokenEndpoint}
		switch {
		case cfg.ClientSecret.Reveal() == "":
			ep.AuthStyle = oauth2.AuthStyleInParams // a public client sends client_id in the body
		case len(d.TokenEndpointAuthMethods) == 0 || slices.Contains(d.TokenEndpointAuthMethods, "client_secret_basic"):
			ep.AuthStyle = oauth2.AuthStyleInHeader // the default of OIDC Discovery
		case slices.Contains(d.TokenEndpointAuthMethods, "client_secret_post"):
			ep.AuthStyle = oauth2.AuthStyleInParams
		}
		c.issuer = d.Issuer
		c.issRequired = d.ISSParameterSupported
		c.revocationURL = d.RevocationEndpoint
		c.userinfoURL = d.UserinfoEndpoint
		if cfg.TokenExchange && len(d.GrantTypes) > 0 && !slices.Contains(d.GrantTypes, GrantTokenExchange) {
			return nil, fmt.Errorf("%w: oauth2 connector %s: token_exchange is set but the provider does not list %s in grant_types_supported",
				broker.ErrInvalid, name, GrantTokenExchange)
		}
		if len(scopes) == 0 {
			scopes = []string{"openid"}
		}
		if slices.Contains(scopes, "offline_access") {
			// OIDC Core 11: offline_access is ignored without prompt=consent.
			c.authParams = append(c.authParams, oauth2.SetAuthURLParam("prompt", "consent"))
		}
	case "":
		if ep.AuthURL == "" || ep.TokenURL == "" {
			return nil, fmt.Errorf("%w: oauth2 connector %s: auth_url and token_url are required without a preset", broker.ErrInvalid, name)
		}
	default:
		return nil, fmt.Errorf("%w: oauth2 connector %s: unknown preset %q", broker.ErrInvalid, name, cfg.Preset)
	}
	if cfg.Preset != "oidc" && cfg.Issuer != "" {
		c.issuer = cfg.Issuer
	}
	if cfg.RevocationURL != "" {
		c.revocationURL = cfg.RevocationURL
	}
	if cfg.UserInfoURL != "" {
		c.userinfoURL = cfg.UserInfoURL
	}
	c.exchangeAudience = cfg.ExchangeAudience
	for what, u := range map[string]string{
		"authorization endpoint": ep.AuthURL, "token endpoint": ep.TokenURL,
		"revocation endpoint": c.revocationURL, "userinfo endpoint": c.userinfoURL,
	} {
		if u == "" && (what == "revocation endpoint" || what == "userinfo endpoint") {
			continue
		}
		if err := checkURL(u, opts.Dev); err != nil {
			return nil, fmt.Errorf("%w: oauth2 connector %s: %s: %v", broker.ErrInvalid, name, what, err)
		}
	}
	c.conf = &oauth2.Config{
		ClientID:     cfg.ClientID,
		ClientSecret: cfg.ClientSecret.Reveal(),
		Endpoint:     ep,
		Scopes:       scopes,
	}
	return c, nil
}

var (
	hostLabelRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)
	uuidRE      = regexp.MustCompile(`^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)
)

// domainBase turns a bare host name (an instance domain) into https://HOST,
// refusing anything that is not just a host.
func domainBase(name, domain string) (string, error) {
	u, err := url.Parse("https://" + domain)
	if domain == "" || err != nil || u.Host != domain || u.Path != "" || u.User != nil || strings.ContainsAny(domain, "/?#@") {
		return "", fmt.Errorf("%w: oauth2 connector %s: domain %q must be the instance host name", broker.ErrInvalid, name, domain)
	}
	return "https://" + domain, nil
}

func checkURL(raw string, dev bool) error {
	u, err := url.Parse(raw)
	if err != nil {
		return errors.New("not a URL")
	}
	if u.Fragment != "" {
		return errors.New("must not have a fragment")
	}
	return safehttp.CheckURL(u, dev)
}

// Issuer is the provider's issuer identifier, or "" when not known.
func (c *Connector) Issuer() string { return c.issuer }

// CanRevoke reports whether the provider has a revocation endpoint; without
// one RevokeUpstream returns errors.ErrUnsupported.
func (c *Connector) CanRevoke() bool { return c.revocationURL != "" }

// pkceVerifier is RFC 7636 section 4.1: 43-128 unreserved characters.
var pkceVerifier = regexp.MustCompile(`^[A-Za-z0-9._~-]{43,128}$`)

// checkState validates st and returns the redirect_uri parameter for it
// (per request, so the shared oauth2.Config is never copied or changed).
func checkState(st connectors.LinkState) (oauth2.AuthCodeOption, error) {
	switch {
	case st.State == "":
		return nil, fmt.Errorf("%w: oauth2: empty state", broker.ErrInvalid)
	case !pkceVerifier.MatchString(st.Verifier):
		return nil, fmt.Errorf("%w: oauth2: the PKCE verifier must be 43-128 unreserved characters", broker.ErrInvalid)
	}
	u, err := url.Parse(st.RedirectURI)
	if err != nil || !u.IsAbs() || u.Fragment != "" {
		return nil, fmt.Errorf("%w: oauth2: the redirect URI must be absolute without a fragment", broker.ErrInvalid)
	}
	return oauth2.SetAuthURLParam("redirect_uri", st.RedirectURI), nil
}

// AuthURL implements connectors.RedirectLinker: the authorization request
// with response_type=code, the state, the exact redirect URI, the scopes and
// the PKCE S256 challenge of st.Verifier.
func (c *Connector) AuthURL(ctx context.Context, st connectors.LinkState) (string, error) {
	if err := ctx.Err(); err != nil {
		return "", err
	}
	redirect, err := checkState(st)
	if err != nil {
		return "", err
	}
	opts := append([]oauth2.AuthCodeOption{redirect, oauth2.S256ChallengeOption(st.Verifier)}, c.authParams...)
	return c.conf.AuthCodeURL(st.State, opts...), nil
}

// Complete implements connectors.RedirectLinker. In order: the iss check
// (RFC 9207, also for error responses), an error response (access_denied is
// ErrRejected), the code exchange with the PKCE verifier, and the account
// identity from the userinfo endpoint (or, without one, the unverified
// id_token claims: display only, never used to decide anything).
func (c *Connector) Complete(ctx context.Context, st connectors.LinkState, query url.Values) (connectors.Linked, error) {
	if err := ctx.Err(); err != nil {
		return connectors.Linked{}, err
	}
	redirect, err := checkState(st)
	if err != nil {
		return connectors.Linked{}, err
	}
	if err := c.checkIss(query); err != nil {
		return connectors.Linked{}, err
	}
	if code := query.Get("error"); code != "" {
		return connectors.Linked{}, authError(c.DisplayName(), code, query.Get("error_description"))
	}
	code := query.Get("code")
	if code == "" || len(query["code"]) != 1 {
		return connectors.Linked{}, fmt.Errorf("%w: oauth2: the callback has no single code", broker.ErrInvalid)
	}
	tok, err := c.conf.Exchange(c.ctx(ctx), code, redirect, oauth2.VerifierOption(st.Verifier))
	if err != nil {
		return connectors.Linked{}, c.tokenError(ctx, "exchanging the authorization code", err, true, nil)
	}
	if tok.AccessToken == "" {
		return connectors.Linked{}, fmt.Errorf("%w: %s returned no access token", connectors.ErrUpstream, c.DisplayName())
	}
	l := connectors.Linked{Secret: tokenSecret(tok, ""), ExpiresAt: tok.Expiry}
	l.Account = c.account(ctx, tok)
	return l, nil
}

func (c *Connector) checkIss(q url.Values) error {
	iss, has := q["iss"]
	if c.issuer == "" {
		// Unknown issuer (a preset whose provider documents none): iss
		// cannot be compared. Mix-up defence then rests on one redirect
		// URI per connector.
		return nil
	}
	if !has {
		if c.issRequired {
			return fmt.Errorf("%w: %s promises iss in authorization responses and this one has none", ErrIssuerMismatch, c.DisplayName())
		}
		return nil
	}
	if len(iss) != 1 || iss[0] != c.issuer {
		return fmt.Errorf("%w: expected %s", ErrIssuerMismatch, c.issuer)
	}
	return nil
}

// authError maps an authorization error response (RFC 6749 4.1.2.1).
func authError(provider, code, desc string) error {
	code, desc = clean(code, 64), clean(desc, 200)
	msg := code
	if desc != "" {
		msg += ": " + desc
	}
	switch code {
	case "access_denied":
		return fmt.Errorf("%w: access was not granted at %s (%s)", connectors.ErrRejected, provider, msg)
	case "server_error", "temporarily_unavailable":
		return fmt.Errorf("%w: %s failed the authorization (%s)", connectors.ErrUpstream, provider, msg)
	default:
		// invalid_request, invalid_scope, unauthorized_client...: the
		// connector's configuration and the provider disagree.
		return fmt.Errorf("%w: %s refused the authorization request (%s)", connectors.ErrRejected, provider, msg)
	}
}

// clean keeps provider-supplied text printable and short (it may reach a
// page or a log).
func clean(s string, max int) string {
	s = strings.Map(func(r rune) rune {
		if unicode.IsPrint(r) {
			return r
		}
		return -1
	}, s)
	if len(s) > max {
		s = s[:max] + "…"
	}
	return s
}

// ctx carries the provider HTTP client to x/oauth2.
func (c *Connector) ctx(ctx context.Context) context.Context {
	return context.WithValue(ctx, oauth2.HTTPClient, c.http)
}

// tokenError maps a token endpoint failure. invalid_grant is the user's
// problem: during a link (exchange) the code was bad or expired
// (ErrRejected: link again); during a refresh the grant is gone
// (ErrNeedsRelink). Everything else (5xx, other error codes, network,
// timeouts, malformed or oversized bodies) is ErrUpstream. The messages
// carry the OAuth error code and a cleaned description, never a body, and
// any secret value of sec is scrubbed.
func (c *Connector) tokenError(ctx context.Context, what string, err error, exchange bool, sec map[string]string) error {
	if ctxErr := ctx.Err(); ctxErr != nil {
		return fmt.Errorf("%w: %s: %w", connectors.ErrUpstream, what, ctxErr)
	}
	var re *oauth2.RetrieveError
	if errors.As(err, &re) {
		desc := scrub(clean(re.ErrorDescription, 200), sec)
		code := clean(re.ErrorCode, 64)
		status := 0
		if re.Response != nil {
			status = re.Response.StatusCode
		}
		switch {
		case code == "invalid_grant" && exchange:
			return fmt.Errorf("%w: %s refused the authorization code (%s); link the account again", connectors.ErrRejected, c.DisplayName(), joinDesc(code, desc))
		case code == "invalid_grant":
			return fmt.Errorf("%w: %s no longer accepts the grant (%s)", connectors.ErrNeedsRelink, c.DisplayName(), joinDesc(code, desc))
		case code != "":
			return fmt.Errorf("%w: %s: %s: %s", connectors.ErrUpstream, c.DisplayName(), what, joinDesc(code, desc))
		default:
			return fmt.Errorf("%w: %s: %s: status %d", connectors.ErrUpstream, c.DisplayName(), what, status)
		}
	}
	return fmt.Errorf("%w: %s: %s: %s", connectors.ErrUpstream, c.DisplayName(), what, scrub(clean(transportError(err), 300), sec))
}

func joinDesc(code, desc string) string {
	if desc == "" {
		return code
	}
	return code + ": " + desc
}

// transportError describes a failed call without the request URL (which
// *url.Error prints and which may carry parameters).
func transportError(err error) string {
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return "timed out"
	}
	if errors.Is(err, errBodyTooLarge) {
		return errBodyTooLarge.Error()
	}
	return err.Error()
}

func scrub(s string, sec map[string]string) string {
	for _, v := range sec {
		if len(v) >= 4 {
			s = strings.ReplaceAll(s, v, broker.Redacted)
		}
	}
	return s
}

// Secret fields.
const (
	FieldAccessToken  = "access_token"
	FieldRefreshToken = "refresh_token"
	FieldTokenType    = "token_type"
	FieldExpiry       = "expiry" // RFC 3339
	FieldScope        = "scope"
)

// tokenSecret is the secret kept for tok; oldScope is kept when the
// response names no scope (RFC 6749 5.1: unchanged).
func tokenSecret(tok *oauth2.Token, oldScope string) broker.Secret {
	f := map[string]string{FieldAccessToken: tok.AccessToken}
	if tok.RefreshToken != "" {
		f[FieldRefreshToken] = tok.RefreshToken
	}
	tt := tok.TokenType
	if tt == "" {
		tt = "Bearer"
	}
	f[FieldTokenType] = tt
	if !tok.Expiry.IsZero() {
		f[FieldExpiry] = tok.Expiry.UTC().Format(time.RFC3339)
	}
	scope, _ := tok.Extra("scope").(string)
	if scope == "" {
		scope = oldScope
	}
	if scope != "" {
		f[FieldScope] = scope
	}
	return broker.NewSecret(f)
}

// stored reads the token back from a secret.
func stored(s broker.Secret) (*oauth2.Token, string, error) {
	at, _ := s.Field(FieldAccessToken)
	rt, _ := s.Field(FieldRefreshToken)
	if at == "" && rt == "" {
		return nil, "", fmt.Errorf("%w: oauth2: the secret holds no token", broker.ErrInvalid)
	}
	tok := &oauth2.Token{AccessToken: at, RefreshToken: rt}
	tok.TokenType, _ = s.Field(FieldTokenType)
	if e, ok := s.Field(FieldExpiry); ok && e != "" {
		t, err := time.Parse(time.RFC3339, e)
		if err != nil {
			return nil, "", fmt.Errorf("%w: oauth2: the stored expiry is not RFC 3339", broker.ErrInvalid)
		}
		tok.Expiry = t
	}
	scope, _ := s.Field(FieldScope)
	return tok, scope, nil
}

func (c *Connector) expired(tok *oauth2.Token) bool {
	return !tok.Expiry.IsZero() && !c.now().Before(tok.Expiry)
}

// account is the identity to show: from userinfo when the provider has
// one, else from the id_token's claims (not verified: display only). ""
// when neither says.
func (c *Connector) account(ctx context.Context, tok *oauth2.Token) string {
	if c.userinfoURL != "" {
		if claims, err := c.userinfo(ctx, tok); err == nil {
			if a := accountFrom(claims); a != "" {
				return a
			}
		}
	}
	if idt, ok := tok.Extra("id_token").(string); ok {
		if claims := unverifiedClaims(idt); claims != nil {
			return accountFrom(claims)
		}
	}
	return ""
}

func accountFrom(claims map[string]any) string {
	for _, k := range []string{"email", "preferred_username", "login", "upn", "name", "sub"} {
		switch v := claims[k].(type) {
		case string:
			if v != "" {
				return clean(v, 200)
			}
		case json.Number:
			return v.String()
		}
	}
	return ""
}

func unverifiedClaims(jwt string) map[string]any {
	parts := strings.Split(jwt, ".")
	if len(parts) != 3 || len(parts[1]) > 64<<10 {
		return nil
	}
	b, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return nil
	}
	var m map[string]any
	if json.Unmarshal(b, &m) != nil {
		return nil
	}
	return m
}

// userinfo calls the userinfo endpoint with the access token. 401/403 is
// ErrNeedsRelink (the token or grant is no longer accepted).
func (c *Connector) userinfo(ctx context.Context, tok *oauth2.Token) (map[string]any, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.userinfoURL, nil)
	if err != nil {
		return nil, fmt.Errorf("%w: userinfo: %v", connectors.ErrUpstream, err)
	}
	req.Header.Set("Authorization", "Bearer "+tok.AccessToken)
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", "lanyard")
	resp, err := c.http.Do(req)
	if err != nil {
		if ctxErr := ctx.Err(); ctxErr != nil {
			return nil, fmt.Errorf("%w: userinfo: %w", connectors.ErrUpstream, ctxErr)
		}
		return nil, fmt.Errorf("%w: %s userinfo: %s", connectors.ErrUpstream, c.DisplayName(), transportError(err))
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body) // capped by capTransport
	if err != nil {
		return nil, fmt.Errorf("%w: %s userinfo: %s", connectors.ErrUpstream, c.DisplayName(), transportError(err))
	}
	switch {
	case resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden:
		return nil, fmt.Errorf("%w: %s refused the access token (status %d)", connectors.ErrNeedsRelink, c.DisplayName(), resp.StatusCode)
	case resp.StatusCode/100 != 2:
		return nil, fmt.Errorf("%w: %s userinfo: status %d", connectors.ErrUpstream, c.DisplayName(), resp.StatusCode)
	}
	d := json.NewDecoder(strings.NewReader(string(body)))
	d.UseNumber()
	var m map[string]any
	if err := d.Decode(&m); err != nil {
		return nil, fmt.Errorf("%w: %s userinfo: not a JSON object", connectors.ErrUpstream, c.DisplayName())
	}
	// Slack's Web API answers 200 with {"ok": false, "error": "invalid_auth"}.
	if ok, has := m["ok"].(bool); has && !ok {
		return nil, fmt.Errorf("%w: %s refused the access token (%s)", connectors.ErrNeedsRelink, c.DisplayName(), clean(fmt.Sprint(m["error"]), 64))
	}
	return m, nil
}

// Verify implements connectors.Verifier without refreshing (a refresh
// rotates the refresh token; that is the link service's write): an access
// token past its expiry is ErrAccessTokenExpired (refresh, then verify);
// with a userinfo endpoint the token is presented there (401/403:
// ErrNeedsRelink); without one Verify only checks that a live access token
// is stored and does not contact the provider.
func (c *Connector) Verify(ctx context.Context, secret broker.Secret) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	tok, _, err := stored(secret)
	if err != nil {
		return err
	}
	if tok.AccessToken == "" || c.expired(tok) {
		return ErrAccessTokenExpired
	}
	if c.userinfoURL == "" {
		return nil
	}
	_, err = c.userinfo(ctx, tok)
	return err
}

// Refresh implements connectors.Refresher with the stored refresh token.
// The result carries the new access token and the new refresh token when
// the provider rotated it (the old one otherwise). invalid_grant is
// ErrNeedsRelink; a secret without a refresh token is ErrNeedsRelink too.
// Refresh is not single-flight: the link service serialises refreshes of
// one connection and writes the result with check-and-set.
func (c *Connector) Refresh(ctx context.Context, secret broker.Secret) (connectors.Linked, error) {
	if err := ctx.Err(); err != nil {
		return connectors.Linked{}, err
	}
	old, scope, err := stored(secret)
	if err != nil {
		return connectors.Linked{}, err
	}
	if old.RefreshToken == "" {
		return connectors.Linked{}, fmt.Errorf("%w: %s gave no refresh token", connectors.ErrNeedsRelink, c.DisplayName())
	}
	// An empty access token makes the token source refresh at once; it
	// keeps the old refresh token when the response has none.
	tok, err := c.conf.TokenSource(c.ctx(ctx), &oauth2.Token{RefreshToken: old.RefreshToken}).Token()
	if err != nil {
		return connectors.Linked{}, c.tokenError(ctx, "refreshing the token", err, false, secret.Fields())
	}
	if tok.AccessToken == "" {
		return connectors.Linked{}, fmt.Errorf("%w: %s returned no access token", connectors.ErrUpstream, c.DisplayName())
	}
	return connectors.Linked{Secret: tokenSecret(tok, scope), ExpiresAt: tok.Expiry}, nil
}

// RevokeUpstream implements connectors.Revoker with RFC 7009: the refresh
// token (which at most providers ends the whole grant), then the access
// token. Without a revocation endpoint it returns an error matching
// errors.ErrUnsupported (see CanRevoke). An unknown or already invalid
// token is success (RFC 7009 2.2).
func (c *Connector) RevokeUpstream(ctx context.Context, secret broker.Secret) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	tok, _, err := stored(secret)
	if err != nil {
		return err
	}
	if c.revocationURL == "" {
		return fmt.Errorf("%w: %s has no token revocation endpoint", errors.ErrUnsupported, c.DisplayName())
	}
	if tok.RefreshToken != "" {
		if err := c.revoke(ctx, tok.RefreshToken, "refresh_token"); err != nil {
			return err
		}
	}
	if tok.AccessToken != "" {
		return c.revoke(ctx, tok.AccessToken, "access_token")
	}
	return nil
}

func (c *Connector) revoke(ctx context.Context, token, hint string) error {
	form := url.Values{"token": {token}, "token_type_hint": {hint}}
	if c.conf.ClientSecret == "" || c.conf.Endpoint.AuthStyle == oauth2.AuthStyleInParams {
		form.Set("client_id", c.conf.ClientID)
		if c.conf.ClientSecret != "" {
			form.Set("client_secret", c.conf.ClientSecret)
		}
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.revocationURL, strings.NewReader(form.Encode()))
	if err != nil {
		return fmt.Errorf("%w: revocation: %v", connectors.ErrUpstream, err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("User-Agent", "lanyard")
	if c.conf.ClientSecret != "" && c.conf.Endpoint.AuthStyle != oauth2.AuthStyleInParams {
		// RFC 6749 2.3.1: form-encode, then basic auth.
		req.SetBasicAuth(url.QueryEscape(c.conf.ClientID), url.QueryEscape(c.conf.ClientSecret))
	}
	resp, err := c.http.Do(req)
	if err != nil {
		if ctxErr := ctx.Err(); ctxErr != nil {
			return fmt.Errorf("%w: revocation: %w", connectors.ErrUpstream, ctxErr)
		}
		return fmt.Errorf("%w: %s revocation: %s", connectors.ErrUpstream, c.DisplayName(), transportError(err))
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode/100 == 2 {
		return nil
	}
	var e struct {
		Error string `json:"error"`
	}
	_ = json.Unmarshal(body, &e)
	return fmt.Errorf("%w: %s revocation: status %d %s", connectors.ErrUpstream, c.DisplayName(), resp.StatusCode, clean(e.Error, 64))
}

// liveToken is the stored token, if its access token has not expired
// (ErrAccessTokenExpired otherwise: the link service refreshes first).
func (c *Connector) liveToken(ctx context.Context, secret broker.Secret) (*oauth2.Token, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	tok, _, err := stored(secret)
	if err != nil {
		return nil, err
	}
	if tok.AccessToken == "" || c.expired(tok) {
		return nil, ErrAccessTokenExpired
	}
	return tok, nil
}

// Materialize implements connectors.Materializer: the access token and its
// type, and when it expires. An expired access token is
// ErrAccessTokenExpired (the link service refreshes first).
func (c *Connector) Materialize(ctx context.Context, secret broker.Secret) (connectors.Credential, error) {
	tok, err := c.liveToken(ctx, secret)
	if err != nil {
		return connectors.Credential{}, err
	}
	tt := tok.TokenType
	if tt == "" {
		tt = "Bearer"
	}
	return connectors.Credential{
		Type:      connectors.KindOAuth2,
		Fields:    map[string]any{FieldAccessToken: tok.AccessToken, FieldTokenType: tt},
		ExpiresAt: tok.Expiry,
	}, nil
}
