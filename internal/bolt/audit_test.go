package bolt

import (
	"context"
	"encoding/json"
	"errors"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	bbolt "go.etcd.io/bbolt"

	"github.com/lanyardhq/lanyard/broker"
	"github.com/lanyardhq/lanyard/internal/audit"
)

func appendN(t *testing.T, db *DB, n int) {
	t.Helper()
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			if _, err := db.Audit().Append(context.Background(), broker.AuditEvent{Action: broker.AuditRedeem,
				Outcome: broker.OutcomeOK, UserID: "u", Tool: string(rune('a' + i%26))}); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
}

// tamper rewrites the audit bucket directly, as an attacker with the file
// would.
func tamper(t *testing.T, path string, fn func(b *bbolt.Bucket)) {
	t.Helper()
	raw, err := bbolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	if err := raw.Update(func(tx *bbolt.Tx) error { fn(tx.Bucket([]byte(auditBucket))); return nil }); err != nil {
		t.Fatal(err)
	}
}

func TestAuditChain(t *testing.T) {
	for name, tc := range map[string]struct {
		fn   func(b *bbolt.Bucket)
		want string
	}{
		"intact": {nil, ""},
		"changed": {func(b *bbolt.Bucket) {
			var e broker.AuditEvent
			_ = json.Unmarshal(b.Get(seqKey(5)), &e)
			e.UserID = "someone-else"
			v, _ := json.Marshal(e)
			_ = b.Put(seqKey(5), v)
		}, "record 5: was changed"},
		"removed": {func(b *bbolt.Bucket) { _ = b.Delete(seqKey(7)) }, "record 7: missing"},
		"reordered": {func(b *bbolt.Bucket) {
			v3, v4 := append([]byte(nil), b.Get(seqKey(3))...), append([]byte(nil), b.Get(seqKey(4))...)
			_ = b.Put(seqKey(3), v4)
			_ = b.Put(seqKey(4), v3)
		}, "record 3: missing or out of order"},
		"rehashed": {func(b *bbolt.Bucket) { // change and recompute its own hash: the next link breaks
			var e broker.AuditEvent
			_ = json.Unmarshal(b.Get(seqKey(5)), &e)
			e.Outcome = broker.OutcomeDenied
			e.Hash = e.ChainHash()
			v, _ := json.Marshal(e)
			_ = b.Put(seqKey(5), v)
		}, "record 6: does not follow"},
	} {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "a.db")
			db, err := Open(path, Options{})
			if err != nil {
				t.Fatal(err)
			}
			appendN(t, db, 20)
			db.Close()
			if tc.fn != nil {
				tamper(t, path, tc.fn)
			}
			db, err = Open(path, Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			n, _, err := audit.Verify(context.Background(), db.Audit())
			var p *audit.Problem
			switch {
			case tc.want == "" && (err != nil || n != 20):
				t.Errorf("Verify = %d, %v; want 20 records, no problem", n, err)
			case tc.want != "" && (!errors.As(err, &p) || !strings.Contains(err.Error(), tc.want)):
				t.Errorf("Verify = %v; want %q", err, tc.want)
			}
		})
	}
}

func TestAuditExport(t *testing.T) {
	db, err := Open(filepath.Join(t.TempDir(), "a.db"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	appendN(t, db, 5)
	var sb strings.Builder
	n, err := audit.Export(context.Background(), db.Audit(), 2, &sb)
	lines := strings.Split(strings.TrimSpace(sb.String()), "\n")
	if err != nil || n != 3 || len(lines) != 3 || !strings.Contains(lines[0], `"seq":3`) {
		t.Errorf("Export after 2 = %d, %v:\n%s", n, err, sb.String())
	}
}

// BenchmarkAuditAppend compares one appender with many: group commit lets
// concurrent appends share an fsync.
func BenchmarkAuditAppend(b *testing.B) {
	ev := broker.AuditEvent{Action: broker.AuditRedeem, Outcome: broker.OutcomeOK, UserID: "u", ClientID: "c",
		Resource: "https://mcp.example.com/mcp", Tool: "search_messages", Connector: "mail", ConnectionID: "conn", GrantID: "g"}
	for _, par := range []int{1, 64} {
		b.Run(map[int]string{1: "serial", 64: "parallel64"}[par], func(b *testing.B) {
			db, err := Open(filepath.Join(b.TempDir(), "a.db"), Options{})
			if err != nil {
				b.Fatal(err)
			}
			defer db.Close()
			b.SetParallelism(par)
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := db.Audit().Append(context.Background(), ev); err != nil {
						b.Error(err)
					}
				}
			})
		})
	}
}

