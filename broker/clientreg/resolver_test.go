package clientreg

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lanyardhq/lanyard/broker"
	"github.com/lanyardhq/lanyard/broker/oauth"
	"github.com/lanyardhq/lanyard/internal/bolt"
	"github.com/lanyardhq/lanyard/internal/testenv"
)

// newClock is a fake clock shared by the store and the code under test.
func newClock() *testenv.Clock {
	return testenv.NewClock(time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC))
}

func openStore(t *testing.T, clk *testenv.Clock) *bolt.DB {
	t.Helper()
	db, err := bolt.Open(filepath.Join(t.TempDir(), "l.db"), bolt.Options{Now: clk.Now})
	if err != nil {
		t.Fatalf("bolt.Open: %v", err)
	}
	t.Cleanup(func() { _ = db.Close() })
	return db
}

// docServer serves a metadata document at /client.json built by doc from
// the document's own URL, and counts requests.
type docServer struct {
	*httptest.Server
	hits atomic.Int64
}

func (s *docServer) ClientID() string { return s.URL + "/client.json" }

func newDocServer(t *testing.T, h func(w http.ResponseWriter, clientID string)) *docServer {
	t.Helper()
	s := &docServer{}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.hits.Add(1)
		h(w, "http://"+r.Host+r.URL.Path)
	}))
	t.Cleanup(s.Close)
	return s
}

