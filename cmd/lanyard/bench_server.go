package main

// The server half of `lanyard bench`: a real Lanyard (the same openApp and
// mountOAuth as `lanyard serve`, bbolt and a real Vault) that seeds users,
// linked connections and grants through the services users go through,
// writes what the load generator needs into a fixture file, and serves. Its
// stdout carries the "ready" line and progress lines, which the load
// generator copies to its stderr (the server's own log goes to a file). It
// runs as a child process of the load generator so that its CPU time and
// peak RSS are its own. See bench.go.

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/pprof"
	"net/url"
	"os"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lanyardhq/lanyard/broker"
	"github.com/lanyardhq/lanyard/broker/authserver"
	"github.com/lanyardhq/lanyard/broker/token"
	"github.com/lanyardhq/lanyard/connectors"
	"github.com/lanyardhq/lanyard/connectors/apikey"
	"github.com/lanyardhq/lanyard/internal/bolt"
	"github.com/lanyardhq/lanyard/internal/config"
)

// Names of the bench world.
const (
	benchResourceID  = "bench-mcp"
	benchResourceURI = "https://bench-mcp.example.com/mcp"
	benchClientID    = "bench-agent"
	benchRedirect    = "http://127.0.0.1/callback"
	benchKeys        = "keys" // apikey connector, no verify_url
	benchIdP         = "idp"  // oauth2 connector at the stub provider
	benchTool        = "read_mail"
	benchScope       = "mail.read"
	benchVerifier    = "bench-pkce-verifier-0123456789abcdefghijklmnopqrstuvwxyz" // 43+ chars
)

// benchFixture is what the server hands the load generator.
type benchFixture struct {
	URL            string       `json:"url"`     // Lanyard's listening address
	Control        string       `json:"control"` // mint codes, pprof
	ResourceID     string       `json:"resource_id"`
	ResourceSecret string       `json:"resource_secret"`
	ClientID       string       `json:"client_id"`
	Redirect       string       `json:"redirect_uri"`
	VaultMount     string       `json:"vault_mount"`
	Grants         []benchGrant `json:"grants"`
	SeedSeconds    float64      `json:"seed_seconds"`
	// SeedUsersSeconds is the part of SeedSeconds spent on the users
	// (before the extra grants).
	SeedUsersSeconds float64 `json:"seed_users_seconds"`
	ExtraGrants      int     `json:"extra_grants"`
	Pid              int     `json:"pid"`
	StoreBytes       int64   `json:"store_bytes"`
	HeapAfterSeed    uint64  `json:"heap_after_seed"`
}

// benchGrant is one user's grant: an access token for the bench MCP server
// and the Vault path of the user's API key (for the Vault-direct baseline).
type benchGrant struct {
	User      string `json:"user"`
	GrantID   string `json:"grant_id"`
	Token     string `json:"token"`
	VaultPath string `json:"vault_path"`
}

type benchServerFlags struct {
	data, fixture, logLevel string
	users, extraGrants      int
	tokenTTL                time.Duration
}

