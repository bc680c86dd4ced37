package redeem_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"log/slog"
	"net/http"
	"os"
	"testing"

	"github.com/lanyardhq/lanyard/broker"
	"github.com/lanyardhq/lanyard/broker/links"
	"github.com/lanyardhq/lanyard/broker/oauth"
	"github.com/lanyardhq/lanyard/connectors"
	"github.com/lanyardhq/lanyard/connectors/apikey"
	"github.com/lanyardhq/lanyard/internal/config"
	"github.com/lanyardhq/lanyard/vault"
)

// The in-process pieces of the redeem hot path, each on its own (see
// BENCHMARKS.md; BenchmarkRedeem is the whole path over HTTP,
// BenchmarkCheckPolicy the policy decision, token.BenchmarkVerify the
// signature check without the cache, bolt.BenchmarkAuditAppend the audit
// append). All run in parallel on GOMAXPROCS goroutines, as a server does.

// BenchmarkAuthenticateResource: the MCP server's client_secret_basic
// (resource lookup in the store, constant-time hash compare).
func BenchmarkAuthenticateResource(b *testing.B) {
	w := newWorld(b)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		r, _ := http.NewRequest("POST", w.issuer+"/v1/redeem", nil)
		r.SetBasicAuth(mcpID, mcpSecret)
		for pb.Next() {
			if _, err := w.auth.AuthenticateResource(context.Background(), r, oauth.Params{}); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkVerifyAccessToken: token verification (the verified-token cache
// is warm after the first call) plus the grant lookup and match.
func BenchmarkVerifyAccessToken(b *testing.B) {
	w := newWorld(b)
	tok := w.tokenFor("alice", mcpURI, "mail.read", w.aliceKeys)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, _, err := w.auth.VerifyAccessToken(context.Background(), tok, mcpURI); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkGrantLookup: one grant read from bbolt.
func BenchmarkGrantLookup(b *testing.B) {
	w := newWorld(b)
	g := w.grantOf(w.tokenFor("alice", mcpURI, "mail.read", w.aliceKeys))
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := w.store.Grants().Get(context.Background(), g.ID); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkCredential: links.Service.Credential for a linked API key, from
// the credential cache and (uncached) from the secret store: the sealed
// store in bbolt always, and the real Vault when VAULT_ADDR and
// VAULT_TOKEN are set.
func BenchmarkCredential(b *testing.B) {
	ctx := context.Background()
	w := newWorld(b)
	conn, err := w.store.Connections().Get(ctx, w.aliceKeys)
	w.must(err)
	run := func(b *testing.B, s *links.Service, conn broker.Connection) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := s.Credential(ctx, conn); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
	b.Run("cached", func(b *testing.B) { run(b, w.links, conn) })
	b.Run("sealed", func(b *testing.B) { run(b, benchLinks(b, w.store, w.secrets), conn) })
	b.Run("vault", func(b *testing.B) {
		addr, tok := os.Getenv("VAULT_ADDR"), os.Getenv("VAULT_TOKEN")
		if addr == "" || tok == "" {
			b.Skip("VAULT_ADDR and VAULT_TOKEN are not set")
		}
		p := make([]byte, 4)
		_, _ = rand.Read(p)
		v, err := vault.New(ctx, vault.Config{Address: addr, Token: broker.SecretString(tok), Mount: "secret",
			Prefix: "bench-" + hex.EncodeToString(p), AllowInsecureHTTP: true})
		if err != nil {
			b.Fatal(err)
		}
		defer v.Close()
		s := benchLinks(b, w.store, v)
		c, err := s.LinkForm(ctx, "id-alice", "keys", "", connectors.Input{apikey.FieldKey: broker.SecretString(aliceKey)})
		if err != nil {
			b.Fatal(err)
		}
		defer func() { _ = s.Unlink(ctx, "id-alice", c.ID) }()
		run(b, s, c)
	})
}

// benchLinks is a link service without the credential cache.
func benchLinks(b *testing.B, store broker.Store, secrets broker.SecretStore) *links.Service {
	c, err := apikey.New("keys", "KEYS", config.APIKeyConnector{Header: "X-Api-Key"}, apikey.Options{Dev: true})
	if err != nil {
		b.Fatal(err)
	}
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	s, err := links.New(links.Options{Store: store, Secrets: secrets, Connectors: []connectors.Connector{c}, Key: key,
		CallbackURL: "http://127.0.0.1/cb", CredentialCacheTTL: -1, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	return s
}
