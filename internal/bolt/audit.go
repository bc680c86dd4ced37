package bolt

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"

	bbolt "go.etcd.io/bbolt"

	"github.com/lanyardhq/lanyard/broker"
	"github.com/lanyardhq/lanyard/internal/codec"
)

const auditBucket = "audit"

// auditLog is the hash-chained audit record in bucket "audit", keyed by
// big-endian sequence number. Append extends the chain inside a write
// transaction, so it is atomic, and returns only after the fsync that makes
// it durable; concurrent appends share transactions (group commit through
// bbolt's Batch), so one fsync covers many records.
type auditLog struct{ db *DB }

var _ broker.AuditLog = auditLog{}

// Audit implements broker.Store.
func (db *DB) Audit() broker.AuditLog { return auditLog{db} }

func seqKey(n uint64) []byte {
	var k [8]byte
	binary.BigEndian.PutUint64(k[:], n)
	return k[:]
}

// Append implements broker.AuditLog.
func (a auditLog) Append(ctx context.Context, e broker.AuditEvent) (broker.AuditEvent, error) {
	err := a.db.batch(ctx, "audit.append", func(tx *bbolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists([]byte(auditBucket))
		if err != nil {
			return err
		}
		seq, prev := uint64(1), ""
		if k, v := b.Cursor().Last(); k != nil {
			var last struct { // only the hash: the rest is not needed
				Hash string `json:"hash"`
			}
			if err := codec.Decode(v, &last); err != nil {
				return fmt.Errorf("audit: last record unreadable: %w", err)
			}
			seq, prev = binary.BigEndian.Uint64(k)+1, last.Hash
		}
		e = e.Chained(seq, prev, a.db.now())
		v, err := json.Marshal(e)
		if err != nil {
			return err
		}
		return b.Put(seqKey(e.Seq), v)
	})
	return e, err
}

// Range implements broker.AuditLog.
func (a auditLog) Range(ctx context.Context, after uint64, limit int) ([]broker.AuditEvent, error) {
	if limit <= 0 || limit > broker.MaxLimit {
		limit = broker.MaxLimit
	}
	var out []broker.AuditEvent
	err := a.db.view(ctx, "audit.range", func(tx *bbolt.Tx) error {
		b := tx.Bucket([]byte(auditBucket))
		if b == nil {
			return nil
		}
		c := b.Cursor()
		for k, v := c.Seek(seqKey(after + 1)); k != nil && len(out) < limit; k, v = c.Next() {
			var e broker.AuditEvent
			if err := codec.Decode(v, &e); err != nil {
				return fmt.Errorf("audit record %d unreadable: %w", binary.BigEndian.Uint64(k), err)
			}
			out = append(out, e)
		}
		return nil
	})
	return out, err
}
