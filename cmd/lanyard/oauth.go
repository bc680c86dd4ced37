package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"time"

	"golang.org/x/time/rate"

	"github.com/lanyardhq/lanyard/broker"
	"github.com/lanyardhq/lanyard/broker/authserver"
	"github.com/lanyardhq/lanyard/broker/clientreg"
	"github.com/lanyardhq/lanyard/broker/links"
	"github.com/lanyardhq/lanyard/broker/oauth"
	"github.com/lanyardhq/lanyard/broker/redeem"
	"github.com/lanyardhq/lanyard/broker/token"
	"github.com/lanyardhq/lanyard/connectors"
	"github.com/lanyardhq/lanyard/internal/config"
	"github.com/lanyardhq/lanyard/internal/password"
	"github.com/lanyardhq/lanyard/internal/safehttp"
	"github.com/lanyardhq/lanyard/web"
)

// maxAccessTokenTTL bounds access-token lifetimes (config allows at most
// 24h); signing keys are kept this long after they retire.
const maxAccessTokenTTL = 24 * time.Hour

// systemOwner owns Lanyard's own secrets in the secret store.
const systemOwner = "system"

// mountOAuth builds the authorization server and the web UI on the app's
// stores and mounts them.
func (m *Main) mountOAuth(ctx context.Context, a *app) error {
	cfg, obs := a.cfg, a.metrics.Observer()
	keys, err := token.Open(ctx, token.Options{Issuer: a.url, Alg: cfg.OAuth.SigningAlg,
		MaxTokenTTL: maxAccessTokenTTL, Secrets: a.secrets, Observer: obs})
	if err != nil {
		return fmt.Errorf("signing keys: %w", err)
	}
	a.keys = keys
	if err := syncConfig(ctx, a.store, cfg, time.Now()); err != nil {
		return fmt.Errorf("apply resources and clients from config: %w", err)
	}
	csrfKey, err := systemKey(ctx, a.secrets, "web-csrf-key")
	if err != nil {
		return fmt.Errorf("web key: %w", err)
	}
	var resolver authserver.ClientResolver
	if cfg.OAuth.ClientMetadataDocuments {
		resolver = clientreg.NewResolver(clientreg.ResolverOptions{
			Clients: a.store.Clients(), DevLoopback: cfg.Dev, Logger: a.log,
			HTTP: safehttp.NewClient(safehttp.Options{AllowLoopback: cfg.Dev}),
		})
	}
	var registrar http.Handler
	if cfg.OAuth.Registration.Enabled {
		registrar = clientreg.NewRegistrar(clientreg.RegistrarOptions{
			Clients: a.store.Clients(), DevLoopback: cfg.Dev, Logger: a.log,
			Rate:     rate.Limit(float64(cfg.OAuth.Registration.RatePerMinute) / 60),
			Counters: a.store.Counters(), // shared by every replica
		})
	}
	var ui *web.UI
	var rd *redeem.Service // set below; the token endpoint hands it token exchanges
	auth, err := authserver.New(authserver.Options{
		Issuer: a.url, Store: a.store, Keys: keys, Clients: resolver, Registration: registrar,
		AccessTokenTTL: cfg.OAuth.AccessTokenTTL, RefreshTokenTTL: cfg.OAuth.RefreshTokenTTL,
		DeviceCodeTTL: cfg.OAuth.DeviceCodeTTL, DeviceInterval: cfg.OAuth.DeviceInterval,
		DefaultResource: cfg.OAuth.DefaultResource, CIMD: cfg.OAuth.ClientMetadataDocuments, Dev: cfg.Dev,
		Logger: a.log,
		ShowError: func(w http.ResponseWriter, r *http.Request, status int, title, detail string) {
			ui.ShowError(w, r, status, title, detail)
		},
		TokenExchange: func(w http.ResponseWriter, r *http.Request, p oauth.Params) { rd.Exchange(w, r, p) },
	})
	if err != nil {
		return err
	}
	a.auth = auth
	conns, err := buildConnectors(ctx, cfg)
	if err != nil {
		return err
	}
	linkKey, err := systemKey(ctx, a.secrets, "link-key")
	if err != nil {
		return fmt.Errorf("link key: %w", err)
	}
	linkSvc, err := links.New(links.Options{Store: a.store, Secrets: a.secrets, Connectors: conns, Key: linkKey,
		CallbackURL: a.url + web.PathCallback, CredentialCacheTTL: credentialCacheTTL(cfg.Secrets.CacheTTL, m.credCacheTTL), Lock: storeLock(a.store), Logger: a.log})
	if err != nil {
		return err
	}
	a.links = linkSvc
	onward := map[string]bool{}
	for _, c := range cfg.Connectors {
		onward[c.Name] = c.Kind == connectors.KindOAuth2 && c.OAuth2.TokenExchange
	}
	if rd, err = redeem.New(redeem.Options{Auth: auth, Store: a.store, Links: linkSvc, Logger: a.log,
		OnwardExchange: func(name string) bool { return onward[name] }}); err != nil {
		return err
	}
	ui, err = web.New(web.Options{
		Store: a.store, Auth: auth, Links: linkSvc, Secure: !cfg.Dev || isHTTPS(a.url), Key: csrfKey,
		SessionTTL: cfg.OAuth.SessionTTL, Logger: a.log, VerifyPassword: password.Verify,
	})
	if err != nil {
		return err
	}
	auth.Mount(a.srv)
	rd.Mount(a.srv)
	ui.Mount(a.srv)
	return nil
}

