// Package vault implements broker.SecretStore on HashiCorp Vault's KV version
// 2 secrets engine, using check-and-set writes so that concurrent writers
// cannot overwrite each other.
//
// A secret with key owner/name lives at <mount>/data/<prefix>/<owner>/<name>,
// its fields stored as a map of strings. The store authenticates with a
// static token or with AppRole; an AppRole token is renewed in the
// background (api.LifetimeWatcher) and replaced by logging in again when it
// reaches its maximum lifetime (the replaced token is revoked). A sealed,
// unreachable or slow Vault yields errors wrapping broker.ErrUnavailable
// within Config.Timeout.
//
// It is the only package of the module that imports
// github.com/hashicorp/vault/api, and it talks to Vault only through it
// (KVv2, Logical, Sys, Auth with api/auth/approle). Only Config decides where
// requests go and what they carry, although the library reads VAULT_*
// environment variables:
//   - the client is built with an api.Config of the store's own: its HTTP
//     client has no proxy (neither HTTP(S)_PROXY nor VAULT_HTTP_PROXY), the
//     CA certificates of Config.CACert, and refuses redirects, so the token
//     is never sent to another address; the library's retries are off;
//   - what api.NewClient takes from the environment is undone right after:
//     the token (VAULT_TOKEN), the namespace (VAULT_NAMESPACE) and extra
//     headers (VAULT_HEADERS); response wrapping (VAULT_WRAP_TTL) is turned
//     off; each call sets the token it uses explicitly;
//   - api.NewClient fails on a malformed VAULT_* variable (VAULT_CACERT
//     naming a missing file, say). New then fails with an error that names
//     the variable to fix or unset.
//
// Reads are retried once after a network error or a 5xx answer; writes are
// never sent twice.
//
// The embedded alternative for single-binary use lives in vault/sealed.
package vault

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/vault/api"
	"github.com/hashicorp/vault/api/auth/approle"

	"github.com/lanyardhq/lanyard/broker"
)

// component is the name the store reports to its Observer.
const component = "vault"

// reloginInterval bounds how often a permission-denied answer can make the
// store log in again when it cannot tell whether its token is still valid
// (the role's policy does not allow auth/token/lookup-self).
const reloginInterval = 30 * time.Second

