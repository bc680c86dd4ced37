package links

import (
	"sync"
	"time"

	"github.com/lanyardhq/lanyard/broker"
)

// Credential cache defaults.
const (
	// DefaultCredentialCacheTTL bounds how long a cached secret is used
	// without reading the secret store again. Changes made through Lanyard
	// (re-link, refresh, unlink) are seen at once whatever the TTL, because
	// a hit needs the connection record's SecretVer; the TTL bounds only
	// changes made behind Lanyard's back (an operator editing Vault).
	DefaultCredentialCacheTTL = time.Minute
	// DefaultCredentialCacheSize bounds the cached connections.
	DefaultCredentialCacheSize = 100_000
)

// credCache holds the secrets of recently redeemed connections, keyed by
// connection ID. An entry serves a redemption only if the connection record
// just read from the metadata store names the same secret key and version
// (Connection.SecretKey, SecretVer): every write of a secret through this
// service changes the version in the record (a refresh, a re-link) or
// deletes the record (unlink), and the redemption reads the record, the
// grant and the policy anew every time, so a cached secret is never handed
// out after the change that superseded it. Entries older than ttl are not
// used.
type credCache struct {
	ttl time.Duration
	max int
	mu  sync.RWMutex
	m   map[string]credEntry
}

type credEntry struct {
	key broker.SecretKey
	ver int
	sec broker.Secret
	at  time.Time
}

func newCredCache(ttl time.Duration, size int) *credCache {
	if ttl < 0 {
		return nil // disabled
	}
	if ttl == 0 {
		ttl = DefaultCredentialCacheTTL
	}
	if size <= 0 {
		size = DefaultCredentialCacheSize
	}
	return &credCache{ttl: ttl, max: size, m: map[string]credEntry{}}
}

// get returns the cached secret of conn if it is the version the record
// names and fresh.
func (c *credCache) get(conn broker.Connection, now time.Time) (broker.Secret, bool) {
	if c == nil || conn.SecretVer == 0 {
		return broker.Secret{}, false
	}
	c.mu.RLock()
	e, ok := c.m[conn.ID]
	c.mu.RUnlock()
	if !ok || e.key != conn.SecretKey || e.ver != conn.SecretVer || now.Sub(e.at) >= c.ttl || now.Before(e.at) {
		return broker.Secret{}, false
	}
	return e.sec, true
}

// put caches sec as version ver of conn's secret.
func (c *credCache) put(conn broker.Connection, ver int, sec broker.Secret, now time.Time) {
	if c == nil || ver == 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.m[conn.ID]; !ok && len(c.m) >= c.max {
		for id := range c.m { // full: drop an arbitrary entry
			delete(c.m, id)
			break
		}
	}
	c.m[conn.ID] = credEntry{key: conn.SecretKey, ver: ver, sec: sec, at: now}
}

// drop forgets a connection's secret.
func (c *credCache) drop(id string) {
	if c == nil {
		return
	}
	c.mu.Lock()
	delete(c.m, id)
	c.mu.Unlock()
}
