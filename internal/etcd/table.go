package etcd

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/lanyardhq/lanyard/broker"
	"github.com/lanyardhq/lanyard/internal/codec"
)

// table stores one kind of record under P rec/<kind>/, with its index,
// expiry and unique-value keys (see the package comment).
type table[T broker.Record] struct {
	s    *Store
	kind string
	// indexes are the index names T declares. Queries naming any other
	// index are rejected rather than answered with nothing.
	indexes broker.IndexNames
	// memo, if set, saves decoding records whose bytes have not changed.
	memo *codec.Memo[T]
}

// sweeper is what Sweep needs from every table, whatever its T.
type sweeper interface {
	sweep(ctx context.Context, now time.Time) (removed int, err error)
}

var _ broker.Table[broker.User] = (*table[broker.User])(nil)

func newTable[T broker.Record](s *Store, kind string) *table[T] {
	return &table[T]{s: s, kind: kind, indexes: broker.IndexNamesOf[T]()}
}

func (t *table[T]) recPrefix() string       { return t.s.prefix + "rec/" + t.kind + "/" }
func (t *table[T]) recKey(id string) string { return t.recPrefix() + id }

// idxPrefix is the prefix of the index entries of index with value value
// (and of values that extend value with a NUL: callers check the value).
func (t *table[T]) idxPrefix(index, value string) string {
	return t.s.prefix + "idx/" + t.kind + "/" + index + "/" + value + "\x00"
}

func (t *table[T]) expPrefix() string { return t.s.prefix + "exp/" + t.kind + "/" }

func (t *table[T]) expKey(exp time.Time, id string) string {
	return t.expPrefix() + expStamp(exp) + "\x00" + id
}

func (t *table[T]) claimKey(index, value string) string {
	return t.s.prefix + "uniq/" + t.kind + "/" + index + "/" + value
}

// expStamp is broker.ExpiryStamp(exp) in hex (24 characters), so that
// byte order is time order.
func expStamp(exp time.Time) string {
	b := broker.ExpiryStamp(exp)
	return hex.EncodeToString(b[:])
}

func (t *table[T]) decode(kv *mvccpb.KeyValue) (T, error) {
	var rec T
	var err error
	if t.memo != nil {
		rec, err = t.memo.Decode(string(kv.Key), kv.Value)
	} else {
		err = codec.Decode(kv.Value, &rec)
	}
	if err != nil {
		return rec, fmt.Errorf("%s %q: decode: %w", t.kind, strings.TrimPrefix(string(kv.Key), t.recPrefix()), err)
	}
	return rec, nil
}

// load reads the stored record id, expired or not; kv is nil if there is
// none.
func (t *table[T]) load(ctx context.Context, op, id string) (*mvccpb.KeyValue, T, error) {
	var rec T
	kv, err := t.s.get(ctx, op, t.recKey(id))
	if err != nil || kv == nil {
		return nil, rec, err
	}
	rec, err = t.decode(kv)
	if err != nil {
		return nil, rec, err
	}
	return kv, rec, nil
}

// loadLive is load, with a missing or expired record an error wrapping
// broker.ErrNotFound.
func (t *table[T]) loadLive(ctx context.Context, op, id string, now time.Time) (*mvccpb.KeyValue, T, error) {
	kv, rec, err := t.load(ctx, op, id)
	if err == nil && (kv == nil || !broker.Live(rec, now)) {
		err = fmt.Errorf("%s %q: %w", t.kind, id, broker.ErrNotFound)
	}
	return kv, rec, err
}

// Create implements broker.Table. An expired record with the same ID is
// replaced.
func (t *table[T]) Create(ctx context.Context, rec T) (err error) {
	op := t.kind + ".create"
	defer t.s.observe(op, time.Now(), &err)
	if err := t.s.usable(ctx, op); err != nil {
		return err
	}
	if err := rec.Validate(); err != nil {
		return fmt.Errorf("%s: create: %w", t.kind, err)
	}
	return t.s.retry(ctx, op, t.recKey(rec.RecordID()), rec.RecordID(), func() (bool, error) {
		p := newPlan()
		if err := t.stageCreate(ctx, op, p, rec, t.s.now()); err != nil {
			return false, err
		}
		return t.s.commit(ctx, op, p)
	})
}

