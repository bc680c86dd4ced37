package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	imapclient "github.com/emersion/go-imap/client"
	"github.com/modelcontextprotocol/go-sdk/auth"
	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/lanyardhq/lanyard/broker/secrettest"
	"github.com/lanyardhq/lanyard/broker/token"
	"github.com/lanyardhq/lanyard/internal/safehttp"
	"github.com/lanyardhq/lanyard/internal/testenv"
	"github.com/lanyardhq/lanyard/mcpauth"
	"github.com/lanyardhq/lanyard/mcpauth/gosdk"
)

// fakeLanyard is Lanyard's discovery, JWKS and /v1/redeem: tokens are
// signed by Lanyard's token package; the redemption answer is whatever the
// test sets.
type fakeLanyard struct {
	srv *httptest.Server
	kr  *token.Keyring

	mu      sync.Mutex
	answer  func(tool string) (int, any)
	redeems []string // tool names, in order
}

func newFakeLanyard(t *testing.T, clientID, secret string) *fakeLanyard {
	t.Helper()
	f := &fakeLanyard{}
	mux := http.NewServeMux()
	f.srv = httptest.NewServer(mux)
	t.Cleanup(f.srv.Close)
	kr, err := token.Open(context.Background(), token.Options{Issuer: f.srv.URL, Secrets: secrettest.Sealed(t)})
	if err != nil {
		t.Fatal(err)
	}
	f.kr = kr
	mux.HandleFunc("GET /.well-known/oauth-authorization-server", func(w http.ResponseWriter, _ *http.Request) {
		_ = json.NewEncoder(w).Encode(map[string]string{"issuer": f.srv.URL, "jwks_uri": f.srv.URL + "/jwks"})
	})
	mux.HandleFunc("GET /jwks", func(w http.ResponseWriter, _ *http.Request) {
		b, _ := kr.PublicJWKS()
		_, _ = w.Write(b)
	})
	mux.HandleFunc("POST /v1/redeem", func(w http.ResponseWriter, r *http.Request) {
		id, pw, ok := r.BasicAuth()
		var req struct{ Token, Connector, Tool string }
		_ = json.NewDecoder(r.Body).Decode(&req)
		w.Header().Set("Content-Type", "application/json")
		if !ok || id != clientID || pw != secret {
			w.WriteHeader(http.StatusUnauthorized)
			_, _ = io.WriteString(w, `{"error":"invalid_client"}`)
			return
		}
		if _, err := kr.Verify(r.Context(), req.Token); err != nil || req.Connector != "mail" {
			w.WriteHeader(http.StatusBadRequest)
			_, _ = io.WriteString(w, `{"error":"invalid_request"}`)
			return
		}
		f.mu.Lock()
		f.redeems = append(f.redeems, req.Tool)
		answer := f.answer
		f.mu.Unlock()
		status, body := answer(req.Tool)
		w.WriteHeader(status)
		_ = json.NewEncoder(w).Encode(body)
	})
	return f
}

func (f *fakeLanyard) set(answer func(tool string) (int, any)) {
	f.mu.Lock()
	f.answer = answer
	f.mu.Unlock()
}

func (f *fakeLanyard) tools() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.redeems)
}

func (f *fakeLanyard) token(t *testing.T, aud, grant string) string {
	t.Helper()
	s, err := f.kr.Sign(context.Background(), token.Claims{Subject: "user-1", Audience: aud, ClientID: "agent-1",
		Scopes: []string{"mail.read"}, GrantID: grant, ExpiresAt: time.Now().Add(30 * time.Minute)})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// recorder keeps the status and WWW-Authenticate of every answer.
type recorder struct {
	token string
	mu    sync.Mutex
	seen  []string
}

func (r *recorder) RoundTrip(req *http.Request) (*http.Response, error) {
	req = req.Clone(req.Context())
	req.Header.Set("Authorization", "Bearer "+r.token)
	resp, err := http.DefaultTransport.RoundTrip(req)
	if err == nil {
		r.mu.Lock()
		r.seen = append(r.seen, fmt.Sprintf("%s %d %s", req.Method, resp.StatusCode, resp.Header.Get("WWW-Authenticate")))
		r.mu.Unlock()
	}
	return resp, err
}

func (r *recorder) last() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i := len(r.seen) - 1; i >= 0; i-- {
		if strings.HasPrefix(r.seen[i], "POST ") {
			return r.seen[i]
		}
	}
	return ""
}

