// Package token issues and verifies Lanyard's access tokens: JWTs per RFC 9068
// (header typ "at+jwt"), signed with keys that live in the secret store.
//
// It sits between the authorization server (which calls Sign when it issues a
// token and serves PublicJWKS at its JWKS endpoint), the MCP-server side
// (which calls Verify), and the `lanyard keys` commands (Rotate, Keys). It is
// the one package of the module that imports github.com/lestrrat-go/jwx.
//
// # Key lifecycle
//
// The whole key set is one secret (see [Options.Secrets]) updated with
// check-and-set, so several replicas and the CLI can share it. Each key has a
// not-before time; at any moment the newest key whose not-before has passed
// is active and signs. Rotate adds a key whose not-before lies PublishDelay in
// the future: until then it is pending, published in the JWKS but not used,
// so that resource servers that cache the JWKS learn it before they see a
// token signed by it. When the new key becomes active the old one starts
// retiring: it no longer signs but still verifies, and stays published until
// MaxTokenTTL plus ClockSkew after its retirement, by which time every token
// it signed has expired. After that it is expired: not published, not
// trusted, and deleted from the store by the next Rotate.
//
// Replicas must call Reload more often than PublishDelay so that they know a
// new key before it starts signing elsewhere.
package token

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lanyardhq/lanyard/broker"
	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jws"
	"github.com/lestrrat-go/jwx/v2/jwt"
)

// Token constants.
const (
	// TypeHeader is the JOSE "typ" header of every access token (RFC 9068 §2.1).
	TypeHeader = "at+jwt"
	// ClockSkew is how far clocks may disagree: Verify accepts a token up to
	// ClockSkew after its exp (and with an iat up to ClockSkew in the future),
	// and retired keys are kept ClockSkew longer than MaxTokenTTL.
	ClockSkew = 30 * time.Second
	// MaxTokenSize is the longest token Verify looks at, in bytes.
	MaxTokenSize = 8 << 10

	// DefaultAlg is the signing algorithm when Options.Alg is empty.
	DefaultAlg = "ES256"
	// DefaultMaxTokenTTL is Options.MaxTokenTTL when it is zero.
	DefaultMaxTokenTTL = time.Hour
	// DefaultPublishDelay is Options.PublishDelay when it is zero.
	DefaultPublishDelay = 10 * time.Minute
)

// Claim names beyond the registered JWT claims.
const (
	claimClientID = "client_id"
	claimScope    = "scope"
	claimGrantID  = "grant_id"
)

// ErrInvalidToken is wrapped by every error Verify returns. The message says
// why (expired, unknown key, ...) but never contains the token.
var ErrInvalidToken = errors.New("invalid access token")

// keySetKey is where the key set lives in the secret store.
var keySetKey = broker.SecretKey{Owner: "system", Name: "signing-keys"}

// maxAttempts bounds the read-modify-write retries after a lost
// check-and-set.
const maxAttempts = 10

// Claims are the claims of an access token (RFC 9068 §2.2).
type Claims struct {
	// Issuer is "iss". Sign fills it from Options.Issuer when empty and
	// refuses any other value.
	Issuer string
	// Subject is "sub": the user the token was issued for.
	Subject string
	// Audience is "aud": the one canonical URI of the MCP server the token is
	// for. It is serialised as a single string.
	Audience string
	// ClientID is "client_id": the OAuth client the token was issued to.
	ClientID string
	// Scopes are serialised as the space-delimited "scope" claim (omitted
	// when empty).
	Scopes []string
	// GrantID is "grant_id": the grant the token was issued from.
	GrantID string
	// JTI is "jti". Sign generates a random one when empty.
	JTI string
	// IssuedAt is "iat" (Sign: Now when zero) and ExpiresAt is "exp" (Sign:
	// IssuedAt + MaxTokenTTL when zero). Both have a precision of one second.
	IssuedAt, ExpiresAt time.Time
}

// Options configures Open.
type Options struct {
	// Issuer is the "iss" of every token signed, and the only one Verify
	// accepts. Required.
	Issuer string
	// Alg is the algorithm of new keys: "ES256" (default), "RS256" or
	// "EdDSA". Keys already in the store keep their own algorithm.
	Alg string
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// MaxTokenTTL is the longest life of an access token; Sign refuses longer
	// ones. A retired key is kept this long (plus ClockSkew) after it stops
	// signing. Default DefaultMaxTokenTTL.
	MaxTokenTTL time.Duration
	// PublishDelay is how long a new key is published in the JWKS before it
	// signs. Default DefaultPublishDelay.
	PublishDelay time.Duration
	// Secrets holds the key set. Required.
	Secrets broker.SecretStore
	// Observer, if not nil, is told about Open, Rotate and Reload (component
	// "token"); Sign and Verify are not observed.
	Observer broker.Observer
}