// stageCreate adds creating rec to p: guarded on the ID being free (or
// held by the expired record read), and on rec's unique values.
func (t *table[T]) stageCreate(ctx context.Context, op string, p *plan, rec T, now time.Time) error {
	id := rec.RecordID()
	kv, old, err := t.load(ctx, op, id)
	if err != nil {
		return err
	}
	if kv != nil && broker.Live(old, now) {
		return fmt.Errorf("%s %q: %w", t.kind, id, broker.ErrAlreadyExists)
	}
	p.unchanged(t.recKey(id), kv)
	var prev *T
	if kv != nil {
		prev = &old
	}
	return t.stage(ctx, op, p, prev, &rec, now, nil)
}

// stage adds to p what replacing prev by next takes (either may be nil:
// a create, a delete): the record key, its index and expiry entries, and
// its unique values. The caller guards the record key itself.
//
// For each unique value next holds, stage reads its uniq/ key: free, or
// owned by next's ID, or owned by a record that is gone, expired or no
// longer holds the value, it is taken (guarded on the uniq/ key being as
// read); owned by a live record that holds it, it is an error wrapping
// broker.ErrAlreadyExists. Each unique value prev held and next does not
// is released if prev's ID still owns it. known holds uniq/ keys read
// already (Sweep reads them in bulk).
func (t *table[T]) stage(ctx context.Context, op string, p *plan, prev, next *T, now time.Time, known map[string]*mvccpb.KeyValue) error {
	var id string
	if prev != nil {
		id = (*prev).RecordID()
	} else {
		id = (*next).RecordID()
	}
	wanted := map[string]broker.Index{}
	var release []string
	if next != nil {
		for _, ix := range (*next).RecordIndexes() {
			if ix.Value == "" {
				continue
			}
			if len(ix.Value)+1+len(id) > maxKeySize {
				return fmt.Errorf("%s %q: %s value of %d bytes is too long: %w", t.kind, id, ix.Name, len(ix.Value), broker.ErrInvalid)
			}
			if ix.Unique {
				wanted[t.claimKey(ix.Name, ix.Value)] = ix
			}
		}
	}
	if prev != nil {
		for _, ix := range (*prev).RecordIndexes() {
			if ix.Value == "" {
				continue
			}
			p.del(t.idxPrefix(ix.Name, ix.Value) + id)
			if _, kept := wanted[t.claimKey(ix.Name, ix.Value)]; ix.Unique && !kept {
				release = append(release, t.claimKey(ix.Name, ix.Value))
			}
		}
		if exp := (*prev).RecordExpiry(); !exp.IsZero() {
			p.del(t.expKey(exp, id))
		}
		if next == nil {
			p.del(t.recKey(id))
		}
	}
	if next != nil {
		for _, ix := range (*next).RecordIndexes() {
			if ix.Value != "" {
				p.put(t.idxPrefix(ix.Name, ix.Value)+id, "")
			}
		}
		if exp := (*next).RecordExpiry(); !exp.IsZero() {
			p.put(t.expKey(exp, id), "")
		}
		raw, err := json.Marshal(*next)
		if err != nil {
			return fmt.Errorf("%s %q: encode: %w", t.kind, id, err)
		}
		p.put(t.recKey(id), string(raw))
	}

	// Unique values.
	var toRead []string
	for k := range wanted {
		if _, ok := known[k]; !ok {
			toRead = append(toRead, k)
		}
	}
	for _, k := range release {
		if _, ok := known[k]; !ok {
			toRead = append(toRead, k)
		}
	}
	claims := known
	if len(toRead) > 0 {
		read, err := t.s.getMany(ctx, op, toRead, 0)
		if err != nil {
			return err
		}
		claims = make(map[string]*mvccpb.KeyValue, len(read)+len(known))
		for k, v := range known {
			claims[k] = v
		}
		for k, v := range read {
			claims[k] = v
		}
	}
	for k, ix := range wanted {
		kv := claims[k]
		if kv != nil && string(kv.Value) != id {
			owner := string(kv.Value)
			okv, other, err := t.load(ctx, op, owner)
			if err != nil {
				return err
			}
			if okv != nil && broker.Live(other, now) && holds(other, ix) {
				return fmt.Errorf("%s %q: %s %q is taken by %q: %w", t.kind, id, ix.Name, ix.Value, owner, broker.ErrAlreadyExists)
			}
		}
		p.unchanged(k, kv)
		p.put(k, id)
	}
	for _, k := range release {
		if kv := claims[k]; kv != nil && string(kv.Value) == id {
			p.unchanged(k, kv)
			p.del(k)
		}
	}
	return nil
}

