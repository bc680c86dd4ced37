package clientreg

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/lanyardhq/lanyard/broker"
	"github.com/lanyardhq/lanyard/broker/oauth"
	"github.com/lanyardhq/lanyard/internal/safehttp"
)

// MaxDocumentBytes caps a Client ID Metadata Document.
const MaxDocumentBytes = 5 << 10

// Cache lifetimes of metadata documents when ResolverOptions leaves them
// zero.
const (
	DefaultMinCache     = time.Minute
	DefaultMaxCache     = 24 * time.Hour
	DefaultCache        = 5 * time.Minute
	DefaultFailureCache = 10 * time.Second
)

// ResolverOptions configures NewResolver.
type ResolverOptions struct {
	// Clients is where pre-registered and dynamically registered clients
	// live and where metadata documents are cached. Required.
	Clients broker.Table[broker.Client]
	// HTTP fetches metadata documents. nil means
	// safehttp.NewClient(safehttp.Options{AllowLoopback: DevLoopback}).
	// Anything else must come from safehttp.NewClient too.
	HTTP *http.Client
	// Now is the clock cache lifetimes are measured with; nil means
	// time.Now. Give the store the same clock.
	Now func() time.Time
	// DevLoopback allows http client_id URLs on loopback hosts (and, with a
	// nil HTTP, dialling loopback addresses). Never in production.
	DevLoopback bool
	// MinCache and MaxCache clamp the lifetime a document's Cache-Control
	// asks for; DefaultCache applies when it asks for none. A document sent
	// with no-store, no-cache or max-age=0 is still kept for MinCache: each
	// fetch is a request a stranger makes Lanyard send, and the floor bounds
	// how often one client_id can cause one.
	MinCache, MaxCache, DefaultCache time.Duration
	// FailureCache is how long a failed fetch is remembered (in memory) so
	// that a client_id that fails cannot make Lanyard fetch on every
	// request. Negative disables it.
	FailureCache time.Duration
	// Logger receives store errors that Resolve does not return; nil means
	// slog.Default().
	Logger *slog.Logger
}