// jsonDoc returns a handler serving fields plus client_id, with cache
// headers.
func jsonDoc(fields map[string]any, cacheControl string) func(http.ResponseWriter, string) {
	return func(w http.ResponseWriter, clientID string) {
		doc := map[string]any{"client_id": clientID}
		for k, v := range fields {
			doc[k] = v
		}
		if cacheControl != "" {
			w.Header().Set("Cache-Control", cacheControl)
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(doc)
	}
}

func rawDoc(body string) func(http.ResponseWriter, string) {
	return func(w http.ResponseWriter, clientID string) {
		_, _ = w.Write([]byte(strings.ReplaceAll(body, "$ID", clientID)))
	}
}

func newResolver(t *testing.T, clk *testenv.Clock, dev bool) (*Resolver, *bolt.DB) {
	t.Helper()
	db := openStore(t, clk)
	return NewResolver(ResolverOptions{Clients: db.Clients(), Now: clk.Now, DevLoopback: dev}), db
}

var goodFields = map[string]any{
	"client_name":   "Example Agent",
	"redirect_uris": []string{"http://127.0.0.1/callback", "https://app.example.com/cb"},
}

func TestResolveValidDocument(t *testing.T) {
	clk := newClock()
	r, db := newResolver(t, clk, true)
	s := newDocServer(t, jsonDoc(goodFields, "max-age=600"))
	ctx := context.Background()

	c, err := r.Resolve(ctx, s.ClientID())
	if err != nil {
		t.Fatalf("Resolve: %v", err)
	}
	want := broker.Client{
		ID:                      s.ClientID(),
		Kind:                    broker.ClientMetadata,
		Name:                    "Example Agent",
		RedirectURIs:            []string{"http://127.0.0.1/callback", "https://app.example.com/cb"},
		GrantTypes:              []string{GrantAuthorizationCode, GrantRefreshToken},
		ApplicationType:         AppNative,
		TokenEndpointAuthMethod: AuthNone,
		CreatedAt:               clk.Now(),
		ExpiresAt:               clk.Now().Add(10 * time.Minute),
	}
	if !equalClient(c, want) {
		t.Errorf("Resolve =\n %+v\nwant\n %+v", c, want)
	}
	stored, err := db.Clients().Get(ctx, s.ClientID())
	if err != nil {
		t.Fatalf("cached record: %v", err)
	}
	if !equalClient(stored, want) {
		t.Errorf("stored =\n %+v\nwant\n %+v", stored, want)
	}
	if !oauth.MatchRedirectURI(c.RedirectURIs, "http://127.0.0.1:51234/callback") {
		t.Error("loopback redirect with another port does not match")
	}
	if oauth.MatchRedirectURI(c.RedirectURIs, "https://evil.example.com/cb") {
		t.Error("a redirect URI outside the document matches")
	}
}

func equalClient(a, b broker.Client) bool {
	return a.ID == b.ID && a.Kind == b.Kind && a.Name == b.Name &&
		slices.Equal(a.RedirectURIs, b.RedirectURIs) && slices.Equal(a.GrantTypes, b.GrantTypes) &&
		a.ApplicationType == b.ApplicationType && a.TokenEndpointAuthMethod == b.TokenEndpointAuthMethod &&
		a.SecretHash == b.SecretHash && a.CreatedAt.Equal(b.CreatedAt) && a.ExpiresAt.Equal(b.ExpiresAt)
}

func TestResolveRejects(t *testing.T) {
	big := strings.Repeat("x", MaxDocumentBytes)
	tests := []struct {
		name     string
		h        func(http.ResponseWriter, string)
		wantDesc string // substring of the error description
	}{
		{"client_id mismatch", func(w http.ResponseWriter, id string) {
			jsonDoc(goodFields, "")(w, id+"x")
		}, "client_id does not equal"},
		{"client_id other host", func(w http.ResponseWriter, id string) {
			jsonDoc(goodFields, "")(w, "https://evil.example.com/client.json")
		}, "client_id does not equal"},
		{"client_id missing", rawDoc(`{"redirect_uris":["https://a.example/cb"]}`), "client_id does not equal"},
		{"client_id not a string", rawDoc(`{"client_id":["$ID"],"redirect_uris":["https://a.example/cb"]}`), "client_id does not equal"},
		{"javascript redirect", jsonDoc(map[string]any{"redirect_uris": []string{"javascript:alert(document.cookie)"}}, ""), "redirect_uris[0]"},
		{"data redirect", jsonDoc(map[string]any{"redirect_uris": []string{"https://a.example/cb", "data:text/html,x"}}, ""), "redirect_uris[1]"},
		{"fragment", jsonDoc(map[string]any{"redirect_uris": []string{"https://a.example/cb#x"}}, ""), "fragment"},
		{"control char", jsonDoc(map[string]any{"redirect_uris": []string{"https://a.example/c\rb"}}, ""), "control"},
		{"http non-loopback redirect", jsonDoc(map[string]any{"redirect_uris": []string{"http://a.example/cb"}}, ""), "loopback"},
		{"no redirect_uris", jsonDoc(map[string]any{"client_name": "x"}, ""), "redirect_uris"},
		{"redirect_uris wrong type", jsonDoc(map[string]any{"redirect_uris": "https://a.example/cb"}, ""), "wrong type"},
		{"client secret", jsonDoc(map[string]any{"redirect_uris": []string{"https://a.example/cb"}, "client_secret": "x"}, ""), "client_secret"},
		{"confidential", jsonDoc(map[string]any{"redirect_uris": []string{"https://a.example/cb"}, "token_endpoint_auth_method": "client_secret_basic"}, ""), "token_endpoint_auth_method"},
		{"bad name", jsonDoc(map[string]any{"redirect_uris": []string{"https://a.example/cb"}, "client_name": "a\u202eb"}, ""), "client_name"},
		{"too large", jsonDoc(map[string]any{"redirect_uris": []string{"https://a.example/cb"}, "client_name": big}, ""), "larger than"},
		{"redirect", func(w http.ResponseWriter, id string) {
			w.Header().Set("Location", "http://127.0.0.1:1/elsewhere")
			w.WriteHeader(http.StatusFound)
		}, "redirect"},
		{"not found", func(w http.ResponseWriter, id string) { http.NotFound(w, nil) }, "status 404"},
		{"non-JSON", rawDoc(`<html><body>hello</body></html>`), "not a JSON object"},
		{"JSON array", rawDoc(`[{"client_id":"$ID"}]`), "not a JSON object"},
		{"duplicate member", rawDoc(`{"client_id":"$ID","redirect_uris":["https://a.example/cb"],"redirect_uris":["javascript:x"]}`), "duplicate"},
		{"trailing data", rawDoc(`{"client_id":"$ID","redirect_uris":["https://a.example/cb"]} {}`), "not a JSON object"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clk := newClock()
			r, db := newResolver(t, clk, true)
			s := newDocServer(t, tt.h)
			_, err := r.Resolve(context.Background(), s.ClientID())
			if !errors.Is(err, oauth.ErrInvalidClient) {
				t.Fatalf("Resolve error = %v, want invalid_client", err)
			}
			desc := oauth.As(err).Description
			if !strings.Contains(desc, tt.wantDesc) {
				t.Errorf("description %q does not contain %q", desc, tt.wantDesc)
			}
			for _, leak := range []string{"javascript", "data:", "<html", "evil", "xxxxxxxx", "\u202e"} {
				if strings.Contains(desc, leak) {
					t.Errorf("description %q echoes document content %q", desc, leak)
				}
			}
			if _, err := db.Clients().Get(context.Background(), s.ClientID()); !errors.Is(err, broker.ErrNotFound) {
				t.Errorf("a rejected document was cached: %v", err)
			}
		})
	}
}

