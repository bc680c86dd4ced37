package bolt

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"time"

	bbolt "go.etcd.io/bbolt"

	"github.com/lanyardhq/lanyard/broker"
)

// counters keeps broker.Counters in bucket "counters", one key per counter
// and window: the window's end (expPrefix, so keys sort by it) then the
// counter key, holding the count as a big-endian uint64. Sweep deletes the
// windows that have ended; it does not count them as removed records.
type counters struct{ db *DB }

var _ broker.Counters = counters{}

var counterBucket = []byte("counters")

// Counters implements broker.Store.
func (db *DB) Counters() broker.Counters { return counters{db} }

// Incr implements broker.Counters: one write transaction.
func (c counters) Incr(ctx context.Context, key string, window time.Duration) (n int64, err error) {
	if err := broker.ValidCounter(key, window); err != nil {
		return 0, fmt.Errorf("counters.incr: %w", err)
	}
	err = c.db.update(ctx, "counters.incr", func(tx *bbolt.Tx) error {
		_, end := broker.CounterWindow(c.db.now(), window)
		k := append(expPrefix(end), key...)
		b := tx.Bucket(counterBucket)
		if v := b.Get(k); len(v) == 8 {
			n = int64(binary.BigEndian.Uint64(v))
		}
		n++
		return b.Put(k, binary.BigEndian.AppendUint64(nil, uint64(n)))
	})
	return n, err
}

func (c counters) init(tx *bbolt.Tx) error {
	_, err := tx.CreateBucketIfNotExists(counterBucket)
	return err
}

func (c counters) due(tx *bbolt.Tx, now time.Time) bool {
	k, _ := tx.Bucket(counterBucket).Cursor().First()
	end := expPrefix(now)
	return k != nil && bytes.Compare(k[:min(len(k), len(end))], end) <= 0
}

// sweep deletes up to max counters of windows ended by now; it reports
// them as visited, never as removed records.
func (c counters) sweep(tx *bbolt.Tx, now time.Time, max int) (removed, visited int, err error) {
	if max <= 0 {
		return 0, 0, nil
	}
	end := expPrefix(now)
	var keys [][]byte
	cur := tx.Bucket(counterBucket).Cursor()
	for k, _ := cur.First(); k != nil && len(keys) < max; k, _ = cur.Next() {
		if len(k) < len(end) || bytes.Compare(k[:len(end)], end) > 0 {
			break
		}
		keys = append(keys, bytes.Clone(k))
	}
	b := tx.Bucket(counterBucket)
	for _, k := range keys {
		if err := b.Delete(k); err != nil {
			return 0, 0, fmt.Errorf("counters: %w", err)
		}
	}
	return 0, len(keys), nil
}
