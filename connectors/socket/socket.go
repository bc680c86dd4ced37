// Package socket is the "socket" connector kind: a local service reached
// over a Unix-domain socket or a TCP endpoint, plus an optional secret (a
// password the service wants). Link checks the endpoint, dials it and runs
// the configured probe before anything is kept; Verify does the same with
// the stored secret; Materialize hands an MCP server the checked endpoint
// and the secret.
//
// Where a user may point Lanyard:
//
//   - Unix sockets only under the config's allowed_dirs. The path must be
//     absolute; it is resolved with filepath.EvalSymlinks before the check
//     (each allowed dir too), and the comparison is by whole path
//     components, so a link inside /run/a that points to /etc, or
//     /run/a-evil against /run/a, is refused. The resolved path must be a
//     socket and is what is dialled and handed out.
//   - TCP endpoints: a local service is the point of this connector, so
//     loopback is allowed, as are public addresses; private (RFC 1918, ULA),
//     link-local (cloud metadata at 169.254.169.254), CGNAT, multicast and
//     reserved ranges are refused (safehttp.CheckAddr with loopback
//     allowed). The host is resolved once, every address must pass, and the
//     checked IP is dialled. This lets a signed-in user learn whether a
//     loopback port accepts connections (and, with the redis probe, whether
//     a redis there takes a password); operators who do not want that use
//     network: unix.
//
// Probes: "none" (a successful dial suffices) and "redis" (AUTH with the
// secret, then PING, through github.com/redis/go-redis/v9 on the checked
// connection). A dial, a probe and a whole Link are bounded by Timeout and
// the caller's context.
package socket

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"

	"github.com/lanyardhq/lanyard/broker"
	"github.com/lanyardhq/lanyard/connectors"
	"github.com/lanyardhq/lanyard/internal/config"
	"github.com/lanyardhq/lanyard/internal/safehttp"
)

// Timeout bounds one check: dial and probe.
const Timeout = 5 * time.Second

// Networks and probes (config.SocketConnector).
const (
	NetworkUnix = "unix"
	NetworkTCP  = "tcp"
	ProbeNone   = "none"
	ProbeRedis  = "redis"
)

// Form and secret field names.
const (
	FieldPath    = "path"
	FieldAddress = "address"
	FieldSecret  = "secret"
	fieldNetwork = "network"
)

const maxSecret = 4096

// Connector is one configured socket connector.
type Connector struct {
	connectors.Named
	cfg config.SocketConnector
}

var (
	_ connectors.Connector    = (*Connector)(nil)
	_ connectors.FormLinker   = (*Connector)(nil)
	_ connectors.Verifier     = (*Connector)(nil)
	_ connectors.Materializer = (*Connector)(nil)
)

// New returns the connector named name. It applies the config's defaults
// (network unix, probe none) and requires absolute allowed_dirs for unix.
// The allowed dirs are resolved at each check, so a directory that appears
// after start-up (a service's /run dir) works.
func New(name, displayName string, cfg config.SocketConnector) (*Connector, error) {
	named, err := connectors.NewNamed(connectors.KindSocket, name, displayName)
	if err != nil {
		return nil, err
	}
	if cfg.Network == "" {
		cfg.Network = NetworkUnix
	}
	if cfg.Probe == "" {
		cfg.Probe = ProbeNone
	}
	var probs []string
	switch cfg.Network {
	case NetworkUnix:
		if len(cfg.AllowedDirs) == 0 {
			probs = append(probs, "allowed_dirs: list the directories socket paths may be under")
		}
		for _, d := range cfg.AllowedDirs {
			if !filepath.IsAbs(d) {
				probs = append(probs, fmt.Sprintf("allowed_dirs: %q is not an absolute path", d))
			}
		}
	case NetworkTCP:
	default:
		probs = append(probs, fmt.Sprintf("network %q is not one of unix, tcp", cfg.Network))
	}
	if cfg.Probe != ProbeNone && cfg.Probe != ProbeRedis {
		probs = append(probs, fmt.Sprintf("probe %q is not one of none, redis", cfg.Probe))
	}
	if len(probs) > 0 {
		return nil, fmt.Errorf("socket connector %s: %s: %w", name, strings.Join(probs, "; "), broker.ErrInvalid)
	}
	cfg.AllowedDirs = append([]string(nil), cfg.AllowedDirs...)
	return &Connector{Named: named, cfg: cfg}, nil
}

