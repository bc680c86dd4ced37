package sealed_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/lanyardhq/lanyard/broker"
	"github.com/lanyardhq/lanyard/broker/secrettest"
	"github.com/lanyardhq/lanyard/internal/bolt"
	"github.com/lanyardhq/lanyard/vault/sealed"
)

// openDB opens a bolt database in a fresh temporary directory.
func openDB(t *testing.T, dir string) *bolt.DB {
	t.Helper()
	db, err := bolt.Open(filepath.Join(dir, "lanyard.db"), bolt.Options{})
	if err != nil {
		t.Fatalf("bolt.Open: %v", err)
	}
	t.Cleanup(func() { _ = db.Close() })
	return db
}

func open(t *testing.T, db sealed.Blobs, keyFile string) *sealed.Store {
	t.Helper()
	s, err := sealed.Open(db, keyFile, sealed.Options{})
	if err != nil {
		t.Fatalf("sealed.Open: %v", err)
	}
	return s
}

func TestConformance(t *testing.T) {
	secrettest.Run(t, func(t *testing.T) broker.SecretStore {
		dir := t.TempDir()
		return open(t, openDB(t, dir), filepath.Join(dir, "sealed.key"))
	})
}

var k = broker.SecretKey{Owner: "alice", Name: "github"}

func TestTampered(t *testing.T) {
	ctx := t.Context()
	dir := t.TempDir()
	db := openDB(t, dir)
	s := open(t, db, filepath.Join(dir, "sealed.key"))
	if _, err := s.Put(ctx, k, broker.NewSecret(map[string]string{"token": "tamper-me"}), broker.CASCreate); err != nil {
		t.Fatal(err)
	}
	blob, err := db.GetBlob(ctx, "alice/github")
	if err != nil {
		t.Fatalf("GetBlob (is the blob key layout owner/name?): %v", err)
	}

	// Every byte matters: the version, the nonce, the ciphertext, the tag.
	// Header: version 0-7, key id 8-11, nonce 12-23.
	for _, i := range []int{0, 7, 8, 11, 12, 23, 24, len(blob) / 2, len(blob) - 1} {
		setBlob(t, db, "alice/github", flip(blob, i))
		_, _, err := s.Get(ctx, k)
		if !errors.Is(err, broker.ErrTampered) {
			t.Errorf("byte %d flipped: Get = %v, want ErrTampered", i, err)
		}
		_, err = s.Put(ctx, k, broker.NewSecret(map[string]string{"token": "x"}), broker.CASAny)
		if !errors.Is(err, broker.ErrTampered) {
			t.Errorf("byte %d flipped: Put over it = %v, want ErrTampered", i, err)
		}
	}
	for _, b := range [][]byte{{}, blob[:10], blob[:len(blob)-1], append(bytes.Clone(blob), 0)} {
		setBlob(t, db, "alice/github", b)
		if _, _, err := s.Get(ctx, k); !errors.Is(err, broker.ErrTampered) {
			t.Errorf("blob of %d bytes: Get = %v, want ErrTampered", len(b), err)
		}
	}

	// Restoring the original blob makes it readable again; a tampered
	// secret can still be deleted.
	setBlob(t, db, "alice/github", blob)
	if sec, _, err := s.Get(ctx, k); err != nil {
		t.Fatalf("Get of the restored blob: %v", err)
	} else if v, _ := sec.Field("token"); v != "tamper-me" {
		t.Errorf("restored blob: wrong value")
	}
	setBlob(t, db, "alice/github", flip(blob, 30))
	if err := s.Delete(ctx, k); err != nil {
		t.Errorf("Delete of a tampered secret: %v", err)
	}
}

