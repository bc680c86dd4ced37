// Package sealed is the embedded secret store: broker.SecretStore on raw
// durable blobs (internal/bolt.DB in Lanyard), every secret sealed with
// AES-256-GCM, for single-binary use (`lanyard dev`) where no Vault runs.
//
// The 32-byte key lives in its own key file, never in the database: Open
// creates it (mode 0600, from crypto/rand) on first run and refuses one that
// group or others may access, that another user owns, that lies in a
// directory others may write to, or that has the wrong length. Losing the key
// file loses every secret; copying the database without it reveals none.
//
// A blob is version (8 bytes, big endian) || key id (4 bytes) || nonce (12
// random bytes) || ciphertext. The key id is the first 4 bytes of SHA-256 over
// a label and the key: it names the key that sealed the blob (so that a key
// can one day be rotated) and lets a blob sealed with another key file be
// reported as such, without revealing anything about the key. The additional
// authenticated data binds the blob to the format, its storage key, its
// version and its key id, so a blob copied under another storage key, or
// whose header was rewritten, fails authentication and is reported as
// broker.ErrTampered;
// a value that fails authentication is never returned. (Replacing a blob by
// an older blob of the same key cannot be detected without state outside the
// database.) The plaintext is the JSON object of the secret's fields.
//
// Check-and-set semantics are the same as the vault package's, so both pass
// broker/secrettest.
package sealed

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/lanyardhq/lanyard/broker"
)

// Blobs is raw durable storage for sealed secrets; internal/bolt.DB implements it.
type Blobs interface {
	// GetBlob returns the blob under key; the error wraps broker.ErrNotFound
	// if there is none.
	GetBlob(ctx context.Context, key string) ([]byte, error)
	// UpdateBlob atomically reads the blob under key, calls fn with it and
	// stores what fn returns; an error from fn aborts the update and is
	// returned as is.
	UpdateBlob(ctx context.Context, key string, fn func(old []byte, exists bool) ([]byte, error)) error
	// DeleteBlob removes the blob under key; the error wraps
	// broker.ErrNotFound if there is none.
	DeleteBlob(ctx context.Context, key string) error
	// ListBlobs returns the keys that start with prefix, sorted.
	ListBlobs(ctx context.Context, prefix string) ([]string, error)
}

// pinger is the optional capability of a Blobs that can report its health
// (internal/bolt.DB has it).
type pinger interface {
	Ping(ctx context.Context) error
}

// Options configures Open. The zero value is ready to use.
type Options struct {
	// Observer, if not nil, is told about every call (component "sealed").
	Observer broker.Observer
}

const (
	component  = "sealed"
	keySize    = 32 // AES-256
	keyIDSize  = 4
	nonceSize  = 12
	headerSize = 8 + keyIDSize + nonceSize
	aadLabel   = "lanyard/sealed/v2\x00"
	// keyIDLabel separates the key id hash from any other use of the key.
	keyIDLabel = "lanyard/sealed/key-id\x00"
)

// keyIDOf returns the key id of key as stored in a blob header.
func keyIDOf(key []byte) [keyIDSize]byte {
	h := sha256.New()
	h.Write([]byte(keyIDLabel))
	h.Write(key)
	var id [keyIDSize]byte
	copy(id[:], h.Sum(nil))
	return id
}

// Store is a broker.SecretStore that seals secrets with AES-256-GCM before
// handing them to a Blobs. It is safe for concurrent use.
type Store struct {
	blobs Blobs
	aead  cipher.AEAD
	keyID [keyIDSize]byte
	obs   broker.Observer
}

var _ broker.SecretStore = (*Store)(nil)