// holds reports whether rec has the index entry ix.
func holds(rec broker.Record, ix broker.Index) bool {
	for _, have := range rec.RecordIndexes() {
		if have.Name == ix.Name && have.Value == ix.Value {
			return true
		}
	}
	return false
}

// Get implements broker.Table.
func (t *table[T]) Get(ctx context.Context, id string) (rec T, err error) {
	op := t.kind + ".get"
	defer t.s.observe(op, time.Now(), &err)
	_, rec, err = t.loadLive(ctx, op, id, t.s.now())
	if err != nil {
		var zero T
		return zero, err
	}
	return rec, nil
}

// GetBy implements broker.Table. On a non-unique index it returns the live
// record with the smallest ID; an index T does not declare is an error
// wrapping broker.ErrInvalid.
func (t *table[T]) GetBy(ctx context.Context, index, value string) (rec T, err error) {
	op := t.kind + ".get_by"
	defer t.s.observe(op, time.Now(), &err)
	if err := t.s.usable(ctx, op); err != nil {
		return rec, err
	}
	if err := t.indexes.Check(t.kind, "get by", index); err != nil {
		return rec, err
	}
	var items []T
	if value != "" {
		items, _, err = t.list(ctx, op, index, value, "", 1)
		if err != nil {
			return rec, err
		}
	}
	if len(items) == 0 {
		return rec, fmt.Errorf("%s with %s %q: %w", t.kind, index, value, broker.ErrNotFound)
	}
	return items[0], nil
}

// Update implements broker.Table: read, fn, then a transaction guarded on
// the record's ModRevision (and its unique values); when another writer
// got in between, it reads again and calls fn again.
func (t *table[T]) Update(ctx context.Context, id string, fn func(T) (T, error)) (out T, err error) {
	op := t.kind + ".update"
	defer t.s.observe(op, time.Now(), &err)
	if err := t.s.usable(ctx, op); err != nil {
		return out, err
	}
	err = t.s.retry(ctx, op, t.recKey(id), id, func() (bool, error) {
		now := t.s.now()
		kv, old, err := t.loadLive(ctx, op, id, now)
		if err != nil {
			return false, err
		}
		rec, err := fn(old)
		if err != nil {
			return false, err
		}
		if rec.RecordID() != id {
			return false, fmt.Errorf("%s %q: update changed the id to %q: %w", t.kind, id, rec.RecordID(), broker.ErrInvalid)
		}
		if err := rec.Validate(); err != nil {
			return false, fmt.Errorf("%s: update: %w", t.kind, err)
		}
		p := newPlan()
		p.unchanged(t.recKey(id), kv)
		if err := t.stage(ctx, op, p, &old, &rec, now, nil); err != nil {
			return false, err
		}
		ok, err := t.s.commit(ctx, op, p)
		if ok {
			out = rec
		}
		return ok, err
	})
	if err != nil {
		var zero T
		return zero, err
	}
	return out, nil
}

