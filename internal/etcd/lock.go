package etcd

import (
	"context"
	"fmt"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/lanyardhq/lanyard/broker"
)

// LockTTL is the lease of the Store's lock session, in seconds: the
// session keeps it alive while the process runs, so a lock held by a
// process that dies (or loses etcd for longer) is released after at most
// this long.
const LockTTL = 10

// Lock takes the cluster-wide lock name (a concurrency.Mutex on
// P lock/<name>/, held through the Store's lease) and returns the function
// that releases it. It waits while another holder, in this process or any
// other, has the lock, until ctx ends. Callers in one process take turns
// on an in-process lock first, because the Mutex is per lease and the
// Store has one lease. A lock is advisory: it serialises the holders'
// work, but what they write must still be guarded (compare-and-swap),
// since a holder that stalls past LockTTL loses the lock unaware.
//
// Errors wrap the caller's context error or broker.ErrUnavailable.
func (s *Store) Lock(ctx context.Context, name string) (unlock func(), err error) {
	const op = "lock"
	defer s.observe(op, time.Now(), &err)
	if err := s.usable(ctx, op); err != nil {
		return nil, err
	}
	if name == "" || strings.ContainsFunc(name, func(r rune) bool { return r < 0x20 }) {
		return nil, fmt.Errorf("etcd lock: name %q must be non-empty without control characters: %w", name, broker.ErrInvalid)
	}
	key := s.prefix + "lock/" + name + "/"
	local, err := s.locks.lock(ctx, key)
	if err != nil {
		return nil, fmt.Errorf("etcd %s %q: %w", op, name, err)
	}
	sess, err := s.session(ctx)
	if err != nil {
		local()
		return nil, err
	}
	m := concurrency.NewMutex(sess, key)
	if err := m.Lock(ctx); err != nil {
		local()
		return nil, s.mapErr(ctx, op, err)
	}
	return func() {
		uctx, cancel := context.WithTimeout(context.Background(), s.timeout)
		defer cancel()
		// If this fails, the lease's expiry releases the lock.
		_ = m.Unlock(uctx)
		local()
	}, nil
}

// session returns the Store's lock session, granting a lease for a new
// one if there is none or the last one's lease was lost.
func (s *Store) session(ctx context.Context) (*concurrency.Session, error) {
	s.sessMu.Lock()
	defer s.sessMu.Unlock()
	if s.sess != nil {
		select {
		case <-s.sess.Done(): // the lease expired or was revoked
			s.sess = nil
		default:
			return s.sess, nil
		}
	}
	var lease *clientv3.LeaseGrantResponse
	err := s.call(ctx, "lock.session", func(ctx context.Context) (err error) {
		lease, err = s.client.Grant(ctx, LockTTL)
		return err
	})
	if err != nil {
		return nil, err
	}
	sess, err := concurrency.NewSession(s.client, concurrency.WithLease(lease.ID), concurrency.WithTTL(LockTTL))
	if err != nil {
		return nil, s.mapErr(ctx, "lock.session", err)
	}
	s.sess = sess
	return sess, nil
}

// closeSession revokes the lock session's lease (releasing every lock
// still held), waiting at most RequestTimeout.
func (s *Store) closeSession() {
	s.sessMu.Lock()
	defer s.sessMu.Unlock()
	if s.sess == nil {
		return
	}
	s.sess.Orphan()
	ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
	defer cancel()
	_, _ = s.client.Revoke(ctx, s.sess.Lease())
	s.sess = nil
}
