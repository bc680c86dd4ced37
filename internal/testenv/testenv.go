// Package testenv finds the real servers that tests run against (Vault, and
// later etcd, dovecot, redis) and starts helper processes that are stopped
// when the test ends.
//
// The servers are started by scripts/test.sh, which exports their addresses.
// A test that needs one calls the matching function here: when the address is
// missing the test is skipped on a developer's machine, but when the CI
// environment variable is set it fails, so CI can never pass by skipping.
package testenv

import (
	"bytes"
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"
)

// InCI reports whether the tests run under CI (the CI variable is set).
func InCI() bool { return os.Getenv("CI") != "" }

// Missing fails the test under CI with msg, which says what is missing, and
// skips it otherwise.
func Missing(tb testing.TB, msg string) {
	tb.Helper()
	if InCI() {
		tb.Fatal(msg)
	}
	tb.Skip(msg)
}

// Need returns the value of each environment variable in names. If any is
// missing the test fails under CI and is skipped otherwise.
func Need(tb testing.TB, what string, names ...string) []string {
	tb.Helper()
	vals := make([]string, len(names))
	for i, n := range names {
		vals[i] = os.Getenv(n)
		if vals[i] == "" {
			Missing(tb, what+" is not available: "+n+" is not set (run the tests with `make test`)")
		}
	}
	return vals
}

// Vault returns the address and root token of the dev Vault server that
// scripts/test.sh started (VAULT_ADDR, VAULT_TOKEN).
func Vault(tb testing.TB) (addr, token string) {
	tb.Helper()
	v := Need(tb, "Vault", "VAULT_ADDR", "VAULT_TOKEN")
	return v[0], v[1]
}

// VaultBinary returns the path of the Vault server binary built by
// scripts/build-vault.sh (LANYARD_VAULT_BIN), for tests that start a Vault of
// their own (for example a non-dev Vault they seal and unseal).
func VaultBinary(tb testing.TB) string {
	tb.Helper()
	return Need(tb, "Vault binary", "LANYARD_VAULT_BIN")[0]
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort(tb testing.TB) int {
	tb.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatalf("free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// Start starts cmd in its own process group, with its output in a file under
// the test's temp dir, and kills the whole group when the test ends. It
// returns the path of the output file.
func Start(tb testing.TB, cmd *exec.Cmd) string {
	tb.Helper()
	logPath := filepath.Join(tb.TempDir(), filepath.Base(cmd.Path)+".log")
	f, err := os.Create(logPath)
	if err != nil {
		tb.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = f, f
	// Pdeathsig: if the test binary dies (timeout, ^C), so does the child.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.Close()
		tb.Fatalf("start %s: %v", cmd.Path, err)
	}
	tb.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		_ = cmd.Wait()
		f.Close()
		if tb.Failed() {
			if b, err := os.ReadFile(logPath); err == nil {
				tb.Logf("output of %s:\n%s", cmd.Path, b)
			}
		}
	})
	return logPath
}

// WaitTCP waits until addr accepts TCP connections or the timeout passes.
func WaitTCP(tb testing.TB, addr string, timeout time.Duration) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var d net.Dialer
	for {
		c, err := d.DialContext(ctx, "tcp", addr)
		if err == nil {
			c.Close()
			return
		}
		select {
		case <-ctx.Done():
			tb.Fatalf("%s did not accept connections within %v: %v", addr, timeout, err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Addr formats a loopback host:port.
func Addr(port int) string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(port)) }

// Buffer is a bytes.Buffer safe for concurrent writers, for capturing the
// logs of a server or store that writes from background goroutines.
type Buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

// String returns everything written so far.
func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}
