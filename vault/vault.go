// Package vault implements broker.SecretStore on HashiCorp Vault's KV version
// 2 secrets engine, using check-and-set writes so that concurrent writers
// cannot overwrite each other.
//
// It is the only package of the module that imports
// github.com/hashicorp/vault/api. A secret with key owner/name lives at
// <mount>/data/<prefix>/<owner>/<name>, its fields stored as a map of strings.
// The store authenticates with a static token or with AppRole; an AppRole
// token is renewed in the background and replaced by logging in again when it
// reaches its maximum lifetime. A sealed, unreachable or slow Vault yields
// errors wrapping broker.ErrUnavailable within Config.Timeout.
//
// The embedded alternative for single-binary use lives in vault/sealed.
package vault

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/vault/api"
	"github.com/hashicorp/vault/api/auth/approle"

	"github.com/lanyardhq/lanyard/broker"
)

// component is the name the store reports to its Observer.
const component = "vault"

// Store is a broker.SecretStore backed by Vault KV v2. It is safe for
// concurrent use. Close stops its background goroutine.
type Store struct {
	cfg    Config
	log    *slog.Logger
	client *api.Client
	kv     *api.KVv2

	// loginMu serialises AppRole logins.
	loginMu sync.Mutex
	// fresh hands a token obtained outside the keep-alive goroutine (a
	// re-login after "permission denied") to it, so it watches that token.
	fresh chan *api.Secret

	stop      context.CancelFunc
	done      chan struct{}
	closeOnce sync.Once
}

var _ broker.SecretStore = (*Store)(nil)

// New returns a store for cfg. With a token it does not contact Vault. With
// AppRole it logs in once: invalid credentials are an error, while a sealed
// or unreachable Vault is not (the store keeps trying in the background and
// answers broker.ErrUnavailable until it succeeds).
func New(ctx context.Context, cfg Config) (*Store, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()

	client, err := newClient(cfg)
	if err != nil {
		return nil, err
	}
	s := &Store{
		cfg:    cfg,
		log:    cfg.Logger.With("component", component),
		client: client,
		kv:     client.KVv2(cfg.Mount),
		fresh:  make(chan *api.Secret, 1),
		done:   make(chan struct{}),
	}
	if cfg.AppRole == nil {
		client.SetToken(cfg.Token.Reveal())
		close(s.done)
		s.stop = func() {}
		return s, nil
	}

	first, err := s.login(ctx)
	if err != nil && !errors.Is(err, broker.ErrUnavailable) {
		return nil, err
	}
	if err != nil {
		s.log.Warn("vault approle login failed; retrying in the background", "err", err)
	}
	bg, stop := context.WithCancel(context.Background())
	s.stop = stop
	go s.keepAlive(bg, first)
	return s, nil
}

