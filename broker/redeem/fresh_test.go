package redeem_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lanyardhq/lanyard/broker"
	"github.com/lanyardhq/lanyard/broker/authserver"
	"github.com/lanyardhq/lanyard/connectors"
	"github.com/lanyardhq/lanyard/connectors/apikey"
)

// Redemption caches verified tokens (authserver) and credentials (links).
// These tests show, under concurrent load on the same grant and connection,
// that a change is honoured by the very next redemption: every redemption
// that starts after RevokeGrant, Unlink, a re-link or another replica's
// rotation has returned sees its effect, while the load keeps the caches
// hot. A redemption that overlaps the change may see either state.

// load redeems body from n goroutines until stop is closed. Each records
// whether it started after the change (after is set just after the change
// returns) and hands the answer to check, which reports what is wrong.
type load struct {
	after   atomic.Bool
	stop    chan struct{}
	wg      sync.WaitGroup
	mu      sync.Mutex
	errs    []string
	before  atomic.Int64 // redemptions answered before the change (warm)
	checked atomic.Int64 // redemptions started after it
}

func (w *world) startLoad(t *testing.T, n int, body map[string]string, check func(after bool, status int, cred map[string]any) string) *load {
	t.Helper()
	raw, _ := json.Marshal(body)
	l := &load{stop: make(chan struct{})}
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: n}}
	for range n {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for {
				select {
				case <-l.stop:
					return
				default:
				}
				after := l.after.Load()
				req, _ := http.NewRequest("POST", w.issuer+authserver.PathRedeem, bytes.NewReader(raw))
				req.Header.Set("Content-Type", "application/json")
				req.SetBasicAuth(mcpID, mcpSecret)
				resp, err := client.Do(req)
				if err != nil {
					l.fail(err.Error())
					return
				}
				var out struct {
					Credential map[string]any `json:"credential"`
				}
				_ = json.NewDecoder(resp.Body).Decode(&out)
				resp.Body.Close()
				if msg := check(after, resp.StatusCode, out.Credential); msg != "" {
					l.fail(fmt.Sprintf("after=%v: %s", after, msg))
				}
				if after {
					l.checked.Add(1)
				} else {
					l.before.Add(1)
				}
			}
		}()
	}
	return l
}

func (l *load) nerrs() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.errs)
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); !cond(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("load made no progress in 30s")
		}
	}
}

func (l *load) fail(msg string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.errs) < 5 {
		l.errs = append(l.errs, msg)
	}
}

// change waits until the load has warmed the caches, runs fn, marks every
// later redemption as "after", lets some run, and stops.
func (l *load) change(t *testing.T, fn func()) {
	t.Helper()
	waitFor(t, func() bool { return l.before.Load() >= 50 || l.nerrs() > 0 })
	fn()
	l.after.Store(true)
	waitFor(t, func() bool { return l.checked.Load() >= 50 || l.nerrs() > 0 })
	close(l.stop)
	l.wg.Wait()
	for _, e := range l.errs {
		t.Error(e)
	}
}

func TestFreshUnderLoad(t *testing.T) {
	ctx := context.Background()
	key := func(cred map[string]any) any { return cred[apikey.FieldKey] }

	t.Run("revoked grant", func(t *testing.T) {
		w := newWorld(t)
		tok := w.tokenFor("alice", mcpURI, "mail.read", w.aliceKeys)
		l := w.startLoad(t, 16, req(tok, "keys", policyRead), func(after bool, status int, cred map[string]any) string {
			if after && (status != http.StatusUnauthorized || cred != nil) {
				return fmt.Sprintf("redemption after the revocation: %d %v", status, key(cred))
			}
			return ""
		})
		l.change(t, func() { w.must(w.auth.RevokeGrant(ctx, w.grantOf(tok).ID, "revoked under load")) })
	})

	t.Run("unlinked connection", func(t *testing.T) {
		w := newWorld(t)
		tok := w.tokenFor("alice", mcpURI, "mail.read", w.aliceKeys)
		l := w.startLoad(t, 16, req(tok, "keys", policyRead), func(after bool, status int, cred map[string]any) string {
			if after && (status != http.StatusForbidden || cred != nil) {
				return fmt.Sprintf("redemption after the unlink: %d %v", status, key(cred))
			}
			if !after && status == 200 && key(cred) != aliceKey {
				return fmt.Sprintf("wrong key %v", key(cred))
			}
			return ""
		})
		l.change(t, func() { w.must(w.links.Unlink(ctx, "id-alice", w.aliceKeys)) })
	})

	t.Run("re-linked account", func(t *testing.T) {
		w := newWorld(t)
		tok := w.tokenFor("alice", mcpURI, "mail.read", w.aliceKeys)
		const rotated = "alice-rotated-key-0123456789"
		l := w.startLoad(t, 16, req(tok, "keys", policyRead), func(after bool, status int, cred map[string]any) string {
			if status != 200 {
				return fmt.Sprintf("status %d", status)
			}
			if after && key(cred) != rotated {
				return fmt.Sprintf("old key handed out after the re-link: %v", key(cred))
			}
			return ""
		})
		l.change(t, func() {
			_, err := w.links.LinkForm(ctx, "id-alice", "keys", w.aliceKeys, connectors.Input{apikey.FieldKey: broker.SecretString(rotated)})
			w.must(err)
		})
	})

	t.Run("rotated by another replica", func(t *testing.T) {
		// Another Lanyard process refreshed the upstream token: it wrote
		// the secret store and then the connection record (links.refresh);
		// this process's cache has never seen the new secret.
		w := newWorld(t)
		tok := w.tokenFor("alice", mcpURI, "mail.read", w.aliceKeys)
		const rotated = "alice-key-from-another-replica-0123"
		l := w.startLoad(t, 16, req(tok, "keys", policyRead), func(after bool, status int, cred map[string]any) string {
			if status != 200 {
				return fmt.Sprintf("status %d", status)
			}
			if after && key(cred) != rotated {
				return fmt.Sprintf("old key handed out after the rotation: %v", key(cred))
			}
			return ""
		})
		l.change(t, func() {
			conn, err := w.store.Connections().Get(ctx, w.aliceKeys)
			w.must(err)
			ver, err := w.secrets.Put(ctx, conn.SecretKey, broker.NewSecret(map[string]string{apikey.FieldKey: rotated}), conn.SecretVer)
			w.must(err)
			_, err = w.store.Connections().Update(ctx, conn.ID, func(c broker.Connection) (broker.Connection, error) {
				c.SecretVer = ver
				return c, nil
			})
			w.must(err)
		})
	})
}
