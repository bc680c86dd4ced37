// Package httpx holds the HTTP plumbing every Lanyard handler shares:
// handlers that return error, the one adapter that writes error responses,
// errors with a part a client may see and a part only logged, request IDs,
// panic recovery, access logs and request metrics.
package httpx

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/gorilla/mux"

	"github.com/lanyardhq/lanyard/internal/metrics"
)

// HandlerFunc is an HTTP handler that returns an error instead of writing
// one. Adapt it with Handle.
type HandlerFunc func(w http.ResponseWriter, r *http.Request) error

// Error is an error with a response: Status and a Code and Message that the
// client may see; Cause is only logged.
type Error struct {
	Status  int
	Code    string
	Message string
	Cause   error
}

func (e *Error) Error() string {
	if e.Cause != nil {
		return e.Code + ": " + e.Message + ": " + e.Cause.Error()
	}
	return e.Code + ": " + e.Message
}

func (e *Error) Unwrap() error { return e.Cause }

// Errorf returns an *Error; cause may be nil.
func Errorf(status int, code, message string, cause error) *Error {
	return &Error{Status: status, Code: code, Message: message, Cause: cause}
}

type ctxKey int

const requestKey ctxKey = 0

// request is what Middleware keeps for one request: its ID, the base
// logger, the request-scoped logger (made on first use) and the attributes
// handlers add to its access log line.
type request struct {
	id     string
	base   *slog.Logger
	scoped atomic.Pointer[slog.Logger]
	attrs  []slog.Attr
}

func fromContext(ctx context.Context) *request {
	rq, _ := ctx.Value(requestKey).(*request)
	return rq
}

// Logger returns the request-scoped logger (with request_id) set by
// Middleware, or slog.Default.
func Logger(ctx context.Context) *slog.Logger {
	rq := fromContext(ctx)
	if rq == nil {
		return slog.Default()
	}
	l := rq.scoped.Load()
	if l == nil {
		l = rq.base.With("request_id", rq.id)
		rq.scoped.Store(l)
	}
	return l
}

// RequestID returns the ID Middleware gave this request.
func RequestID(ctx context.Context) string {
	if rq := fromContext(ctx); rq != nil {
		return rq.id
	}
	return ""
}

// Annotate adds attributes to the request's access log line, which
// Middleware writes when the handler returns: one line per request that
// says what it did, rather than a line of its own. It must be called from
// the handler's goroutine, once per request (a second call's keys would
// repeat the first's on the line). Outside Middleware it logs the
// attributes at info level instead, so nothing is lost.
func Annotate(ctx context.Context, msg string, attrs ...slog.Attr) {
	rq := fromContext(ctx)
	if rq == nil {
		slog.Default().LogAttrs(ctx, slog.LevelInfo, msg, attrs...)
		return
	}
	rq.attrs = append(rq.attrs, slog.String("event", msg))
	rq.attrs = append(rq.attrs, attrs...)
}

// Handle adapts h: an error becomes a JSON response {"error","error_description"}
// with the error's status (500 and a generic message for anything that is
// not an *Error). The cause is logged, never sent.
func Handle(h HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		err := h(w, r)
		if err == nil {
			return
		}
		var he *Error
		if !errors.As(err, &he) {
			he = Errorf(http.StatusInternalServerError, "server_error", "internal error", err)
		}
		lvl := slog.LevelInfo
		if he.Status >= 500 {
			lvl = slog.LevelError
		}
		Logger(r.Context()).Log(r.Context(), lvl, "request failed", "status", he.Status, "code", he.Code, "err", err)
		WriteJSON(w, he.Status, map[string]string{"error": he.Code, "error_description": he.Message})
	})
}

// WriteJSON writes v as JSON with status and Cache-Control: no-store.
func WriteJSON(w http.ResponseWriter, status int, v any) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// statusWriter remembers the status code written.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (s *statusWriter) WriteHeader(code int) {
	if s.status == 0 {
		s.status = code
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusWriter) Write(b []byte) (int, error) {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	return s.ResponseWriter.Write(b)
}

func (s *statusWriter) Unwrap() http.ResponseWriter { return s.ResponseWriter }

// Middleware wraps a gorilla router's routes. In order, outermost first:
//  1. request ID (a fresh random one; an incoming X-Request-Id is not trusted)
//     and a request-scoped logger;
//  2. panic recovery (500, stack only in the log);
//  3. metrics by route template and an access log line.
func Middleware(log *slog.Logger, m *metrics.Metrics) mux.MiddlewareFunc {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			start := time.Now()
			rq := &request{id: rand.Text(), base: log}
			r = r.WithContext(context.WithValue(r.Context(), requestKey, rq))
			w.Header().Set("X-Request-Id", rq.id)
			sw := &statusWriter{ResponseWriter: w}
			defer func() {
				if p := recover(); p != nil {
					if p == http.ErrAbortHandler {
						panic(p)
					}
					Logger(r.Context()).Error("panic in handler", "panic", p)
					if sw.status == 0 {
						WriteJSON(sw, http.StatusInternalServerError, map[string]string{"error": "server_error", "error_description": "internal error"})
					}
				}
				route := "unmatched"
				if cr := mux.CurrentRoute(r); cr != nil {
					if tpl, err := cr.GetPathTemplate(); err == nil {
						route = tpl
					}
				}
				if sw.status == 0 {
					sw.status = http.StatusOK
				}
				d := time.Since(start)
				m.ObserveRequest(route, r.Method, sw.status, d)
				// The raw path and query are not logged: they may carry codes.
				attrs := append([]slog.Attr{slog.String("request_id", rq.id), slog.String("method", r.Method),
					slog.String("route", route), slog.Int("status", sw.status),
					slog.Float64("duration_ms", float64(d.Microseconds())/1000)}, rq.attrs...)
				log.LogAttrs(r.Context(), slog.LevelInfo, "http request", attrs...)
			}()
			next.ServeHTTP(sw, r)
		})
	}
}
