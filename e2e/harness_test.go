package e2e

// The harness the end-to-end tests share: finding the directories, checking
// for Node and Chromium, building and starting the binaries under test,
// waiting for them, and running the Node scripts that drive the browser.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/lanyardhq/lanyard/internal/testenv"
)

const (
	buildTimeout = 5 * time.Minute
	startTimeout = 30 * time.Second
	flowTimeout  = 3 * time.Minute // one run of a Node script
)

// e2eDirs skips the test with -short; it returns e2e/ (the Node project,
// the working directory of the test) and the root of the repository.
func e2eDirs(t *testing.T) (dir, root string) {
	t.Helper()
	if testing.Short() {
		t.Skip("end-to-end test: skipped with -short")
	}
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	return dir, filepath.Dir(dir)
}

// prerequisites skips the test (fails it under CI) when Node, Chromium or
// one of the npm packages in e2e/node_modules is missing.
func prerequisites(t *testing.T, dir string, packages ...string) {
	t.Helper()
	var missing []string
	if _, err := exec.LookPath("node"); err != nil {
		missing = append(missing, "node")
	}
	if _, err := os.Stat(chromiumPath()); err != nil {
		missing = append(missing, chromiumPath())
	}
	for _, p := range packages {
		if _, err := os.Stat(filepath.Join(dir, "node_modules", p, "package.json")); err != nil {
			missing = append(missing, "e2e/node_modules/"+p)
		}
	}
	if len(missing) > 0 {
		testenv.Missing(t, fmt.Sprintf("end-to-end test needs %s: run the tests with `make test` (scripts/setup.sh installs them)", strings.Join(missing, ", ")))
	}
}

func chromiumPath() string {
	if p := os.Getenv("CHROMIUM_PATH"); p != "" {
		return p
	}
	return "/usr/bin/chromium"
}

// artifactDir is where the browser's screenshots go: E2E_ARTIFACTS or
// E2E_SCREENSHOT_DIR if set, else a directory under tmp.
func artifactDir(tmp string) string {
	for _, v := range []string{"E2E_ARTIFACTS", "E2E_SCREENSHOT_DIR"} {
		if d := os.Getenv(v); d != "" {
			return d
		}
	}
	return filepath.Join(tmp, "screenshots")
}

// goBuild builds the package pkg (./cmd/lanyard, say) of the repository at
// root into dir/name and returns the binary's path.
func goBuild(t *testing.T, root, pkg, dir, name string) string {
	t.Helper()
	bin := filepath.Join(dir, name)
	ctx, cancel := context.WithTimeout(context.Background(), buildTimeout)
	defer cancel()
	build := exec.CommandContext(ctx, "go", "build", "-o", bin, pkg)
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, out)
	}
	return bin
}

// lanyardBin is the lanyard binary under test: E2E_LANYARD_BIN (a release
// build, say) if set, else cmd/lanyard built into dir.
func lanyardBin(t *testing.T, root, dir string) string {
	t.Helper()
	if bin := os.Getenv("E2E_LANYARD_BIN"); bin != "" {
		return bin
	}
	return goBuild(t, root, "./cmd/lanyard", dir, "lanyard")
}

// buildMailMCP builds examples/mail-mcp into dir.
func buildMailMCP(t *testing.T, root, dir string) string {
	t.Helper()
	return goBuild(t, root, "./examples/mail-mcp", dir, "mail-mcp")
}

// freePorts returns two different free loopback ports.
func freePorts(t *testing.T) (a, b int) {
	t.Helper()
	a, b = testenv.FreePort(t), testenv.FreePort(t)
	for b == a {
		b = testenv.FreePort(t)
	}
	return a, b
}

