package gosdk_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	sdkauth "github.com/modelcontextprotocol/go-sdk/auth"
	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/lanyardhq/lanyard/mcpauth"
	"github.com/lanyardhq/lanyard/mcpauth/gosdk"
	"github.com/lanyardhq/lanyard/mcpauth/internal/lanyardtest"
)

// bearerTransport adds the agent's token to every request, as an MCP
// client does after signing in.
type bearerTransport struct{ token string }

func (b bearerTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer "+b.token)
	return http.DefaultTransport.RoundTrip(r)
}

type whoamiOut struct {
	Subject  string `json:"subject"`
	Grant    string `json:"grant"`
	Mailbox  string `json:"mailbox"`
	UserInfo string `json:"user_info"`
}

// mailServer is an MCP server on the SDK with one tool behind
// gosdk.RequireBearer, served with the SDK's streamable HTTP handler.
func mailServer(t *testing.T, auth *mcpauth.Client) *httptest.Server {
	t.Helper()
	server := mcp.NewServer(&mcp.Implementation{Name: "mail", Version: "1"}, nil)
	mcp.AddTool(server, &mcp.Tool{Name: "whoami", Description: "who the token is for"},
		func(ctx context.Context, req *mcp.CallToolRequest, _ struct{}) (*mcp.CallToolResult, whoamiOut, error) {
			tok, ok := gosdk.TokenFromRequest(req)
			if !ok {
				return nil, whoamiOut{}, errors.New("no token")
			}
			cred, err := auth.Redeem(ctx, tok, lanyardtest.Connector, "whoami")
			if err != nil {
				return nil, whoamiOut{}, err
			}
			return nil, whoamiOut{Subject: tok.Subject, Grant: tok.GrantID, Mailbox: cred.Field("username"),
				UserInfo: req.Extra.TokenInfo.UserID}, nil
		})
	mux := http.NewServeMux()
	mux.Handle(auth.MetadataPath(), auth.MetadataHandler())
	mux.Handle("/mcp", gosdk.RequireBearer(auth, "mail.read")(
		mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return server }, nil)))
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv
}

func newAuth(t *testing.T, w *lanyardtest.World) *mcpauth.Client {
	t.Helper()
	auth, err := mcpauth.New(t.Context(), mcpauth.Config{
		Issuer: w.Issuer, Resource: lanyardtest.ResourceURI, Scopes: []string{"mail.read"},
		ClientID: lanyardtest.ResourceID, ClientSecret: lanyardtest.ResourceSecret,
	})
	if err != nil {
		t.Fatal(err)
	}
	return auth
}

func redeemOK(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write([]byte(`{"connection_id":"conn-mail","connector":"imap","type":"basic","credential":{"username":"alice@mail","password":"p"}}`))
}

func TestToolCallWithRealToken(t *testing.T) {
	w := lanyardtest.New(t, lanyardtest.Options{Redeem: http.HandlerFunc(redeemOK)})
	auth := newAuth(t, w)
	srv := mailServer(t, auth)
	tok := w.Token("mail.read")

	client := mcp.NewClient(&mcp.Implementation{Name: "agent", Version: "1"}, nil)
	session, err := client.Connect(t.Context(), &mcp.StreamableClientTransport{
		Endpoint: srv.URL + "/mcp", HTTPClient: &http.Client{Transport: bearerTransport{tok.AccessToken}},
		DisableStandaloneSSE: true,
	}, nil)
	if err != nil {
		t.Fatalf("Connect: %v", err)
	}
	defer session.Close()
	res, err := session.CallTool(t.Context(), &mcp.CallToolParams{Name: "whoami", Arguments: map[string]any{}})
	if err != nil {
		t.Fatalf("CallTool: %v", err)
	}
	if res.IsError {
		t.Fatalf("tool error: %+v", res.Content)
	}
	out, _ := res.StructuredContent.(map[string]any)
	if out["subject"] != lanyardtest.UserID || out["grant"] == "" || out["mailbox"] != "alice@mail" || out["user_info"] != lanyardtest.UserID {
		t.Errorf("tool result %v", res.StructuredContent)
	}
}

func TestRequireBearerRefusals(t *testing.T) {
	w := lanyardtest.New(t, lanyardtest.Options{Redeem: http.HandlerFunc(redeemOK)})
	auth := newAuth(t, w)
	srv := mailServer(t, auth)
	meta := `resource_metadata="https://mail.example.com/.well-known/oauth-protected-resource/mcp"`
	for _, tc := range []struct {
		name, authz string
		status      int
		challenge   string
	}{
		{"no token", "", 401, "Bearer " + meta + `, scope="mail.read"`},
		{"bad token", "Bearer x.y.z", 401, "Bearer " + meta + `, error="invalid_token", error_description="malformed"`},
		{"no scope", "Bearer " + w.Token("mail.send").AccessToken, 403, "Bearer " + meta + `, error="insufficient_scope", error_description="the token lacks a required scope", scope="mail.read"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest(http.MethodPost, srv.URL+"/mcp", strings.NewReader(`{"jsonrpc":"2.0","id":1,"method":"initialize","params":{}}`))
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set("Accept", "application/json, text/event-stream")
			if tc.authz != "" {
				req.Header.Set("Authorization", tc.authz)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != tc.status || resp.Header.Get("WWW-Authenticate") != tc.challenge {
				t.Errorf("%d %q\nwant %d %q", resp.StatusCode, resp.Header.Get("WWW-Authenticate"), tc.status, tc.challenge)
			}
		})
	}
	// The client gives up at the 401 of Connect.
	client := mcp.NewClient(&mcp.Implementation{Name: "agent", Version: "1"}, nil)
	if _, err := client.Connect(t.Context(), &mcp.StreamableClientTransport{Endpoint: srv.URL + "/mcp", MaxRetries: -1}, nil); err == nil {
		t.Error("Connect without a token succeeded")
	}
}

func TestVerifier(t *testing.T) {
	w := lanyardtest.New(t, lanyardtest.Options{})
	auth := newAuth(t, w)
	raw := w.Token("mail.read").AccessToken
	ti, err := gosdk.Verifier(auth)(t.Context(), raw, nil)
	if err != nil {
		t.Fatal(err)
	}
	tok, ok := gosdk.FromTokenInfo(ti)
	if !ok || tok.Raw != raw || ti.Expiration != tok.Expiry || len(ti.Scopes) != 1 || ti.UserID != lanyardtest.UserID {
		t.Errorf("TokenInfo %+v, token %v", ti, tok)
	}
	if _, err := gosdk.Verifier(auth)(t.Context(), "x.y.z", nil); !errors.Is(err, sdkauth.ErrInvalidToken) || !errors.Is(err, mcpauth.ErrInvalidToken) {
		t.Errorf("bad token: %v", err)
	}
}
