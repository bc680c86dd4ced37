// Package vault implements broker.SecretStore on HashiCorp Vault's KV version
// 2 secrets engine, using check-and-set writes so that concurrent writers
// cannot overwrite each other.
//
// A secret with key owner/name lives at <mount>/data/<prefix>/<owner>/<name>,
// its fields stored as a map of strings. The store authenticates with a
// static token or with AppRole; an AppRole token is renewed in the
// background and replaced by logging in again when it reaches its maximum
// lifetime (the replaced token is revoked). A sealed, unreachable or slow
// Vault yields errors wrapping broker.ErrUnavailable within Config.Timeout.
//
// The store talks to Vault's HTTP API with a small client of its own rather
// than github.com/hashicorp/vault/api, which takes its address, token,
// namespace, extra headers, TLS settings and proxy from VAULT_* and proxy
// environment variables and follows redirects with the token. Here only
// Config decides: no environment variable is read, no proxy is used, a
// redirect is an error, and only reads are retried.
//
// The embedded alternative for single-binary use lives in vault/sealed.
package vault

import (
	"context"
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
	c   *client

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
	fresh chan *authInfo

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

	c, err := newClient(cfg)
	if err != nil {
		return nil, err
	}
	s := &Store{
		cfg:   cfg,
		log:   cfg.Logger.With("component", component),
		c:     c,
		fresh: make(chan *authInfo, 1),
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
func (s *Store) login(ctx context.Context) (*authInfo, error) {
	s.loginMu.Lock()
	a, old, err := s.loginLocked(ctx)
	s.loginMu.Unlock()
	s.revoke(ctx, old)
	return a, err
}

// loginLocked is login for a caller that holds loginMu; it leaves revoking
// the replaced token (returned as old) to the caller.
func (s *Store) loginLocked(ctx context.Context) (a *authInfo, old string, err error) {
	start := time.Now()
	defer func() { s.cfg.Observer.Observe(component, "login", start, err) }()

	ar := s.cfg.AppRole
	cctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
	defer cancel()
	var resp struct {
		Auth *authInfo `json:"auth"`
	}
	err = s.c.do(cctx, request{
		method: http.MethodPost,
		path:   "auth/" + ar.MountPath + "/login",
		body:   map[string]string{"role_id": ar.RoleID, "secret_id": ar.SecretID.Reveal()},
	}, &resp)
	if err != nil {
		return nil, "", classify(ctx, "approle login", ar.MountPath, err, s.cfg.Timeout)
	}
	if resp.Auth == nil || resp.Auth.ClientToken == "" {
		return nil, "", fmt.Errorf("vault approle login: response carries no token")
	}
	s.lastLogin = time.Now()
	old = s.setToken(resp.Auth.ClientToken)
	s.log.Info("vault approle login succeeded", "ttl", resp.Auth.ttl(), "renewable", resp.Auth.Renewable)
	return resp.Auth, old, nil
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
	err := s.c.do(cctx, request{method: http.MethodPost, path: "auth/token/revoke-self", token: token}, nil)
	if err != nil {
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
	err := s.c.do(cctx, request{method: http.MethodGet, path: "auth/token/lookup-self", token: token}, nil)
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
	a, old, err := s.loginLocked(ctx)
	if err == nil && known && !s.lookupDenied {
		// If even the brand-new token may not look itself up, lookup-self
		// says nothing about validity: rate-limit from now on.
		if ok, sure := s.tokenValid(ctx, a.ClientToken); sure && !ok {
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
		case s.fresh <- a:
			return true
		default:
		}
		select {
		case <-s.fresh:
		default:
		}
	}
}

// keepAlive renews the AppRole token and, when it can no longer be renewed
// (maximum TTL reached, renewal failed), logs in again with exponential
// back-off. It runs until ctx is cancelled.
func (s *Store) keepAlive(ctx context.Context, a *authInfo) {
	defer close(s.done)
	backoff := 250 * time.Millisecond
	const maxBackoff = 30 * time.Second
	for {
		if a == nil {
			var err error
			a, err = s.login(ctx)
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
		a = s.renew(ctx, a)
		if ctx.Err() != nil {
			return
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

// renew keeps the token of a alive, renewing it when two thirds of its TTL
// have passed, until it cannot be renewed any more, relogin hands over
// another token, or ctx ends. It returns the token to keep alive next (nil:
// log in again).
func (s *Store) renew(ctx context.Context, a *authInfo) *authInfo {
	ttl := a.ttl()
	expires := time.Now().Add(ttl)
	final := !a.Renewable // the next deadline is a re-login, not a renewal
	for {
		var due <-chan time.Time
		stop := func() bool { return false }
		if ttl > 0 { // a token without TTL never expires
			t := time.NewTimer(time.Until(expires) * 2 / 3)
			due, stop = t.C, t.Stop
		}
		select {
		case <-ctx.Done():
			stop()
			return nil
		case next := <-s.fresh:
			stop()
			return next
		case <-due:
		}
		if final {
			s.log.Info("vault token reached its maximum lifetime; logging in again")
			return nil
		}
		cctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
		var resp struct {
			Auth *authInfo `json:"auth"`
		}
		err := s.c.do(cctx, request{
			method: http.MethodPost,
			path:   "auth/token/renew-self",
			token:  a.ClientToken,
			body:   map[string]int{"increment": a.LeaseDuration},
		}, &resp)
		cancel()
		if err == nil && resp.Auth == nil {
			err = errors.New("response carries no lease")
		}
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			s.log.Warn("vault token renewal failed; logging in again", "err", classify(ctx, "renew", "", err, s.cfg.Timeout))
			return nil
		}
		got := resp.Auth.ttl()
		s.log.Debug("vault token renewed", "ttl", got)
		if got <= 0 {
			s.log.Info("vault token reached its maximum lifetime; logging in again")
			return nil
		}
		// A shorter lease than asked for is capped by the maximum TTL.
		final = got < ttl || !resp.Auth.Renewable
		expires = time.Now().Add(got)
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

// classify turns an error of the client into one wrapping a broker
// sentinel. The message names the operation and key, never a secret: Vault's
// own error strings are kept, a response body is not.
func classify(ctx context.Context, op, key string, err error, timeout time.Duration) error {
	where := where(op, key)
	if cerr := ctx.Err(); cerr != nil {
		return fmt.Errorf("%s: %w", where, cerr)
	}
	var re *responseError
	if errors.As(err, &re) {
		sealed := re.says("sealed")
		switch {
		case sealed || re.StatusCode == http.StatusServiceUnavailable ||
			re.StatusCode == http.StatusBadGateway || re.StatusCode == http.StatusGatewayTimeout ||
			re.StatusCode == http.StatusTooManyRequests:
			return fmt.Errorf("%s: %s: %w", where, re, broker.ErrUnavailable)
		case re.StatusCode == http.StatusNotFound:
			return fmt.Errorf("%s: %s: %w", where, re, broker.ErrNotFound)
		default:
			return fmt.Errorf("%s: %s", where, re)
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

// versionMeta is the metadata of one version of a KV v2 secret.
type versionMeta struct {
	Version      int    `json:"version"`
	DeletionTime string `json:"deletion_time"`
	Destroyed    bool   `json:"destroyed"`
}

// gone reports whether the version is deleted or destroyed, that is absent
// for Get and for creation. A deletion time still in the future (a mount
// with delete_version_after) is not a deletion yet: Vault still serves it.
func (v versionMeta) gone() bool {
	if v.Destroyed {
		return true
	}
	if v.DeletionTime == "" {
		return false
	}
	t, err := time.Parse(time.RFC3339Nano, v.DeletionTime)
	return err != nil || !t.After(time.Now())
}

// write writes data at p, with check-and-set version cas unless it is nil,
// and returns the new version.
func (s *Store) write(ctx context.Context, token, p string, data map[string]string, cas *int) (int, error) {
	body := map[string]any{"data": data}
	if cas != nil {
		body["options"] = map[string]any{"cas": *cas}
	}
	var resp struct {
		Data *versionMeta `json:"data"`
	}
	err := s.c.do(ctx, request{method: http.MethodPost, path: s.cfg.Mount + "/data/" + p, token: token, body: body}, &resp)
	var re *responseError
	if errors.As(err, &re) && re.StatusCode == http.StatusBadRequest {
		switch {
		case re.says("check-and-set parameter did not match"):
			return 0, errCASMismatch
		case re.says("check-and-set parameter required"):
			return 0, errCASRequired
		}
	}
	if err != nil {
		return 0, err
	}
	if resp.Data == nil || resp.Data.Version <= 0 {
		return 0, fmt.Errorf("response carries no version")
	}
	return resp.Data.Version, nil
}

// current returns the current version of the secret at p (0 if there is no
// metadata) and whether that version is deleted or destroyed.
func (s *Store) current(ctx context.Context, token, p string) (version int, gone bool, err error) {
	var resp struct {
		Data *struct {
			CurrentVersion int                    `json:"current_version"`
			Versions       map[string]versionMeta `json:"versions"`
		} `json:"data"`
	}
	err = s.c.do(ctx, request{method: http.MethodGet, path: s.cfg.Mount + "/metadata/" + p, token: token}, &resp)
	if statusOf(err) == http.StatusNotFound {
		return 0, true, nil
	}
	if err != nil {
		return 0, false, err
	}
	if resp.Data == nil {
		return 0, false, fmt.Errorf("metadata response carries no data")
	}
	cur := resp.Data.CurrentVersion
	if cur == 0 {
		return 0, true, nil
	}
	v, ok := resp.Data.Versions[fmt.Sprint(cur)]
	return cur, !ok || v.gone(), nil
}

// put writes data at p under the check-and-set rule cas (see Put).
func (s *Store) put(ctx context.Context, token, p string, data map[string]string, cas int) (int, error) {
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
		cur, gone, err := s.current(ctx, token, p)
		if err != nil {
			return 0, err
		}
		if !gone {
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
	data := sec.Fields()
	if data == nil {
		data = map[string]string{} // JSON {}, not null
	}
	defer clear(data)
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
	var resp struct {
		Data *struct {
			Data     map[string]any `json:"data"`
			Metadata *versionMeta   `json:"metadata"`
		} `json:"data"`
	}
	err := s.call(ctx, "get", key.String(), func(ctx context.Context, token string) error {
		return s.c.do(ctx, request{method: http.MethodGet, path: s.cfg.Mount + "/data/" + s.path(key), token: token}, &resp)
	})
	if err != nil {
		return broker.Secret{}, 0, err
	}
	if resp.Data == nil || resp.Data.Data == nil || resp.Data.Metadata == nil || resp.Data.Metadata.gone() {
		return broker.Secret{}, 0, fmt.Errorf("vault get %s: %w", key, broker.ErrNotFound)
	}
	fields := make(map[string]string, len(resp.Data.Data))
	defer clear(fields)
	for name, v := range resp.Data.Data {
		str, ok := v.(string)
		if !ok {
			// Name the field and its type, never its value.
			return broker.Secret{}, 0, fmt.Errorf("vault get %s: field %q holds a %s, not a string", key, name, jsonType(v))
		}
		fields[name] = str
	}
	return broker.NewSecret(fields), resp.Data.Metadata.Version, nil
}

// jsonType names the JSON type of a decoded value.
func jsonType(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case bool:
		return "boolean"
	case float64:
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
	p := s.cfg.Mount + "/metadata/" + s.path(key)
	return s.call(ctx, "delete", key.String(), func(ctx context.Context, token string) error {
		if err := s.c.do(ctx, request{method: http.MethodGet, path: p, token: token}, nil); err != nil {
			return err
		}
		return s.c.do(ctx, request{method: http.MethodDelete, path: p, token: token}, nil)
	})
}

// List implements broker.SecretStore.
func (s *Store) List(ctx context.Context, owner string) ([]broker.SecretKey, error) {
	if err := broker.ValidateOwner(owner); err != nil {
		return nil, fmt.Errorf("vault list: %w", err)
	}
	var resp struct {
		Data *struct {
			Keys []any `json:"keys"`
		} `json:"data"`
	}
	err := s.call(ctx, "list", owner+"/", func(ctx context.Context, token string) error {
		err := s.c.do(ctx, request{
			method: http.MethodGet,
			path:   s.cfg.Mount + "/metadata/" + s.cfg.Prefix + "/" + owner + "/",
			query:  url.Values{"list": {"true"}},
			token:  token,
		}, &resp)
		if statusOf(err) == http.StatusNotFound {
			return nil // nothing under the owner
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	keys := []broker.SecretKey{}
	if resp.Data == nil {
		return keys, nil
	}
	for _, v := range resp.Data.Keys {
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
	return s.call(ctx, "ping", "", func(ctx context.Context, _ string) error {
		var h struct {
			Initialized bool `json:"initialized"`
			Sealed      bool `json:"sealed"`
		}
		// The codes make Vault answer 2xx in every state, with the JSON.
		err := s.c.do(ctx, request{method: http.MethodGet, path: "sys/health", query: url.Values{
			"uninitcode": {"299"}, "sealedcode": {"299"}, "standbycode": {"299"},
			"drsecondarycode": {"299"}, "performancestandbycode": {"299"},
		}}, &h)
		switch {
		case err != nil:
			return err
		case !h.Initialized:
			return &responseError{StatusCode: http.StatusServiceUnavailable, Errors: []string{"Vault is not initialized"}}
		case h.Sealed:
			return &responseError{StatusCode: http.StatusServiceUnavailable, Errors: []string{"Vault is sealed"}}
		}
		return nil
	})
}
