// Package bolt is the embedded metadata store: broker.Store on a single
// bbolt file. It is Lanyard's default backend for `lanyard dev` and small
// single-node deployments; every write is one fsynced bbolt transaction, so a
// kill -9 loses nothing that was committed.
//
// Records are kept as JSON in one bucket per kind ("users", "clients", ...),
// keyed by record ID; secondary indexes live in buckets named
// "idx/<kind>/<index>" whose keys are "value\x00id". The package also holds
// opaque blobs for the embedded sealed secret store (bucket "sealed_secrets").
//
// It is a leaf: only cmd/lanyard imports it.
package bolt

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lanyardhq/lanyard/broker"
	"github.com/lanyardhq/lanyard/internal/codec"
	bbolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

const component = "bolt"

// Options configures Open. The zero value is ready to use.
//
// There is no write timeout: bbolt admits one writer at a time and its
// writer lock cannot be abandoned, so a write waits for the writers ahead
// of it however long they take, and cancelling its context does not end the
// wait (Sweep, in batches, keeps its own turns short). Every method checks
// its context before it starts and does nothing once it is cancelled; a
// context cancelled while the call waits for the lock or runs is not
// noticed, and the write completes.
type Options struct {
	// Now is the clock expiry is measured against; nil means time.Now.
	Now func() time.Time
	// Observer is told about every operation; nil means nobody listens.
	Observer broker.Observer
	// LockTimeout bounds how long Open waits for another process to release
	// the file; 0 means one second.
	LockTimeout time.Duration
	// BatchDelay is bbolt's MaxBatchDelay; 0 means one millisecond. Audit
	// appends no longer use bbolt's Batch (see groupCommit), so it only
	// matters to bbolt.Batch callers, of which there are none now.
	BatchDelay time.Duration
}

func (o Options) withDefaults() Options {
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.BatchDelay <= 0 {
		o.BatchDelay = time.Millisecond
	}
	if o.LockTimeout <= 0 {
		o.LockTimeout = time.Second
	}
	return o
}

// boltOptions are the bbolt settings Open uses. Durability is spelled out
// rather than left to bbolt's defaults, and TestDurability holds it:
//   - NoSync false: every commit fsyncs, so a committed write survives a
//     power loss, not only a kill -9 (which keeps the page cache).
//   - NoGrowSync false: growing the file is fsynced too.
//   - NoFreelistSync false: the freelist is written with every commit, so
//     Open does not rescan the whole file to rebuild it and `bbolt check`
//     sees a complete file; the cost is a few pages per commit, small at a
//     metadata store's size.
func boltOptions(opts Options) *bbolt.Options {
	return &bbolt.Options{
		Timeout:        opts.LockTimeout,
		NoSync:         false,
		NoGrowSync:     false,
		NoFreelistSync: false,
	}
}

// DB is a bbolt-backed broker.Store. It is safe for concurrent use. Writes
// are serialised and ignore cancellation while they wait for the writer lock
// (see Options); reads run concurrently with them and each other.
type DB struct {
	bolt   *bbolt.DB
	path   string
	now    func() time.Time
	obs    broker.Observer
	closed atomic.Bool
	group  groupCommit
	audit  auditHeads

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
	sweepBatch  int // expiry index entries one Sweep transaction visits at most
}

// defaultSweepBatch bounds the work of one Sweep transaction, so that a
// large backlog of expired records is removed in several short write
// transactions rather than one that holds the writer lock for long.
const defaultSweepBatch = 1000

var _ broker.Store = (*DB)(nil)

