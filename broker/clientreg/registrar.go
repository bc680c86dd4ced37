package clientreg

import (
	"context"
	"crypto/rand"
	"errors"
	"io"
	"log/slog"
	"math"
	"mime"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/lanyardhq/lanyard/broker"
	"github.com/lanyardhq/lanyard/broker/oauth"
)

// MaxRegistrationBytes caps a registration request body.
const MaxRegistrationBytes = 16 << 10

// Registration rate limit per client address when RegistrarOptions leaves
// it zero: 10 a minute, bursts of 5.
const (
	DefaultRegisterRate  = rate.Limit(10.0 / 60)
	DefaultRegisterBurst = 5
)

// maxTrackedAddrs bounds the per-address limiter map; past it, limiters
// that are full again (idle addresses) are dropped.
const maxTrackedAddrs = 10000

// RegistrarOptions configures NewRegistrar.
type RegistrarOptions struct {
	// Clients stores registered clients. Required.
	Clients broker.Table[broker.Client]
	// Now is the clock for client_id_issued_at and rate limiting; nil
	// means time.Now.
	Now func() time.Time
	// DevLoopback lets web clients register loopback redirect URIs.
	DevLoopback bool
	// Rate and Burst limit registrations per client address (an IPv4
	// address, or the /64 of an IPv6 one); zero means DefaultRegisterRate
	// and DefaultRegisterBurst. The address is r.RemoteAddr: behind a
	// reverse proxy, middleware that trusts the proxy must set it.
	Rate  rate.Limit
	Burst int
	// Counters, if set, counts registrations per address in a store shared
	// by every replica (broker.Store.Counters), so that the limit holds
	// across them: a fixed one-minute window allowing Rate×60 (rounded
	// up, at least 1) registrations; Burst is not used then. Nil keeps
	// the in-process token bucket.
	Counters broker.Counters
	// Logger receives causes of server errors; nil means slog.Default().
	Logger *slog.Logger
}

func (o RegistrarOptions) withDefaults() RegistrarOptions {
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Rate <= 0 {
		o.Rate = DefaultRegisterRate
	}
	if o.Burst <= 0 {
		o.Burst = DefaultRegisterBurst
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return o
}

// Registrar is the RFC 7591 dynamic client registration endpoint. Mount it
// at POST /register. Registered clients do not expire.
//
// The server assigns every identifier: client_id ("dcr_" + random) and,
// for client_secret_basic or client_secret_post, a 256-bit client_secret
// that is returned once and stored only as broker.HashSecret(secret). A
// client_id or client_secret in the request is ignored, as are fields
// Lanyard does not use.
type Registrar struct {
	o RegistrarOptions

	mu       sync.Mutex
	limiters map[netip.Prefix]*rate.Limiter
}

var _ http.Handler = (*Registrar)(nil)

// NewRegistrar returns a Registrar. It panics if opts.Clients is nil.
func NewRegistrar(opts RegistrarOptions) *Registrar {
	if opts.Clients == nil {
		panic("clientreg: NewRegistrar without Clients")
	}
	return &Registrar{o: opts.withDefaults(), limiters: map[netip.Prefix]*rate.Limiter{}}
}

// RegistrationResponse is the RFC 7591 §3.2.1 answer: the client
// information and the metadata as registered.
type RegistrationResponse struct {
	ClientID              string `json:"client_id"`
	ClientIDIssuedAt      int64  `json:"client_id_issued_at"`
	ClientSecret          string `json:"client_secret,omitempty"`
	ClientSecretExpiresAt *int64 `json:"client_secret_expires_at,omitempty"` // 0: never, when a secret is issued
	Metadata
}

// ServeHTTP implements http.Handler.
func (g *Registrar) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	resp, err := g.register(w, r)
	if err != nil {
		if e := oauth.As(err); e.Status >= 500 {
			g.o.Logger.ErrorContext(r.Context(), "clientreg: registration failed", "err", err)
		}
		oauth.WriteError(w, r, err)
		return
	}
	oauth.WriteJSON(w, http.StatusCreated, resp)
}

