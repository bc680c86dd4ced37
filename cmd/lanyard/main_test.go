package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/lanyardhq/lanyard/broker"
	"github.com/lanyardhq/lanyard/internal/testenv"
)

// run runs the command in-process to completion.
func run(t *testing.T, env map[string]string, stdin string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb testenv.Buffer
	m := &Main{PasswordCost: bcrypt.MinCost, Stdin: strings.NewReader(stdin), Stdout: &out, Stderr: &errb, Getenv: func(k string) string { return env[k] }}
	code = m.Run(context.Background(), args)
	return code, out.String(), errb.String()
}

// instance is a Lanyard running in-process on a free port.
type instance struct {
	url            string
	stdout, stderr *testenv.Buffer
	stop           func() int
}

func start(t *testing.T, env map[string]string, args ...string) *instance {
	t.Helper()
	in := &instance{stdout: &testenv.Buffer{}, stderr: &testenv.Buffer{}}
	ready := make(chan string, 1)
	m := &Main{PasswordCost: bcrypt.MinCost, Stdin: strings.NewReader(""), Stdout: in.stdout, Stderr: in.stderr,
		Getenv: func(k string) string { return env[k] }, OnReady: func(u string) { ready <- u }}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int, 1)
	go func() { done <- m.Run(ctx, args) }()
	select {
	case in.url = <-ready:
	case code := <-done:
		cancel()
		t.Fatalf("lanyard %v exited with %d before it was ready:\n%s%s", args, code, in.stdout, in.stderr)
	case <-time.After(30 * time.Second):
		cancel()
		t.Fatalf("lanyard %v did not become ready:\n%s", args, in.stderr)
	}
	var once sync.Once
	code := 0
	in.stop = func() int {
		once.Do(func() { cancel(); code = <-done })
		return code
	}
	t.Cleanup(func() { in.stop() })
	return in
}

