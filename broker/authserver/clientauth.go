package authserver

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/singleflight"

	"github.com/lanyardhq/lanyard/broker"
	"github.com/lanyardhq/lanyard/broker/oauth"
	"github.com/lanyardhq/lanyard/broker/token"
	"github.com/lanyardhq/lanyard/internal/safehttp"
)

// Auth methods of MCP servers (broker.Resource.TokenEndpointAuthMethod).
const (
	AuthSecretBasic   = "client_secret_basic" // also accepted: client_secret_post
	AuthPrivateKeyJWT = "private_key_jwt"
)

// JWKS URL caching: a fetched set is used for jwksMaxAge; a signature that
// no cached key verifies causes at most one refetch per jwksMinRefetch (a
// key rotated in at the MCP server, or a forged kid); no fetch, failed or
// not, is made within jwksMinRefetch of the last one to the same URL.
const (
	jwksMaxAge     = 5 * time.Minute
	jwksMinRefetch = 30 * time.Second
	maxJWKSBody    = 64 << 10
)

// authenticateAssertion is private_key_jwt (RFC 7523 §2.2) for MCP
// servers: a short-lived JWT signed with the server's key, verified against
// its registered JWKS, with a jti that is accepted once.
func (s *Server) authenticateAssertion(ctx context.Context, r *http.Request, p oauth.Params) (broker.Resource, error) {
	if _, _, ok := r.BasicAuth(); ok || p.Has("client_secret") {
		return broker.Resource{}, oauth.ErrInvalidRequest.WithDescription("use one client authentication method")
	}
	if p.Get("client_assertion_type") != token.AssertionType {
		return broker.Resource{}, oauth.ErrInvalidClient.WithDescription("client_assertion_type must be " + token.AssertionType)
	}
	raw := p.Get("client_assertion")
	if raw == "" {
		return broker.Resource{}, oauth.ErrInvalidClient.WithDescription("client_assertion is required")
	}
	id := p.Get("client_id")
	if id == "" {
		sub, err := token.AssertionSubject(raw)
		if err != nil {
			return broker.Resource{}, oauth.ErrInvalidClient.WithDescription("client_assertion is malformed").WithCause(err)
		}
		id = sub
	}
	res, err := s.o.Store.Resources().Get(ctx, id)
	if errors.Is(err, broker.ErrNotFound) {
		return res, oauth.ErrInvalidClient.WithDescription("MCP server authentication failed")
	}
	if err != nil {
		return res, err
	}
	if res.TokenEndpointAuthMethod != AuthPrivateKeyJWT {
		return res, oauth.ErrInvalidClient.WithDescription("this MCP server is not registered for private_key_jwt")
	}
	opts := token.AssertionOptions{ClientID: res.ID, Now: s.now(),
		Audiences: []string{s.o.Issuer, s.url(PathToken), s.url(PathRedeem), s.url(PathIntrospect)}}
	jwks, err := s.resourceJWKS(ctx, res, false)
	if err != nil {
		return res, err
	}
	a, err := token.VerifyAssertion(raw, jwks, opts)
	if errors.Is(err, token.ErrUnknownKey) && res.JWKS == "" {
		// Perhaps the server rotated its key: refetch (rate-limited).
		if fresh, ferr := s.resourceJWKS(ctx, res, true); ferr == nil {
			a, err = token.VerifyAssertion(raw, fresh, opts)
		}
	}
	if err != nil {
		reason := strings.TrimPrefix(err.Error(), token.ErrInvalidAssertion.Error()+": ")
		return res, oauth.ErrInvalidClient.WithDescription("client assertion rejected: " + reason).WithCause(err)
	}
	// The jti is single-use: a record keyed by its hash, kept until the
	// assertion expires. It lives in the authorization-code table (a
	// single-use table keyed by hash); the "jti-" prefix keeps it apart from
	// any code hash, so no presented code can ever reach it.
	now := s.now()
	rec := broker.AuthCode{ID: "jti-" + broker.HashSecret(res.ID+"\x00"+a.JTI), ClientID: "mcp-server:" + res.ID,
		IssuedAt: now, ExpiresAt: a.ExpiresAt.Add(token.ClockSkew), Consumed: now}
	if err := s.o.Store.AuthCodes().Create(ctx, rec); err != nil {
		if errors.Is(err, broker.ErrAlreadyExists) {
			return res, oauth.ErrInvalidClient.WithDescription("client assertion was already used (jti replay)")
		}
		return res, err
	}
	return res, nil
}