// benchServer runs the seeded Lanyard until ctx ends.
func (m *Main) benchServer(ctx context.Context, args []string) error {
	fs := m.flagSet("bench server", "[flags]", "Internal: the server process of 'lanyard bench' (seeds a fresh Lanyard and serves it).")
	var f benchServerFlags
	fs.StringVar(&f.data, "data", "", "fresh data directory (required)")
	fs.StringVar(&f.fixture, "fixture", "", "file to write the fixture to (required)")
	fs.StringVar(&f.logLevel, "log-level", "info", "log level")
	fs.IntVar(&f.users, "users", 200, "users, each with two linked connections and one grant")
	fs.IntVar(&f.extraGrants, "extra-grants", 0, "more grants (of the seeded users, in the store only) to grow the grant table")
	fs.DurationVar(&f.tokenTTL, "token-ttl", time.Hour, "access token lifetime")
	fs.DurationVar(&m.credCacheTTL, "credential-cache-ttl", 0, "credential cache TTL of the link service (0: its default; negative: no cache)")
	if err := parse(fs, args); err != nil {
		return err
	}
	addr, tok := m.Getenv("VAULT_ADDR"), m.Getenv("VAULT_TOKEN")
	if addr == "" || tok == "" {
		return usagef("bench: VAULT_ADDR and VAULT_TOKEN must name a real Vault (the baseline and the secret store)")
	}
	if f.data == "" || f.fixture == "" || f.users < 1 {
		return usagef("bench server: --data, --fixture and --users >= 1 are required")
	}
	stub, err := startStubProvider()
	if err != nil {
		return err
	}
	defer stub.Close()
	secret := randHex(24)
	cfg := config.Default()
	cfg.Dev, cfg.Listen, cfg.DataDir = true, "127.0.0.1:0", f.data
	cfg.Log.Level, cfg.Log.Format = f.logLevel, "json"
	cfg.OAuth.AccessTokenTTL = f.tokenTTL
	cfg.Secrets.Backend = "vault"
	cfg.Secrets.Vault.Address, cfg.Secrets.Vault.Token = addr, broker.SecretString(tok)
	cfg.Secrets.Vault.Prefix = "lanyard-bench-" + randHex(4) // a fresh corner of the mount
	cfg.Secrets.Vault.AllowInsecureHTTP = true
	cfg.Connectors = []config.Connector{
		{Name: benchKeys, Kind: connectors.KindAPIKey, DisplayName: "Keys", APIKey: config.APIKeyConnector{Header: "X-Api-Key"}},
		{Name: benchIdP, Kind: connectors.KindOAuth2, DisplayName: "IdP", OAuth2: config.OAuth2Connector{
			ClientID: "lanyard", ClientSecret: "stub-secret", AuthURL: "http://" + stub.Addr().String() + "/authorize",
			TokenURL: "http://" + stub.Addr().String() + "/token"}},
	}
	cfg.Resources = []config.Resource{{ID: benchResourceID, URI: benchResourceURI, Name: "Bench MCP",
		Scopes: []string{benchScope}, ClientSecret: broker.SecretString(secret), Connectors: []string{benchKeys, benchIdP},
		Policy: config.Policy{Default: "deny", Tools: []config.ToolRule{{Name: benchTool, Scopes: []string{benchScope}}}}}}
	cfg.Clients = []config.Client{{ClientID: benchClientID, Name: "Bench agent", RedirectURIs: []string{benchRedirect},
		GrantTypes: []string{authserver.GrantAuthorizationCode, authserver.GrantRefreshToken}}}
	if cfg, err = finish(cfg); err != nil {
		return err
	}
	a, err := m.openApp(ctx, cfg)
	if err != nil {
		return err
	}
	defer a.close()

	start := time.Now()
	grants, err := benchSeed(ctx, a, f.users, f.tokenTTL, m.Stdout)
	if err != nil {
		return fmt.Errorf("seed: %w", err)
	}
	usersSeconds := time.Since(start).Seconds()
	if err := benchExtraGrants(ctx, a, grants, f.users, f.extraGrants, m.Stdout); err != nil {
		return fmt.Errorf("extra grants: %w", err)
	}
	fx := benchFixture{URL: a.local, ResourceID: benchResourceID, ResourceSecret: secret, ClientID: benchClientID,
		Redirect: benchRedirect, VaultMount: cfg.Secrets.Vault.Mount, Grants: grants,
		SeedSeconds: time.Since(start).Seconds(), SeedUsersSeconds: usersSeconds, ExtraGrants: f.extraGrants, Pid: os.Getpid()}
	fx.HeapAfterSeed = benchLiveHeap()
	if st, err := os.Stat(cfg.Store.Bolt.Path); err == nil {
		fx.StoreBytes = st.Size()
	}
	ctl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	fx.Control = "http://" + ctl.Addr().String()
	ctl0 := &benchCtl{a: a, grants: grants, storePath: cfg.Store.Bolt.Path, out: m.Stdout}
	ctl0.count.Store(int64(f.users + f.extraGrants))
	ctlSrv := &http.Server{Handler: ctl0.handler(), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = ctlSrv.Serve(ctl) }()
	defer ctlSrv.Close()
	raw, err := json.Marshal(fx)
	if err != nil {
		return err
	}
	if err := os.WriteFile(f.fixture, raw, 0o600); err != nil {
		return err
	}
	fmt.Fprintf(m.Stdout, "ready %s\n", a.local)
	return a.run(ctx)
}

