package bolt

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/lanyardhq/lanyard/broker"
	"github.com/lanyardhq/lanyard/internal/testenv"
	bbolt "go.etcd.io/bbolt"
)

func openClock(tb testing.TB, path string) (*DB, *testenv.Clock) {
	tb.Helper()
	c := testenv.NewClock(time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC))
	db, err := Open(path, Options{Now: c.Now})
	if err != nil {
		tb.Fatalf("Open: %v", err)
	}
	tb.Cleanup(func() { _ = db.Close() })
	return db, c
}

// addUsers stores n users that never expire in one transaction.
func addUsers(tb testing.TB, db *DB, n int) {
	tb.Helper()
	now := db.now()
	err := db.bolt.Update(func(tx *bbolt.Tx) error {
		for i := range n {
			id := fmt.Sprintf("u-%06d", i)
			u := broker.User{ID: id, Username: "name-" + id, PasswordHash: "$argon2id$x", CreatedAt: now}
			if err := db.users.create(tx, u, now); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		tb.Fatalf("add users: %v", err)
	}
}

func addCode(tb testing.TB, db *DB, id string, expires time.Time) {
	tb.Helper()
	c := broker.AuthCode{ID: id, ClientID: "c-1", GrantID: "g-" + id, IssuedAt: db.now(), ExpiresAt: expires}
	if err := db.AuthCodes().Create(context.Background(), c); err != nil {
		tb.Fatalf("Create %s: %v", id, err)
	}
}

// bucketLen counts the keys of bucket name.
func bucketLen(t *testing.T, db *DB, name string) int {
	t.Helper()
	n := 0
	err := db.bolt.View(func(tx *bbolt.Tx) error {
		b := tx.Bucket([]byte(name))
		if b == nil {
			return fmt.Errorf("no bucket %q", name)
		}
		n = b.Stats().KeyN
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestSweepSkipsNonExpiring checks that Sweep removes exactly the expired
// records and never decodes the records that do not expire: a user record
// that cannot be decoded does not disturb it.
func TestSweepSkipsNonExpiring(t *testing.T) {
	ctx := context.Background()
	db, clock := openClock(t, filepath.Join(t.TempDir(), "lanyard.db"))
	addUsers(t, db, 5000)
	for i := range 10 {
		addCode(t, db, fmt.Sprintf("ac-dead-%02d", i), clock.Now().Add(time.Minute))
		addCode(t, db, fmt.Sprintf("ac-live-%02d", i), clock.Now().Add(time.Hour))
	}
	err := db.bolt.Update(func(tx *bbolt.Tx) error {
		return tx.Bucket([]byte("users")).Put([]byte("u-000042"), []byte("{not json"))
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := bucketLen(t, db, "exp/users"); got != 0 {
		t.Errorf("exp/users holds %d entries, want 0 (users never expire)", got)
	}
	if n, err := db.Sweep(ctx); err != nil || n != 0 {
		t.Errorf("Sweep before expiry = %d, %v; want 0, nil", n, err)
	}
	clock.Advance(time.Minute) // expiry == now is expired
	if n, err := db.Sweep(ctx); err != nil || n != 10 {
		t.Errorf("Sweep = %d, %v; want 10, nil", n, err)
	}
	if got := bucketLen(t, db, "exp/auth_codes"); got != 10 {
		t.Errorf("exp/auth_codes holds %d entries after Sweep, want the 10 live codes'", got)
	}
	page, err := db.AuthCodes().List(ctx, broker.Query{})
	if err != nil || len(page.Items) != 10 || page.Items[0].ID != "ac-live-00" {
		t.Errorf("codes after Sweep = %v, %v; want the 10 live ones", ids(page.Items), err)
	}
	if _, err := db.Users().Get(ctx, "u-004999"); err != nil {
		t.Errorf("Sweep removed a user: %v", err)
	}
}

// TestSweepBatches checks that a backlog larger than one batch is swept in
// full, across several transactions, and that a stale expiry index entry
// is dropped without being counted.
func TestSweepBatches(t *testing.T) {
	ctx := context.Background()
	db, clock := openClock(t, filepath.Join(t.TempDir(), "lanyard.db"))
	db.sweepBatch = 3
	exp := clock.Now().Add(time.Minute)
	for i := range 7 {
		addCode(t, db, fmt.Sprintf("ac-%02d", i), exp.Add(time.Duration(i)*time.Second))
	}
	for i := range 4 {
		tok := broker.RefreshToken{ID: fmt.Sprintf("rt-%02d", i), GrantID: "g", ClientID: "c", ExpiresAt: exp}
		if err := db.RefreshTokens().Create(ctx, tok); err != nil {
			t.Fatal(err)
		}
	}
	addCode(t, db, "ac-live", exp.Add(time.Hour))
	err := db.bolt.Update(func(tx *bbolt.Tx) error { // an entry whose record is gone
		return tx.Bucket([]byte("exp/device_codes")).Put(expKey(exp, "dc-gone"), nil)
	})
	if err != nil {
		t.Fatal(err)
	}
	clock.Advance(time.Hour)
	if n, err := db.Sweep(ctx); err != nil || n != 11 {
		t.Errorf("Sweep = %d, %v; want 11, nil", n, err)
	}
	for _, b := range []string{"exp/refresh_tokens", "exp/device_codes", "refresh_tokens", "idx/refresh_tokens/grant"} {
		if got := bucketLen(t, db, b); got != 0 {
			t.Errorf("%s holds %d keys after Sweep, want 0", b, got)
		}
	}
	if got := bucketLen(t, db, "exp/auth_codes"); got != 1 {
		t.Errorf("exp/auth_codes holds %d keys after Sweep, want 1 (ac-live)", got)
	}
	if _, err := db.AuthCodes().Get(ctx, "ac-live"); err != nil {
		t.Errorf("Sweep removed a live code: %v", err)
	}

	// A cancelled context stops the sweep before its first batch.
	addCode(t, db, "ac-late", clock.Now().Add(time.Second))
	clock.Advance(time.Second)
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if n, err := db.Sweep(cctx); !errors.Is(err, context.Canceled) || n != 0 {
		t.Errorf("Sweep with a cancelled context = %d, %v; want 0, context.Canceled", n, err)
	}
}

// TestExpiryIndexMoves checks that the expiry index follows a record's
// expiry through Update and Delete.
func TestExpiryIndexMoves(t *testing.T) {
	ctx := context.Background()
	db, clock := openClock(t, filepath.Join(t.TempDir(), "lanyard.db"))
	addCode(t, db, "ac-1", clock.Now().Add(time.Minute))
	addCode(t, db, "ac-2", clock.Now().Add(time.Minute))
	_, err := db.AuthCodes().Update(ctx, "ac-1", func(c broker.AuthCode) (broker.AuthCode, error) {
		c.ExpiresAt = c.ExpiresAt.Add(time.Hour)
		return c, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := db.AuthCodes().Delete(ctx, "ac-2"); err != nil {
		t.Fatal(err)
	}
	if got := bucketLen(t, db, "exp/auth_codes"); got != 1 {
		t.Errorf("exp/auth_codes holds %d keys, want 1", got)
	}
	clock.Advance(2 * time.Minute)
	if n, err := db.Sweep(ctx); err != nil || n != 0 {
		t.Errorf("Sweep after the expiry moved = %d, %v; want 0, nil", n, err)
	}
	clock.Advance(time.Hour)
	if n, err := db.Sweep(ctx); err != nil || n != 1 {
		t.Errorf("Sweep = %d, %v; want 1, nil", n, err)
	}
}

// TestExpiryIndexBackfill checks that a data file written before the expiry
// index existed gets one at Open.
func TestExpiryIndexBackfill(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "lanyard.db")
	db, clock := openClock(t, path)
	addUsers(t, db, 3)
	addCode(t, db, "ac-1", clock.Now().Add(time.Minute))
	addCode(t, db, "ac-2", clock.Now().Add(time.Hour))
	err := db.bolt.Update(func(tx *bbolt.Tx) error {
		for _, s := range []string{"users", "auth_codes"} {
			if err := tx.DeleteBucket([]byte("exp/" + s)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	db, clock = openClock(t, path)
	if got := bucketLen(t, db, "exp/auth_codes"); got != 2 {
		t.Errorf("exp/auth_codes holds %d keys after reopening, want 2", got)
	}
	clock.Advance(time.Minute)
	if n, err := db.Sweep(ctx); err != nil || n != 1 {
		t.Errorf("Sweep = %d, %v; want 1, nil", n, err)
	}
}

// TestExpKeyOrder checks that expiry keys sort in time order, whatever the
// time.
func TestExpKeyOrder(t *testing.T) {
	times := []time.Time{
		time.Date(1, 1, 1, 0, 0, 0, 0, time.UTC),
		time.Date(1600, 1, 1, 0, 0, 0, 999999999, time.UTC),
		time.Unix(-1, 0),
		time.Unix(-1, 1),
		time.Unix(0, 0),
		time.Unix(0, 1),
		time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC),
		time.Date(2026, 3, 1, 12, 0, 0, 1, time.FixedZone("x", -3600)),
		time.Date(2300, 1, 1, 0, 0, 0, 0, time.UTC),
		time.Date(9999, 12, 31, 23, 59, 59, 999999999, time.UTC),
	}
	for i := 1; i < len(times); i++ {
		a, b := expKey(times[i-1], "zzz"), expKey(times[i], "a")
		if bytes.Compare(a, b) >= 0 {
			t.Errorf("expKey(%v) >= expKey(%v)", times[i-1], times[i])
		}
	}
}

func ids[T broker.Record](items []T) []string {
	out := make([]string, len(items))
	for i, r := range items {
		out[i] = r.RecordID()
	}
	return out
}

// BenchmarkSweepNothingExpired measures a Sweep of a store holding 10,000
// users and nothing that has expired: it should not depend on the users.
func BenchmarkSweepNothingExpired(b *testing.B) {
	db, _ := openClock(b, filepath.Join(b.TempDir(), "lanyard.db"))
	addUsers(b, db, 10000)
	ctx := context.Background()
	for b.Loop() {
		if n, err := db.Sweep(ctx); err != nil || n != 0 {
			b.Fatalf("Sweep = %d, %v", n, err)
		}
	}
}
