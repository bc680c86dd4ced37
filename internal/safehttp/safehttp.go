// Package safehttp is an HTTP client for fetching URLs that untrusted parties
// name: Client ID Metadata Documents today, OIDC discovery documents and JWKS
// URLs later. Whoever names the URL chooses where Lanyard connects, so the
// client guards against server-side request forgery (SSRF):
//
//   - https only; plain http only in dev mode (Options.AllowLoopback) and
//     only to a loopback host;
//   - the address actually dialled (after DNS resolution, so DNS rebinding
//     cannot slip past) must be a public unicast address: loopback (unless
//     AllowLoopback), private, link-local (cloud metadata at 169.254.169.254),
//     CGNAT, multicast, reserved and documentation ranges are refused, in
//     IPv4, IPv6 and IPv4-mapped/embedded forms;
//   - no proxy from the environment, no redirects, a short timeout, and
//     response bodies read only up to a cap.
//
// Use NewClient to build the client and Get or Do to fetch; the errors say
// why a fetch was refused (ErrBlockedAddress, ErrScheme, ErrRedirect,
// ErrTooLarge, ErrTimeout) so callers can tell the party that named the URL.
//
// The same address rules guard connections that are not HTTP: Dialer is a
// net.Dialer that checks every address it dials, Resolve resolves a host and
// checks every address it stands for, and DialChecked does both (resolve
// once, check all, dial the checked addresses).
package safehttp

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"syscall"
	"time"
)

// Errors. Fetch errors wrap one of these; match them with errors.Is.
var (
	// ErrBlockedAddress: the host resolved to an address Lanyard must not
	// connect to (loopback, private, link-local, ...).
	ErrBlockedAddress = errors.New("safehttp: address not allowed")
	// ErrScheme: the URL is not https (or http to a loopback host in dev
	// mode), or it is malformed or carries user info.
	ErrScheme = errors.New("safehttp: URL not allowed")
	// ErrRedirect: the server answered with a redirect, which is never
	// followed.
	ErrRedirect = errors.New("safehttp: redirects are not followed")
	// ErrTooLarge: the response body exceeds the caller's cap.
	ErrTooLarge = errors.New("safehttp: response body too large")
	// ErrTimeout: the server did not answer in time.
	ErrTimeout = errors.New("safehttp: timed out")
)

// DefaultTimeout bounds a whole fetch (dial, TLS, headers and body) when
// Options.Timeout is zero.
const DefaultTimeout = 5 * time.Second

// Options configures NewClient. The zero value is the production setting.
type Options struct {
	// Timeout bounds a whole request; 0 means DefaultTimeout.
	Timeout time.Duration
	// AllowLoopback is dev mode: loopback addresses may be dialled and plain
	// http is allowed to loopback hosts. Private and link-local ranges stay
	// refused.
	AllowLoopback bool
}

func (o Options) withDefaults() Options {
	if o.Timeout <= 0 {
		o.Timeout = DefaultTimeout
	}
	return o
}

// NewClient returns an *http.Client with the guards described in the package
// comment. It is safe for concurrent use; share one per purpose.
func NewClient(o Options) *http.Client {
	o = o.withDefaults()
	d := Dialer(o.AllowLoopback)
	d.Timeout = o.Timeout
	d.KeepAlive = 30 * time.Second
	base := &http.Transport{
		Proxy:                  nil, // never from the environment: a proxy would dial for us, unchecked
		DialContext:            d.DialContext,
		ForceAttemptHTTP2:      true,
		TLSHandshakeTimeout:    o.Timeout,
		ResponseHeaderTimeout:  o.Timeout,
		ExpectContinueTimeout:  time.Second,
		MaxIdleConns:           16,
		MaxIdleConnsPerHost:    2,
		IdleConnTimeout:        60 * time.Second,
		MaxResponseHeaderBytes: 32 << 10,
	}
	return &http.Client{
		Transport: &transport{base: base, allowLoopback: o.AllowLoopback},
		Timeout:   o.Timeout,
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse // Do turns the 3xx into ErrRedirect
		},
	}
}

