package codec

import (
	"bytes"
	"sync"
	"sync/atomic"
)

// MemoMax is the size the stores give each memo. Beyond it the memo still
// bounds memory (about a KiB per entry) and only saves less.
const MemoMax = 4096

// Memo remembers the decoded form of records that are read far more often
// than they change (MCP server registrations, grants and connections: read
// by every redemption), so that reading one costs a byte comparison instead
// of a decode. It never serves a stale record: the
// caller always reads the stored bytes first (from the store, in the same
// transaction as before) and an entry is used only if those bytes are
// identical to the ones it was decoded from. Memo only saves the decode.
//
// Values are handed out as clones (Clone must copy every slice and map), so
// a caller that changes its copy cannot change the remembered one. At most
// Max entries are kept. When full, a record not yet remembered replaces an
// arbitrary entry only on every replaceEvery-th such miss: with far more
// records in use than Max, replacing on every miss would cost more (a copy,
// a clone, a write lock) than the decodes it saves, while replacing now and
// then still lets the entries follow what is in use.
type Memo[T any] struct {
	Clone func(T) T
	Max   int

	mu     sync.RWMutex
	m      map[string]memoEntry[T]
	misses atomic.Uint64 // misses of keys not remembered while full
}

// replaceEvery: see Memo.
const replaceEvery = 16

type memoEntry[T any] struct {
	raw []byte
	val T
}

// Decode decodes raw, stored under key, into a T: from memory if raw is
// what it was last time.
func (m *Memo[T]) Decode(key string, raw []byte) (T, error) {
	m.mu.RLock()
	e, ok := m.m[key]
	full := len(m.m) >= max(m.Max, 1)
	m.mu.RUnlock()
	if ok && bytes.Equal(e.raw, raw) {
		return m.Clone(e.val), nil
	}
	var v T
	if err := Decode(raw, &v); err != nil {
		return v, err
	}
	if !ok && full && m.misses.Add(1)%replaceEvery != 0 {
		return v, nil
	}
	// raw may live only as long as the caller's transaction: keep a copy.
	e = memoEntry[T]{raw: bytes.Clone(raw), val: m.Clone(v)}
	m.mu.Lock()
	if m.m == nil {
		m.m = make(map[string]memoEntry[T])
	}
	if _, ok := m.m[key]; !ok && len(m.m) >= max(m.Max, 1) {
		for k := range m.m {
			delete(m.m, k)
			break
		}
	}
	m.m[key] = e
	m.mu.Unlock()
	return v, nil
}
