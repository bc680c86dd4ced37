package token

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jwk"
	"github.com/lestrrat-go/jwx/v2/jws"
	"github.com/lestrrat-go/jwx/v2/jwt"
)

// Client assertions (RFC 7523 §2.2, private_key_jwt): how a registered MCP
// server authenticates to Lanyard with a key pair instead of a shared
// secret. The server signs a short-lived JWT with its private key; Lanyard
// verifies it against the public keys the server registered (inline JWKS or
// a JWKS URL). The functions here are the module's only use of jwx for it.

// AssertionType is the client_assertion_type of RFC 7523 §2.2.
const AssertionType = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"

// MaxAssertionLifetime is the longest an assertion may still be valid when
// it is presented (exp - now); a longer-lived one is refused.
const MaxAssertionLifetime = 5 * time.Minute

// Assertion errors. Every error VerifyAssertion returns wraps
// ErrInvalidAssertion; ErrUnknownKey as well when no key of the set
// verified the signature (a caller may refetch a JWKS URL once).
var (
	ErrInvalidAssertion = errors.New("invalid client assertion")
	ErrUnknownKey       = errors.New("no registered key verifies the assertion")
)

// AssertionOptions say what VerifyAssertion accepts.
type AssertionOptions struct {
	// ClientID must be both iss and sub.
	ClientID string
	// Audiences: aud must contain at least one of them (the issuer, the
	// token endpoint, the endpoint the assertion was sent to).
	Audiences []string
	// Now is the time to check exp, nbf and iat against.
	Now time.Time
}

// Assertion is what a verified assertion said.
type Assertion struct {
	ClientID  string
	JTI       string
	ExpiresAt time.Time
}

// assertionAlgs are the asymmetric algorithms accepted in assertions. HMAC
// and "none" never are: a JWKS holds public keys only.
var assertionAlgs = map[jwa.SignatureAlgorithm]bool{
	jwa.ES256: true, jwa.ES384: true, jwa.ES512: true, jwa.RS256: true, jwa.RS384: true, jwa.RS512: true,
	jwa.PS256: true, jwa.PS384: true, jwa.PS512: true, jwa.EdDSA: true,
}

// AssertionSubject returns the sub claim of raw WITHOUT verifying anything:
// only to find whose keys to verify it with, when the request carries no
// client_id.
func AssertionSubject(raw string) (string, error) {
	if len(raw) > MaxTokenSize || strings.Count(raw, ".") != 2 {
		return "", fmt.Errorf("%w: malformed", ErrInvalidAssertion)
	}
	tok, err := jwt.ParseInsecure([]byte(raw))
	if err != nil || tok.Subject() == "" {
		return "", fmt.Errorf("%w: malformed or without sub", ErrInvalidAssertion)
	}
	return tok.Subject(), nil
}

