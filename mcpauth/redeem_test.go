package mcpauth_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lanyardhq/lanyard/broker/token"
	"github.com/lanyardhq/lanyard/internal/testenv"
	"github.com/lanyardhq/lanyard/mcpauth"
	"github.com/lanyardhq/lanyard/mcpauth/internal/lanyardtest"
)

// redeemCall is one request the fake redemption endpoint received.
type redeemCall struct {
	ID, Secret             string
	Token, Connector, Tool string
}

// fakeRedeem speaks the documented /v1/redeem contract with answers the
// test chooses.
type fakeRedeem struct {
	mu     sync.Mutex
	calls  []redeemCall
	answer func(redeemCall) (int, any)
	gate   chan struct{} // if not nil, requests wait for it to close
	bad    []string      // contract violations seen
}

func (f *fakeRedeem) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var c redeemCall
	var body map[string]string
	id, secret, ok := r.BasicAuth()
	err := json.NewDecoder(r.Body).Decode(&body)
	f.mu.Lock()
	switch {
	case r.Method != http.MethodPost || !ok || r.Header.Get("Content-Type") != "application/json" || err != nil || len(body) != 3:
		f.bad = append(f.bad, fmt.Sprintf("%s basic=%v ct=%q err=%v body keys=%d", r.Method, ok, r.Header.Get("Content-Type"), err, len(body)))
	}
	c.ID, _ = url.QueryUnescape(id)
	c.Secret, _ = url.QueryUnescape(secret)
	c.Token, c.Connector, c.Tool = body["token"], body["connector"], body["tool"]
	f.calls = append(f.calls, c)
	answer, gate := f.answer, f.gate
	f.mu.Unlock()
	if gate != nil {
		<-gate
	}
	status, out := answer(c)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	if s, ok := out.(string); ok {
		_, _ = w.Write([]byte(s))
		return
	}
	_ = json.NewEncoder(w).Encode(out)
}

func (f *fakeRedeem) set(answer func(redeemCall) (int, any)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.answer = answer
}

func (f *fakeRedeem) n() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.calls)
}

func (f *fakeRedeem) last() redeemCall {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls[len(f.calls)-1]
}

// credentialAnswer answers with a basic credential expiring at exp (zero:
// no expires_at).
func credentialAnswer(exp time.Time) func(redeemCall) (int, any) {
	return func(c redeemCall) (int, any) {
		out := map[string]any{"connection_id": lanyardtest.ConnectionID, "connector": c.Connector, "type": "basic",
			"credential": map[string]any{"username": "alice@mail", "password": "imap-pass", "host": "mail:993"}}
		if !exp.IsZero() {
			out["expires_at"] = exp.UTC().Format(time.RFC3339)
		}
		return http.StatusOK, out
	}
}

func errorAnswer(status int, code, desc, scope string) func(redeemCall) (int, any) {
	return func(redeemCall) (int, any) {
		out := map[string]string{"error": code, "error_description": desc}
		if scope != "" {
			out["scope"] = scope
		}
		return status, out
	}
}

type redeemEnv struct {
	w     *lanyardtest.World
	f     *fakeRedeem
	c     *mcpauth.Client
	clock *testenv.Clock
	tok   *mcpauth.Token
}

func newRedeemEnv(t *testing.T, edit func(*mcpauth.Config)) *redeemEnv {
	t.Helper()
	e := &redeemEnv{f: &fakeRedeem{}, clock: testenv.NewClock(time.Now())}
	e.f.answer = credentialAnswer(time.Time{})
	e.w = lanyardtest.New(t, lanyardtest.Options{Now: e.clock.Now, Redeem: e.f})
	e.c = newClient(t, e.w, func(cfg *mcpauth.Config) {
		cfg.Now = e.clock.Now
		if edit != nil {
			edit(cfg)
		}
	})
	var err error
	if e.tok, err = e.c.Verify(t.Context(), e.w.Sign(token.Claims{GrantID: "grant-1", Scopes: []string{"mail.read"}})); err != nil {
		t.Fatal(err)
	}
	return e
}

func (e *redeemEnv) redeem(t *testing.T, tool string) (*mcpauth.Credential, error) {
	t.Helper()
	return e.c.Redeem(t.Context(), e.tok, lanyardtest.Connector, tool)
}