// Store is a broker.SecretStore backed by Vault KV v2. It is safe for
// concurrent use. Close stops its background goroutine.
type Store struct {
	cfg Config
	log *slog.Logger
	// base is the API client. It is never given a token nor changed after
	// New: calls go through as, which names the token.
	base *api.Client

	tokMu sync.Mutex
	tok   string // the current token; "" until the first login

	// loginMu serialises AppRole logins and guards the fields below.
	loginMu   sync.Mutex
	lastLogin time.Time
	// lookupDenied: the role's tokens may not look themselves up, so a
	// permission-denied answer cannot be told apart from an invalid token.
	lookupDenied bool
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
//
// New fails if a VAULT_* environment variable is malformed (see the package
// documentation), with an error wrapping broker.ErrInvalid that names it.
func New(ctx context.Context, cfg Config) (*Store, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()

	base, err := newClient(cfg)
	if err != nil {
		return nil, err
	}
	s := &Store{
		cfg:   cfg,
		log:   cfg.Logger.With("component", component),
		base:  base,
		fresh: make(chan *api.Secret, 1),
		done:  make(chan struct{}),
	}
	if cfg.AppRole == nil {
		s.tok = cfg.Token.Reveal()
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

// as returns a client that sends token ("" for none) with every request. It
// is a shallow copy of the base client (same configuration, transport and
// headers) with a token of its own: the store needs a token per call (the
// current one, the one being revoked or looked up, none for a login), and
// setting the token of a shared client would race. Client.Clone is not
// used: it calls api.NewClient, which reads VAULT_TOKEN, VAULT_NAMESPACE and
// VAULT_HEADERS again.
func (s *Store) as(token string) *api.Client {
	c := s.base.WithRequestCallbacks()
	c.SetToken(token)
	return c
}

// Close stops the background token renewal. It does not revoke the token.
// Calls after Close still reach Vault with the last token.
func (s *Store) Close() {
	s.closeOnce.Do(func() {
		s.stop()
		<-s.done
	})
}

func (s *Store) token() string {
	s.tokMu.Lock()
	defer s.tokMu.Unlock()
	return s.tok
}

// setToken makes t the current token and returns the one it replaces.
func (s *Store) setToken(t string) (old string) {
	s.tokMu.Lock()
	defer s.tokMu.Unlock()
	old, s.tok = s.tok, t
	return old
}

// login logs in with AppRole, makes the new token current and revokes the
// one it replaces. Its errors never contain the secret id.
func (s *Store) login(ctx context.Context) (*api.Secret, error) {
	s.loginMu.Lock()
	sec, old, err := s.loginLocked(ctx)
	s.loginMu.Unlock()
	s.revoke(ctx, old)
	return sec, err
}

// loginLocked is login for a caller that holds loginMu; it leaves revoking
// the replaced token (returned as old) to the caller.
func (s *Store) loginLocked(ctx context.Context) (sec *api.Secret, old string, err error) {
	start := time.Now()
	defer func() { s.cfg.Observer.Observe(component, "login", start, err) }()

	ar := s.cfg.AppRole
	auth, err := approle.NewAppRoleAuth(ar.RoleID,
		&approle.SecretID{FromString: ar.SecretID.Reveal()}, approle.WithMountPath(ar.MountPath))
	if err != nil {
		return nil, "", fmt.Errorf("vault approle login: %w: %w", err, broker.ErrInvalid)
	}
	cctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
	defer cancel()
	// Login sets the token of the client it is given: a throwaway one, that
	// sends no token with the login itself.
	sec, err = s.as("").Auth().Login(cctx, auth)
	if err != nil {
		return nil, "", classify(ctx, "approle login", ar.MountPath, err, s.cfg.Timeout)
	}
	if sec == nil || sec.Auth == nil || sec.Auth.ClientToken == "" {
		return nil, "", fmt.Errorf("vault approle login: response carries no token")
	}
	s.lastLogin = time.Now()
	old = s.setToken(sec.Auth.ClientToken)
	s.log.Info("vault approle login succeeded", "ttl", leaseOf(sec), "renewable", sec.Auth.Renewable)
	return sec, old, nil
}

// leaseOf returns the lifetime of the token in an auth answer.
func leaseOf(sec *api.Secret) time.Duration {
	if sec == nil || sec.Auth == nil {
		return 0
	}
	return time.Duration(sec.Auth.LeaseDuration) * time.Second
}

// revoke revokes token (auth/token/revoke-self), best effort: a token that
// was replaced must not stay usable until it expires. Failures are logged
// at debug level only (an expired token cannot be revoked, nor need be).
func (s *Store) revoke(ctx context.Context, token string) {
	if token == "" {
		return
	}
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), min(s.cfg.Timeout, 2*time.Second))
	defer cancel()
	if err := s.as(token).Auth().Token().RevokeSelfWithContext(cctx, token); err != nil {
		s.log.Debug("vault: revoking the replaced token failed", "err", classify(cctx, "revoke-self", "", err, s.cfg.Timeout))
		return
	}
	s.log.Debug("vault: replaced token revoked")
}

// tokenValid asks Vault whether token is valid (auth/token/lookup-self).
// known is false when the answer does not tell (Vault unavailable);
// a refusal is reported as not valid.
func (s *Store) tokenValid(ctx context.Context, token string) (valid, known bool) {
	cctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
	defer cancel()
	_, err := read(cctx, func(ctx context.Context) (*api.Secret, error) {
		return s.as(token).Auth().Token().LookupSelfWithContext(ctx)
	})
	switch {
	case err == nil:
		return true, true
	case statusOf(err) == http.StatusForbidden:
		return false, true
	default:
		return false, false
	}
}

// relogin is called when Vault denied a call made with token stale. It logs
// in again only if that can help, and reports whether the call should be
// tried again (with the new token):
//   - another caller already replaced stale: yes, without a login;
//   - stale is valid (lookup-self works): no, the policy denies the call and
//     a new token would not change that;
//   - stale is invalid: log in again;
//   - Vault cannot say (lookup-self unavailable, or not allowed by the
//     role's policy): log in again at most once per reloginInterval.
//
// Without these checks every denied call would mint a new token.
func (s *Store) relogin(ctx context.Context, stale string) bool {
	s.loginMu.Lock()
	if s.token() != stale {
		s.loginMu.Unlock()
		return true
	}
	valid, known := s.tokenValid(ctx, stale)
	switch {
	case valid:
		s.loginMu.Unlock()
		return false
	case known && !s.lookupDenied:
		// invalid: log in again
	case time.Since(s.lastLogin) >= reloginInterval:
		// cannot tell; the token is old enough to try a new one
	default:
		s.loginMu.Unlock()
		return false
	}
	sec, old, err := s.loginLocked(ctx)
	if err == nil && known && !s.lookupDenied {
		// If even the brand-new token may not look itself up, lookup-self
		// says nothing about validity: rate-limit from now on.
		if ok, sure := s.tokenValid(ctx, sec.Auth.ClientToken); sure && !ok {
			s.lookupDenied = true
			s.log.Warn("vault: the approle's policy does not allow auth/token/lookup-self; " +
				"re-logins after a permission-denied answer are limited to one per 30s")
		}
	}
	s.loginMu.Unlock()
	if err != nil {
		return false
	}
	s.revoke(ctx, old)
	for { // never block: replace a token keepAlive has not picked up yet
		select {
		case s.fresh <- sec:
			return true
		default:
		}
		select {
		case <-s.fresh:
		default:
		}
	}
}

// keepAlive renews the AppRole token with an api.LifetimeWatcher and, when
// the watcher gives up (maximum lifetime reached, renewal failing until the
// token expires), logs in again with exponential back-off. It runs until
// ctx is cancelled.
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
				if !sleep(ctx, wait) {
					return
				}
				backoff = min(2*backoff, maxBackoff)
				continue
			}
			backoff = 250 * time.Millisecond
		}
		if leaseOf(sec) <= 0 { // a token without TTL never expires: nothing to renew
			select {
			case <-ctx.Done():
				return
			case sec = <-s.fresh:
				continue
			}
		}
		// The watcher renews with auth/token/renew-self and the token of
		// sec, not the client's (the base client has none).
		w, err := s.base.NewLifetimeWatcher(&api.LifetimeWatcherInput{Secret: sec})
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
			if r != nil {
				s.log.Debug("vault token renewed", "ttl", leaseOf(r.Secret))
			}
		case err := <-w.DoneCh():
			if err != nil {
				s.log.Warn("vault token renewal stopped; logging in again",
					"err", classify(ctx, "renew-self", "", err, s.cfg.Timeout))
			} else {
				s.log.Info("vault token reached its maximum lifetime; logging in again")
			}
			return nil, true
		}
	}
}

