package storetest

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/lanyardhq/lanyard/broker"
)

// testCompareAndSwap checks that concurrent Updates never lose a write.
func testCompareAndSwap(t *testing.T, open Opener) {
	const n = 50
	ctx := context.Background()
	e := newEnv(t, open)
	tab := e.store.Users()
	mustNoErr(t, "Create", tab.Create(ctx, users.fixture("u-1", "1", e.clock.Now())))
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = tab.Update(ctx, "u-1", func(u broker.User) (broker.User, error) {
				u.FailedLogins++
				return u, nil
			})
		}()
	}
	wg.Wait()
	for i, err := range errs {
		noErr(t, fmt.Sprintf("Update %d", i), err)
	}
	if got, err := tab.Get(ctx, "u-1"); noErr(t, "Get", err) && got.FailedLogins != n {
		t.Errorf("after %d concurrent increments FailedLogins = %d, want %d", n, got.FailedLogins, n)
	}
}

// testExpiry checks that expiry follows the injected clock.
func testExpiry(t *testing.T, open Opener) {
	ctx := context.Background()
	e := newEnv(t, open)
	codes := e.store.AuthCodes()
	code := authCodes.fixture("code-1", "1", e.clock.Now())
	code.ExpiresAt = e.clock.Now().Add(60 * time.Second)
	mustNoErr(t, "Create", codes.Create(ctx, code))
	dev := deviceCodes.fixture("dev-1", "1", e.clock.Now())
	dev.ExpiresAt = code.ExpiresAt
	mustNoErr(t, "Create device code", e.store.DeviceCodes().Create(ctx, dev))

	e.clock.Advance(59 * time.Second)
	if _, err := codes.Get(ctx, "code-1"); err != nil {
		t.Errorf("Get 59s in: %v, want the record", err)
	}
	e.clock.Advance(2 * time.Second)
	_, err := codes.Get(ctx, "code-1")
	wantErr(t, "Get after expiry", err, broker.ErrNotFound)
	_, err = codes.Consume(ctx, "code-1", nil)
	wantErr(t, "Consume after expiry", err, broker.ErrNotFound)
	_, err = codes.Update(ctx, "code-1", func(c broker.AuthCode) (broker.AuthCode, error) { return c, nil })
	wantErr(t, "Update after expiry", err, broker.ErrNotFound)
	page, err := codes.List(ctx, broker.Query{})
	if noErr(t, "List", err) && len(page.Items) != 0 {
		t.Errorf("List after expiry = %q, want none", ids(page.Items))
	}
	page, err = codes.List(ctx, broker.Query{Index: broker.IndexGrant, Value: code.GrantID})
	if noErr(t, "List by grant", err) && len(page.Items) != 0 {
		t.Errorf("List by grant after expiry = %q, want none", ids(page.Items))
	}
	_, err = e.store.DeviceCodes().GetBy(ctx, broker.IndexUserCode, dev.UserCode)
	wantErr(t, "GetBy after expiry", err, broker.ErrNotFound)

	// An expired record frees its ID and its unique values.
	again := deviceCodes.fixture("dev-2", "1", e.clock.Now())
	noErr(t, "Create with an expired record's user code", e.store.DeviceCodes().Create(ctx, again))
	if got, err := e.store.DeviceCodes().GetBy(ctx, broker.IndexUserCode, dev.UserCode); noErr(t, "GetBy", err) {
		equal(t, "GetBy reused user code", got, again)
	}
	fresh := authCodes.fixture("code-1", "2", e.clock.Now())
	if noErr(t, "Create over an expired record", codes.Create(ctx, fresh)) {
		if got, err := codes.Get(ctx, "code-1"); noErr(t, "Get", err) {
			equal(t, "record created over an expired one", got, fresh)
		}
		page, err := codes.List(ctx, broker.Query{Index: broker.IndexGrant, Value: code.GrantID})
		if noErr(t, "List by old grant", err) && len(page.Items) != 0 {
			t.Errorf("List by the expired record's grant = %q, want none", ids(page.Items))
		}
	}
}