func (e *redeemEnv) mustRedeem(t *testing.T, tool string) *mcpauth.Credential {
	t.Helper()
	cred, err := e.redeem(t, tool)
	if err != nil {
		t.Fatalf("Redeem(%s): %v", tool, err)
	}
	return cred
}

func (e *redeemEnv) wantCalls(t *testing.T, n int, when string) {
	t.Helper()
	if got := e.f.n(); got != n {
		t.Errorf("%s: %d redemptions at Lanyard, want %d", when, got, n)
	}
}

func TestRedeemRequestAndCache(t *testing.T) {
	e := newRedeemEnv(t, nil)
	e.f.set(credentialAnswer(e.clock.Now().Add(time.Hour)))
	cred := e.mustRedeem(t, "search_messages")
	if cred.ConnectionID != lanyardtest.ConnectionID || cred.Connector != "imap" || cred.Type != "basic" ||
		cred.Field("password") != "imap-pass" || !cred.ExpiresAt.Equal(e.clock.Now().Add(time.Hour).Truncate(time.Second)) {
		t.Errorf("credential %+v, password %q", cred, cred.Field("password"))
	}
	if c := e.f.last(); c != (redeemCall{lanyardtest.ResourceID, lanyardtest.ResourceSecret, e.tok.Raw, "imap", "search_messages"}) {
		t.Errorf("request %+v", c)
	}
	if len(e.f.bad) > 0 {
		t.Errorf("contract violations: %v", e.f.bad)
	}
	cred.Fields["password"] = "changed by the caller"
	if again := e.mustRedeem(t, "search_messages"); again.Field("password") != "imap-pass" {
		t.Error("a caller's change reached the cache")
	}
	e.wantCalls(t, 1, "same grant, connector and tool")

	// Another tool is decided (and audited) by Lanyard again.
	e.mustRedeem(t, "read_message")
	e.wantCalls(t, 2, "another tool")
	// Another token of the same grant and scopes shares the cache; one with
	// other scopes does not.
	same, _ := e.c.Verify(t.Context(), e.w.Sign(token.Claims{GrantID: "grant-1", Scopes: []string{"mail.read"}}))
	wider, _ := e.c.Verify(t.Context(), e.w.Sign(token.Claims{GrantID: "grant-1", Scopes: []string{"mail.read", "mail.send"}}))
	if _, err := e.c.Redeem(t.Context(), same, "imap", "read_message"); err != nil {
		t.Fatal(err)
	}
	e.wantCalls(t, 2, "a second token of the grant")
	if _, err := e.c.Redeem(t.Context(), wider, "imap", "read_message"); err != nil {
		t.Fatal(err)
	}
	e.wantCalls(t, 3, "a token with other scopes")

	// MaxCredentialTTL (default 60s) bounds the cache.
	e.clock.Advance(59 * time.Second)
	e.mustRedeem(t, "search_messages")
	e.wantCalls(t, 3, "59s later")
	e.clock.Advance(time.Second)
	e.mustRedeem(t, "search_messages")
	e.wantCalls(t, 4, "60s later")
}

func TestRedeemNeverBeyondExpiry(t *testing.T) {
	t.Run("expiry sooner than the bound", func(t *testing.T) {
		e := newRedeemEnv(t, nil)
		e.f.set(credentialAnswer(e.clock.Now().Add(45 * time.Second)))
		e.mustRedeem(t, "t")
		e.clock.Advance(14 * time.Second)
		e.mustRedeem(t, "t")
		e.wantCalls(t, 1, "14s later (expiry 45s, skew 30s)")
		e.clock.Advance(time.Second)
		e.mustRedeem(t, "t")
		e.wantCalls(t, 2, "15s later")
	})
	t.Run("about to expire: not cached", func(t *testing.T) {
		e := newRedeemEnv(t, nil)
		e.f.set(credentialAnswer(e.clock.Now().Add(20 * time.Second)))
		e.mustRedeem(t, "t")
		e.mustRedeem(t, "t")
		e.wantCalls(t, 2, "a credential within the skew of its expiry")
	})
	t.Run("configured bound", func(t *testing.T) {
		e := newRedeemEnv(t, func(cfg *mcpauth.Config) { cfg.MaxCredentialTTL = 5 * time.Second })
		e.mustRedeem(t, "t") // no expires_at: the bound alone
		e.clock.Advance(4 * time.Second)
		e.mustRedeem(t, "t")
		e.wantCalls(t, 1, "4s later")
		e.clock.Advance(time.Second)
		e.mustRedeem(t, "t")
		e.wantCalls(t, 2, "5s later")
	})
	t.Run("expired token: not served from the cache", func(t *testing.T) {
		e := newRedeemEnv(t, func(cfg *mcpauth.Config) { cfg.MaxCredentialTTL = time.Hour })
		e.mustRedeem(t, "t")
		e.clock.Advance(e.tok.Expiry.Sub(e.clock.Now()))
		e.f.set(errorAnswer(401, "invalid_token", "expired", ""))
		if _, err := e.redeem(t, "t"); err == nil {
			t.Fatal("expired token got a cached credential")
		}
		e.wantCalls(t, 2, "expired token")
	})
}

