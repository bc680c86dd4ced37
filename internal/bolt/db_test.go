package bolt

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lanyardhq/lanyard/broker"
)

func TestOpenModes(t *testing.T) {
	path := filepath.Join(t.TempDir(), "new", "dir", "lanyard.db")
	db, err := Open(path, Options{})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer db.Close()
	for _, c := range []struct {
		path string
		want os.FileMode
	}{{path, 0o600}, {filepath.Dir(path), 0o700}} {
		fi, err := os.Stat(c.path)
		if err != nil {
			t.Fatal(err)
		}
		if got := fi.Mode().Perm(); got != c.want {
			t.Errorf("mode of %s = %o, want %o", c.path, got, c.want)
		}
	}
}

func TestObserver(t *testing.T) {
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
	db, err := Open(filepath.Join(t.TempDir(), "lanyard.db"), Options{Observer: obs})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer db.Close()
	ctx := context.Background()
	_ = db.Users().Create(ctx, broker.User{ID: "u-1", Username: "alice"})
	_, _ = db.Users().Get(ctx, "missing")
	_, _ = db.GetBlob(ctx, "k")
	want := []call{{"bolt", "users.create", nil}, {"bolt", "users.get", broker.ErrNotFound}, {"bolt", "get_blob", broker.ErrNotFound}}
	if len(calls) != len(want) {
		t.Fatalf("observer saw %d calls %v, want %d", len(calls), calls, len(want))
	}
	for i, w := range want {
		if g := calls[i]; g.component != w.component || g.op != w.op || !errors.Is(g.err, w.err) || (w.err == nil) != (g.err == nil) {
			t.Errorf("call %d = %+v, want %+v", i, g, w)
		}
	}
}

func TestIndexValues(t *testing.T) {
	ctx := context.Background()
	db := openTest(t)
	res := db.Resources()
	// A value holding NUL must not be confused with a shorter value.
	for _, r := range []broker.Resource{{ID: "r-1", URI: "a"}, {ID: "r-2", URI: "a\x00b"}} {
		if err := res.Create(ctx, r); err != nil {
			t.Fatalf("Create %q: %v", r.ID, err)
		}
	}
	for uri, id := range map[string]string{"a": "r-1", "a\x00b": "r-2"} {
		if got, err := res.GetBy(ctx, broker.IndexURI, uri); err != nil || got.ID != id {
			t.Errorf("GetBy(%q) = %q, %v; want %q", uri, got.ID, err, id)
		}
	}
	long := broker.Resource{ID: "r-3", URI: strings.Repeat("x", 40000)}
	if err := res.Create(ctx, long); !errors.Is(err, broker.ErrInvalid) {
		t.Errorf("Create with a 40000-byte URI: error = %v, want ErrInvalid", err)
	}
	if _, err := res.Get(ctx, "r-3"); !errors.Is(err, broker.ErrNotFound) {
		t.Errorf("rejected Create stored r-3: Get error = %v", err)
	}
	if err := db.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	if err := db.Close(); err != nil {
		t.Errorf("second Close: %v, want nil", err)
	}
}
