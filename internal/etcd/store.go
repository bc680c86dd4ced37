// Package etcd is the distributed metadata store: broker.Store on an etcd
// v3 cluster, for several Lanyard replicas sharing one state. It is the
// only package that imports go.etcd.io/etcd/client/v3, and a leaf: only
// cmd/lanyard may import it.
//
// # Keys
//
// Every key lives under Options.Prefix (P below), so one deployment (or
// one test) owns one prefix and deleting it removes everything:
//
//	P rec/<kind>/<id>                            record as JSON
//	P idx/<kind>/<index>/<value> NUL <id>        one per index entry (empty value)
//	P exp/<kind>/<expiry> NUL <id>               one per expiring record; <expiry> sorts as time
//	P uniq/<kind>/<index>/<value>                owner ID of a unique index value
//	P audit/<20-digit seq>                       audit record as JSON
//	P audit-head                                 {"seq":n,"hash":h} of the newest audit record
//	P ctr/<window end> NUL <key>                 a fixed-window counter; its version is the count
//	P lock/<name>/<lease>                        a lock holder or waiter (concurrency.Mutex)
//
// Record IDs hold no control characters (broker validates them), so the
// last NUL of an index key separates value from ID even when the value
// holds NUL.
//
// # Concurrency
//
// Every write is one etcd transaction guarded by compare-and-swap: Create
// compares the record key's CreateRevision with 0 (or, over an expired
// record, its ModRevision with the one read); Update, Delete, Consume and
// Rotate compare the ModRevision they read. A unique index value is owned
// through its uniq/ key: a writer that takes or keeps a value compares
// that key's revision with the one it read and rewrites it, so two writers
// can never both take a value, even when each judges an earlier owner
// expired by its own clock. A lost compare re-reads and retries (Update
// calls fn again) with jittered exponential backoff, at most maxAttempts
// times, then returns a *ConflictError, which matches broker.ErrConflict.
// The audit chain is extended the same way on audit-head, so replicas
// append to one contiguous chain.
//
// Expiry follows the injected clock: records past their expiry behave as
// absent and Sweep deletes them through the exp/ keys.
//
// # Locks and watches
//
// Lock is a lease-backed lock (concurrency.Mutex on P lock/<name>/) for
// work that must happen once across replicas, such as one upstream
// refresh per connection; the lease (LockTTL) frees the locks of a
// replica that dies. Lanyard keeps no in-process cache of records that
// would need invalidating: every redemption reads the grant and the
// connection with a linearizable read, so a revoke or unlink committed
// on one replica is seen by the next read on any other. A cache added
// later should watch P rec/<kind>/ from the revision it was filled at
// (every change to a record is a put or delete of its rec/ key).
package etcd

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/lanyardhq/lanyard/broker"
	"github.com/lanyardhq/lanyard/internal/codec"
)

const component = "etcd"

// DefaultPrefix is the key prefix when Options.Prefix is empty.
const DefaultPrefix = "/lanyard/"

// Retry policy of a lost compare-and-swap: up to maxAttempts attempts,
// sleeping a random time up to min(maxBackoff, baseBackoff·2^(n-1)) before
// the n-th retry.
const (
	maxAttempts = 20
	baseBackoff = 2 * time.Millisecond
	maxBackoff  = 100 * time.Millisecond
)

// maxKeySize bounds index keys (value + NUL + ID), as bbolt does for the
// embedded store, so both backends accept the same records.
const maxKeySize = 32 << 10

// Options configures Open.
type Options struct {
	// Endpoints are the client URLs of the etcd members
	// (http://host:2379, or https:// with TLS). Required.
	Endpoints []string
	// Prefix is prepended to every key; a "/" is added if it lacks one.
	// Empty means DefaultPrefix.
	Prefix string
	// Now is the clock expiry is measured against; nil means time.Now.
	Now func() time.Time
	// Observer is told about every operation; nil means nobody listens.
	Observer broker.Observer
	// DialTimeout bounds connecting (and authenticating) in Open; 0 means
	// 5 seconds.
	DialTimeout time.Duration
	// RequestTimeout bounds each request to etcd; a request that gets no
	// answer in time fails with an error wrapping broker.ErrUnavailable.
	// 0 means 5 seconds.
	RequestTimeout time.Duration
	// TLS, if set, is used to connect (client certificates included).
	TLS *tls.Config
	// Username and Password authenticate to etcd when Username is set.
	Username, Password string
}