// Fields implements connectors.FormLinker.
func (c *Connector) Fields() []connectors.Field {
	var f []connectors.Field
	if c.cfg.Network == NetworkUnix {
		f = append(f, connectors.Field{Name: FieldPath, Label: "Socket path", Required: true,
			Help: "Absolute path of the Unix socket, under " + strings.Join(c.cfg.AllowedDirs, ", ")})
	} else {
		f = append(f, connectors.Field{Name: FieldAddress, Label: "Address", Required: true,
			Help: "host:port, for example 127.0.0.1:6379"})
	}
	help := "The password the service asks for, if any."
	if c.cfg.Probe == ProbeRedis {
		help = "The redis password (requirepass), if it has one."
	}
	return append(f, connectors.Field{Name: FieldSecret, Label: "Secret", Secret: true, Help: help})
}

// endpoint is a checked place to dial.
type endpoint struct {
	network string
	given   string // what the user typed (path or host:port)
	dial    string // resolved path, or checked ip:port
	secret  string
}

// Link implements connectors.FormLinker.
func (c *Connector) Link(ctx context.Context, in connectors.Input) (connectors.Linked, error) {
	ep, err := c.check(ctx, in.Get)
	if err != nil {
		return connectors.Linked{}, err
	}
	if err := c.probe(ctx, ep); err != nil {
		return connectors.Linked{}, err
	}
	fields := map[string]string{fieldNetwork: ep.network}
	if ep.network == NetworkUnix {
		fields[FieldPath] = ep.given
	} else {
		fields[FieldAddress] = ep.given
	}
	if ep.secret != "" {
		fields[FieldSecret] = ep.secret
	}
	return connectors.Linked{Account: ep.given, Secret: broker.NewSecret(fields)}, nil
}

// fromSecret checks a stored secret's endpoint again: the allowed dirs, a
// symlink or DNS may have changed since it was linked.
func (c *Connector) fromSecret(ctx context.Context, secret broker.Secret) (endpoint, error) {
	if n, _ := secret.Field(fieldNetwork); n != c.cfg.Network {
		return endpoint{}, fmt.Errorf("stored secret is for network %q, the connector uses %q: %w", n, c.cfg.Network, broker.ErrInvalid)
	}
	ep, err := c.check(ctx, func(k string) string { v, _ := secret.Field(k); return v })
	if err != nil {
		return endpoint{}, fmt.Errorf("stored secret: %w", err)
	}
	return ep, nil
}

// Verify implements connectors.Verifier. A stored secret the service now
// refuses is ErrNeedsRelink.
func (c *Connector) Verify(ctx context.Context, secret broker.Secret) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	ep, err := c.fromSecret(ctx, secret)
	if err != nil {
		return err
	}
	err = c.probe(ctx, ep)
	if errors.Is(err, connectors.ErrRejected) {
		return fmt.Errorf("the service no longer accepts the stored secret: %w", connectors.ErrNeedsRelink)
	}
	return err
}

// Materialize implements connectors.Materializer: the network, the checked
// path (symlinks resolved) or address, and the secret ("" when none).
func (c *Connector) Materialize(ctx context.Context, secret broker.Secret) (connectors.Credential, error) {
	if err := ctx.Err(); err != nil {
		return connectors.Credential{}, err
	}
	ep, err := c.fromSecret(ctx, secret)
	if err != nil {
		return connectors.Credential{}, err
	}
	f := map[string]any{fieldNetwork: ep.network, FieldSecret: ep.secret}
	if ep.network == NetworkUnix {
		f[FieldPath] = ep.dial
	} else {
		f[FieldAddress] = ep.given
	}
	return connectors.Credential{Type: connectors.KindSocket, Fields: f}, nil
}

