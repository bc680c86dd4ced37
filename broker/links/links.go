// Package links is the link service: it turns a connector's verified result
// into a stored connection (secret in the SecretStore, non-secret facts in
// the metadata store), checks, refreshes and removes connections, and hands
// out credentials for redemption.
//
// Writes are ordered so that a failure leaves nothing half-done: the secret
// is written first and removed again if the record cannot be; on unlink the
// secret goes first, so a connection record never outlives its secret
// unnoticed. Upstream refresh is single-flight per connection, and a rotated
// upstream refresh token is written (check-and-set) before any caller gets
// the new access token.
package links

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"sort"
	"time"

	"golang.org/x/sync/singleflight"

	"github.com/lanyardhq/lanyard/broker"
	"github.com/lanyardhq/lanyard/connectors"
	"github.com/lanyardhq/lanyard/internal/httpx"
)

// Options configures a Service.
type Options struct {
	Store      broker.Store
	Secrets    broker.SecretStore
	Connectors []connectors.Connector
	// Key derives PKCE verifiers from link states, so no verifier is ever
	// stored (at least 32 bytes; shared by replicas).
	Key []byte
	// CallbackURL is the base of Lanyard's OAuth callbacks for upstream
	// links; each connector gets its own, CallbackURL + "/" + name, so that
	// a response from one provider can never complete a link begun at
	// another (mix-up defence, RFC 9700 §4.4).
	CallbackURL string
	// RefreshSkew: an access token expiring within this is refreshed before
	// it is handed out. Default 60s.
	RefreshSkew time.Duration
	// CredentialCacheTTL bounds how long Credential serves a connection's
	// secret from memory instead of the secret store; 0 means
	// DefaultCredentialCacheTTL, negative turns the cache off. A cached
	// secret serves only while the connection record names its version,
	// so re-links, refreshes and unlinks are seen by the next call (see
	// credCache).
	CredentialCacheTTL time.Duration
	// CredentialCacheSize bounds the cached connections; 0 means
	// DefaultCredentialCacheSize.
	CredentialCacheSize int
	// Lock, if set, takes a lock shared by every replica (internal/etcd's
	// Store.Lock) and returns its release. Upstream refresh of a
	// connection runs holding Lock("refresh/"+connection ID) and re-reads
	// the secret first, so of several replicas whose callers find the
	// token expiring exactly one refreshes and the others use its result
	// (a second refresh would spend the rotated refresh token, which a
	// provider with reuse detection punishes by revoking the grant). Nil
	// means one process: single-flight alone.
	Lock   func(ctx context.Context, name string) (unlock func(), err error)
	Now    func() time.Time
	Logger *slog.Logger
}

// Service links and manages upstream accounts.
type Service struct {
	o      Options
	byName map[string]connectors.Connector
	flight singleflight.Group
	cache  *credCache
}

// LinkTTL is how long a redirect-based link may take.
const LinkTTL = 10 * time.Minute

// Errors the UI shows.
var (
	ErrUnknownConnector = errors.New("no such connector")
	ErrLinkExpired      = errors.New("this link attempt expired or was already used; start again")
)

// New returns a Service.
func New(o Options) (*Service, error) {
	if o.Store == nil || o.Secrets == nil || len(o.Key) < 32 {
		return nil, errors.New("links: Store, Secrets and a 32-byte Key are required")
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.RefreshSkew <= 0 {
		o.RefreshSkew = time.Minute
	}
	s := &Service{o: o, byName: map[string]connectors.Connector{}, cache: newCredCache(o.CredentialCacheTTL, o.CredentialCacheSize)}
	for _, c := range o.Connectors {
		s.byName[c.Name()] = c
	}
	return s, nil
}

// Connectors returns the configured connectors sorted by display name.
func (s *Service) Connectors() []connectors.Connector {
	out := make([]connectors.Connector, 0, len(s.byName))
	for _, c := range s.byName {
		out = append(out, c)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].DisplayName() < out[j].DisplayName() })
	return out
}

