// Package metrics is the one home of the Prometheus client: HTTP request
// counters and latency histograms by route, and latency of every metadata
// and secret store call (via broker.Observer). No label ever carries a
// secret, a user name or a token: only route templates, methods, status
// codes, component and operation names.
package metrics

import (
	"errors"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/lanyardhq/lanyard/broker"
)

// Metrics owns a registry; create one per server (tests run several).
type Metrics struct {
	reg      *prometheus.Registry
	requests *prometheus.CounterVec
	latency  *prometheus.HistogramVec
	backend  *prometheus.HistogramVec
}

// New returns Metrics with Go runtime and process collectors registered.
func New() *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lanyard_http_requests_total",
			Help: "HTTP requests by route template, method and status code.",
		}, []string{"route", "method", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "lanyard_http_request_duration_seconds",
			Help:    "HTTP request latency by route template and method.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
		}, []string{"route", "method"}),
		backend: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "lanyard_backend_call_duration_seconds",
			Help:    "Latency of metadata store and secret store calls by component, operation and outcome.",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 5},
		}, []string{"component", "op", "outcome"}),
	}
	m.reg.MustRegister(m.requests, m.latency, m.backend,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Handler serves the registry in the Prometheus exposition format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}

// Observer records backend call latency; pass it to store constructors.
func (m *Metrics) Observer() broker.Observer {
	return func(component, op string, d time.Duration, err error) {
		m.backend.WithLabelValues(component, op, Outcome(err)).Observe(d.Seconds())
	}
}

// Outcome classifies an error into a small fixed set of label values.
func Outcome(err error) string {
	switch {
	case err == nil:
		return "ok"
	case errors.Is(err, broker.ErrNotFound):
		return "not_found"
	case errors.Is(err, broker.ErrConflict), errors.Is(err, broker.ErrAlreadyExists), errors.Is(err, broker.ErrConsumed):
		return "conflict"
	case errors.Is(err, broker.ErrUnavailable):
		return "unavailable"
	default:
		return "error"
	}
}

// ObserveRequest records one finished HTTP request. route is the route
// template (never the raw path, which may carry identifiers).
func (m *Metrics) ObserveRequest(route, method string, code int, d time.Duration) {
	method = Method(method)
	m.requests.WithLabelValues(route, method, strconv.Itoa(code)).Inc()
	m.latency.WithLabelValues(route, method).Observe(d.Seconds())
}

// Method bounds the method label: a client can send any token as a method,
// and every distinct label value is a new series held in memory.
func Method(m string) string {
	switch m {
	case http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch,
		http.MethodDelete, http.MethodOptions:
		return m
	}
	return "OTHER"
}