// VerifyAssertion verifies an RFC 7523 client assertion against jwks (the
// JSON of a JWK Set of public keys): a compact JWS signed with an
// asymmetric algorithm by a key of the set (the one named by kid when the
// header has one; a key's own alg, if set, must match); iss and sub equal
// o.ClientID; typ absent, JWT or client-authentication+jwt (never at+jwt:
// an access token is not an assertion); aud contains one of o.Audiences;
// exp present, not past (with ClockSkew) and at most MaxAssertionLifetime
// ahead; jti present. The caller must make sure that the jti is used only
// once.
func VerifyAssertion(raw string, jwks []byte, o AssertionOptions) (Assertion, error) {
	if len(raw) > MaxTokenSize || strings.Count(raw, ".") != 2 {
		return Assertion{}, fmt.Errorf("%w: not a compact JWS", ErrInvalidAssertion)
	}
	// Explicit typing (RFC 8725 §3.11): an access token (at+jwt), or any
	// other typed JWT the client's key signed, is not an assertion.
	msg, err := jws.Parse([]byte(raw))
	if err != nil || len(msg.Signatures()) != 1 {
		return Assertion{}, fmt.Errorf("%w: not a compact JWS", ErrInvalidAssertion)
	}
	if typ := msg.Signatures()[0].ProtectedHeaders().Type(); !assertionTyp(typ) {
		return Assertion{}, fmt.Errorf("%w: typ is not JWT or client-authentication+jwt", ErrInvalidAssertion)
	}
	set, err := jwk.Parse(jwks)
	if err != nil {
		return Assertion{}, fmt.Errorf("%w: the registered JWKS is not a valid JWK Set", ErrInvalidAssertion)
	}
	matched := false
	provider := jws.KeyProviderFunc(func(_ context.Context, sink jws.KeySink, sig *jws.Signature, _ *jws.Message) error {
		h := sig.ProtectedHeaders()
		alg := h.Algorithm()
		if !assertionAlgs[alg] {
			return reject("algorithm not allowed")
		}
		for i := range set.Len() {
			k, _ := set.Key(i)
			if kid := h.KeyID(); kid != "" && k.KeyID() != kid {
				continue
			}
			if ka := k.Algorithm().String(); ka != "" && ka != alg.String() {
				continue
			}
			if u := k.KeyUsage(); u != "" && u != string(jwk.ForSignature) {
				continue
			}
			var pub any
			pk, err := jwk.PublicKeyOf(k)
			if err != nil || pk.Raw(&pub) != nil {
				continue
			}
			matched = true
			sink.Key(alg, pub)
		}
		if !matched {
			return reject("no registered key matches the header")
		}
		return nil
	})
	tok, err := jwt.Parse([]byte(raw),
		jwt.WithKeyProvider(provider),
		jwt.WithValidate(true),
		jwt.WithClock(jwt.ClockFunc(func() time.Time { return o.Now })),
		jwt.WithAcceptableSkew(ClockSkew),
		jwt.WithIssuer(o.ClientID),
		jwt.WithSubject(o.ClientID),
		jwt.WithRequiredClaim(jwt.ExpirationKey),
		jwt.WithRequiredClaim(jwt.JwtIDKey),
		jwt.WithRequiredClaim(jwt.AudienceKey),
	)
	if err != nil {
		reason := classify(err)
		if !matched || reason == "bad signature" {
			return Assertion{}, fmt.Errorf("%w: %w (%s)", ErrInvalidAssertion, ErrUnknownKey, reason)
		}
		switch {
		case errors.Is(err, jwt.ErrInvalidIssuer()):
			reason = "iss is not the client"
		case strings.Contains(err.Error(), `"sub"`):
			reason = "sub is not the client"
		}
		return Assertion{}, fmt.Errorf("%w: %s", ErrInvalidAssertion, reason)
	}
	if !slices.ContainsFunc(tok.Audience(), func(a string) bool { return slices.Contains(o.Audiences, a) }) {
		return Assertion{}, fmt.Errorf("%w: aud is not this server", ErrInvalidAssertion)
	}
	if tok.Expiration().Sub(o.Now) > MaxAssertionLifetime+ClockSkew {
		return Assertion{}, fmt.Errorf("%w: exp is more than %s ahead", ErrInvalidAssertion, MaxAssertionLifetime)
	}
	if tok.JwtID() == "" {
		return Assertion{}, fmt.Errorf("%w: empty jti", ErrInvalidAssertion)
	}
	return Assertion{ClientID: o.ClientID, JTI: tok.JwtID(), ExpiresAt: tok.Expiration()}, nil
}

// assertionTyp reports whether typ, a JWS typ header, is one a client
// assertion may carry: none, "JWT", or "client-authentication+jwt"
// (draft-ietf-oauth-rfc7523bis), case-insensitively and with or without
// the "application/" prefix (RFC 7515 §4.1.9).
func assertionTyp(typ string) bool {
	if typ == "" {
		return true
	}
	t := strings.ToLower(typ)
	t = strings.TrimPrefix(t, "application/")
	return t == "jwt" || t == "client-authentication+jwt"
}

// ClientKey is a key pair an MCP server signs client assertions with. Its
// private half never leaves it: String prints the kid only.
type ClientKey struct {
	alg  jwa.SignatureAlgorithm
	kid  string
	priv any
	pub  jwk.Key
}

// NewClientKey generates a key for "ES256" (default when empty), "RS256" or
// "EdDSA".
func NewClientKey(alg string) (*ClientKey, error) {
	if alg == "" {
		alg = DefaultAlg
	}
	rec, _, err := generate(alg, time.Time{}, time.Time{})
	if err != nil {
		return nil, err
	}
	sk, err := parseKey(rec)
	if err != nil {
		return nil, err
	}
	return &ClientKey{alg: sk.alg, kid: sk.kid, priv: sk.priv, pub: sk.pubJWK}, nil
}