// Connector returns a connector by name.
func (s *Service) Connector(name string) (connectors.Connector, error) {
	c, ok := s.byName[name]
	if !ok {
		return nil, fmt.Errorf("%w: %q", ErrUnknownConnector, name)
	}
	return c, nil
}

// List returns the user's connections.
func (s *Service) List(ctx context.Context, userID string) ([]broker.Connection, error) {
	return broker.ListAll(ctx, s.o.Store.Connections(), broker.Query{Index: broker.IndexUser, Value: userID})
}

// Get returns one of the user's connections (ErrNotFound for another
// user's).
func (s *Service) Get(ctx context.Context, userID, id string) (broker.Connection, error) {
	c, err := s.o.Store.Connections().Get(ctx, id)
	if err == nil && c.UserID != userID {
		return broker.Connection{}, fmt.Errorf("connection %q: %w", id, broker.ErrNotFound)
	}
	return c, err
}

// LinkForm links an account from form input. With relinkID it replaces the
// secret of that existing connection instead.
func (s *Service) LinkForm(ctx context.Context, userID, connectorName, relinkID string, in connectors.Input) (broker.Connection, error) {
	c, err := s.Connector(connectorName)
	if err != nil {
		return broker.Connection{}, err
	}
	fl, ok := c.(connectors.FormLinker)
	if !ok {
		return broker.Connection{}, fmt.Errorf("connector %q is not linked with a form: %w", connectorName, broker.ErrInvalid)
	}
	linked, err := fl.Link(ctx, in)
	if err != nil {
		return broker.Connection{}, err
	}
	return s.save(ctx, userID, c, relinkID, linked)
}

// BeginLink starts a redirect-based link for the session and returns the
// upstream URL to send the browser to.
func (s *Service) BeginLink(ctx context.Context, userID, sessionID, connectorName, relinkID string) (string, error) {
	c, err := s.Connector(connectorName)
	if err != nil {
		return "", err
	}
	rl, ok := c.(connectors.RedirectLinker)
	if !ok {
		return "", fmt.Errorf("connector %q is not linked by redirect: %w", connectorName, broker.ErrInvalid)
	}
	if relinkID != "" {
		if _, err := s.Get(ctx, userID, relinkID); err != nil {
			return "", err
		}
	}
	state := broker.NewToken("")
	now := s.o.Now()
	if err := s.o.Store.PendingLinks().Create(ctx, broker.PendingLink{ID: broker.HashSecret(state), UserID: userID,
		SessionID: sessionID, Connector: connectorName, ConnectionID: relinkID, CreatedAt: now, ExpiresAt: now.Add(LinkTTL)}); err != nil {
		return "", err
	}
	return rl.AuthURL(ctx, s.linkState(state, connectorName))
}

// CompleteLink finishes a redirect-based link from the callback query
// received at connectorName's callback. The state must be one this session
// began for that connector, unused and fresh.
func (s *Service) CompleteLink(ctx context.Context, userID, sessionID, connectorName string, query url.Values) (broker.Connection, error) {
	state := query.Get("state")
	if state == "" {
		return broker.Connection{}, ErrLinkExpired
	}
	pl, err := s.o.Store.PendingLinks().Consume(ctx, broker.HashSecret(state), func(p broker.PendingLink) error {
		if p.UserID != userID || p.SessionID != sessionID || p.Connector != connectorName {
			return ErrLinkExpired
		}
		return nil
	})
	if errors.Is(err, broker.ErrNotFound) || errors.Is(err, broker.ErrConsumed) || errors.Is(err, ErrLinkExpired) {
		return broker.Connection{}, ErrLinkExpired
	}
	if err != nil {
		return broker.Connection{}, err
	}
	c, err := s.Connector(pl.Connector)
	if err != nil {
		return broker.Connection{}, err
	}
	rl, ok := c.(connectors.RedirectLinker)
	if !ok {
		return broker.Connection{}, ErrUnknownConnector
	}
	linked, err := rl.Complete(ctx, s.linkState(state, pl.Connector), query)
	if err != nil {
		return broker.Connection{}, err
	}
	return s.save(ctx, userID, c, pl.ConnectionID, linked)
}