func (o Options) withDefaults() Options {
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Prefix == "" {
		o.Prefix = DefaultPrefix
	}
	if !strings.HasSuffix(o.Prefix, "/") {
		o.Prefix += "/"
	}
	if o.DialTimeout <= 0 {
		o.DialTimeout = 5 * time.Second
	}
	if o.RequestTimeout <= 0 {
		o.RequestTimeout = 5 * time.Second
	}
	return o
}

// String describes the options without the password.
func (o Options) String() string {
	pw := ""
	if o.Password != "" {
		pw = "[redacted]"
	}
	return fmt.Sprintf("etcd.Options{Endpoints:%q Prefix:%q Username:%q Password:%s TLS:%t DialTimeout:%v RequestTimeout:%v}",
		o.Endpoints, o.Prefix, o.Username, pw, o.TLS != nil, o.DialTimeout, o.RequestTimeout)
}

// GoString is String, so that %#v does not print the password either.
func (o Options) GoString() string { return o.String() }

// LogValue is String, for log/slog.
func (o Options) LogValue() slog.Value { return slog.StringValue(o.String()) }

// ConflictError is returned when a write lost its compare-and-swap against
// concurrent writers on every attempt. It matches broker.ErrConflict.
type ConflictError struct {
	Op       string // "<kind>.<method>" or "audit.append"
	Key      string // record ID (empty for the audit chain)
	Attempts int
}

func (e *ConflictError) Error() string {
	return fmt.Sprintf("etcd %s %q: lost the compare-and-swap %d times to concurrent writers: %v",
		e.Op, e.Key, e.Attempts, broker.ErrConflict)
}

// Unwrap makes errors.Is(err, broker.ErrConflict) true.
func (e *ConflictError) Unwrap() error { return broker.ErrConflict }

// Store is an etcd-backed broker.Store. It is safe for concurrent use, and
// any number of Stores (in one process or many) may share a prefix.
type Store struct {
	client  *clientv3.Client
	prefix  string
	now     func() time.Time
	obs     broker.Observer
	timeout time.Duration
	closed  atomic.Bool
	locks   keyLocks
	sessMu  sync.Mutex
	sess    *concurrency.Session // Lock's lease; nil until the first Lock

	users       *table[broker.User]
	clients     *table[broker.Client]
	resources   *table[broker.Resource]
	connections *table[broker.Connection]
	grants      *table[broker.Grant]
	authCodes   *singleUse[broker.AuthCode]
	refresh     *singleUse[broker.RefreshToken]
	devices     *singleUse[broker.DeviceCode]
	sessions    *table[broker.Session]
	authReqs    *singleUse[broker.AuthRequest]
	links       *singleUse[broker.PendingLink]
	sweepers    []sweeper
	sweepBatch  int // expiry keys one Sweep step reads at most
}

var _ broker.Store = (*Store)(nil)

// defaultSweepBatch bounds the expiry keys read by one step of Sweep; the
// deletions of a step are committed in transactions of at most maxTxnOps
// operations (etcd's default --max-txn-ops is 128).
const (
	defaultSweepBatch = 100
	maxTxnOps         = 120
)

