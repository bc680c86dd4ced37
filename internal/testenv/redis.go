package testenv

import (
	"bufio"
	"net"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// StartRedis starts a real redis-server (Debian redis-server) for one test:
// no TCP port, a Unix socket only the owner may open, requirepass password,
// no persistence. It returns the socket's path once the server answers
// there, and kills the server when the test ends.
//
// If redis-server is not installed the test fails under CI and is skipped
// otherwise (scripts/setup.sh installs it).
func StartRedis(tb testing.TB, password string) (socketPath string) {
	tb.Helper()
	bin := needBinary(tb, "redis-server", "redis-server")
	// Short path: a Unix socket address is limited to 108 bytes.
	dir := scratchDir(tb, "rd")
	socketPath = filepath.Join(dir, "redis.sock")
	args := []string{
		"--port", "0",
		"--unixsocket", socketPath,
		"--unixsocketperm", "700",
		"--save", "",
		"--appendonly", "no",
		"--dir", dir,
		"--daemonize", "no",
	}
	if password != "" {
		args = append(args, "--requirepass", password)
	}
	Start(tb, exec.Command(bin, args...))
	waitRedis(tb, socketPath, 15*time.Second)
	return socketPath
}

// waitRedis waits until the server at the socket answers an inline PING
// (with +PONG, or -NOAUTH when it wants a password).
func waitRedis(tb testing.TB, socketPath string, timeout time.Duration) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	var lastErr error
	for time.Now().Before(deadline) {
		line, err := pingOnce(socketPath)
		if err == nil && (strings.HasPrefix(line, "+PONG") || strings.HasPrefix(line, "-NOAUTH")) {
			return
		}
		if err == nil {
			lastErr = &net.AddrError{Err: "unexpected answer " + strings.TrimSpace(line), Addr: socketPath}
		} else {
			lastErr = err
		}
		time.Sleep(50 * time.Millisecond)
	}
	tb.Fatalf("redis-server did not answer on %s within %v: %v", socketPath, timeout, lastErr)
}

func pingOnce(socketPath string) (string, error) {
	c, err := net.DialTimeout("unix", socketPath, time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Second))
	if _, err := c.Write([]byte("PING\r\n")); err != nil {
		return "", err
	}
	return bufio.NewReader(c).ReadString('\n')
}
