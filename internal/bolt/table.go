package bolt

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/lanyardhq/lanyard/broker"
	"github.com/lanyardhq/lanyard/internal/codec"
	bbolt "go.etcd.io/bbolt"
)

// table stores one kind of record: bucket kind holds id → JSON, bucket
// "idx/<kind>/<index>" holds "value\x00id" → nothing for every index entry,
// and bucket "exp/<kind>" holds expKey(expiry, id) → nothing for every
// record that expires, so that Sweep finds the expired records without
// decoding the live ones (or looking at kinds that never expire).
// Record IDs cannot hold control characters (broker validates them), so the
// last NUL in an index key always separates value from id.
type table[T broker.Record] struct {
	db     *DB
	kind   string
	bucket []byte
	// indexes are the index names T declares. Queries naming any other
	// index are rejected rather than answered with nothing.
	indexes broker.IndexNames
	// memo, if set, saves decoding records whose bytes have not changed.
	memo *codec.Memo[T]
}

// sweeper is what Open and Sweep need from every table, whatever its T.
type sweeper interface {
	init(tx *bbolt.Tx) error
	due(tx *bbolt.Tx, now time.Time) bool
	sweep(tx *bbolt.Tx, now time.Time, max int) (removed, visited int, err error)
}

func newTable[T broker.Record](db *DB, kind string) *table[T] {
	return &table[T]{db: db, kind: kind, bucket: []byte(kind), indexes: broker.IndexNamesOf[T]()}
}

var _ broker.Table[broker.User] = (*table[broker.User])(nil)

// init creates the table's buckets. A data file written before the expiry
// index existed gets it built here, once.
func (t *table[T]) init(tx *bbolt.Tx) error {
	b, err := tx.CreateBucketIfNotExists(t.bucket)
	if err != nil || tx.Bucket(t.expBucket()) != nil {
		return err
	}
	eb, err := tx.CreateBucket(t.expBucket())
	if err != nil {
		return err
	}
	return b.ForEach(func(k, v []byte) error {
		var rec T
		if err := codec.Decode(v, &rec); err != nil {
			return fmt.Errorf("%s %q: decode: %w", t.kind, k, err)
		}
		if exp := rec.RecordExpiry(); !exp.IsZero() {
			return eb.Put(expKey(exp, rec.RecordID()), nil)
		}
		return nil
	})
}

// Create implements broker.Table. An expired record with the same ID is
// replaced.
func (t *table[T]) Create(ctx context.Context, rec T) error {
	return t.db.update(ctx, t.kind+".create", func(tx *bbolt.Tx) error {
		if err := rec.Validate(); err != nil {
			return fmt.Errorf("%s: create: %w", t.kind, err)
		}
		return t.create(tx, rec, t.db.now())
	})
}

func (t *table[T]) create(tx *bbolt.Tx, rec T, now time.Time) error {
	id := rec.RecordID()
	old, found, err := t.load(tx, id)
	if err != nil {
		return err
	}
	if found && broker.Live(old, now) {
		return fmt.Errorf("%s %q: %w", t.kind, id, broker.ErrAlreadyExists)
	}
	var prev *T
	if found {
		prev = &old
	}
	return t.store(tx, prev, rec, now)
}

// Get implements broker.Table.
func (t *table[T]) Get(ctx context.Context, id string) (T, error) {
	var rec T
	err := t.db.view(ctx, t.kind+".get", func(tx *bbolt.Tx) error {
		var err error
		rec, err = t.get(tx, id, t.db.now())
		return err
	})
	return rec, err
}

// get returns the live record id or an error wrapping broker.ErrNotFound.
func (t *table[T]) get(tx *bbolt.Tx, id string, now time.Time) (T, error) {
	rec, found, err := t.load(tx, id)
	if err == nil && (!found || !broker.Live(rec, now)) {
		err = fmt.Errorf("%s %q: %w", t.kind, id, broker.ErrNotFound)
	}
	return rec, err
}

