package links_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lanyardhq/lanyard/broker"
	"github.com/lanyardhq/lanyard/broker/links"
	"github.com/lanyardhq/lanyard/connectors"
	"github.com/lanyardhq/lanyard/internal/bolt"
	"github.com/lanyardhq/lanyard/vault/sealed"
)

// tokenConn is a connector whose "upstream" is this test: it counts
// refreshes and rotates the refresh token every time, like a strict OAuth
// provider. The stores under the service are the real ones.
type tokenConn struct {
	refreshes atomic.Int32
	gate      chan struct{}
	fail      error
	revoked   atomic.Int32
}

func (c *tokenConn) Name() string        { return "up" }
func (c *tokenConn) Kind() string        { return connectors.KindOAuth2 }
func (c *tokenConn) DisplayName() string { return "Upstream" }
func (c *tokenConn) Fields() []connectors.Field {
	return []connectors.Field{{Name: "token", Label: "Token", Secret: true, Required: true}}
}
func (c *tokenConn) Link(_ context.Context, in connectors.Input) (connectors.Linked, error) {
	if in.Get("token") == "bad" {
		return connectors.Linked{}, connectors.ErrRejected
	}
	return connectors.Linked{Account: "acct", Secret: broker.NewSecret(map[string]string{
		"access_token": in.Get("token"), "refresh_token": "r0", "expiry": time.Now().Add(-time.Minute).Format(time.RFC3339)})}, nil
}
func (c *tokenConn) Refresh(_ context.Context, sec broker.Secret) (connectors.Linked, error) {
	if c.gate != nil {
		<-c.gate
	}
	if c.fail != nil {
		return connectors.Linked{}, c.fail
	}
	n := c.refreshes.Add(1)
	old, _ := sec.Field("refresh_token")
	return connectors.Linked{Secret: broker.NewSecret(map[string]string{
		"access_token": fmt.Sprintf("a%d", n), "refresh_token": fmt.Sprintf("r%d", n), "previous": old,
		"expiry": time.Now().Add(time.Hour).Format(time.RFC3339)})}, nil
}
func (c *tokenConn) Materialize(_ context.Context, sec broker.Secret) (connectors.Credential, error) {
	at, _ := sec.Field("access_token")
	return connectors.Credential{Type: "oauth2", Fields: map[string]any{"access_token": at}}, nil
}
func (c *tokenConn) RevokeUpstream(context.Context, broker.Secret) error {
	c.revoked.Add(1)
	return nil
}