// Open opens (creating if needed) the data file at path. The file is
// created with mode 0600 and its directory with 0700. If another process
// holds the file, Open fails after opts.LockTimeout with an error wrapping
// broker.ErrUnavailable.
func Open(path string, opts Options) (*DB, error) {
	opts = opts.withDefaults()
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	bdb, err := bbolt.Open(path, 0o600, boltOptions(opts))
	if errors.Is(err, berrors.ErrTimeout) {
		return nil, fmt.Errorf("open %s: the data file is in use by another process (is another lanyard running?): %w",
			path, broker.ErrUnavailable)
	}
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	// Group commit (batch) waits at most this long for company before it
	// commits; bbolt's default of 10 ms would dominate a quiet server's
	// latency.
	bdb.MaxBatchDelay = opts.BatchDelay
	db := &DB{bolt: bdb, path: path, now: opts.Now, obs: opts.Observer, sweepBatch: defaultSweepBatch}
	db.users = newTable[broker.User](db, "users")
	db.clients = newTable[broker.Client](db, "clients")
	db.resources = newTable[broker.Resource](db, "resources")
	db.connections = newTable[broker.Connection](db, "connections")
	db.grants = newTable[broker.Grant](db, "grants")
	db.authCodes = newSingleUse[broker.AuthCode](db, "auth_codes")
	db.refresh = newSingleUse[broker.RefreshToken](db, "refresh_tokens")
	db.devices = newSingleUse[broker.DeviceCode](db, "device_codes")
	db.sessions = newTable[broker.Session](db, "sessions")
	db.authReqs = newSingleUse[broker.AuthRequest](db, "auth_requests")
	db.links = newSingleUse[broker.PendingLink](db, "pending_links")
	// Read by every redemption, changed far less often.
	db.resources.memo = &codec.Memo[broker.Resource]{Clone: broker.Resource.Clone, Max: codec.MemoMax}
	db.grants.memo = &codec.Memo[broker.Grant]{Clone: broker.Grant.Clone, Max: codec.MemoMax}
	db.connections.memo = &codec.Memo[broker.Connection]{Clone: broker.Connection.Clone, Max: codec.MemoMax}
	db.sweepers = []sweeper{db.users, db.clients, db.resources, db.connections, db.grants,
		db.authCodes, db.refresh, db.devices, db.sessions, db.authReqs, db.links, counters{db}}
	err = bdb.Update(func(tx *bbolt.Tx) error {
		_, err := tx.CreateBucketIfNotExists([]byte(blobBucket))
		for _, s := range db.sweepers {
			err = errors.Join(err, s.init(tx))
		}
		return err
	})
	if err != nil {
		_ = bdb.Close()
		return nil, fmt.Errorf("open %s: create buckets: %w", path, err)
	}
	return db, nil
}

// Sessions implements broker.Store.
func (db *DB) Sessions() broker.Table[broker.Session] { return db.sessions }

// AuthRequests implements broker.Store.
func (db *DB) AuthRequests() broker.SingleUseTable[broker.AuthRequest] { return db.authReqs }

// PendingLinks implements broker.Store.
func (db *DB) PendingLinks() broker.SingleUseTable[broker.PendingLink] { return db.links }

// Path returns the data file's path.
func (db *DB) Path() string { return db.path }

// Users implements broker.Store.
func (db *DB) Users() broker.Table[broker.User] { return db.users }

// Clients implements broker.Store.
func (db *DB) Clients() broker.Table[broker.Client] { return db.clients }

// Resources implements broker.Store.
func (db *DB) Resources() broker.Table[broker.Resource] { return db.resources }

// Connections implements broker.Store.
func (db *DB) Connections() broker.Table[broker.Connection] { return db.connections }

// Grants implements broker.Store.
func (db *DB) Grants() broker.Table[broker.Grant] { return db.grants }

// AuthCodes implements broker.Store.
func (db *DB) AuthCodes() broker.SingleUseTable[broker.AuthCode] { return db.authCodes }

// RefreshTokens implements broker.Store.
func (db *DB) RefreshTokens() broker.SingleUseTable[broker.RefreshToken] { return db.refresh }

// DeviceCodes implements broker.Store.
func (db *DB) DeviceCodes() broker.SingleUseTable[broker.DeviceCode] { return db.devices }