func TestResolveClientIDURL(t *testing.T) {
	clk := newClock()
	s := newDocServer(t, jsonDoc(goodFields, ""))
	tests := []struct {
		name string
		id   string
		dev  bool
	}{
		{"http loopback without dev mode", s.ClientID(), false},
		{"http non-loopback in dev mode", "http://example.com/client.json", true},
		{"no path", s.URL, true},
		{"fragment", s.ClientID() + "#x", true},
		{"user info", strings.Replace(s.ClientID(), "http://", "http://u:p@", 1), true},
		{"dot segment", s.URL + "/a/../client.json", true},
		{"encoded dot segment", s.URL + "/a/%2e%2E/client.json", true},
		{"single dot", s.URL + "/./client.json", true},
		{"upper-case scheme", strings.Replace(s.ClientID(), "http", "HTTP", 1), true},
		{"space", s.ClientID() + " x", true},
		{"too long", s.ClientID() + "?" + strings.Repeat("a", broker.MaxIDLen), true},
		{"ftp", "ftp://example.com/client.json", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, _ := newResolver(t, clk, tt.dev)
			before := s.hits.Load()
			_, err := r.Resolve(context.Background(), tt.id)
			if !errors.Is(err, oauth.ErrInvalidClient) {
				t.Errorf("Resolve(%q) error = %v, want invalid_client", tt.id, err)
			}
			if s.hits.Load() != before {
				t.Error("the document was fetched")
			}
		})
	}
}

func TestResolvePrivateAddressRefused(t *testing.T) {
	// Production client (no dev mode) asked for an https URL whose host is
	// a private literal: the dial-time check refuses it.
	clk := newClock()
	r, _ := newResolver(t, clk, false)
	for _, id := range []string{"https://10.0.0.1/client.json", "https://169.254.169.254/latest/meta-data", "https://127.0.0.1:1/c"} {
		_, err := r.Resolve(context.Background(), id)
		if !errors.Is(err, oauth.ErrInvalidClient) || !strings.Contains(oauth.As(err).Description, "address") {
			t.Errorf("Resolve(%q) = %v, want invalid_client about the address", id, err)
		}
	}
}

func TestResolveCache(t *testing.T) {
	tests := []struct {
		name         string
		cacheControl string
		fresh, stale time.Duration // a second Resolve after fresh is served from cache; after stale it refetches
	}{
		{"max-age honoured", "public, max-age=600", 599 * time.Second, 601 * time.Second},
		{"no cache-control: default", "", DefaultCache - time.Second, DefaultCache + time.Second},
		{"no-store: floor", "no-store", DefaultMinCache - time.Second, DefaultMinCache + time.Second},
		{"no-cache: floor", "no-cache", DefaultMinCache - time.Second, DefaultMinCache + time.Second},
		{"max-age=0: floor", "max-age=0", DefaultMinCache - time.Second, DefaultMinCache + time.Second},
		{"max-age clamped up", "max-age=5", DefaultMinCache - time.Second, DefaultMinCache + time.Second},
		{"max-age clamped down", "max-age=31536000", DefaultMaxCache - time.Second, DefaultMaxCache + time.Second},
		{"malformed max-age: default", "max-age=soon", DefaultCache - time.Second, DefaultCache + time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clk := newClock()
			r, _ := newResolver(t, clk, true)
			s := newDocServer(t, jsonDoc(goodFields, tt.cacheControl))
			ctx := context.Background()
			resolve := func(wantHits int64) {
				t.Helper()
				if _, err := r.Resolve(ctx, s.ClientID()); err != nil {
					t.Fatalf("Resolve: %v", err)
				}
				if got := s.hits.Load(); got != wantHits {
					t.Fatalf("server hits = %d, want %d", got, wantHits)
				}
			}
			resolve(1)
			clk.Advance(tt.fresh)
			resolve(1)
			clk.Advance(tt.stale - tt.fresh)
			resolve(2)
		})
	}
}