func (o Options) withDefaults() Options {
	if o.Alg == "" {
		o.Alg = DefaultAlg
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.MaxTokenTTL == 0 {
		o.MaxTokenTTL = DefaultMaxTokenTTL
	}
	if o.PublishDelay == 0 {
		o.PublishDelay = DefaultPublishDelay
	}
	return o
}

// validate lists every problem at once.
func (o Options) validate() error {
	var errs []error
	if o.Issuer == "" {
		errs = append(errs, errors.New("issuer is required"))
	}
	if _, ok := algs[o.Alg]; !ok {
		errs = append(errs, fmt.Errorf("alg %q is not one of ES256, RS256, EdDSA", o.Alg))
	}
	if o.MaxTokenTTL < 0 {
		errs = append(errs, errors.New("max token TTL is negative"))
	}
	if o.PublishDelay < 0 {
		errs = append(errs, errors.New("publish delay is negative"))
	}
	if o.Secrets == nil {
		errs = append(errs, errors.New("secret store is required"))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("token options: %w: %w", broker.ErrInvalid, err)
	}
	return nil
}

// Keyring signs and verifies access tokens with the key set from the secret
// store. Make one with Open. It is safe for concurrent use. Sign, Verify and PublicJWKS use the
// copy in memory and never call the store; Rotate and Reload refresh it.
type Keyring struct {
	opts Options
	cur  atomic.Pointer[keySet]
	mu   sync.Mutex // serialises Rotate and Reload of this Keyring
}

// String describes the keyring without any key material.
func (k *Keyring) String() string {
	st := k.cur.Load()
	if st == nil {
		return "token.Keyring{}"
	}
	return fmt.Sprintf("token.Keyring{issuer: %q, keys: %d, version: %d}", k.opts.Issuer, len(st.keys), st.version)
}

// GoString implements fmt.GoStringer like String.
func (k *Keyring) GoString() string { return k.String() }

// Open loads the key set from opts.Secrets, creating it with one key that
// signs at once if the store has none. When several replicas open an empty
// store together exactly one set is created and all of them use it.
func Open(ctx context.Context, opts Options) (_ *Keyring, err error) {
	opts = opts.withDefaults()
	if err := opts.validate(); err != nil {
		return nil, err
	}
	k := &Keyring{opts: opts}
	defer func(start time.Time) { opts.Observer.Observe(componentName, "open", start, err) }(time.Now())
	for range maxAttempts {
		st, err := k.fetch(ctx)
		switch {
		case err == nil:
			if st.signerAt(k.opts.Now()) == nil {
				// A set without a key that may sign now (emptied by hand):
				// add one that signs immediately.
				if st, err = k.repair(ctx); err != nil {
					return nil, err
				}
			}
			k.cur.Store(st)
			return k, nil
		case !errors.Is(err, broker.ErrNotFound):
			return nil, fmt.Errorf("token open: %w", err)
		}
		now := k.opts.Now()
		rec, _, err := generate(k.opts.Alg, now, now)
		if err != nil {
			return nil, fmt.Errorf("token open: %w", err)
		}
		st, err = k.write(ctx, []storedKey{rec}, broker.CASCreate)
		if errors.Is(err, broker.ErrAlreadyExists) || errors.Is(err, broker.ErrConflict) {
			continue // another replica created it first: use theirs
		}
		if err != nil {
			return nil, fmt.Errorf("token open: %w", err)
		}
		k.cur.Store(st)
		return k, nil
	}
	return nil, fmt.Errorf("token open: gave up after %d attempts: %w", maxAttempts, broker.ErrConflict)
}

// Sign returns c as a signed access token. Missing Issuer, JTI, IssuedAt and
// ExpiresAt are filled in; Subject, Audience, ClientID and GrantID are
// required, and the token may live at most MaxTokenTTL. The header carries
// typ "at+jwt" and the kid of the active key.
func (k *Keyring) Sign(_ context.Context, c Claims) (string, error) {
	now := k.opts.Now()
	c, err := k.complete(c, now)
	if err != nil {
		return "", err
	}
	key := k.set().signerAt(now)
	if key == nil {
		return "", fmt.Errorf("token sign: no key may sign at %s: %w", now.UTC().Format(time.RFC3339), broker.ErrUnavailable)
	}
	tok := jwt.New()
	tok.Options().Enable(jwt.FlattenAudience)
	for _, kv := range []struct {
		name string
		v    any
	}{
		{jwt.IssuerKey, c.Issuer},
		{jwt.SubjectKey, c.Subject},
		{jwt.AudienceKey, c.Audience},
		{claimClientID, c.ClientID},
		{claimGrantID, c.GrantID},
		{jwt.JwtIDKey, c.JTI},
		{jwt.IssuedAtKey, c.IssuedAt},
		{jwt.ExpirationKey, c.ExpiresAt},
	} {
		if err := tok.Set(kv.name, kv.v); err != nil {
			return "", fmt.Errorf("token sign: claim %s: %w", kv.name, err)
		}
	}
	if len(c.Scopes) > 0 {
		if err := tok.Set(claimScope, strings.Join(c.Scopes, " ")); err != nil {
			return "", fmt.Errorf("token sign: claim scope: %w", err)
		}
	}
	hdr := jws.NewHeaders()
	if err := hdr.Set(jws.TypeKey, TypeHeader); err != nil {
		return "", fmt.Errorf("token sign: header: %w", err)
	}
	if err := hdr.Set(jws.KeyIDKey, key.kid); err != nil {
		return "", fmt.Errorf("token sign: header: %w", err)
	}
	b, err := jwt.Sign(tok, jwt.WithKey(key.alg, key.priv, jws.WithProtectedHeaders(hdr)))
	if err != nil {
		return "", fmt.Errorf("token sign with key %s: %w", key.kid, err)
	}
	return string(b), nil
}

// complete fills in defaults and checks c.
func (k *Keyring) complete(c Claims, now time.Time) (Claims, error) {
	var errs []error
	switch c.Issuer {
	case "":
		c.Issuer = k.opts.Issuer
	case k.opts.Issuer:
	default:
		errs = append(errs, fmt.Errorf("issuer %q is not this server's", c.Issuer))
	}
	for _, f := range []struct{ name, v string }{
		{"subject", c.Subject}, {"audience", c.Audience}, {"client_id", c.ClientID}, {"grant_id", c.GrantID},
	} {
		if f.v == "" {
			errs = append(errs, fmt.Errorf("%s is required", f.name))
		}
	}
	for _, s := range c.Scopes {
		if !validScope(s) {
			errs = append(errs, fmt.Errorf("scope %q is not a scope-token (RFC 6749 §3.3)", s))
		}
	}
	if c.JTI == "" {
		b := make([]byte, 16)
		if _, err := rand.Read(b); err != nil {
			return c, fmt.Errorf("token sign: jti: %w", err)
		}
		c.JTI = base64.RawURLEncoding.EncodeToString(b)
	}
	if c.IssuedAt.IsZero() {
		c.IssuedAt = now
	}
	if c.ExpiresAt.IsZero() {
		c.ExpiresAt = c.IssuedAt.Add(k.opts.MaxTokenTTL)
	}
	c.IssuedAt = c.IssuedAt.Truncate(time.Second)
	c.ExpiresAt = c.ExpiresAt.Truncate(time.Second)
	if d := c.IssuedAt.Sub(now); d > ClockSkew || d < -ClockSkew {
		errs = append(errs, errors.New("issued-at is not now"))
	}
	if !c.ExpiresAt.After(c.IssuedAt) {
		errs = append(errs, errors.New("expiry is not after issued-at"))
	}
	if c.ExpiresAt.Sub(now) > k.opts.MaxTokenTTL {
		errs = append(errs, fmt.Errorf("lifetime exceeds the maximum of %s", k.opts.MaxTokenTTL))
	}
	if err := errors.Join(errs...); err != nil {
		return c, fmt.Errorf("token sign: %w: %w", broker.ErrInvalid, err)
	}
	return c, nil
}

// validScope reports whether s is a scope-token: 1*( %x21 / %x23-5B / %x5D-7E ).
func validScope(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x21 || c > 0x7e || c == '"' || c == '\\' {
			return false
		}
	}
	return true
}