// newClient builds an API client from cfg alone: unlike api.DefaultConfig it
// does not take TLS settings, a token or a namespace from VAULT_*
// environment variables.
func newClient(cfg Config) (*api.Client, error) {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	tr.TLSHandshakeTimeout = cfg.Timeout
	ac := &api.Config{
		Address: cfg.Address,
		HttpClient: &http.Client{
			Transport: tr,
			// The API client follows Vault's redirects itself.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
		Timeout: cfg.Timeout,
		// One quick retry: a dead or sealed Vault must answer within
		// Timeout, not after minutes of back-off.
		MaxRetries:   1,
		MinRetryWait: 100 * time.Millisecond,
		MaxRetryWait: 500 * time.Millisecond,
	}
	if cfg.CACert != "" {
		if err := ac.ConfigureTLS(&api.TLSConfig{CACert: cfg.CACert}); err != nil {
			return nil, fmt.Errorf("vault: load CA certificate %s: %w", cfg.CACert, err)
		}
	}
	client, err := api.NewClient(ac)
	if err != nil {
		return nil, fmt.Errorf("vault: new client: %w", err)
	}
	client.ClearToken() // NewClient reads VAULT_TOKEN; only cfg decides.
	client.ClearNamespace()
	return client, nil
}

// Close stops the background token renewal. It does not revoke the token.
// Calls after Close still reach Vault with the last token.
func (s *Store) Close() {
	s.closeOnce.Do(func() {
		s.stop()
		<-s.done
	})
}

// login logs in with AppRole and sets the client's token. Its errors never
// contain the secret id.
func (s *Store) login(ctx context.Context) (*api.Secret, error) {
	s.loginMu.Lock()
	defer s.loginMu.Unlock()
	return s.loginLocked(ctx)
}

// loginLocked is login for a caller that holds loginMu.
func (s *Store) loginLocked(ctx context.Context) (sec *api.Secret, err error) {
	start := time.Now()
	defer func() { s.cfg.Observer.Observe(component, "login", start, err) }()

	ar := s.cfg.AppRole
	auth, err := approle.NewAppRoleAuth(ar.RoleID,
		&approle.SecretID{FromString: ar.SecretID.Reveal()}, approle.WithMountPath(ar.MountPath))
	if err != nil {
		return nil, fmt.Errorf("vault approle login: %w: %w", err, broker.ErrInvalid)
	}
	cctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
	defer cancel()
	sec, err = s.client.Auth().Login(cctx, auth)
	if err != nil {
		return nil, classify(ctx, "approle login", ar.MountPath, err, s.cfg.Timeout)
	}
	if sec == nil || sec.Auth == nil {
		return nil, fmt.Errorf("vault approle login: response carries no token")
	}
	s.log.Info("vault approle login succeeded", "ttl", time.Duration(sec.Auth.LeaseDuration)*time.Second,
		"renewable", sec.Auth.Renewable)
	return sec, nil
}

// relogin logs in again unless another caller already replaced the token
// stale was observed with, and hands the new token to keepAlive.
func (s *Store) relogin(ctx context.Context, stale string) error {
	s.loginMu.Lock()
	if s.client.Token() != stale {
		s.loginMu.Unlock()
		return nil
	}
	sec, err := s.loginLocked(ctx)
	s.loginMu.Unlock()
	if err != nil {
		return err
	}
	for { // never block: replace a token keepAlive has not picked up yet
		select {
		case s.fresh <- sec:
			return nil
		default:
		}
		select {
		case <-s.fresh:
		default:
		}
	}
}

// keepAlive renews the AppRole token with a LifetimeWatcher and, when the
// watcher gives up (maximum TTL reached, renewal failed), logs in again with
// exponential back-off. It runs until ctx is cancelled.
func (s *Store) keepAlive(ctx context.Context, sec *api.Secret) {
	defer close(s.done)
	backoff := 250 * time.Millisecond
	const maxBackoff = 30 * time.Second
	for {
		if sec == nil {
			var err error
			sec, err = s.login(ctx)
			if err != nil {
				if ctx.Err() != nil {
					return
				}
				wait := backoff/2 + rand.N(backoff/2+1)
				s.log.Warn("vault approle login failed", "err", err, "retry_in", wait)
				select {
				case <-ctx.Done():
					return
				case <-time.After(wait):
				}
				backoff = min(2*backoff, maxBackoff)
				continue
			}
			backoff = 250 * time.Millisecond
		}
		w, err := s.client.NewLifetimeWatcher(&api.LifetimeWatcherInput{Secret: sec})
		if err != nil {
			s.log.Warn("vault token watcher", "err", err)
			sec = nil
			continue
		}
		go w.Start()
		var ended bool
		sec, ended = s.watch(ctx, w)
		if !ended {
			w.Stop()
			<-w.DoneCh() // Start sends once; after Stop it returns promptly
		}
		if ctx.Err() != nil {
			return
		}
	}
}

// watch waits for the watcher to end, for a token from relogin, or for ctx.
// It returns the token to watch next (nil: log in again) and whether the
// watcher ended by itself (its DoneCh was read).
func (s *Store) watch(ctx context.Context, w *api.LifetimeWatcher) (*api.Secret, bool) {
	for {
		select {
		case <-ctx.Done():
			return nil, false
		case sec := <-s.fresh:
			return sec, false
		case r := <-w.RenewCh():
			if r != nil && r.Secret != nil && r.Secret.Auth != nil {
				s.log.Debug("vault token renewed", "ttl", time.Duration(r.Secret.Auth.LeaseDuration)*time.Second)
			}
		case err := <-w.DoneCh():
			if err != nil {
				s.log.Warn("vault token renewal stopped; logging in again", "err", err)
			} else {
				s.log.Info("vault token reached its maximum lifetime; logging in again")
			}
			return nil, true
		}
	}
}

// call runs fn with a context bounded by the store's timeout, reports it to
// the observer, and classifies its error. If Vault denies permission while
// the store uses AppRole, it logs in again once and retries (the token may
// have expired while the renewal was late).
func (s *Store) call(ctx context.Context, op, key string, fn func(ctx context.Context) error) (err error) {
	start := time.Now()
	defer func() { s.cfg.Observer.Observe(component, op, start, err) }()
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("%s: %w", where(op, key), err)
	}
	for attempt := 0; ; attempt++ {
		token := s.client.Token()
		if token == "" {
			return fmt.Errorf("%s: not logged in to vault yet: %w", where(op, key), broker.ErrUnavailable)
		}
		cctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
		raw := fn(cctx)
		cancel()
		if raw == nil {
			return nil
		}
		var re *api.ResponseError
		if attempt == 0 && s.cfg.AppRole != nil && errors.As(raw, &re) && re.StatusCode == http.StatusForbidden {
			if lerr := s.relogin(ctx, token); lerr == nil {
				continue
			}
		}
		return classify(ctx, op, key, raw, s.cfg.Timeout)
	}
}