// resourceJWKS returns the MCP server's JWK Set: inline, or fetched from
// its JWKS URL through the cache.
func (s *Server) resourceJWKS(ctx context.Context, res broker.Resource, refresh bool) ([]byte, error) {
	switch {
	case res.JWKS != "":
		return []byte(res.JWKS), nil
	case res.JWKSURL != "":
		b, err := s.jwksCache.get(ctx, res.JWKSURL, s.now(), refresh)
		if err != nil {
			return nil, oauth.ErrInvalidClient.WithDescription("the MCP server's JWKS URL could not be fetched").WithCause(err)
		}
		return b, nil
	}
	return nil, oauth.ErrInvalidClient.WithDescription("this MCP server has no registered keys")
}

// jwksCache caches fetched JWK Sets by URL.
type jwksCache struct {
	client *http.Client
	flight singleflight.Group
	mu     sync.Mutex
	m      map[string]jwksEntry
}

type jwksEntry struct {
	body    []byte    // the last set fetched; nil if none ever was
	fetched time.Time // when body was fetched
	// tried is when the last fetch was made, successful or not, and err
	// its error (nil on success). Every fetch, failed ones too, waits
	// jwksMinRefetch after the last: the resource id comes from the
	// unverified assertion, so without this every unauthenticated request
	// naming a server whose JWKS URL is down would cause another fetch.
	tried time.Time
	err   error
}

func newJWKSCache(c *http.Client) *jwksCache {
	return &jwksCache{client: c, m: map[string]jwksEntry{}}
}

// get returns the cached set while it is younger than jwksMaxAge (with
// refresh, only if the last fetch is younger than jwksMinRefetch);
// otherwise it fetches (once for concurrent callers). No fetch is made
// within jwksMinRefetch of the last one, successful or failed: meanwhile a
// set still within its age is served, else the last fetch's error. A
// failed refetch keeps serving a set that is still within its age.
func (c *jwksCache) get(ctx context.Context, url string, now time.Time, refresh bool) ([]byte, error) {
	c.mu.Lock()
	e, ok := c.m[url]
	c.mu.Unlock()
	fresh := ok && e.body != nil && now.Sub(e.fetched) < jwksMaxAge
	recent := ok && now.Sub(e.tried) < jwksMinRefetch
	switch {
	case fresh && (!refresh || recent):
		return e.body, nil
	case recent && e.err != nil:
		return nil, fmt.Errorf("%w (not retried before %s)", e.err, e.tried.Add(jwksMinRefetch).UTC().Format(time.RFC3339))
	}
	v, err, _ := c.flight.Do(url, func() (any, error) {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), safehttp.DefaultTimeout)
		defer cancel()
		body, err := c.fetch(ctx, url)
		c.mu.Lock()
		defer c.mu.Unlock()
		cur := c.m[url]
		cur.tried, cur.err = now, err
		if err == nil {
			cur.body, cur.fetched = body, now
		}
		c.m[url] = cur
		return body, err
	})
	if err != nil {
		if fresh {
			return e.body, nil
		}
		return nil, err
	}
	return v.([]byte), nil
}

func (c *jwksCache) fetch(ctx context.Context, url string) ([]byte, error) {
	resp, err := safehttp.Get(ctx, c.client, url, maxJWKSBody)
	if err != nil {
		return nil, err
	}
	if resp.Status != http.StatusOK {
		return nil, fmt.Errorf("JWKS URL answered %d", resp.Status)
	}
	return resp.Body, nil
}
