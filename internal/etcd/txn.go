package etcd

import (
	"context"
	"slices"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// plan collects one transaction: the compares that guard it and the puts
// and deletes it makes. etcd refuses a transaction that touches a key
// twice, so a key put after it was deleted is only put, and a key deleted
// after it was put stays put (a record's new index entry that equals an
// old one).
type plan struct {
	cmps []clientv3.Cmp
	puts map[string]string
	dels map[string]bool
}

func newPlan() *plan { return &plan{puts: map[string]string{}, dels: map[string]bool{}} }

func (p *plan) cmp(c clientv3.Cmp) { p.cmps = append(p.cmps, c) }

func (p *plan) put(k, v string) {
	p.puts[k] = v
	delete(p.dels, k)
}

func (p *plan) del(k string) {
	if _, ok := p.puts[k]; !ok {
		p.dels[k] = true
	}
}

// absent guards on key not existing.
func (p *plan) absent(key string) {
	p.cmp(clientv3.Compare(clientv3.CreateRevision(key), "=", 0))
}

// unchanged guards on key still being as read (absent if kv is nil).
func (p *plan) unchanged(key string, kv *mvccpb.KeyValue) {
	if kv == nil {
		p.absent(key)
		return
	}
	p.cmp(clientv3.Compare(clientv3.ModRevision(key), "=", kv.ModRevision))
}

func (p *plan) size() int { return max(len(p.cmps), len(p.puts)+len(p.dels)) }

// merge adds q to p.
func (p *plan) merge(q *plan) {
	p.cmps = append(p.cmps, q.cmps...)
	for k := range q.dels {
		p.del(k)
	}
	for k, v := range q.puts {
		p.put(k, v)
	}
}

// ops returns the plan's operations in key order.
func (p *plan) ops() []clientv3.Op {
	keys := make([]string, 0, len(p.puts)+len(p.dels))
	for k := range p.puts {
		keys = append(keys, k)
	}
	for k := range p.dels {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	ops := make([]clientv3.Op, len(keys))
	for i, k := range keys {
		if v, ok := p.puts[k]; ok {
			ops[i] = clientv3.OpPut(k, v)
		} else {
			ops[i] = clientv3.OpDelete(k)
		}
	}
	return ops
}

// commit runs p as one transaction and reports whether its compares held.
func (s *Store) commit(ctx context.Context, op string, p *plan) (bool, error) {
	var ok bool
	err := s.call(ctx, op, func(ctx context.Context) error {
		resp, err := s.client.Txn(ctx).If(p.cmps...).Then(p.ops()...).Commit()
		if err == nil {
			ok = resp.Succeeded
		}
		return err
	})
	return ok, err
}

// get reads one key; kv is nil if it does not exist.
func (s *Store) get(ctx context.Context, op, key string) (*mvccpb.KeyValue, error) {
	var kv *mvccpb.KeyValue
	err := s.call(ctx, op, func(ctx context.Context) error {
		resp, err := s.client.Get(ctx, key)
		if err == nil && len(resp.Kvs) > 0 {
			kv = resp.Kvs[0]
		}
		return err
	})
	return kv, err
}

// getMany reads keys (in chunks of one read-only transaction each) and
// returns what it found by key; a missing key maps to nil. With rev > 0
// every read is at that revision, so the result is one consistent
// snapshot.
func (s *Store) getMany(ctx context.Context, op string, keys []string, rev int64) (map[string]*mvccpb.KeyValue, error) {
	out := make(map[string]*mvccpb.KeyValue, len(keys))
	for chunk := range slices.Chunk(keys, maxTxnOps) {
		ops := make([]clientv3.Op, len(chunk))
		for i, k := range chunk {
			if rev > 0 {
				ops[i] = clientv3.OpGet(k, clientv3.WithRev(rev))
			} else {
				ops[i] = clientv3.OpGet(k)
			}
		}
		// A read-only transaction is safe to send again; the client
		// repeats Range requests by itself, but not transactions.
		err := s.again(ctx, op, func(ctx context.Context) error {
			resp, err := s.client.Txn(ctx).Then(ops...).Commit()
			if err != nil {
				return err
			}
			for i, r := range resp.Responses {
				out[chunk[i]] = nil
				if kvs := r.GetResponseRange().GetKvs(); len(kvs) > 0 {
					out[chunk[i]] = kvs[0]
				}
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	return out, nil
}
