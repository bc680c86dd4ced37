package codec

import (
	"encoding/json"
	"fmt"
	"reflect"
	"sync"
	"testing"

	"github.com/lanyardhq/lanyard/broker"
)

func resourceJSON(t testing.TB, r broker.Resource) []byte {
	t.Helper()
	raw, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

func TestMemo(t *testing.T) {
	m := &Memo[broker.Resource]{Clone: broker.Resource.Clone, Max: 2}
	r := broker.Resource{ID: "r1", URI: "https://mcp.example/", Connectors: []string{"keys"},
		Policy: broker.ToolPolicy{Tools: []broker.ToolRule{{Name: "read", Scopes: []string{"mail.read"}}}}}
	raw := resourceJSON(t, r)

	got, err := m.Decode("r1", raw)
	if err != nil || !reflect.DeepEqual(got, r) {
		t.Fatalf("first Decode = %+v, %v", got, err)
	}
	// The caller's copy is its own: changing it changes nothing remembered.
	got.Connectors[0] = "changed"
	got.Policy.Tools[0].Scopes[0] = "changed"
	again, err := m.Decode("r1", raw)
	if err != nil || !reflect.DeepEqual(again, r) {
		t.Fatalf("Decode after the caller changed its copy = %+v, %v; want %+v", again, err, r)
	}
	// New bytes under the same key: the new record, at once.
	r2 := r.Clone()
	r2.Connectors = nil
	r2.SecretHash = "rotated"
	got, err = m.Decode("r1", resourceJSON(t, r2))
	if err != nil || !reflect.DeepEqual(got, r2) {
		t.Fatalf("Decode of changed bytes = %+v, %v; want %+v", got, err, r2)
	}
	// Bytes the caller reuses (a transaction's page) are not kept.
	buf := resourceJSON(t, r)
	if _, err := m.Decode("r1", buf); err != nil {
		t.Fatal(err)
	}
	for i := range buf {
		buf[i] = ' '
	}
	if got, err := m.Decode("r1", resourceJSON(t, r)); err != nil || !reflect.DeepEqual(got, r) {
		t.Fatalf("Decode after the caller reused its buffer = %+v, %v", got, err)
	}
	// Bounded.
	for i := range 10 {
		if _, err := m.Decode(fmt.Sprint("k", i), raw); err != nil {
			t.Fatal(err)
		}
	}
	if len(m.m) > 2 {
		t.Errorf("memo holds %d entries, Max 2", len(m.m))
	}
	// Bad bytes are an error, and not remembered.
	if _, err := m.Decode("bad", []byte(`{"id":`)); err == nil {
		t.Error("Decode of truncated JSON = nil error")
	}
	if _, ok := m.m["bad"]; ok {
		t.Error("a failed decode was remembered")
	}
}

func TestMemoConcurrent(t *testing.T) {
	m := &Memo[broker.Resource]{Clone: broker.Resource.Clone, Max: 4}
	var raws [][]byte
	var want []broker.Resource
	for i := range 3 {
		r := broker.Resource{ID: "r", URI: fmt.Sprint("https://mcp", i, ".example/"), Scopes: []string{fmt.Sprint(i)}}
		raws, want = append(raws, resourceJSON(t, r)), append(want, r)
	}
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 300 {
				k := (g + i) % 3
				got, err := m.Decode("r", raws[k])
				if err != nil || !reflect.DeepEqual(got, want[k]) {
					t.Errorf("Decode = %+v, %v; want %+v", got, err, want[k])
					return
				}
				got.Scopes[0] = "mine"
			}
		})
	}
	wg.Wait()
}

func BenchmarkMemo(b *testing.B) {
	r := broker.Resource{ID: "r_0123", URI: "https://mcp.example.com/mcp", Name: "Mail", Scopes: []string{"mail.read", "mail.send"},
		Connectors: []string{"keys", "idp"}, SecretHash: "$argon2id$v=19$m=65536,t=1,p=4$abcdefabcdefabcdef$abcdefabcdefabcdefabcdefabcdef"}
	for range 5 {
		r.Policy.Tools = append(r.Policy.Tools, broker.ToolRule{Name: "read_mail", Scopes: []string{"mail.read"}, Connectors: []string{"keys"}})
	}
	raw := resourceJSON(b, r)
	b.Run("decode", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			var v broker.Resource
			if err := Decode(raw, &v); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("memo", func(b *testing.B) {
		m := &Memo[broker.Resource]{Clone: broker.Resource.Clone, Max: 16}
		b.ReportAllocs()
		for b.Loop() {
			if _, err := m.Decode("r", raw); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// TestMemoFullReplacesNowAndThen: when full, a record not yet remembered
// takes a place only on every replaceEvery-th such miss, and is decoded
// correctly either way; a remembered key with new bytes is replaced at once.
func TestMemoFullReplacesNowAndThen(t *testing.T) {
	m := &Memo[broker.Resource]{Clone: broker.Resource.Clone, Max: 2}
	r := broker.Resource{ID: "r", URI: "https://mcp.example/"}
	raw := resourceJSON(t, r)
	for _, k := range []string{"a", "b"} {
		if _, err := m.Decode(k, raw); err != nil {
			t.Fatal(err)
		}
	}
	for i := range replaceEvery - 1 {
		got, err := m.Decode(fmt.Sprint("other", i), raw)
		if err != nil || !reflect.DeepEqual(got, r) {
			t.Fatalf("Decode of a record not remembered = %+v, %v", got, err)
		}
	}
	if _, a := m.m["a"]; !a || len(m.m) != 2 {
		t.Fatalf("after %d misses while full the memo changed: %v", replaceEvery-1, m.m)
	}
	if _, err := m.Decode("last", raw); err != nil {
		t.Fatal(err)
	}
	if _, ok := m.m["last"]; !ok || len(m.m) != 2 {
		t.Errorf("the %d-th miss while full did not take a place (size %d)", replaceEvery, len(m.m))
	}
}
