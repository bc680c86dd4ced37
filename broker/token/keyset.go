package token

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	mathrand "math/rand/v2"
	"slices"
	"time"

	"github.com/lanyardhq/lanyard/broker"
	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jwk"
)

// algs are the signing algorithms Lanyard creates and accepts keys for.
var algs = map[string]jwa.SignatureAlgorithm{
	"ES256": jwa.ES256,
	"RS256": jwa.RS256,
	"EdDSA": jwa.EdDSA,
}

// The stored form of the key set: the secret's one field, fieldKeySet, holds
// the JSON of a storedSet. Each key is a private JWK (with kid, alg and use)
// plus the metadata that drives its lifecycle.
const (
	fieldKeySet   = "keyset"
	storedFormat  = 1
	rsaKeyBits    = 2048
	componentName = "token"
)

type storedSet struct {
	Format int         `json:"format"`
	Keys   []storedKey `json:"keys"`
}

type storedKey struct {
	Created   time.Time       `json:"created"`
	NotBefore time.Time       `json:"not_before"`
	JWK       json.RawMessage `json:"jwk"` // private: never log it
}

// KeyState is where a key is in its lifecycle at a given moment.
type KeyState string

// Key states.
const (
	// StatePending: published in the JWKS, not signing yet.
	StatePending KeyState = "pending"
	// StateActive: the key that signs (published).
	StateActive KeyState = "active"
	// StateRetiring: a newer key signs; this one still verifies the tokens
	// it signed and stays published until DeleteAt.
	StateRetiring KeyState = "retiring"
	// StateExpired: past DeleteAt; neither published nor trusted, and
	// deleted from the store by the next Rotate.
	StateExpired KeyState = "expired"
)

// KeyInfo describes one signing key. It holds no key material.
type KeyInfo struct {
	KID       string
	Alg       string
	Created   time.Time
	NotBefore time.Time // when it starts signing
	RetireAt  time.Time // when a newer key replaces it; zero if none is scheduled
	DeleteAt  time.Time // RetireAt + MaxTokenTTL + ClockSkew; zero if RetireAt is
	State     KeyState
}

// signingKey is one parsed key, ready for use: no JWK parsing on the hot
// paths.
type signingKey struct {
	kid       string
	alg       jwa.SignatureAlgorithm
	created   time.Time
	notBefore time.Time
	retireAt  time.Time
	deleteAt  time.Time
	priv      any // *ecdsa.PrivateKey, *rsa.PrivateKey or ed25519.PrivateKey
	pub       any
	pubJWK    jwk.Key
	rec       storedKey // to write the set back
}

// String names the key only.
func (s *signingKey) String() string { return "signing key " + s.kid }

// GoString implements fmt.GoStringer like String.
func (s *signingKey) GoString() string { return s.String() }

func (s *signingKey) state(now time.Time) KeyState {
	switch {
	case now.Before(s.notBefore):
		return StatePending
	case s.retireAt.IsZero() || now.Before(s.retireAt):
		return StateActive
	case now.Before(s.deleteAt):
		return StateRetiring
	default:
		return StateExpired
	}
}

// keySet is an immutable snapshot of the stored set.
type keySet struct {
	version int
	keys    []*signingKey // by not_before, oldest first
	byKid   map[string]*signingKey
}

// emptySet stands in for the set of a Keyring not made by Open.
var emptySet = &keySet{}

// set returns the current snapshot; never nil.
func (k *Keyring) set() *keySet {
	if st := k.cur.Load(); st != nil {
		return st
	}
	return emptySet
}

// signerAt returns the newest key whose not_before is not after now, or nil.
func (st *keySet) signerAt(now time.Time) *signingKey {
	for i := len(st.keys) - 1; i >= 0; i-- {
		if !st.keys[i].notBefore.After(now) {
			return st.keys[i]
		}
	}
	return nil
}