// Open connects to etcd and checks that it answers (a read under the
// prefix, so a user without access to it is found out here). An
// unreachable cluster is an error wrapping broker.ErrUnavailable.
func Open(ctx context.Context, opts Options) (*Store, error) {
	opts = opts.withDefaults()
	if len(opts.Endpoints) == 0 {
		return nil, fmt.Errorf("etcd: no endpoints: %w", broker.ErrInvalid)
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:            opts.Endpoints,
		DialTimeout:          opts.DialTimeout,
		DialKeepAliveTime:    10 * time.Second,
		DialKeepAliveTimeout: 3 * time.Second,
		TLS:                  opts.TLS,
		Username:             opts.Username,
		Password:             opts.Password,
		// Errors reach callers (and the Observer); the client's own log
		// would repeat them on stderr on every retry.
		Logger: zap.NewNop(),
	})
	switch {
	case deniedErr(err):
		return nil, fmt.Errorf("etcd: connect to %v: %w: %w", opts.Endpoints, errDenied, err)
	case err != nil:
		return nil, fmt.Errorf("etcd: connect to %v: %w: %v", opts.Endpoints, broker.ErrUnavailable, err)
	}
	s := &Store{client: cli, prefix: opts.Prefix, now: opts.Now, obs: opts.Observer,
		timeout: opts.RequestTimeout, sweepBatch: defaultSweepBatch}
	s.users = newTable[broker.User](s, "users")
	s.clients = newTable[broker.Client](s, "clients")
	s.resources = newTable[broker.Resource](s, "resources")
	s.connections = newTable[broker.Connection](s, "connections")
	s.grants = newTable[broker.Grant](s, "grants")
	s.authCodes = newSingleUse[broker.AuthCode](s, "auth_codes")
	s.refresh = newSingleUse[broker.RefreshToken](s, "refresh_tokens")
	s.devices = newSingleUse[broker.DeviceCode](s, "device_codes")
	s.sessions = newTable[broker.Session](s, "sessions")
	s.authReqs = newSingleUse[broker.AuthRequest](s, "auth_requests")
	s.links = newSingleUse[broker.PendingLink](s, "pending_links")
	// Read by every redemption, changed far less often.
	s.resources.memo = &codec.Memo[broker.Resource]{Clone: broker.Resource.Clone, Max: codec.MemoMax}
	s.grants.memo = &codec.Memo[broker.Grant]{Clone: broker.Grant.Clone, Max: codec.MemoMax}
	s.connections.memo = &codec.Memo[broker.Connection]{Clone: broker.Connection.Clone, Max: codec.MemoMax}
	s.sweepers = []sweeper{s.users, s.clients, s.resources, s.connections, s.grants,
		s.authCodes, s.refresh, s.devices, s.sessions, s.authReqs, s.links, counters{s}}
	if err := s.Ping(ctx); err != nil {
		_ = cli.Close()
		return nil, fmt.Errorf("etcd: open %v: %w", opts.Endpoints, err)
	}
	return s, nil
}

// Prefix returns the key prefix (ending in "/").
func (s *Store) Prefix() string { return s.prefix }

// Users implements broker.Store.
func (s *Store) Users() broker.Table[broker.User] { return s.users }

// Clients implements broker.Store.
func (s *Store) Clients() broker.Table[broker.Client] { return s.clients }

// Resources implements broker.Store.
func (s *Store) Resources() broker.Table[broker.Resource] { return s.resources }

// Connections implements broker.Store.
func (s *Store) Connections() broker.Table[broker.Connection] { return s.connections }

// Grants implements broker.Store.
func (s *Store) Grants() broker.Table[broker.Grant] { return s.grants }

// AuthCodes implements broker.Store.
func (s *Store) AuthCodes() broker.SingleUseTable[broker.AuthCode] { return s.authCodes }

// RefreshTokens implements broker.Store.
func (s *Store) RefreshTokens() broker.SingleUseTable[broker.RefreshToken] { return s.refresh }

// DeviceCodes implements broker.Store.
func (s *Store) DeviceCodes() broker.SingleUseTable[broker.DeviceCode] { return s.devices }

// Sessions implements broker.Store.
func (s *Store) Sessions() broker.Table[broker.Session] { return s.sessions }

// AuthRequests implements broker.Store.
func (s *Store) AuthRequests() broker.SingleUseTable[broker.AuthRequest] { return s.authReqs }

// PendingLinks implements broker.Store.
func (s *Store) PendingLinks() broker.SingleUseTable[broker.PendingLink] { return s.links }

// Sweep deletes every record that has expired by the time it starts, with
// its index entries, and returns how many it removed. It walks the exp/
// keys only, reading at most sweepBatch of them per step and deleting in
// transactions of bounded size, each guarded by the revisions it read: a
// record changed meanwhile is left alone (for the next Sweep). Several
// replicas may sweep at once; each record is counted by the one whose
// deletion committed. On an error it returns how many it had removed.
func (s *Store) Sweep(ctx context.Context) (n int, err error) {
	defer s.observe("sweep", time.Now(), &err)
	if err := s.usable(ctx, "sweep"); err != nil {
		return 0, err
	}
	now := s.now()
	for _, sw := range s.sweepers {
		r, err := sw.sweep(ctx, now)
		n += r
		if err != nil {
			return n, fmt.Errorf("sweep: %w", err)
		}
	}
	return n, nil
}