// sleep waits for d or ctx, and reports whether d passed.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// call runs fn with the current token and a context bounded by the store's
// timeout, reports it to the observer, and classifies its error. If Vault
// denies permission while the store uses AppRole, relogin decides whether a
// new token could help (the token may have expired while the renewal was
// late); if so the call is tried once more.
func (s *Store) call(ctx context.Context, op, key string, fn func(ctx context.Context, token string) error) (err error) {
	start := time.Now()
	defer func() { s.cfg.Observer.Observe(component, op, start, err) }()
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("%s: %w", where(op, key), err)
	}
	for attempt := 0; ; attempt++ {
		token := s.token()
		if token == "" {
			return fmt.Errorf("%s: not logged in to vault yet: %w", where(op, key), broker.ErrUnavailable)
		}
		cctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
		raw := fn(cctx, token)
		cancel()
		if raw == nil {
			return nil
		}
		if attempt == 0 && s.cfg.AppRole != nil && statusOf(raw) == http.StatusForbidden && s.relogin(ctx, token) {
			continue
		}
		return classify(ctx, op, key, raw, s.cfg.Timeout)
	}
}

// Errors of write for the two check-and-set refusals of KV v2; they never
// leave the package.
var (
	errCASMismatch = errors.New("check-and-set version is not the current one")
	errCASRequired = errors.New("check-and-set required")
)