// TestAuditChainWithFailingBatches: appends that share transactions with
// functions that fail (so that their batch rolls back and runs again
// without the failing one) still form one unbroken chain, with every
// returned record in it: the in-memory chain head never outlives a
// rolled-back transaction. Reopening starts from the stored head.
func TestAuditChainWithFailingBatches(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "lanyard.db")
	db, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	boom := errors.New("boom")
	var (
		mu       sync.Mutex
		returned = map[uint64]string{}
		wg       sync.WaitGroup
	)
	for i := range 400 {
		wg.Go(func() {
			if i%7 == 0 { // a sibling that writes, then fails
				err := db.batch(ctx, "test.fail", func(tx *bbolt.Tx) error {
					b, err := tx.CreateBucketIfNotExists([]byte(auditBucket))
					if err == nil {
						err = b.Put(seqKey(1<<62+uint64(i)), []byte(`{"hash":"forged"}`))
					}
					if err != nil {
						return err
					}
					return boom
				})
				if !errors.Is(err, boom) {
					t.Errorf("failing batch call = %v, want boom", err)
				}
				return
			}
			ev, err := db.Audit().Append(ctx, broker.AuditEvent{Action: broker.AuditRedeem, Outcome: broker.OutcomeOK, UserID: "u"})
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			returned[ev.Seq] = ev.Hash
			mu.Unlock()
		})
	}
	wg.Wait()
	check := func(db *DB, want int) {
		t.Helper()
		n, _, err := audit.Verify(ctx, db.Audit())
		if err != nil || n != uint64(want) {
			t.Fatalf("Verify = %d records, %v; want %d, no problem", n, err, want)
		}
		evs, err := db.Audit().Range(ctx, 0, 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range evs {
			if h, ok := returned[e.Seq]; ok && h != e.Hash {
				t.Errorf("record %d: stored hash %s, Append returned %s", e.Seq, e.Hash, h)
			}
		}
	}
	check(db, len(returned))
	// A record written past the group commit (as a restore tool might):
	// the next append must chain to it, not to the remembered head.
	evs, err := db.Audit().Range(ctx, uint64(len(returned)-1), 0)
	if err != nil || len(evs) != 1 {
		t.Fatalf("Range = %v, %v", evs, err)
	}
	outside, raw := broker.AuditEvent{Action: broker.AuditRevoke, Outcome: broker.OutcomeOK}.Chained(evs[0].Seq+1, evs[0].Hash, time.Now())
	if err := db.bolt.Update(func(tx *bbolt.Tx) error {
		return tx.Bucket([]byte(auditBucket)).Put(seqKey(outside.Seq), raw)
	}); err != nil {
		t.Fatal(err)
	}
	returned[outside.Seq] = outside.Hash
	ev, err := db.Audit().Append(ctx, broker.AuditEvent{Action: broker.AuditRedeem, Outcome: broker.OutcomeOK})
	if err != nil || ev.PrevHash != outside.Hash {
		t.Fatalf("Append after an outside write = prev %s, %v; want prev %s", ev.PrevHash, err, outside.Hash)
	}
	returned[ev.Seq] = ev.Hash
	check(db, len(returned))
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	db, err = Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	appendN(t, db, 10)
	check(db, len(returned)+10)
}
