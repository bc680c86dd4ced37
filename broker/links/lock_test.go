package links_test

import (
	"context"
	"crypto/rand"
	"sync"
	"testing"

	"github.com/lanyardhq/lanyard/broker/links"
	"github.com/lanyardhq/lanyard/connectors"
)

// TestRefreshLockAcrossReplicas runs two Services on one metadata and
// secret store, as two replicas, with 25 concurrent callers each for a
// connection whose token has expired: holding the shared Lock, exactly one
// upstream refresh happens, the other replica re-reads the secret and uses
// it, and the rotated refresh token is the one stored.
func TestRefreshLockAcrossReplicas(t *testing.T) {
	up := &tokenConn{}
	a, db, secrets, _ := newService(t, up)
	ctx := context.Background()
	conn, err := a.LinkForm(ctx, "U1", "up", "", connectors.Input{"token": "a0"})
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu    sync.Mutex // the "cluster-wide" lock
		names sync.Map
	)
	lock := func(_ context.Context, name string) (func(), error) {
		names.Store(name, true)
		mu.Lock()
		return mu.Unlock, nil
	}
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	var replicas []*links.Service
	for range 2 {
		s, err := links.New(links.Options{Store: db, Secrets: secrets, Connectors: []connectors.Connector{up}, Key: key,
			CallbackURL: "http://127.0.0.1/cb", Lock: lock})
		if err != nil {
			t.Fatal(err)
		}
		replicas = append(replicas, s)
	}
	var wg sync.WaitGroup
	got := make([]string, 50)
	for i := range got {
		wg.Go(func() {
			cred, err := replicas[i%2].Credential(ctx, conn)
			if err != nil {
				t.Errorf("Credential: %v", err)
				return
			}
			got[i], _ = cred.Fields["access_token"].(string)
		})
	}
	wg.Wait()
	if n := up.refreshes.Load(); n != 1 {
		t.Errorf("%d upstream refreshes for 50 callers on two replicas, want 1", n)
	}
	for i, at := range got {
		if at != "a1" {
			t.Errorf("caller %d got %q, want the refreshed a1", i, at)
		}
	}
	if _, ok := names.Load("refresh/" + conn.ID); !ok {
		t.Errorf("Lock was not taken with name refresh/%s", conn.ID)
	}
	stored, _, err := secrets.Get(ctx, conn.SecretKey)
	if rt, _ := stored.Field("refresh_token"); err != nil || rt != "r1" {
		t.Errorf("stored refresh token %q (%v), want the rotated r1", rt, err)
	}
}
