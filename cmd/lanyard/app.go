package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/lanyardhq/lanyard/broker"
	"github.com/lanyardhq/lanyard/broker/authserver"
	"github.com/lanyardhq/lanyard/broker/links"
	"github.com/lanyardhq/lanyard/broker/token"
	"github.com/lanyardhq/lanyard/internal/bolt"
	"github.com/lanyardhq/lanyard/internal/config"
	"github.com/lanyardhq/lanyard/internal/etcd"
	"github.com/lanyardhq/lanyard/internal/gctune"
	"github.com/lanyardhq/lanyard/internal/metrics"
	"github.com/lanyardhq/lanyard/internal/password"
	"github.com/lanyardhq/lanyard/internal/server"
	"github.com/lanyardhq/lanyard/vault"
	"github.com/lanyardhq/lanyard/vault/sealed"
)

// app is one running Lanyard: its stores and its HTTP server.
type app struct {
	cfg      config.Config
	log      *slog.Logger
	metrics  *metrics.Metrics
	store    broker.Store
	secrets  broker.SecretStore
	closeSec func()
	stopGC   func()
	srv      *server.Server
	keys     *token.Keyring
	auth     *authserver.Server
	links    *links.Service
	ln       net.Listener
	url      string // the public base URL (the issuer)
	local    string // http://the-address-listened-on
}

func newLogger(cfg config.Log, w interface{ Write([]byte) (int, error) }) *slog.Logger {
	var lvl slog.Level
	_ = lvl.UnmarshalText([]byte(cfg.Level))
	opts := &slog.HandlerOptions{Level: lvl}
	if cfg.Format == "text" {
		return slog.New(slog.NewTextHandler(w, opts))
	}
	return slog.New(slog.NewJSONHandler(w, opts))
}

// openStore opens the metadata store named by cfg.
func openStore(ctx context.Context, cfg config.Config, obs broker.Observer) (broker.Store, error) {
	if cfg.Store.Backend == "etcd" {
		opts, err := etcdOptions(cfg, obs)
		if err != nil {
			return nil, err
		}
		return etcd.Open(ctx, opts)
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("data dir: %w", err)
	}
	return bolt.Open(cfg.Store.Bolt.Path, bolt.Options{Observer: obs})
}

