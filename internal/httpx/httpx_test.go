package httpx

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/gorilla/mux"

	"github.com/lanyardhq/lanyard/internal/metrics"
)

// TestMiddlewareLogLines: one access line per request carrying the
// handler's annotations and the request ID it was given; the request's own
// logger tags its lines with the same ID.
func TestMiddlewareLogLines(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewJSONHandler(&buf, nil))
	r := mux.NewRouter()
	r.Use(Middleware(log, metrics.New()))
	var seenID string
	r.HandleFunc("/x/{id}", func(w http.ResponseWriter, r *http.Request) {
		ctx := r.Context()
		seenID = RequestID(ctx)
		Logger(ctx).Warn("inside")
		Annotate(ctx, "thing done", slog.String("user", "u1"), slog.Int("n", 2))
		w.WriteHeader(http.StatusCreated)
	})
	rec := httptest.NewRecorder()
	r.ServeHTTP(rec, httptest.NewRequest("POST", "/x/secret-code?code=abc", nil))

	if seenID == "" || rec.Header().Get("X-Request-Id") != seenID {
		t.Fatalf("RequestID in handler = %q, X-Request-Id = %q", seenID, rec.Header().Get("X-Request-Id"))
	}
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("log lines = %d, want 2 (the handler's and the access line):\n%s", len(lines), buf.String())
	}
	var inside, access map[string]any
	if err := json.Unmarshal([]byte(lines[0]), &inside); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal([]byte(lines[1]), &access); err != nil {
		t.Fatal(err)
	}
	if inside["msg"] != "inside" || inside["request_id"] != seenID {
		t.Errorf("handler line = %v, want msg inside with request_id %s", inside, seenID)
	}
	want := map[string]any{"msg": "http request", "request_id": seenID, "method": "POST", "route": "/x/{id}",
		"status": float64(201), "event": "thing done", "user": "u1", "n": float64(2)}
	for k, v := range want {
		if access[k] != v {
			t.Errorf("access line %s = %v, want %v (line %s)", k, access[k], v, lines[1])
		}
	}
	if strings.Contains(buf.String(), "secret-code") || strings.Contains(buf.String(), "abc") {
		t.Errorf("raw path or query logged: %s", buf.String())
	}
}

// TestAnnotateOutsideMiddleware: without Middleware the annotation is
// logged on its own rather than lost.
func TestAnnotateOutsideMiddleware(t *testing.T) {
	var buf bytes.Buffer
	prev := slog.Default()
	slog.SetDefault(slog.New(slog.NewJSONHandler(&buf, nil)))
	defer slog.SetDefault(prev)
	Annotate(t.Context(), "thing done", slog.String("user", "u1"))
	if !strings.Contains(buf.String(), `"msg":"thing done"`) || !strings.Contains(buf.String(), `"user":"u1"`) {
		t.Errorf("log = %q", buf.String())
	}
}