// linkState derives the PKCE verifier from the state with the service key:
// nothing secret is stored for a link in flight.
func (s *Service) linkState(state, connectorName string) connectors.LinkState {
	m := hmac.New(sha256.New, s.o.Key)
	m.Write([]byte("lanyard link pkce v1\x00" + state))
	return connectors.LinkState{State: state, Verifier: base64.RawURLEncoding.EncodeToString(m.Sum(nil)),
		RedirectURI: s.CallbackURL(connectorName)}
}

// CallbackURL is the redirect URI to register at the provider for a
// connector.
func (s *Service) CallbackURL(connectorName string) string {
	return s.o.CallbackURL + "/" + url.PathEscape(connectorName)
}

// save stores a linked account: secret first (check-and-set), then the
// record; if the record fails, the new secret is removed again.
func (s *Service) save(ctx context.Context, userID string, c connectors.Connector, relinkID string, l connectors.Linked) (broker.Connection, error) {
	now := s.o.Now()
	if relinkID != "" {
		conn, err := s.Get(ctx, userID, relinkID)
		if err != nil {
			return conn, err
		}
		if conn.Connector != c.Name() {
			return conn, fmt.Errorf("re-link with another connector: %w", broker.ErrInvalid)
		}
		s.cache.drop(conn.ID)
		ver, err := s.o.Secrets.Put(ctx, conn.SecretKey, l.Secret, broker.CASAny)
		if err != nil {
			return conn, err
		}
		conn, err = s.o.Store.Connections().Update(ctx, conn.ID, func(x broker.Connection) (broker.Connection, error) {
			x.Account, x.Status, x.SecretVer, x.UpdatedAt, x.LastVerified = l.Account, broker.ConnectionActive, ver, now, now
			return x, nil
		})
		s.o.Logger.InfoContext(ctx, "account re-linked", "user", userID, "connector", c.Name(), "connection", relinkID, "err", err)
		if err != nil {
			return conn, err
		}
		return conn, s.audit(ctx, broker.AuditEvent{Action: broker.AuditLink, Outcome: broker.OutcomeOK, Reason: "re-linked",
			UserID: userID, Connector: c.Name(), ConnectionID: conn.ID})
	}
	id := broker.NewID()
	key := broker.SecretKey{Owner: userID, Name: "conn-" + id}
	ver, err := s.o.Secrets.Put(ctx, key, l.Secret, broker.CASCreate)
	if err != nil {
		return broker.Connection{}, err
	}
	conn := broker.Connection{ID: id, UserID: userID, Connector: c.Name(), Kind: c.Kind(), Account: l.Account,
		Status: broker.ConnectionActive, SecretKey: key, SecretVer: ver, CreatedAt: now, UpdatedAt: now, LastVerified: now}
	if err := s.o.Store.Connections().Create(ctx, conn); err != nil {
		if derr := s.o.Secrets.Delete(context.WithoutCancel(ctx), key); derr != nil {
			s.o.Logger.ErrorContext(ctx, "remove secret after failed link", "key", key.String(), "err", derr)
		}
		return broker.Connection{}, err
	}
	s.o.Logger.InfoContext(ctx, "account linked", "user", userID, "connector", c.Name(), "connection", id)
	return conn, s.audit(ctx, broker.AuditEvent{Action: broker.AuditLink, Outcome: broker.OutcomeOK,
		UserID: userID, Connector: c.Name(), ConnectionID: id})
}