// live returns the stored records of every key that has not expired at now.
func (st *keySet) live(now time.Time) []storedKey {
	var out []storedKey
	for _, key := range st.keys {
		if key.state(now) != StateExpired {
			out = append(out, key.rec)
		}
	}
	return out
}

// generate creates a key for alg and returns its stored record and kid (the
// RFC 7638 thumbprint of the public key).
func generate(alg string, created, notBefore time.Time) (storedKey, string, error) {
	var raw any
	var err error
	switch alg {
	case "ES256":
		raw, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case "RS256":
		raw, err = rsa.GenerateKey(rand.Reader, rsaKeyBits)
	case "EdDSA":
		_, raw, err = ed25519.GenerateKey(rand.Reader)
	default:
		err = fmt.Errorf("unsupported alg %q", alg)
	}
	if err != nil {
		return storedKey{}, "", fmt.Errorf("generate key: %w", err)
	}
	key, err := jwk.FromRaw(raw)
	if err != nil {
		return storedKey{}, "", fmt.Errorf("generate key: %w", err)
	}
	tp, err := key.Thumbprint(crypto.SHA256)
	if err != nil {
		return storedKey{}, "", fmt.Errorf("generate key: thumbprint: %w", err)
	}
	kid := base64.RawURLEncoding.EncodeToString(tp)
	for name, v := range map[string]any{
		jwk.KeyIDKey:     kid,
		jwk.AlgorithmKey: algs[alg],
		jwk.KeyUsageKey:  jwk.ForSignature,
	} {
		if err := key.Set(name, v); err != nil {
			return storedKey{}, "", fmt.Errorf("generate key: set %s: %w", name, err)
		}
	}
	b, err := json.Marshal(key)
	if err != nil {
		return storedKey{}, "", errors.New("generate key: cannot encode the JWK")
	}
	return storedKey{Created: created.UTC(), NotBefore: notBefore.UTC(), JWK: b}, kid, nil
}

// parseSet parses the stored secret. Its errors never quote the secret.
func parseSet(sec broker.Secret, version int, maxTTL time.Duration) (*keySet, error) {
	raw, ok := sec.Field(fieldKeySet)
	if !ok {
		return nil, fmt.Errorf("stored key set %s: no %q field", keySetKey, fieldKeySet)
	}
	var ss storedSet
	if err := json.Unmarshal([]byte(raw), &ss); err != nil {
		return nil, fmt.Errorf("stored key set %s: not valid JSON", keySetKey)
	}
	if ss.Format != storedFormat {
		return nil, fmt.Errorf("stored key set %s: format %d, want %d", keySetKey, ss.Format, storedFormat)
	}
	st := &keySet{version: version, byKid: make(map[string]*signingKey, len(ss.Keys))}
	for i, rec := range ss.Keys {
		key, err := parseKey(rec)
		if err != nil {
			return nil, fmt.Errorf("stored key set %s: key %d: %w", keySetKey, i, err)
		}
		if st.byKid[key.kid] != nil {
			return nil, fmt.Errorf("stored key set %s: key %d: duplicate kid %q", keySetKey, i, key.kid)
		}
		st.byKid[key.kid] = key
		st.keys = append(st.keys, key)
	}
	slices.SortStableFunc(st.keys, func(a, b *signingKey) int {
		if c := a.notBefore.Compare(b.notBefore); c != 0 {
			return c
		}
		return a.created.Compare(b.created)
	})
	for i := 0; i+1 < len(st.keys); i++ {
		st.keys[i].retireAt = st.keys[i+1].notBefore
		st.keys[i].deleteAt = st.keys[i].retireAt.Add(maxTTL + ClockSkew)
	}
	return st, nil
}