// check validates field values and resolves the endpoint.
func (c *Connector) check(ctx context.Context, get func(string) string) (endpoint, error) {
	ep := endpoint{network: c.cfg.Network, secret: get(FieldSecret)}
	if len(ep.secret) > maxSecret || !utf8.ValidString(ep.secret) || strings.ContainsAny(ep.secret, "\x00\r\n") {
		return endpoint{}, fmt.Errorf("the secret is too long or has characters that are not allowed: %w", broker.ErrInvalid)
	}
	if c.cfg.Network == NetworkUnix {
		ep.given = get(FieldPath)
		p, err := c.checkPath(ep.given)
		if err != nil {
			return endpoint{}, err
		}
		ep.dial = p
		return ep, nil
	}
	ep.given = strings.TrimSpace(get(FieldAddress))
	a, err := checkTCP(ctx, ep.given)
	if err != nil {
		return endpoint{}, err
	}
	ep.dial = a
	return ep, nil
}

// checkPath resolves p and returns it if it is a socket under an allowed
// directory.
func (c *Connector) checkPath(p string) (string, error) {
	switch {
	case p == "":
		return "", fmt.Errorf("the socket path is required: %w", broker.ErrInvalid)
	case !filepath.IsAbs(p) || !connectors.Printable(p) || len(p) > 4096:
		return "", fmt.Errorf("the socket path must be an absolute path: %w", broker.ErrInvalid)
	}
	resolved, err := filepath.EvalSymlinks(p)
	if err != nil {
		return "", fmt.Errorf("socket path %s: %w: %w", p, pathErr(err), broker.ErrInvalid)
	}
	if !c.allowed(resolved) {
		return "", fmt.Errorf("socket path %s is not under an allowed directory (%s): %w", p, strings.Join(c.cfg.AllowedDirs, ", "), broker.ErrInvalid)
	}
	fi, err := os.Stat(resolved)
	if err != nil {
		return "", fmt.Errorf("socket path %s: %w: %w", p, pathErr(err), broker.ErrInvalid)
	}
	if fi.Mode().Type() != os.ModeSocket {
		return "", fmt.Errorf("%s is not a socket: %w", p, broker.ErrInvalid)
	}
	return resolved, nil
}

// pathErr says what went wrong without the raw syscall text.
func pathErr(err error) error {
	switch {
	case errors.Is(err, os.ErrNotExist):
		return errors.New("does not exist")
	case errors.Is(err, os.ErrPermission):
		return errors.New("permission denied")
	}
	return errors.New("cannot be resolved")
}

// allowed reports whether the resolved path lies strictly below one of the
// allowed dirs (each resolved too; one that does not exist allows nothing).
func (c *Connector) allowed(resolved string) bool {
	for _, d := range c.cfg.AllowedDirs {
		rd, err := filepath.EvalSymlinks(filepath.Clean(d))
		if err != nil {
			continue
		}
		prefix := rd
		if !strings.HasSuffix(prefix, string(filepath.Separator)) {
			prefix += string(filepath.Separator)
		}
		if strings.HasPrefix(resolved, prefix) && len(resolved) > len(prefix) {
			return true
		}
	}
	return false
}

// checkTCP resolves host:port and returns the first address to dial after
// every address the host resolves to passed safehttp.CheckAddr (loopback
// allowed).
func checkTCP(ctx context.Context, addr string) (string, error) {
	host, portStr, err := net.SplitHostPort(addr)
	if addr == "" || err != nil || host == "" || !connectors.Printable(host) || strings.ContainsAny(host, " /@") {
		return "", fmt.Errorf("the address must be host:port: %w", broker.ErrInvalid)
	}
	port, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil || port == 0 {
		return "", fmt.Errorf("the port must be a number from 1 to 65535: %w", broker.ErrInvalid)
	}
	rctx, cancel := context.WithTimeout(ctx, Timeout)
	defer cancel()
	ips, err := safehttp.Resolve(rctx, host, true)
	switch {
	case errors.Is(err, safehttp.ErrBlockedAddress):
		return "", fmt.Errorf("the address %s is not allowed (%w): %w", host, err, broker.ErrInvalid)
	case err != nil:
		if ctx.Err() != nil {
			return "", ctx.Err()
		}
		return "", fmt.Errorf("resolve %s: %w", host, connectors.ErrUpstream)
	case len(ips) == 0:
		return "", fmt.Errorf("%s has no address: %w", host, connectors.ErrUpstream)
	}
	return netip.AddrPortFrom(ips[0], uint16(port)).String(), nil
}