// Verify re-checks a connection upstream and records the outcome.
func (s *Service) Verify(ctx context.Context, userID, id string) (broker.Connection, error) {
	conn, err := s.Get(ctx, userID, id)
	if err != nil {
		return conn, err
	}
	c, err := s.Connector(conn.Connector)
	if err != nil {
		return conn, err
	}
	sec, _, err := s.o.Secrets.Get(ctx, conn.SecretKey)
	if err != nil {
		return conn, err
	}
	var verr error
	switch v := c.(type) {
	case connectors.Verifier:
		verr = v.Verify(ctx, sec)
	case connectors.Refresher:
		_, verr = s.refresh(ctx, conn, c, true)
	}
	if verr != nil && !errors.Is(verr, connectors.ErrRejected) && !errors.Is(verr, connectors.ErrNeedsRelink) {
		return conn, verr // upstream trouble: the connection is not at fault
	}
	now := s.o.Now()
	return s.o.Store.Connections().Update(ctx, conn.ID, func(x broker.Connection) (broker.Connection, error) {
		x.LastVerified, x.UpdatedAt, x.Status = now, now, broker.ConnectionActive
		if verr != nil {
			x.Status = broker.ConnectionNeedsRelink
		}
		return x, nil
	})
}

// Unlink revokes the credential upstream where the connector can (best
// effort), deletes the secret, then the record.
func (s *Service) Unlink(ctx context.Context, userID, id string) error {
	conn, err := s.Get(ctx, userID, id)
	if err != nil {
		return err
	}
	if c, err := s.Connector(conn.Connector); err == nil {
		if rv, ok := c.(connectors.Revoker); ok {
			if sec, _, err := s.o.Secrets.Get(ctx, conn.SecretKey); err == nil {
				if err := rv.RevokeUpstream(ctx, sec); err != nil {
					s.o.Logger.WarnContext(ctx, "upstream revocation failed; the secret is deleted anyway", "connection", id, "err", err)
				}
			}
		}
	}
	s.cache.drop(conn.ID)
	if err := s.o.Secrets.Delete(ctx, conn.SecretKey); err != nil && !errors.Is(err, broker.ErrNotFound) {
		return err
	}
	if err := s.o.Store.Connections().Delete(ctx, conn.ID); err != nil && !errors.Is(err, broker.ErrNotFound) {
		return err
	}
	s.o.Logger.InfoContext(ctx, "account unlinked", "user", userID, "connector", conn.Connector, "connection", id)
	return s.audit(ctx, broker.AuditEvent{Action: broker.AuditUnlink, Outcome: broker.OutcomeOK,
		UserID: userID, Connector: conn.Connector, ConnectionID: id})
}

// ErrNeedsRelink is returned by Credential for a connection whose upstream
// credential stopped working; only the user can fix it.
var ErrNeedsRelink = connectors.ErrNeedsRelink

// Credential returns the credential of a connection for redemption,
// refreshing an expiring OAuth token first (single-flight per connection).
// conn must be the record as just read from the store: its SecretVer
// decides whether the cached secret may serve (see credCache).
func (s *Service) Credential(ctx context.Context, conn broker.Connection) (connectors.Credential, error) {
	if conn.Status == broker.ConnectionNeedsRelink {
		return connectors.Credential{}, fmt.Errorf("connection %s: %w", conn.ID, ErrNeedsRelink)
	}
	c, err := s.Connector(conn.Connector)
	if err != nil {
		return connectors.Credential{}, err
	}
	m, ok := c.(connectors.Materializer)
	if !ok {
		return connectors.Credential{}, fmt.Errorf("connector %q cannot hand out credentials", c.Name())
	}
	sec, hit := s.cache.get(conn, s.o.Now())
	if !hit {
		var ver int
		if sec, ver, err = s.o.Secrets.Get(ctx, conn.SecretKey); err != nil {
			if errors.Is(err, broker.ErrNotFound) {
				s.cache.drop(conn.ID)
			}
			return connectors.Credential{}, err
		}
		s.cache.put(conn, ver, sec, s.o.Now())
	}
	if _, ok := c.(connectors.Refresher); ok && s.expiring(sec) {
		if sec, err = s.refresh(ctx, conn, c, false); err != nil {
			return connectors.Credential{}, err
		}
	}
	return m.Materialize(ctx, sec)
}

