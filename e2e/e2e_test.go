// Package e2e runs Lanyard end to end with real third-party clients: the
// official MCP TypeScript SDK (npm @modelcontextprotocol/sdk) as both the MCP
// server Lanyard protects and the MCP client that signs in, and headless
// Chromium (npm playwright-core driving Debian's /usr/bin/chromium) as the
// user's browser on Lanyard's real login and consent pages.
//
// The test builds cmd/lanyard, starts it in dev mode with a config that
// registers the MCP server (mcp-server.mjs), and runs client-flow.mjs once
// with a Client ID Metadata Document and once with dynamic registration.
// Node, Chromium and e2e/node_modules are installed by scripts/setup.sh
// (`make test`); without them the test is skipped, or fails under CI.
package e2e

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/lanyardhq/lanyard/internal/testenv"
)

const (
	username    = "alice"
	mcpClientID = "e2e-mcp"
	mcpName     = "E2E MCP server"
)

// clientFlowPackages are the npm packages mcp-server.mjs and
// client-flow.mjs need.
var clientFlowPackages = []string{"@modelcontextprotocol/sdk", "playwright-core", "express"}

// stack is one running Lanyard and MCP server.
type stack struct {
	dir      string // e2e/ (the Node project)
	issuer   string // http://127.0.0.1:PORT
	mcpURL   string // http://127.0.0.1:PORT/mcp
	password string
	tlsCert  string // PEM files for the client's CIMD https server
	tlsKey   string
	shots    string // screenshot directory
}

func TestMCPAuthorization(t *testing.T) {
	dir, root := e2eDirs(t)
	prerequisites(t, dir, clientFlowPackages...)
	s := start(t, root, dir)

	t.Run("Discovery", func(t *testing.T) { s.checkDiscovery(t) })
	t.Run("NoToken", func(t *testing.T) { s.checkUnauthenticated(t, "") })
	t.Run("InvalidToken", func(t *testing.T) { s.checkUnauthenticated(t, "not-a-token") })
	t.Run("CIMD", func(t *testing.T) { s.runClient(t, "cimd") })
	t.Run("DCR", func(t *testing.T) { s.runClient(t, "dcr") })
	t.Run("Deny", func(t *testing.T) {
		r := s.runFlow(t, "dcr", "deny")
		if !r.Denied || r.Error != "access_denied" {
			t.Errorf("after Deny: denied=%v error=%q, want true, access_denied", r.Denied, r.Error)
		}
	})
}

// start builds and starts Lanyard and the MCP server; both are killed when
// the test ends, and their output is shown if it failed.
func start(t *testing.T, root, dir string) *stack {
	t.Helper()
	tmp := t.TempDir()
	bin := lanyardBin(t, root, tmp)
	ca, cert, key := writeTLS(t, tmp)
	lanyardPort, mcpPort := freePorts(t)
	s := &stack{
		dir:      dir,
		issuer:   "http://" + testenv.Addr(lanyardPort),
		mcpURL:   "http://" + testenv.Addr(mcpPort) + "/mcp",
		password: randomHex(t, 12),
		tlsCert:  cert,
		tlsKey:   key,
		shots:    artifactDir(tmp),
	}
	secret := randomHex(t, 32)

	cfgPath := writeConfig(t, tmp, fmt.Sprintf(`# written by e2e_test.go
resources:
  - id: %s
    uri: %s
    name: %s
    scopes: [mcp:tools]
    client_secret: ${E2E_MCP_SECRET}
oauth:
  registration: {enabled: true}
`, mcpClientID, s.mcpURL, mcpName))

	// A clean environment: no Vault from `make test` (dev mode would use it),
	// and the test CA as the only trusted root so Lanyard can fetch the
	// client's metadata document from its https loopback server.
	testenv.Start(t, lanyardDev(bin, lanyardPort, filepath.Join(tmp, "data"), cfgPath,
		"LANYARD_BOOTSTRAP_USER="+username,
		"LANYARD_BOOTSTRAP_PASSWORD="+s.password,
		"E2E_MCP_SECRET="+secret,
		"SSL_CERT_FILE="+ca,
	))
	waitReady(t, lanyardPort, s.issuer+"/.well-known/oauth-authorization-server")

	mcp := exec.Command("node", "mcp-server.mjs")
	mcp.Dir = dir
	mcp.Env = append(baseEnv(),
		"LANYARD_ISSUER="+s.issuer,
		fmt.Sprintf("MCP_PORT=%d", mcpPort),
		"E2E_MCP_CLIENT_ID="+mcpClientID,
		"E2E_MCP_SECRET="+secret,
	)
	testenv.Start(t, mcp)
	testenv.WaitTCP(t, testenv.Addr(mcpPort), startTimeout)
	return s
}

