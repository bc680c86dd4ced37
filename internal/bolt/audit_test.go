package bolt

import (
	"context"
	"encoding/json"
	"errors"
	"path/filepath"
	"strings"
	"sync"
	"testing"

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
