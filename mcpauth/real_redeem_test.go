package mcpauth_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/lanyardhq/lanyard/mcpauth"
	"github.com/lanyardhq/lanyard/mcpauth/internal/lanyardtest"
)

// Redeem against Lanyard's own /v1/redeem (broker/redeem): the credential
// of the linked API key account; a tool that needs a scope the token lacks
// (insufficient_scope naming it); the grant revoked (invalid_token, the
// cache dropped, the grant's tokens refused from then on).
func TestRedeemAgainstRealEndpoint(t *testing.T) {
	w := lanyardtest.New(t, lanyardtest.Options{RealRedeem: true})
	c := newClient(t, w, nil)
	tok, err := c.Verify(t.Context(), w.Token("mail.read").AccessToken)
	if err != nil {
		t.Fatal(err)
	}

	cred, err := c.Redeem(t.Context(), tok, lanyardtest.APIKeyConnector, lanyardtest.ToolRead)
	if err != nil {
		t.Fatalf("Redeem: %v", err)
	}
	if cred.ConnectionID != w.Connection || cred.Connector != lanyardtest.APIKeyConnector || cred.Type != "apikey" ||
		!strings.Contains(fmt.Sprint(cred.Fields), lanyardtest.AliceAPIKey) {
		t.Errorf("credential %v, fields %d", cred, len(cred.Fields))
	}

	_, err = c.Redeem(t.Context(), tok, lanyardtest.APIKeyConnector, lanyardtest.ToolSend)
	var re *mcpauth.RedeemError
	if !errors.As(err, &re) || re.Status != 403 || re.Code != mcpauth.CodeInsufficientScope || re.Scope != "mail.send" {
		t.Fatalf("Redeem for a tool needing mail.send = %v, want 403 insufficient_scope with scope mail.send", err)
	}
	if ch := re.Challenge(c.MetadataURL()); !strings.Contains(ch, `error="insufficient_scope"`) || !strings.Contains(ch, `scope="mail.send"`) {
		t.Errorf("challenge %q", ch)
	}

	_, err = c.Redeem(t.Context(), tok, lanyardtest.APIKeyConnector, "no_such_tool")
	if !errors.As(err, &re) || re.Status != 403 {
		t.Errorf("Redeem for a tool the policy does not name = %v, want 403", err)
	}

	if err := w.Auth.RevokeGrant(t.Context(), tok.GrantID, "test"); err != nil {
		t.Fatal(err)
	}
	// Another tool is not cached: Lanyard answers, and the answer drops
	// the grant's cached credentials.
	_, err = c.Redeem(t.Context(), tok, lanyardtest.APIKeyConnector, lanyardtest.ToolSend+"_x")
	if !errors.As(err, &re) || re.Status != 401 || re.Code != mcpauth.CodeInvalidToken {
		t.Fatalf("Redeem after revocation = %v, want 401 invalid_token", err)
	}
	if _, err := c.Redeem(t.Context(), tok, lanyardtest.APIKeyConnector, lanyardtest.ToolRead); err == nil {
		t.Error("the cached credential was served after the grant was revoked")
	}
	if _, err := c.Verify(t.Context(), tok.Raw); !errors.Is(err, mcpauth.ErrInvalidToken) {
		t.Errorf("Verify after revocation = %v, want ErrInvalidToken", err)
	}
}