func getJSON(t *testing.T, url string, v any) {
	t.Helper()
	c := &http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: HTTP %d: %s", url, resp.StatusCode, body)
	}
	if err := json.Unmarshal(body, v); err != nil {
		t.Fatalf("GET %s: %v: %s", url, err, body)
	}
}

// checkDiscovery checks the metadata fields the SDK client relies on.
func (s *stack) checkDiscovery(t *testing.T) {
	var md map[string]any
	getJSON(t, s.issuer+"/.well-known/oauth-authorization-server", &md)
	if md["issuer"] != s.issuer {
		t.Errorf("issuer = %v, want %s", md["issuer"], s.issuer)
	}
	for _, k := range []string{"authorization_endpoint", "token_endpoint", "registration_endpoint", "introspection_endpoint", "revocation_endpoint", "jwks_uri", "device_authorization_endpoint"} {
		if v, _ := md[k].(string); !strings.HasPrefix(v, s.issuer+"/") {
			t.Errorf("%s = %v, want a URL under %s", k, md[k], s.issuer)
		}
	}
	if md["client_id_metadata_document_supported"] != true {
		t.Errorf("client_id_metadata_document_supported = %v, want true", md["client_id_metadata_document_supported"])
	}
	if got, _ := json.Marshal(md["code_challenge_methods_supported"]); string(got) != `["S256"]` {
		t.Errorf("code_challenge_methods_supported = %s, want [\"S256\"]", got)
	}
	if md["authorization_response_iss_parameter_supported"] != true {
		t.Errorf("authorization_response_iss_parameter_supported = %v, want true", md["authorization_response_iss_parameter_supported"])
	}
}

// checkUnauthenticated calls the MCP server with no token (or a bad one)
// and expects 401 pointing at its RFC 9728 metadata, which names Lanyard.
func (s *stack) checkUnauthenticated(t *testing.T, token string) {
	body := `{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"e2e","version":"0"}}}`
	req, err := http.NewRequest(http.MethodPost, s.mcpURL, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json, text/event-stream")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	c := &http.Client{Timeout: 15 * time.Second}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	respBody, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("POST %s: HTTP %d, want 401: %s", s.mcpURL, resp.StatusCode, respBody)
	}
	prmURL := strings.TrimSuffix(s.mcpURL, "/mcp") + "/.well-known/oauth-protected-resource/mcp"
	www := resp.Header.Get("WWW-Authenticate")
	if !strings.HasPrefix(www, "Bearer ") || !strings.Contains(www, `resource_metadata="`+prmURL+`"`) {
		t.Fatalf("WWW-Authenticate = %q, want Bearer with resource_metadata=%q", www, prmURL)
	}
	if token != "" && !strings.Contains(www, `error="invalid_token"`) {
		t.Errorf("WWW-Authenticate = %q, want error=\"invalid_token\" for a bad token", www)
	}
	var prm struct {
		Resource             string   `json:"resource"`
		AuthorizationServers []string `json:"authorization_servers"`
		ScopesSupported      []string `json:"scopes_supported"`
	}
	getJSON(t, prmURL, &prm)
	if prm.Resource != s.mcpURL || !slices.Equal(prm.AuthorizationServers, []string{s.issuer}) {
		t.Errorf("protected-resource metadata = %+v, want resource %s and authorization_servers [%s]", prm, s.mcpURL, s.issuer)
	}
}

// flowResult is the RESULT line of client-flow.mjs.
type flowResult struct {
	OK                 bool     `json:"ok"`
	Denied             bool     `json:"denied"`
	Error              string   `json:"error"`
	Mode               string   `json:"mode"`
	Issuer             string   `json:"issuer"`
	ClientID           string   `json:"client_id"`
	RegisteredClientID string   `json:"registered_client_id"`
	CIMDFetches        []string `json:"cimd_fetches"`
	TokenScope         string   `json:"token_scope"`
	AccessToken        struct {
		Opaque bool           `json:"opaque"`
		Header map[string]any `json:"header"`
		Claims map[string]any `json:"claims"`
	} `json:"access_token"`
	Whoami struct {
		Sub      string   `json:"sub"`
		Username string   `json:"username"`
		ClientID string   `json:"client_id"`
		Scopes   []string `json:"scopes"`
		Aud      any      `json:"aud"`
	} `json:"whoami"`
	Screenshots []string `json:"screenshots"`
}