func (g *Registrar) register(w http.ResponseWriter, r *http.Request) (*RegistrationResponse, error) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		return nil, oauth.ErrInvalidRequest.WithDescription("method must be POST").WithStatus(http.StatusMethodNotAllowed)
	}
	if ok, err := g.allow(r.Context(), r.RemoteAddr); err != nil {
		return nil, storeErr(err, "")
	} else if !ok {
		w.Header().Set("Retry-After", "60")
		return nil, oauth.ErrTooManyRequests.WithDescription("too many registrations from this address; try again later")
	}
	mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || mt != "application/json" {
		return nil, oauth.ErrInvalidRequest.WithDescription("content type must be application/json").
			WithStatus(http.StatusUnsupportedMediaType)
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxRegistrationBytes))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return nil, oauth.ErrInvalidClientMetadata.WithDescription("request body too large").
				WithStatus(http.StatusRequestEntityTooLarge)
		}
		return nil, oauth.ErrInvalidRequest.WithDescription("request body unreadable").WithCause(err)
	}
	members, err := decodeObject(body)
	if err != nil {
		return nil, err
	}
	m, err := parseMetadata(members)
	if err != nil {
		return nil, err
	}
	m, err = ValidateMetadata(m, g.o.DevLoopback)
	if err != nil {
		return nil, err
	}

	now := g.o.Now().UTC().Truncate(time.Second)
	c := broker.Client{
		ID:                      "dcr_" + rand.Text(),
		Kind:                    broker.ClientRegistered,
		Name:                    m.ClientName,
		RedirectURIs:            m.RedirectURIs,
		GrantTypes:              m.GrantTypes,
		ApplicationType:         m.ApplicationType,
		TokenEndpointAuthMethod: m.TokenEndpointAuthMethod,
		CreatedAt:               now,
	}
	resp := &RegistrationResponse{ClientID: c.ID, ClientIDIssuedAt: now.Unix(), Metadata: m}
	if m.TokenEndpointAuthMethod != AuthNone {
		secret := broker.NewToken("")
		c.SecretHash = broker.HashSecret(secret)
		resp.ClientSecret = secret
		var never int64
		resp.ClientSecretExpiresAt = &never
	}
	if err := g.o.Clients.Create(r.Context(), c); err != nil {
		return nil, storeErr(err, "")
	}
	return resp, nil
}

// allow reports whether the address in remoteAddr may register now.
func (g *Registrar) allow(ctx context.Context, remoteAddr string) (bool, error) {
	key := limitKey(remoteAddr)
	if g.o.Counters != nil {
		if g.o.Rate == rate.Inf {
			return true, nil
		}
		n, err := g.o.Counters.Incr(ctx, "register/"+key.String(), time.Minute)
		return n <= max(1, int64(math.Ceil(float64(g.o.Rate)*60))), err
	}
	now := g.o.Now()
	g.mu.Lock()
	defer g.mu.Unlock()
	l, ok := g.limiters[key]
	if !ok {
		if len(g.limiters) >= maxTrackedAddrs {
			for k, v := range g.limiters {
				if v.TokensAt(now) >= float64(g.o.Burst) {
					delete(g.limiters, k)
				}
			}
		}
		l = rate.NewLimiter(g.o.Rate, g.o.Burst)
		g.limiters[key] = l
	}
	return l.AllowN(now, 1), nil
}

// limitKey is the rate-limit bucket of an address: the IPv4 address, or
// the /64 of an IPv6 address (one host usually owns a whole /64). An
// unparsable address shares one bucket.
func limitKey(remoteAddr string) netip.Prefix {
	host, _, err := net.SplitHostPort(remoteAddr)
	if err != nil {
		host = remoteAddr
	}
	a, err := netip.ParseAddr(host)
	if err != nil {
		return netip.Prefix{}
	}
	a = a.WithZone("").Unmap()
	bits := 32
	if a.Is6() {
		bits = 64
	}
	p, _ := a.Prefix(bits)
	return p
}