// GetBy implements broker.Table. On a non-unique index it returns the live
// record with the smallest ID; an index T does not declare is an error
// wrapping broker.ErrInvalid.
func (t *table[T]) GetBy(ctx context.Context, index, value string) (T, error) {
	var rec T
	err := t.db.view(ctx, t.kind+".get_by", func(tx *bbolt.Tx) error {
		if err := t.indexes.Check(t.kind, "get by", index); err != nil {
			return err
		}
		now := t.db.now()
		found := false
		err := t.scanIndex(tx, index, value, "", func(id string) (bool, error) {
			r, ok, err := t.load(tx, id)
			if err != nil || !ok || !broker.Live(r, now) {
				return true, err
			}
			rec, found = r, true
			return false, nil
		})
		if err == nil && !found {
			err = fmt.Errorf("%s with %s %q: %w", t.kind, index, value, broker.ErrNotFound)
		}
		return err
	})
	return rec, err
}

// Update implements broker.Table. bbolt serialises writers, so fn runs once,
// inside the write transaction; it must not call the store.
func (t *table[T]) Update(ctx context.Context, id string, fn func(T) (T, error)) (T, error) {
	var out T
	err := t.db.update(ctx, t.kind+".update", func(tx *bbolt.Tx) error {
		now := t.db.now()
		old, err := t.get(tx, id, now)
		if err != nil {
			return err
		}
		rec, err := fn(old)
		if err != nil {
			return err
		}
		if rec.RecordID() != id {
			return fmt.Errorf("%s %q: update changed the id to %q: %w", t.kind, id, rec.RecordID(), broker.ErrInvalid)
		}
		if err := rec.Validate(); err != nil {
			return fmt.Errorf("%s: update: %w", t.kind, err)
		}
		out = rec
		return t.store(tx, &old, rec, now)
	})
	if err != nil {
		var zero T
		return zero, err
	}
	return out, nil
}

// Delete implements broker.Table.
func (t *table[T]) Delete(ctx context.Context, id string) error {
	return t.db.update(ctx, t.kind+".delete", func(tx *bbolt.Tx) error {
		rec, err := t.get(tx, id, t.db.now())
		if err != nil {
			return err
		}
		return t.remove(tx, rec)
	})
}

// List implements broker.Table: live records in ID order, after q.After.
// A Value without an Index, an Index T does not declare, or an Index
// without a Value is an error wrapping broker.ErrInvalid: none of them may
// fall back to listing everything, or nothing.
func (t *table[T]) List(ctx context.Context, q broker.Query) (broker.Page[T], error) {
	var page broker.Page[T]
	err := t.db.view(ctx, t.kind+".list", func(tx *bbolt.Tx) error {
		limit, err := t.indexes.CheckQuery(t.kind, q)
		if err != nil {
			return err
		}
		now := t.db.now()
		page = broker.Page[T]{Items: make([]T, 0, min(limit, 64))}
		more := false
		visit := func(id string) (bool, error) {
			rec, ok, err := t.load(tx, id)
			if err != nil || !ok || !broker.Live(rec, now) {
				return true, err
			}
			if len(page.Items) == limit {
				more = true
				return false, nil
			}
			page.Items = append(page.Items, rec)
			return true, nil
		}
		if q.Index != "" {
			err = t.scanIndex(tx, q.Index, q.Value, q.After, visit)
		} else {
			err = t.scanIDs(tx, q.After, visit)
		}
		if err == nil && more {
			page.Next = page.Items[len(page.Items)-1].RecordID()
		}
		return err
	})
	if err != nil {
		return broker.Page[T]{}, err
	}
	return page, nil
}

// scanIDs calls visit with every stored ID after after, in order, until
// visit returns false or an error.
func (t *table[T]) scanIDs(tx *bbolt.Tx, after string, visit func(id string) (bool, error)) error {
	c := tx.Bucket(t.bucket).Cursor()
	k, _ := c.Seek([]byte(after))
	if k != nil && string(k) == after {
		k, _ = c.Next()
	}
	for ; k != nil; k, _ = c.Next() {
		if cont, err := visit(string(k)); err != nil || !cont {
			return err
		}
	}
	return nil
}

