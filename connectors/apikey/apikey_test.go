package apikey_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/lanyardhq/lanyard/broker"
	"github.com/lanyardhq/lanyard/connectors"
	"github.com/lanyardhq/lanyard/connectors/apikey"
	"github.com/lanyardhq/lanyard/connectors/connectortest"
	"github.com/lanyardhq/lanyard/internal/config"
)

const goodKey = "sk_live_9f8e7d6c5b4a3210abcd"

// verifyServer accepts the key it holds, presented as cfg says, and
// records what it saw.
type verifyServer struct {
	mu       sync.Mutex
	good     string
	status   int // forced status when non-zero
	lastSeen string
	srv      *httptest.Server
}

func newVerifyServer(t *testing.T, cfg config.APIKeyConnector) *verifyServer {
	t.Helper()
	v := &verifyServer{good: goodKey}
	v.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		v.mu.Lock()
		defer v.mu.Unlock()
		var got string
		if cfg.Header != "" {
			got = strings.TrimPrefix(r.Header.Get(cfg.Header), cfg.Prefix)
			if !strings.HasPrefix(r.Header.Get(cfg.Header), cfg.Prefix) || r.URL.RawQuery != "" {
				got = ""
			}
		} else {
			got = r.URL.Query().Get(cfg.QueryParam)
		}
		v.lastSeen = got
		switch {
		case v.status != 0:
			w.WriteHeader(v.status)
		case got == v.good:
			_, _ = w.Write([]byte(`{"ok":true}`))
		default:
			w.WriteHeader(http.StatusUnauthorized)
		}
	}))
	t.Cleanup(v.srv.Close)
	return v
}

func (v *verifyServer) set(f func(v *verifyServer)) {
	v.mu.Lock()
	defer v.mu.Unlock()
	f(v)
}

func newConnector(t *testing.T, cfg config.APIKeyConnector) (*apikey.Connector, *verifyServer) {
	t.Helper()
	v := newVerifyServer(t, cfg)
	cfg.VerifyURL = v.srv.URL + "/v1/me"
	c, err := apikey.New("acme", "Acme API", cfg, apikey.Options{Dev: true})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return c, v
}

func in(k string) connectors.Input { return connectors.Input{apikey.FieldKey: broker.SecretString(k)} }

func TestConnectorSuite(t *testing.T) {
	for name, cfg := range map[string]config.APIKeyConnector{
		"Header": {Header: "Authorization", Prefix: "Bearer "},
		"Query":  {QueryParam: "api_key"},
	} {
		t.Run(name, func(t *testing.T) {
			c, v := newConnector(t, cfg)
			connectortest.Run(t, connectortest.Harness{
				Connector: c,
				Link: func(t *testing.T) connectors.Linked {
					l, err := c.Link(context.Background(), in(goodKey))
					if err != nil {
						t.Fatalf("Link: %v", err)
					}
					return l
				},
				GoodInput: in(goodKey),
				BadInput:  in("sk_live_wrongwrongwrong0000"),
				Break: func(t *testing.T, _ connectors.Linked) {
					v.set(func(v *verifyServer) { v.good = "rotated-key-000000" })
				},
				Secrets: []string{goodKey, "sk_live_wrongwrongwrong0000"},
			})
		})
	}
}

func TestPresentation(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  config.APIKeyConnector
		want map[string]any
	}{
		{"HeaderWithPrefix", config.APIKeyConnector{Header: "Authorization", Prefix: "Bearer "},
			map[string]any{"api_key": goodKey, "header": "Authorization", "prefix": "Bearer "}},
		{"BareHeader", config.APIKeyConnector{Header: "X-API-Key"},
			map[string]any{"api_key": goodKey, "header": "X-API-Key", "prefix": ""}},
		{"Query", config.APIKeyConnector{QueryParam: "key"},
			map[string]any{"api_key": goodKey, "query_param": "key"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, v := newConnector(t, tc.cfg)
			l, err := c.Link(context.Background(), in("  "+goodKey+"\n"))
			if err != nil {
				t.Fatalf("Link: %v", err)
			}
			var seen string
			v.set(func(v *verifyServer) { seen = v.lastSeen })
			if seen != goodKey {
				t.Errorf("the verify server saw %q, want the key presented as configured", seen)
			}
			cred, err := c.Materialize(context.Background(), l.Secret)
			if err != nil {
				t.Fatal(err)
			}
			if cred.Type != "apikey" || len(cred.Fields) != len(tc.want) {
				t.Errorf("Materialize = %+v, want type apikey and %v", cred, tc.want)
			}
			for k, want := range tc.want {
				if cred.Fields[k] != want {
					t.Errorf("field %s = %q, want %q", k, cred.Fields[k], want)
				}
			}
		})
	}
}