// etcdOptions maps the config file's store.etcd to the store's Options,
// reading the TLS files.
func etcdOptions(cfg config.Config, obs broker.Observer) (etcd.Options, error) {
	e := cfg.Store.Etcd
	opts := etcd.Options{Endpoints: e.Endpoints, Prefix: e.Prefix, Observer: obs, DialTimeout: e.DialTimeout,
		RequestTimeout: e.RequestTimeout, Username: e.Username, Password: e.Password.Reveal()}
	if e.CACert == "" && e.Cert == "" && !strings.HasPrefix(firstOr(e.Endpoints, ""), "https://") {
		return opts, nil
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if e.CACert != "" {
		pem, err := os.ReadFile(e.CACert)
		if err != nil {
			return opts, fmt.Errorf("store.etcd.ca_cert: %w", err)
		}
		tc.RootCAs = x509.NewCertPool()
		if !tc.RootCAs.AppendCertsFromPEM(pem) {
			return opts, fmt.Errorf("store.etcd.ca_cert: %s holds no PEM certificate", e.CACert)
		}
	}
	if e.Cert != "" {
		kp, err := tls.LoadX509KeyPair(e.Cert, e.Key)
		if err != nil {
			return opts, fmt.Errorf("store.etcd.cert, key: %w", err)
		}
		tc.Certificates = []tls.Certificate{kp}
	}
	opts.TLS = tc
	return opts, nil
}

func firstOr(s []string, def string) string {
	if len(s) == 0 {
		return def
	}
	return s[0]
}

// storeLock is links.Options.Lock for store: etcd's lease-backed lock, or
// nil for bolt (one process; single-flight is enough).
func storeLock(store broker.Store) func(context.Context, string) (func(), error) {
	if s, ok := store.(*etcd.Store); ok {
		return s.Lock
	}
	return nil
}

// openSecrets opens the secret store named by cfg. The sealed store keeps
// its ciphertexts in the bolt file, so it needs the bolt metadata store.
func openSecrets(ctx context.Context, cfg config.Config, store broker.Store, obs broker.Observer, log *slog.Logger) (broker.SecretStore, func(), error) {
	switch cfg.Secrets.Backend {
	case "vault":
		s, err := vault.New(ctx, vaultConfig(cfg, obs, log))
		if err != nil {
			return nil, nil, err
		}
		return s, s.Close, nil
	default:
		db, ok := store.(*bolt.DB)
		if !ok {
			return nil, nil, errors.New("the sealed secret store needs store.backend: bolt")
		}
		s, err := sealed.Open(db, cfg.Secrets.Sealed.KeyFile, sealed.Options{Observer: obs})
		if err != nil {
			return nil, nil, err
		}
		return s, func() {}, nil
	}
}

// openApp opens the stores, bootstraps the admin user and listens. On error
// everything opened so far is closed.
func (m *Main) openApp(ctx context.Context, cfg config.Config) (_ *app, err error) {
	a := &app{cfg: cfg, log: newLogger(cfg.Log, m.Stderr), metrics: metrics.New()}
	defer func() {
		if err != nil {
			a.close()
		}
	}()
	a.stopGC = gctune.Start(uint64(cfg.Runtime.GCHeadroomMB)<<20, a.log)
	obs := a.metrics.Observer()
	if a.store, err = openStore(ctx, cfg, obs); err != nil {
		return nil, err
	}
	if a.secrets, a.closeSec, err = openSecrets(ctx, cfg, a.store, obs, a.log); err != nil {
		return nil, fmt.Errorf("secret store: %w", err)
	}
	if err := m.bootstrap(ctx, a); err != nil {
		return nil, err
	}
	a.srv = server.New(server.Options{
		HTTP: cfg.HTTP, Logger: a.log, Metrics: a.metrics,
		Checks: map[string]server.Check{"store": a.store.Ping, "secrets": a.secrets.Ping},
	})
	var lc net.ListenConfig
	if a.ln, err = lc.Listen(ctx, "tcp", cfg.Listen); err != nil {
		return nil, fmt.Errorf("listen: %w", err)
	}
	a.local = "http://" + a.ln.Addr().String()
	a.url = cfg.Issuer
	if a.url == "" {
		a.url = a.local
	}
	if err := m.mountOAuth(ctx, a); err != nil {
		return nil, err
	}
	return a, nil
}

// bootstrap applies LANYARD_BOOTSTRAP_USER / LANYARD_BOOTSTRAP_PASSWORD. In
// dev mode, with neither set and no users at all, it creates "admin" with a
// random password and prints the login once (never to the log).
func (m *Main) bootstrap(ctx context.Context, a *app) error {
	user, pass := m.Getenv("LANYARD_BOOTSTRAP_USER"), broker.SecretString(m.Getenv("LANYARD_BOOTSTRAP_PASSWORD"))
	now := time.Now()
	switch {
	case user != "" && pass != "":
		hash, err := password.Hash(pass, m.PasswordCost)
		if err != nil {
			return usagef("LANYARD_BOOTSTRAP_PASSWORD: %v", err)
		}
		created, err := broker.EnsureAdmin(ctx, a.store.Users(), user, hash, now)
		if err != nil {
			if errors.Is(err, broker.ErrInvalid) {
				return usagef("LANYARD_BOOTSTRAP_USER: %v", err)
			}
			return err
		}
		a.log.Info("bootstrap admin applied", "user", user, "created", created)
		if u, err := a.store.Users().GetBy(ctx, broker.IndexUsername, user); err == nil && u.Disabled {
			a.log.Warn("bootstrap admin is disabled; it stays disabled until an operator enables it", "user", user)
		}
	case user != "" || pass != "":
		return usagef("set both LANYARD_BOOTSTRAP_USER and LANYARD_BOOTSTRAP_PASSWORD, or neither")
	case a.cfg.Dev:
		page, err := a.store.Users().List(ctx, broker.Query{Limit: 1})
		if err != nil || len(page.Items) > 0 {
			return err
		}
		pass = broker.SecretString(randomPassword())
		hash, err := password.Hash(pass, m.PasswordCost)
		if err != nil {
			return err
		}
		if _, err := broker.EnsureAdmin(ctx, a.store.Users(), "admin", hash, now); err != nil {
			return err
		}
		fmt.Fprintf(m.Stdout, "Created dev login: user admin, password %s (shown once; change it with 'lanyard users set-password admin')\n", pass.Reveal())
	}
	return nil
}

// run serves until ctx is cancelled, then shuts down gracefully.
func (a *app) run(ctx context.Context) error {
	errc := make(chan error, 1)
	go func() { errc <- a.srv.Serve(a.ln) }()
	sweepCtx, stopSweep := context.WithCancel(ctx)
	defer stopSweep()
	go a.sweep(sweepCtx, time.Minute)
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	a.log.Info("shutting down")
	if err := a.srv.Shutdown(context.WithoutCancel(ctx)); err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	return <-errc
}

// sweep deletes expired records (codes, tokens, cached clients) every
// interval until ctx ends.
func (a *app) sweep(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if a.keys != nil {
				// Another replica, or `lanyard keys rotate`, may have changed the keys.
				if err := a.keys.Reload(ctx); err != nil && ctx.Err() == nil {
					a.log.Warn("reload signing keys", "err", err)
				}
			}
			n, err := a.store.Sweep(ctx)
			switch {
			case err != nil && ctx.Err() == nil:
				a.log.Warn("sweep expired records", "err", err)
			case n > 0:
				a.log.Info("swept expired records", "count", n)
			}
		}
	}
}

