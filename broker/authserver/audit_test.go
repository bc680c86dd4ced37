package authserver_test

import (
	"context"
	"net/url"
	"testing"

	"github.com/lanyardhq/lanyard/broker"
	"github.com/lanyardhq/lanyard/internal/audit"
)

// TestAuditTrail: consent, issue, refresh, a refused replay and the revoke
// it causes are all in the chain, in order, and the chain verifies.
func TestAuditTrail(t *testing.T) {
	e := newEnv(t)
	code, verifier := e.code("mail.read offline_access")
	_, tok, _ := e.token(codeForm(code, verifier))
	e.token(url.Values{"grant_type": {"refresh_token"}, "refresh_token": {tok["refresh_token"].(string)}, "client_id": {publicClient}})
	e.token(codeForm(code, verifier)) // replay: denied, grant revoked
	ctx := context.Background()
	events, err := e.store.Audit().Range(ctx, 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, ev := range events {
		if ev.Action == broker.AuditLogin {
			continue
		}
		got = append(got, ev.Action+":"+ev.Outcome)
		if ev.Action != broker.AuditLogin && ev.ClientID == "" {
			t.Errorf("%s record without client_id: %+v", ev.Action, ev)
		}
	}
	want := []string{"consent:ok", "token.issue:ok", "token.refresh:ok", "revoke:ok", "token.issue:denied"}
	if len(got) != len(want) {
		t.Fatalf("audit actions = %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("audit[%d] = %s, want %s (all: %v)", i, got[i], want[i], got)
		}
	}
	if n, _, err := audit.Verify(ctx, e.store.Audit()); err != nil || n != uint64(len(events)) {
		t.Errorf("Verify = %d, %v", n, err)
	}
}