// runFlow runs `node client-flow.mjs args...` and returns its RESULT; it
// fails the test with the script's reason and log otherwise.
func (s *stack) runFlow(t *testing.T, args ...string) flowResult {
	t.Helper()
	var r flowResult
	runScript(t, s.dir, []string{
		"MCP_URL=" + s.mcpURL,
		"LANYARD_ISSUER=" + s.issuer,
		"E2E_USERNAME=" + username,
		"E2E_PASSWORD=" + s.password,
		"E2E_TLS_CERT=" + s.tlsCert,
		"E2E_TLS_KEY=" + s.tlsKey,
		"E2E_SCREENSHOT_DIR=" + s.shots,
	}, &r, "client-flow.mjs", args...)
	if !r.OK || r.Mode != args[0] {
		t.Fatalf("result ok=%v mode=%q, want true %q", r.OK, r.Mode, args[0])
	}
	return r
}

// runClient runs the flow in mode (cimd or dcr) and checks what the MCP tool
// saw.
func (s *stack) runClient(t *testing.T, mode string) {
	r := s.runFlow(t, mode)
	switch mode {
	case "cimd":
		if !strings.HasPrefix(r.ClientID, "https://127.0.0.1:") || !strings.HasSuffix(r.ClientID, "/oauth/client-metadata.json") {
			t.Errorf("client_id = %q, want the URL of the client's metadata document", r.ClientID)
		}
		if len(r.CIMDFetches) == 0 {
			t.Errorf("Lanyard never fetched the client metadata document")
		}
	case "dcr":
		if r.ClientID == "" || strings.Contains(r.ClientID, "://") || r.RegisteredClientID != r.ClientID {
			t.Errorf("client_id = %q (registered %q), want the id Lanyard assigned at registration", r.ClientID, r.RegisteredClientID)
		}
	}
	w := r.Whoami
	if w.ClientID != r.ClientID {
		t.Errorf("whoami client_id = %q, want %q", w.ClientID, r.ClientID)
	}
	if w.Sub == "" {
		t.Errorf("whoami sub is empty")
	}
	if w.Username != "" && w.Username != username {
		t.Errorf("whoami username = %q, want %q", w.Username, username)
	}
	if !slices.Contains(w.Scopes, "mcp:tools") {
		t.Errorf("whoami scopes = %v, want mcp:tools", w.Scopes)
	}
	if !audienceIs(w.Aud, s.mcpURL) {
		t.Errorf("introspected aud = %v, want %s", w.Aud, s.mcpURL)
	}
	at := r.AccessToken
	if at.Opaque {
		t.Errorf("access token is not a JWT")
	} else {
		if at.Header["typ"] != "at+jwt" {
			t.Errorf("access token typ = %v, want at+jwt", at.Header["typ"])
		}
		if at.Claims["iss"] != s.issuer || !audienceIs(at.Claims["aud"], s.mcpURL) || at.Claims["client_id"] != r.ClientID {
			t.Errorf("access token claims iss=%v aud=%v client_id=%v, want %s, %s, %s",
				at.Claims["iss"], at.Claims["aud"], at.Claims["client_id"], s.issuer, s.mcpURL, r.ClientID)
		}
		if at.Claims["sub"] != w.Sub {
			t.Errorf("access token sub = %v, introspection sub = %q", at.Claims["sub"], w.Sub)
		}
	}
}

// audienceIs reports whether aud (a string or a one-element list) is exactly want.
func audienceIs(aud any, want string) bool {
	switch a := aud.(type) {
	case string:
		return a == want
	case []any:
		return len(a) == 1 && a[0] == want
	}
	return false
}

// writeTLS writes a throwaway CA and a certificate for 127.0.0.1 signed by
// it; it returns the paths of the CA certificate, the leaf certificate and
// the leaf's key (PEM).
func writeTLS(t *testing.T, dir string) (caPath, certPath, keyPath string) {
	t.Helper()
	now := time.Now()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "Lanyard e2e test CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	leafKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	leafTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "127.0.0.1"},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(24 * time.Hour),
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		DNSNames:     []string{"localhost"},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	leafDER, err := x509.CreateCertificate(rand.Reader, leafTmpl, caCert, &leafKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(leafKey)
	if err != nil {
		t.Fatal(err)
	}
	write := func(name, typ string, der []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	return write("ca.pem", "CERTIFICATE", caDER), write("cert.pem", "CERTIFICATE", leafDER), write("key.pem", "PRIVATE KEY", keyDER)
}