func (o ResolverOptions) withDefaults() ResolverOptions {
	if o.HTTP == nil {
		o.HTTP = safehttp.NewClient(safehttp.Options{AllowLoopback: o.DevLoopback})
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.MinCache <= 0 {
		o.MinCache = DefaultMinCache
	}
	if o.MaxCache <= 0 {
		o.MaxCache = DefaultMaxCache
	}
	if o.MaxCache < o.MinCache {
		o.MaxCache = o.MinCache
	}
	if o.DefaultCache <= 0 {
		o.DefaultCache = DefaultCache
	}
	o.DefaultCache = min(max(o.DefaultCache, o.MinCache), o.MaxCache)
	if o.FailureCache == 0 {
		o.FailureCache = DefaultFailureCache
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return o
}

// Resolver turns client_ids into clients. It is safe for concurrent use.
type Resolver struct {
	o ResolverOptions

	mu       sync.Mutex
	inflight map[string]*fetchCall
	failures map[string]failure
}

type fetchCall struct {
	done   chan struct{}
	client broker.Client
	err    error
}

type failure struct {
	err   error
	until time.Time
}

// maxFailures bounds the failure memory; past it the memory is emptied.
const maxFailures = 10000

// NewResolver returns a Resolver. It panics if opts.Clients is nil.
func NewResolver(opts ResolverOptions) *Resolver {
	if opts.Clients == nil {
		panic("clientreg: NewResolver without Clients")
	}
	return &Resolver{
		o:        opts.withDefaults(),
		inflight: map[string]*fetchCall{},
		failures: map[string]failure{},
	}
}

// IsMetadataURL reports whether clientID is meant as a Client ID Metadata
// Document URL (it starts with https:// or http://). Whether the URL is
// acceptable is for Resolve to decide.
func IsMetadataURL(clientID string) bool {
	l := strings.ToLower(clientID[:min(len(clientID), 8)])
	return strings.HasPrefix(l, "https://") || strings.HasPrefix(l, "http://")
}

// Resolve returns the client clientID names.
//
// A metadata document URL (see IsMetadataURL) is served from the Clients
// table while its cached copy is fresh, and fetched and validated otherwise;
// concurrent calls for the same URL share one fetch. A client in the table
// under a URL that is not a cached document (say, a pre-registered client
// whose ID is a URL) is returned as it is. Any other clientID is looked up
// in the table.
//
// An unknown client or an unusable document is an error matching
// oauth.ErrInvalidClient whose description says why without echoing the
// document; a store failure is server_error or temporarily_unavailable.
func (r *Resolver) Resolve(ctx context.Context, clientID string) (broker.Client, error) {
	if !IsMetadataURL(clientID) {
		c, err := r.o.Clients.Get(ctx, clientID)
		if err != nil {
			return broker.Client{}, storeErr(err, "unknown client")
		}
		return c, nil
	}
	c, err := r.o.Clients.Get(ctx, clientID)
	switch {
	case err == nil:
		return c, nil
	case errors.Is(err, broker.ErrInvalid):
		return broker.Client{}, oauth.ErrInvalidClient.WithDescription("client_id URL is malformed").WithCause(err)
	case !errors.Is(err, broker.ErrNotFound):
		return broker.Client{}, storeErr(err, "")
	}
	if err := r.checkClientIDURL(clientID); err != nil {
		return broker.Client{}, err
	}
	return r.fetchOnce(ctx, clientID)
}

// checkClientIDURL applies the draft's URL rules: https (http to loopback
// only in dev mode), a path, no fragment, no user info, no dot segments.
func (r *Resolver) checkClientIDURL(clientID string) error {
	bad := func(d string) error {
		return oauth.ErrInvalidClient.WithDescription("client_id URL " + d)
	}
	if len(clientID) > broker.MaxIDLen {
		return bad(fmt.Sprintf("is longer than %d bytes", broker.MaxIDLen))
	}
	for i := 0; i < len(clientID); i++ {
		if c := clientID[i]; c <= 0x20 || c >= 0x7f {
			return bad("has a control, space or non-ASCII character")
		}
	}
	u, err := url.Parse(clientID)
	switch {
	case err != nil || u.Host == "" || u.Opaque != "":
		return bad("is not an absolute URL")
	case !strings.HasPrefix(clientID, u.Scheme+"://"):
		return bad("scheme must be lower case")
	case u.Fragment != "" || strings.Contains(clientID, "#"):
		return bad("must not have a fragment")
	case u.User != nil:
		return bad("must not have user info")
	case u.Path == "":
		return bad("must have a path")
	case strings.Contains(clientID, `\`):
		return bad("must not contain a backslash")
	}
	for _, seg := range strings.Split(u.EscapedPath(), "/") {
		if s := strings.ToLower(seg); s == "." || s == ".." || s == "%2e" || s == "%2e%2e" || s == ".%2e" || s == "%2e." {
			return bad("must not have . or .. path segments")
		}
	}
	if err := safehttp.CheckURL(u, r.o.DevLoopback); err != nil {
		return bad("must use https")
	}
	return nil
}

// fetchOnce fetches clientID, sharing the fetch with concurrent callers.
// The fetch runs detached from any one caller's context (bounded by the
// HTTP client's timeout) so that a caller giving up does not fail the
// others.
func (r *Resolver) fetchOnce(ctx context.Context, clientID string) (broker.Client, error) {
	r.mu.Lock()
	if f, ok := r.failures[clientID]; ok {
		if r.o.Now().Before(f.until) {
			r.mu.Unlock()
			return broker.Client{}, f.err
		}
		delete(r.failures, clientID)
	}
	call, ok := r.inflight[clientID]
	if !ok {
		call = &fetchCall{done: make(chan struct{})}
		r.inflight[clientID] = call
		go r.fill(context.WithoutCancel(ctx), clientID, call)
	}
	r.mu.Unlock()
	select {
	case <-call.done:
		return call.client, call.err
	case <-ctx.Done():
		return broker.Client{}, ctx.Err()
	}
}

func (r *Resolver) fill(ctx context.Context, clientID string, call *fetchCall) {
	defer func() {
		r.mu.Lock()
		delete(r.inflight, clientID)
		if call.err != nil && errors.Is(call.err, oauth.ErrInvalidClient) && r.o.FailureCache > 0 {
			if len(r.failures) >= maxFailures {
				clear(r.failures)
			}
			r.failures[clientID] = failure{err: call.err, until: r.o.Now().Add(r.o.FailureCache)}
		}
		r.mu.Unlock()
		close(call.done)
	}()
	// A caller that missed the cache just before a previous fetch stored
	// its result lands here after that fetch finished: look again.
	if c, err := r.o.Clients.Get(ctx, clientID); err == nil {
		call.client = c
		return
	}
	c, err := r.fetch(ctx, clientID)
	if err != nil {
		call.err = err
		return
	}
	call.client = r.store(ctx, c)
}

// fetch gets and validates the document at clientID.
func (r *Resolver) fetch(ctx context.Context, clientID string) (broker.Client, error) {
	fail := func(desc string, cause error) (broker.Client, error) {
		return broker.Client{}, oauth.ErrInvalidClient.
			WithDescription("client metadata document " + desc).WithCause(cause)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, clientID, nil)
	if err != nil {
		return fail("URL is invalid", err)
	}
	req.Header.Set("Accept", "application/json")
	resp, err := safehttp.Do(r.o.HTTP, req, MaxDocumentBytes)
	switch {
	case errors.Is(err, safehttp.ErrBlockedAddress):
		return fail("host resolves to an address Lanyard may not connect to", err)
	case errors.Is(err, safehttp.ErrScheme):
		return fail("URL must use https", err)
	case errors.Is(err, safehttp.ErrRedirect):
		return fail("fetch was redirected; redirects are not followed", err)
	case errors.Is(err, safehttp.ErrTooLarge):
		return fail(fmt.Sprintf("is larger than %d bytes", MaxDocumentBytes), err)
	case errors.Is(err, safehttp.ErrTimeout):
		return fail("fetch timed out", err)
	case err != nil:
		return fail("could not be fetched", err)
	case resp.Status != http.StatusOK:
		return fail(fmt.Sprintf("fetch returned HTTP status %d, want 200", resp.Status), nil)
	}
	members, err := decodeObject(resp.Body)
	if err != nil {
		return fail("is invalid: "+oauth.As(err).Description, err)
	}
	var id string
	if raw, ok := members["client_id"]; !ok || jsonString(raw, &id) != nil || id != clientID {
		return fail("client_id does not equal the document URL", nil)
	}
	for _, f := range []string{"client_secret", "client_secret_expires_at"} {
		if _, ok := members[f]; ok {
			return fail("must not contain "+f, nil)
		}
	}
	m, err := parseMetadata(members)
	if err != nil {
		return fail("is invalid: "+oauth.As(err).Description, err)
	}
	if m.TokenEndpointAuthMethod != "" && m.TokenEndpointAuthMethod != AuthNone {
		return fail("token_endpoint_auth_method must be none", nil)
	}
	if len(m.RedirectURIs) == 0 {
		return fail("must list redirect_uris", nil)
	}
	// Dev mode governs where the document may be fetched from, not where a
	// CIMD client may send codes: web clients get the production rules.
	m, err = ValidateMetadata(m, false)
	if err != nil {
		return fail("is invalid: "+oauth.As(err).Description, err)
	}
	now := r.o.Now()
	return broker.Client{
		ID:                      clientID,
		Kind:                    broker.ClientMetadata,
		Name:                    m.ClientName,
		RedirectURIs:            m.RedirectURIs,
		GrantTypes:              m.GrantTypes,
		ApplicationType:         m.ApplicationType,
		TokenEndpointAuthMethod: AuthNone,
		CreatedAt:               now,
		ExpiresAt:               now.Add(r.lifetime(resp.Header)),
	}, nil
}

// store caches c. Caching is best effort: on a store error the client is
// still returned (validated just now) and the error logged. A record
// already under the ID that is not a cached document wins over c.
func (r *Resolver) store(ctx context.Context, c broker.Client) broker.Client {
	err := r.o.Clients.Create(ctx, c)
	if errors.Is(err, broker.ErrAlreadyExists) {
		var got broker.Client
		got, err = r.o.Clients.Update(ctx, c.ID, func(old broker.Client) (broker.Client, error) {
			if old.Kind != broker.ClientMetadata {
				return old, nil
			}
			return c, nil
		})
		if err == nil {
			return got
		}
	}
	if err != nil {
		r.o.Logger.WarnContext(ctx, "clientreg: caching client metadata document failed",
			"client_id", c.ID, "err", err)
	}
	return c
}

// lifetime reads Cache-Control: max-age clamped to [MinCache, MaxCache];
// no-store, no-cache and max-age=0 give MinCache (see ResolverOptions);
// no usable max-age gives DefaultCache. Expires is not consulted.
func (r *Resolver) lifetime(h http.Header) time.Duration {
	d := r.o.DefaultCache
	for _, line := range h.Values("Cache-Control") {
		for _, dir := range strings.Split(line, ",") {
			name, val, _ := strings.Cut(strings.TrimSpace(dir), "=")
			switch strings.ToLower(strings.TrimSpace(name)) {
			case "no-store", "no-cache":
				return r.o.MinCache
			case "max-age":
				n, err := strconv.ParseInt(strings.Trim(strings.TrimSpace(val), `"`), 10, 64)
				if err != nil || n < 0 {
					continue
				}
				if n > int64(r.o.MaxCache/time.Second) {
					d = r.o.MaxCache
				} else {
					d = time.Duration(n) * time.Second
				}
			}
		}
	}
	return min(max(d, r.o.MinCache), r.o.MaxCache)
}

func jsonString(raw []byte, dst *string) error {
	if len(raw) == 0 || raw[0] != '"' {
		return errors.New("not a string")
	}
	return json.Unmarshal(raw, dst)
}

// storeErr maps a store error: not found is invalid_client with desc,
// unavailable is temporarily_unavailable, anything else server_error.
func storeErr(err error, notFound string) error {
	switch {
	case errors.Is(err, broker.ErrNotFound) && notFound != "":
		return oauth.ErrInvalidClient.WithDescription(notFound).WithCause(err)
	case errors.Is(err, broker.ErrInvalid) && notFound != "":
		return oauth.ErrInvalidClient.WithDescription(notFound).WithCause(err)
	case errors.Is(err, broker.ErrUnavailable):
		return oauth.ErrTemporarilyUnavailable.WithDescription("client store unavailable").WithCause(err)
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return err
	default:
		return oauth.ErrServerError.WithDescription("internal error").WithCause(err)
	}
}
