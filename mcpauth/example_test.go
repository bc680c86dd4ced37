package mcpauth_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"

	"github.com/lanyardhq/lanyard/mcpauth"
	"github.com/lanyardhq/lanyard/mcpauth/internal/lanyardtest"
)

// An MCP server on plain net/http: it publishes its protected resource
// metadata, lets only requests with a Lanyard token through, and redeems
// the token for the user's IMAP credential in a tool handler.
func Example() {
	// A running Lanyard (here: the real authorization server, with a
	// stand-in for its redemption endpoint).
	lanyard, stop := lanyardtest.Start(lanyardtest.Options{Redeem: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{
			"connection_id": "conn-mail", "connector": "imap", "type": "basic",
			"credential": map[string]string{"username": "alice@mail", "password": "…"},
		})
	})})
	defer stop()

	ctx := context.Background()
	auth, err := mcpauth.New(ctx, mcpauth.Config{
		Issuer:       lanyard.Issuer,
		Resource:     "https://mail.example.com/mcp",
		ResourceName: "Mail",
		Scopes:       []string{"mail.read"},
		ClientID:     "mail-mcp",
		ClientSecret: lanyardtest.ResourceSecret, // from the environment, in real life
	})
	if err != nil {
		log.Fatal(err)
	}

	mux := http.NewServeMux()
	mux.Handle(auth.MetadataPath(), auth.MetadataHandler())
	mux.Handle("/mcp", auth.Middleware("mail.read")(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tok, _ := mcpauth.TokenFromContext(r.Context())
		cred, err := auth.Redeem(r.Context(), tok, "imap", "search_messages")
		if err != nil {
			auth.WriteError(w, err) // 401/403 with a challenge where the client can act on it
			return
		}
		fmt.Fprintf(w, "%s reads the mailbox of %s", tok.ClientID, cred.Field("username"))
	})))
	srv := httptest.NewServer(mux)
	defer srv.Close()

	// Without a token: 401 and where to find the authorization server.
	resp, err := http.Post(srv.URL+"/mcp", "application/json", nil)
	if err != nil {
		log.Fatal(err)
	}
	resp.Body.Close()
	fmt.Println(resp.StatusCode, resp.Header.Get("WWW-Authenticate"))

	// The agent signs in at Lanyard (the authorization code flow) and
	// calls again with its token.
	req, _ := http.NewRequest(http.MethodPost, srv.URL+"/mcp", nil)
	req.Header.Set("Authorization", "Bearer "+lanyard.Token("mail.read").AccessToken)
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		log.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	fmt.Println(resp.StatusCode, string(body))
	// Output:
	// 401 Bearer resource_metadata="https://mail.example.com/.well-known/oauth-protected-resource/mcp", scope="mail.read"
	// 200 agent reads the mailbox of alice@mail
}

// The metadata path of RFC 9728 §3.1 for a resource with a path.
func ExampleClient_MetadataPath() {
	lanyard, stop := lanyardtest.Start(lanyardtest.Options{})
	defer stop()
	auth, err := mcpauth.New(context.Background(), mcpauth.Config{Issuer: lanyard.Issuer, Resource: "https://mail.example.com/mcp"})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(auth.MetadataPath())
	fmt.Println(auth.MetadataURL())
	// Output:
	// /.well-known/oauth-protected-resource/mcp
	// https://mail.example.com/.well-known/oauth-protected-resource/mcp
}

// Turning a refusal by Lanyard into the answer for the agent.
func ExampleRedeemError_Challenge() {
	err := error(&mcpauth.RedeemError{Status: 403, Code: "insufficient_scope", Description: "send_message needs mail.send", Scope: "mail.send"})
	var re *mcpauth.RedeemError
	if errors.As(err, &re) {
		fmt.Println(re.ResourceStatus())
		fmt.Println(re.Challenge("https://mail.example.com/.well-known/oauth-protected-resource/mcp"))
	}
	// Output:
	// 403
	// Bearer resource_metadata="https://mail.example.com/.well-known/oauth-protected-resource/mcp", error="insufficient_scope", error_description="send_message needs mail.send", scope="mail.send"
}
