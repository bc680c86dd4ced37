// Package apikey is the "apikey" connector kind: the user pastes an API key,
// Lanyard optionally checks it with one request to a configured URL before
// it is kept, and at redemption hands the key out together with how the
// upstream wants it presented (a header with an optional prefix, or a query
// parameter). The key is never shown again: the account identity is a mask
// with at most its last 4 characters.
package apikey

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"unicode/utf8"

	"github.com/lanyardhq/lanyard/broker"
	"github.com/lanyardhq/lanyard/connectors"
	"github.com/lanyardhq/lanyard/internal/config"
	"github.com/lanyardhq/lanyard/internal/safehttp"
)

var (
	_ connectors.Connector    = (*Connector)(nil)
	_ connectors.FormLinker   = (*Connector)(nil)
	_ connectors.Verifier     = (*Connector)(nil)
	_ connectors.Materializer = (*Connector)(nil)
)

// FieldKey is the form field and the secret field holding the key.
const FieldKey = "api_key"

// MaxKeyLen bounds a key; longer input is refused.
const MaxKeyLen = 4096

// maxVerifyBody caps the body read from the verification URL (it is
// discarded; only the status counts).
const maxVerifyBody = 64 << 10

// Options configures New. The zero value is the production setting.
type Options struct {
	// Dev allows a verify_url over http to a loopback host (tests, `lanyard
	// dev`). Otherwise it must be https to a public address.
	Dev bool
	// HTTP is the client for the verification request; nil: a
	// safehttp.NewClient (SSRF-guarded: public addresses only, no
	// redirects, short timeout). Pass another only in tests.
	HTTP *http.Client
}

// Connector is one configured API key upstream. It is safe for concurrent
// use.
type Connector struct {
	connectors.Named
	cfg  config.APIKeyConnector
	http *http.Client
}

// New builds the connector. Exactly one of cfg.Header and cfg.QueryParam
// must be set; cfg.VerifyURL, if set, must be https (http to loopback with
// Dev).
func New(name, displayName string, cfg config.APIKeyConnector, opts Options) (*Connector, error) {
	named, err := connectors.NewNamed(connectors.KindAPIKey, name, displayName)
	if err != nil {
		return nil, err
	}
	if (cfg.Header == "") == (cfg.QueryParam == "") {
		return nil, fmt.Errorf("%w: apikey connector %s: set exactly one of header and query_param", broker.ErrInvalid, name)
	}
	if cfg.Header != "" && !isToken(cfg.Header) {
		return nil, fmt.Errorf("%w: apikey connector %s: header %q is not a header name", broker.ErrInvalid, name, cfg.Header)
	}
	if cfg.Prefix != "" && (cfg.Header == "" || strings.ContainsAny(cfg.Prefix, "\r\n\x00")) {
		return nil, fmt.Errorf("%w: apikey connector %s: prefix goes with header and must be one line", broker.ErrInvalid, name)
	}
	if cfg.VerifyURL != "" {
		u, err := url.Parse(cfg.VerifyURL)
		if err != nil || u.Fragment != "" {
			return nil, fmt.Errorf("%w: apikey connector %s: verify_url is not a URL without fragment", broker.ErrInvalid, name)
		}
		if err := safehttp.CheckURL(u, opts.Dev); err != nil {
			return nil, fmt.Errorf("%w: apikey connector %s: verify_url: %v", broker.ErrInvalid, name, err)
		}
	}
	hc := opts.HTTP
	if hc == nil {
		hc = safehttp.NewClient(safehttp.Options{AllowLoopback: opts.Dev})
	}
	return &Connector{Named: named, cfg: cfg, http: hc}, nil
}

// isToken reports whether s is an HTTP field name (RFC 9110 token).
func isToken(s string) bool {
	if s == "" {
		return false
	}
	for _, r := range s {
		if r >= 0x80 || !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("!#$%&'*+-.^_`|~", r)) {
			return false
		}
	}
	return true
}

// Fields implements connectors.FormLinker: the key, secret and required.
func (c *Connector) Fields() []connectors.Field {
	return []connectors.Field{{
		Name: FieldKey, Label: "API key", Secret: true, Required: true,
		Help: "Paste the key from " + c.DisplayName() + ". It is stored encrypted and never shown again.",
	}}
}

