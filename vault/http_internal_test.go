package vault

import (
	"net/http"
	"testing"
	"time"
)

// TestNoProxy: the transport never asks the environment for a proxy
// (http.ProxyFromEnvironment would send the token through HTTPS_PROXY). An
// end-to-end test cannot show it reliably: the standard library reads the
// proxy variables once per process and never proxies loopback addresses.
func TestNoProxy(t *testing.T) {
	t.Setenv("HTTPS_PROXY", "http://127.0.0.1:9")
	t.Setenv("HTTP_PROXY", "http://127.0.0.1:9")
	c, err := newClient(Config{Address: "https://vault.example:8200", Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	tr, ok := c.hc.Transport.(*http.Transport)
	if !ok {
		t.Fatalf("transport is a %T", c.hc.Transport)
	}
	if tr.Proxy != nil {
		t.Errorf("the transport has a proxy function")
	}
	if c.hc.CheckRedirect == nil {
		t.Errorf("the HTTP client follows redirects")
	}
}