// Open returns a store that keeps its blobs in blobs and its key in keyFile,
// creating the key file if it does not exist yet.
func Open(blobs Blobs, keyFile string, opts Options) (*Store, error) {
	if blobs == nil {
		return nil, fmt.Errorf("sealed open: no blob storage: %w", broker.ErrInvalid)
	}
	key, err := loadOrCreateKey(keyFile)
	if err != nil {
		return nil, err
	}
	defer clear(key)
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("sealed open: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("sealed open: %w", err)
	}
	return &Store{blobs: blobs, aead: aead, keyID: keyIDOf(key), obs: opts.Observer}, nil
}

func blobKey(k broker.SecretKey) string { return k.Owner + "/" + k.Name }

// aad is the additional authenticated data of the blob for key at version,
// sealed with the key whose id is keyID.
func aad(key string, version uint64, keyID []byte) []byte {
	b := make([]byte, 0, len(aadLabel)+len(key)+1+8+keyIDSize)
	b = append(b, aadLabel...)
	b = append(b, key...)
	b = append(b, 0)
	b = binary.BigEndian.AppendUint64(b, version)
	return append(b, keyID...)
}

// seal encrypts fields as the blob for key at version.
func (s *Store) seal(key string, version uint64, fields map[string]string) ([]byte, error) {
	plain, err := json.Marshal(fields)
	if err != nil {
		return nil, fmt.Errorf("encode: %w", err)
	}
	defer clear(plain)
	out := make([]byte, headerSize, headerSize+len(plain)+s.aead.Overhead())
	binary.BigEndian.PutUint64(out, version)
	copy(out[8:8+keyIDSize], s.keyID[:])
	nonce := out[8+keyIDSize : headerSize]
	if _, err := rand.Read(nonce); err != nil {
		return nil, fmt.Errorf("nonce: %w", err)
	}
	return s.aead.Seal(out, nonce, plain, aad(key, version, s.keyID[:])), nil
}

// unseal authenticates and decrypts the blob stored under key. Any failure
// wraps broker.ErrTampered and carries nothing of the blob's content.
func (s *Store) unseal(key string, blob []byte) (map[string]string, uint64, error) {
	if len(blob) < headerSize+s.aead.Overhead() {
		return nil, 0, fmt.Errorf("blob of %d bytes is too short: %w", len(blob), broker.ErrTampered)
	}
	version := binary.BigEndian.Uint64(blob)
	keyID := blob[8 : 8+keyIDSize]
	if !bytes.Equal(keyID, s.keyID[:]) {
		return nil, 0, fmt.Errorf("sealed with another key (key id %x, the key file's is %x), "+
			"or the blob header was altered: %w", keyID, s.keyID[:], broker.ErrTampered)
	}
	plain, err := s.aead.Open(nil, blob[8+keyIDSize:headerSize], blob[headerSize:], aad(key, version, keyID))
	if err != nil {
		return nil, 0, fmt.Errorf("decryption failed (wrong key file, or the blob was altered or moved): %w", broker.ErrTampered)
	}
	defer clear(plain)
	if version == 0 || version > math.MaxInt32 {
		return nil, 0, fmt.Errorf("version %d out of range: %w", version, broker.ErrTampered)
	}
	var fields map[string]string
	if err := json.Unmarshal(plain, &fields); err != nil {
		return nil, 0, fmt.Errorf("authenticated plaintext is not a field map: %w", broker.ErrTampered)
	}
	return fields, version, nil
}

