package token

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jwk"

	"github.com/lanyardhq/lanyard/broker"
)

// Defaults of RemoteOptions.
const (
	// DefaultMinRefetch is RemoteOptions.MinRefetch when it is zero.
	DefaultMinRefetch = time.Minute
	// DefaultJWKSMaxAge is RemoteOptions.MaxAge when it is zero.
	DefaultJWKSMaxAge = 10 * time.Minute
	// DefaultJWKSMaxStale is RemoteOptions.MaxStale when it is zero (or
	// MaxAge, if that is longer).
	DefaultJWKSMaxStale = 24 * time.Hour
	// MaxJWKSSize is the largest JWKS document a RemoteVerifier reads.
	MaxJWKSSize = 1 << 20
	// remoteFetchTimeout bounds one JWKS fetch when the HTTP client has no
	// timeout of its own.
	remoteFetchTimeout = 10 * time.Second
)

// RemoteOptions configures NewRemoteVerifier.
type RemoteOptions struct {
	// Issuer is the only "iss" accepted. Required.
	Issuer string
	// JWKSURL is where the issuer publishes its public keys (the jwks_uri of
	// its RFC 8414 metadata). Required.
	JWKSURL string
	// HTTP fetches the JWKS; nil means a client with a 10 second timeout.
	HTTP *http.Client
	// MinRefetch is the least time between two fetches of the JWKS caused by
	// a token whose kid is not in the cached set (a key rotated in, or a
	// forged kid). However many such tokens arrive, the verifier fetches at
	// most once per MinRefetch. Default DefaultMinRefetch.
	MinRefetch time.Duration
	// MaxAge is how long a fetched JWKS is used before the next Verify
	// fetches it again, so that a key the issuer stopped publishing stops
	// being trusted. A failed refetch keeps the old set (and is retried
	// after MinRefetch). Default DefaultJWKSMaxAge.
	MaxAge time.Duration
	// MaxStale is how long after its last successful fetch a JWKS may
	// still be used while refetches fail: past it, Verify fails with
	// broker.ErrUnavailable rather than trust keys the issuer may long
	// have withdrawn (a key it revoked after a compromise, say). Default
	// DefaultJWKSMaxStale, or MaxAge if that is longer; it may not be
	// shorter than MaxAge.
	MaxStale time.Duration
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

func (o RemoteOptions) withDefaults() RemoteOptions {
	if o.HTTP == nil {
		o.HTTP = &http.Client{Timeout: remoteFetchTimeout}
	}
	if o.MinRefetch == 0 {
		o.MinRefetch = DefaultMinRefetch
	}
	if o.MaxAge == 0 {
		o.MaxAge = DefaultJWKSMaxAge
	}
	if o.MaxStale == 0 {
		o.MaxStale = max(DefaultJWKSMaxStale, o.MaxAge)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return o
}

func (o RemoteOptions) validate() error {
	var errs []error
	if o.Issuer == "" {
		errs = append(errs, errors.New("issuer is required"))
	}
	if o.JWKSURL == "" {
		errs = append(errs, errors.New("JWKS URL is required"))
	}
	if o.MinRefetch < 0 {
		errs = append(errs, errors.New("min refetch is negative"))
	}
	if o.MaxAge < 0 {
		errs = append(errs, errors.New("max age is negative"))
	}
	if o.MaxStale < 0 {
		errs = append(errs, errors.New("max stale is negative"))
	} else if o.MaxStale < o.MaxAge {
		errs = append(errs, errors.New("max stale is shorter than max age"))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("token remote verifier options: %w: %w", broker.ErrInvalid, err)
	}
	return nil
}

// RemoteVerifier verifies access tokens the way Keyring.Verify does, with
// the public keys an issuer publishes at its JWKS URL instead of the key
// set in the secret store: it is what an MCP server uses. It caches the
// JWKS; a token signed with a kid it does not know makes it fetch the set
// again, at most once per MinRefetch. It is safe for concurrent use.
type RemoteVerifier struct {
	opts RemoteOptions
	cur  atomic.Pointer[remoteSet]

	mu          sync.Mutex // serialises fetches; guards lastAttempt and fetches
	lastAttempt time.Time  // of the last fetch, successful or not
	fetches     int
}

// remoteSet is an immutable snapshot of a fetched JWKS.
type remoteSet struct {
	fetched time.Time
	keys    map[string]remoteKey
}

type remoteKey struct {
	alg jwa.SignatureAlgorithm
	pub any
}

// NewRemoteVerifier returns a verifier for tokens of opts.Issuer. It does
// not fetch anything: the first Verify (or Refresh) does.
func NewRemoteVerifier(opts RemoteOptions) (*RemoteVerifier, error) {
	opts = opts.withDefaults()
	if err := opts.validate(); err != nil {
		return nil, err
	}
	return &RemoteVerifier{opts: opts}, nil
}

// String describes the verifier.
func (v *RemoteVerifier) String() string {
	n := 0
	if st := v.cur.Load(); st != nil {
		n = len(st.keys)
	}
	return fmt.Sprintf("token.RemoteVerifier{issuer: %q, jwks: %q, keys: %d}", v.opts.Issuer, v.opts.JWKSURL, n)
}

// Fetches returns how many times the verifier has fetched the JWKS,
// failed attempts included.
func (v *RemoteVerifier) Fetches() int {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.fetches
}

// Refresh fetches the JWKS now, whatever MinRefetch says. On error the
// verifier keeps the set it had; the error wraps broker.ErrUnavailable.
func (v *RemoteVerifier) Refresh(ctx context.Context) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.fetchLocked(ctx)
}

// Verify checks raw as Keyring.Verify does (typ at+jwt, a trusted key with
// that key's algorithm, iss, exp and iat with ClockSkew, the required
// claims) and returns its claims; it does not check the audience. A token
// that fails these checks gets an error wrapping ErrInvalidToken. When the
// JWKS cannot be fetched and no cached key could decide, or the cached set
// was last fetched more than MaxStale ago, the error wraps
// broker.ErrUnavailable instead.
func (v *RemoteVerifier) Verify(ctx context.Context, raw string) (Claims, error) {
	now := v.opts.Now()
	st := v.cur.Load()
	if st == nil || now.Sub(st.fetched) >= v.opts.MaxAge {
		// First use, or the set is old: fetch (rate-limited), keep the old
		// set if that fails.
		err := v.refetch(ctx, st)
		if st = v.cur.Load(); st == nil {
			if errors.Is(err, errRateLimited) {
				err = fmt.Errorf("token: no JWKS from %s yet: %w", v.opts.JWKSURL, broker.ErrUnavailable)
			}
			return Claims{}, err
		}
		if age := now.Sub(st.fetched); age >= v.opts.MaxStale {
			// Refetches keep failing: past MaxStale the old keys are no
			// longer trusted.
			if err == nil || errors.Is(err, errRateLimited) {
				err = broker.ErrUnavailable
			}
			return Claims{}, fmt.Errorf("token: the JWKS from %s was last fetched %s ago, more than %s: %w",
				v.opts.JWKSURL, age.Truncate(time.Second), v.opts.MaxStale, err)
		}
	}
	c, missing, err := v.verifyWith(st, raw, now)
	if !missing {
		return c, err
	}
	// The kid is not in the set: the issuer may have rotated. Fetch again,
	// unless someone did (or tried) within MinRefetch.
	fetchErr := v.refetch(ctx, st)
	if next := v.cur.Load(); next != st {
		c, _, err = v.verifyWith(next, raw, now)
		return c, err
	}
	if fetchErr != nil && !errors.Is(fetchErr, errRateLimited) {
		return Claims{}, fetchErr
	}
	return c, err
}

// verifyWith verifies raw with the keys of st and reports whether it
// failed only because its kid is not there.
func (v *RemoteVerifier) verifyWith(st *remoteSet, raw string, now time.Time) (c Claims, missing bool, err error) {
	c, err = verify(raw, v.opts.Issuer, now, func(kid string) (jwa.SignatureAlgorithm, any, bool) {
		k, ok := st.keys[kid]
		if !ok {
			missing = true
		}
		return k.alg, k.pub, ok
	})
	return c, missing && err != nil, err
}

// errRateLimited says that a refetch was not attempted.
var errRateLimited = errors.New("JWKS fetched too recently")

// refetch fetches the JWKS unless the set has changed since seen was
// loaded (another caller fetched) or the last attempt was less than
// MinRefetch ago.
func (v *RemoteVerifier) refetch(ctx context.Context, seen *remoteSet) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.cur.Load() != seen {
		return nil
	}
	if !v.lastAttempt.IsZero() && v.opts.Now().Sub(v.lastAttempt) < v.opts.MinRefetch {
		return errRateLimited
	}
	return v.fetchLocked(ctx)
}