func TestMask(t *testing.T) {
	for k, want := range map[string]string{
		goodKey:            "…abcd",
		"0123456789abcdef": "…cdef",
		"12345678":         "…78",
		"abc":              "…",
		"":                 "…",
		"ключ-ключ-ключ-1": "…юч-1",
	} {
		got := apikey.Mask(k)
		if got != want {
			t.Errorf("Mask(%q) = %q, want %q", k, got, want)
		}
		if n := utf8.RuneCountInString(got) - 1; n > 4 {
			t.Errorf("Mask(%q) shows %d characters", k, n)
		}
	}
	c, _ := newConnector(t, config.APIKeyConnector{Header: "Authorization", Prefix: "Bearer "})
	l, err := c.Link(context.Background(), in(goodKey))
	if err != nil {
		t.Fatal(err)
	}
	if l.Account != "…abcd" {
		t.Errorf("Account = %q, want …abcd", l.Account)
	}
}

func TestVerifyStatuses(t *testing.T) {
	for _, tc := range []struct {
		status int
		want   error
	}{
		{http.StatusOK, nil},
		{http.StatusNoContent, nil},
		{http.StatusUnauthorized, connectors.ErrRejected},
		{http.StatusForbidden, connectors.ErrRejected},
		{http.StatusTooManyRequests, connectors.ErrUpstream},
		{http.StatusInternalServerError, connectors.ErrUpstream},
		{http.StatusFound, connectors.ErrUpstream}, // redirects are not followed
	} {
		c, v := newConnector(t, config.APIKeyConnector{QueryParam: "key"})
		v.set(func(v *verifyServer) { v.status = tc.status })
		l, err := c.Link(context.Background(), in(goodKey))
		if !errors.Is(err, tc.want) || (tc.want == nil) != (err == nil) {
			t.Errorf("status %d: Link = %v, want %v", tc.status, err, tc.want)
		}
		if err != nil {
			if l.Secret.Len() != 0 {
				t.Errorf("status %d: a refused link returned a secret", tc.status)
			}
			if strings.Contains(err.Error(), goodKey) {
				t.Errorf("status %d: the error %q contains the key", tc.status, err)
			}
		}
	}
}

func TestVerifyUnreachableDoesNotLeakKey(t *testing.T) {
	v := newVerifyServer(t, config.APIKeyConnector{QueryParam: "key"})
	url := v.srv.URL
	v.srv.Close()
	c, err := apikey.New("acme", "Acme", config.APIKeyConnector{QueryParam: "key", VerifyURL: url}, apikey.Options{Dev: true})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err = c.Link(ctx, in(goodKey))
	if !errors.Is(err, connectors.ErrUpstream) || strings.Contains(err.Error(), goodKey) {
		t.Errorf("Link to a closed server = %v, want ErrUpstream without the key", err)
	}
}

func TestNoVerifyURL(t *testing.T) {
	c, err := apikey.New("acme", "", config.APIKeyConnector{Header: "X-Key"}, apikey.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if c.DisplayName() != "acme" {
		t.Errorf("DisplayName = %q, want the name", c.DisplayName())
	}
	l, err := c.Link(context.Background(), in(goodKey))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Verify(context.Background(), l.Secret); err != nil {
		t.Errorf("Verify = %v", err)
	}
	if err := c.Verify(context.Background(), broker.Secret{}); !errors.Is(err, broker.ErrInvalid) {
		t.Errorf("Verify of an empty secret = %v, want ErrInvalid", err)
	}
}

func TestInvalid(t *testing.T) {
	for name, cfg := range map[string]config.APIKeyConnector{
		"neither":             {},
		"both":                {Header: "X-Key", QueryParam: "key"},
		"bad header":          {Header: "X Key"},
		"prefix without head": {QueryParam: "key", Prefix: "Bearer "},
		"http verify":         {Header: "X-Key", VerifyURL: "http://api.example/me"},
		"ftp verify":          {Header: "X-Key", VerifyURL: "ftp://api.example/me"},
	} {
		if _, err := apikey.New("n", "N", cfg, apikey.Options{}); !errors.Is(err, broker.ErrInvalid) {
			t.Errorf("%s: New = %v, want ErrInvalid", name, err)
		}
	}
	// A loopback verify URL is refused without Dev at request time too.
	c, err := apikey.New("n", "N", config.APIKeyConnector{Header: "X-Key", VerifyURL: "https://127.0.0.1:1/me"}, apikey.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Link(context.Background(), in(goodKey)); !errors.Is(err, connectors.ErrUpstream) {
		t.Errorf("Link with a loopback verify URL = %v, want ErrUpstream (SSRF guard)", err)
	}
	c, _ = apikey.New("n", "N", config.APIKeyConnector{Header: "X-Key"}, apikey.Options{})
	for name, k := range map[string]string{"empty": "  ", "newline": "ab\ncd", "huge": strings.Repeat("k", apikey.MaxKeyLen+1)} {
		if _, err := c.Link(context.Background(), in(k)); !errors.Is(err, broker.ErrInvalid) {
			t.Errorf("%s key: Link = %v, want ErrInvalid", name, err)
		}
	}
}