// dialer dials only what check approved: a unix socket path as it is, a TCP
// address through safehttp.Dialer, whose Control hook checks the address
// once more (loopback allowed).
func dialer(network string, deadline time.Time) *net.Dialer {
	if network == NetworkUnix {
		return &net.Dialer{Deadline: deadline}
	}
	d := safehttp.Dialer(true)
	d.Deadline = deadline
	return d
}

// probe dials the endpoint and runs the configured probe.
func (c *Connector) probe(ctx context.Context, ep endpoint) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	deadline := time.Now().Add(Timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	ctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	fail := func(what string, err error) error {
		if ctxErr := ctx.Err(); ctxErr != nil {
			return fmt.Errorf("%s %s: %s: %w (%w)", ep.network, ep.given, what, connectors.ErrUpstream, ctxErr)
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return fmt.Errorf("%s %s: %s: timed out: %w (%w)", ep.network, ep.given, what, connectors.ErrUpstream, context.DeadlineExceeded)
		}
		return fmt.Errorf("%s %s: %s: %v: %w", ep.network, ep.given, what, err, connectors.ErrUpstream)
	}
	if c.cfg.Probe == ProbeNone {
		conn, err := dialer(ep.network, deadline).DialContext(ctx, ep.network, ep.dial)
		if err != nil {
			return fail("connect", err)
		}
		_ = conn.Close()
		return nil
	}
	return redisProbe(ctx, ep, deadline, fail)
}

// redisProbe: AUTH with the secret (when there is one), then PING, on one
// connection dialled to the checked endpoint.
func redisProbe(ctx context.Context, ep endpoint, deadline time.Time, fail func(string, error) error) error {
	left := time.Until(deadline)
	rdb := redis.NewClient(&redis.Options{
		Network: ep.network,
		Addr:    ep.dial,
		Dialer: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return dialer(ep.network, deadline).DialContext(ctx, ep.network, ep.dial)
		},
		Password: ep.secret,
		// RESP2 and no CLIENT SETINFO or maintenance-notification
		// handshakes: a probe sends AUTH and PING and nothing a
		// locked-down ACL might refuse.
		Protocol:                 2,
		DisableIdentity:          true,
		MaintNotificationsConfig: &maintnotifications.Config{Mode: maintnotifications.ModeDisabled},
		MaxRetries:               -1, // never repeat a wrong password
		DialerRetries:            1,
		PoolSize:                 1,
		DialTimeout:              left,
		ReadTimeout:              left,
		WriteTimeout:             left,
		ContextTimeoutEnabled:    true,
	})
	defer rdb.Close()
	err := rdb.Ping(ctx).Err()
	switch {
	case err == nil:
		return nil
	case authRefused(err):
		return fmt.Errorf("%s %s: the service refused the secret: %w", ep.network, ep.given, connectors.ErrRejected)
	}
	return fail("redis PING", err)
}

// authRefused recognises redis's answers to a missing or wrong password.
func authRefused(err error) bool {
	var rerr redis.Error
	if !errors.As(err, &rerr) {
		return false
	}
	msg := rerr.Error()
	for _, p := range []string{"WRONGPASS", "NOAUTH", "ERR invalid password", "ERR AUTH", "ERR Client sent AUTH"} {
		if strings.HasPrefix(msg, p) {
			return true
		}
	}
	return false
}
