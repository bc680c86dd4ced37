package bolt

import (
	"context"
	"encoding/binary"
	"fmt"
	"sync"

	bbolt "go.etcd.io/bbolt"

	"github.com/lanyardhq/lanyard/broker"
	"github.com/lanyardhq/lanyard/internal/codec"
)

const auditBucket = "audit"

// auditLog is the hash-chained audit record in bucket "audit", keyed by
// big-endian sequence number. Append extends the chain inside a write
// transaction, so it is atomic, and returns only after the fsync that makes
// it durable; concurrent appends share transactions (group commit, see
// groupCommit), so one fsync covers many records.
type auditLog struct{ db *DB }

var _ broker.AuditLog = auditLog{}

// Audit implements broker.Store.
func (db *DB) Audit() broker.AuditLog { return auditLog{db} }

// auditHeads remembers the hash at the end of the chain so that an append
// does not decode the previous record: committed is the last record of the
// last committed transaction, tail the last record appended in the
// transaction tx (not yet committed). Either is used only when its Seq is
// the key an append finds last in its own transaction, so a rolled-back or
// re-run transaction, or a commit whose hook has not run yet, falls back
// to decoding the record.
type auditHeads struct {
	mu        sync.Mutex
	committed auditHead
	tail      auditHead
	tailTx    *bbolt.Tx
}

type auditHead struct {
	seq  uint64
	hash string
}

// prevHash is the hash of the record stored under seq in tx, from memory if
// it is known there.
func (h *auditHeads) prevHash(tx *bbolt.Tx, seq uint64, raw []byte) (string, error) {
	h.mu.Lock()
	switch {
	case h.tailTx == tx && h.tail.seq == seq:
		h.mu.Unlock()
		return h.tail.hash, nil
	case h.committed.seq == seq:
		h.mu.Unlock()
		return h.committed.hash, nil
	}
	h.mu.Unlock()
	var last struct { // only the hash: the rest is not needed
		Hash string `json:"hash"`
	}
	if err := codec.Decode(raw, &last); err != nil {
		return "", fmt.Errorf("audit: last record unreadable: %w", err)
	}
	return last.Hash, nil
}

// appended notes e as the tail of tx and, once tx commits, of the chain.
func (h *auditHeads) appended(tx *bbolt.Tx, e broker.AuditEvent) {
	head := auditHead{seq: e.Seq, hash: e.Hash}
	h.mu.Lock()
	h.tail, h.tailTx = head, tx
	h.mu.Unlock()
	tx.OnCommit(func() {
		h.mu.Lock()
		if head.seq > h.committed.seq {
			h.committed = head
		}
		if h.tailTx == tx {
			h.tailTx = nil // let the transaction go
		}
		h.mu.Unlock()
	})
}

func seqKey(n uint64) []byte {
	var k [8]byte
	binary.BigEndian.PutUint64(k[:], n)
	return k[:]
}

// Append implements broker.AuditLog.
func (a auditLog) Append(ctx context.Context, e broker.AuditEvent) (broker.AuditEvent, error) {
	in := e
	err := a.db.batch(ctx, "audit.append", func(tx *bbolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists([]byte(auditBucket))
		if err != nil {
			return err
		}
		seq, prev := uint64(1), ""
		if k, v := b.Cursor().Last(); k != nil {
			last := binary.BigEndian.Uint64(k)
			if prev, err = a.db.audit.prevHash(tx, last, v); err != nil {
				return err
			}
			seq = last + 1
		}
		var v []byte
		e, v = in.Chained(seq, prev, a.db.now())
		if err := b.Put(seqKey(e.Seq), v); err != nil {
			return err
		}
		a.db.audit.appended(tx, e)
		return nil
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
