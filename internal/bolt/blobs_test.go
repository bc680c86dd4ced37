package bolt

import (
	"context"
	"errors"
	"path/filepath"
	"slices"
	"testing"

	"github.com/lanyardhq/lanyard/broker"
)

func openTest(t *testing.T) *DB {
	t.Helper()
	db, err := Open(filepath.Join(t.TempDir(), "data", "lanyard.db"), Options{})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { _ = db.Close() })
	return db
}

func TestBlobs(t *testing.T) {
	ctx := context.Background()
	db := openTest(t)
	if _, err := db.GetBlob(ctx, "a/x"); !errors.Is(err, broker.ErrNotFound) {
		t.Errorf("GetBlob(missing) error = %v, want ErrNotFound", err)
	}
	if err := db.DeleteBlob(ctx, "a/x"); !errors.Is(err, broker.ErrNotFound) {
		t.Errorf("DeleteBlob(missing) error = %v, want ErrNotFound", err)
	}
	put := func(key, val string) {
		t.Helper()
		err := db.UpdateBlob(ctx, key, func(old []byte, exists bool) ([]byte, error) {
			return []byte(val), nil
		})
		if err != nil {
			t.Fatalf("UpdateBlob(%q): %v", key, err)
		}
	}
	put("a/y", "1")
	put("a/x", "2")
	put("b/z", "3")
	put("a/empty", "")
	got, err := db.GetBlob(ctx, "a/x")
	if err != nil || string(got) != "2" {
		t.Errorf("GetBlob(a/x) = %q, %v; want \"2\", nil", got, err)
	}
	if got, err := db.GetBlob(ctx, "a/empty"); err != nil || got == nil || len(got) != 0 {
		t.Errorf("GetBlob(a/empty) = %#v, %v; want empty non-nil", got, err)
	}
	err = db.UpdateBlob(ctx, "a/x", func(old []byte, exists bool) ([]byte, error) {
		if !exists || string(old) != "2" {
			t.Errorf("fn got %q, %v; want \"2\", true", old, exists)
		}
		return append(old, '!'), nil
	})
	if err != nil {
		t.Fatalf("UpdateBlob: %v", err)
	}
	boom := errors.New("boom")
	if err := db.UpdateBlob(ctx, "a/x", func([]byte, bool) ([]byte, error) { return nil, boom }); err != boom {
		t.Errorf("UpdateBlob(fn error) = %v, want boom unchanged", err)
	}
	if err := db.UpdateBlob(ctx, "a/x", func([]byte, bool) ([]byte, error) { return nil, nil }); !errors.Is(err, broker.ErrInvalid) {
		t.Errorf("UpdateBlob(nil value) = %v, want ErrInvalid", err)
	}
	if got, _ := db.GetBlob(ctx, "a/x"); string(got) != "2!" {
		t.Errorf("after aborted updates GetBlob = %q, want \"2!\"", got)
	}
	keys, err := db.ListBlobs(ctx, "a/")
	if want := []string{"a/empty", "a/x", "a/y"}; err != nil || !slices.Equal(keys, want) {
		t.Errorf("ListBlobs(a/) = %q, %v; want %q", keys, err, want)
	}
	if err := db.DeleteBlob(ctx, "a/x"); err != nil {
		t.Errorf("DeleteBlob: %v", err)
	}
	if _, err := db.GetBlob(ctx, "a/x"); !errors.Is(err, broker.ErrNotFound) {
		t.Errorf("GetBlob after delete = %v, want ErrNotFound", err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := db.GetBlob(cctx, "a/y"); !errors.Is(err, context.Canceled) {
		t.Errorf("GetBlob(cancelled) = %v, want context.Canceled", err)
	}
	_ = db.Close()
	if _, err := db.ListBlobs(ctx, ""); !errors.Is(err, broker.ErrUnavailable) {
		t.Errorf("ListBlobs after Close = %v, want ErrUnavailable", err)
	}
}