func TestServer(t *testing.T) {
	if testing.Short() {
		t.Skip("uses a real dovecot")
	}
	user, pw := "bob@mail.test", "pw-"+strconv.FormatInt(time.Now().UnixNano(), 36)
	dc := testenv.StartDovecot(t, map[string]string{user: pw})
	appendMessage(t, dc.Addr, user, pw, "Hello from the test", "multipart")

	secret := strings.Repeat("s", 40)
	lan := newFakeLanyard(t, "mail-mcp", secret)
	host, port, _ := net.SplitHostPort(dc.TLSAddr)
	portNum, _ := strconv.Atoi(port)
	okAnswer := func(string) (int, any) {
		return http.StatusOK, map[string]any{"connection_id": "conn-1", "connector": "mail", "type": "basic",
			"credential": map[string]any{"username": user, "password": pw, "host": host, "port": portNum, "tls": "implicit"}}
	}
	lan.set(okAnswer)

	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	resource := "http://" + l.Addr().String() + "/mcp"
	var logs strings.Builder
	var logMu sync.Mutex
	log := slog.New(slog.NewTextHandler(writerFunc(func(p []byte) (int, error) {
		logMu.Lock()
		defer logMu.Unlock()
		return logs.Write(p)
	}), nil))
	opts, err := parseFlags([]string{"--issuer", lan.srv.URL, "--resource", resource, "--imap-ca", dc.CACert, "--allow-loopback-imap"},
		func(k string) string {
			if k == secretEnv {
				return secret
			}
			return ""
		}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	h, err := newHandler(context.Background(), opts, log, nil)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { _ = srv.Close() })

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	connect := func(grant string) (*mcp.ClientSession, *recorder) {
		rec := &recorder{token: lan.token(t, resource, grant)}
		c := mcp.NewClient(&mcp.Implementation{Name: "test", Version: "0"}, nil)
		s, err := c.Connect(ctx, &mcp.StreamableClientTransport{Endpoint: resource, HTTPClient: &http.Client{Transport: rec},
			MaxRetries: -1, DisableStandaloneSSE: true}, nil)
		if err != nil {
			t.Fatalf("connect: %v", err)
		}
		t.Cleanup(func() { _ = s.Close() })
		return s, rec
	}
	call := func(s *mcp.ClientSession, tool string, args map[string]any) (*mcp.CallToolResult, map[string]any, error) {
		res, err := s.CallTool(ctx, &mcp.CallToolParams{Name: tool, Arguments: args})
		if err != nil {
			return nil, nil, err
		}
		var out map[string]any
		if b, _ := json.Marshal(res.StructuredContent); len(b) > 0 {
			_ = json.Unmarshal(b, &out)
		}
		return res, out, nil
	}

	s, rec := connect("grant-1")
	t.Run("Tools", func(t *testing.T) {
		res, out, err := call(s, toolListMailboxes, nil)
		if err != nil || res.IsError {
			t.Fatalf("list_mailboxes: %v %+v", err, res)
		}
		if !strings.Contains(fmt.Sprint(out["mailboxes"]), "INBOX") {
			t.Errorf("list_mailboxes = %v, want INBOX", out)
		}
		res, out, err = call(s, toolSearchMessages, map[string]any{"subject": "hello FROM"})
		if err != nil || res.IsError {
			t.Fatalf("search_messages: %v %+v", err, res)
		}
		msgs, _ := out["messages"].([]any)
		if len(msgs) != 1 {
			t.Fatalf("search_messages = %v, want one message", out)
		}
		m := msgs[0].(map[string]any)
		if m["subject"] != "Hello from the test" {
			t.Errorf("subject %v", m["subject"])
		}
		res, out, err = call(s, toolReadMessage, map[string]any{"mailbox": "INBOX", "uid": m["uid"]})
		if err != nil || res.IsError {
			t.Fatalf("read_message: %v %+v", err, res)
		}
		if text, _ := out["text"].(string); !strings.Contains(text, "plain part é") || strings.Contains(text, "<b>") {
			t.Errorf("read_message text = %q, want the decoded plain part", out["text"])
		}
		if res, _, _ = call(s, toolSearchMessages, map[string]any{"limit": 500}); res == nil || !res.IsError {
			t.Errorf("limit 500 accepted")
		}
		if res, _, _ = call(s, toolReadMessage, map[string]any{"mailbox": "INBOX", "uid": 999}); res == nil || !res.IsError {
			t.Errorf("a missing UID is not a tool error")
		}
		if got, want := lan.tools(), []string{toolListMailboxes, toolSearchMessages, toolReadMessage, toolReadMessage}; !slices.Equal(got, want) {
			t.Errorf("redeemed for %v, want %v (every call redeemed; bad input never)", got, want)
		}
	})

	t.Run("Refusals", func(t *testing.T) {
		lan.set(func(string) (int, any) {
			return http.StatusForbidden, map[string]string{"error": "access_denied", "error_description": "no mail account in this grant"}
		})
		res, _, err := call(s, toolSearchMessages, nil)
		if err != nil || !res.IsError || !strings.Contains(fmt.Sprint(res.Content[0]), "no mail account in this grant") {
			t.Errorf("access_denied: %v %+v, want a tool error saying why", err, res)
		}
		if got := rec.last(); !strings.HasPrefix(got, "POST 200") {
			t.Errorf("access_denied answered %q, want 200 with the tool error", got)
		}
		lan.set(func(string) (int, any) {
			return http.StatusForbidden, map[string]string{"error": "insufficient_scope", "scope": "mail.read mail.search"}
		})
		if _, _, err := call(s, toolSearchMessages, nil); err == nil {
			t.Errorf("insufficient_scope: the call succeeded")
		}
		if got := rec.last(); !strings.HasPrefix(got, "POST 403 ") || !strings.Contains(got, `error="insufficient_scope"`) || !strings.Contains(got, `scope="mail.read mail.search"`) {
			t.Errorf("insufficient_scope answered %q, want 403 with the scope challenge", got)
		}
	})

	t.Run("Revoked", func(t *testing.T) {
		lan.set(okAnswer)
		s2, rec2 := connect("grant-2")
		if res, _, err := call(s2, toolListMailboxes, nil); err != nil || res.IsError {
			t.Fatalf("before revoking: %v %+v", err, res)
		}
		lan.set(func(string) (int, any) {
			return http.StatusUnauthorized, map[string]string{"error": "invalid_token", "error_description": "the grant was revoked"}
		})
		if _, _, err := call(s2, toolListMailboxes, nil); err == nil {
			t.Errorf("the call after revoking succeeded")
		}
		want := `Bearer resource_metadata="http://` + l.Addr().String() + `/.well-known/oauth-protected-resource/mcp", error="invalid_token"`
		if got := rec2.last(); !strings.HasPrefix(got, "POST 401 "+want) {
			t.Errorf("the call after revoking answered %q, want 401 %s", got, want)
		}
		// Every later request with the grant's token: 401 at once.
		n := len(lan.tools())
		lan.set(okAnswer)
		if _, _, err := call(s2, toolListMailboxes, nil); err == nil {
			t.Errorf("a later call succeeded")
		}
		if got := rec2.last(); !strings.HasPrefix(got, "POST 401 ") {
			t.Errorf("a later call answered %q, want 401", got)
		}
		if len(lan.tools()) != n {
			t.Errorf("a token of a revoked grant was redeemed again")
		}
		// Another grant is unaffected (a new session: the SDK client closes
		// one after an HTTP error).
		s3, _ := connect("grant-3")
		if res, _, err := call(s3, toolListMailboxes, nil); err != nil || res.IsError {
			t.Errorf("another grant's session: %v %+v", err, res)
		}
	})

	logMu.Lock()
	defer logMu.Unlock()
	if strings.Contains(logs.String(), pw) {
		t.Errorf("the log contains the IMAP password")
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

func appendMessage(t *testing.T, addr, user, pw, subject, _ string) {
	t.Helper()
	c, err := imapclient.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Logout()
	if err := c.Login(user, pw); err != nil {
		t.Fatal(err)
	}
	msg := "From: Alice <alice@example.test>\r\nTo: " + user + "\r\nSubject: " + subject + "\r\nMIME-Version: 1.0\r\n" +
		"Content-Type: multipart/alternative; boundary=b1\r\n\r\n" +
		"--b1\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nThe plain part =C3=A9\r\n" +
		"--b1\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<b>The HTML part</b>\r\n--b1--\r\n"
	if err := c.Append("INBOX", nil, time.Now(), strings.NewReader(msg)); err != nil {
		t.Fatal(err)
	}
}

func TestBodyText(t *testing.T) {
	for _, tc := range []struct{ name, raw, want string }{
		{"plain", "Subject: x\r\n\r\nhello\r\n", "hello"},
		{"base64", "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\naGVs\r\nbG8=\r\n", "hello"},
		{"latin1", "Content-Type: text/plain; charset=iso-8859-1\r\n\r\ncaf\xe9\r\n", "café"},
		{"html only", "Content-Type: text/html\r\n\r\n<p>hi <b>there</b></p>", "hi there"},
		{"nested", "Content-Type: multipart/mixed; boundary=o\r\n\r\n--o\r\nContent-Type: multipart/alternative; boundary=i\r\n\r\n--i\r\nContent-Type: text/html\r\n\r\n<i>x</i>\r\n--i\r\nContent-Type: text/plain\r\n\r\ninner plain\r\n--i--\r\n--o--\r\n", "inner plain"},
	} {
		got, trunc := bodyText([]byte(tc.raw))
		if strings.TrimSpace(got) != tc.want || trunc {
			t.Errorf("%s: %q (truncated %v), want %q", tc.name, got, trunc, tc.want)
		}
	}
	long := "Subject: x\r\n\r\n" + strings.Repeat("a", maxTextChars+10)
	if got, trunc := bodyText([]byte(long)); !trunc || len([]rune(got)) != maxTextChars {
		t.Errorf("long body: %d runes, truncated %v", len([]rune(got)), trunc)
	}
}

func TestAccountFromFields(t *testing.T) {
	a, err := accountFromFields(map[string]any{"username": "u", "password": "p", "host": "h", "port": float64(993), "tls": "starttls"})
	if err != nil || a.Port != 993 || a.TLS != tlsStartTLS {
		t.Fatalf("%+v %v", a, err)
	}
	if strings.Contains(a.String(), "p ") || strings.Contains(fmt.Sprintf("%v", a), `"p"`) {
		t.Errorf("String shows the password: %s", a)
	}
	_, err = accountFromFields(map[string]any{"username": "u", "password": "secret-pw", "host": "h", "port": 70000, "tls": "ssl"})
	if err == nil || strings.Contains(err.Error(), "secret-pw") || !strings.Contains(err.Error(), "port") || !strings.Contains(err.Error(), "tls") {
		t.Errorf("bad fields: %v", err)
	}
}

// TestIMAPAddressGuard: the mail server's host comes from the credential
// (the user may have typed it), so sessions dial only public addresses —
// loopback only with --allow-loopback-imap — and the agent learns nothing
// but "mail server unreachable".
func TestIMAPAddressGuard(t *testing.T) {
	// A listener on loopback that counts connections: the guard must refuse
	// before connecting.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	var mu sync.Mutex
	accepted := 0
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			accepted++
			mu.Unlock()
			_ = c.Close()
		}
	}()
	_, lport, _ := net.SplitHostPort(l.Addr().String())
	loPort, _ := strconv.Atoi(lport)

	d := imapDialer{Timeout: 3 * time.Second}
	for _, tc := range []struct {
		host string
		port int
	}{
		{"127.0.0.1", loPort},
		{"localhost", loPort},
		{"::1", loPort},
		{"10.0.0.1", 993},
		{"192.168.1.1", 993},
		{"169.254.169.254", 80},
		{"::ffff:169.254.169.254", 80},
		{"fd00::1", 993},
		{"0.0.0.0", loPort},
	} {
		a := imapAccount{Username: "u", Password: "secret-pw", Host: tc.host, Port: tc.port, TLS: tlsPlaintext}
		err := d.session(t.Context(), a, func(*imapclient.Client) error { return nil })
		var me *mailServerError
		if !errors.Is(err, safehttp.ErrBlockedAddress) || !errors.As(err, &me) {
			t.Errorf("%s: session error %v, want a refused address", tc.host, err)
			continue
		}
		if err.Error() != msgUnreachable {
			t.Errorf("%s: error text %q, want only %q", tc.host, err, msgUnreachable)
		}
		if strings.Contains(me.Detail(), "secret-pw") {
			t.Errorf("%s: detail contains the password: %s", tc.host, me.Detail())
		}
	}
	mu.Lock()
	if accepted != 0 {
		t.Errorf("%d connections reached the loopback listener without --allow-loopback-imap", accepted)
	}
	mu.Unlock()

	// With the flag, loopback is dialled (the listener hangs up: a greeting
	// error, still only "unreachable"); private and link-local stay refused.
	d.AllowLoopback = true
	a := imapAccount{Username: "u", Password: "p", Host: "127.0.0.1", Port: loPort, TLS: tlsPlaintext}
	err = d.session(t.Context(), a, func(*imapclient.Client) error { return nil })
	if err == nil || errors.Is(err, safehttp.ErrBlockedAddress) || err.Error() != msgUnreachable {
		t.Errorf("loopback with AllowLoopback: %v, want a dialled connection that failed later", err)
	}
	waitUntil(t, func() bool { mu.Lock(); defer mu.Unlock(); return accepted == 1 })
	for _, host := range []string{"10.0.0.1", "169.254.169.254"} {
		a := imapAccount{Username: "u", Password: "p", Host: host, Port: 993, TLS: tlsImplicit}
		if err := d.session(t.Context(), a, func(*imapclient.Client) error { return nil }); !errors.Is(err, safehttp.ErrBlockedAddress) {
			t.Errorf("%s with AllowLoopback: %v, want refused", host, err)
		}
	}

	// The flag is off by default.
	opts, err := parseFlags([]string{"--issuer", "http://127.0.0.1:1"}, func(k string) string {
		if k == secretEnv {
			return "s"
		}
		return ""
	}, io.Discard)
	if err != nil || opts.allowLoopbackIMAP {
		t.Errorf("parseFlags: %v, allowLoopbackIMAP %v (want off by default)", err, opts.allowLoopbackIMAP)
	}
	if opts, err = parseFlags([]string{"--issuer", "http://127.0.0.1:1", "--allow-loopback-imap"}, func(string) string { return "s" }, io.Discard); err != nil || !opts.allowLoopbackIMAP {
		t.Errorf("--allow-loopback-imap: %v %v", err, opts.allowLoopbackIMAP)
	}
}

