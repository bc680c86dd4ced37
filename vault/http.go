package vault

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"
)

// maxResponse bounds the size of a response body the client reads.
const maxResponse = 32 << 20

// client is the store's own small client of Vault's HTTP API. Unlike
// github.com/hashicorp/vault/api it takes nothing from the environment: no
// VAULT_* variable (address, token, namespace, headers, TLS, retries) and no
// proxy variable changes what it sends or where. It never follows a
// redirect, so the token only ever goes to Config.Address, and it retries
// only reads (GET), once, so that a write is never sent twice.
type client struct {
	base *url.URL
	hc   *http.Client
}

// newClient builds the client from cfg alone (cfg is valid, defaults
// applied).
func newClient(cfg Config) (*client, error) {
	base, err := url.Parse(cfg.Address)
	if err != nil {
		return nil, fmt.Errorf("vault: address: %w", err)
	}
	tlsConfig := &tls.Config{MinVersion: tls.VersionTLS12}
	if cfg.CACert != "" {
		pem, err := os.ReadFile(cfg.CACert)
		if err != nil {
			return nil, fmt.Errorf("vault: load CA certificate: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("vault: load CA certificate %s: no PEM certificate in the file", cfg.CACert)
		}
		tlsConfig.RootCAs = pool
	}
	tr := &http.Transport{
		Proxy:                 nil, // never HTTP(S)_PROXY: the token goes to Vault only
		DialContext:           (&net.Dialer{Timeout: cfg.Timeout, KeepAlive: 30 * time.Second}).DialContext,
		TLSClientConfig:       tlsConfig,
		TLSHandshakeTimeout:   cfg.Timeout,
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          16,
		MaxIdleConnsPerHost:   16,
		IdleConnTimeout:       90 * time.Second,
		ExpectContinueTimeout: time.Second,
	}
	return &client{
		base: base,
		hc: &http.Client{
			Transport: tr,
			// A redirect is answered as an error (responseError with a 3xx
			// status): following it would send the token to another host.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
	}, nil
}

// request is one call to Vault's HTTP API.
type request struct {
	method string
	path   string // below /v1/, for example "secret/data/lanyard/alice/github"
	query  url.Values
	token  string // the X-Vault-Token header; "" sends none
	body   any    // sent as JSON if not nil
}

// responseError is an answer of Vault other than 2xx.
type responseError struct {
	StatusCode int
	// Errors are Vault's own error strings ("errors" in the JSON body).
	Errors []string
}

func (e *responseError) Error() string {
	msg := fmt.Sprintf("vault answered %d", e.StatusCode)
	if len(e.Errors) > 0 {
		msg += ": " + strings.Join(e.Errors, "; ")
	}
	return msg
}

// says reports whether one of Vault's error strings contains s.
func (e *responseError) says(s string) bool {
	for _, m := range e.Errors {
		if strings.Contains(m, s) {
			return true
		}
	}
	return false
}

// statusOf returns the HTTP status of a responseError in err's chain, or 0.
func statusOf(err error) int {
	var re *responseError
	if errors.As(err, &re) {
		return re.StatusCode
	}
	return 0
}

// do sends r and decodes a 2xx answer's JSON body into out (if not nil). A
// read (GET) that fails on the way or with a 5xx answer is tried once more;
// nothing else is retried.
func (c *client) do(ctx context.Context, r request, out any) error {
	err := c.once(ctx, r, out)
	if err == nil || r.method != http.MethodGet || ctx.Err() != nil || !retryable(err) {
		return err
	}
	t := time.NewTimer(100*time.Millisecond + rand.N(100*time.Millisecond))
	defer t.Stop()
	select {
	case <-ctx.Done():
		return err
	case <-t.C:
	}
	return c.once(ctx, r, out)
}

// retryable reports whether a read that failed with err may succeed if sent
// again: a transport failure or a 5xx answer other than 501.
func retryable(err error) bool {
	if st := statusOf(err); st != 0 {
		return st >= 500 && st != http.StatusNotImplemented
	}
	var ue *url.Error
	return errors.As(err, &ue)
}

// once sends r once.
func (c *client) once(ctx context.Context, r request, out any) error {
	u := *c.base
	u.Path = strings.TrimSuffix(c.base.Path, "/") + "/v1/" + r.path
	u.RawPath = ""
	u.RawQuery = r.query.Encode()
	var body io.Reader
	if r.body != nil {
		b, err := json.Marshal(r.body)
		if err != nil {
			return fmt.Errorf("encode request: %w", err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, r.method, u.String(), body)
	if err != nil {
		return err
	}
	// Exactly these headers: X-Vault-Request is Vault's SSRF guard.
	req.Header = http.Header{"X-Vault-Request": {"true"}}
	if r.token != "" {
		req.Header.Set("X-Vault-Token", r.token)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return err // a *url.Error
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxResponse+1))
	if err != nil {
		return &url.Error{Op: r.method, URL: u.String(), Err: err}
	}
	if len(data) > maxResponse {
		return fmt.Errorf("vault answered more than %d bytes", maxResponse)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		re := &responseError{StatusCode: resp.StatusCode}
		var eb struct {
			Errors []string `json:"errors"`
		}
		if json.Unmarshal(data, &eb) == nil {
			re.Errors = eb.Errors
		}
		if resp.StatusCode >= 300 && resp.StatusCode < 400 {
			re.Errors = append(re.Errors, "redirect not followed (the token is only sent to the configured address)")
		}
		return re
	}
	if out != nil && len(bytes.TrimSpace(data)) > 0 {
		if err := json.Unmarshal(data, out); err != nil {
			// Never quote the body: it may hold a secret.
			return fmt.Errorf("vault answered %d with a body that is not the expected JSON", resp.StatusCode)
		}
	}
	return nil
}

// authInfo is the "auth" object of a login or renewal answer.
type authInfo struct {
	ClientToken   string `json:"client_token"`
	LeaseDuration int    `json:"lease_duration"`
	Renewable     bool   `json:"renewable"`
}

func (a *authInfo) ttl() time.Duration { return time.Duration(a.LeaseDuration) * time.Second }
