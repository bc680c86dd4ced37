package vault

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/lanyardhq/lanyard/broker"
)

// redirectError is what the HTTP client answers instead of following a
// redirect: following it would send the token (or the secret id) to
// whatever host Vault, or something pretending to be Vault, names.
type redirectError struct{ status int }

func (e *redirectError) Error() string {
	return fmt.Sprintf("vault answered %d: redirect not followed (the token is only sent to the configured address)", e.status)
}

// apiConfig returns the configuration of the API client, built from cfg alone
// (cfg is valid, defaults applied): its own HTTP client that never uses a
// proxy and never follows a redirect, the CA certificates of cfg, and no
// retries (reads are retried by the store, see read; writes never are).
func apiConfig(cfg Config) (*api.Config, error) {
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
		Proxy:                 nil, // never HTTP(S)_PROXY nor VAULT_HTTP_PROXY: the token goes to Vault only
		DialContext:           (&net.Dialer{Timeout: cfg.Timeout, KeepAlive: 30 * time.Second}).DialContext,
		TLSClientConfig:       tlsConfig,
		TLSHandshakeTimeout:   cfg.Timeout,
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          16,
		MaxIdleConnsPerHost:   16,
		IdleConnTimeout:       90 * time.Second,
		ExpectContinueTimeout: time.Second,
	}
	return &api.Config{
		Address: cfg.Address,
		HttpClient: &http.Client{
			Transport: tr,
			// A redirect is an error (classify reports it as such, without
			// ErrUnavailable): the request is never sent to another URL.
			CheckRedirect: func(req *http.Request, _ []*http.Request) error {
				status := 0
				if req.Response != nil {
					status = req.Response.StatusCode
				}
				return &redirectError{status: status}
			},
		},
		Timeout: cfg.Timeout,
		// The library's retries would send a write again after a 5xx or a
		// broken connection, when the first one may have been applied.
		MaxRetries: 0,
		CheckRetry: func(context.Context, *http.Response, error) (bool, error) { return false, nil },
		// The library would follow one redirect itself.
		DisableRedirects: true,
	}, nil
}

// newClient returns the API client for cfg. api.NewClient reads VAULT_*
// environment variables; what it takes from them is undone here: the token
// (VAULT_TOKEN), the namespace (VAULT_NAMESPACE), extra headers
// (VAULT_HEADERS) and response wrapping (VAULT_WRAP_TTL, read on every
// request). Its other settings (address, TLS, retries, proxy, rate limit,
// redirects, SRV lookup) only shape a default configuration that is not used,
// since apiConfig gives one of its own. The client never gets a token: each
// call names its own (see Store.as).
func newClient(cfg Config) (*api.Client, error) {
	ac, err := apiConfig(cfg)
	if err != nil {
		return nil, err
	}
	c, err := api.NewClient(ac)
	if err != nil {
		// The address was validated, so the environment is at fault.
		return nil, envError(err)
	}
	c.ClearToken()
	c.ClearNamespace()
	c.SetHeaders(http.Header{api.RequestHeaderName: {"true"}}) // Vault's SSRF guard, nothing else
	c.SetWrappingLookupFunc(func(string, string) string { return "" })
	return c, nil
}

// envError explains an error of api.NewClient, which parses VAULT_*
// environment variables even though the store does not use them, and fails
// when one is malformed. It names the variable at fault when it can tell,
// never quotes a variable's value itself, and wraps broker.ErrInvalid.
func envError(err error) error {
	detail := err.Error()
	var ue *url.Error
	if errors.As(err, &ue) {
		// A proxy URL the library could not parse; it may hold a password.
		detail = "a proxy URL is not valid"
	}
	var set, blamed []string
	for _, kv := range os.Environ() {
		name, value, _ := strings.Cut(kv, "=")
		if !strings.HasPrefix(name, "VAULT_") || value == "" {
			continue
		}
		set = append(set, name)
		switch {
		case strings.Contains(detail, name),
			// VAULT_PROXY_ADDR supersedes VAULT_HTTP_PROXY.
			ue != nil && name == api.EnvVaultProxyAddr,
			ue != nil && name == api.EnvHTTPProxy && os.Getenv(api.EnvVaultProxyAddr) == "",
			name == api.EnvVaultHeaders && strings.Contains(detail, "eaders"),
			(name == api.EnvVaultClientCert || name == api.EnvVaultClientKey) && strings.Contains(detail, "client cert"),
			// Matched only, never shown; VAULT_TOKEN is not parsed.
			name != api.EnvVaultToken && len(value) >= 4 && strings.Contains(detail, value):
			blamed = append(blamed, name)
		}
	}
	slices.Sort(set)
	slices.Sort(blamed)
	fix := "fix or unset the one at fault (set: " + strings.Join(set, ", ") + ")"
	if len(blamed) > 0 {
		fix = "fix or unset " + strings.Join(blamed, ", ")
	}
	return fmt.Errorf("vault: a VAULT_* environment variable is not valid: %s. Lanyard takes its Vault settings "+
		"from its own configuration (secrets.vault), not from VAULT_* variables, but the Vault client library "+
		"(github.com/hashicorp/vault/api) still parses them, so VAULT_* variables in Lanyard's environment must "+
		"be valid or unset: %s: %w", detail, fix, broker.ErrInvalid)
}

// readRetryWait is the pause before a read is sent again.
func readRetryWait() time.Duration { return 100*time.Millisecond + rand.N(100*time.Millisecond) }

// read runs fn, a call that only reads, and runs it once more if it failed on
// the way or with a 5xx answer (other than 501) and ctx leaves time for it.
// Writes are never sent again: the first one may have been applied.
func read[T any](ctx context.Context, fn func(context.Context) (T, error)) (T, error) {
	v, err := fn(ctx)
	if err == nil || ctx.Err() != nil || !retryable(err) {
		return v, err
	}
	t := time.NewTimer(readRetryWait())
	defer t.Stop()
	select {
	case <-ctx.Done():
		return v, err
	case <-t.C:
	}
	return fn(ctx)
}

// retryable reports whether a read that failed with err may succeed if sent
// again: a transport failure or a 5xx answer other than 501.
func retryable(err error) bool {
	if st := statusOf(err); st != 0 {
		return st >= 500 && st != http.StatusNotImplemented
	}
	var re *redirectError
	if errors.As(err, &re) {
		return false
	}
	var ue *url.Error
	return errors.As(err, &ue)
}

// statusOf returns the HTTP status of an api.ResponseError in err's chain, or
// 0.
func statusOf(err error) int {
	var re *api.ResponseError
	if errors.As(err, &re) {
		return re.StatusCode
	}
	return 0
}

// says reports whether one of Vault's error strings in err contains s.
func says(err error, s string) bool {
	var re *api.ResponseError
	if !errors.As(err, &re) || re.RawError {
		return false
	}
	return slices.ContainsFunc(re.Errors, func(e string) bool { return strings.Contains(e, s) })
}

// answer describes an error answer of Vault without its URL and without a
// body that is not Vault's JSON (it could hold anything, a secret included).
func answer(re *api.ResponseError) string {
	msg := fmt.Sprintf("vault answered %d", re.StatusCode)
	if !re.RawError && len(re.Errors) > 0 {
		msg += ": " + strings.Join(re.Errors, "; ")
	}
	return msg
}