// expiring reports whether the secret's "expiry" field is within the skew.
func (s *Service) expiring(sec broker.Secret) bool {
	v, ok := sec.Field("expiry")
	if !ok || v == "" {
		return false
	}
	t, err := time.Parse(time.RFC3339, v)
	return err == nil && !t.After(s.o.Now().Add(s.o.RefreshSkew))
}

// refresh renews a connection's credential once for all concurrent callers
// in this process (and, holding Options.Lock, across replicas): read the
// current secret and version, refresh upstream unless it is fresh already,
// write the new secret with check-and-set on that version, and only then
// return it. If another writer won the race (ErrConflict), its secret is
// the fresh one. invalid_grant marks the connection needs-relink.
func (s *Service) refresh(ctx context.Context, conn broker.Connection, c connectors.Connector, force bool) (broker.Secret, error) {
	v, err, _ := s.flight.Do(conn.ID, func() (any, error) {
		// The refresh serves every waiting caller: it must not die with
		// the first caller's context, but it is bounded.
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		if s.o.Lock != nil {
			unlock, err := s.o.Lock(ctx, "refresh/"+conn.ID)
			if err != nil {
				return nil, fmt.Errorf("connection %s: refresh lock: %w", conn.ID, err)
			}
			defer unlock()
		}
		sec, ver, err := s.o.Secrets.Get(ctx, conn.SecretKey)
		if err != nil {
			return nil, err
		}
		if !force && !s.expiring(sec) {
			return sec, nil // refreshed by someone else meanwhile
		}
		linked, err := c.(connectors.Refresher).Refresh(ctx, sec)
		if errors.Is(err, connectors.ErrNeedsRelink) {
			s.markNeedsRelink(ctx, conn.ID)
			return nil, fmt.Errorf("connection %s: %w", conn.ID, ErrNeedsRelink)
		}
		if err != nil {
			return nil, err
		}
		s.cache.drop(conn.ID) // the refresh token just used is spent
		newVer, err := s.o.Secrets.Put(ctx, conn.SecretKey, linked.Secret, ver)
		if errors.Is(err, broker.ErrConflict) {
			cur, _, gerr := s.o.Secrets.Get(ctx, conn.SecretKey)
			return cur, gerr
		}
		if err != nil {
			return nil, err
		}
		s.cache.put(conn, newVer, linked.Secret, s.o.Now())
		now := s.o.Now()
		if _, err := s.o.Store.Connections().Update(ctx, conn.ID, func(x broker.Connection) (broker.Connection, error) {
			x.SecretVer, x.UpdatedAt, x.LastVerified, x.Status = newVer, now, now, broker.ConnectionActive
			return x, nil
		}); err != nil {
			s.o.Logger.WarnContext(ctx, "record refresh on connection", "connection", conn.ID, "err", err)
		}
		return linked.Secret, nil
	})
	if err != nil {
		return broker.Secret{}, err
	}
	return v.(broker.Secret), nil
}

func (s *Service) markNeedsRelink(ctx context.Context, id string) {
	now := s.o.Now()
	if _, err := s.o.Store.Connections().Update(context.WithoutCancel(ctx), id, func(x broker.Connection) (broker.Connection, error) {
		x.Status, x.UpdatedAt = broker.ConnectionNeedsRelink, now
		return x, nil
	}); err != nil {
		s.o.Logger.ErrorContext(ctx, "mark connection needs re-link", "connection", id, "err", err)
	}
}

// audit appends a record of a link change. The change has happened; a
// failure to record it is returned so the user sees that something is
// wrong, and logged.
func (s *Service) audit(ctx context.Context, e broker.AuditEvent) error {
	e.RequestID = httpx.RequestID(ctx)
	if _, err := s.o.Store.Audit().Append(ctx, e); err != nil {
		s.o.Logger.ErrorContext(ctx, "audit append failed", "action", e.Action, "err", err)
		return fmt.Errorf("audit: %w", err)
	}
	return nil
}