// String names the key only.
func (k *ClientKey) String() string { return "client key " + k.kid }

// KeyID is the key's kid (its RFC 7638 thumbprint).
func (k *ClientKey) KeyID() string { return k.kid }

// PublicJWKS returns the JSON of a JWK Set with the public key only: what
// the MCP server registers at Lanyard (inline, or served at its JWKS URL).
func (k *ClientKey) PublicJWKS() ([]byte, error) {
	set := jwk.NewSet()
	if err := set.AddKey(k.pub); err != nil {
		return nil, err
	}
	return json.Marshal(set)
}

// PublicJWKSet parses raw as a JWK Set an MCP server registers for
// private_key_jwt and returns the JSON of a set with only the public half
// of each key (kid, alg and use kept): a private key given by mistake is
// never stored. It refuses a set that does not parse, has no key, or has a
// symmetric (oct) key, which would be a shared secret, or a key of a kind
// no assertion algorithm uses.
func PublicJWKSet(raw []byte) ([]byte, error) {
	set, err := jwk.Parse(raw)
	if err != nil {
		return nil, errors.New("not a JWK Set")
	}
	if set.Len() == 0 {
		return nil, errors.New("the JWK Set has no key")
	}
	out := jwk.NewSet()
	for i := range set.Len() {
		k, _ := set.Key(i)
		switch k.KeyType() {
		case jwa.EC, jwa.RSA, jwa.OKP:
		case jwa.OctetSeq:
			return nil, fmt.Errorf("key %d is symmetric (kty oct): register public keys only", i)
		default:
			return nil, fmt.Errorf("key %d has an unsupported kty %q", i, k.KeyType())
		}
		pub, err := jwk.PublicKeyOf(k)
		if err != nil {
			return nil, fmt.Errorf("key %d: no public key: %w", i, err)
		}
		var rawPub any
		if err := pub.Raw(&rawPub); err != nil {
			return nil, fmt.Errorf("key %d is malformed", i)
		}
		if err := out.AddKey(pub); err != nil {
			return nil, fmt.Errorf("key %d: %w", i, err)
		}
	}
	return json.Marshal(out)
}

// AssertionClaims are the claims of an assertion to sign. Zero IssuedAt
// means now; zero ExpiresAt means IssuedAt + 1 minute; empty JTI means a
// random one.
type AssertionClaims struct {
	ClientID  string
	Audience  string
	JTI       string
	IssuedAt  time.Time
	ExpiresAt time.Time
}

// SignAssertion signs an RFC 7523 client assertion: iss = sub = ClientID,
// aud = Audience, with kid and alg in the header.
func (k *ClientKey) SignAssertion(c AssertionClaims) (string, error) {
	if c.IssuedAt.IsZero() {
		c.IssuedAt = time.Now()
	}
	if c.ExpiresAt.IsZero() {
		c.ExpiresAt = c.IssuedAt.Add(time.Minute)
	}
	if c.JTI == "" {
		c.JTI = randomID()
	}
	tok := jwt.New()
	tok.Options().Enable(jwt.FlattenAudience)
	for name, v := range map[string]any{
		jwt.IssuerKey: c.ClientID, jwt.SubjectKey: c.ClientID, jwt.AudienceKey: c.Audience,
		jwt.JwtIDKey: c.JTI, jwt.IssuedAtKey: c.IssuedAt, jwt.ExpirationKey: c.ExpiresAt,
	} {
		if err := tok.Set(name, v); err != nil {
			return "", fmt.Errorf("sign assertion: claim %s: %w", name, err)
		}
	}
	hdr := jws.NewHeaders()
	if err := hdr.Set(jws.KeyIDKey, k.kid); err != nil {
		return "", err
	}
	b, err := jwt.Sign(tok, jwt.WithKey(k.alg, k.priv, jws.WithProtectedHeaders(hdr)))
	if err != nil {
		return "", fmt.Errorf("sign assertion: %w", err)
	}
	return string(b), nil
}

func randomID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}
