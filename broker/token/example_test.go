package token_test

import (
	"context"
	"fmt"
	"log"
	"os"
	"path/filepath"

	"github.com/lanyardhq/lanyard/broker/token"
	"github.com/lanyardhq/lanyard/internal/bolt"
	"github.com/lanyardhq/lanyard/vault/sealed"
)

// Open a keyring on the embedded secret store, issue an access token for one
// MCP server, and verify it as that server would.
func Example() {
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "token-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	db, err := bolt.Open(filepath.Join(dir, "lanyard.db"), bolt.Options{})
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	secrets, err := sealed.Open(db, filepath.Join(dir, "secrets.key"), sealed.Options{})
	if err != nil {
		log.Fatal(err)
	}

	keys, err := token.Open(ctx, token.Options{Issuer: "https://lanyard.example", Secrets: secrets})
	if err != nil {
		log.Fatal(err)
	}
	raw, err := keys.Sign(ctx, token.Claims{
		Subject:  "alice",
		Audience: "https://mcp.example/mcp",
		ClientID: "https://agent.example/client.json",
		Scopes:   []string{"files:read"},
		GrantID:  "g-123",
	})
	if err != nil {
		log.Fatal(err)
	}
	c, err := keys.Verify(ctx, raw)
	if err != nil {
		log.Fatal(err)
	}
	if c.Audience != "https://mcp.example/mcp" { // the MCP server checks the audience itself
		log.Fatal("token is for another server")
	}
	fmt.Println(c.Subject, c.Scopes, c.GrantID, c.ExpiresAt.Sub(c.IssuedAt))
	// Output: alice [files:read] g-123 1h0m0s
}