// TestFreshNonce: sealing the same value again, under the same key and even
// at the same version, uses a new nonce and so gives another ciphertext (a
// repeated nonce under one GCM key is fatal to its secrecy).
func TestFreshNonce(t *testing.T) {
	ctx := t.Context()
	dir := t.TempDir()
	db := openDB(t, dir)
	s := open(t, db, filepath.Join(dir, "sealed.key"))
	same := map[string]string{"token": "same-value"}
	const header, nonceAt = 24, 12
	seen := map[string]string{} // nonce -> where
	var blobs [][]byte
	for i := range 4 {
		if _, err := s.Put(ctx, k, broker.NewSecret(same), broker.CASAny); err != nil {
			t.Fatal(err)
		}
		blob, err := db.GetBlob(ctx, "alice/github")
		if err != nil {
			t.Fatal(err)
		}
		blobs = append(blobs, blob)
		// The same value at the same version, under another secret's key
		// and back: Delete then create gives version 1 again.
		k2 := broker.SecretKey{Owner: "bob", Name: "same"}
		if _, err := s.Put(ctx, k2, broker.NewSecret(same), broker.CASCreate); err != nil {
			t.Fatal(err)
		}
		blob2, err := db.GetBlob(ctx, "bob/same")
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Delete(ctx, k2); err != nil {
			t.Fatal(err)
		}
		blobs = append(blobs, blob2)
		for j, b := range [][]byte{blob, blob2} {
			nonce := string(b[nonceAt:header])
			where := fmt.Sprintf("put %d.%d", i, j)
			if prev, ok := seen[nonce]; ok {
				t.Errorf("%s reused the nonce of %s", where, prev)
			}
			seen[nonce] = where
		}
	}
	for i := range blobs {
		for j := range i {
			if bytes.Equal(blobs[i][header:], blobs[j][header:]) {
				t.Errorf("blobs %d and %d have the same ciphertext", i, j)
			}
		}
	}
	// Same version, same value, same key: blobs of bob/same are all version 1.
	if !bytes.Equal(blobs[1][:8], blobs[3][:8]) {
		t.Errorf("bob/same was not recreated at the same version")
	}
}

func TestMovedBlob(t *testing.T) {
	ctx := t.Context()
	dir := t.TempDir()
	db := openDB(t, dir)
	s := open(t, db, filepath.Join(dir, "sealed.key"))
	if _, err := s.Put(ctx, k, broker.NewSecret(map[string]string{"token": "alice-only"}), broker.CASCreate); err != nil {
		t.Fatal(err)
	}
	blob, err := db.GetBlob(ctx, "alice/github")
	if err != nil {
		t.Fatal(err)
	}
	for _, to := range []broker.SecretKey{{Owner: "mallory", Name: "github"}, {Owner: "alice", Name: "gitlab"}} {
		setBlob(t, db, to.Owner+"/"+to.Name, blob)
		if _, _, err := s.Get(ctx, to); !errors.Is(err, broker.ErrTampered) {
			t.Errorf("blob of %s copied to %s: Get = %v, want ErrTampered", k, to, err)
		}
	}
}

func TestRolledBackVersion(t *testing.T) {
	ctx := t.Context()
	dir := t.TempDir()
	db := openDB(t, dir)
	s := open(t, db, filepath.Join(dir, "sealed.key"))
	for i, cas := range []int{broker.CASCreate, 1, 2} {
		if _, err := s.Put(ctx, k, broker.NewSecret(map[string]string{"n": string(rune('a' + i))}), cas); err != nil {
			t.Fatal(err)
		}
	}
	blob, err := db.GetBlob(ctx, "alice/github")
	if err != nil {
		t.Fatal(err)
	}
	// Rewrite the version field (3) to 1: a writer holding version 1 must
	// not be able to win a check-and-set against it, and Get must refuse it.
	old := bytes.Clone(blob)
	old[7] = 1
	setBlob(t, db, "alice/github", old)
	if _, _, err := s.Get(ctx, k); !errors.Is(err, broker.ErrTampered) {
		t.Errorf("version rewritten: Get = %v, want ErrTampered", err)
	}
	if _, err := s.Put(ctx, k, broker.NewSecret(nil), 1); !errors.Is(err, broker.ErrTampered) {
		t.Errorf("version rewritten: Put cas=1 = %v, want ErrTampered", err)
	}
}

