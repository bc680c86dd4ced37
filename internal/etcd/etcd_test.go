package etcd

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/lanyardhq/lanyard/broker"
	"github.com/lanyardhq/lanyard/broker/storetest"
	"github.com/lanyardhq/lanyard/internal/audit"
	"github.com/lanyardhq/lanyard/internal/testenv"
)

// testPrefix is a key prefix of the test's own, derived from its name
// ("/" escaped, so that no test's prefix contains another's).
func testPrefix(t testing.TB) string {
	return "/lanyard-test/" + url.PathEscape(t.Name()) + "/"
}

// adminClient is a client of the test's own, for looking at and deleting
// keys behind the store's back.
func adminClient(t testing.TB, endpoints []string) *clientv3.Client {
	t.Helper()
	c, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatalf("admin client: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// deletePrefixAtCleanup deletes every key under prefix, in one call, when
// the test ends (after the stores opened later are closed).
func deletePrefixAtCleanup(t testing.TB, admin *clientv3.Client, prefix string) {
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if _, err := admin.Delete(ctx, prefix, clientv3.WithPrefix()); err != nil {
			t.Errorf("delete prefix %q: %v", prefix, err)
		}
	})
}

func open(t testing.TB, opts Options) *Store {
	t.Helper()
	s, err := Open(context.Background(), opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// env is an etcd server, an admin client, and a prefix for the test.
type env struct {
	endpoints []string
	admin     *clientv3.Client
	prefix    string
}

func newEnv(t *testing.T) env {
	t.Helper()
	eps := testenv.StartEtcd(t)
	e := env{endpoints: eps, admin: adminClient(t, eps), prefix: testPrefix(t)}
	deletePrefixAtCleanup(t, e.admin, e.prefix)
	return e
}

// replica opens one more Store on the test's prefix: another Lanyard
// replica on the same cluster.
func (e env) replica(t *testing.T, now func() time.Time) *Store {
	return open(t, Options{Endpoints: e.endpoints, Prefix: e.prefix, Now: now})
}

func TestConformance(t *testing.T) {
	eps := testenv.StartEtcd(t)
	admin := adminClient(t, eps)
	storetest.Run(t, func(t *testing.T, now func() time.Time) broker.Store {
		prefix := testPrefix(t)
		deletePrefixAtCleanup(t, admin, prefix)
		return open(t, Options{Endpoints: eps, Prefix: prefix, Now: now})
	})
}

// TestReplicas races two Stores on one prefix, as two Lanyard replicas
// would: no update is lost, exactly one consume or rotate wins, a unique
// value is taken once, and the audit chain stays one contiguous chain.
func TestReplicas(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	now := func() time.Time { return time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC) }
	stores := []*Store{e.replica(t, now), e.replica(t, now)}
	pick := func(i int) *Store { return stores[i%2] }

	t.Run("Update", func(t *testing.T) {
		const n = 60
		if err := pick(0).Users().Create(ctx, broker.User{ID: "u-1", Username: "alice"}); err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		var calls atomic.Int64
		start := time.Now()
		for i := range n {
			wg.Go(func() {
				_, err := pick(i).Users().Update(ctx, "u-1", func(u broker.User) (broker.User, error) {
					calls.Add(1)
					u.FailedLogins++
					return u, nil
				})
				if err != nil {
					t.Errorf("Update %d: %v", i, err)
				}
			})
		}
		wg.Wait()
		u, err := pick(1).Users().Get(ctx, "u-1")
		if err != nil || u.FailedLogins != n {
			t.Errorf("after %d concurrent increments on two replicas: FailedLogins = %d, %v; want %d", n, u.FailedLogins, err, n)
		}
		t.Logf("%d increments on two replicas in %v, fn called %d times", n, time.Since(start), calls.Load())
	})

	t.Run("Consume", func(t *testing.T) {
		code := broker.AuthCode{ID: "code-1", ClientID: "c", GrantID: "g", ExpiresAt: now().Add(time.Minute)}
		if err := pick(0).AuthCodes().Create(ctx, code); err != nil {
			t.Fatal(err)
		}
		var wins atomic.Int64
		var wg sync.WaitGroup
		for i := range 32 {
			wg.Go(func() {
				_, err := pick(i).AuthCodes().Consume(ctx, "code-1", nil)
				switch {
				case err == nil:
					wins.Add(1)
				case !errors.Is(err, broker.ErrConsumed):
					t.Errorf("Consume %d: %v, want nil or ErrConsumed", i, err)
				}
			})
		}
		wg.Wait()
		if wins.Load() != 1 {
			t.Errorf("%d of 32 Consume calls on two replicas won, want 1", wins.Load())
		}
	})

	t.Run("Rotate", func(t *testing.T) {
		old := broker.RefreshToken{ID: "rt-old", GrantID: "g", ClientID: "c", ExpiresAt: now().Add(time.Hour)}
		if err := pick(0).RefreshTokens().Create(ctx, old); err != nil {
			t.Fatal(err)
		}
		var wins atomic.Int64
		var wg sync.WaitGroup
		for i := range 32 {
			wg.Go(func() {
				next := old
				next.ID = fmt.Sprintf("rt-next-%02d", i)
				_, err := pick(i).RefreshTokens().Rotate(ctx, "rt-old", nil, next)
				switch {
				case err == nil:
					wins.Add(1)
				case !errors.Is(err, broker.ErrConsumed):
					t.Errorf("Rotate %d: %v, want nil or ErrConsumed", i, err)
				}
			})
		}
		wg.Wait()
		all, err := broker.ListAll(ctx, pick(1).RefreshTokens(), broker.Query{Index: broker.IndexGrant, Value: "g"})
		if wins.Load() != 1 || err != nil || len(all) != 2 {
			t.Errorf("%d of 32 Rotate calls won, grant holds %d tokens (%v); want 1 win and old + one next", wins.Load(), len(all), err)
		}
	})

	t.Run("Unique", func(t *testing.T) {
		// Every racer wants the same user code, held by an expired device
		// code: exactly one may take it.
		clock := testenv.NewClock(now())
		a, b := e.replica(t, clock.Now), e.replica(t, clock.Now)
		dev := broker.DeviceCode{ID: "dev-0", UserCode: "ABCD-EFGH", ClientID: "c", ExpiresAt: clock.Now().Add(time.Minute)}
		if err := a.DeviceCodes().Create(ctx, dev); err != nil {
			t.Fatal(err)
		}
		clock.Advance(2 * time.Minute)
		var wins atomic.Int64
		var wg sync.WaitGroup
		for i := range 32 {
			wg.Go(func() {
				d := dev
				d.ID, d.ExpiresAt = fmt.Sprintf("dev-%02d", i+1), clock.Now().Add(time.Minute)
				err := []*Store{a, b}[i%2].DeviceCodes().Create(ctx, d)
				switch {
				case err == nil:
					wins.Add(1)
				case !errors.Is(err, broker.ErrAlreadyExists):
					t.Errorf("Create %d: %v, want nil or ErrAlreadyExists", i, err)
				}
			})
		}
		wg.Wait()
		page, err := a.DeviceCodes().List(ctx, broker.Query{Index: broker.IndexUserCode, Value: dev.UserCode})
		if wins.Load() != 1 || err != nil || len(page.Items) != 1 {
			t.Errorf("%d of 32 Creates took the user code; %d live holders (%v); want 1 and 1", wins.Load(), len(page.Items), err)
		}
	})

	t.Run("Audit", func(t *testing.T) {
		const n = 60
		var wg sync.WaitGroup
		seqs := make([]uint64, n)
		start := time.Now()
		for i := range n {
			wg.Go(func() {
				ev, err := pick(i).Audit().Append(ctx, broker.AuditEvent{Action: broker.AuditRedeem, Outcome: broker.OutcomeOK,
					UserID: "u-1", RequestID: fmt.Sprint(i)})
				if err != nil {
					t.Errorf("Append %d: %v", i, err)
				}
				seqs[i] = ev.Seq
			})
		}
		wg.Wait()
		elapsed := time.Since(start)
		got, _, err := audit.Verify(ctx, pick(1).Audit())
		if err != nil || got != n {
			t.Errorf("Verify after %d concurrent appends on two replicas = %d, %v; want %d, nil", n, got, err, n)
		}
		seen := map[uint64]bool{}
		for i, s := range seqs {
			if s == 0 || s > n || seen[s] {
				t.Errorf("Append %d got seq %d: out of range or a duplicate", i, s)
			}
			seen[s] = true
		}
		t.Logf("%d appends on two replicas in %v", n, elapsed)
	})
}

// TestConflict checks that an Update that loses every compare-and-swap
// gives up with a typed error matching broker.ErrConflict.
func TestConflict(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	a, b := e.replica(t, nil), e.replica(t, nil)
	if err := a.Users().Create(ctx, broker.User{ID: "u-1", Username: "alice"}); err != nil {
		t.Fatal(err)
	}
	calls := 0
	start := time.Now()
	_, err := a.Users().Update(ctx, "u-1", func(u broker.User) (broker.User, error) {
		calls++
		// The other replica writes in between, every time.
		if _, err := b.Users().Update(ctx, "u-1", func(u broker.User) (broker.User, error) { u.FailedLogins++; return u, nil }); err != nil {
			t.Fatalf("interfering Update: %v", err)
		}
		u.Admin = true
		return u, nil
	})
	var ce *ConflictError
	if !errors.Is(err, broker.ErrConflict) || !errors.As(err, &ce) || ce.Attempts != maxAttempts || calls != maxAttempts {
		t.Errorf("Update losing every race: error %v after %d calls; want a *ConflictError matching ErrConflict after %d", err, calls, maxAttempts)
	}
	if u, err := a.Users().Get(ctx, "u-1"); err != nil || u.Admin || u.FailedLogins != maxAttempts {
		t.Errorf("after the lost Update: %+v, %v; want FailedLogins %d and not admin", u, err, maxAttempts)
	}
	t.Logf("gave up after %d attempts in %v", calls, time.Since(start))
}

// TestUnavailable stops etcd under an open store: every call fails with
// ErrUnavailable within RequestTimeout, and the store recovers once etcd
// is back.
func TestUnavailable(t *testing.T) {
	cluster := testenv.StartEtcdCluster(t, 1)
	const timeout = 500 * time.Millisecond
	s := open(t, Options{Endpoints: cluster.Endpoints(), Prefix: testPrefix(t), RequestTimeout: timeout})
	ctx := context.Background()
	if err := s.Users().Create(ctx, broker.User{ID: "u-1", Username: "alice"}); err != nil {
		t.Fatal(err)
	}
	cluster.Members[0].Kill()
	calls := map[string]func() error{
		"Ping":   func() error { return s.Ping(ctx) },
		"Get":    func() error { _, err := s.Users().Get(ctx, "u-1"); return err },
		"Create": func() error { return s.Users().Create(ctx, broker.User{ID: "u-2", Username: "bob"}) },
		"Update": func() error {
			_, err := s.Users().Update(ctx, "u-1", func(u broker.User) (broker.User, error) { return u, nil })
			return err
		},
		"List":    func() error { _, err := s.Users().List(ctx, broker.Query{}); return err },
		"Consume": func() error { _, err := s.AuthCodes().Consume(ctx, "ac-1", nil); return err },
		"Append": func() error {
			_, err := s.Audit().Append(ctx, broker.AuditEvent{Action: broker.AuditLogin, Outcome: broker.OutcomeOK})
			return err
		},
		"Sweep": func() error { _, err := s.Sweep(ctx); return err },
	}
	for name, call := range calls {
		start := time.Now()
		err := call()
		took := time.Since(start)
		if !errors.Is(err, broker.ErrUnavailable) {
			t.Errorf("%s with etcd down: error = %v, want ErrUnavailable", name, err)
		}
		if took > timeout+time.Second {
			t.Errorf("%s with etcd down took %v, want about RequestTimeout (%v)", name, took, timeout)
		}
		t.Logf("%s with etcd down: %v after %v", name, err, took.Round(time.Millisecond))
	}
	// Writers of one key queued behind each other in one Store: none waits
	// for all the others' timeouts.
	var wg sync.WaitGroup
	start := time.Now()
	for i := range 8 {
		wg.Go(func() {
			_, err := s.Users().Update(ctx, "u-1", func(u broker.User) (broker.User, error) { return u, nil })
			if !errors.Is(err, broker.ErrUnavailable) {
				t.Errorf("concurrent Update %d with etcd down: error = %v, want ErrUnavailable", i, err)
			}
		})
	}
	wg.Wait()
	if took := time.Since(start); took > 2*timeout+time.Second {
		t.Errorf("8 concurrent Updates of one record with etcd down took %v, want about 2×RequestTimeout at most", took)
	} else {
		t.Logf("8 concurrent Updates of one record with etcd down: all ErrUnavailable after %v", took.Round(time.Millisecond))
	}
	cctx, cancel := context.WithCancel(ctx)
	go func() { time.Sleep(100 * time.Millisecond); cancel() }()
	if _, err := s.Users().Get(cctx, "u-1"); !errors.Is(err, context.Canceled) {
		t.Errorf("Get cancelled while etcd is down: error = %v, want context.Canceled", err)
	}

	cluster.Members[0].Restart()
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := s.Users().Get(ctx, "u-1")
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Get after etcd restarted: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestOpenUnreachable checks that Open fails with ErrUnavailable, in
// bounded time, when no etcd answers.
func TestOpenUnreachable(t *testing.T) {
	start := time.Now()
	_, err := Open(context.Background(), Options{Endpoints: []string{"http://" + testenv.Addr(testenv.FreePort(t))},
		DialTimeout: 300 * time.Millisecond, RequestTimeout: 300 * time.Millisecond})
	if !errors.Is(err, broker.ErrUnavailable) || time.Since(start) > 2*time.Second {
		t.Errorf("Open with nothing listening = %v after %v, want ErrUnavailable within 2s", err, time.Since(start))
	}
	_, err = Open(context.Background(), Options{})
	if !errors.Is(err, broker.ErrInvalid) {
		t.Errorf("Open without endpoints = %v, want ErrInvalid", err)
	}
}

// TestPrefix checks that a store keeps every key under its prefix, so that
// deleting the prefix in one call leaves nothing, and that stores on other
// prefixes do not see each other.
func TestPrefix(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	s := open(t, Options{Endpoints: e.endpoints, Prefix: strings.TrimSuffix(e.prefix, "/") + "/a", Now: func() time.Time { return now }})
	other := open(t, Options{Endpoints: e.endpoints, Prefix: e.prefix + "b/", Now: func() time.Time { return now }})
	exp := now.Add(time.Hour)
	err := errors.Join(
		s.Users().Create(ctx, broker.User{ID: "u-1", Username: "alice"}),
		s.Clients().Create(ctx, broker.Client{ID: "c-1", Kind: broker.ClientRegistered, ExpiresAt: exp}),
		s.Resources().Create(ctx, broker.Resource{ID: "r-1", URI: "https://mcp.example.com"}),
		s.Connections().Create(ctx, broker.Connection{ID: "conn-1", UserID: "u-1", Connector: "github"}),
		s.Grants().Create(ctx, broker.Grant{ID: "g-1", UserID: "u-1", ClientID: "c-1", Resource: "https://mcp.example.com", ExpiresAt: exp}),
		s.AuthCodes().Create(ctx, broker.AuthCode{ID: "ac-1", ClientID: "c-1", GrantID: "g-1", ExpiresAt: exp}),
		s.RefreshTokens().Create(ctx, broker.RefreshToken{ID: "rt-1", GrantID: "g-1", ClientID: "c-1", ExpiresAt: exp}),
		s.DeviceCodes().Create(ctx, broker.DeviceCode{ID: "dc-1", UserCode: "UC-1", ClientID: "c-1", ExpiresAt: exp}),
		s.Sessions().Create(ctx, broker.Session{ID: "s-1", UserID: "u-1", ExpiresAt: exp}),
		s.AuthRequests().Create(ctx, broker.AuthRequest{ID: "ar-1", ClientID: "c-1", RedirectURI: "http://127.0.0.1/cb", Resource: "r", ExpiresAt: exp}),
		s.PendingLinks().Create(ctx, broker.PendingLink{ID: "pl-1", UserID: "u-1", SessionID: "s-1", Connector: "github", ExpiresAt: exp}),
		second(s.Audit().Append(ctx, broker.AuditEvent{Action: broker.AuditLogin, Outcome: broker.OutcomeOK})),
		other.Users().Create(ctx, broker.User{ID: "u-1", Username: "alice"}), // same ID and username: another store
	)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Users().Get(ctx, "u-2"); !errors.Is(err, broker.ErrNotFound) {
		t.Errorf("Get u-2 = %v", err)
	}
	if page, err := s.Users().List(ctx, broker.Query{}); err != nil || len(page.Items) != 1 {
		t.Errorf("List users = %d, %v; want only this store's one", len(page.Items), err)
	}

	count := func(prefix string) int64 {
		resp, err := e.admin.Get(ctx, prefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
		if err != nil {
			t.Fatal(err)
		}
		return resp.Count
	}
	all, mine := count(""), count(s.Prefix())
	if all != mine+count(other.Prefix()) {
		t.Errorf("%d keys in etcd, %d under %q and %d under %q: a store wrote outside its prefix", all, mine, s.Prefix(), count(other.Prefix()), other.Prefix())
	}
	if _, err := e.admin.Delete(ctx, s.Prefix(), clientv3.WithPrefix()); err != nil {
		t.Fatal(err)
	}
	if n := count(s.Prefix()); n != 0 {
		t.Errorf("%d keys left under %q after deleting the prefix", n, s.Prefix())
	}
	if _, err := other.Users().Get(ctx, "u-1"); err != nil {
		t.Errorf("deleting one prefix touched another: %v", err)
	}
	t.Logf("one store of each kind of record wrote %d keys", mine)
}

func second[T any](_ T, err error) error { return err }

// TestIndexValues checks index values holding NUL and values too long.
func TestIndexValues(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	res := e.replica(t, nil).Resources()
	for _, r := range []broker.Resource{{ID: "r-1", URI: "a"}, {ID: "r-2", URI: "a\x00b"}} {
		if err := res.Create(ctx, r); err != nil {
			t.Fatalf("Create %q: %v", r.ID, err)
		}
	}
	for uri, id := range map[string]string{"a": "r-1", "a\x00b": "r-2"} {
		if got, err := res.GetBy(ctx, broker.IndexURI, uri); err != nil || got.ID != id {
			t.Errorf("GetBy(%q) = %q, %v; want %q", uri, got.ID, err, id)
		}
		if page, err := res.List(ctx, broker.Query{Index: broker.IndexURI, Value: uri}); err != nil || len(page.Items) != 1 || page.Items[0].ID != id {
			t.Errorf("List by uri %q = %+v, %v; want only %q", uri, page.Items, err, id)
		}
	}
	long := broker.Resource{ID: "r-3", URI: strings.Repeat("x", 40000)}
	if err := res.Create(ctx, long); !errors.Is(err, broker.ErrInvalid) {
		t.Errorf("Create with a 40000-byte URI: error = %v, want ErrInvalid", err)
	}
}

// TestObserver checks what the Observer is told.
func TestObserver(t *testing.T) {
	e := newEnv(t)
	type call struct {
		component, op string
		err           error
	}
	var mu sync.Mutex
	var calls []call
	obs := func(component, op string, d time.Duration, err error) {
		mu.Lock()
		defer mu.Unlock()
		calls = append(calls, call{component, op, err})
	}
	s := open(t, Options{Endpoints: e.endpoints, Prefix: e.prefix, Observer: obs})
	ctx := context.Background()
	mu.Lock()
	calls = nil // Open pings
	mu.Unlock()
	_ = s.Users().Create(ctx, broker.User{ID: "u-1", Username: "alice"})
	_, _ = s.Users().Get(ctx, "missing")
	want := []call{{"etcd", "users.create", nil}, {"etcd", "users.get", broker.ErrNotFound}}
	mu.Lock()
	defer mu.Unlock()
	if len(calls) != len(want) {
		t.Fatalf("observer saw %v, want %v", calls, want)
	}
	for i, w := range want {
		if g := calls[i]; g.component != w.component || g.op != w.op || !errors.Is(g.err, w.err) || (w.err == nil) != (g.err == nil) {
			t.Errorf("call %d = %+v, want %+v", i, g, w)
		}
	}
}

// TestCluster runs a store on a 3-member cluster and kills one member:
// after the cluster settles, every call succeeds again.
func TestCluster(t *testing.T) {
	cluster := testenv.StartEtcdCluster(t, 3)
	s := open(t, Options{Endpoints: cluster.Endpoints(), Prefix: testPrefix(t), RequestTimeout: 2 * time.Second})
	ctx := context.Background()
	if err := s.Users().Create(ctx, broker.User{ID: "u-1", Username: "alice"}); err != nil {
		t.Fatal(err)
	}
	cluster.Members[0].Kill()
	start := time.Now()
	var failed int
	for i := range 50 {
		_, err := s.Users().Update(ctx, "u-1", func(u broker.User) (broker.User, error) { u.FailedLogins++; return u, nil })
		if err != nil {
			failed++
			t.Logf("Update %d after killing a member: %v", i, err)
		}
	}
	t.Logf("50 updates after killing one of 3 members: %d failed, %v", failed, time.Since(start))
	if failed > 3 {
		t.Errorf("%d of 50 updates failed with a quorum left", failed)
	}
	cluster.Members[0].Restart()
	if u, err := s.Users().Get(ctx, "u-1"); err != nil || u.FailedLogins != 50-failed {
		t.Errorf("after the member rejoined: %d, %v; want %d", u.FailedLogins, err, 50-failed)
	}
}

// TestSweepReplicas sweeps a backlog larger than one batch from two
// replicas at once: every expired record is removed and counted once, with
// its index, expiry and unique-value keys, and live records stay.
func TestSweepReplicas(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	clock := testenv.NewClock(time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC))
	a, b := e.replica(t, clock.Now), e.replica(t, clock.Now)
	a.sweepBatch, b.sweepBatch = 7, 7
	const expired, alive = 60, 10
	for i := range expired + alive {
		ttl := time.Minute
		if i >= expired {
			ttl = time.Hour
		}
		d := broker.DeviceCode{ID: fmt.Sprintf("dev-%03d", i), UserCode: fmt.Sprintf("UC-%03d", i), ClientID: "c",
			ExpiresAt: clock.Now().Add(ttl)}
		if err := a.DeviceCodes().Create(ctx, d); err != nil {
			t.Fatal(err)
		}
	}
	clock.Advance(2 * time.Minute)
	var n [2]int
	var errs [2]error
	var wg sync.WaitGroup
	start := time.Now()
	for i, s := range []*Store{a, b} {
		wg.Go(func() { n[i], errs[i] = s.Sweep(ctx) })
	}
	wg.Wait()
	if errs[0] != nil || errs[1] != nil || n[0]+n[1] != expired {
		t.Errorf("two concurrent Sweeps removed %d and %d (%v, %v); want %d in all", n[0], n[1], errs[0], errs[1], expired)
	}
	t.Logf("two replicas swept %d expired device codes (batches of 7) in %v: %d and %d", expired, time.Since(start), n[0], n[1])
	count := func(what string) int64 {
		resp, err := e.admin.Get(ctx, a.Prefix()+what, clientv3.WithPrefix(), clientv3.WithCountOnly())
		if err != nil {
			t.Fatal(err)
		}
		return resp.Count
	}
	for _, what := range []string{"rec/device_codes/", "idx/device_codes/", "exp/device_codes/", "uniq/device_codes/"} {
		if got := count(what); got != alive {
			t.Errorf("%d keys under %s after Sweep, want %d", got, what, alive)
		}
	}
	if n, err := a.Sweep(ctx); err != nil || n != 0 {
		t.Errorf("Sweep again = %d, %v; want 0", n, err)
	}
}

func TestOptionsRedact(t *testing.T) {
	o := Options{Endpoints: []string{"https://etcd:2379"}, Username: "lanyard", Password: "hunter2"}
	for _, s := range []string{o.String(), fmt.Sprintf("%v %+v %#v", o, o, o), o.LogValue().String()} {
		if strings.Contains(s, "hunter2") || !strings.Contains(s, "lanyard") {
			t.Errorf("formatted options %q: want the user name and no password", s)
		}
	}
}

// TestAuth runs the store as an etcd user whose role may read and write
// the store's prefix only (the least privilege a deployment should give
// Lanyard), and checks that a wrong password or a prefix outside the role
// fails Open.
func TestAuth(t *testing.T) {
	eps := testenv.StartEtcd(t)
	admin := adminClient(t, eps)
	ctx := context.Background()
	prefix := testPrefix(t)
	err := func() error {
		for _, step := range []func() error{
			func() error { _, err := admin.UserAdd(ctx, "root", "root-pw"); return err },
			func() error { _, err := admin.UserGrantRole(ctx, "root", "root"); return err },
			func() error { _, err := admin.RoleAdd(ctx, "lanyard"); return err },
			func() error {
				_, err := admin.RoleGrantPermission(ctx, "lanyard", prefix, clientv3.GetPrefixRangeEnd(prefix),
					clientv3.PermissionType(clientv3.PermReadWrite))
				return err
			},
			func() error { _, err := admin.UserAdd(ctx, "lanyard", "lanyard-pw"); return err },
			func() error { _, err := admin.UserGrantRole(ctx, "lanyard", "lanyard"); return err },
			func() error { _, err := admin.AuthEnable(ctx); return err },
		} {
			if err := step(); err != nil {
				return err
			}
		}
		return nil
	}()
	if err != nil {
		t.Fatalf("setting up etcd users: %v", err)
	}
	root, err := clientv3.New(clientv3.Config{Endpoints: eps, DialTimeout: 5 * time.Second, Logger: zap.NewNop(),
		Username: "root", Password: "root-pw"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = root.Close() })
	deletePrefixAtCleanup(t, root, prefix)

	s := open(t, Options{Endpoints: eps, Prefix: prefix, Username: "lanyard", Password: "lanyard-pw"})
	if err := s.Users().Create(ctx, broker.User{ID: "u-1", Username: "alice"}); err != nil {
		t.Errorf("Create as the lanyard user: %v", err)
	}
	if _, err := s.Users().Update(ctx, "u-1", func(u broker.User) (broker.User, error) { u.Admin = true; return u, nil }); err != nil {
		t.Errorf("Update as the lanyard user: %v", err)
	}
	if _, err := s.Audit().Append(ctx, broker.AuditEvent{Action: broker.AuditLogin, Outcome: broker.OutcomeOK}); err != nil {
		t.Errorf("Append as the lanyard user: %v", err)
	}
	for name, opts := range map[string]Options{
		"wrong password":    {Endpoints: eps, Prefix: prefix, Username: "lanyard", Password: "wrong"},
		"no credentials":    {Endpoints: eps, Prefix: prefix},
		"prefix not theirs": {Endpoints: eps, Prefix: "/elsewhere/", Username: "lanyard", Password: "lanyard-pw"},
	} {
		if s, err := Open(ctx, opts); err == nil {
			_ = s.Close()
			t.Errorf("Open with %s succeeded, want an error", name)
		} else if !errors.Is(err, broker.ErrUnavailable) || !strings.Contains(err.Error(), "access denied") {
			t.Errorf("Open with %s: %v, want access denied, matching ErrUnavailable", name, err)
		} else {
			t.Logf("Open with %s: %v", name, err)
		}
	}
}
