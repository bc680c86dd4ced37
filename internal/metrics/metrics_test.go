package metrics

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func TestMethodLabelIsBounded(t *testing.T) {
	m := New()
	for _, meth := range []string{"GET", "BREW", "X-" + strings.Repeat("A", 100), "PROPFIND"} {
		m.ObserveRequest("/r", meth, 404, time.Millisecond)
	}
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	body := rec.Body.String()
	if !strings.Contains(body, `method="OTHER"`) || strings.Contains(body, "BREW") || strings.Contains(body, "PROPFIND") {
		t.Errorf("unbounded method label values:\n%s", body)
	}
}