func TestKeyFile(t *testing.T) {
	t.Run("CreatedWithMode0600", func(t *testing.T) {
		dir := t.TempDir()
		path := filepath.Join(dir, "sub", "sealed.key")
		open(t, openDB(t, dir), path)
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 || fi.Size() != 32 {
			t.Errorf("key file: mode %04o, %d bytes; want 0600, 32 bytes", fi.Mode().Perm(), fi.Size())
		}
		entries, _ := os.ReadDir(filepath.Dir(path))
		if len(entries) != 1 {
			t.Errorf("key directory holds %d entries, want only the key file (no temporary left)", len(entries))
		}
		key, _ := os.ReadFile(path)
		db, _ := os.ReadFile(filepath.Join(dir, "lanyard.db"))
		if bytes.Contains(db, key) {
			t.Errorf("the database contains the key")
		}
	})

	t.Run("WrongPermissionsRefused", func(t *testing.T) {
		for _, mode := range []os.FileMode{0o640, 0o604, 0o644, 0o660} {
			dir := t.TempDir()
			path := filepath.Join(dir, "sealed.key")
			if err := os.WriteFile(path, bytes.Repeat([]byte{7}, 32), 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(path, mode); err != nil {
				t.Fatal(err)
			}
			_, err := sealed.Open(openDB(t, dir), path, sealed.Options{})
			if err == nil || !strings.Contains(err.Error(), "chmod 600") || !errors.Is(err, broker.ErrInvalid) {
				t.Errorf("mode %04o: Open = %v, want a refusal that says chmod 600", mode, err)
			}
		}
	})

	t.Run("WrongLengthRefused", func(t *testing.T) {
		for _, n := range []int{0, 16, 31, 33, 64} {
			dir := t.TempDir()
			path := filepath.Join(dir, "sealed.key")
			if err := os.WriteFile(path, bytes.Repeat([]byte{7}, n), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := sealed.Open(openDB(t, dir), path, sealed.Options{})
			if err == nil || !strings.Contains(err.Error(), "want exactly 32") || !errors.Is(err, broker.ErrInvalid) {
				t.Errorf("%d-byte key file: Open = %v, want a length refusal", n, err)
			}
		}
	})

	t.Run("OtherOwnerRefused", func(t *testing.T) {
		if os.Geteuid() != 0 {
			t.Skip("only root can give a file to another user")
		}
		dir := t.TempDir()
		path := filepath.Join(dir, "sealed.key")
		if err := os.WriteFile(path, bytes.Repeat([]byte{7}, 32), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(path, 65534, 65534); err != nil {
			t.Fatal(err)
		}
		_, err := sealed.Open(openDB(t, dir), path, sealed.Options{})
		if err == nil || !strings.Contains(err.Error(), "owned by uid 65534") ||
			!strings.Contains(err.Error(), "chown 0 "+path) || !errors.Is(err, broker.ErrInvalid) {
			t.Errorf("key file of uid 65534: Open = %v, want a refusal that says chown", err)
		}
	})

	t.Run("WritableDirRefused", func(t *testing.T) {
		for _, mode := range []os.FileMode{0o770, 0o707, 0o777, 0o777 | os.ModeSticky} {
			dir := filepath.Join(t.TempDir(), "keys")
			if err := os.Mkdir(dir, 0o700); err != nil {
				t.Fatal(err)
			}
			path := filepath.Join(dir, "sealed.key")
			if err := os.WriteFile(path, bytes.Repeat([]byte{7}, 32), 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(dir, mode); err != nil {
				t.Fatal(err)
			}
			_, err := sealed.Open(openDB(t, t.TempDir()), path, sealed.Options{})
			if err == nil || !strings.Contains(err.Error(), "chmod go-w "+dir) || !errors.Is(err, broker.ErrInvalid) {
				t.Errorf("key directory mode %04o: Open = %v, want a refusal that says chmod go-w", mode, err)
			}
			// Nor is a new key created in such a directory.
			_ = os.Remove(path)
			_, err = sealed.Open(openDB(t, t.TempDir()), path, sealed.Options{})
			if err == nil || !errors.Is(err, broker.ErrInvalid) {
				t.Errorf("key directory mode %04o, no key yet: Open = %v, want a refusal", mode, err)
			}
			if _, err := os.Stat(path); err == nil {
				t.Errorf("key directory mode %04o: a key file was created in it", mode)
			}
		}
	})

	t.Run("OtherOwnerDirRefused", func(t *testing.T) {
		if os.Geteuid() != 0 {
			t.Skip("only root can give a directory to another user")
		}
		dir := filepath.Join(t.TempDir(), "keys")
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(dir, "sealed.key")
		if err := os.WriteFile(path, bytes.Repeat([]byte{7}, 32), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(dir, 65534, 65534); err != nil {
			t.Fatal(err)
		}
		_, err := sealed.Open(openDB(t, t.TempDir()), path, sealed.Options{})
		if err == nil || !strings.Contains(err.Error(), "chown 0 "+dir) || !errors.Is(err, broker.ErrInvalid) {
			t.Errorf("key directory of uid 65534: Open = %v, want a refusal that says chown", err)
		}
	})

	t.Run("SymlinkRefused", func(t *testing.T) {
		dir := t.TempDir()
		target := filepath.Join(dir, "real.key")
		if err := os.WriteFile(target, bytes.Repeat([]byte{7}, 32), 0o600); err != nil {
			t.Fatal(err)
		}
		link := filepath.Join(dir, "sealed.key")
		if err := os.Symlink(target, link); err != nil {
			t.Skip("no symlinks:", err)
		}
		if _, err := sealed.Open(openDB(t, dir), link, sealed.Options{}); err == nil {
			t.Errorf("Open followed a symbolic link to the key")
		}
	})

	t.Run("NoPath", func(t *testing.T) {
		if _, err := sealed.Open(openDB(t, t.TempDir()), "", sealed.Options{}); !errors.Is(err, broker.ErrInvalid) {
			t.Errorf("Open with no key file: %v, want ErrInvalid", err)
		}
		if _, err := sealed.Open(nil, filepath.Join(t.TempDir(), "k"), sealed.Options{}); !errors.Is(err, broker.ErrInvalid) {
			t.Errorf("Open with no blobs: %v, want ErrInvalid", err)
		}
	})
}

func TestReopen(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	dbPath, keyPath := filepath.Join(dir, "lanyard.db"), filepath.Join(dir, "sealed.key")
	const canary = "canary-plaintext-8d41c0"

	db, err := bolt.Open(dbPath, bolt.Options{})
	if err != nil {
		t.Fatal(err)
	}
	s := open(t, db, keyPath)
	if _, err := s.Put(ctx, k, broker.NewSecret(map[string]string{"password": canary}), broker.CASCreate); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}

	raw, err := os.ReadFile(dbPath)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(raw, []byte(canary)) || bytes.Contains(raw, []byte("password")) {
		t.Errorf("the database file contains plaintext of the secret")
	}

	t.Run("SameKey", func(t *testing.T) {
		s := open(t, openDB(t, dir), keyPath)
		sec, v, err := s.Get(ctx, k)
		if err != nil {
			t.Fatalf("Get after reopen: %v", err)
		}
		if got, _ := sec.Field("password"); got != canary || v != 1 {
			t.Errorf("Get after reopen: version %d, value differs", v)
		}
	})

	t.Run("OtherKey", func(t *testing.T) {
		s := open(t, openDB(t, dir), filepath.Join(t.TempDir(), "other.key"))
		_, _, err := s.Get(ctx, k)
		if !errors.Is(err, broker.ErrTampered) || !strings.Contains(err.Error(), "sealed with another key") {
			t.Errorf("Get with another key file: %v, want ErrTampered saying \"sealed with another key\"", err)
		}
		if err != nil && strings.Contains(err.Error(), canary) {
			t.Errorf("error reveals the value")
		}
	})
}

func TestObserver(t *testing.T) {
	dir := t.TempDir()
	var got []string
	s, err := sealed.Open(openDB(t, dir), filepath.Join(dir, "k"), sealed.Options{
		Observer: func(component, op string, _ time.Duration, err error) {
			got = append(got, fmt.Sprintf("%s %s %v", component, op, errors.Is(err, broker.ErrNotFound)))
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	_, _ = s.Put(ctx, k, broker.NewSecret(nil), broker.CASCreate)
	_, _, _ = s.Get(ctx, broker.SecretKey{Owner: "x", Name: "y"})
	_ = s.Ping(ctx)
	want := []string{"sealed put false", "sealed get true", "sealed ping false"}
	if !slices.Equal(got, want) {
		t.Errorf("observed %q, want %q", got, want)
	}
}

// setBlob replaces the raw blob under key.
func setBlob(t *testing.T, db *bolt.DB, key string, b []byte) {
	t.Helper()
	err := db.UpdateBlob(context.Background(), key, func([]byte, bool) ([]byte, error) { return bytes.Clone(b), nil })
	if err != nil {
		t.Fatalf("UpdateBlob: %v", err)
	}
}

func flip(b []byte, i int) []byte {
	c := bytes.Clone(b)
	c[i] ^= 0x01
	return c
}