// Sweep deletes every record that has expired by the time it starts, with
// its index entries, and returns how many it removed. It walks the expiry
// indexes only, so records that never expire (users, ...) cost nothing, and
// it works in write transactions of at most defaultSweepBatch records each,
// so other writers wait for one batch, not for the whole backlog; when
// nothing has expired it takes no write transaction at all. On an
// error (a cancelled ctx is checked between batches) it returns how many it
// had removed in the batches committed before.
func (db *DB) Sweep(ctx context.Context) (n int, err error) {
	start := time.Now()
	defer func() { db.obs.Observe(component, "sweep", start, err) }()
	now := db.now()
	due := false
	err = db.exec(ctx, "sweep", false, func(tx *bbolt.Tx) error {
		due = slices.ContainsFunc(db.sweepers, func(s sweeper) bool { return s.due(tx, now) })
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("sweep: %w", err)
	}
	if !due { // nothing expired: leave the writer lock alone
		return 0, nil
	}
	for {
		removed, visited := 0, 0
		err = db.exec(ctx, "sweep", true, func(tx *bbolt.Tx) error {
			removed, visited = 0, 0
			for _, s := range db.sweepers {
				r, v, err := s.sweep(tx, now, db.sweepBatch-visited)
				if err != nil {
					return err
				}
				removed, visited = removed+r, visited+v
			}
			return nil
		})
		if err != nil {
			return n, fmt.Errorf("sweep: %w", err)
		}
		n += removed
		if visited < db.sweepBatch {
			return n, nil
		}
	}
}

// Ping reports whether the store can serve requests.
func (db *DB) Ping(ctx context.Context) error {
	return db.view(ctx, "ping", func(*bbolt.Tx) error { return nil })
}

// Close releases the data file. Later calls return errors wrapping
// broker.ErrUnavailable. Close is idempotent.
func (db *DB) Close() error {
	if db.closed.Swap(true) {
		return nil
	}
	if err := db.bolt.Close(); err != nil {
		return fmt.Errorf("close %s: %w", db.path, err)
	}
	return nil
}

// view runs fn in a read-only transaction; see run.
func (db *DB) view(ctx context.Context, op string, fn func(*bbolt.Tx) error) error {
	return db.run(ctx, op, false, fn)
}

// update runs fn in a read-write, fsynced transaction, which concurrent
// writers share (group commit, see batch): fn may run more than once and
// must start from what it reads in the transaction; its error is returned
// as it is and undoes only its own writes.
func (db *DB) update(ctx context.Context, op string, fn func(*bbolt.Tx) error) error {
	return db.batch(ctx, op, fn)
}

// batch runs fn in a read-write transaction that it may share with other
// concurrent batch calls: one fsync commits them all, and each caller
// returns only after that commit (group commit; see groupCommit). fn may run
// more than once if another function in its batch fails, so it must start
// from what it reads in the transaction.
func (db *DB) batch(ctx context.Context, op string, fn func(*bbolt.Tx) error) (err error) {
	start := time.Now()
	defer func() { db.obs.Observe(component, op, start, err) }()
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("bolt %s: %w", op, err)
	}
	if db.closed.Load() {
		return fmt.Errorf("bolt %s: store is closed: %w", op, broker.ErrUnavailable)
	}
	c := &batchCall{fn: fn, done: make(chan struct{})}
	db.group.add(db, c)
	<-c.done
	switch {
	case c.err == nil || c.fnErr:
		return c.err
	case errors.Is(c.err, berrors.ErrDatabaseNotOpen):
		return fmt.Errorf("bolt %s: store is closed: %w", op, broker.ErrUnavailable)
	default:
		return fmt.Errorf("bolt %s: %w: %w", op, broker.ErrUnavailable, c.err)
	}
}

// maxBatch bounds the functions one group commit runs.
const maxBatch = 1000

// groupCommit commits batch calls. One committer goroutine runs while calls
// wait: it takes every waiting call (up to maxBatch) into one write
// transaction, and the calls that arrive while that transaction commits
// (fsync) wait together for the next one. The batch thus grows with the
// load and the fsync time, and a lone call commits at once.
//
// (bbolt's own Batch closes a batch after MaxBatchDelay whether or not the
// previous one has committed, so under load many small batches queue for
// the writer lock, each with its own fsync: BENCHMARKS.md measured ~5
// records per fsync with 64 concurrent redemptions.)
type groupCommit struct {
	mu      sync.Mutex
	pending []*batchCall
	running bool
	// statistics (see DB.CommitStats)
	commits, calls atomic.Int64
	nanos          atomic.Int64
}