// fetchLocked fetches and installs the JWKS; v.mu is held.
func (v *RemoteVerifier) fetchLocked(ctx context.Context) error {
	v.lastAttempt = v.opts.Now()
	v.fetches++
	// The fetch serves every waiting caller: one caller giving up must not
	// fail it for the others (and use up the rate limit).
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), remoteFetchTimeout)
	defer cancel()
	st, err := v.fetch(ctx)
	if err != nil {
		return fmt.Errorf("token: fetch JWKS from %s: %w: %w", v.opts.JWKSURL, broker.ErrUnavailable, err)
	}
	v.cur.Store(st)
	return nil
}

func (v *RemoteVerifier) fetch(ctx context.Context) (*remoteSet, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, v.opts.JWKSURL, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/jwk-set+json, application/json")
	resp, err := v.opts.HTTP.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, MaxJWKSSize))
		return nil, fmt.Errorf("status %d", resp.StatusCode)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, MaxJWKSSize+1))
	if err != nil {
		return nil, err
	}
	if len(body) > MaxJWKSSize {
		return nil, fmt.Errorf("larger than %d bytes", MaxJWKSSize)
	}
	set, err := jwk.Parse(body)
	if err != nil {
		return nil, errors.New("not a JWK set")
	}
	st := &remoteSet{fetched: v.opts.Now(), keys: make(map[string]remoteKey, set.Len())}
	dup := map[string]bool{}
	for i := range set.Len() {
		key, _ := set.Key(i)
		kid, k, ok := usableKey(key)
		if !ok {
			continue // not a signing key of an algorithm we accept
		}
		if _, seen := st.keys[kid]; seen || dup[kid] {
			delete(st.keys, kid) // ambiguous: trust neither
			dup[kid] = true
			continue
		}
		st.keys[kid] = k
	}
	if len(st.keys) == 0 {
		return nil, errors.New("no usable signing key")
	}
	return st, nil
}