func (a *app) close() {
	if a.ln != nil {
		_ = a.ln.Close()
	}
	if a.closeSec != nil {
		a.closeSec()
	}
	if a.store != nil {
		if err := a.store.Close(); err != nil {
			a.log.Error("close store", "err", err)
		}
	}
	if a.stopGC != nil {
		a.stopGC()
	}
}

// serveApp opens, runs and closes an app.
func (m *Main) serveApp(ctx context.Context, cfg config.Config) error {
	a, err := m.openApp(ctx, cfg)
	if err != nil {
		return err
	}
	defer a.close()
	a.log.Info("lanyard listening", "url", a.url, "addr", a.ln.Addr().String(),
		"store", a.cfg.Store.Backend, "secrets", a.cfg.Secrets.Backend)
	fmt.Fprintf(m.Stdout, "Lanyard is running at %s\n", a.url)
	if a.local != a.url {
		fmt.Fprintf(m.Stdout, "Listening on %s\n", a.local)
	}
	if m.OnReady != nil {
		m.OnReady(a.local)
	}
	return a.run(ctx)
}

func (m *Main) dev(ctx context.Context, args []string) error {
	fs := m.flagSet("dev", "[flags]", "Runs an all-in-one Lanyard with embedded defaults: bbolt metadata and the\nembedded sealed secret store under --data, or a real Vault when VAULT_ADDR\nand VAULT_TOKEN are set.")
	cfg := config.Default()
	fs.StringVar(&cfg.Listen, "addr", cfg.Listen, "listen address (host:port)")
	fs.StringVar(&cfg.DataDir, "data", cfg.DataDir, "data directory")
	fs.StringVar(&cfg.Log.Level, "log-level", "info", "log level: debug, info, warn, error")
	cfgFile := fs.String("config", "", "optional configuration file (resources, clients, oauth); --addr and --data override its listen and data_dir")
	if err := parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usagef("dev: unexpected argument %q", fs.Arg(0))
	}
	if *cfgFile != "" {
		fileCfg, err := config.LoadDev(*cfgFile, m.Getenv)
		if err != nil {
			return err
		}
		fileCfg.Listen, fileCfg.DataDir, fileCfg.Log.Level = cfg.Listen, cfg.DataDir, cfg.Log.Level
		cfg = fileCfg
	}
	cfg.Dev, cfg.Log.Format = true, "text"
	if addr, tok := m.Getenv("VAULT_ADDR"), m.Getenv("VAULT_TOKEN"); addr != "" && tok != "" {
		cfg.Secrets.Backend = "vault"
		cfg.Secrets.Vault.Address, cfg.Secrets.Vault.Token = addr, broker.SecretString(tok)
	}
	cfg, err := finish(cfg)
	if err != nil {
		return err
	}
	return m.serveApp(ctx, cfg)
}