func TestResolveRefetchSeesNewDocument(t *testing.T) {
	clk := newClock()
	r, _ := newResolver(t, clk, true)
	var name atomic.Value
	name.Store("First")
	s := newDocServer(t, func(w http.ResponseWriter, id string) {
		jsonDoc(map[string]any{"client_name": name.Load(), "redirect_uris": []string{"https://a.example/cb"}}, "max-age=60")(w, id)
	})
	ctx := context.Background()
	if c, err := r.Resolve(ctx, s.ClientID()); err != nil || c.Name != "First" {
		t.Fatalf("got %+v, %v", c, err)
	}
	name.Store("Second")
	clk.Advance(61 * time.Second)
	if c, err := r.Resolve(ctx, s.ClientID()); err != nil || c.Name != "Second" {
		t.Fatalf("after expiry got %+v, %v; want the new document", c, err)
	}
}

func TestResolveConcurrentFetchOnce(t *testing.T) {
	clk := newClock()
	r, _ := newResolver(t, clk, true)
	release := make(chan struct{})
	s := newDocServer(t, func(w http.ResponseWriter, id string) {
		<-release // hold the first fetch until every caller is waiting
		jsonDoc(goodFields, "")(w, id)
	})
	const n = 8
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := r.Resolve(context.Background(), s.ClientID())
			if err == nil && c.ID != s.ClientID() {
				err = errors.New("wrong client " + c.ID)
			}
			errs <- err
		}()
	}
	// Wait until all n callers are either waiting on the one in-flight
	// fetch or have not yet looked at the cache; then let the fetch finish.
	deadline := time.Now().Add(5 * time.Second)
	for s.hits.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond)
	close(release)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("Resolve: %v", err)
		}
	}
	if got := s.hits.Load(); got != 1 {
		t.Errorf("server hits = %d, want 1", got)
	}
}

func TestResolveFailureRemembered(t *testing.T) {
	clk := newClock()
	r, _ := newResolver(t, clk, true)
	s := newDocServer(t, rawDoc("not json"))
	ctx := context.Background()
	for range 3 {
		if _, err := r.Resolve(ctx, s.ClientID()); !errors.Is(err, oauth.ErrInvalidClient) {
			t.Fatalf("Resolve = %v, want invalid_client", err)
		}
	}
	if got := s.hits.Load(); got != 1 {
		t.Errorf("hits = %d, want 1 (failure remembered)", got)
	}
	clk.Advance(DefaultFailureCache + time.Second)
	_, _ = r.Resolve(ctx, s.ClientID())
	if got := s.hits.Load(); got != 2 {
		t.Errorf("hits = %d, want 2 after the failure memory expired", got)
	}
}

func TestResolveStoredClients(t *testing.T) {
	clk := newClock()
	r, db := newResolver(t, clk, true)
	ctx := context.Background()
	static := broker.Client{ID: "cli", Kind: broker.ClientStatic, RedirectURIs: []string{"https://a.example/cb"}, CreatedAt: clk.Now()}
	urlStatic := broker.Client{ID: "https://pre.example.com/client", Kind: broker.ClientStatic, CreatedAt: clk.Now()}
	for _, c := range []broker.Client{static, urlStatic} {
		if err := db.Clients().Create(ctx, c); err != nil {
			t.Fatal(err)
		}
	}
	if c, err := r.Resolve(ctx, "cli"); err != nil || c.Kind != broker.ClientStatic {
		t.Errorf("Resolve(cli) = %+v, %v", c, err)
	}
	if c, err := r.Resolve(ctx, urlStatic.ID); err != nil || c.Kind != broker.ClientStatic {
		t.Errorf("pre-registered URL client: %+v, %v (no fetch expected)", c, err)
	}
	for _, id := range []string{"nope", "dcr_unknown", "a\x00b"} {
		if _, err := r.Resolve(ctx, id); !errors.Is(err, oauth.ErrInvalidClient) {
			t.Errorf("Resolve(%q) = %v, want invalid_client", id, err)
		}
	}
}

func TestResolveCallerCancel(t *testing.T) {
	clk := newClock()
	r, _ := newResolver(t, clk, true)
	release := make(chan struct{})
	s := newDocServer(t, func(w http.ResponseWriter, id string) {
		<-release
		jsonDoc(goodFields, "")(w, id)
	})
	defer close(release)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := r.Resolve(ctx, s.ClientID()); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Resolve = %v, want context.DeadlineExceeded", err)
	}
}