func newService(t *testing.T, c connectors.Connector) (*links.Service, *bolt.DB, broker.SecretStore, string) {
	t.Helper()
	dir := t.TempDir()
	db, err := bolt.Open(filepath.Join(dir, "l.db"), bolt.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	sec, err := sealed.Open(db, filepath.Join(dir, "k.key"), sealed.Options{})
	if err != nil {
		t.Fatal(err)
	}
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	s, err := links.New(links.Options{Store: db, Secrets: sec, Connectors: []connectors.Connector{c}, Key: key,
		CallbackURL: "http://127.0.0.1/cb"})
	if err != nil {
		t.Fatal(err)
	}
	return s, db, sec, filepath.Join(dir, "l.db")
}

func TestRefreshIsSingleFlightAndWrittenFirst(t *testing.T) {
	up := &tokenConn{gate: make(chan struct{})}
	s, _, secrets, _ := newService(t, up)
	ctx := context.Background()
	conn, err := s.LinkForm(ctx, "U1", "up", "", connectors.Input{"token": "a0"})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	got := make([]string, 50)
	for i := range got {
		wg.Go(func() {
			cred, err := s.Credential(ctx, conn)
			if err != nil {
				t.Errorf("Credential: %v", err)
				return
			}
			got[i], _ = cred.Fields["access_token"].(string)
		})
	}
	time.Sleep(50 * time.Millisecond) // let the callers pile up behind the one refresh
	close(up.gate)
	wg.Wait()
	if n := up.refreshes.Load(); n != 1 {
		t.Errorf("%d upstream refreshes for 50 concurrent callers, want 1", n)
	}
	for i, a := range got {
		if a != "a1" {
			t.Errorf("caller %d got %q, want the refreshed token a1", i, a)
		}
	}
	stored, ver, err := secrets.Get(ctx, conn.SecretKey)
	if rt, _ := stored.Field("refresh_token"); err != nil || rt != "r1" || ver != 2 {
		t.Errorf("stored refresh token %q version %d (%v); want the rotated r1 at version 2", rt, ver, err)
	}
}

func TestInvalidGrantMarksNeedsRelink(t *testing.T) {
	up := &tokenConn{fail: fmt.Errorf("upstream said invalid_grant: %w", connectors.ErrNeedsRelink)}
	s, db, _, _ := newService(t, up)
	ctx := context.Background()
	conn, err := s.LinkForm(ctx, "U1", "up", "", connectors.Input{"token": "a0"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Credential(ctx, conn); !errors.Is(err, links.ErrNeedsRelink) {
		t.Fatalf("Credential = %v, want ErrNeedsRelink", err)
	}
	conn, _ = db.Connections().Get(ctx, conn.ID)
	if conn.Status != broker.ConnectionNeedsRelink {
		t.Errorf("status %q, want needs_relink", conn.Status)
	}
	up.fail = nil
	if _, err := s.Credential(ctx, conn); !errors.Is(err, links.ErrNeedsRelink) {
		t.Errorf("a needs-relink connection is not refreshed again (no retry storm): %v", err)
	}
	if n := up.refreshes.Load(); n != 0 {
		t.Errorf("%d refreshes after invalid_grant, want 0", n)
	}
}

func TestLinkRejectedStoresNothingAndUnlinkRemovesSecret(t *testing.T) {
	up := &tokenConn{}
	s, db, secrets, dbPath := newService(t, up)
	ctx := context.Background()
	if _, err := s.LinkForm(ctx, "U1", "up", "", connectors.Input{"token": "bad"}); !errors.Is(err, connectors.ErrRejected) {
		t.Fatalf("rejected link: %v", err)
	}
	if keys, _ := secrets.List(ctx, "U1"); len(keys) != 0 {
		t.Errorf("a rejected link left secrets: %v", keys)
	}
	if list, _ := s.List(ctx, "U1"); len(list) != 0 {
		t.Errorf("a rejected link left records: %v", list)
	}
	conn, err := s.LinkForm(ctx, "U1", "up", "", connectors.Input{"token": "canary-link-token-77"})
	if err != nil {
		t.Fatal(err)
	}
	if raw, _ := os.ReadFile(dbPath); bytes.Contains(raw, []byte("canary-link-token-77")) {
		t.Error("the secret is in the metadata file in clear")
	}
	if _, err := s.Get(ctx, "U2", conn.ID); !errors.Is(err, broker.ErrNotFound) {
		t.Errorf("another user sees the connection: %v", err)
	}
	if err := s.Unlink(ctx, "U2", conn.ID); !errors.Is(err, broker.ErrNotFound) {
		t.Errorf("another user unlinked it: %v", err)
	}
	if err := s.Unlink(ctx, "U1", conn.ID); err != nil {
		t.Fatal(err)
	}
	if _, _, err := secrets.Get(ctx, conn.SecretKey); !errors.Is(err, broker.ErrNotFound) {
		t.Errorf("secret after unlink: %v", err)
	}
	if _, err := db.Connections().Get(ctx, conn.ID); !errors.Is(err, broker.ErrNotFound) {
		t.Errorf("record after unlink: %v", err)
	}
	if up.revoked.Load() != 1 {
		t.Error("unlink did not revoke upstream")
	}
}

func TestCompleteLinkNeedsTheSameSession(t *testing.T) {
	s, _, _, _ := newService(t, &tokenConn{})
	ctx := context.Background()
	if _, err := s.BeginLink(ctx, "U1", "S1", "up", ""); err == nil || !strings.Contains(err.Error(), "redirect") {
		t.Errorf("BeginLink on a form connector = %v, want a refusal", err)
	}
	if _, err := s.CompleteLink(ctx, "U1", "S1", "up", url.Values{"state": {"forged"}}); !errors.Is(err, links.ErrLinkExpired) {
		t.Errorf("forged state: %v", err)
	}
}