// scanIndex calls visit with the ID of every entry of index whose value is
// value and whose ID sorts after after, in ID order.
func (t *table[T]) scanIndex(tx *bbolt.Tx, index, value, after string, visit func(id string) (bool, error)) error {
	b := tx.Bucket(t.indexBucket(index))
	if b == nil || value == "" {
		return nil
	}
	prefix := indexKey(value, "")
	c := b.Cursor()
	k, _ := c.Seek(indexKey(value, after))
	for ; k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
		v, id := splitIndexKey(k)
		if v != value || id <= after {
			continue // a longer value that contains NUL, or the cursor itself
		}
		if cont, err := visit(id); err != nil || !cont {
			return err
		}
	}
	return nil
}

// load decodes the stored record id, expired or not.
func (t *table[T]) load(tx *bbolt.Tx, id string) (T, bool, error) {
	var rec T
	raw, ok := lookup(tx.Bucket(t.bucket), []byte(id))
	if !ok {
		return rec, false, nil
	}
	var err error
	if t.memo != nil {
		rec, err = t.memo.Decode(id, raw)
	} else {
		err = codec.Decode(raw, &rec)
	}
	if err != nil {
		return rec, false, fmt.Errorf("%s %q: decode: %w", t.kind, id, err)
	}
	return rec, true, nil
}

// store writes rec, replacing prev (if any) and its index entries, after
// checking that no other live record holds one of rec's unique values.
func (t *table[T]) store(tx *bbolt.Tx, prev *T, rec T, now time.Time) error {
	id := rec.RecordID()
	for _, ix := range rec.RecordIndexes() {
		if ix.Value == "" {
			continue
		}
		if len(ix.Value)+1+len(id) > bbolt.MaxKeySize {
			return fmt.Errorf("%s %q: %s value too long: %w", t.kind, id, ix.Name, broker.ErrInvalid)
		}
		if !ix.Unique {
			continue
		}
		err := t.scanIndex(tx, ix.Name, ix.Value, "", func(other string) (bool, error) {
			if other == id {
				return true, nil
			}
			r, ok, err := t.load(tx, other)
			if err == nil && ok && broker.Live(r, now) {
				err = fmt.Errorf("%s %q: %s %q is taken by %q: %w", t.kind, id, ix.Name, ix.Value, other, broker.ErrAlreadyExists)
			}
			return err == nil, err
		})
		if err != nil {
			return err
		}
	}
	if prev != nil {
		if err := t.unindex(tx, *prev); err != nil {
			return err
		}
	}
	for _, ix := range rec.RecordIndexes() {
		if ix.Value == "" {
			continue
		}
		b, err := tx.CreateBucketIfNotExists(t.indexBucket(ix.Name))
		if err != nil {
			return fmt.Errorf("%s: index %s: %w", t.kind, ix.Name, err)
		}
		if err := b.Put(indexKey(ix.Value, id), nil); err != nil {
			return fmt.Errorf("%s %q: index %s: %w", t.kind, id, ix.Name, err)
		}
	}
	if exp := rec.RecordExpiry(); !exp.IsZero() {
		if err := tx.Bucket(t.expBucket()).Put(expKey(exp, id), nil); err != nil {
			return fmt.Errorf("%s %q: expiry index: %w", t.kind, id, err)
		}
	}
	raw, err := json.Marshal(rec)
	if err != nil {
		return fmt.Errorf("%s %q: encode: %w", t.kind, id, err)
	}
	if err := tx.Bucket(t.bucket).Put([]byte(id), raw); err != nil {
		return fmt.Errorf("%s %q: %w", t.kind, id, err)
	}
	return nil
}

