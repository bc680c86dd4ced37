package authserver_test

import (
	"context"
	"errors"
	"net/url"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/oauth2"

	"github.com/lanyardhq/lanyard/broker"
)

// auditStore is the real store with its audit log replaced.
type auditStore struct {
	broker.Store
	log broker.AuditLog
}

func (s auditStore) Audit() broker.AuditLog { return s.log }

func withAudit(s broker.Store, log broker.AuditLog) broker.Store {
	if log == nil {
		return s
	}
	return auditStore{Store: s, log: log}
}

// switchableLog forwards to the real log until it is told to fail, as a
// full disk would.
type switchableLog struct {
	broker.AuditLog
	fail atomic.Bool
}

func (l *switchableLog) Append(ctx context.Context, e broker.AuditEvent) (broker.AuditEvent, error) {
	if l.fail.Load() {
		return e, errors.New("disk full")
	}
	return l.AuditLog.Append(ctx, e)
}

// TestFailsClosedWithoutAudit: when the audit record cannot be written,
// consent changes no grant and a refresh consumes no refresh token.
func TestFailsClosedWithoutAudit(t *testing.T) {
	ctx := context.Background()
	log := &switchableLog{}
	e := newEnvWith(t, envOptions{audit: log})
	log.AuditLog = e.store.Audit()
	code, verifier := e.code("mail.read offline_access")
	_, tok, _ := e.token(codeForm(code, verifier))
	rt := tok["refresh_token"].(string)
	grants, _ := broker.ListAll(ctx, e.store.Grants(), broker.Query{Index: broker.IndexUser, Value: "id-alice"})
	if len(grants) != 1 {
		t.Fatalf("grants: %v", grants)
	}
	before := grants[0]

	log.fail.Store(true)
	status, out, _ := e.token(url.Values{"grant_type": {"refresh_token"}, "refresh_token": {rt}, "client_id": {publicClient}})
	if status != 503 || out["error"] != "temporarily_unavailable" {
		t.Errorf("refresh without audit: %d %v; want 503 temporarily_unavailable", status, out)
	}
	// A consent that would widen the grant.
	b := e.browser()
	resp, _ := b.get(e.oauthConfig(publicClient, "", "mail.read", "mail.send").AuthCodeURL("s",
		oauth2.S256ChallengeOption(pkce()), oauth2.SetAuthURLParam("resource", resourceURI)))
	next := resp.Header.Get("Location")
	req := strings.TrimPrefix(next, "/consent?req=")
	b.login("alice", url.Values{"req": {req}})
	_, page := b.get(next)
	resp, _ = b.post("/consent", url.Values{"req": {req}, "decision": {"approve"}, "csrf_token": {csrf(t, page)},
		"connection": {"conn-gh", "conn-mail"}})
	if resp.StatusCode == 303 {
		t.Errorf("consent without an audit record redirected to %s", resp.Header.Get("Location"))
	}
	after, err := e.store.Grants().Get(ctx, before.ID)
	if err != nil || !slices.Equal(after.Scopes, before.Scopes) || !slices.Equal(after.ConnectionIDs, before.ConnectionIDs) {
		t.Errorf("grant changed without an audit record: %+v -> %+v", before, after)
	}

	log.fail.Store(false)
	if status, out, _ := e.token(url.Values{"grant_type": {"refresh_token"}, "refresh_token": {rt}, "client_id": {publicClient}}); status != 200 {
		t.Errorf("refresh once the audit log works again: %d %v; the refresh token must not have been consumed", status, out)
	}
}

// TestReRegisteredServerDoesNotInheritGrants: grants belong to the
// registration they were made for, not to whoever registers the URI later.
func TestReRegisteredServerDoesNotInheritGrants(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	code, verifier := e.code("mail.read offline_access")
	_, tok, _ := e.token(codeForm(code, verifier))
	if err := e.store.Resources().Delete(ctx, resourceID); err != nil {
		t.Fatal(err)
	}
	if err := e.store.Resources().Create(ctx, broker.Resource{ID: "newcomer", URI: resourceURI, Name: "Newcomer",
		Scopes: []string{"mail.read"}, SecretHash: broker.HashSecret(resourceSecret), CreatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	if got := e.introspect("newcomer", resourceSecret, tok["access_token"].(string)); got["active"] != false {
		t.Errorf("the new registration sees the old grant's token as active: %v", got)
	}
	status, out, _ := e.token(url.Values{"grant_type": {"refresh_token"}, "refresh_token": {tok["refresh_token"].(string)}, "client_id": {publicClient}})
	if status != 400 || out["error"] != "invalid_grant" {
		t.Errorf("refresh for a server that was re-registered: %d %v; want invalid_grant", status, out)
	}
}