func parseKey(rec storedKey) (*signingKey, error) {
	key, err := jwk.ParseKey(rec.JWK)
	if err != nil {
		return nil, errors.New("not a valid JWK") // jwx may quote the input
	}
	kid := key.KeyID()
	if kid == "" {
		return nil, errors.New("no kid")
	}
	alg, ok := algs[key.Algorithm().String()]
	if !ok {
		return nil, fmt.Errorf("kid %q: unsupported alg %q", kid, key.Algorithm().String())
	}
	var priv any
	if err := key.Raw(&priv); err != nil {
		return nil, fmt.Errorf("kid %q: not a usable key", kid)
	}
	if err := checkKeyType(alg, priv); err != nil {
		return nil, fmt.Errorf("kid %q: %w", kid, err)
	}
	pub, err := jwk.PublicRawKeyOf(priv)
	if err != nil {
		return nil, fmt.Errorf("kid %q: no public key: %w", kid, err)
	}
	pubJWK, err := jwk.PublicKeyOf(key)
	if err != nil {
		return nil, fmt.Errorf("kid %q: no public JWK: %w", kid, err)
	}
	for name, v := range map[string]any{
		jwk.KeyIDKey:     kid,
		jwk.AlgorithmKey: alg,
		jwk.KeyUsageKey:  jwk.ForSignature,
	} {
		if err := pubJWK.Set(name, v); err != nil {
			return nil, fmt.Errorf("kid %q: set %s: %w", kid, name, err)
		}
	}
	return &signingKey{
		kid:       kid,
		alg:       alg,
		created:   rec.Created,
		notBefore: rec.NotBefore,
		priv:      priv,
		pub:       pub,
		pubJWK:    pubJWK,
		rec:       rec,
	}, nil
}

// checkKeyType reports whether priv is a private key of the kind alg needs.
func checkKeyType(alg jwa.SignatureAlgorithm, priv any) error {
	ok := false
	switch alg {
	case jwa.ES256:
		k, isEC := priv.(*ecdsa.PrivateKey)
		ok = isEC && k.Curve == elliptic.P256()
	case jwa.RS256:
		k, isRSA := priv.(*rsa.PrivateKey)
		ok = isRSA && k.N.BitLen() >= rsaKeyBits
	case jwa.EdDSA:
		k, isEd := priv.(ed25519.PrivateKey)
		ok = isEd && len(k) == ed25519.PrivateKeySize
	}
	if !ok {
		return fmt.Errorf("key is not a private %s key", alg)
	}
	return nil
}

// encode returns the secret holding recs.
func encode(recs []storedKey) (broker.Secret, error) {
	b, err := json.Marshal(storedSet{Format: storedFormat, Keys: recs})
	if err != nil {
		return broker.Secret{}, errors.New("encode key set")
	}
	return broker.NewSecret(map[string]string{fieldKeySet: string(b)}), nil
}

// fetch reads and parses the stored set.
func (k *Keyring) fetch(ctx context.Context) (*keySet, error) {
	sec, v, err := k.opts.Secrets.Get(ctx, keySetKey)
	if err != nil {
		return nil, err
	}
	return parseSet(sec, v, k.opts.MaxTokenTTL)
}

// write puts recs with check-and-set cas and returns the set as written.
func (k *Keyring) write(ctx context.Context, recs []storedKey, cas int) (*keySet, error) {
	sec, err := encode(recs)
	if err != nil {
		return nil, err
	}
	v, err := k.opts.Secrets.Put(ctx, keySetKey, sec, cas)
	if err != nil {
		return nil, err
	}
	return parseSet(sec, v, k.opts.MaxTokenTTL)
}

// update applies mutate to the stored set with check-and-set, re-reading and
// retrying when another writer got there first.
func (k *Keyring) update(ctx context.Context, mutate func(cur *keySet, now time.Time) []storedKey) (*keySet, error) {
	for attempt := range maxAttempts {
		cur, err := k.fetch(ctx)
		if err != nil {
			return nil, err
		}
		st, err := k.write(ctx, mutate(cur, k.opts.Now()), cur.version)
		if !errors.Is(err, broker.ErrConflict) {
			return st, err
		}
		// Lost against another replica: back off a little, re-read.
		d := time.Duration(mathrand.Int64N(int64(time.Millisecond) * int64(5*(attempt+1))))
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(d):
		}
	}
	return nil, fmt.Errorf("gave up after %d attempts: %w", maxAttempts, broker.ErrConflict)
}