// transport checks every request's URL before the base transport sees it, so
// the scheme rule holds however the client is used.
type transport struct {
	base          http.RoundTripper
	allowLoopback bool
}

func (t *transport) RoundTrip(req *http.Request) (*http.Response, error) {
	if err := CheckURL(req.URL, t.allowLoopback); err != nil {
		if req.Body != nil {
			_ = req.Body.Close()
		}
		return nil, err
	}
	return t.base.RoundTrip(req)
}

// CheckURL reports whether u may be fetched: absolute https with a host and
// no user info; http only when allowLoopback and the host is localhost or a
// loopback IP literal. The address the host resolves to is checked later,
// at dial time.
func CheckURL(u *url.URL, allowLoopback bool) error {
	if u == nil || u.Host == "" || u.Opaque != "" {
		return fmt.Errorf("%w: not an absolute URL with a host", ErrScheme)
	}
	if u.User != nil {
		return fmt.Errorf("%w: user info in URL", ErrScheme)
	}
	switch u.Scheme {
	case "https":
		return nil
	case "http":
		if allowLoopback && isLoopbackName(u.Hostname()) {
			return nil
		}
		return fmt.Errorf("%w: http is allowed only to loopback hosts in dev mode", ErrScheme)
	default:
		return fmt.Errorf("%w: scheme must be https", ErrScheme)
	}
}

func isLoopbackName(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	a, err := netip.ParseAddr(host)
	return err == nil && a.Unmap().IsLoopback()
}

// control is the net.Dialer Control hook: it sees the IP the socket is
// about to connect to, after DNS resolution, for every address the dialer
// tries.
func control(allowLoopback bool) func(network, address string, _ syscall.RawConn) error {
	return func(network, address string, _ syscall.RawConn) error {
		switch network {
		case "tcp", "tcp4", "tcp6":
		default:
			return fmt.Errorf("%w: network %s", ErrBlockedAddress, network)
		}
		ap, err := netip.ParseAddrPort(address)
		if err != nil {
			return fmt.Errorf("%w: unparsable address", ErrBlockedAddress)
		}
		return CheckAddr(ap.Addr(), allowLoopback)
	}
}

// Ranges never dialled (besides what netip classifies: loopback, private,
// link-local, multicast, unspecified).
var blockedPrefixes = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"),          // "this network"
	netip.MustParsePrefix("100.64.0.0/10"),      // CGNAT (RFC 6598)
	netip.MustParsePrefix("192.0.0.0/24"),       // IETF protocol assignments
	netip.MustParsePrefix("192.0.2.0/24"),       // TEST-NET-1
	netip.MustParsePrefix("192.88.99.0/24"),     // 6to4 relay anycast
	netip.MustParsePrefix("198.18.0.0/15"),      // benchmarking
	netip.MustParsePrefix("198.51.100.0/24"),    // TEST-NET-2
	netip.MustParsePrefix("203.0.113.0/24"),     // TEST-NET-3
	netip.MustParsePrefix("240.0.0.0/4"),        // reserved, incl. broadcast
	netip.MustParsePrefix("::/96"),              // IPv4-compatible (deprecated)
	netip.MustParsePrefix("64:ff9b:1::/48"),     // local-use NAT64
	netip.MustParsePrefix("100::/64"),           // discard-only
	netip.MustParsePrefix("2001::/32"),          // Teredo (embeds an obfuscated IPv4)
	netip.MustParsePrefix("2001:db8::/32"),      // documentation
	netip.MustParsePrefix("fc00::/7"),           // unique local (also IsPrivate)
	netip.MustParsePrefix("fec0::/10"),          // site-local (deprecated)
	netip.MustParsePrefix("5f00::/16"),          // SRv6 SIDs
	netip.MustParsePrefix("3fff::/20"),          // documentation (RFC 9637)
	netip.MustParsePrefix("2001:20::/28"),       // ORCHIDv2
	netip.MustParsePrefix("ff00::/8"),           // multicast (also IsMulticast)
	netip.MustParsePrefix("255.255.255.255/32"), // limited broadcast
}