// finish validates a config built from flags the same way a file is.
func finish(cfg config.Config) (config.Config, error) {
	cfg.Store.Bolt.Path = filepath.Join(cfg.DataDir, "lanyard.db")
	cfg.Secrets.Sealed.KeyFile = filepath.Join(cfg.DataDir, "sealed.key")
	return config.Finish(cfg)
}

func (m *Main) serve(ctx context.Context, args []string) error {
	fs := m.flagSet("serve", "--config FILE", "Runs Lanyard from a YAML configuration file (see configs/lanyard.example.yaml).")
	path := fs.String("config", "", "configuration file (required)")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *path == "" || fs.NArg() > 0 {
		return usagef("serve: --config FILE is required and takes no arguments")
	}
	cfg, err := config.Load(*path, m.Getenv)
	if err != nil {
		return err
	}
	return m.serveApp(ctx, cfg)
}

func (m *Main) configCmd(_ context.Context, args []string) error {
	if len(args) == 0 || args[0] != "check" {
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help") {
			fmt.Fprintln(m.Stdout, "Usage: lanyard config check --config FILE\n\nValidates a configuration file and lists every problem (exit status 2).")
			return nil
		}
		return usagef("config: the only subcommand is 'check --config FILE'")
	}
	fs := m.flagSet("config check", "--config FILE", "Validates a configuration file and lists every problem (exit status 2).")
	path := fs.String("config", "", "configuration file (required)")
	if err := parse(fs, args[1:]); err != nil {
		return err
	}
	if *path == "" {
		return usagef("config check: --config FILE is required")
	}
	cfg, err := config.Load(*path, m.Getenv)
	if err != nil {
		return err
	}
	// The checks `serve` would only make at start-up, short of contacting
	// anything.
	var probs config.Problems
	if cfg.Secrets.Backend == "vault" {
		if err := vaultConfig(cfg, nil, nil).Validate(); err != nil {
			probs = append(probs, err.Error())
		}
	}
	if cfg.Store.Backend == "etcd" {
		if _, err := etcdOptions(cfg, nil); err != nil {
			probs = append(probs, err.Error())
		}
	}
	if len(probs) > 0 {
		return probs
	}
	fmt.Fprintln(m.Stdout, "configuration is valid")
	return nil
}

// vaultConfig maps the config file's secrets.vault to the store's Config.
func vaultConfig(cfg config.Config, obs broker.Observer, log *slog.Logger) vault.Config {
	v := cfg.Secrets.Vault
	vc := vault.Config{
		Address: v.Address, Token: v.Token, Mount: v.Mount, Prefix: v.Prefix, Timeout: v.Timeout,
		CACert: v.CACert, AllowInsecureHTTP: v.AllowInsecureHTTP, Observer: obs, Logger: log,
	}
	if v.AppRole != nil {
		vc.AppRole = &vault.AppRoleConfig{MountPath: v.AppRole.MountPath, RoleID: v.AppRole.RoleID, SecretID: v.AppRole.SecretID}
	}
	return vc
}