// repair adds a key that signs at once to a set that has none.
func (k *Keyring) repair(ctx context.Context) (*keySet, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	now := k.opts.Now()
	rec, _, err := generate(k.opts.Alg, now, now)
	if err != nil {
		return nil, fmt.Errorf("token open: %w", err)
	}
	st, err := k.update(ctx, func(cur *keySet, now time.Time) []storedKey {
		return append(cur.live(now), rec)
	})
	if err != nil {
		return nil, fmt.Errorf("token open: add a signing key: %w", err)
	}
	return st, nil
}

// Rotate adds a new key (of Options.Alg) that is published at once and signs
// from PublishDelay on, deletes the keys that have expired, and returns the
// new key's kid. It updates the stored set with check-and-set, so rotations
// by several replicas at once all keep their keys.
func (k *Keyring) Rotate(ctx context.Context) (kid string, err error) {
	defer func(start time.Time) { k.opts.Observer.Observe(componentName, "rotate", start, err) }(time.Now())
	k.mu.Lock()
	defer k.mu.Unlock()
	now := k.opts.Now()
	rec, kid, err := generate(k.opts.Alg, now, now.Add(k.opts.PublishDelay))
	if err != nil {
		return "", fmt.Errorf("token rotate: %w", err)
	}
	st, err := k.update(ctx, func(cur *keySet, now time.Time) []storedKey {
		return append(cur.live(now), rec)
	})
	if err != nil {
		return "", fmt.Errorf("token rotate: %w", err)
	}
	k.cur.Store(st)
	return kid, nil
}

// Reload re-reads the stored set (another replica or the CLI may have
// rotated). When the stored version is the one in memory it only costs the
// read. On error the keyring keeps the set it had.
func (k *Keyring) Reload(ctx context.Context) (err error) {
	defer func(start time.Time) { k.opts.Observer.Observe(componentName, "reload", start, err) }(time.Now())
	k.mu.Lock()
	defer k.mu.Unlock()
	sec, v, err := k.opts.Secrets.Get(ctx, keySetKey)
	if err != nil {
		return fmt.Errorf("token reload: %w", err)
	}
	if cur := k.cur.Load(); cur != nil && cur.version == v {
		return nil
	}
	st, err := parseSet(sec, v, k.opts.MaxTokenTTL)
	if err != nil {
		return fmt.Errorf("token reload: %w", err)
	}
	k.cur.Store(st)
	return nil
}

// Keys describes every key in the set as of Now, oldest first, expired keys
// not yet deleted included.
func (k *Keyring) Keys() []KeyInfo {
	st := k.set()
	now := k.opts.Now()
	out := make([]KeyInfo, 0, len(st.keys))
	for _, key := range st.keys {
		out = append(out, KeyInfo{
			KID:       key.kid,
			Alg:       key.alg.String(),
			Created:   key.created,
			NotBefore: key.notBefore,
			RetireAt:  key.retireAt,
			DeleteAt:  key.deleteAt,
			State:     key.state(now),
		})
	}
	return out
}

// PublicJWKS returns the JSON of the public JWK set (RFC 7517 §5) to serve
// at the JWKS endpoint: every pending, active and retiring key, each with
// kid, alg and use "sig". It never contains private key parts.
func (k *Keyring) PublicJWKS() ([]byte, error) {
	st := k.set()
	now := k.opts.Now()
	set := jwk.NewSet()
	for _, key := range st.keys {
		if key.state(now) == StateExpired {
			continue
		}
		if err := set.AddKey(key.pubJWK); err != nil {
			return nil, fmt.Errorf("token jwks: %w", err)
		}
	}
	b, err := json.Marshal(set)
	if err != nil {
		return nil, fmt.Errorf("token jwks: %w", err)
	}
	return b, nil
}
