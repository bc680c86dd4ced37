package authserver

import (
	"crypto/sha256"
	"slices"
	"sync"
	"time"

	"github.com/lanyardhq/lanyard/broker/token"
)

// DefaultVerifiedTokens is Options.VerifiedTokens when it is zero.
const DefaultVerifiedTokens = 100_000

// evictLook is how many entries a put into a full cache looks at.
const evictLook = 8

// verifiedCache remembers the claims of access tokens whose signature,
// type, issuer and required claims verified, keyed by the SHA-256 of the
// token, so that an MCP server redeeming the same token for one tool call
// after another does not pay an ECDSA verification and a JWT parse each
// time (BENCHMARKS.md: a third of the redeem path's CPU). Only what cannot
// change for the same bytes is remembered: on a hit the time checks are
// made again (exp with the clock skew, iat not in the future), and
// everything that can change (the grant is live and matches the token,
// the audience is the caller) is checked on every call by
// VerifyAccessToken as before. A signing key stops being trusted only
// after every token it signed has expired (token package), so a cached
// token never outlives its key's trust. Failures are never cached.
type verifiedCache struct {
	max int
	mu  sync.RWMutex
	m   map[[sha256.Size]byte]token.Claims
}

func newVerifiedCache(size int) *verifiedCache {
	if size < 0 {
		return nil
	}
	if size == 0 {
		size = DefaultVerifiedTokens
	}
	return &verifiedCache{max: size, m: map[[sha256.Size]byte]token.Claims{}}
}

func (c *verifiedCache) get(raw string, now time.Time) (token.Claims, bool) {
	if c == nil {
		return token.Claims{}, false
	}
	k := sha256.Sum256([]byte(raw))
	c.mu.RLock()
	cl, ok := c.m[k]
	c.mu.RUnlock()
	if !ok {
		return token.Claims{}, false
	}
	if now.After(cl.ExpiresAt.Add(token.ClockSkew)) || cl.IssuedAt.After(now.Add(token.ClockSkew)) {
		return token.Claims{}, false // let Verify say why
	}
	cl.Scopes = slices.Clone(cl.Scopes)
	return cl, true
}

func (c *verifiedCache) put(raw string, cl token.Claims, now time.Time) {
	if c == nil {
		return
	}
	k := sha256.Sum256([]byte(raw))
	cl.Scopes = slices.Clone(cl.Scopes)
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.m[k]; !ok && len(c.m) >= c.max {
		// Full: look at a few entries (map order is random), dropping the
		// expired ones and, if none was, one that is not. A bounded look:
		// scanning the whole map under the lock on every put of a full
		// cache stalled every verification behind it (BENCHMARKS.md,
		// 100,000 active grants).
		seen, victim, some := 0, [sha256.Size]byte{}, false
		for old, x := range c.m {
			if now.After(x.ExpiresAt.Add(token.ClockSkew)) {
				delete(c.m, old)
			} else if !some {
				victim, some = old, true
			}
			if seen++; seen >= evictLook {
				break
			}
		}
		if len(c.m) >= c.max && some {
			delete(c.m, victim)
		}
	}
	c.m[k] = cl
}
