package vault

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"reflect"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"
)

// TestNoProxy: the transport given to api.Config never asks the environment
// for a proxy (http.ProxyFromEnvironment would send the token through
// HTTPS_PROXY, and the library's own default transport takes
// VAULT_HTTP_PROXY), it is the one the client uses, and redirects are
// refused. An end-to-end test cannot show the proxy part reliably: the
// standard library reads the proxy variables once per process and never
// proxies loopback addresses.
func TestNoProxy(t *testing.T) {
	for _, name := range []string{"HTTPS_PROXY", "HTTP_PROXY", "VAULT_HTTP_PROXY", "VAULT_PROXY_ADDR"} {
		t.Setenv(name, "http://127.0.0.1:9")
	}
	cfg := Config{Address: "https://vault.example:8200", Token: "t", Timeout: time.Second}.withDefaults()
	ac, err := apiConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	tr, ok := ac.HttpClient.Transport.(*http.Transport)
	if !ok {
		t.Fatalf("transport is a %T", ac.HttpClient.Transport)
	}
	if tr.Proxy != nil {
		t.Errorf("the transport has a proxy function")
	}
	if tr.TLSClientConfig == nil {
		t.Errorf("the transport has no TLS configuration")
	}
	if ac.HttpClient.CheckRedirect == nil {
		t.Errorf("the HTTP client follows redirects")
	} else {
		req := httptest.NewRequest(http.MethodGet, "https://elsewhere.example/v1/secret/data/x", nil)
		req.Response = &http.Response{StatusCode: http.StatusTemporaryRedirect}
		err := ac.HttpClient.CheckRedirect(req, []*http.Request{req})
		var rd *redirectError
		if !errors.As(err, &rd) || errors.Is(err, http.ErrUseLastResponse) {
			t.Errorf("CheckRedirect = %v, want a redirectError", err)
		}
	}
	if ac.MaxRetries != 0 || !ac.DisableRedirects {
		t.Errorf("MaxRetries %d, DisableRedirects %v; want 0, true", ac.MaxRetries, ac.DisableRedirects)
	}

	c, err := newClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	// The client api.NewClient returns keeps that HTTP client (CloneConfig
	// copies the http.Client, with its transport).
	hc := c.CloneConfig().HttpClient
	if got, ok := hc.Transport.(*http.Transport); !ok || got.Proxy != nil || got.TLSClientConfig == nil {
		t.Errorf("the API client uses another transport (%T)", hc.Transport)
	}
	if hc.CheckRedirect == nil {
		t.Errorf("the API client's HTTP client follows redirects")
	}
}

// TestClientIgnoresEnvironment: what api.NewClient takes from the
// environment is undone, and nothing is read per request.
func TestClientIgnoresEnvironment(t *testing.T) {
	t.Setenv("VAULT_TOKEN", "hvs.from-the-environment")
	t.Setenv("VAULT_NAMESPACE", "env-namespace")
	t.Setenv("VAULT_HEADERS", `{"X-Env-Header": "leak"}`)
	t.Setenv("VAULT_WRAP_TTL", "5m")
	t.Setenv("VAULT_MAX_RETRIES", "7")
	t.Setenv("VAULT_RATE_LIMIT", "1:1")
	t.Setenv("VAULT_SRV_LOOKUP", "true")
	t.Setenv("VAULT_DISABLE_REDIRECTS", "false")
	t.Setenv("VAULT_CLIENT_TIMEOUT", "3m")
	c, err := newClient(Config{Address: "https://vault.example:8200", Token: "t"}.withDefaults())
	if err != nil {
		t.Fatal(err)
	}
	if c.Token() != "" {
		t.Errorf("the client has a token")
	}
	if c.Namespace() != "" {
		t.Errorf("the client has a namespace")
	}
	if h := c.Headers(); !reflect.DeepEqual(h, http.Header{api.RequestHeaderName: {"true"}}) {
		t.Errorf("headers %v, want only X-Vault-Request", h)
	}
	r := c.NewRequest(http.MethodGet, "/v1/secret/data/x")
	if r.WrapTTL != "" {
		t.Errorf("requests are response-wrapped (%q)", r.WrapTTL)
	}
	if r.ClientToken != "" {
		t.Errorf("requests carry a token")
	}
	cc := c.CloneConfig()
	if cc.MaxRetries != 0 || cc.Limiter != nil || cc.SRVLookup || cc.Timeout != DefaultTimeout {
		t.Errorf("config from the environment: MaxRetries %d, Limiter %v, SRVLookup %v, Timeout %v",
			cc.MaxRetries, cc.Limiter, cc.SRVLookup, cc.Timeout)
	}
}
