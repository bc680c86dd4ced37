package etcd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/lanyardhq/lanyard/broker"
	"github.com/lanyardhq/lanyard/internal/codec"
)

// auditLog is the hash-chained audit record: P audit/<20-digit seq> holds
// each record and P audit-head the newest one's seq and hash. Append is one
// transaction guarded on audit-head's revision, so concurrent appenders
// (in any number of replicas) extend one contiguous chain; etcd commits it
// to a quorum's disk before Append returns.
type auditLog struct{ s *Store }

var _ broker.AuditLog = auditLog{}

// Audit implements broker.Store.
func (s *Store) Audit() broker.AuditLog { return auditLog{s} }

type auditHead struct {
	Seq  uint64 `json:"seq"`
	Hash string `json:"hash"`
}

func (a auditLog) headKey() string { return a.s.prefix + "audit-head" }
func (a auditLog) prefix() string  { return a.s.prefix + "audit/" }

// seqKey is the key of record n; 20 digits hold every uint64, so key order
// is sequence order.
func (a auditLog) seqKey(n uint64) string { return fmt.Sprintf("%s%020d", a.prefix(), n) }

// Append implements broker.AuditLog.
func (a auditLog) Append(ctx context.Context, e broker.AuditEvent) (out broker.AuditEvent, err error) {
	const op = "audit.append"
	defer a.s.observe(op, time.Now(), &err)
	if err := a.s.usable(ctx, op); err != nil {
		return out, err
	}
	// A transaction that failed because etcd was unavailable (the member
	// it went to died, the leader changed) may or may not have committed.
	// Such attempts are kept in unsure: the next attempt first looks
	// whether the head is one of them (then it committed, and that is the
	// answer), else appends again. Each attempt is guarded on the head's
	// revision, so at most one of them can commit, unless another
	// replica's record lands between a late commit of an unsure attempt
	// and the look at the head: then the event is in the chain twice,
	// never missing.
	start := time.Now()
	var unsure []broker.AuditEvent
	err = a.s.retry(ctx, op, a.headKey(), "", func() (bool, error) {
		kv, err := a.s.get(ctx, op, a.headKey())
		if err != nil {
			return false, err
		}
		var head auditHead
		if kv != nil {
			if err := codec.Decode(kv.Value, &head); err != nil {
				return false, fmt.Errorf("audit: head unreadable: %w", err)
			}
		}
		for _, u := range unsure {
			if u.Seq == head.Seq && u.Hash == head.Hash {
				out = u
				return true, nil
			}
		}
		ev, rec := e.Chained(head.Seq+1, head.Hash, a.s.now())
		nh, err := json.Marshal(auditHead{Seq: ev.Seq, Hash: ev.Hash})
		if err != nil {
			return false, err
		}
		p := newPlan()
		p.unchanged(a.headKey(), kv)
		p.absent(a.seqKey(ev.Seq))
		p.put(a.seqKey(ev.Seq), string(rec))
		p.put(a.headKey(), string(nh))
		// Each try is bounded by attemptTimeout: a proposal that a dying
		// leader took with it gets no answer until etcd's own request
		// timeout (several seconds), and every append of this process
		// waits behind it.
		actx, cancel := context.WithTimeout(ctx, a.attemptTimeout())
		ok, err := a.s.commit(actx, op, p)
		cancel()
		unsureErr := a.s.transient(ctx, err) || (err != nil && ctx.Err() == nil && errors.Is(err, context.DeadlineExceeded))
		if unsureErr && time.Since(start) < a.s.timeout {
			unsure = append(unsure, ev)
			if err := sleepCtx(ctx, transientBackoff<<min(len(unsure)-1, 3)); err != nil {
				return false, fmt.Errorf("etcd %s: %w", op, err)
			}
			return false, nil
		}
		if ok {
			out = ev
		}
		return ok, err
	})
	if err != nil {
		return broker.AuditEvent{}, err
	}
	return out, nil
}

// attemptTimeout bounds one transaction of Append: a fifth of
// RequestTimeout, at least 500 ms.
func (a auditLog) attemptTimeout() time.Duration {
	return max(a.s.timeout/5, 500*time.Millisecond)
}

// Range implements broker.AuditLog.
func (a auditLog) Range(ctx context.Context, after uint64, limit int) (out []broker.AuditEvent, err error) {
	const op = "audit.range"
	defer a.s.observe(op, time.Now(), &err)
	if limit <= 0 || limit > broker.MaxLimit {
		limit = broker.MaxLimit
	}
	if after == ^uint64(0) {
		return nil, nil
	}
	var resp *clientv3.GetResponse
	err = a.s.call(ctx, op, func(ctx context.Context) (err error) {
		resp, err = a.s.client.Get(ctx, a.seqKey(after+1),
			clientv3.WithRange(clientv3.GetPrefixRangeEnd(a.prefix())), clientv3.WithLimit(int64(limit)))
		return err
	})
	if err != nil {
		return nil, err
	}
	for _, kv := range resp.Kvs {
		var e broker.AuditEvent
		if err := codec.Decode(kv.Value, &e); err != nil {
			return nil, fmt.Errorf("audit record %s unreadable: %w", kv.Key, err)
		}
		out = append(out, e)
	}
	return out, nil
}
