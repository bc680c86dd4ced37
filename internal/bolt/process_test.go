package bolt

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lanyardhq/lanyard/broker"
	bbolt "go.etcd.io/bbolt"
)

// Environment variables that turn the child tests on; each names a db path.
const (
	crashChildEnv = "LANYARD_BOLT_CRASH_CHILD"
	lockChildEnv  = "LANYARD_BOLT_LOCK_CHILD"
)

// TestCrashChild is the child half of TestCrash: it writes users until it is
// killed, printing each ID once its Create has committed.
func TestCrashChild(t *testing.T) {
	path := os.Getenv(crashChildEnv)
	if path == "" {
		return
	}
	db, err := Open(path, Options{})
	if err != nil {
		t.Fatalf("child: %v", err)
	}
	// The writer is the process whose settings count.
	checkDurable(t, db)
	deadline := time.Now().Add(time.Minute) // never outlive a lost parent
	for i := 0; time.Now().Before(deadline); i++ {
		id := fmt.Sprintf("u-%07d", i)
		u := broker.User{ID: id, Username: "name-" + id, PasswordHash: strings.Repeat("h", 100), CreatedAt: time.Now()}
		if err := db.Users().Create(context.Background(), u); err != nil {
			t.Fatalf("child: %v", err)
		}
		fmt.Fprintln(os.Stdout, id)
	}
}

// TestCrash kills a writer with SIGKILL mid-stream and checks that every
// write it reported as committed survived and that the file is consistent.
//
// SIGKILL leaves the page cache alone, so this would pass with fsync turned
// off too: power-loss durability rests on the settings checkDurable holds
// (in the child and here), not on the kill.
func TestCrash(t *testing.T) {
	path := filepath.Join(t.TempDir(), "crash.db")
	cmd, lines := startChild(t, "TestCrashChild", crashChildEnv, path)

	var committed []string
	timeout := time.After(2 * time.Second)
collect:
	for len(committed) < 300 {
		select {
		case l, ok := <-lines:
			if !ok {
				break collect
			}
			if strings.HasPrefix(l, "u-") {
				committed = append(committed, l)
			}
		case <-timeout:
			break collect
		}
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatalf("kill child: %v", err)
	}
	for l := range lines { // lines printed before the kill were committed too
		if strings.HasPrefix(l, "u-") {
			committed = append(committed, l)
		}
	}
	_ = cmd.Wait()
	if len(committed) == 0 {
		t.Fatal("the child reported no commits")
	}
	t.Logf("child committed at least %d users before SIGKILL", len(committed))

	db, err := Open(path, Options{})
	if err != nil {
		t.Fatalf("reopen after SIGKILL: %v", err)
	}
	checkDurable(t, db)
	missing := 0
	for _, id := range committed {
		if _, err := db.Users().Get(context.Background(), id); err != nil {
			missing++
			if missing <= 5 {
				t.Errorf("committed user %q lost: %v", id, err)
			}
		}
	}
	if missing > 0 {
		t.Errorf("%d of %d committed users lost", missing, len(committed))
	}
	err = db.bolt.View(func(tx *bbolt.Tx) error {
		var errs []error
		for err := range tx.Check() {
			errs = append(errs, err)
		}
		return errors.Join(errs...)
	})
	if err != nil {
		t.Errorf("bbolt consistency check: %v", err)
	}
	if err := db.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	cliCheck(t, path)
}

// TestDurability checks the bbolt settings that make a commit survive a
// power loss, which no kill -9 test can tell apart from a lost write.
func TestDurability(t *testing.T) {
	checkDurable(t, openTest(t))
}

// checkDurable reports unless db fsyncs every commit and file growth and
// persists its freelist (see boltOptions).
func checkDurable(t *testing.T, db *DB) {
	t.Helper()
	b := db.bolt
	if b.NoSync {
		t.Error("bbolt NoSync is true: commits are not fsynced and a power loss can lose committed writes")
	}
	if b.NoGrowSync {
		t.Error("bbolt NoGrowSync is true: file growth is not fsynced")
	}
	if b.NoFreelistSync {
		t.Error("bbolt NoFreelistSync is true: the freelist is not persisted (see boltOptions for why it is)")
	}
}

// cliCheck runs `bbolt check` on path when the bbolt CLI is installed.
func cliCheck(t *testing.T, path string) {
	t.Helper()
	bin, err := exec.LookPath("bbolt")
	if err != nil {
		msg := "bbolt CLI not on PATH (go install go.etcd.io/bbolt/cmd/bbolt@v1.4.3); skipping `bbolt check`"
		if os.Getenv("CI") != "" {
			t.Fatal(msg)
		}
		t.Log(msg)
		return
	}
	out, err := exec.Command(bin, "check", path).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "OK") {
		t.Errorf("bbolt check %s: %v\n%s", path, err, out)
		return
	}
	t.Logf("bbolt check: %s", strings.TrimSpace(string(out)))
}

// TestLockChild is the child half of TestLock: it opens the db, says
// "ready" and holds the file until it is killed.
func TestLockChild(t *testing.T) {
	path := os.Getenv(lockChildEnv)
	if path == "" {
		return
	}
	db, err := Open(path, Options{})
	if err != nil {
		t.Fatalf("child: %v", err)
	}
	defer db.Close()
	fmt.Fprintln(os.Stdout, "ready")
	time.Sleep(time.Minute) // never outlive a lost parent
}

// TestLock checks that a second process cannot open a held data file and is
// told why, quickly.
func TestLock(t *testing.T) {
	path := filepath.Join(t.TempDir(), "lock.db")
	_, lines := startChild(t, "TestLockChild", lockChildEnv, path)
	ready := time.After(10 * time.Second)
wait:
	for {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatal("child exited before it was ready")
			}
			if l == "ready" {
				break wait
			}
		case <-ready:
			t.Fatal("child not ready after 10s")
		}
	}

	start := time.Now()
	db, err := Open(path, Options{})
	elapsed := time.Since(start)
	if err == nil {
		_ = db.Close()
		t.Fatal("Open of a file held by another process succeeded, want an error")
	}
	if !strings.Contains(err.Error(), "in use by another process") {
		t.Errorf("Open error = %q, want it to say the file is in use by another process", err)
	}
	if !errors.Is(err, broker.ErrUnavailable) {
		t.Errorf("Open error = %v, want one matching ErrUnavailable", err)
	}
	if elapsed > 2500*time.Millisecond {
		t.Errorf("Open took %v to fail, want about 1s", elapsed)
	}
}

// startChild re-executes this test binary running only test, with env set
// to path, and returns the command and its stdout lines. The child is
// killed in t.Cleanup.
func startChild(t *testing.T, test, env, path string) (*exec.Cmd, <-chan string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^"+test+"$", "-test.count=1")
	cmd.Env = append(os.Environ(), env+"="+path)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start child: %v", err)
	}
	lines := make(chan string, 1024)
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer close(lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		_, _ = io.Copy(io.Discard, stdout)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		go func() {
			for range lines { // let the reader reach EOF
			}
		}()
		<-done
		_ = cmd.Wait()
		if t.Failed() && stderr.Len() > 0 {
			t.Logf("child stderr:\n%s", stderr.String())
		}
	})
	return cmd, lines
}