// casAnyTries bounds how often Put with broker.CASAny on a mount that
// requires check-and-set reads the current version and writes over it
// before giving up to concurrent writers.
const casAnyTries = 3

// classify turns an error of the API client into one wrapping a broker
// sentinel. The message names the operation and key, never a secret: Vault's
// own error strings are kept; a response body that is not Vault's JSON, and
// the library's own rendering of an answer, are not.
func classify(ctx context.Context, op, key string, err error, timeout time.Duration) error {
	where := where(op, key)
	if cerr := ctx.Err(); cerr != nil {
		return fmt.Errorf("%s: %w", where, cerr)
	}
	var rd *redirectError
	if errors.As(err, &rd) {
		return fmt.Errorf("%s: %s", where, rd)
	}
	if errors.Is(err, api.ErrSecretNotFound) {
		return fmt.Errorf("%s: %w", where, broker.ErrNotFound)
	}
	var re *api.ResponseError
	if errors.As(err, &re) {
		switch st := re.StatusCode; {
		case says(err, "sealed") || st == http.StatusServiceUnavailable ||
			st == http.StatusBadGateway || st == http.StatusGatewayTimeout ||
			st == http.StatusTooManyRequests:
			return fmt.Errorf("%s: %s: %w", where, answer(re), broker.ErrUnavailable)
		case st == http.StatusNotFound:
			return fmt.Errorf("%s: %s: %w", where, answer(re), broker.ErrNotFound)
		default:
			return fmt.Errorf("%s: %s", where, answer(re))
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

// path is the secret's path below the mount's data/ and metadata/.
func (s *Store) path(k broker.SecretKey) string {
	return s.cfg.Prefix + "/" + k.Owner + "/" + k.Name
}

// kv returns the KV v2 client of the store's mount, sending token.
func (s *Store) kv(token string) *api.KVv2 {
	return s.as(token).KVv2(s.cfg.Mount)
}

// gone reports whether the version is deleted or destroyed, that is absent
// for Get and for creation. A deletion time still in the future (a mount
// with delete_version_after) is not a deletion yet: Vault still serves it.
func gone(v api.KVVersionMetadata) bool {
	return v.Destroyed || (!v.DeletionTime.IsZero() && !v.DeletionTime.After(time.Now()))
}

// write writes data at p, with check-and-set version cas unless it is nil,
// and returns the new version. It is sent once.
func (s *Store) write(ctx context.Context, token, p string, data map[string]any, cas *int) (int, error) {
	var opts []api.KVOption
	if cas != nil {
		opts = append(opts, api.WithCheckAndSet(*cas))
	}
	res, err := s.kv(token).Put(ctx, p, data, opts...)
	if statusOf(err) == http.StatusBadRequest {
		switch {
		case says(err, "check-and-set parameter did not match"):
			return 0, errCASMismatch
		case says(err, "check-and-set parameter required"):
			return 0, errCASRequired
		}
	}
	if err != nil {
		return 0, err
	}
	if res == nil || res.VersionMetadata == nil || res.VersionMetadata.Version <= 0 {
		return 0, fmt.Errorf("response carries no version")
	}
	return res.VersionMetadata.Version, nil
}

// current returns the current version of the secret at p (0 if there is no
// metadata) and whether that version is deleted or destroyed.
func (s *Store) current(ctx context.Context, token, p string) (version int, isGone bool, err error) {
	md, err := read(ctx, func(ctx context.Context) (*api.KVMetadata, error) {
		return s.kv(token).GetMetadata(ctx, p)
	})
	if errors.Is(err, api.ErrSecretNotFound) {
		return 0, true, nil
	}
	if err != nil {
		return 0, false, err
	}
	if md == nil {
		return 0, false, fmt.Errorf("metadata response carries no data")
	}
	cur := md.CurrentVersion
	if cur == 0 {
		return 0, true, nil
	}
	v, ok := md.Versions[strconv.Itoa(cur)]
	return cur, !ok || gone(v), nil
}

// put writes data at p under the check-and-set rule cas (see Put).
func (s *Store) put(ctx context.Context, token, p string, data map[string]any, cas int) (int, error) {
	switch cas {
	case broker.CASAny:
		v, err := s.write(ctx, token, p, data, nil)
		if !errors.Is(err, errCASRequired) {
			return v, err
		}
		// The mount (or the secret's metadata) has cas_required: write
		// over the current version, whichever it is.
		for range casAnyTries {
			cur, _, err := s.current(ctx, token, p)
			if err != nil {
				return 0, err
			}
			v, err := s.write(ctx, token, p, data, &cur)
			if !errors.Is(err, errCASMismatch) {
				return v, err
			}
		}
		return 0, fmt.Errorf("the mount requires check-and-set and %d writes in a row lost the race "+
			"to other writers; try again later", casAnyTries)
	case broker.CASCreate:
		zero := 0
		v, err := s.write(ctx, token, p, data, &zero)
		if !errors.Is(err, errCASMismatch) {
			return v, err
		}
		// Vault has a version, but if it is deleted or destroyed Get reports
		// the secret absent, so creating it must work too: write over that
		// version. If it changes meanwhile, someone else created the secret.
		cur, isGone, err := s.current(ctx, token, p)
		if err != nil {
			return 0, err
		}
		if !isGone {
			return 0, errCASMismatch
		}
		return s.write(ctx, token, p, data, &cur)
	default:
		return s.write(ctx, token, p, data, &cas)
	}
}

// Put implements broker.SecretStore. A secret whose current version was
// deleted or destroyed is absent: broker.CASCreate creates it (as the next
// version). broker.CASAny also works on a mount with cas_required.
func (s *Store) Put(ctx context.Context, key broker.SecretKey, sec broker.Secret, cas int) (int, error) {
	if err := key.Validate(); err != nil {
		return 0, fmt.Errorf("vault put: %w", err)
	}
	if cas < broker.CASAny {
		return 0, fmt.Errorf("vault put %s: check-and-set version %d: %w", key, cas, broker.ErrInvalid)
	}
	fields := sec.Fields()
	defer clear(fields)
	data := make(map[string]any, len(fields)) // never nil: JSON {}, not null
	defer clear(data)
	for name, v := range fields {
		data[name] = v
	}
	var version int
	err := s.call(ctx, "put", key.String(), func(ctx context.Context, token string) error {
		v, err := s.put(ctx, token, s.path(key), data, cas)
		version = v
		return err
	})
	if errors.Is(err, errCASMismatch) {
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
	err := s.call(ctx, "get", key.String(), func(ctx context.Context, token string) error {
		var err error
		kvs, err = read(ctx, func(ctx context.Context) (*api.KVSecret, error) {
			return s.kv(token).Get(ctx, s.path(key))
		})
		return err
	})
	if err != nil {
		return broker.Secret{}, 0, err
	}
	defer clear(kvs.Data) // also the raw answer's: the same map
	md := kvs.VersionMetadata
	if kvs.Data == nil || md == nil || gone(*md) {
		return broker.Secret{}, 0, fmt.Errorf("vault get %s: %w", key, broker.ErrNotFound)
	}
	fields := make(map[string]string, len(kvs.Data))
	defer clear(fields)
	for name, v := range kvs.Data {
		str, ok := v.(string)
		if !ok {
			// Name the field and its type, never its value.
			return broker.Secret{}, 0, fmt.Errorf("vault get %s: field %q holds a %s, not a string", key, name, jsonType(v))
		}
		fields[name] = str
	}
	return broker.NewSecret(fields), md.Version, nil
}

// jsonType names the JSON type of a value decoded by the API client.
func jsonType(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case bool:
		return "boolean"
	case json.Number, float64:
		return "number"
	case []any:
		return "array"
	case map[string]any:
		return "object"
	default:
		return fmt.Sprintf("%T", v)
	}
}

// Delete implements broker.SecretStore: it removes every version and the
// metadata. Vault deletes absent paths silently, so Delete first checks that
// the secret exists; a concurrent Delete of the same key may therefore both
// succeed.
func (s *Store) Delete(ctx context.Context, key broker.SecretKey) error {
	if err := key.Validate(); err != nil {
		return fmt.Errorf("vault delete: %w", err)
	}
	p := s.path(key)
	return s.call(ctx, "delete", key.String(), func(ctx context.Context, token string) error {
		kv := s.kv(token)
		if _, err := read(ctx, func(ctx context.Context) (*api.KVMetadata, error) { return kv.GetMetadata(ctx, p) }); err != nil {
			return err
		}
		return kv.DeleteMetadata(ctx, p)
	})
}

// List implements broker.SecretStore.
func (s *Store) List(ctx context.Context, owner string) ([]broker.SecretKey, error) {
	if err := broker.ValidateOwner(owner); err != nil {
		return nil, fmt.Errorf("vault list: %w", err)
	}
	var sec *api.Secret
	err := s.call(ctx, "list", owner+"/", func(ctx context.Context, token string) error {
		var err error
		// A missing folder is a nil secret: nothing under the owner.
		sec, err = read(ctx, func(ctx context.Context) (*api.Secret, error) {
			return s.as(token).Logical().ListWithContext(ctx, s.cfg.Mount+"/metadata/"+s.cfg.Prefix+"/"+owner+"/")
		})
		return err
	})
	if err != nil {
		return nil, err
	}
	keys := []broker.SecretKey{}
	if sec == nil || sec.Data == nil {
		return keys, nil
	}
	list, _ := sec.Data["keys"].([]any)
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
	err := s.call(ctx, "ping", "", func(ctx context.Context, _ string) error {
		// sys/health needs no token. The library asks for a 2xx answer in
		// every state, with the JSON.
		h, err := read(ctx, func(ctx context.Context) (*api.HealthResponse, error) {
			return s.base.Sys().HealthWithContext(ctx)
		})
		switch {
		case err != nil:
			return err
		case !h.Initialized:
			return &api.ResponseError{StatusCode: http.StatusServiceUnavailable, Errors: []string{"Vault is not initialized"}}
		case h.Sealed:
			return &api.ResponseError{StatusCode: http.StatusServiceUnavailable, Errors: []string{"Vault is sealed"}}
		}
		return nil
	})
	if err != nil {
		return err
	}
	// A Vault that is up but refuses Lanyard's token (a revoked token, an
	// AppRole whose secret id stopped working) is not ready either.
	return s.call(ctx, "ping", "", func(ctx context.Context, token string) error {
		_, err := read(ctx, func(ctx context.Context) (*api.Secret, error) {
			return s.as(token).Auth().Token().LookupSelfWithContext(ctx)
		})
		switch {
		case statusOf(err) != http.StatusForbidden:
			return err
		case s.cfg.AppRole == nil:
			return &api.ResponseError{StatusCode: http.StatusServiceUnavailable, Errors: []string{"Vault refuses Lanyard's token"}}
		case s.lookupIsDenied():
			return nil // the role's tokens may not look themselves up: nothing to learn here
		}
		return err // call logs in again if the token is invalid, and tries once more
	})
}

// lookupIsDenied reports whether the AppRole's tokens were found unable to
// look themselves up.
func (s *Store) lookupIsDenied() bool {
	s.loginMu.Lock()
	defer s.loginMu.Unlock()
	return s.lookupDenied
}