// writeConfig writes Lanyard's config file into dir and returns its path.
func writeConfig(t *testing.T, dir, yaml string) string {
	t.Helper()
	p := filepath.Join(dir, "lanyard.yaml")
	if err := os.WriteFile(p, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// lanyardDev is `lanyard dev` on port with its data in data and the config
// cfg, in the base environment plus env; it is not started yet.
func lanyardDev(bin string, port int, data, cfg string, env ...string) *exec.Cmd {
	cmd := exec.Command(bin, "dev", "--addr", testenv.Addr(port), "--data", data, "--config", cfg)
	cmd.Env = append(baseEnv(), env...)
	return cmd
}

// waitReady waits until port accepts connections and then url answers 200.
func waitReady(t *testing.T, port int, url string) {
	t.Helper()
	testenv.WaitTCP(t, testenv.Addr(port), startTimeout)
	waitHTTP(t, url, startTimeout)
}

// baseEnv is the test's environment without the variables that would change
// what the processes under test connect to (tests set Vault explicitly).
func baseEnv() []string {
	return slices.DeleteFunc(os.Environ(), func(kv string) bool {
		name, _, _ := strings.Cut(kv, "=")
		return strings.HasPrefix(name, "VAULT_") || strings.HasPrefix(name, "LANYARD_") ||
			strings.HasPrefix(name, "SSL_CERT_") || strings.HasPrefix(name, "E2E_") ||
			strings.EqualFold(name, "HTTP_PROXY") || strings.EqualFold(name, "HTTPS_PROXY") ||
			strings.EqualFold(name, "ALL_PROXY") || name == "NODE_OPTIONS"
	})
}

// waitHTTP waits until url answers 200, failing with the last answer when
// it does not within timeout.
func waitHTTP(t *testing.T, url string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	c := &http.Client{Timeout: 5 * time.Second}
	var last string
	for time.Now().Before(deadline) {
		resp, err := c.Get(url)
		if err == nil {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
			last = fmt.Sprintf("HTTP %d: %s", resp.StatusCode, body)
		} else {
			last = err.Error()
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("GET %s did not answer 200 within %v; last answer: %s", url, timeout, last)
}

func randomHex(t *testing.T, n int) string {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// runScript runs `node script args...` in dir, in the base environment plus
// env, in its own process group (killed whole, Chromium included,
// afterwards or after flowTimeout). It decodes the script's RESULT line
// into result and logs the screenshots it names; it fails the test with
// the script's FAIL reason and log otherwise.
func runScript(t *testing.T, dir string, env []string, result any, script string, args ...string) {
	t.Helper()
	name := strings.Join(append([]string{script}, args...), " ")
	ctx, cancel := context.WithTimeout(context.Background(), flowTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "node", append([]string{script}, args...)...)
	cmd.Dir = dir
	cmd.Env = append(append(baseEnv(), env...),
		"CHROMIUM_PATH="+chromiumPath(),
		fmt.Sprintf("E2E_TIMEOUT_MS=%d", (flowTimeout-15*time.Second).Milliseconds()))
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 10 * time.Second
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if cmd.Process != nil {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) // any stray Chromium
	}
	var line, failure string
	for _, l := range strings.Split(stdout.String(), "\n") {
		if s, ok := strings.CutPrefix(l, "RESULT "); ok {
			line = s
		} else if s, ok := strings.CutPrefix(l, "FAIL "); ok {
			failure = s
		}
	}
	if err != nil || line == "" {
		var ee *exec.ExitError
		switch {
		case errors.Is(ctx.Err(), context.DeadlineExceeded):
			failure = fmt.Sprintf("killed after %v; %s", flowTimeout, failure)
		case errors.As(err, &ee) && failure == "":
			failure = ee.String()
		case failure == "":
			failure = fmt.Sprint("no RESULT line: ", err)
		}
		t.Fatalf("%s failed: %s\n--- %s log:\n%s", name, failure, script, stderr.String())
	}
	t.Logf("%s log:\n%s", name, stderr.String())
	t.Logf("RESULT %s", line)
	var shots struct {
		Screenshots []string `json:"screenshots"`
	}
	if err := json.Unmarshal([]byte(line), result); err != nil {
		t.Fatalf("RESULT line: %v: %s", err, line)
	}
	_ = json.Unmarshal([]byte(line), &shots)
	for _, p := range shots.Screenshots {
		t.Logf("screenshot: %s", p)
	}
}

// startStoppable starts cmd like testenv.Start (own process group, output
// to a log file shown if the test fails, killed when the test ends) and
// returns a function that stops it gracefully (SIGTERM, then SIGKILL after
// 15 s) and waits for it.
func startStoppable(t *testing.T, cmd *exec.Cmd) (stop func(), logPath string) {
	t.Helper()
	logPath = filepath.Join(t.TempDir(), filepath.Base(cmd.Path)+".log")
	f, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.Close()
		t.Fatalf("start %s: %v", cmd.Path, err)
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		f.Close()
		close(done)
	}()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
			select {
			case <-done:
			case <-time.After(15 * time.Second):
				t.Errorf("%s did not stop within 15 s of SIGTERM; killed", filepath.Base(cmd.Path))
				_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
				<-done
			}
		})
	}
	t.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-done
		if t.Failed() {
			if b, err := os.ReadFile(logPath); err == nil {
				t.Logf("output of %s:\n%s", cmd.Path, b)
			}
		}
	})
	return stop, logPath
}
