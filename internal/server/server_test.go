package server

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lanyardhq/lanyard/internal/bolt"
	"github.com/lanyardhq/lanyard/internal/config"
	"github.com/lanyardhq/lanyard/internal/httpx"
)

func testHTTP() config.HTTP { return config.Default().HTTP }

func do(t *testing.T, h http.Handler, method, path string) (int, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(method, path, nil))
	return rec.Code, rec.Body.String()
}

func TestReadyzFollowsTheStore(t *testing.T) {
	db, err := bolt.Open(filepath.Join(t.TempDir(), "l.db"), bolt.Options{})
	if err != nil {
		t.Fatal(err)
	}
	s := New(Options{HTTP: testHTTP(), Logger: slog.New(slog.DiscardHandler), Checks: map[string]Check{"store": db.Ping}})
	if code, body := do(t, s.Handler(), "GET", "/readyz"); code != http.StatusOK || !strings.Contains(body, `"store":"ok"`) {
		t.Errorf("open store: /readyz = %d %s, want 200", code, body)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	if code, body := do(t, s.Handler(), "GET", "/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, `"store":"unavailable"`) {
		t.Errorf("closed store: /readyz = %d %s, want 503", code, body)
	}
}

func TestReadyzBoundsSlowChecks(t *testing.T) {
	hang := func(ctx context.Context) error { <-ctx.Done(); return ctx.Err() }
	s := New(Options{HTTP: testHTTP(), Logger: slog.New(slog.DiscardHandler), CheckTimeout: 100 * time.Millisecond,
		Checks: map[string]Check{"slow": hang, "fine": func(context.Context) error { return nil }}})
	done := make(chan struct{})
	var code int
	var body string
	go func() { code, body = do(t, s.Handler(), "GET", "/readyz"); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("/readyz hung on a check that never returns")
	}
	if code != http.StatusServiceUnavailable || !strings.Contains(body, `"slow":"unavailable"`) || !strings.Contains(body, `"fine":"ok"`) {
		t.Errorf("/readyz = %d %s", code, body)
	}
}

func TestErrorsArePublicPartOnly(t *testing.T) {
	var logs strings.Builder
	s := New(Options{HTTP: testHTTP(), Logger: slog.New(slog.NewJSONHandler(&logs, nil))})
	s.Router().Handle("/boom", httpx.Handle(func(http.ResponseWriter, *http.Request) error {
		return errors.New("db password hunter2 rejected")
	}))
	s.Router().Handle("/panic", httpx.Handle(func(http.ResponseWriter, *http.Request) error {
		panic("secret panic detail")
	}))
	s.Router().Handle("/teapot", httpx.Handle(func(http.ResponseWriter, *http.Request) error {
		return httpx.Errorf(http.StatusTeapot, "invalid_request", "visible message", errors.New("hidden cause"))
	}))
	for _, tc := range []struct {
		path, want, hidden string
		code               int
	}{
		{"/boom", `"error":"server_error"`, "hunter2", 500},
		{"/panic", `"error":"server_error"`, "secret panic", 500},
		{"/teapot", `"error_description":"visible message"`, "hidden cause", 418},
	} {
		code, body := do(t, s.Handler(), "GET", tc.path)
		if code != tc.code || !strings.Contains(body, tc.want) || strings.Contains(body, tc.hidden) {
			t.Errorf("%s = %d %s; want %d with %s and without %q", tc.path, code, body, tc.code, tc.want, tc.hidden)
		}
	}
	if !strings.Contains(logs.String(), "hidden cause") {
		t.Errorf("the cause was not logged:\n%s", logs.String())
	}
	if code, body := do(t, s.Handler(), "POST", "/healthz"); code != http.StatusMethodNotAllowed {
		t.Errorf("POST /healthz = %d %s, want 405", code, body)
	}
}

func TestServerLimits(t *testing.T) {
	cfg := testHTTP()
	cfg.MaxHeaderBytes = 4096
	cfg.ReadHeaderTimeout = 200 * time.Millisecond
	s := New(Options{HTTP: cfg, Logger: slog.New(slog.DiscardHandler)})
	if s.srv.ReadHeaderTimeout == 0 || s.srv.IdleTimeout == 0 || s.srv.ReadTimeout == 0 || s.srv.WriteTimeout == 0 {
		t.Fatalf("server timeouts not set: %+v", s.srv)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = s.Serve(ln) }()
	t.Cleanup(func() { _ = s.Shutdown(context.Background()) })
	url := "http://" + ln.Addr().String()

	req, _ := http.NewRequest("GET", url+"/healthz", nil)
	req.Header.Set("X-Big", strings.Repeat("a", 64<<10))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("oversized header = %d, want 431", resp.StatusCode)
	}

	// A client that never finishes its headers is cut off.
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: x\r\n"); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	start := time.Now()
	_, _ = io.ReadAll(c)
	if time.Since(start) > 8*time.Second {
		t.Errorf("slow-header connection was not closed by read_header_timeout")
	}
}