func TestRedeemDropsOnRevocation(t *testing.T) {
	for _, tc := range []struct {
		status        int
		name, errCode string
		markRevoked   bool
	}{
		{name: "invalid_token", status: 401, errCode: "invalid_token", markRevoked: true},
		{name: "access_denied", status: 403, errCode: "access_denied"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newRedeemEnv(t, func(cfg *mcpauth.Config) { cfg.MaxCredentialTTL = time.Hour })
			e.mustRedeem(t, "a")
			e.mustRedeem(t, "b")
			e.wantCalls(t, 2, "two tools")
			e.f.set(errorAnswer(tc.status, tc.errCode, "grant revoked", ""))
			_, err := e.redeem(t, "c")
			var re *mcpauth.RedeemError
			if !errors.As(err, &re) || re.Status != tc.status || re.Code != tc.errCode {
				t.Fatalf("Redeem = %v, want %d %s", err, tc.status, tc.errCode)
			}
			// Both cached credentials are gone: Lanyard is asked again.
			if _, err := e.redeem(t, "a"); err == nil {
				t.Error("tool a still served from the cache")
			}
			if _, err := e.redeem(t, "b"); err == nil {
				t.Error("tool b still served from the cache")
			}
			e.wantCalls(t, 5, "after the drop")
			_, err = e.c.Verify(t.Context(), e.tok.Raw)
			if got := errors.Is(err, mcpauth.ErrInvalidToken); got != tc.markRevoked {
				t.Errorf("Verify of the grant's token after %s: %v", tc.name, err)
			}
			if tc.markRevoked {
				// A token of another grant is unaffected.
				if _, err := e.c.Verify(t.Context(), e.w.Sign(token.Claims{GrantID: "grant-2"})); err != nil {
					t.Errorf("Verify of another grant: %v", err)
				}
			}
		})
	}
	t.Run("needs_relink drops the connector only", func(t *testing.T) {
		e := newRedeemEnv(t, func(cfg *mcpauth.Config) { cfg.MaxCredentialTTL = time.Hour })
		e.mustRedeem(t, "a")
		if _, err := e.c.Redeem(t.Context(), e.tok, "github", "a"); err != nil {
			t.Fatal(err)
		}
		e.f.set(errorAnswer(409, "needs_relink", "sign in to your mail again", ""))
		if _, err := e.redeem(t, "b"); err == nil {
			t.Fatal("want needs_relink")
		}
		e.f.set(credentialAnswer(time.Time{}))
		e.mustRedeem(t, "a")
		if _, err := e.c.Redeem(t.Context(), e.tok, "github", "a"); err != nil {
			t.Fatal(err)
		}
		e.wantCalls(t, 4, "imap asked again, github cached")
	})
}