// Delete implements broker.Table.
func (t *table[T]) Delete(ctx context.Context, id string) (err error) {
	op := t.kind + ".delete"
	defer t.s.observe(op, time.Now(), &err)
	if err := t.s.usable(ctx, op); err != nil {
		return err
	}
	return t.s.retry(ctx, op, t.recKey(id), id, func() (bool, error) {
		now := t.s.now()
		kv, old, err := t.loadLive(ctx, op, id, now)
		if err != nil {
			return false, err
		}
		p := newPlan()
		p.unchanged(t.recKey(id), kv)
		if err := t.stage(ctx, op, p, &old, nil, now, nil); err != nil {
			return false, err
		}
		return t.s.commit(ctx, op, p)
	})
}

// List implements broker.Table: live records in ID order, after q.After.
// A Value without an Index, an Index T does not declare, or an Index
// without a Value is an error wrapping broker.ErrInvalid: none of them may
// fall back to listing everything, or nothing. A page is read at one etcd
// revision, so it is a consistent snapshot.
func (t *table[T]) List(ctx context.Context, q broker.Query) (page broker.Page[T], err error) {
	op := t.kind + ".list"
	defer t.s.observe(op, time.Now(), &err)
	if err := t.s.usable(ctx, op); err != nil {
		return page, err
	}
	limit, err := t.indexes.CheckQuery(t.kind, q)
	if err != nil {
		return page, err
	}
	items, more, err := t.list(ctx, op, q.Index, q.Value, q.After, limit)
	if err != nil {
		return broker.Page[T]{}, err
	}
	page.Items = items
	if more {
		page.Next = items[len(items)-1].RecordID()
	}
	return page, nil
}

// list returns up to limit live records after the ID after, in ID order,
// of the whole kind (index "") or of one index value, and whether there
// are more. Every read after the first is at the first one's revision.
func (t *table[T]) list(ctx context.Context, op, index, value, after string, limit int) ([]T, bool, error) {
	now := t.s.now()
	prefix := t.recPrefix()
	if index != "" {
		prefix = t.idxPrefix(index, value)
	}
	start, end := prefix, clientv3.GetPrefixRangeEnd(prefix)
	if after != "" {
		start = prefix + after + "\x00" // the first key after prefix+after
	}
	out := make([]T, 0, min(limit+1, 64))
	var rev int64
	for len(out) <= limit {
		opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(int64(min(limit+1-len(out)+8, broker.MaxLimit)))}
		if rev > 0 {
			opts = append(opts, clientv3.WithRev(rev))
		}
		if index != "" {
			opts = append(opts, clientv3.WithKeysOnly())
		}
		var resp *clientv3.GetResponse
		err := t.s.call(ctx, op, func(ctx context.Context) (err error) {
			resp, err = t.s.client.Get(ctx, start, opts...)
			return err
		})
		if err != nil {
			return nil, false, err
		}
		if rev == 0 {
			rev = resp.Header.Revision
		}
		kvs := resp.Kvs
		if index != "" {
			kvs, err = t.indexed(ctx, op, kvs, index, value, rev)
			if err != nil {
				return nil, false, err
			}
		}
		for _, kv := range kvs {
			rec, err := t.decode(kv)
			if err != nil {
				return nil, false, err
			}
			if broker.Live(rec, now) && (index == "" || holds(rec, broker.Index{Name: index, Value: value})) {
				out = append(out, rec)
			}
		}
		if !resp.More || len(resp.Kvs) == 0 {
			break
		}
		start = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
	if len(out) > limit {
		return out[:limit], true, nil
	}
	return out, false, nil
}

// indexed reads, at rev, the records the index keys idx point to (keys of
// values other than value of index, which extend it with a NUL, are skipped), in
// the keys' order; records that are gone are left out.
func (t *table[T]) indexed(ctx context.Context, op string, idx []*mvccpb.KeyValue, index, value string, rev int64) ([]*mvccpb.KeyValue, error) {
	prefix := t.idxPrefix(index, value)
	var keys []string
	for _, kv := range idx {
		k := string(kv.Key)
		i := strings.LastIndexByte(k, 0)
		if k[:i+1] != prefix {
			continue
		}
		keys = append(keys, t.recKey(k[i+1:]))
	}
	recs, err := t.s.getMany(ctx, op, keys, rev)
	if err != nil {
		return nil, err
	}
	out := make([]*mvccpb.KeyValue, 0, len(keys))
	for _, k := range keys {
		if kv := recs[k]; kv != nil {
			out = append(out, kv)
		}
	}
	return out, nil
}