// benchSeed creates users, links an API key (links.Service.LinkForm: the
// key goes to Vault) and an OAuth account (BeginLink/CompleteLink against
// the stub provider) for each, approves the bench agent for both
// connections through authserver.Decide (the consent path: grant, consent
// audit record, code) and signs an access token for the grant.
func benchSeed(ctx context.Context, a *app, n int, ttl time.Duration, progress io.Writer) ([]benchGrant, error) {
	out := make([]benchGrant, n)
	p := startBenchProgress(progress, "seeded users", n)
	err := benchParallel(n, func(i int) error {
		g, err := benchSeedUser(ctx, a, i, ttl)
		if err != nil {
			return fmt.Errorf("user %d: %w", i, err)
		}
		out[i] = g
		p.add()
		return nil
	})
	p.stop(err)
	return out, err
}

// benchParallel runs do(0..n-1) on 32 goroutines and returns the first
// error; after one, no further i is started.
func benchParallel(n int, do func(i int) error) error {
	return benchParallelN(32, n, do)
}

// benchParallelN is benchParallel on width goroutines.
func benchParallelN(width, n int, do func(i int) error) error {
	var next atomic.Int64
	var wg sync.WaitGroup
	var once sync.Once
	var failed atomic.Bool
	var first error
	for range min(width, n) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= n || failed.Load() {
					return
				}
				if err := do(i); err != nil {
					once.Do(func() { first = err })
					failed.Store(true)
					return
				}
			}
		}()
	}
	wg.Wait()
	return first
}

func benchSeedUser(ctx context.Context, a *app, i int, ttl time.Duration) (benchGrant, error) {
	now := time.Now()
	u := broker.User{ID: broker.NewID(), Username: fmt.Sprintf("bench-user-%07d", i), CreatedAt: now, UpdatedAt: now}
	if err := a.store.Users().Create(ctx, u); err != nil {
		return benchGrant{}, err
	}
	keyConn, err := a.links.LinkForm(ctx, u.ID, benchKeys, "", connectors.Input{apikey.FieldKey: broker.SecretString("bench-key-" + randHex(16))})
	if err != nil {
		return benchGrant{}, fmt.Errorf("link api key: %w", err)
	}
	session := "bench-session-" + u.ID
	authURL, err := a.links.BeginLink(ctx, u.ID, session, benchIdP, "")
	if err != nil {
		return benchGrant{}, fmt.Errorf("begin oauth link: %w", err)
	}
	au, err := url.Parse(authURL)
	if err != nil {
		return benchGrant{}, err
	}
	idpConn, err := a.links.CompleteLink(ctx, u.ID, session, benchIdP, url.Values{"state": {au.Query().Get("state")}, "code": {"stub-code"}})
	if err != nil {
		return benchGrant{}, fmt.Errorf("complete oauth link: %w", err)
	}
	if _, err := benchCode(ctx, a, u, authserver.Decision{Approve: true, ConnectionIDs: []string{keyConn.ID, idpConn.ID}}); err != nil {
		return benchGrant{}, fmt.Errorf("consent: %w", err)
	}
	page, err := a.store.Grants().List(ctx, broker.Query{Index: broker.IndexUser, Value: u.ID})
	if err != nil || len(page.Items) != 1 {
		return benchGrant{}, fmt.Errorf("grant after consent: %d grants, %v", len(page.Items), err)
	}
	g := page.Items[0]
	tok, err := a.keys.Sign(ctx, token.Claims{Issuer: a.url, Subject: u.ID, Audience: benchResourceURI, ClientID: benchClientID,
		Scopes: []string{benchScope}, GrantID: g.ID, JTI: broker.NewID(), IssuedAt: now, ExpiresAt: now.Add(ttl)})
	if err != nil {
		return benchGrant{}, err
	}
	return benchGrant{User: u.ID, GrantID: g.ID, Token: tok,
		VaultPath: a.cfg.Secrets.Vault.Prefix + "/" + keyConn.SecretKey.Owner + "/" + keyConn.SecretKey.Name}, nil
}