// A redemption that started before a revocation was seen does not put its
// credential back into the cache.
func TestRedeemRaceWithDrop(t *testing.T) {
	e := newRedeemEnv(t, func(cfg *mcpauth.Config) { cfg.MaxCredentialTTL = time.Hour })
	gate := make(chan struct{})
	e.f.mu.Lock()
	e.f.gate = gate
	e.f.mu.Unlock()
	e.f.set(func(c redeemCall) (int, any) {
		if c.Tool == "slow" {
			return credentialAnswer(time.Time{})(c)
		}
		return errorAnswer(401, "invalid_token", "revoked", "")(c)
	})
	done := make(chan error)
	go func() { _, err := e.redeem(t, "slow"); done <- err }()
	waitFor(t, func() bool { return e.f.n() == 1 })
	e.f.mu.Lock()
	e.f.gate = nil
	e.f.mu.Unlock()
	if _, err := e.redeem(t, "fast"); err == nil {
		t.Fatal("want invalid_token")
	}
	close(gate)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	e.f.set(errorAnswer(401, "invalid_token", "revoked", ""))
	if _, err := e.redeem(t, "slow"); err == nil {
		t.Error("the credential redeemed before the revocation was cached after it")
	}
}

func TestRedeemSingleFlight(t *testing.T) {
	e := newRedeemEnv(t, nil)
	gate := make(chan struct{})
	e.f.gate = gate
	const n = 20
	var wg sync.WaitGroup
	creds := make([]*mcpauth.Credential, n)
	for i := range n {
		wg.Go(func() {
			var err error
			if creds[i], err = e.redeem(t, "t"); err != nil {
				t.Error(err)
			}
		})
	}
	// One caller gives up; the others still get the answer.
	ctx, cancel := context.WithCancel(t.Context())
	quit := make(chan error)
	go func() { _, err := e.c.Redeem(ctx, e.tok, lanyardtest.Connector, "t"); quit <- err }()
	waitFor(t, func() bool { return e.f.n() == 1 })
	time.Sleep(50 * time.Millisecond) // let every caller join the flight
	cancel()
	if err := <-quit; !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled caller: %v", err)
	}
	close(gate)
	wg.Wait()
	e.wantCalls(t, 1, "20 concurrent identical redemptions")
	creds[0].Fields["password"] = "mine"
	if creds[1].Field("password") != "imap-pass" {
		t.Error("callers share one Fields map")
	}
}