// Put implements broker.SecretStore.
func (s *Store) Put(ctx context.Context, k broker.SecretKey, sec broker.Secret, cas int) (version int, err error) {
	start := time.Now()
	defer func() { s.obs.Observe(component, "put", start, err) }()
	if err := k.Validate(); err != nil {
		return 0, fmt.Errorf("sealed put: %w", err)
	}
	if cas < broker.CASAny {
		return 0, fmt.Errorf("sealed put %s: check-and-set version %d: %w", k, cas, broker.ErrInvalid)
	}
	if err := ctx.Err(); err != nil {
		return 0, fmt.Errorf("sealed put %s: %w", k, err)
	}
	key, fields := blobKey(k), sec.Fields()
	err = s.blobs.UpdateBlob(ctx, key, func(old []byte, exists bool) ([]byte, error) {
		var cur uint64
		if exists {
			_, v, err := s.unseal(key, old)
			if err != nil {
				return nil, err
			}
			cur = v
		}
		switch {
		case cas == broker.CASCreate && exists:
			return nil, broker.ErrAlreadyExists
		case cas > 0 && uint64(cas) != cur:
			return nil, fmt.Errorf("version %d is not the current one: %w", cas, broker.ErrConflict)
		}
		version = int(cur + 1)
		return s.seal(key, cur+1, fields)
	})
	if err != nil {
		return 0, fmt.Errorf("sealed put %s: %w", k, err)
	}
	return version, nil
}

// Get implements broker.SecretStore.
func (s *Store) Get(ctx context.Context, k broker.SecretKey) (_ broker.Secret, _ int, err error) {
	start := time.Now()
	defer func() { s.obs.Observe(component, "get", start, err) }()
	if err := k.Validate(); err != nil {
		return broker.Secret{}, 0, fmt.Errorf("sealed get: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return broker.Secret{}, 0, fmt.Errorf("sealed get %s: %w", k, err)
	}
	key := blobKey(k)
	blob, err := s.blobs.GetBlob(ctx, key)
	if err != nil {
		return broker.Secret{}, 0, fmt.Errorf("sealed get %s: %w", k, err)
	}
	fields, version, err := s.unseal(key, blob)
	if err != nil {
		return broker.Secret{}, 0, fmt.Errorf("sealed get %s: %w", k, err)
	}
	sec := broker.NewSecret(fields)
	clear(fields)
	return sec, int(version), nil
}

// Delete implements broker.SecretStore. It removes the blob without
// decrypting it, so a tampered secret can be deleted.
func (s *Store) Delete(ctx context.Context, k broker.SecretKey) (err error) {
	start := time.Now()
	defer func() { s.obs.Observe(component, "delete", start, err) }()
	if err := k.Validate(); err != nil {
		return fmt.Errorf("sealed delete: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("sealed delete %s: %w", k, err)
	}
	if err := s.blobs.DeleteBlob(ctx, blobKey(k)); err != nil {
		return fmt.Errorf("sealed delete %s: %w", k, err)
	}
	return nil
}

// List implements broker.SecretStore.
func (s *Store) List(ctx context.Context, owner string) (_ []broker.SecretKey, err error) {
	start := time.Now()
	defer func() { s.obs.Observe(component, "list", start, err) }()
	if err := broker.ValidateOwner(owner); err != nil {
		return nil, fmt.Errorf("sealed list: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("sealed list %s: %w", owner, err)
	}
	names, err := s.blobs.ListBlobs(ctx, owner+"/")
	if err != nil {
		return nil, fmt.Errorf("sealed list %s: %w", owner, err)
	}
	keys := make([]broker.SecretKey, 0, len(names))
	for _, n := range names {
		k := broker.SecretKey{Owner: owner, Name: strings.TrimPrefix(n, owner+"/")}
		if k.Validate() == nil {
			keys = append(keys, k)
		}
	}
	return keys, nil // ListBlobs sorts bytewise, which orders the names too
}

// Ping implements broker.SecretStore: it asks the blob storage if it can
// (its Ping method), or else lists an unused prefix.
func (s *Store) Ping(ctx context.Context) (err error) {
	start := time.Now()
	defer func() { s.obs.Observe(component, "ping", start, err) }()
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("sealed ping: %w", err)
	}
	if p, ok := s.blobs.(pinger); ok {
		err = p.Ping(ctx)
	} else {
		_, err = s.blobs.ListBlobs(ctx, "\x00ping/")
	}
	if err != nil {
		return fmt.Errorf("sealed ping: %w", err)
	}
	return nil
}