// benchExtraWidth is how many grants benchExtraGrants writes at once:
// enough concurrent writes for the store's group commit to fill its
// transactions (bolt commits up to 1,000 writes per fsync), so that a
// million grants take a thousand fsyncs rather than tens of thousands.
const benchExtraWidth = 2048

// benchExtraGrants adds n idle grants for the seeded users' connections
// straight into the store (the n after the first first ones), so the grant
// table is large while the redeemed grants stay the same. Each grant is
// its own Create, as a consent would write it (random ID, both indexes);
// progress goes to progress every few seconds.
func benchExtraGrants(ctx context.Context, a *app, seeded []benchGrant, first, n int, progress io.Writer) error {
	if n <= 0 {
		return nil
	}
	p := startBenchProgress(progress, "added idle grants", n)
	err := benchParallelN(benchExtraWidth, n, func(i int) error {
		i += first
		s := seeded[i%len(seeded)]
		now := time.Now()
		g := broker.Grant{ID: broker.NewID(), UserID: s.User, ClientID: benchClientID + "-filler-" + strconv.Itoa(i),
			Resource: benchResourceURI, Scopes: []string{benchScope}, CreatedAt: now, UpdatedAt: now}
		err := a.store.Grants().Create(ctx, g)
		if err == nil {
			p.add()
		}
		return err
	})
	p.stop(err)
	return err
}

// benchProgress prints how far a long step is, every 5 s and at its end:
// "bench server: <what> k/n (rate/s)".
type benchProgress struct {
	w     io.Writer
	what  string
	n     int
	done  atomic.Int64
	start time.Time
	quit  chan struct{}
	wg    sync.WaitGroup
}

func startBenchProgress(w io.Writer, what string, n int) *benchProgress {
	p := &benchProgress{w: w, what: what, n: n, start: time.Now(), quit: make(chan struct{})}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		t := time.NewTicker(5 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-p.quit:
				return
			case <-t.C:
				p.line("")
			}
		}
	}()
	return p
}

func (p *benchProgress) add() { p.done.Add(1) }

func (p *benchProgress) line(end string) {
	k, secs := p.done.Load(), time.Since(p.start).Seconds()
	fmt.Fprintf(p.w, "bench server: %s %d/%d in %.1fs (%.0f/s)%s\n", p.what, k, p.n, secs, float64(k)/secs, end)
}

// stop ends the reports with a last one.
func (p *benchProgress) stop(err error) {
	close(p.quit)
	p.wg.Wait()
	end := ", done"
	if err != nil {
		end = ", failed: " + err.Error()
	}
	p.line(end)
}

// benchCode stores an authorization request of u for the bench agent and
// decides it (the consent page's call), returning the code.
func benchCode(ctx context.Context, a *app, u broker.User, d authserver.Decision) (string, error) {
	now := time.Now()
	sum := sha256.Sum256([]byte(benchVerifier))
	req := broker.AuthRequest{ID: broker.NewID(), ClientID: benchClientID, RedirectURI: benchRedirect,
		CodeChallenge: base64.RawURLEncoding.EncodeToString(sum[:]), Resource: benchResourceURI,
		Scopes: []string{benchScope, authserver.ScopeOfflineAccess}, UserID: u.ID, CreatedAt: now,
		ExpiresAt: now.Add(authserver.AuthRequestTTL)}
	if err := a.store.AuthRequests().Create(ctx, req); err != nil {
		return "", err
	}
	back, err := a.auth.Decide(ctx, req.ID, u, d)
	if err != nil {
		return "", err
	}
	bu, err := url.Parse(back)
	if err != nil {
		return "", err
	}
	code := bu.Query().Get("code")
	if code == "" {
		return "", fmt.Errorf("no code in %q", bu.Redacted())
	}
	return code, nil
}