func get(t *testing.T, url string, hdr ...string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestDevServesHealthReadinessAndMetrics(t *testing.T) {
	dir := t.TempDir()
	in := start(t, nil, "dev", "--addr", "127.0.0.1:0", "--data", dir)

	if code, body := get(t, in.url+"/healthz"); code != http.StatusOK {
		t.Errorf("/healthz = %d %s, want 200", code, body)
	}
	code, body := get(t, in.url+"/readyz")
	if code != http.StatusOK {
		t.Errorf("/readyz = %d %s, want 200", code, body)
	}
	var ready struct {
		Status string            `json:"status"`
		Checks map[string]string `json:"checks"`
	}
	if err := json.Unmarshal([]byte(body), &ready); err != nil || ready.Checks["store"] != "ok" || ready.Checks["secrets"] != "ok" {
		t.Errorf("/readyz body = %s (%v), want store and secrets ok", body, err)
	}
	if code, _ := get(t, in.url+"/no/such/path"); code != http.StatusNotFound {
		t.Errorf("unknown path = %d, want 404", code)
	}
	_, metrics := get(t, in.url+"/metrics")
	for _, want := range []string{
		`lanyard_http_requests_total{code="200",method="GET",route="/healthz"} 1`,
		`lanyard_http_requests_total{code="404",method="GET",route="unmatched"} 1`,
		`lanyard_http_request_duration_seconds_bucket{method="GET",route="/readyz"`,
		`lanyard_backend_call_duration_seconds_count{component="bolt"`,
		`lanyard_backend_call_duration_seconds_count{component="sealed"`,
		`go_goroutines`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if !strings.Contains(in.stdout.String(), "Lanyard is running at "+in.url) {
		t.Errorf("stdout does not print the URL:\n%s", in.stdout)
	}
	if !strings.Contains(in.stdout.String(), "Created dev login: user admin, password ") {
		t.Errorf("first dev start does not print the dev login:\n%s", in.stdout)
	}
	if code := in.stop(); code != 0 {
		t.Errorf("graceful stop exit = %d, want 0\n%s", code, in.stderr)
	}

	// Restart on the same data: nothing lost, no new dev login.
	in2 := start(t, nil, "dev", "--addr", "127.0.0.1:0", "--data", dir)
	if strings.Contains(in2.stdout.String(), "Created dev login") {
		t.Errorf("second start created another dev login")
	}
	in2.stop()
	code, out, _ := run(t, nil, "", "users", "list", "--data", dir)
	if code != 0 || !strings.Contains(out, "admin") {
		t.Errorf("users list after restart = %d\n%s", code, out)
	}
}

// TestUnreachableVaultAtStart: the signing keys live in the secret store,
// so Lanyard cannot start without it; it says so in one line. (A Vault that
// becomes sealed or unreachable later makes /readyz answer 503: see
// internal/server and vault tests.)
func TestUnreachableVaultAtStart(t *testing.T) {
	closed := testenv.Addr(testenv.FreePort(t))
	code, _, stderr := run(t, map[string]string{"VAULT_ADDR": "http://" + closed, "VAULT_TOKEN": "t"},
		"", "dev", "--addr", "127.0.0.1:0", "--data", t.TempDir())
	if code != exitFail || !strings.Contains(stderr, "unavailable") || strings.Count(strings.TrimSpace(stderr), "\n") != 0 {
		t.Errorf("exit %d, stderr %q; want 1 and a one-line reason naming the unavailable secret store", code, stderr)
	}
}

func TestDevUsesRealVault(t *testing.T) {
	addr, token := testenv.Vault(t)
	in := start(t, map[string]string{"VAULT_ADDR": addr, "VAULT_TOKEN": token}, "dev", "--addr", "127.0.0.1:0", "--data", t.TempDir())
	code, body := get(t, in.url+"/readyz")
	if code != http.StatusOK {
		t.Errorf("/readyz with real Vault = %d %s", code, body)
	}
	if _, m := get(t, in.url+"/metrics"); !strings.Contains(m, `component="vault"`) {
		t.Errorf("/metrics has no vault call latency")
	}
}

func TestBootstrapAdmin(t *testing.T) {
	dir := t.TempDir()
	env := map[string]string{"LANYARD_BOOTSTRAP_USER": "root-admin", "LANYARD_BOOTSTRAP_PASSWORD": "first passphrase 1"}
	in := start(t, env, "dev", "--addr", "127.0.0.1:0", "--data", dir)
	if strings.Contains(in.stdout.String(), "Created dev login") {
		t.Error("dev login created although a bootstrap admin was given")
	}
	in.stop()
	env["LANYARD_BOOTSTRAP_PASSWORD"] = "second passphrase 2"
	start(t, env, "dev", "--addr", "127.0.0.1:0", "--data", dir).stop()

	code, out, _ := run(t, nil, "", "users", "list", "--data", dir)
	if code != 0 || strings.Count(out, "root-admin") != 1 || !strings.Contains(out, "true") {
		t.Errorf("users list = %d\n%s\nwant exactly one admin root-admin", code, out)
	}

	for _, bad := range []map[string]string{
		{"LANYARD_BOOTSTRAP_USER": "only-user"},
		{"LANYARD_BOOTSTRAP_USER": "x", "LANYARD_BOOTSTRAP_PASSWORD": "short"},
		{"LANYARD_BOOTSTRAP_USER": "bad name!", "LANYARD_BOOTSTRAP_PASSWORD": "long enough passphrase"},
	} {
		code, _, stderr := run(t, bad, "", "dev", "--addr", "127.0.0.1:0", "--data", t.TempDir())
		if code != exitUsage || strings.Count(strings.TrimSpace(stderr), "\n") != 0 {
			t.Errorf("bootstrap %v: exit %d, stderr %q; want 2 and one line", bad, code, stderr)
		}
	}
}

func TestUsersCommands(t *testing.T) {
	dir := t.TempDir()
	steps := []struct {
		args     []string
		stdin    string
		wantCode int
		wantOut  string
	}{
		{[]string{"users", "add", "--data", dir, "--admin", "alice"}, "alice passphrase 1\n", 0, "added user alice"},
		{[]string{"users", "add", "--data", dir, "alice"}, "alice passphrase 1\n", exitUsage, ""},
		{[]string{"users", "add", "--data", dir, "bob"}, "short\n", exitUsage, ""},
		{[]string{"users", "add", "--data", dir, "bob"}, "", exitUsage, ""},
		{[]string{"users", "add", "--data", dir, "../etc"}, "long enough passphrase\n", exitUsage, ""},
		{[]string{"users", "set-password", "--data", dir, "alice"}, "a new passphrase 2\n", 0, "password of alice changed"},
		{[]string{"users", "set-password", "--data", dir, "nobody"}, "a new passphrase 2\n", exitUsage, ""},
		{[]string{"users", "list", "--data", dir}, "", 0, "alice"},
		{[]string{"users", "delete", "--data", dir, "alice"}, "", 0, "deleted user alice"},
		{[]string{"users", "delete", "--data", dir, "alice"}, "", exitUsage, ""},
		{[]string{"users", "frobnicate"}, "", exitUsage, ""},
	}
	for _, s := range steps {
		code, out, stderr := run(t, nil, s.stdin, s.args...)
		if code != s.wantCode || !strings.Contains(out, s.wantOut) {
			t.Errorf("%v: exit %d out %q err %q; want exit %d and %q", s.args, code, out, stderr, s.wantCode, s.wantOut)
		}
		if code != 0 && (stderr == "" || strings.Count(strings.TrimSpace(stderr), "\n") != 0) {
			t.Errorf("%v: stderr %q, want a one-line reason", s.args, stderr)
		}
	}
}

func TestHelpOnEveryCommand(t *testing.T) {
	for _, args := range [][]string{
		{"--help"}, {"help"}, {"dev", "--help"}, {"serve", "--help"}, {"config", "--help"},
		{"config", "check", "--help"}, {"users", "--help"}, {"users", "add", "--help"},
		{"users", "list", "--help"}, {"users", "set-password", "--help"}, {"users", "delete", "-h"},
		{"version", "--help"},
	} {
		code, out, _ := run(t, nil, "", args...)
		if code != 0 || !strings.Contains(out, "Usage") {
			t.Errorf("lanyard %v: exit %d, out %q; want 0 and a usage text", args, code, out)
		}
	}
}

func TestBadInput(t *testing.T) {
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	if err := os.WriteFile(bad, []byte("issuer: http://x\nlisten: nope\nlog: {level: loud}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"frobnicate"}, "unknown command"},
		{[]string{"dev", "--nope"}, "flag provided but not defined"},
		{[]string{"dev", "extra"}, "unexpected argument"},
		{[]string{"dev", "--addr", "nonsense"}, "listen"},
		{[]string{"serve"}, "--config FILE is required"},
		{[]string{"serve", "--config", "/does/not/exist.yaml"}, "no such file"},
	} {
		code, _, stderr := run(t, nil, "", tc.args...)
		if code == 0 || !strings.Contains(stderr, tc.want) {
			t.Errorf("lanyard %v: exit %d stderr %q; want non-zero mentioning %q", tc.args, code, stderr, tc.want)
		}
	}
	code, _, stderr := run(t, nil, "", "config", "check", "--config", bad)
	if code != exitUsage {
		t.Errorf("config check of a bad file: exit %d, want 2", code)
	}
	for _, want := range []string{"issuer:", "listen:", "log.level:"} {
		if !strings.Contains(stderr, want) {
			t.Errorf("config check does not list %q:\n%s", want, stderr)
		}
	}
	code, _, stderr = run(t, nil, "", "serve", "--config", bad)
	if code != exitUsage || !strings.Contains(stderr, "log.level:") {
		t.Errorf("serve with a bad file: exit %d stderr %q, want 2 listing every problem", code, stderr)
	}
}

func TestServeFromConfigFile(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "lanyard.yaml")
	if err := os.WriteFile(cfg, []byte(`
issuer: https://lanyard.example.com
listen: 127.0.0.1:0
data_dir: ${DATA}
log: {level: debug, format: json}
secrets: {backend: sealed}
`), 0o600); err != nil {
		t.Fatal(err)
	}
	in := start(t, map[string]string{"DATA": filepath.Join(dir, "data")}, "serve", "--config", cfg)
	if !strings.Contains(in.stdout.String(), "Lanyard is running at https://lanyard.example.com\n") {
		t.Errorf("stdout does not name the configured issuer:\n%s", in.stdout)
	}
	if _, err := os.Stat(filepath.Join(dir, "data", "lanyard.db")); err != nil {
		t.Errorf("data dir from ${DATA} not used: %v", err)
	}
	if !strings.Contains(in.stderr.String(), `"msg":"lanyard listening"`) {
		t.Errorf("serve does not log JSON:\n%s", in.stderr)
	}
}

// TestSecretsNeverLeak stores canary secrets through every path that takes
// one and then searches the logs, the output and the raw bbolt file.
func TestSecretsNeverLeak(t *testing.T) {
	const (
		canaryBoot   = "canary-bootstrap-7f3a9c21"
		canaryCLI    = "canary-cli-password-55e1"
		canaryStored = "canary-upstream-token-9b0d44"
		canaryHeader = "canary-bearer-1c8e"
	)
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	cfgPath := filepath.Join(dir, "lanyard.yaml")
	if err := os.WriteFile(cfgPath, []byte("issuer: https://l.example\nlisten: 127.0.0.1:0\ndata_dir: "+data+"\nlog: {level: debug}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"LANYARD_BOOTSTRAP_USER": "boot", "LANYARD_BOOTSTRAP_PASSWORD": canaryBoot}
	var logs strings.Builder

	code, out, stderr := run(t, nil, canaryCLI+"\n", "users", "add", "--config", cfgPath, "carol")
	logs.WriteString(out + stderr)
	if code != 0 {
		t.Fatalf("users add: %d %s", code, stderr)
	}

	// Store a secret through the wired secret store of a running app.
	var outb, errb testenv.Buffer
	m := &Main{PasswordCost: bcrypt.MinCost, Stdin: strings.NewReader(""), Stdout: &outb, Stderr: &errb, Getenv: func(k string) string { return env[k] }}
	cfg, err := (&adminFlags{config: cfgPath}).load(m)
	if err != nil {
		t.Fatal(err)
	}
	a, err := m.openApp(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	key := broker.SecretKey{Owner: "user1", Name: "github"}
	sec := broker.NewSecret(map[string]string{"access_token": canaryStored})
	if _, err := a.secrets.Put(context.Background(), key, sec, broker.CASCreate); err != nil {
		t.Fatal(err)
	}
	got, _, err := a.secrets.Get(context.Background(), key)
	if err != nil || !got.Equal(sec) {
		t.Fatalf("Get = %v, %v", got, err)
	}
	a.log.Info("stored secret", "secret", got, "key", key, "config", cfg)
	a.close()
	logs.WriteString(outb.String() + errb.String())

	// Serve, and send the canary in a header and a query string.
	in := start(t, env, "serve", "--config", cfgPath)
	get(t, in.url+"/readyz?access_token="+canaryHeader, "Authorization", "Bearer "+canaryHeader)
	get(t, in.url+"/nope?code="+canaryHeader)
	in.stop()
	logs.WriteString(in.stdout.String() + in.stderr.String())

	raw, err := os.ReadFile(filepath.Join(data, "lanyard.db"))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []string{canaryBoot, canaryCLI, canaryStored, canaryHeader} {
		if strings.Contains(logs.String(), c) {
			t.Errorf("canary %s appears in the logs or output", c)
		}
		if bytes.Contains(raw, []byte(c)) {
			t.Errorf("canary %s appears in the raw bbolt file", c)
		}
	}
	if !strings.Contains(logs.String(), `"msg":"stored secret"`) {
		t.Error("the test's own log line is missing; the search proves nothing")
	}
}

// TestSIGTERMShutsDownGracefully runs the real binary.
func TestSIGTERMShutsDownGracefully(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "lanyard")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	port := testenv.FreePort(t)
	cmd := exec.Command(bin, "dev", "--addr", testenv.Addr(port), "--data", t.TempDir())
	var out testenv.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	testenv.WaitTCP(t, testenv.Addr(port), 20*time.Second)
	if code, _ := get(t, "http://"+testenv.Addr(port)+"/healthz"); code != 200 {
		t.Fatalf("/healthz = %d", code)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() { errc <- cmd.Wait() }()
	select {
	case err := <-errc:
		if err != nil {
			t.Errorf("exit after SIGTERM: %v\n%s", err, out.String())
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("no exit within 20s of SIGTERM\n%s", out.String())
	}
	if !strings.Contains(out.String(), "shutting down") {
		t.Errorf("no shutdown log line:\n%s", out.String())
	}
}

func TestSweeperRemovesExpiredRecords(t *testing.T) {
	var logs testenv.Buffer
	m := &Main{PasswordCost: bcrypt.MinCost, Stdin: strings.NewReader(""), Stdout: io.Discard, Stderr: &logs, Getenv: func(string) string { return "" }}
	cfg, err := (&adminFlags{data: t.TempDir()}).load(m)
	if err != nil {
		t.Fatal(err)
	}
	a, err := m.openApp(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer a.close()
	past := time.Now().Add(-time.Minute)
	code := broker.AuthCode{ID: "expired-code-hash", ClientID: "c", IssuedAt: past, ExpiresAt: past.Add(time.Second)}
	if err := a.store.AuthCodes().Create(context.Background(), code); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go a.sweep(ctx, 10*time.Millisecond)
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(logs.String(), "swept expired records") {
		if time.Now().After(deadline) {
			t.Fatalf("the sweeper did not remove the expired code:\n%s", logs.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if n, err := a.store.Sweep(context.Background()); err != nil || n != 0 {
		t.Errorf("Sweep after the sweeper = %d, %v; want 0 left", n, err)
	}
}

func TestConfigCheckRunsVaultValidation(t *testing.T) {
	f := filepath.Join(t.TempDir(), "c.yaml")
	if err := os.WriteFile(f, []byte("issuer: https://l.example\nsecrets:\n  backend: vault\n  vault:\n    address: https://vault.example:8200\n    token: ${T}\n    mount: /secret\n    prefix: a/../b\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	code, _, stderr := run(t, map[string]string{"T": "hvs.canary-config-token"}, "", "config", "check", "--config", f)
	if code != exitUsage || strings.Contains(stderr, "canary-config-token") || !strings.Contains(stderr, "mount") {
		t.Errorf("config check: exit %d, stderr %q; want 2 naming the mount and never the token", code, stderr)
	}
}

func TestCredentialCacheTTL(t *testing.T) {
	for _, c := range []struct{ configured, override, want time.Duration }{
		{time.Minute, 0, time.Minute},
		{0, 0, -1}, // secrets.cache_ttl: 0s turns the cache off
		{time.Minute, -time.Second, -time.Second},
		{time.Minute, 10 * time.Minute, 10 * time.Minute},
	} {
		if got := credentialCacheTTL(c.configured, c.override); got != c.want {
			t.Errorf("credentialCacheTTL(%v, %v) = %v, want %v", c.configured, c.override, got, c.want)
		}
	}
}