// TestToolUnreachable: a tool call whose credential names a metadata or
// private address fails with "mail server unreachable" and nothing more;
// the log has the details but not the password.
func TestToolUnreachable(t *testing.T) {
	var logs strings.Builder
	var logMu sync.Mutex
	log := slog.New(slog.NewTextHandler(writerFunc(func(p []byte) (int, error) {
		logMu.Lock()
		defer logMu.Unlock()
		return logs.Write(p)
	}), nil))
	for _, host := range []string{"169.254.169.254", "10.0.0.1", "127.0.0.1"} {
		red := redeemerFunc(func(context.Context, *mcpauth.Token, string, string) (*mcpauth.Credential, error) {
			return &mcpauth.Credential{ConnectionID: "c", Connector: "mail", Type: "basic", Fields: map[string]any{
				"username": "bob", "password": "hunter2-secret", "host": host, "port": float64(993), "tls": "implicit"}}, nil
		})
		s := &mailServer{auth: red, connector: "mail", imap: imapDialer{Timeout: 3 * time.Second}, gate: newAuthGate("http://x/meta"), log: log}
		req := &mcp.CallToolRequest{Extra: &mcp.RequestExtra{TokenInfo: &auth.TokenInfo{Extra: map[string]any{gosdk.ExtraKey: &mcpauth.Token{GrantID: "g"}}}}}
		_, _, err := s.listMailboxes(t.Context(), req, listIn{})
		if err == nil || err.Error() != msgUnreachable {
			t.Errorf("%s: tool error %v, want exactly %q", host, err, msgUnreachable)
		}
	}
	logMu.Lock()
	defer logMu.Unlock()
	if !strings.Contains(logs.String(), "169.254.169.254") || !strings.Contains(logs.String(), "not allowed") {
		t.Errorf("the log does not say what was refused:\n%s", logs.String())
	}
	if strings.Contains(logs.String(), "hunter2-secret") {
		t.Errorf("the log contains the password")
	}
}

type redeemerFunc func(context.Context, *mcpauth.Token, string, string) (*mcpauth.Credential, error)

func (f redeemerFunc) Redeem(ctx context.Context, tok *mcpauth.Token, connector, tool string) (*mcpauth.Credential, error) {
	return f(ctx, tok, connector, tool)
}

func waitUntil(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("timed out")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestParseFlags(t *testing.T) {
	env := func(string) string { return "" }
	if _, err := parseFlags([]string{"--issuer", "http://127.0.0.1:1"}, env, io.Discard); err == nil || !strings.Contains(err.Error(), secretEnv) {
		t.Errorf("no secret: %v", err)
	}
	if _, err := parseFlags(nil, env, io.Discard); err == nil || !strings.Contains(err.Error(), "--issuer") {
		t.Errorf("no issuer: %v", err)
	}
}