// Ping reports whether the store can serve requests: one linearizable read
// (it needs a quorum), bounded by RequestTimeout.
func (s *Store) Ping(ctx context.Context) (err error) {
	defer s.observe("ping", time.Now(), &err)
	return s.call(ctx, "ping", func(ctx context.Context) error {
		_, err := s.client.Get(ctx, s.prefix+"ping", clientv3.WithCountOnly())
		return err
	})
}

// Close closes the client. Later calls return errors wrapping
// broker.ErrUnavailable. Close is idempotent.
func (s *Store) Close() error {
	if s.closed.Swap(true) {
		return nil
	}
	s.closeSession()
	if err := s.client.Close(); err != nil && !errors.Is(err, context.Canceled) {
		return fmt.Errorf("etcd: close: %w", err)
	}
	return nil
}

func (s *Store) observe(op string, start time.Time, err *error) {
	s.obs.Observe(component, op, start, *err)
}

// usable returns an error if ctx is done or the store closed.
func (s *Store) usable(ctx context.Context, op string) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("etcd %s: %w", op, err)
	}
	if s.closed.Load() {
		return fmt.Errorf("etcd %s: store is closed: %w", op, broker.ErrUnavailable)
	}
	return nil
}

// call runs one request with RequestTimeout and maps its error.
func (s *Store) call(ctx context.Context, op string, fn func(ctx context.Context) error) error {
	if err := s.usable(ctx, op); err != nil {
		return err
	}
	rctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	return s.mapErr(ctx, op, fn(rctx))
}

// again is call for a request that is safe to send twice (a read): when
// etcd is unavailable for a moment (the member the client was talking to
// went away, a leader election), it tries again after a short pause, for
// at most RequestTimeout from the first try. Refused credentials are not
// retried.
func (s *Store) again(ctx context.Context, op string, fn func(ctx context.Context) error) error {
	deadline := time.Now().Add(s.timeout)
	for n := 0; ; n++ {
		err := s.call(ctx, op, fn)
		if !s.transient(ctx, err) || time.Now().After(deadline) {
			return err
		}
		if err := sleepCtx(ctx, min(maxBackoff, transientBackoff<<min(n, 8))); err != nil {
			return fmt.Errorf("etcd %s: %w", op, err)
		}
	}
}

// transientBackoff is the first pause of again and of the audit log's
// retry after an unavailable etcd.
const transientBackoff = 20 * time.Millisecond