// reject is the reason a token was refused; it never holds token data.
type reject string

// errUnknownKey is the reason for a kid that no trusted key has.
const errUnknownKey = reject("unknown key")

func (r reject) Error() string { return string(r) }

func invalid(reason string) error { return fmt.Errorf("%w: %s", ErrInvalidToken, reason) }

// Verify checks raw and returns its claims: it must be a compact JWS with
// typ at+jwt, signed by a known, unexpired key with that key's algorithm;
// iss must be Options.Issuer; exp and iat are checked against Now with
// ClockSkew; sub, aud (exactly one), client_id, grant_id, jti, iat and exp
// must be present. Pending keys are trusted as well as active and retiring
// ones: they are already published, and another replica's clock may run a
// little ahead. Every error wraps ErrInvalidToken. Verify does not check
// the audience: the caller compares Claims.Audience with its own URI.
func (k *Keyring) Verify(_ context.Context, raw string) (Claims, error) {
	st := k.set()
	now := k.opts.Now()
	return verify(raw, k.opts.Issuer, now, func(kid string) (jwa.SignatureAlgorithm, any, bool) {
		key := st.byKid[kid]
		if key == nil || key.state(now) == StateExpired {
			return "", nil, false
		}
		return key.alg, key.pub, true
	})
}

// verify holds the checks that Keyring.Verify and RemoteVerifier.Verify
// share. lookup returns the algorithm and public key of a trusted kid.
func verify(raw, issuer string, now time.Time, lookup func(kid string) (jwa.SignatureAlgorithm, any, bool)) (Claims, error) {
	if len(raw) > MaxTokenSize {
		return Claims{}, invalid("too large")
	}
	if strings.Count(raw, ".") != 2 {
		return Claims{}, invalid("not a compact JWS")
	}
	provider := jws.KeyProviderFunc(func(_ context.Context, sink jws.KeySink, sig *jws.Signature, _ *jws.Message) error {
		h := sig.ProtectedHeaders()
		if typ := h.Type(); !strings.EqualFold(typ, TypeHeader) && !strings.EqualFold(typ, "application/"+TypeHeader) {
			return reject("typ is not at+jwt")
		}
		alg, pub, ok := lookup(h.KeyID())
		if !ok {
			return errUnknownKey
		}
		if h.Algorithm() != alg {
			return reject("algorithm does not match the key")
		}
		sink.Key(alg, pub)
		return nil
	})
	tok, err := jwt.Parse([]byte(raw),
		jwt.WithKeyProvider(provider),
		jwt.WithValidate(true),
		jwt.WithClock(jwt.ClockFunc(func() time.Time { return now })),
		jwt.WithAcceptableSkew(ClockSkew),
		jwt.WithIssuer(issuer),
		jwt.WithRequiredClaim(jwt.SubjectKey),
		jwt.WithRequiredClaim(jwt.AudienceKey),
		jwt.WithRequiredClaim(jwt.JwtIDKey),
		jwt.WithRequiredClaim(jwt.IssuedAtKey),
		jwt.WithRequiredClaim(jwt.ExpirationKey),
		jwt.WithRequiredClaim(claimClientID),
		jwt.WithRequiredClaim(claimGrantID),
	)
	if err != nil {
		return Claims{}, invalid(classify(err))
	}
	c := Claims{
		Issuer:    tok.Issuer(),
		Subject:   tok.Subject(),
		JTI:       tok.JwtID(),
		IssuedAt:  tok.IssuedAt(),
		ExpiresAt: tok.Expiration(),
	}
	aud := tok.Audience()
	if len(aud) != 1 || aud[0] == "" {
		return Claims{}, invalid("aud is not exactly one resource")
	}
	c.Audience = aud[0]
	var ok bool
	if c.ClientID, ok = stringClaim(tok, claimClientID); !ok || c.ClientID == "" {
		return Claims{}, invalid("client_id is not a string")
	}
	if c.GrantID, ok = stringClaim(tok, claimGrantID); !ok || c.GrantID == "" {
		return Claims{}, invalid("grant_id is not a string")
	}
	if _, present := tok.Get(claimScope); present {
		s, ok := stringClaim(tok, claimScope)
		if !ok {
			return Claims{}, invalid("scope is not a string")
		}
		c.Scopes = strings.Fields(s)
	}
	if c.Subject == "" || c.JTI == "" {
		return Claims{}, invalid("empty sub or jti")
	}
	return c, nil
}

func stringClaim(tok jwt.Token, name string) (string, bool) {
	v, ok := tok.Get(name)
	if !ok {
		return "", false
	}
	s, ok := v.(string)
	return s, ok
}

// classify turns a jwx error into a fixed reason, so that no part of the
// token (which jwx may quote) reaches the caller.
func classify(err error) string {
	var r reject
	switch {
	case errors.As(err, &r):
		return string(r)
	case errors.Is(err, jwt.ErrTokenExpired()):
		return "expired"
	case errors.Is(err, jwt.ErrTokenNotYetValid()):
		return "not yet valid"
	case errors.Is(err, jwt.ErrInvalidIssuedAt()):
		return "issued in the future"
	case errors.Is(err, jwt.ErrInvalidIssuer()):
		return "wrong issuer"
	case errors.Is(err, jwt.ErrRequiredClaim()):
		return "a required claim is missing"
	case jws.IsVerificationError(err):
		return "bad signature"
	case jwt.IsValidationError(err):
		return "claims are not valid"
	default:
		return "malformed"
	}
}