// key validates a key: present, one line, printable, bounded.
func key(s string) (string, error) {
	s = strings.TrimSpace(s)
	switch {
	case s == "":
		return "", fmt.Errorf("%w: the API key is required", broker.ErrInvalid)
	case len(s) > MaxKeyLen:
		return "", fmt.Errorf("%w: the API key is longer than %d characters", broker.ErrInvalid, MaxKeyLen)
	case !utf8.ValidString(s) || strings.ContainsFunc(s, func(r rune) bool { return r < 0x20 || r == 0x7f }):
		return "", fmt.Errorf("%w: the API key contains control characters", broker.ErrInvalid)
	}
	return s, nil
}

// Link implements connectors.FormLinker: it checks the key with the
// verification request when one is configured (nothing is returned to keep
// unless the upstream accepted it) and returns the masked key as the
// account.
func (c *Connector) Link(ctx context.Context, in connectors.Input) (connectors.Linked, error) {
	if err := ctx.Err(); err != nil {
		return connectors.Linked{}, err
	}
	k, err := key(in.Get(FieldKey))
	if err != nil {
		return connectors.Linked{}, err
	}
	if err := c.verify(ctx, k); err != nil {
		return connectors.Linked{}, err
	}
	return connectors.Linked{Account: Mask(k), Secret: broker.NewSecret(map[string]string{FieldKey: k})}, nil
}

// Mask shows at most the last 4 characters of a key, and fewer of a short
// one (a quarter of it), so the mask never gives most of a key away.
func Mask(k string) string {
	r := []rune(k)
	n := min(4, len(r)/4)
	return "…" + string(r[len(r)-n:])
}

// verify sends the key to cfg.VerifyURL as configured: 2xx accepted,
// 401/403 ErrRejected, anything else ErrUpstream. Errors never carry the
// URL (with a query parameter it holds the key).
func (c *Connector) verify(ctx context.Context, k string) error {
	if c.cfg.VerifyURL == "" {
		return nil
	}
	u, err := url.Parse(c.cfg.VerifyURL)
	if err != nil {
		return fmt.Errorf("%w: verify_url: %v", connectors.ErrUpstream, err)
	}
	if c.cfg.QueryParam != "" {
		q := u.Query()
		q.Set(c.cfg.QueryParam, k)
		u.RawQuery = q.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return fmt.Errorf("%w: verification request: bad URL", connectors.ErrUpstream)
	}
	if c.cfg.Header != "" {
		req.Header.Set(c.cfg.Header, c.cfg.Prefix+k)
	}
	req.Header.Set("Accept", "application/json, */*;q=0.5")
	resp, err := safehttp.Do(c.http, req, maxVerifyBody)
	if err != nil {
		if ctxErr := ctx.Err(); ctxErr != nil {
			return fmt.Errorf("%w: verifying the key with %s: %w", connectors.ErrUpstream, c.DisplayName(), ctxErr)
		}
		return fmt.Errorf("%w: verifying the key with %s: %s", connectors.ErrUpstream, c.DisplayName(), withoutURL(err, k))
	}
	switch {
	case resp.Status/100 == 2:
		return nil
	case resp.Status == http.StatusUnauthorized || resp.Status == http.StatusForbidden:
		return fmt.Errorf("%w: %s did not accept the API key (status %d)", connectors.ErrRejected, c.DisplayName(), resp.Status)
	default:
		return fmt.Errorf("%w: %s answered the key check with status %d", connectors.ErrUpstream, c.DisplayName(), resp.Status)
	}
}

// withoutURL describes a failed request without *url.Error's URL, and
// without the key in case an error quotes it.
func withoutURL(err error, k string) string {
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	return strings.ReplaceAll(err.Error(), k, broker.Redacted)
}

// Verify implements connectors.Verifier: the verification request again
// when one is configured (a refused key is ErrRejected); without one it
// only checks that a key is stored.
func (c *Connector) Verify(ctx context.Context, secret broker.Secret) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	v, _ := secret.Field(FieldKey)
	k, err := key(v)
	if err != nil {
		return err
	}
	return c.verify(ctx, k)
}

// Materialize implements connectors.Materializer: the key and how to
// present it (header and prefix, or query_param).
func (c *Connector) Materialize(ctx context.Context, secret broker.Secret) (connectors.Credential, error) {
	if err := ctx.Err(); err != nil {
		return connectors.Credential{}, err
	}
	v, _ := secret.Field(FieldKey)
	k, err := key(v)
	if err != nil {
		return connectors.Credential{}, err
	}
	f := map[string]any{FieldKey: k}
	if c.cfg.Header != "" {
		f["header"] = c.cfg.Header
		f["prefix"] = c.cfg.Prefix
	} else {
		f["query_param"] = c.cfg.QueryParam
	}
	return connectors.Credential{Type: connectors.KindAPIKey, Fields: f}, nil
}