// transient reports whether err, from call, is etcd being unavailable
// (rather than refusing the request, the caller giving up or the store
// being closed), so that a request safe to repeat may be tried again.
func (s *Store) transient(ctx context.Context, err error) bool {
	return err != nil && errors.Is(err, broker.ErrUnavailable) && !errors.Is(err, errDenied) &&
		ctx.Err() == nil && !s.closed.Load()
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// mapErr turns a client error into one of the store's: the caller's
// context error, broker.ErrUnavailable (closed store, no answer in time, no
// leader, connection trouble) or broker.ErrInvalid (etcd refused the
// request itself, for example as too large).
func (s *Store) mapErr(ctx context.Context, op string, err error) error {
	if err == nil {
		return nil
	}
	if s.closed.Load() {
		return fmt.Errorf("etcd %s: store is closed: %w", op, broker.ErrUnavailable)
	}
	if cerr := ctx.Err(); cerr != nil {
		return fmt.Errorf("etcd %s: %w", op, cerr)
	}
	code := status.Code(err)
	var ee rpctypes.EtcdError
	if errors.As(err, &ee) {
		code = ee.Code()
	}
	switch {
	case errors.Is(err, context.DeadlineExceeded) || code == codes.DeadlineExceeded:
		return fmt.Errorf("etcd %s: no answer within %v: %w", op, s.timeout, broker.ErrUnavailable)
	case deniedErr(err):
		return fmt.Errorf("etcd %s: %w: %w", op, errDenied, err)
	case code == codes.InvalidArgument || code == codes.OutOfRange:
		return fmt.Errorf("etcd %s: %w: %v", op, broker.ErrInvalid, err)
	default:
		return fmt.Errorf("etcd %s: %w: %v", op, broker.ErrUnavailable, err)
	}
}

// errDenied is how a refusal of the credentials or of access to the prefix
// is reported: the store cannot serve requests (so it wraps
// broker.ErrUnavailable) until an operator fixes the configuration.
var errDenied = fmt.Errorf("access denied (check Username, Password and that the user's role may read and write the prefix): %w",
	broker.ErrUnavailable)

// deniedErr reports whether err is etcd refusing the credentials or the
// access.
func deniedErr(err error) bool {
	code := status.Code(err)
	var ee rpctypes.EtcdError
	if errors.As(err, &ee) {
		code = ee.Code()
	}
	return code == codes.PermissionDenied || code == codes.Unauthenticated ||
		errors.Is(err, rpctypes.ErrUserEmpty) || errors.Is(err, rpctypes.ErrAuthFailed) ||
		errors.Is(err, rpctypes.ErrGRPCUserEmpty) || errors.Is(err, rpctypes.ErrGRPCAuthFailed)
}

// retry runs attempt until it reports that its transaction committed or
// returns an error (returned unchanged), sleeping a jittered, growing time
// between attempts; after maxAttempts lost compare-and-swaps it returns a
// *ConflictError naming id.
//
// The attempts run holding this Store's lock of lockKey (the etcd key the
// transaction guards), so that writers of one key in one process take
// turns rather than defeat each other's compare-and-swap: conflicts arise
// only between replicas, and a hot key costs etcd one transaction per
// write rather than one per writer and round. The lock is an optimisation,
// never what makes a write safe: a writer that has waited RequestTimeout
// for it (writers ahead of it stuck on an unreachable etcd, or a very hot
// key) goes ahead without it, so a call still ends within about twice
// RequestTimeout. A caller's fn must not write the same record through the
// same Store (it would wait for itself that long).
func (s *Store) retry(ctx context.Context, op, lockKey, id string, attempt func() (committed bool, err error)) error {
	lctx, cancel := context.WithTimeout(ctx, s.timeout)
	unlock, err := s.locks.lock(lctx, lockKey)
	cancel()
	switch {
	case err == nil:
		defer unlock()
	case ctx.Err() != nil:
		return fmt.Errorf("etcd %s: %w", op, ctx.Err())
	}
	for i := range maxAttempts {
		if i > 0 {
			d := min(maxBackoff, baseBackoff<<min(i-1, 16))
			t := time.NewTimer(rand.N(d) + 1)
			select {
			case <-ctx.Done():
				t.Stop()
				return fmt.Errorf("etcd %s: %w", op, ctx.Err())
			case <-t.C:
			}
		}
		ok, err := attempt()
		if err != nil || ok {
			return err
		}
	}
	return &ConflictError{Op: op, Key: id, Attempts: maxAttempts}
}

// keyLocks is a lock per key, held while waiting honours a context.
type keyLocks struct {
	mu sync.Mutex
	m  map[string]*keyLock
}

type keyLock struct {
	ch   chan struct{} // holds a value while locked
	refs int           // holders and waiters; the entry goes at 0
}

func (l *keyLocks) lock(ctx context.Context, key string) (unlock func(), err error) {
	l.mu.Lock()
	if l.m == nil {
		l.m = map[string]*keyLock{}
	}
	k := l.m[key]
	if k == nil {
		k = &keyLock{ch: make(chan struct{}, 1)}
		l.m[key] = k
	}
	k.refs++
	l.mu.Unlock()
	select {
	case k.ch <- struct{}{}:
		return func() { <-k.ch; l.release(key, k) }, nil
	case <-ctx.Done():
		l.release(key, k)
		return nil, ctx.Err()
	}
}

func (l *keyLocks) release(key string, k *keyLock) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if k.refs--; k.refs == 0 {
		delete(l.m, key)
	}
}