// remove deletes rec and its index entries.
func (t *table[T]) remove(tx *bbolt.Tx, rec T) error {
	if err := t.unindex(tx, rec); err != nil {
		return err
	}
	if err := tx.Bucket(t.bucket).Delete([]byte(rec.RecordID())); err != nil {
		return fmt.Errorf("%s %q: %w", t.kind, rec.RecordID(), err)
	}
	return nil
}

// unindex deletes rec's index entries, its expiry entry among them.
func (t *table[T]) unindex(tx *bbolt.Tx, rec T) error {
	if exp := rec.RecordExpiry(); !exp.IsZero() {
		if err := tx.Bucket(t.expBucket()).Delete(expKey(exp, rec.RecordID())); err != nil {
			return fmt.Errorf("%s %q: expiry index: %w", t.kind, rec.RecordID(), err)
		}
	}
	for _, ix := range rec.RecordIndexes() {
		b := tx.Bucket(t.indexBucket(ix.Name))
		if ix.Value == "" || b == nil {
			continue
		}
		if err := b.Delete(indexKey(ix.Value, rec.RecordID())); err != nil {
			return fmt.Errorf("%s %q: index %s: %w", t.kind, rec.RecordID(), ix.Name, err)
		}
	}
	return nil
}

// due reports whether the expiry index holds an entry for now or earlier.
func (t *table[T]) due(tx *bbolt.Tx, now time.Time) bool {
	k, _ := tx.Bucket(t.expBucket()).Cursor().First()
	end := expPrefix(now)
	return k != nil && bytes.Compare(k[:min(len(k), len(end))], end) <= 0
}

// sweep deletes expired records of this kind, earliest expiry first,
// walking the expiry index only as far as now: it decodes no live record.
// It visits at most max index entries and returns how many records it
// removed and how many entries it visited (an entry left behind by a record
// that is gone is deleted and visited, not counted as removed); visited <
// max means nothing expired is left.
func (t *table[T]) sweep(tx *bbolt.Tx, now time.Time, max int) (removed, visited int, err error) {
	if max <= 0 {
		return 0, 0, nil
	}
	eb := tx.Bucket(t.expBucket())
	end := expPrefix(now)
	var keys [][]byte
	c := eb.Cursor()
	for k, _ := c.First(); k != nil && len(keys) < max; k, _ = c.Next() {
		if len(k) < len(end) || bytes.Compare(k[:len(end)], end) > 0 {
			break // expires after now: so does everything after it
		}
		keys = append(keys, bytes.Clone(k)) // deleting under a cursor skips keys
	}
	for _, k := range keys {
		rec, found, err := t.load(tx, string(k[len(end):]))
		if err != nil {
			return removed, 0, err
		}
		if found && !broker.Live(rec, now) {
			if err := t.remove(tx, rec); err != nil {
				return removed, 0, err
			}
			removed++
		}
		if err := eb.Delete(k); err != nil { // gone already unless stale
			return removed, 0, fmt.Errorf("%s: expiry index: %w", t.kind, err)
		}
	}
	return removed, len(keys), nil
}

func (t *table[T]) indexBucket(index string) []byte {
	return []byte("idx/" + t.kind + "/" + index)
}

func (t *table[T]) expBucket() []byte {
	return []byte("exp/" + t.kind)
}

// expKey is the expiry index key of a record: expPrefix(exp) then id.
func expKey(exp time.Time, id string) []byte {
	return append(expPrefix(exp), id...)
}

// expPrefix is broker.ExpiryStamp(exp), so that byte order is time order,
// then a NUL.
func expPrefix(exp time.Time) []byte {
	st := broker.ExpiryStamp(exp)
	return append(append(make([]byte, 0, 64), st[:]...), 0)
}

func indexKey(value, id string) []byte {
	return []byte(value + "\x00" + id)
}

func splitIndexKey(k []byte) (value, id string) {
	s := string(k)
	i := strings.LastIndexByte(s, 0)
	return s[:i], s[i+1:]
}
