package testenv

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// EtcdMember is one etcd-server process started by StartEtcdCluster.
type EtcdMember struct {
	Name      string
	ClientURL string // http://127.0.0.1:port, what clients dial
	PeerURL   string // http://127.0.0.1:port, raft traffic
	DataDir   string

	tb   testing.TB
	bin  string
	args []string

	mu  sync.Mutex
	cmd *exec.Cmd // nil while stopped
}

// EtcdCluster is a set of etcd-server processes forming one cluster, on
// loopback ports, killed when the test ends.
type EtcdCluster struct {
	Members []*EtcdMember
}

// Endpoints returns every member's client URL.
func (c *EtcdCluster) Endpoints() []string {
	out := make([]string, len(c.Members))
	for i, m := range c.Members {
		out[i] = m.ClientURL
	}
	return out
}

// StartEtcd starts a single-member etcd cluster (Debian etcd-server) on free
// loopback client and peer ports with a data dir under the test's temp dir,
// waits until it serves requests, and returns its client endpoints. The
// server is killed when the test ends.
//
// If etcd is not installed the test fails under CI and is skipped otherwise
// (scripts/setup.sh installs it).
func StartEtcd(tb testing.TB) (endpoints []string) {
	tb.Helper()
	return StartEtcdCluster(tb, 1).Endpoints()
}

// StartEtcdCluster starts an n-member etcd cluster on loopback, each member
// with its own ports and data dir, and returns once every member reports
// itself healthy (a leader is elected). Members can be stopped and
// restarted, for tests of what happens when one fails.
func StartEtcdCluster(tb testing.TB, n int) *EtcdCluster {
	tb.Helper()
	if n < 1 {
		tb.Fatalf("StartEtcdCluster: %d members", n)
	}
	bin := needBinary(tb, "etcd", "etcd-server etcd-client")
	c := &EtcdCluster{}
	var initial []string
	for i := range n {
		m := &EtcdMember{
			Name:      "m" + strconv.Itoa(i),
			ClientURL: "http://" + Addr(FreePort(tb)),
			PeerURL:   "http://" + Addr(FreePort(tb)),
			DataDir:   filepath.Join(tb.TempDir(), "data"), // etcd creates it 0700
			tb:        tb,
			bin:       bin,
		}
		c.Members = append(c.Members, m)
		initial = append(initial, m.Name+"="+m.PeerURL)
	}
	token := fmt.Sprintf("lanyard-test-%d-%d", os.Getpid(), time.Now().UnixNano())
	for _, m := range c.Members {
		m.args = []string{
			"--name", m.Name,
			"--data-dir", m.DataDir,
			"--listen-client-urls", m.ClientURL,
			"--advertise-client-urls", m.ClientURL,
			"--listen-peer-urls", m.PeerURL,
			"--initial-advertise-peer-urls", m.PeerURL,
			"--initial-cluster", strings.Join(initial, ","),
			"--initial-cluster-state", "new",
			"--initial-cluster-token", token,
			"--logger", "zap",
			"--log-level", "warn",
		}
		m.start()
	}
	for _, m := range c.Members {
		m.WaitHealthy(30 * time.Second)
	}
	return c
}

// start runs the member's process (its data dir keeps its identity, so a
// restarted member rejoins the cluster it was part of).
func (m *EtcdMember) start() {
	m.tb.Helper()
	cmd := exec.Command(m.bin, m.args...)
	// ETCD_* variables of the caller's environment would override flags.
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "ETCD_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	Start(m.tb, cmd)
	m.mu.Lock()
	m.cmd = cmd
	m.mu.Unlock()
}

// Kill stops the member with SIGKILL and waits for it to exit.
func (m *EtcdMember) Kill() {
	m.mu.Lock()
	cmd := m.cmd
	m.cmd = nil
	m.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	_ = cmd.Wait()
}

// Restart starts a killed member again on the same ports and data dir and
// waits until it is healthy.
func (m *EtcdMember) Restart() {
	m.tb.Helper()
	m.Kill()
	m.start()
	m.WaitHealthy(30 * time.Second)
}

// WaitHealthy waits until the member's /health endpoint reports true (it
// serves requests and the cluster has a leader), failing the test after
// timeout.
func (m *EtcdMember) WaitHealthy(timeout time.Duration) {
	m.tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var last error
	for {
		if last = etcdHealth(ctx, m.ClientURL); last == nil {
			return
		}
		select {
		case <-ctx.Done():
			m.tb.Fatalf("etcd member %s at %s not healthy within %v: %v", m.Name, m.ClientURL, timeout, last)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func etcdHealth(ctx context.Context, clientURL string) error {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, clientURL+"/health", nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var h struct {
		Health string `json:"health"`
	}
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if err := json.Unmarshal(b, &h); err != nil || h.Health != "true" {
		return fmt.Errorf("/health answered %s %q", resp.Status, b)
	}
	return nil
}
