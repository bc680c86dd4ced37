package bolt

import (
	"bytes"
	"context"
	"fmt"

	"github.com/lanyardhq/lanyard/broker"
	bbolt "go.etcd.io/bbolt"
)

// blobBucket holds the embedded sealed secret store's ciphertexts.
const blobBucket = "sealed_secrets"

// GetBlob returns a copy of the blob stored under key, or an error wrapping
// broker.ErrNotFound.
func (db *DB) GetBlob(ctx context.Context, key string) ([]byte, error) {
	var out []byte
	err := db.view(ctx, "get_blob", func(tx *bbolt.Tx) error {
		v, ok := lookup(tx.Bucket([]byte(blobBucket)), []byte(key))
		if !ok {
			return fmt.Errorf("blob %q: %w", key, broker.ErrNotFound)
		}
		out = bytes.Clone(v)
		if out == nil {
			out = []byte{}
		}
		return nil
	})
	return out, err
}

// UpdateBlob calls fn with the current blob under key (a copy; exists is
// false and old nil if there is none) and stores what fn returns, in one
// transaction. An error from fn aborts and is returned unchanged; fn must
// return a non-nil value (an empty slice stores an empty blob), otherwise
// nothing is written and the error wraps broker.ErrInvalid.
func (db *DB) UpdateBlob(ctx context.Context, key string, fn func(old []byte, exists bool) ([]byte, error)) error {
	return db.update(ctx, "update_blob", func(tx *bbolt.Tx) error {
		if err := validBlobKey(key); err != nil {
			return err
		}
		b := tx.Bucket([]byte(blobBucket))
		old, ok := lookup(b, []byte(key))
		nv, err := fn(bytes.Clone(old), ok)
		if err != nil {
			return err
		}
		if nv == nil {
			return fmt.Errorf("blob %q: update returned nil: %w", key, broker.ErrInvalid)
		}
		if err := b.Put([]byte(key), bytes.Clone(nv)); err != nil {
			return fmt.Errorf("blob %q: %w", key, err)
		}
		return nil
	})
}

// DeleteBlob removes the blob under key, or returns an error wrapping
// broker.ErrNotFound.
func (db *DB) DeleteBlob(ctx context.Context, key string) error {
	return db.update(ctx, "delete_blob", func(tx *bbolt.Tx) error {
		b := tx.Bucket([]byte(blobBucket))
		if _, ok := lookup(b, []byte(key)); !ok {
			return fmt.Errorf("blob %q: %w", key, broker.ErrNotFound)
		}
		if err := b.Delete([]byte(key)); err != nil {
			return fmt.Errorf("blob %q: %w", key, err)
		}
		return nil
	})
}

// ListBlobs returns the keys that start with prefix, sorted.
func (db *DB) ListBlobs(ctx context.Context, prefix string) ([]string, error) {
	keys := []string{}
	err := db.view(ctx, "list_blobs", func(tx *bbolt.Tx) error {
		c := tx.Bucket([]byte(blobBucket)).Cursor()
		p := []byte(prefix)
		for k, _ := c.Seek(p); k != nil && bytes.HasPrefix(k, p); k, _ = c.Next() {
			keys = append(keys, string(k))
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return keys, nil // bbolt orders keys bytewise, as sort.Strings would
}

func validBlobKey(key string) error {
	if key == "" || len(key) > bbolt.MaxKeySize {
		return fmt.Errorf("blob key of %d bytes: %w", len(key), broker.ErrInvalid)
	}
	return nil
}

// lookup returns the value stored under key and whether it exists; unlike
// Bucket.Get it tells an empty value from a missing one.
func lookup(b *bbolt.Bucket, key []byte) ([]byte, bool) {
	k, v := b.Cursor().Seek(key)
	if k == nil || !bytes.Equal(k, key) || v == nil && isBucket(b, k) {
		return nil, false
	}
	return v, true
}

func isBucket(b *bbolt.Bucket, k []byte) bool { return b.Bucket(k) != nil }