// errCAS is returned by fn in Put when Vault rejected the check-and-set
// version; it never leaves the package.
var errCAS = errors.New("check-and-set mismatch")

// classify turns an error of the API client into one wrapping a broker
// sentinel. The message names the operation and key, never a secret: Vault's
// own error strings are kept, a raw response body is not.
func classify(ctx context.Context, op, key string, err error, timeout time.Duration) error {
	where := where(op, key)
	if cerr := ctx.Err(); cerr != nil {
		return fmt.Errorf("%s: %w", where, cerr)
	}
	if errors.Is(err, api.ErrSecretNotFound) {
		return fmt.Errorf("%s: %w", where, broker.ErrNotFound)
	}
	var re *api.ResponseError
	if errors.As(err, &re) {
		msg := fmt.Sprintf("vault answered %d", re.StatusCode)
		if !re.RawError && len(re.Errors) > 0 {
			msg += ": " + strings.Join(re.Errors, "; ")
		}
		sealed := slices.ContainsFunc(re.Errors, func(e string) bool { return strings.Contains(e, "sealed") })
		switch {
		case sealed || re.StatusCode == http.StatusServiceUnavailable ||
			re.StatusCode == http.StatusBadGateway || re.StatusCode == http.StatusGatewayTimeout ||
			re.StatusCode == http.StatusTooManyRequests:
			return fmt.Errorf("%s: %s: %w", where, msg, broker.ErrUnavailable)
		case re.StatusCode == http.StatusNotFound:
			return fmt.Errorf("%s: %s: %w", where, msg, broker.ErrNotFound)
		default:
			return fmt.Errorf("%s: %s", where, msg)
		}
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("%s: no answer within %v: %w", where, timeout, broker.ErrUnavailable)
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		// Transport failure: refused, reset, DNS, TLS handshake, timeout.
		return fmt.Errorf("%s: %w: %w", where, broker.ErrUnavailable, err)
	}
	return fmt.Errorf("%s: %w", where, err)
}

// where names a call in error messages: "vault get alice/github".
func where(op, key string) string {
	if key == "" {
		return "vault " + op
	}
	return "vault " + op + " " + key
}

func (s *Store) path(k broker.SecretKey) string {
	return s.cfg.Prefix + "/" + k.Owner + "/" + k.Name
}

// Put implements broker.SecretStore.
func (s *Store) Put(ctx context.Context, key broker.SecretKey, sec broker.Secret, cas int) (int, error) {
	if err := key.Validate(); err != nil {
		return 0, fmt.Errorf("vault put: %w", err)
	}
	if cas < broker.CASAny {
		return 0, fmt.Errorf("vault put %s: check-and-set version %d: %w", key, cas, broker.ErrInvalid)
	}
	fields := sec.Fields()
	data := make(map[string]any, len(fields))
	for k, v := range fields {
		data[k] = v
	}
	var opts []api.KVOption
	if cas != broker.CASAny {
		opts = append(opts, api.WithCheckAndSet(cas))
	}
	var version int
	err := s.call(ctx, "put", key.String(), func(ctx context.Context) error {
		res, err := s.kv.Put(ctx, s.path(key), data, opts...)
		if err != nil {
			var re *api.ResponseError
			if errors.As(err, &re) && re.StatusCode == http.StatusBadRequest &&
				slices.ContainsFunc(re.Errors, func(e string) bool { return strings.Contains(e, "check-and-set") }) {
				return errCAS
			}
			return err
		}
		if res == nil || res.VersionMetadata == nil {
			return fmt.Errorf("response carries no version")
		}
		version = res.VersionMetadata.Version
		return nil
	})
	if errors.Is(err, errCAS) {
		if cas == broker.CASCreate {
			return 0, fmt.Errorf("vault put %s: %w", key, broker.ErrAlreadyExists)
		}
		return 0, fmt.Errorf("vault put %s: version %d is not the current one: %w", key, cas, broker.ErrConflict)
	}
	if err != nil {
		return 0, err
	}
	return version, nil
}