func TestRedeemErrors(t *testing.T) {
	e := newRedeemEnv(t, nil)
	tests := []struct {
		name       string
		status     int
		body       any
		want       mcpauth.RedeemError
		challenge  string
		resStatus  int
		wantInText string
	}{
		{"invalid_client", 401, map[string]string{"error": "invalid_client", "error_description": "client authentication failed"},
			mcpauth.RedeemError{Status: 401, Code: "invalid_client", Description: "client authentication failed"}, "", 502, "401 invalid_client"},
		{"invalid_token", 401, map[string]string{"error": "invalid_token", "error_description": "grant revoked"},
			mcpauth.RedeemError{Status: 401, Code: "invalid_token", Description: "grant revoked"},
			`Bearer resource_metadata="` + metadataURL + `", error="invalid_token", error_description="grant revoked"`, 401, "grant revoked"},
		{"insufficient_scope", 403, map[string]string{"error": "insufficient_scope", "error_description": "send_message needs mail.send", "scope": "mail.send"},
			mcpauth.RedeemError{Status: 403, Code: "insufficient_scope", Description: "send_message needs mail.send", Scope: "mail.send"},
			`Bearer resource_metadata="` + metadataURL + `", error="insufficient_scope", error_description="send_message needs mail.send", scope="mail.send"`, 403, `(scope "mail.send")`},
		{"access_denied", 403, map[string]string{"error": "access_denied", "error_description": "policy denies the tool"},
			mcpauth.RedeemError{Status: 403, Code: "access_denied", Description: "policy denies the tool"}, "", 403, "access_denied"},
		{"unauthorized_client", 403, map[string]string{"error": "unauthorized_client"},
			mcpauth.RedeemError{Status: 403, Code: "unauthorized_client"}, "", 403, "unauthorized_client"},
		{"needs_relink", 409, map[string]string{"error": "needs_relink", "error_description": "relink"},
			mcpauth.RedeemError{Status: 409, Code: "needs_relink", Description: "relink"}, "", 403, "needs_relink"},
		{"503", 503, map[string]string{"error": "temporarily_unavailable"},
			mcpauth.RedeemError{Status: 503, Code: "temporarily_unavailable"}, "", 503, "503"},
		{"502 without JSON", 502, "<html>bad gateway</html>",
			mcpauth.RedeemError{Status: 502, Code: "temporarily_unavailable"}, "", 503, "502"},
		{"description quoting the token", 401, map[string]string{"error": "invalid_token", "error_description": "bad token " + e.tok.Raw},
			mcpauth.RedeemError{Status: 401, Code: "invalid_token", Description: "bad token [token]"},
			`Bearer resource_metadata="` + metadataURL + `", error="invalid_token", error_description="bad token [token]"`, 401, "[token]"},
		{"200 without a credential", 200, map[string]string{"connection_id": "c"},
			mcpauth.RedeemError{Status: 502, Code: "server_error", Description: "Lanyard's answer is not a credential"}, "", 502, "not a credential"},
		{"200 for another connector", 200, map[string]any{"connection_id": "c", "connector": "github", "credential": map[string]any{}},
			mcpauth.RedeemError{Status: 502, Code: "server_error", Description: "Lanyard answered for another connector"}, "", 502, "another connector"},
		{"200 too large", 200, `{"connection_id":"c","connector":"imap","credential":{"x":"` + strings.Repeat("x", mcpauth.MaxResponseSize) + `"}}`,
			mcpauth.RedeemError{Status: 502, Code: "server_error", Description: "Lanyard's answer is too large"}, "", 502, "too large"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e.f.set(func(redeemCall) (int, any) { return tc.status, tc.body })
			_, err := e.redeem(t, "tool-"+tc.name) // a tool per case: nothing cached
			var re *mcpauth.RedeemError
			if !errors.As(err, &re) {
				t.Fatalf("Redeem = %v, want a *RedeemError", err)
			}
			if *re != tc.want {
				t.Errorf("RedeemError %+v, want %+v", *re, tc.want)
			}
			if got := re.Challenge(metadataURL); got != tc.challenge {
				t.Errorf("Challenge\n got %q\nwant %q", got, tc.challenge)
			}
			if got := re.ResourceStatus(); got != tc.resStatus {
				t.Errorf("ResourceStatus %d, want %d", got, tc.resStatus)
			}
			if strings.Contains(err.Error(), e.tok.Raw) || !strings.Contains(err.Error(), tc.wantInText) {
				t.Errorf("Error() = %q: want it to say %q and not contain the token", err, tc.wantInText)
			}
		})
	}
	t.Run("no client credentials", func(t *testing.T) {
		c := newClient(t, e.w, func(cfg *mcpauth.Config) { cfg.ClientID, cfg.ClientSecret = "", "" })
		if _, err := c.Redeem(t.Context(), e.tok, "imap", "t"); err == nil || !strings.Contains(err.Error(), "ClientID") {
			t.Errorf("Redeem without credentials: %v", err)
		}
	})
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("timed out")
		}
		time.Sleep(time.Millisecond)
	}
}

// TestNoCredentialCache: with the cache off every Redeem asks Lanyard.
func TestNoCredentialCache(t *testing.T) {
	e := newRedeemEnv(t, func(cfg *mcpauth.Config) { cfg.MaxCredentialTTL = mcpauth.NoCredentialCache })
	for range 3 {
		if _, err := e.c.Redeem(t.Context(), e.tok, "mail", "search"); err != nil {
			t.Fatal(err)
		}
	}
	e.f.mu.Lock()
	n := len(e.f.calls)
	e.f.mu.Unlock()
	if n != 3 {
		t.Errorf("%d redeem requests for 3 calls with the cache off, want 3", n)
	}
}

