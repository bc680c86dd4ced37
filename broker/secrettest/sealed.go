package secrettest

import (
	"path/filepath"
	"testing"

	"github.com/lanyardhq/lanyard/broker"
	"github.com/lanyardhq/lanyard/internal/bolt"
	"github.com/lanyardhq/lanyard/vault/sealed"
)

// Sealed is a real secret store for tests that need one but do not test
// one (a token keyring, a test issuer): the embedded sealed store over a
// bolt file in a fresh temporary directory, closed with t.Cleanup. It runs
// this package's suite in vault/sealed.
func Sealed(t testing.TB) broker.SecretStore {
	t.Helper()
	dir := t.TempDir()
	db, err := bolt.Open(filepath.Join(dir, "secrets.db"), bolt.Options{})
	if err != nil {
		t.Fatalf("bolt.Open: %v", err)
	}
	t.Cleanup(func() { _ = db.Close() })
	s, err := sealed.Open(db, filepath.Join(dir, "sealed.key"), sealed.Options{})
	if err != nil {
		t.Fatalf("sealed.Open: %v", err)
	}
	return s
}