func isHTTPS(u string) bool { return len(u) > 8 && u[:8] == "https://" }

// systemKey returns a 32-byte key kept in the secret store, creating it on
// first use. Replicas share it; a concurrent creator's key wins.
func systemKey(ctx context.Context, secrets broker.SecretStore, name string) ([]byte, error) {
	key := broker.SecretKey{Owner: systemOwner, Name: name}
	for range 3 {
		s, _, err := secrets.Get(ctx, key)
		if err == nil {
			v, _ := s.Field("key")
			b, err := base64.StdEncoding.DecodeString(v)
			if err != nil || len(b) < 32 {
				return nil, fmt.Errorf("secret %s is malformed", key)
			}
			return b, nil
		}
		if !errors.Is(err, broker.ErrNotFound) {
			return nil, err
		}
		b := make([]byte, 32)
		_, _ = rand.Read(b)
		_, err = secrets.Put(ctx, key, broker.NewSecret(map[string]string{"key": base64.StdEncoding.EncodeToString(b)}), broker.CASCreate)
		if err == nil {
			return b, nil
		}
		if !errors.Is(err, broker.ErrAlreadyExists) {
			return nil, err
		}
	}
	return nil, fmt.Errorf("secret %s: could not create or read it", key)
}

// syncConfig makes the store's config-defined MCP servers and static clients
// match the config file: added, updated, and removed when they leave it.
func syncConfig(ctx context.Context, store broker.Store, cfg config.Config, now time.Time) error {
	want := map[string]broker.Resource{}
	for _, r := range cfg.Resources {
		res := broker.Resource{ID: r.ID, URI: r.URI, Name: r.Name, Scopes: r.Scopes, DefaultScopes: r.DefaultScopes,
			TokenEndpointAuthMethod: r.AuthMethod, JWKSURL: r.JWKSURL, JWKS: r.JWKS, Connectors: r.Connectors,
			Policy: broker.ToolPolicy{DefaultAllow: r.Policy.Default == "allow"}, FromConfig: true, CreatedAt: now}
		if r.ClientSecret != "" {
			res.SecretHash = broker.HashSecret(r.ClientSecret.Reveal())
		}
		for _, t := range r.Policy.Tools {
			res.Policy.Tools = append(res.Policy.Tools, broker.ToolRule{Name: t.Name, Scopes: t.Scopes, Connectors: t.Connectors})
		}
		want[r.ID] = res
	}
	resources, err := broker.ListAll(ctx, store.Resources(), broker.Query{})
	if err != nil {
		return err
	}
	for _, old := range resources {
		if _, keep := want[old.ID]; old.FromConfig && !keep {
			if err := store.Resources().Delete(ctx, old.ID); err != nil {
				return err
			}
		}
	}
	for _, r := range want {
		if err := upsert(ctx, store.Resources(), r, func(old broker.Resource) broker.Resource {
			r.CreatedAt = old.CreatedAt
			return r
		}); err != nil {
			return fmt.Errorf("resource %s: %w", r.ID, err)
		}
	}
	wantClients := map[string]broker.Client{}
	for _, c := range cfg.Clients {
		cl := broker.Client{ID: c.ClientID, Kind: broker.ClientStatic, Name: c.Name, RedirectURIs: c.RedirectURIs,
			GrantTypes: c.GrantTypes, ApplicationType: "web", TokenEndpointAuthMethod: "none",
			PreApprovedUsers: c.PreApproved.Users, PreApprovedGroups: c.PreApproved.Groups, CreatedAt: now}
		if c.ClientSecret != "" {
			cl.SecretHash, cl.TokenEndpointAuthMethod = broker.HashSecret(c.ClientSecret.Reveal()), "client_secret_basic"
		}
		wantClients[cl.ID] = cl
	}
	clients, err := broker.ListAll(ctx, store.Clients(), broker.Query{})
	if err != nil {
		return err
	}
	for _, old := range clients {
		if _, keep := wantClients[old.ID]; old.Kind == broker.ClientStatic && !keep {
			if err := store.Clients().Delete(ctx, old.ID); err != nil {
				return err
			}
		}
	}
	for _, c := range wantClients {
		if err := upsert(ctx, store.Clients(), c, func(old broker.Client) broker.Client {
			if old.Kind != broker.ClientStatic {
				return old // never overwrite a registered client that took the id
			}
			c.CreatedAt = old.CreatedAt
			return c
		}); err != nil {
			return fmt.Errorf("client %s: %w", c.ID, err)
		}
	}
	return nil
}