// testSweep checks that Sweep removes exactly the expired records.
func testSweep(t *testing.T, open Opener) {
	ctx := context.Background()
	e := newEnv(t, open)
	now := e.clock.Now()
	exp := now.Add(time.Minute)
	ac := authCodes.fixture("ac-1", "1", now)
	ac.ExpiresAt = exp
	rt := refreshTokens.fixture("rt-1", "1", now)
	rt.ExpiresAt = exp
	dc := deviceCodes.fixture("dc-1", "1", now)
	dc.ExpiresAt = exp
	cl := clients.fixture("cl-1", "1", now)
	cl.ExpiresAt = exp
	mustNoErr(t, "Create", errors.Join(
		e.store.AuthCodes().Create(ctx, ac),
		e.store.AuthCodes().Create(ctx, authCodes.fixture("ac-2", "2", now)), // 10 minutes
		e.store.RefreshTokens().Create(ctx, rt),
		e.store.DeviceCodes().Create(ctx, dc),
		e.store.Clients().Create(ctx, cl),
		e.store.Users().Create(ctx, users.fixture("u-1", "1", now)),
	))
	// A record whose expiry an Update moved later is not swept at the old
	// one; a deleted record is not counted.
	moved := authCodes.fixture("ac-moved", "moved", now)
	moved.ExpiresAt = exp
	gone := sessions.fixture("s-gone", "gone", now)
	gone.ExpiresAt = exp
	mustNoErr(t, "Create", errors.Join(
		e.store.AuthCodes().Create(ctx, moved),
		e.store.Sessions().Create(ctx, gone),
		e.store.Sessions().Delete(ctx, "s-gone"),
	))
	_, err := e.store.AuthCodes().Update(ctx, "ac-moved", func(c broker.AuthCode) (broker.AuthCode, error) {
		c.ExpiresAt = c.ExpiresAt.Add(time.Hour)
		return c, nil
	})
	mustNoErr(t, "Update expiry", err)
	if n, err := e.store.Sweep(ctx); noErr(t, "Sweep before expiry", err) && n != 0 {
		t.Errorf("Sweep before expiry removed %d, want 0", n)
	}
	e.clock.Advance(61 * time.Second)
	if n, err := e.store.Sweep(ctx); noErr(t, "Sweep", err) && n != 4 {
		t.Errorf("Sweep removed %d, want 4", n)
	}
	if n, err := e.store.Sweep(ctx); noErr(t, "Sweep again", err) && n != 0 {
		t.Errorf("second Sweep removed %d, want 0", n)
	}
	if _, err := e.store.AuthCodes().Get(ctx, "ac-2"); err != nil {
		t.Errorf("Sweep removed a live code: Get error = %v", err)
	}
	if _, err := e.store.Users().Get(ctx, "u-1"); err != nil {
		t.Errorf("Sweep removed a user: Get error = %v", err)
	}
	if _, err := e.store.AuthCodes().Get(ctx, "ac-moved"); err != nil {
		t.Errorf("Sweep removed a code whose expiry was moved later: Get error = %v", err)
	}
	e.clock.Advance(time.Hour)
	if n, err := e.store.Sweep(ctx); noErr(t, "Sweep after the moved expiry", err) && n != 2 {
		t.Errorf("Sweep after the moved expiry removed %d, want 2 (ac-2, ac-moved)", n)
	}
	// Going back in time must not resurrect swept records.
	e.clock.Advance(-time.Hour)
	if _, err := e.store.AuthCodes().Get(ctx, "ac-1"); !errors.Is(err, broker.ErrNotFound) {
		t.Errorf("swept code: Get error = %v, want ErrNotFound", err)
	}
}

// testPagination checks cursors, with and without an index.
func testPagination(t *testing.T, open Opener) {
	ctx := context.Background()
	e := newEnv(t, open)
	tab := e.store.Grants()
	var alice, all []string
	for i := range 30 {
		g := grants.fixture(fmt.Sprintf("g-%02d", i), "alice", e.clock.Now())
		if i%6 == 5 {
			g.UserID = "u-bob"
		} else {
			alice = append(alice, g.ID)
		}
		all = append(all, g.ID)
	}
	order := slices.Clone(all)
	rand.New(rand.NewPCG(1, 2)).Shuffle(len(order), func(i, j int) { order[i], order[j] = order[j], order[i] })
	for _, id := range order {
		g := grants.fixture(id, "alice", e.clock.Now())
		if !slices.Contains(alice, id) {
			g.UserID = "u-bob"
		}
		mustNoErr(t, "Create "+id, tab.Create(ctx, g))
	}

	got, sizes := listAll(t, tab, broker.Query{Index: broker.IndexUser, Value: "u-alice", Limit: 10})
	equal(t, "List by user, page sizes", sizes, []int{10, 10, 5})
	equal(t, "List by user", ids(got), alice)

	got, sizes = listAll(t, tab, broker.Query{Limit: 10})
	equal(t, "List all, page sizes", sizes, []int{10, 10, 10})
	equal(t, "List all", ids(got), all)

	got, sizes = listAll(t, tab, broker.Query{Index: broker.IndexUser, Value: "u-bob"})
	equal(t, "List by user bob, page sizes", sizes, []int{5})
	equal(t, "List by user bob", len(got), 5)

	got, _ = listAll(t, tab, broker.Query{Index: broker.IndexClient, Value: "c-alice", Limit: 7})
	equal(t, "List by client", ids(got), all)

	page, err := tab.List(ctx, broker.Query{Limit: broker.MaxLimit + 1})
	if noErr(t, "List above MaxLimit", err) && len(page.Items) != 30 {
		t.Errorf("List above MaxLimit returned %d items, want 30", len(page.Items))
	}
	page, err = tab.List(ctx, broker.Query{Index: broker.IndexUser, Value: "u-nobody"})
	if noErr(t, "List by an unknown user", err) && (len(page.Items) != 0 || page.Next != "") {
		t.Errorf("List by an unknown user = %q next %q, want nothing", ids(page.Items), page.Next)
	}
	// A cursor stays valid when the record it names is deleted.
	page, err = tab.List(ctx, broker.Query{Limit: 10})
	if noErr(t, "List", err) && page.Next != "" {
		mustNoErr(t, "Delete", tab.Delete(ctx, page.Next))
		rest, _ := listAll(t, tab, broker.Query{Limit: 10, After: page.Next})
		equal(t, "List after a deleted cursor", ids(rest), all[10:])
	}
}