// usableKey returns the kid and public key of a JWK that may verify
// tokens: it has a kid, use "sig" (or none), an alg Lanyard signs with,
// and a public key of the kind and size that alg needs.
func usableKey(key jwk.Key) (string, remoteKey, bool) {
	if key == nil || key.KeyID() == "" {
		return "", remoteKey{}, false
	}
	if u := key.KeyUsage(); u != "" && u != string(jwk.ForSignature) {
		return "", remoteKey{}, false
	}
	alg, ok := algs[key.Algorithm().String()]
	if !ok {
		return "", remoteKey{}, false
	}
	pubKey, err := jwk.PublicKeyOf(key)
	if err != nil {
		return "", remoteKey{}, false
	}
	var pub any
	if err := pubKey.Raw(&pub); err != nil {
		return "", remoteKey{}, false
	}
	switch alg {
	case jwa.ES256:
		k, isEC := pub.(*ecdsa.PublicKey)
		ok = isEC && k.Curve == elliptic.P256()
	case jwa.RS256:
		k, isRSA := pub.(*rsa.PublicKey)
		ok = isRSA && k.N.BitLen() >= rsaKeyBits
	case jwa.EdDSA:
		k, isEd := pub.(ed25519.PublicKey)
		ok = isEd && len(k) == ed25519.PublicKeySize
	default:
		ok = false
	}
	if !ok {
		return "", remoteKey{}, false
	}
	return key.KeyID(), remoteKey{alg: alg, pub: pub}, true
}