// TestRedeemRefusesUnverifiedToken: a Token's fields are exported and
// ContextWithToken takes any Token, so Redeem serves and sends only what
// Verify checked: a Token built by hand is refused, and one whose fields
// were changed after Verify is redeemed as what it was verified as — never
// another grant's cached credential.
func TestRedeemRefusesUnverifiedToken(t *testing.T) {
	e := newRedeemEnv(t, func(cfg *mcpauth.Config) { cfg.MaxCredentialTTL = time.Hour })
	e.mustRedeem(t, "t") // grant-1's credential is now cached
	e.wantCalls(t, 1, "first redemption")

	forged := &mcpauth.Token{Raw: "not-a-token", GrantID: e.tok.GrantID, Scopes: e.tok.Scopes,
		ClientID: e.tok.ClientID, Subject: e.tok.Subject, Expiry: e.tok.Expiry, IssuedAt: e.tok.IssuedAt, ID: e.tok.ID}
	ctx := mcpauth.ContextWithToken(t.Context(), forged)
	fromCtx, _ := mcpauth.TokenFromContext(ctx)
	cred, err := e.c.Redeem(ctx, fromCtx, lanyardtest.Connector, "t")
	if !errors.Is(err, mcpauth.ErrUnverifiedToken) || cred != nil {
		t.Errorf("Redeem of a hand-built token of grant-1 = %v, %v; want ErrUnverifiedToken", cred, err)
	}
	e.wantCalls(t, 1, "a hand-built token")

	// A verified token of grant-2, its fields then changed to grant-1's.
	other, err := e.c.Verify(t.Context(), e.w.Sign(token.Claims{GrantID: "grant-2", Scopes: []string{"mail.read"}}))
	if err != nil {
		t.Fatal(err)
	}
	changed := *other
	changed.GrantID = e.tok.GrantID
	changed.Raw = e.tok.Raw + "x"
	if _, err := e.c.Redeem(t.Context(), &changed, lanyardtest.Connector, "t"); err != nil {
		t.Fatal(err)
	}
	e.wantCalls(t, 2, "a verified grant-2 token relabelled grant-1 (must not hit grant-1's cache)")
	if got := e.f.last().Token; got != other.Raw {
		t.Errorf("sent a token other than the verified one")
	}

	// A token that another Client verified is not this Client's.
	c2 := newClient(t, e.w, func(cfg *mcpauth.Config) { cfg.Now = e.clock.Now })
	tok2, err := c2.Verify(t.Context(), e.w.Sign(token.Claims{GrantID: "grant-1", Scopes: []string{"mail.read"}}))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.c.Redeem(t.Context(), tok2, lanyardtest.Connector, "t"); !errors.Is(err, mcpauth.ErrUnverifiedToken) {
		t.Errorf("Redeem of another Client's token: %v, want ErrUnverifiedToken", err)
	}
	e.wantCalls(t, 2, "another Client's token")
	// The genuine token still hits its cache.
	e.mustRedeem(t, "t")
	e.wantCalls(t, 2, "grant-1's own token")
}

// TestRedeemDropRecordsPruned: the per-grant records of drops (which keep
// an in-flight redemption from caching what a drop removed) do not grow
// with every grant ever dropped.
func TestRedeemDropRecordsPruned(t *testing.T) {
	e := newRedeemEnv(t, func(cfg *mcpauth.Config) { cfg.MaxCredentialTTL = 5 * time.Minute })
	for i := range 1000 {
		e.c.Forget(fmt.Sprintf("grant-%d", i))
	}
	if n := e.c.DropRecords(); n != 1000 {
		t.Fatalf("%d drop records right after 1000 drops", n)
	}
	e.clock.Advance(5*time.Minute + time.Second)
	e.c.Forget("grant-last")
	if n := e.c.DropRecords(); n != 1 {
		t.Errorf("%d drop records after the retention, want 1", n)
	}

	// A redemption that started before its grant's drop does not cache
	// even when the drop's record was pruned while it was in flight.
	gate := make(chan struct{})
	e.f.mu.Lock()
	e.f.gate = gate
	e.f.mu.Unlock()
	done := make(chan error)
	go func() { _, err := e.redeem(t, "slow"); done <- err }()
	waitFor(t, func() bool { return e.f.n() == 1 })
	e.f.mu.Lock()
	e.f.gate = nil
	e.f.mu.Unlock()
	e.c.Forget("grant-1")
	e.clock.Advance(5*time.Minute + time.Second)
	e.c.Forget("grant-other")
	if n := e.c.DropRecords(); n != 1 {
		t.Errorf("%d drop records, want 1", n)
	}
	close(gate)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	e.mustRedeem(t, "slow")
	e.wantCalls(t, 2, "a redemption that started before a (since pruned) drop of its grant")
	// One that starts afterwards is cached.
	e.mustRedeem(t, "slow")
	e.wantCalls(t, 2, "cached after pruning")
}
