package socket_test

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/lanyardhq/lanyard/broker"
	"github.com/lanyardhq/lanyard/connectors"
	"github.com/lanyardhq/lanyard/connectors/connectortest"
	"github.com/lanyardhq/lanyard/connectors/socket"
	"github.com/lanyardhq/lanyard/internal/config"
	"github.com/lanyardhq/lanyard/internal/safehttp"
	"github.com/lanyardhq/lanyard/internal/testenv"
)

const (
	redisPW = "s3cret-redis-password"
	wrongPW = "not-the-redis-password"
	newPW   = "rotated-redis-password"
)

func input(kv ...string) connectors.Input {
	in := connectors.Input{}
	for i := 0; i+1 < len(kv); i += 2 {
		in[kv[i]] = broker.SecretString(kv[i+1])
	}
	return in
}

func newConnector(t *testing.T, cfg config.SocketConnector) *socket.Connector {
	t.Helper()
	c, err := socket.New("cache", "Cache", cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return c
}

// TestSuiteRedis runs the shared suite against a real redis-server on a
// Unix socket with requirepass; Break rotates the password.
func TestSuiteRedis(t *testing.T) {
	sock := testenv.StartRedis(t, redisPW)
	c := newConnector(t, config.SocketConnector{Network: "unix", AllowedDirs: []string{filepath.Dir(sock)}, Probe: "redis"})
	good := input(socket.FieldPath, sock, socket.FieldSecret, redisPW)
	connectortest.Run(t, connectortest.Harness{
		Connector: c,
		GoodInput: good,
		BadInput:  input(socket.FieldPath, sock, socket.FieldSecret, wrongPW),
		Link: func(t *testing.T) connectors.Linked {
			l, err := c.Link(context.Background(), good)
			if err != nil {
				t.Fatalf("Link: %v", err)
			}
			if l.Account != sock {
				t.Errorf("Account = %q, want %q", l.Account, sock)
			}
			return l
		},
		Break: func(t *testing.T, _ connectors.Linked) {
			rdb := redis.NewClient(&redis.Options{Network: "unix", Addr: sock, Password: redisPW, DisableIdentity: true})
			defer rdb.Close()
			if err := rdb.ConfigSet(context.Background(), "requirepass", newPW).Err(); err != nil {
				t.Fatalf("CONFIG SET requirepass: %v", err)
			}
		},
		Secrets: []string{redisPW, wrongPW, newPW},
	})
}

// TestSuiteTCP runs the suite for a TCP endpoint on loopback with probe
// none (a dial suffices; nothing to reject).
func TestSuiteTCP(t *testing.T) {
	addr := listenTCP(t)
	c := newConnector(t, config.SocketConnector{Network: "tcp", Probe: "none"})
	good := input(socket.FieldAddress, addr, socket.FieldSecret, "tcp-secret-value")
	connectortest.Run(t, connectortest.Harness{
		Connector: c,
		GoodInput: good,
		Link: func(t *testing.T) connectors.Linked {
			l, err := c.Link(context.Background(), good)
			if err != nil {
				t.Fatalf("Link: %v", err)
			}
			return l
		},
		Secrets: []string{"tcp-secret-value"},
	})
}

func listenTCP(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	return ln.Addr().String()
}

func TestRedisWithoutSecretRejected(t *testing.T) {
	sock := testenv.StartRedis(t, redisPW)
	c := newConnector(t, config.SocketConnector{Network: "unix", AllowedDirs: []string{filepath.Dir(sock)}, Probe: "redis"})
	if _, err := c.Link(context.Background(), input(socket.FieldPath, sock)); !errors.Is(err, connectors.ErrRejected) {
		t.Errorf("Link without the password = %v, want ErrRejected", err)
	}
}

func TestRedisWithoutPassword(t *testing.T) {
	sock := testenv.StartRedis(t, "")
	c := newConnector(t, config.SocketConnector{Network: "unix", AllowedDirs: []string{filepath.Dir(sock)}, Probe: "redis"})
	l, err := c.Link(context.Background(), input(socket.FieldPath, sock))
	if err != nil {
		t.Fatalf("Link to a redis without a password: %v", err)
	}
	if _, ok := l.Secret.Field(socket.FieldSecret); ok {
		t.Error("the secret has a secret field though none was given")
	}
}

// unixSocket listens on path (removed when the test ends).
func unixSocket(t *testing.T, path string) {
	t.Helper()
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
}

// TestUnixPathRules: only sockets under an allowed directory, judged after
// symlinks are resolved and by whole path components.
func TestUnixPathRules(t *testing.T) {
	// A short root: socket paths are limited to 108 bytes.
	root, err := os.MkdirTemp("", "sk")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(root) })
	for _, d := range []string{"a", "a-evil", "outside", "a/sub"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	j := func(p string) string { return filepath.Join(root, p) }
	unixSocket(t, j("a/ok.sock"))
	unixSocket(t, j("a/sub/deep.sock"))
	unixSocket(t, j("a-evil/s.sock"))
	unixSocket(t, j("outside/s.sock"))
	if err := os.WriteFile(j("a/file"), []byte("not a socket"), 0o600); err != nil {
		t.Fatal(err)
	}
	for old, link := range map[string]string{
		j("outside/s.sock"): j("a/escape.sock"), // inside, pointing outside
		j("outside"):        j("a/escdir"),      // a directory link pointing outside
		j("a/ok.sock"):      j("outside/in.sock"),
		j("a"):              j("alink"), // an allowed dir given through a link
	} {
		if err := os.Symlink(old, link); err != nil {
			t.Fatal(err)
		}
	}

	c := newConnector(t, config.SocketConnector{Network: "unix", AllowedDirs: []string{j("a")}, Probe: "none"})
	for _, tc := range []struct {
		path string
		ok   bool
	}{
		{j("a/ok.sock"), true},
		{j("a/sub/deep.sock"), true},
		{j("a/sub/../ok.sock"), true},
		{j("outside/in.sock"), true}, // a link from outside to a socket inside: the socket is inside
		{j("alink/ok.sock"), true},
		{j("a-evil/s.sock"), false}, // "/run/a-evil" is not under "/run/a"
		{j("outside/s.sock"), false},
		{j("a/escape.sock"), false}, // symlink inside an allowed dir pointing outside
		{j("a/escdir/s.sock"), false},
		{j("a/../outside/s.sock"), false},
		{j("a/file"), false}, // not a socket
		{j("a"), false},      // a directory
		{j("a/missing.sock"), false},
		{"a/ok.sock", false}, // relative
		{"", false},
	} {
		t.Run(tc.path, func(t *testing.T) {
			_, err := c.Link(context.Background(), input(socket.FieldPath, tc.path))
			switch {
			case tc.ok && err != nil:
				t.Errorf("Link(%s) = %v, want success", tc.path, err)
			case !tc.ok && !errors.Is(err, broker.ErrInvalid):
				t.Errorf("Link(%s) = %v, want ErrInvalid", tc.path, err)
			}
		})
	}

	// The allowed dir itself given through a symlink.
	viaLink := newConnector(t, config.SocketConnector{Network: "unix", AllowedDirs: []string{j("alink")}})
	if _, err := viaLink.Link(context.Background(), input(socket.FieldPath, j("a/ok.sock"))); err != nil {
		t.Errorf("Link under an allowed dir given as a symlink: %v", err)
	}

	// A link re-pointed after linking is caught by Verify and Materialize.
	l, err := c.Link(context.Background(), input(socket.FieldPath, j("outside/in.sock")))
	if err != nil {
		t.Fatal(err)
	}
	cred, err := c.Materialize(context.Background(), l.Secret)
	if err != nil || cred.Fields["path"] != j("a/ok.sock") {
		t.Errorf("Materialize = %v, %v; want the resolved path %s", cred.Fields, err, j("a/ok.sock"))
	}
	if err := os.Remove(j("outside/in.sock")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(j("outside/s.sock"), j("outside/in.sock")); err != nil {
		t.Fatal(err)
	}
	if err := c.Verify(context.Background(), l.Secret); !errors.Is(err, broker.ErrInvalid) {
		t.Errorf("Verify after the link was re-pointed outside = %v, want ErrInvalid", err)
	}
	if _, err := c.Materialize(context.Background(), l.Secret); !errors.Is(err, broker.ErrInvalid) {
		t.Errorf("Materialize after the link was re-pointed outside = %v, want ErrInvalid", err)
	}
}

// TestTCPRules: loopback and public are allowed, private, link-local and
// reserved ranges refused before any dial.
func TestTCPRules(t *testing.T) {
	c := newConnector(t, config.SocketConnector{Network: "tcp"})
	addr := listenTCP(t)
	if _, err := c.Link(context.Background(), input(socket.FieldAddress, addr)); err != nil {
		t.Errorf("Link to loopback %s = %v, want success", addr, err)
	}
	for _, a := range []string{"10.1.2.3:6379", "192.168.1.1:6379", "172.16.0.1:6379", "169.254.169.254:80",
		"[fe80::1]:6379", "[fd00::1]:6379", "100.64.0.1:6379", "0.0.0.0:6379", "[::ffff:10.0.0.1]:6379"} {
		_, err := c.Link(context.Background(), input(socket.FieldAddress, a))
		if !errors.Is(err, broker.ErrInvalid) || !errors.Is(err, safehttp.ErrBlockedAddress) {
			t.Errorf("Link to %s = %v, want ErrInvalid and ErrBlockedAddress", a, err)
		}
	}
	for _, a := range []string{"127.0.0.1", "127.0.0.1:0", "127.0.0.1:70000", ":6379", "a b:1"} {
		if _, err := c.Link(context.Background(), input(socket.FieldAddress, a)); !errors.Is(err, broker.ErrInvalid) {
			t.Errorf("Link to malformed %q = %v, want ErrInvalid", a, err)
		}
	}
	// Nothing listening: an upstream error, not a rejection.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := ln.Addr().String()
	ln.Close()
	if _, err := c.Link(context.Background(), input(socket.FieldAddress, closed)); !errors.Is(err, connectors.ErrUpstream) {
		t.Errorf("Link to a closed port = %v, want ErrUpstream", err)
	}
}

// TestRedisProbeBounded: a server that accepts and never answers costs at
// most the caller's deadline.
func TestRedisProbeBounded(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	c := newConnector(t, config.SocketConnector{Network: "tcp", Probe: "redis"})
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err = c.Link(ctx, input(socket.FieldAddress, ln.Addr().String(), socket.FieldSecret, redisPW))
	if el := time.Since(start); el > 3*time.Second {
		t.Errorf("Link took %v with a 300ms deadline", el)
	}
	if !errors.Is(err, connectors.ErrUpstream) {
		t.Errorf("Link = %v, want ErrUpstream", err)
	}
}

func TestMaterializeRedis(t *testing.T) {
	sock := testenv.StartRedis(t, redisPW)
	c := newConnector(t, config.SocketConnector{Network: "unix", AllowedDirs: []string{filepath.Dir(sock)}, Probe: "redis"})
	l, err := c.Link(context.Background(), input(socket.FieldPath, sock, socket.FieldSecret, redisPW))
	if err != nil {
		t.Fatal(err)
	}
	cred, err := c.Materialize(context.Background(), l.Secret)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]any{"network": "unix", "path": sock, "secret": redisPW}
	for k, v := range want {
		if cred.Fields[k] != v {
			t.Errorf("Fields[%s] = %v, want %v", k, cred.Fields[k], v)
		}
	}
	if cred.Type != "socket" {
		t.Errorf("Type = %q", cred.Type)
	}
	// A secret linked for TCP is not used by a unix connector.
	tcpSecret := broker.NewSecret(map[string]string{"network": "tcp", "address": "127.0.0.1:6379"})
	if _, err := c.Materialize(context.Background(), tcpSecret); !errors.Is(err, broker.ErrInvalid) {
		t.Errorf("Materialize of a tcp secret = %v, want ErrInvalid", err)
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	for name, cfg := range map[string]config.SocketConnector{
		"unix without dirs": {Network: "unix"},
		"relative dir":      {Network: "unix", AllowedDirs: []string{"run"}},
		"bad network":       {Network: "udp"},
		"bad probe":         {Network: "tcp", Probe: "http"},
	} {
		if _, err := socket.New("x", "X", cfg); !errors.Is(err, broker.ErrInvalid) {
			t.Errorf("%s: New = %v, want ErrInvalid", name, err)
		}
	}
}