// sweep deletes the expired records of this kind, earliest expiry first,
// reading the exp/ keys up to now in steps of sweepBatch. An exp/ key whose
// record is gone or no longer expires then is deleted and not counted.
func (t *table[T]) sweep(ctx context.Context, now time.Time) (removed int, err error) {
	op := t.kind + ".sweep"
	start := t.expPrefix()
	end := t.expPrefix() + expStamp(now) + "\x01" // every key of an expiry <= now
	for {
		var resp *clientv3.GetResponse
		err := t.s.call(ctx, op, func(ctx context.Context) (err error) {
			resp, err = t.s.client.Get(ctx, start, clientv3.WithRange(end), clientv3.WithKeysOnly(),
				clientv3.WithLimit(int64(t.s.sweepBatch)))
			return err
		})
		if err != nil || len(resp.Kvs) == 0 {
			return removed, err
		}
		r, err := t.sweepStep(ctx, op, resp.Kvs, now)
		removed += r
		if err != nil || !resp.More {
			return removed, err
		}
		start = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
}

// sweepStep deletes what the expiry keys exps point to, in transactions of
// at most maxTxnOps operations; a transaction whose compares fail is
// retried one record at a time, and a record that changed meanwhile is
// left for the next Sweep.
func (t *table[T]) sweepStep(ctx context.Context, op string, exps []*mvccpb.KeyValue, now time.Time) (int, error) {
	ids := make([]string, len(exps))
	recKeys := make([]string, len(exps))
	for i, kv := range exps {
		k := string(kv.Key)
		ids[i] = k[strings.LastIndexByte(k, 0)+1:]
		recKeys[i] = t.recKey(ids[i])
	}
	recs, err := t.s.getMany(ctx, op, recKeys, 0)
	if err != nil {
		return 0, err
	}
	type item struct {
		p       *plan
		counted bool
	}
	items := make([]item, 0, len(exps))
	decoded := make([]*T, len(exps))
	var claimKeys []string
	for i, kv := range exps {
		rkv := recs[recKeys[i]]
		if rkv == nil {
			continue
		}
		rec, err := t.decode(rkv)
		if err != nil {
			return 0, err
		}
		if exp := rec.RecordExpiry(); !exp.IsZero() && !broker.Live(rec, now) && t.expKey(exp, ids[i]) == string(kv.Key) {
			decoded[i] = &rec
			for _, ix := range rec.RecordIndexes() {
				if ix.Unique && ix.Value != "" {
					claimKeys = append(claimKeys, t.claimKey(ix.Name, ix.Value))
				}
			}
		}
	}
	claims, err := t.s.getMany(ctx, op, claimKeys, 0)
	if err != nil {
		return 0, err
	}
	for i, kv := range exps {
		p := newPlan()
		if decoded[i] == nil { // stale: the record is gone or expires later
			p.unchanged(string(kv.Key), kv)
			p.del(string(kv.Key))
			items = append(items, item{p: p})
			continue
		}
		p.unchanged(recKeys[i], recs[recKeys[i]])
		if err := t.stage(ctx, op, p, decoded[i], nil, now, claims); err != nil {
			return 0, err
		}
		items = append(items, item{p: p, counted: true})
	}
	removed := 0
	for len(items) > 0 {
		batch, n := newPlan(), 0
		count := 0
		for n < len(items) && (n == 0 || batch.size()+items[n].p.size() <= maxTxnOps) {
			batch.merge(items[n].p)
			if items[n].counted {
				count++
			}
			n++
		}
		ok, err := t.s.commit(ctx, op, batch)
		if err != nil {
			return removed, err
		}
		if ok {
			removed += count
		} else {
			for _, it := range items[:n] {
				ok, err := t.s.commit(ctx, op, it.p)
				if err != nil {
					return removed, err
				}
				if ok && it.counted {
					removed++
				}
			}
		}
		items = items[n:]
	}
	return removed, nil
}