// Get implements broker.SecretStore. A secret whose current version was
// deleted or destroyed is reported as broker.ErrNotFound.
func (s *Store) Get(ctx context.Context, key broker.SecretKey) (broker.Secret, int, error) {
	if err := key.Validate(); err != nil {
		return broker.Secret{}, 0, fmt.Errorf("vault get: %w", err)
	}
	var kvs *api.KVSecret
	err := s.call(ctx, "get", key.String(), func(ctx context.Context) error {
		var err error
		kvs, err = s.kv.Get(ctx, s.path(key))
		return err
	})
	if err != nil {
		return broker.Secret{}, 0, err
	}
	md := kvs.VersionMetadata
	if kvs.Data == nil || md == nil || md.Destroyed || !md.DeletionTime.IsZero() {
		return broker.Secret{}, 0, fmt.Errorf("vault get %s: %w", key, broker.ErrNotFound)
	}
	fields := make(map[string]string, len(kvs.Data))
	for name, v := range kvs.Data {
		str, ok := v.(string)
		if !ok {
			// Name the field and its type, never its value.
			return broker.Secret{}, 0, fmt.Errorf("vault get %s: field %q holds a %T, not a string", key, name, v)
		}
		fields[name] = str
	}
	return broker.NewSecret(fields), md.Version, nil
}

// Delete implements broker.SecretStore: it removes every version and the
// metadata. Vault deletes absent paths silently, so Delete first checks that
// the secret exists; a concurrent Delete of the same key may therefore both
// succeed.
func (s *Store) Delete(ctx context.Context, key broker.SecretKey) error {
	if err := key.Validate(); err != nil {
		return fmt.Errorf("vault delete: %w", err)
	}
	return s.call(ctx, "delete", key.String(), func(ctx context.Context) error {
		if _, err := s.kv.GetMetadata(ctx, s.path(key)); err != nil {
			return err
		}
		return s.kv.DeleteMetadata(ctx, s.path(key))
	})
}

// List implements broker.SecretStore.
func (s *Store) List(ctx context.Context, owner string) ([]broker.SecretKey, error) {
	if err := broker.ValidateOwner(owner); err != nil {
		return nil, fmt.Errorf("vault list: %w", err)
	}
	var raw *api.Secret
	err := s.call(ctx, "list", owner+"/", func(ctx context.Context) error {
		var err error
		raw, err = s.client.Logical().ListWithContext(ctx, s.cfg.Mount+"/metadata/"+s.cfg.Prefix+"/"+owner+"/")
		return err
	})
	if err != nil {
		return nil, err
	}
	keys := []broker.SecretKey{}
	if raw == nil || raw.Data == nil {
		return keys, nil
	}
	list, ok := raw.Data["keys"].([]any)
	if !ok {
		return keys, nil
	}
	for _, v := range list {
		name, ok := v.(string)
		if !ok {
			continue
		}
		k := broker.SecretKey{Owner: owner, Name: name}
		if k.Validate() != nil { // sub-folders ("x/") and names Lanyard never writes
			continue
		}
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b broker.SecretKey) int { return strings.Compare(a.Name, b.Name) })
	return keys, nil
}

// Ping implements broker.SecretStore. It asks sys/health; an uninitialised
// or sealed Vault, or a store still waiting for its AppRole login, is
// unavailable.
func (s *Store) Ping(ctx context.Context) error {
	return s.call(ctx, "ping", "", func(ctx context.Context) error {
		h, err := s.client.Sys().HealthWithContext(ctx)
		if err != nil {
			return err
		}
		switch {
		case !h.Initialized:
			return &api.ResponseError{StatusCode: http.StatusServiceUnavailable, Errors: []string{"Vault is not initialized"}}
		case h.Sealed:
			return &api.ResponseError{StatusCode: http.StatusServiceUnavailable, Errors: []string{"Vault is sealed"}}
		}
		return nil
	})
}
