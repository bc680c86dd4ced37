// Package server builds Lanyard's HTTP server: the router with its middleware
// order, the operational endpoints (/healthz, /readyz, /metrics) and an
// http.Server with bounded timeouts and graceful shutdown. Feature packages
// (authorization server, web UI, redemption) add their routes to Router.
package server

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"sort"
	"sync"
	"time"

	"github.com/gorilla/mux"

	"github.com/lanyardhq/lanyard/internal/config"
	"github.com/lanyardhq/lanyard/internal/httpx"
	"github.com/lanyardhq/lanyard/internal/metrics"
)

// Check is a readiness check: nil when the dependency can serve requests.
type Check func(ctx context.Context) error

// Options configures a Server.
type Options struct {
	HTTP    config.HTTP
	Logger  *slog.Logger
	Metrics *metrics.Metrics
	// Checks are run by /readyz, each bounded by CheckTimeout.
	Checks       map[string]Check
	CheckTimeout time.Duration
}

func (o Options) withDefaults() Options {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Metrics == nil {
		o.Metrics = metrics.New()
	}
	if o.CheckTimeout <= 0 {
		o.CheckTimeout = 3 * time.Second
	}
	return o
}

// Server is Lanyard's HTTP server.
type Server struct {
	opts   Options
	router *mux.Router
	srv    *http.Server
}

// New builds the router. Middleware order (outermost first) is documented on
// httpx.Middleware; operational endpoints go through it too.
func New(opts Options) *Server {
	opts = opts.withDefaults()
	r := mux.NewRouter()
	mw := httpx.Middleware(opts.Logger, opts.Metrics)
	r.Use(mw)
	// gorilla/mux runs middleware only for matched routes, so the fallbacks
	// are wrapped by hand to be logged and counted too.
	r.NotFoundHandler = mw(httpx.Handle(func(http.ResponseWriter, *http.Request) error {
		return httpx.Errorf(http.StatusNotFound, "not_found", "no such endpoint", nil)
	}))
	r.MethodNotAllowedHandler = mw(httpx.Handle(func(http.ResponseWriter, *http.Request) error {
		return httpx.Errorf(http.StatusMethodNotAllowed, "method_not_allowed", "method not allowed", nil)
	}))
	s := &Server{opts: opts, router: r}
	r.Handle("/healthz", httpx.Handle(s.healthz)).Methods(http.MethodGet, http.MethodHead)
	r.Handle("/readyz", httpx.Handle(s.readyz)).Methods(http.MethodGet, http.MethodHead)
	r.Handle("/metrics", opts.Metrics.Handler()).Methods(http.MethodGet)
	s.srv = &http.Server{
		Handler:           r,
		ReadHeaderTimeout: opts.HTTP.ReadHeaderTimeout,
		ReadTimeout:       opts.HTTP.ReadTimeout,
		WriteTimeout:      opts.HTTP.WriteTimeout,
		IdleTimeout:       opts.HTTP.IdleTimeout,
		MaxHeaderBytes:    opts.HTTP.MaxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(opts.Logger.Handler(), slog.LevelWarn),
	}
	return s
}

// Router is where feature packages add routes.
func (s *Server) Router() *mux.Router { return s.router }

// Handler is the full handler, for tests that use httptest.
func (s *Server) Handler() http.Handler { return s.router }

// Serve serves on l until Shutdown; it returns nil after a clean shutdown.
func (s *Server) Serve(l net.Listener) error {
	if err := s.srv.Serve(l); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// Shutdown stops accepting connections and waits for in-flight requests up
// to the configured shutdown timeout.
func (s *Server) Shutdown(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, s.opts.HTTP.ShutdownTimeout)
	defer cancel()
	return s.srv.Shutdown(ctx)
}

func (s *Server) healthz(w http.ResponseWriter, _ *http.Request) error {
	httpx.WriteJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	return nil
}

// readyz runs every check concurrently. The response names each check and
// whether it passed, never the underlying error (which is logged).
func (s *Server) readyz(w http.ResponseWriter, r *http.Request) error {
	ctx, cancel := context.WithTimeout(r.Context(), s.opts.CheckTimeout)
	defer cancel()
	var (
		mu     sync.Mutex
		wg     sync.WaitGroup
		result = map[string]string{}
		ready  = true
	)
	names := make([]string, 0, len(s.opts.Checks))
	for name := range s.opts.Checks {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		wg.Go(func() {
			err := s.opts.Checks[name](ctx)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				ready = false
				result[name] = "unavailable"
				httpx.Logger(r.Context()).Warn("readiness check failed", "check", name, "err", err)
				return
			}
			result[name] = "ok"
		})
	}
	wg.Wait()
	status, code := "ready", http.StatusOK
	if !ready {
		status, code = "unavailable", http.StatusServiceUnavailable
	}
	httpx.WriteJSON(w, code, map[string]any{"status": status, "checks": result})
	return nil
}

// Handle adds a route for path and methods; it makes Server the Mounter
// that feature packages mount their endpoints on.
func (s *Server) Handle(path string, h http.Handler, methods ...string) {
	rt := s.router.Handle(path, h)
	if len(methods) > 0 {
		rt.Methods(methods...)
	}
}