// benchCtl is the control listener of the bench server.
type benchCtl struct {
	a         *app
	grants    []benchGrant
	storePath string
	out       io.Writer    // progress
	count     atomic.Int64 // grants in the store
	growing   sync.Mutex
}

// benchGrowth is the answer of POST /grow.
type benchGrowth struct {
	Added      int     `json:"added"`
	Grants     int     `json:"grants"`
	Seconds    float64 `json:"seconds"`
	StoreBytes int64   `json:"store_bytes"`
	HeapAlloc  uint64  `json:"heap_alloc"`
}

// handler serves the load generator: POST /mint?n=K mints K codes
// (remembered consent, through Decide) spread over the seeded users; POST
// /grow?to=N adds idle grants (benchExtraGrants) until the store holds N;
// GET /heap and /commits report the live heap and the group commit's
// counters; /debug/pprof/ profiles this process. It listens on its own
// loopback port, never on Lanyard's.
func (c *benchCtl) handler() http.Handler {
	a, grants := c.a, c.grants
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("GET /heap", func(w http.ResponseWriter, r *http.Request) {
		_ = json.NewEncoder(w).Encode(map[string]uint64{"heap_alloc": benchLiveHeap()})
	})
	mux.HandleFunc("GET /commits", func(w http.ResponseWriter, r *http.Request) {
		var st bolt.CommitStats
		if db, ok := a.store.(interface{ CommitStats() bolt.CommitStats }); ok { // bbolt only
			st = db.CommitStats()
		}
		_ = json.NewEncoder(w).Encode(map[string]int64{"commits": st.Commits, "calls": st.Calls, "nanos": int64(st.Time)})
	})
	mux.HandleFunc("POST /grow", func(w http.ResponseWriter, r *http.Request) {
		to, err := strconv.Atoi(r.URL.Query().Get("to"))
		if err != nil || to < 1 {
			http.Error(w, "to must be a positive number of grants", http.StatusBadRequest)
			return
		}
		c.growing.Lock()
		defer c.growing.Unlock()
		have := int(c.count.Load())
		start := time.Now()
		var g benchGrowth
		if to > have {
			err = benchExtraGrants(r.Context(), a, grants, have, to-have, c.out)
			if err != nil {
				http.Error(w, err.Error(), http.StatusInternalServerError)
				return
			}
			g.Added = to - have
			c.count.Store(int64(to))
		}
		g.Grants, g.Seconds, g.HeapAlloc = int(c.count.Load()), time.Since(start).Seconds(), benchLiveHeap()
		if st, err := os.Stat(c.storePath); err == nil {
			g.StoreBytes = st.Size()
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(g)
	})
	mux.HandleFunc("POST /mint", func(w http.ResponseWriter, r *http.Request) {
		n, err := strconv.Atoi(r.URL.Query().Get("n"))
		if err != nil || n < 1 || n > 1_000_000 {
			http.Error(w, "n must be 1..1000000", http.StatusBadRequest)
			return
		}
		codes := make([]string, n)
		err = benchParallel(n, func(i int) error {
			g := grants[i%len(grants)]
			u, err := a.store.Users().Get(r.Context(), g.User)
			if err == nil {
				codes[i], err = benchCode(r.Context(), a, u, authserver.Decision{Approve: true, Remembered: true})
			}
			return err
		})
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{"codes": codes, "verifier": benchVerifier})
	})
	return mux
}

// benchLiveHeap is the live heap after a GC.
func benchLiveHeap() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// startStubProvider serves an OAuth token endpoint that answers every
// authorization code with a fresh hour-long access token and a refresh
// token: the upstream provider of the idp connector. It is called only
// when an account is linked (and when a token is near its expiry, which
// the bench never reaches).
func startStubProvider() (net.Listener, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /token", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{"access_token": "upstream-at-" + randHex(16), "token_type": "Bearer",
			"refresh_token": "upstream-rt-" + randHex(16), "expires_in": 3600})
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, net.ErrClosed) && !errors.Is(err, http.ErrServerClosed) {
			fmt.Fprintln(os.Stderr, "stub provider:", err)
		}
	}()
	return ln, nil
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
