package etcd

import (
	"context"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/lanyardhq/lanyard/broker"
)

// counters keeps broker.Counters under P ctr/<window end> NUL <key>: the
// key's etcd version (how many times it was put since it was created) is
// the count, so Incr is one put that returns the previous version, with no
// compare-and-swap and no retry however many replicas count at once. Keys
// sort by window end, so Sweep deletes every ended window with one
// range delete.
type counters struct{ s *Store }

var _ broker.Counters = counters{}

// Counters implements broker.Store.
func (s *Store) Counters() broker.Counters { return counters{s} }

func (c counters) prefix() string { return c.s.prefix + "ctr/" }

// Incr implements broker.Counters.
func (c counters) Incr(ctx context.Context, key string, window time.Duration) (n int64, err error) {
	const op = "counters.incr"
	defer c.s.observe(op, time.Now(), &err)
	if err := broker.ValidCounter(key, window); err != nil {
		return 0, fmt.Errorf("etcd %s: %w", op, err)
	}
	_, end := broker.CounterWindow(c.s.now(), window)
	k := c.prefix() + expStamp(end) + "\x00" + key
	err = c.s.call(ctx, op, func(ctx context.Context) error {
		resp, err := c.s.client.Put(ctx, k, "", clientv3.WithPrevKV())
		if err != nil {
			return err
		}
		n = 1
		if resp.PrevKv != nil {
			n = resp.PrevKv.Version + 1
		}
		return nil
	})
	return n, err
}

// sweep deletes the counters of every window that ended by now.
func (c counters) sweep(ctx context.Context, now time.Time) (removed int, err error) {
	return 0, c.s.call(ctx, "counters.sweep", func(ctx context.Context) error {
		_, err := c.s.client.Delete(ctx, c.prefix(), clientv3.WithRange(c.prefix()+expStamp(now)+"\x01"))
		return err
	})
}