// testCancelled checks that a cancelled context fails every method and
// writes nothing.
func testCancelled(t *testing.T, open Opener) {
	bg := context.Background()
	e := newEnv(t, open)
	ctx, cancel := context.WithCancel(bg)
	cancel()
	now := e.clock.Now()
	us, codes := e.store.Users(), e.store.AuthCodes()
	u := users.fixture("u-1", "1", now)
	mustNoErr(t, "Create", us.Create(bg, u))
	mustNoErr(t, "Create", codes.Create(bg, authCodes.fixture("ac-1", "1", now)))
	short := authCodes.fixture("ac-short", "2", now)
	short.ExpiresAt = now.Add(time.Second)
	mustNoErr(t, "Create", codes.Create(bg, short))
	e.clock.Advance(time.Minute)

	called := false
	check := func(broker.AuthCode) error { called = true; return nil }
	calls := map[string]error{
		"Create": us.Create(ctx, users.fixture("u-2", "2", now)),
		"Get":    second(us.Get(ctx, "u-1")),
		"GetBy":  second(us.GetBy(ctx, broker.IndexUsername, u.Username)),
		"Update": second(us.Update(ctx, "u-1", func(u broker.User) (broker.User, error) {
			called = true
			u.FailedLogins = 99
			return u, nil
		})),
		"List":    second(us.List(ctx, broker.Query{})),
		"Delete":  us.Delete(ctx, "u-1"),
		"Consume": second(codes.Consume(ctx, "ac-1", check)),
		"Rotate":  second(codes.Rotate(ctx, "ac-1", check, authCodes.fixture("ac-2", "2", now))),
		"Sweep":   second(e.store.Sweep(ctx)),
		"Ping":    e.store.Ping(ctx),
	}
	for name, err := range calls {
		wantErr(t, name+" with a cancelled context", err, context.Canceled)
	}
	if called {
		t.Error("a callback ran under a cancelled context")
	}
	if got, err := us.Get(bg, "u-1"); noErr(t, "Get u-1", err) {
		equal(t, "u-1 after cancelled calls", got, u)
	}
	if _, err := us.Get(bg, "u-2"); !errors.Is(err, broker.ErrNotFound) {
		t.Errorf("cancelled Create wrote u-2: Get error = %v, want ErrNotFound", err)
	}
	if got, err := codes.Get(bg, "ac-1"); noErr(t, "Get ac-1", err) && !got.ConsumedAt().IsZero() {
		t.Error("cancelled Consume consumed the code")
	}
	if _, err := codes.Get(bg, "ac-2"); !errors.Is(err, broker.ErrNotFound) {
		t.Errorf("cancelled Rotate wrote ac-2: Get error = %v, want ErrNotFound", err)
	}
	if n, err := e.store.Sweep(bg); noErr(t, "Sweep", err) && n != 1 {
		t.Errorf("Sweep after a cancelled Sweep removed %d, want 1", n)
	}
}

// testClosed checks that a closed store reports ErrUnavailable.
func testClosed(t *testing.T, open Opener) {
	ctx := context.Background()
	e := newEnv(t, open)
	noErr(t, "Ping", e.store.Ping(ctx))
	mustNoErr(t, "Close", e.store.Close())
	wantErr(t, "Ping after Close", e.store.Ping(ctx), broker.ErrUnavailable)
	_, err := e.store.Users().Get(ctx, "u-1")
	wantErr(t, "Get after Close", err, broker.ErrUnavailable)
	wantErr(t, "Create after Close", e.store.Users().Create(ctx, users.fixture("u-1", "1", e.clock.Now())), broker.ErrUnavailable)
	_, err = e.store.AuthCodes().Consume(ctx, "ac-1", nil)
	wantErr(t, "Consume after Close", err, broker.ErrUnavailable)
}

func second[T any](_ T, err error) error { return err }