// CommitStats counts the write transactions committed so far, the write
// calls they carried and the time they took (begin to fsynced commit):
// Calls/Commits is the group commit's batch size, Time/Commits the cost of
// one commit on this disk.
type CommitStats struct {
	Commits, Calls int64
	Time           time.Duration
}

// CommitStats reports the group commit's counters.
func (db *DB) CommitStats() CommitStats {
	return CommitStats{Commits: db.group.commits.Load(), Calls: db.group.calls.Load(), Time: time.Duration(db.group.nanos.Load())}
}

type batchCall struct {
	fn    func(*bbolt.Tx) error
	err   error
	fnErr bool // err is fn's own
	done  chan struct{}
}

func (g *groupCommit) add(db *DB, c *batchCall) {
	g.mu.Lock()
	g.pending = append(g.pending, c)
	start := !g.running
	g.running = true
	g.mu.Unlock()
	if start {
		go g.loop(db)
	}
}

func (g *groupCommit) loop(db *DB) {
	for {
		g.mu.Lock()
		n := min(len(g.pending), maxBatch)
		if n == 0 {
			g.running = false
			g.mu.Unlock()
			return
		}
		calls := g.pending[:n:n]
		g.pending = slices.Clone(g.pending[n:])
		g.mu.Unlock()
		start := time.Now()
		db.commit(calls)
		g.commits.Add(1)
		g.calls.Add(int64(n))
		g.nanos.Add(int64(time.Since(start)))
	}
}

// runFn runs fn, turning a panic into an error of this call alone (fn runs
// on the committer's goroutine, not its caller's).
func runFn(fn func(*bbolt.Tx) error, tx *bbolt.Tx) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("panic in write transaction: %v", p)
		}
	}()
	return fn(tx)
}

// commit runs calls in one transaction. A function that fails gets its
// error and leaves the batch, which is run again without it (the failed
// transaction rolled back); a failure to commit is every call's.
func (db *DB) commit(calls []*batchCall) {
	for len(calls) > 0 {
		failed := -1
		err := db.bolt.Update(func(tx *bbolt.Tx) error {
			for i, c := range calls {
				if err := runFn(c.fn, tx); err != nil {
					failed, c.err, c.fnErr = i, err, true
					return err
				}
			}
			return nil
		})
		if failed >= 0 {
			close(calls[failed].done)
			calls = slices.Delete(calls, failed, failed+1)
			continue
		}
		for _, c := range calls {
			c.err = err
			close(c.done)
		}
		return
	}
}

// run is exec, telling the observer how it went (op is "<kind>.<method>"
// or the blob method's name).
func (db *DB) run(ctx context.Context, op string, write bool, fn func(*bbolt.Tx) error) (err error) {
	start := time.Now()
	defer func() { db.obs.Observe(component, op, start, err) }()
	return db.exec(ctx, op, write, fn)
}

// exec checks ctx and the closed flag and runs fn in a transaction. Errors
// from fn are returned as they are, so that callers' own errors stay
// unchanged; bbolt's own failures to begin or commit wrap
// broker.ErrUnavailable. ctx is checked once, before the transaction: see
// Options about waiting for the writer lock.
func (db *DB) exec(ctx context.Context, op string, write bool, fn func(*bbolt.Tx) error) (err error) {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("bolt %s: %w", op, err)
	}
	if db.closed.Load() {
		return fmt.Errorf("bolt %s: store is closed: %w", op, broker.ErrUnavailable)
	}
	var fnErr error
	txFn := func(tx *bbolt.Tx) error { fnErr = fn(tx); return fnErr }
	if write {
		err = db.bolt.Update(txFn)
	} else {
		err = db.bolt.View(txFn)
	}
	switch {
	case err == nil || fnErr != nil:
		return err
	case errors.Is(err, berrors.ErrDatabaseNotOpen):
		return fmt.Errorf("bolt %s: store is closed: %w", op, broker.ErrUnavailable)
	default: // bbolt could not begin or commit: I/O trouble
		return fmt.Errorf("bolt %s: %w: %w", op, broker.ErrUnavailable, err)
	}
}