var (
	nat64     = netip.MustParsePrefix("64:ff9b::/96")
	sixToFour = netip.MustParsePrefix("2002::/16")
)

// CheckAddr reports whether Lanyard may connect to a: nil for a public
// unicast address (or a loopback one when allowLoopback), an error wrapping
// ErrBlockedAddress otherwise. IPv4-mapped IPv6 addresses are judged as the
// IPv4 address they carry; NAT64 and 6to4 addresses by their embedded IPv4
// address.
func CheckAddr(a netip.Addr, allowLoopback bool) error {
	if !a.IsValid() {
		return fmt.Errorf("%w: invalid address", ErrBlockedAddress)
	}
	a = a.WithZone("").Unmap()
	if a.Is6() {
		b := a.As16()
		switch {
		case nat64.Contains(a):
			return CheckAddr(netip.AddrFrom4([4]byte{b[12], b[13], b[14], b[15]}), false)
		case sixToFour.Contains(a):
			return CheckAddr(netip.AddrFrom4([4]byte{b[2], b[3], b[4], b[5]}), false)
		}
	}
	switch {
	case a.IsLoopback():
		if allowLoopback {
			return nil
		}
		return fmt.Errorf("%w: %s is a loopback address", ErrBlockedAddress, a)
	case a.IsUnspecified():
		return fmt.Errorf("%w: %s is unspecified", ErrBlockedAddress, a)
	case a.IsPrivate():
		return fmt.Errorf("%w: %s is a private address", ErrBlockedAddress, a)
	case a.IsLinkLocalUnicast(), a.IsLinkLocalMulticast():
		return fmt.Errorf("%w: %s is a link-local address", ErrBlockedAddress, a)
	case a.IsMulticast(), a.IsInterfaceLocalMulticast():
		return fmt.Errorf("%w: %s is a multicast address", ErrBlockedAddress, a)
	}
	for _, p := range blockedPrefixes {
		if p.Contains(a) {
			return fmt.Errorf("%w: %s is in reserved range %s", ErrBlockedAddress, a, p)
		}
	}
	return nil
}

// Response is a fetched response with its body read in full.
type Response struct {
	Status int
	Header http.Header
	Body   []byte
}

// Get fetches rawURL with c (from NewClient) and reads at most maxBytes of
// the body. See Do.
func Get(ctx context.Context, c *http.Client, rawURL string, maxBytes int64) (*Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, rawURL, nil)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrScheme, err)
	}
	return Do(c, req, maxBytes)
}

// Do sends req with c (from NewClient) and reads the whole body, failing
// with ErrTooLarge if it is longer than maxBytes. A 3xx answer is
// ErrRedirect; any other status is returned for the caller to judge.
func Do(c *http.Client, req *http.Request, maxBytes int64) (*Response, error) {
	if req.Header.Get("User-Agent") == "" {
		req.Header.Set("User-Agent", "lanyard")
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, classify(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 && resp.StatusCode < 400 {
		return nil, fmt.Errorf("%w: status %d", ErrRedirect, resp.StatusCode)
	}
	if resp.ContentLength > maxBytes {
		return nil, fmt.Errorf("%w: Content-Length %d exceeds %d bytes", ErrTooLarge, resp.ContentLength, maxBytes)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxBytes+1))
	if err != nil {
		return nil, classify(err)
	}
	if int64(len(body)) > maxBytes {
		return nil, fmt.Errorf("%w: more than %d bytes", ErrTooLarge, maxBytes)
	}
	return &Response{Status: resp.StatusCode, Header: resp.Header, Body: body}, nil
}

// classify makes timeouts match ErrTimeout; guard errors already match
// their sentinel through the *url.Error and *net.OpError wrappers.
func classify(err error) error {
	if errors.Is(err, ErrBlockedAddress) || errors.Is(err, ErrScheme) || errors.Is(err, context.Canceled) {
		return err
	}
	var ne net.Error
	if errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout()) {
		return fmt.Errorf("%w: %v", ErrTimeout, err)
	}
	return err
}