// upsert creates rec or replaces the stored record with merge(old).
func upsert[T broker.Record](ctx context.Context, t broker.Table[T], rec T, merge func(old T) T) error {
	err := t.Create(ctx, rec)
	if !errors.Is(err, broker.ErrAlreadyExists) {
		return err
	}
	_, err = t.Update(ctx, rec.RecordID(), func(old T) (T, error) { return merge(old), nil })
	return err
}

// keysCmd manages the signing keys: list, rotate.
func (m *Main) keysCmd(ctx context.Context, args []string) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" {
		fmt.Fprintln(m.Stdout, "Usage: lanyard keys SUBCOMMAND [--config FILE | --data DIR]\n\nSubcommands:\n  list     lists signing keys and their state\n  rotate   adds a new signing key; it is published in the JWKS first and signs after the publish delay")
		if len(args) == 0 {
			return usagef("keys: a subcommand is required")
		}
		return nil
	}
	if !slices.Contains([]string{"list", "rotate"}, args[0]) {
		return usagef("keys: unknown subcommand %q (list, rotate)", args[0])
	}
	fs := m.flagSet("keys "+args[0], "[--config FILE | --data DIR]", "Manages the access-token signing keys in the secret store.")
	var af adminFlags
	af.register(fs)
	if err := parse(fs, args[1:]); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usagef("keys %s: unexpected argument %q", args[0], fs.Arg(0))
	}
	cfg, err := af.load(m)
	if err != nil {
		return err
	}
	db, err := openStore(ctx, cfg, nil)
	if err != nil {
		return err
	}
	defer db.Close()
	secrets, closeSecrets, err := openSecrets(ctx, cfg, db, nil, newLogger(cfg.Log, m.Stderr))
	if err != nil {
		return err
	}
	defer closeSecrets()
	issuer := cfg.Issuer
	if issuer == "" {
		issuer = "http://" + cfg.Listen
	}
	keys, err := token.Open(ctx, token.Options{Issuer: issuer, Alg: cfg.OAuth.SigningAlg, MaxTokenTTL: maxAccessTokenTTL, Secrets: secrets})
	if err != nil {
		return err
	}
	if args[0] == "rotate" {
		kid, err := keys.Rotate(ctx)
		if err != nil {
			return err
		}
		fmt.Fprintf(m.Stdout, "new signing key %s published; it signs after the publish delay, running servers pick it up within a minute\n", kid)
	}
	for _, k := range keys.Keys() {
		fmt.Fprintf(m.Stdout, "%s\t%s\t%s\tcreated %s\tsigns from %s\n", k.KID, k.Alg, k.State,
			k.Created.UTC().Format(time.RFC3339), k.NotBefore.UTC().Format(time.RFC3339))
	}
	return nil
}

// credentialCacheTTL is links.Options.CredentialCacheTTL for the configured
// secrets.cache_ttl (0: off) unless override (bench's
// --credential-cache-ttl; 0: none) says otherwise.
func credentialCacheTTL(configured, override time.Duration) time.Duration {
	switch {
	case override != 0:
		return override
	case configured == 0:
		return -1
	default:
		return configured
	}
}
