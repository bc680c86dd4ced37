package sealed

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"

	"github.com/lanyardhq/lanyard/broker"
)

// loadOrCreateKey reads the key in path, creating the file with a fresh
// random key if it does not exist. Problems with an existing file wrap
// broker.ErrInvalid and say how to fix them; the key never appears in an
// error.
func loadOrCreateKey(path string) ([]byte, error) {
	if path == "" {
		return nil, fmt.Errorf("sealed key file: no path given: %w", broker.ErrInvalid)
	}
	if err := checkDir(filepath.Dir(path)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	key, err := readKey(path)
	if !errors.Is(err, fs.ErrNotExist) {
		return key, err
	}
	if err := createKey(path); err != nil {
		return nil, err
	}
	return readKey(path) // also covers losing a creation race to another process
}

// readKey opens path without following a symbolic link and checks the open
// file itself, so that what is checked is what is read.
func readKey(path string) ([]byte, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, err
		}
		return nil, fmt.Errorf("sealed key file %s: %w", path, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("sealed key file %s: %w", path, err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("sealed key file %s is not a regular file: %w", path, broker.ErrInvalid)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("sealed key file %s has mode %04o, which lets group or others access it; "+
			"it must be readable by its owner only (chmod 600 %s): %w", path, perm, path, broker.ErrInvalid)
	}
	if uid, ok := ownerOf(fi); ok && uid != uint32(geteuid()) {
		return nil, fmt.Errorf("sealed key file %s is owned by uid %d, not by uid %d that runs Lanyard; "+
			"another user could have written the key (chown %d %s): %w", path, uid, geteuid(), geteuid(), path, broker.ErrInvalid)
	}
	key := make([]byte, keySize+1)
	n, err := io.ReadFull(f, key)
	switch {
	case errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF):
		// shorter than keySize+1: n is the length
	case err != nil:
		clear(key)
		return nil, fmt.Errorf("sealed key file %s: %w", path, err)
	}
	if n != keySize {
		clear(key)
		size := fmt.Sprint(n)
		if n > keySize {
			size = "more than " + fmt.Sprint(keySize)
		}
		return nil, fmt.Errorf("sealed key file %s holds %s bytes, want exactly %d (a raw AES-256 key): %w",
			path, size, keySize, broker.ErrInvalid)
	}
	return key[:keySize], nil
}

// geteuid is os.Geteuid; tests replace it.
var geteuid = os.Geteuid

// ownerOf returns the uid that owns fi's file, where the platform says.
func ownerOf(fi fs.FileInfo) (uint32, bool) {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, false
	}
	return st.Uid, true
}

// checkDir refuses a key directory that another user could write to (and so
// replace or remove the key file in): one writable by group or others, or
// owned by a user other than Lanyard's or root. Its error wraps
// fs.ErrNotExist if dir does not exist.
func checkDir(dir string) error {
	fi, err := os.Stat(dir)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return err
		}
		return fmt.Errorf("sealed key directory %s: %w", dir, err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("sealed key directory %s is not a directory: %w", dir, broker.ErrInvalid)
	}
	if perm := fi.Mode().Perm(); perm&0o022 != 0 {
		return fmt.Errorf("sealed key directory %s has mode %04o, which lets group or others replace the key file; "+
			"it must be writable by its owner only (chmod go-w %s): %w", dir, perm, dir, broker.ErrInvalid)
	}
	if uid, ok := ownerOf(fi); ok && uid != 0 && uid != uint32(geteuid()) {
		return fmt.Errorf("sealed key directory %s is owned by uid %d, neither root nor uid %d that runs Lanyard "+
			"(chown %d %s): %w", dir, uid, geteuid(), geteuid(), dir, broker.ErrInvalid)
	}
	return nil
}

// createKey writes a new random key to path atomically: to a temporary file
// created exclusively with mode 0600 in the same directory, synced, then
// linked into place. Linking (unlike renaming) never replaces a key another
// process created at the same moment; the loser reads the winner's key.
func createKey(path string) (err error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("sealed key file %s: %w", path, err)
	}
	if err := checkDir(dir); err != nil {
		return err
	}
	suffix := make([]byte, 8)
	if _, err := rand.Read(suffix); err != nil {
		return fmt.Errorf("sealed key file %s: %w", path, err)
	}
	tmp := filepath.Join(dir, "."+filepath.Base(path)+".tmp-"+hex.EncodeToString(suffix))
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("sealed key file %s: %w", path, err)
	}
	defer os.Remove(tmp) // after a link, path keeps the file
	key := make([]byte, keySize)
	defer clear(key)
	if _, err := rand.Read(key); err != nil {
		f.Close()
		return fmt.Errorf("sealed key file %s: %w", path, err)
	}
	if _, err := f.Write(key); err != nil {
		f.Close()
		return fmt.Errorf("sealed key file %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("sealed key file %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("sealed key file %s: %w", path, err)
	}
	if err := os.Link(tmp, path); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return nil // another process created it first; use theirs
		}
		return fmt.Errorf("sealed key file %s: %w", path, err)
	}
	if d, err := os.Open(dir); err == nil { // make the new name durable
		_ = d.Sync()
		d.Close()
	}
	return nil
}
