// Package basic is the "basic" connector kind: an account at a service that
// takes a user name and password rather than OAuth. IMAP is the protocol
// built in. Link verifies the password by a real IMAP login before anything
// is kept; Verify logs in again with the stored secret; Materialize hands an
// MCP server the user name, password and where to connect.
//
// The IMAP protocol is github.com/emersion/go-imap's client; this package
// only dials, sets up TLS and judges the answer. The server's address is
// fixed by the connector's config, or — when the config sets
// allow_user_address and no address — given by the user, and then guarded
// against server-side request forgery: the host is resolved once, every
// address it resolves to must be a public unicast address
// (safehttp.CheckAddr, no loopback), and the checked IP is what is dialled.
//
// TLS is implicit (imaps, the default) or STARTTLS (refused when the server
// does not offer it); plaintext is used only when the config says so. The
// server certificate is verified against the config's CA bundle or the
// system roots, for the host name of the address. A whole login (dial, TLS,
// login, logout) is bounded by Timeout and by the caller's context.
package basic

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/emersion/go-imap"
	"github.com/emersion/go-imap/client"
	"github.com/emersion/go-imap/commands"

	"github.com/lanyardhq/lanyard/broker"
	"github.com/lanyardhq/lanyard/connectors"
	"github.com/lanyardhq/lanyard/internal/boundedconn"
	"github.com/lanyardhq/lanyard/internal/config"
	"github.com/lanyardhq/lanyard/internal/safehttp"
)

// Timeout bounds one login: dial, TLS handshake, LOGIN and LOGOUT.
const Timeout = 10 * time.Second

// TLS modes (config.BasicConnector.TLS).
const (
	TLSImplicit  = "implicit"
	TLSStartTLS  = "starttls"
	TLSPlaintext = "plaintext"
)

// Form and secret field names.
const (
	FieldUsername = "username"
	FieldPassword = "password"
	FieldAddress  = "address"
)

// Limits on what a user may type; longer values are refused as invalid.
const (
	maxUsername = 320
	maxPassword = 1024
)

// Connector is one configured basic connector.
type Connector struct {
	connectors.Named
	cfg   config.BasicConnector
	roots *x509.CertPool // nil: the system roots
}

var (
	_ connectors.Connector    = (*Connector)(nil)
	_ connectors.FormLinker   = (*Connector)(nil)
	_ connectors.Verifier     = (*Connector)(nil)
	_ connectors.Materializer = (*Connector)(nil)
)

// New returns the connector named name. cfg is normally validated by
// internal/config already; New applies the same defaults (protocol imap,
// tls implicit) and reads the CA bundle.
func New(name, displayName string, cfg config.BasicConnector) (*Connector, error) {
	named, err := connectors.NewNamed(connectors.KindBasic, name, displayName)
	if err != nil {
		return nil, err
	}
	if cfg.Protocol == "" {
		cfg.Protocol = "imap"
	}
	if cfg.Protocol != "imap" {
		return nil, fmt.Errorf("basic connector %s: protocol %q is not supported (imap): %w", name, cfg.Protocol, broker.ErrInvalid)
	}
	if cfg.TLS == "" {
		cfg.TLS = TLSImplicit
	}
	switch cfg.TLS {
	case TLSImplicit, TLSStartTLS, TLSPlaintext:
	default:
		return nil, fmt.Errorf("basic connector %s: tls %q is not one of implicit, starttls, plaintext: %w", name, cfg.TLS, broker.ErrInvalid)
	}
	if cfg.Address != "" {
		if _, _, err := splitAddress(cfg.Address); err != nil {
			return nil, fmt.Errorf("basic connector %s: address: %v: %w", name, err, broker.ErrInvalid)
		}
	} else if !cfg.AllowUserAddress {
		return nil, fmt.Errorf("basic connector %s: address is required unless allow_user_address is set: %w", name, broker.ErrInvalid)
	}
	c := &Connector{Named: named, cfg: cfg}
	if cfg.CACert != "" {
		pem, err := os.ReadFile(cfg.CACert)
		if err != nil {
			return nil, fmt.Errorf("basic connector %s: read ca_cert: %w", name, err)
		}
		c.roots = x509.NewCertPool()
		if !c.roots.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("basic connector %s: ca_cert %s holds no PEM certificate: %w", name, cfg.CACert, broker.ErrInvalid)
		}
	}
	return c, nil
}

// userAddress reports whether the user gives the server's address.
func (c *Connector) userAddress() bool { return c.cfg.Address == "" && c.cfg.AllowUserAddress }

// Fields implements connectors.FormLinker.
func (c *Connector) Fields() []connectors.Field {
	f := []connectors.Field{
		{Name: FieldUsername, Label: "User name", Required: true, Help: "Often your full email address."},
		{Name: FieldPassword, Label: "Password", Secret: true, Required: true, Help: "If your provider uses two-step verification, an app password."},
	}
	if c.userAddress() {
		f = append(f, connectors.Field{Name: FieldAddress, Label: "IMAP server", Required: true,
			Help: "host:port, for example imap.example.com:993"})
	}
	return f
}

// account is what a login needs.
type account struct {
	username, password string
	address            string // host:port
	guarded            bool   // user-supplied: SSRF rules apply
}

// account builds and validates an account from field values (form input or
// a stored secret).
func (c *Connector) account(get func(string) string) (account, error) {
	a := account{username: get(FieldUsername), password: get(FieldPassword)}
	var probs []string
	switch {
	case a.username == "":
		probs = append(probs, "the user name is required")
	case len(a.username) > maxUsername || !connectors.Printable(a.username):
		probs = append(probs, "the user name is too long or has characters that are not allowed")
	}
	switch {
	case a.password == "":
		probs = append(probs, "the password is required")
	case len(a.password) > maxPassword || !utf8.ValidString(a.password) || strings.ContainsAny(a.password, "\x00\r\n"):
		probs = append(probs, "the password is too long or has characters that are not allowed")
	}
	if c.cfg.Address != "" {
		a.address = c.cfg.Address
	} else {
		a.address, a.guarded = strings.TrimSpace(get(FieldAddress)), true
		if a.address == "" {
			probs = append(probs, "the IMAP server address is required")
		} else if _, _, err := splitAddress(a.address); err != nil {
			probs = append(probs, "the IMAP server address: "+err.Error())
		}
	}
	if len(probs) > 0 {
		return account{}, fmt.Errorf("%s: %w", strings.Join(probs, "; "), broker.ErrInvalid)
	}
	return a, nil
}

func (a account) host() string {
	h, _, _ := splitAddress(a.address)
	return h
}

// Link implements connectors.FormLinker: it logs in and returns the account
// ("user on host") and the secret to keep (user name, password, address).
func (c *Connector) Link(ctx context.Context, in connectors.Input) (connectors.Linked, error) {
	a, err := c.account(in.Get)
	if err != nil {
		return connectors.Linked{}, err
	}
	if err := c.login(ctx, a); err != nil {
		return connectors.Linked{}, err
	}
	return connectors.Linked{
		Account: a.username + " on " + a.host(),
		Secret: broker.NewSecret(map[string]string{
			FieldUsername: a.username, FieldPassword: a.password, FieldAddress: a.address,
		}),
	}, nil
}

// fromSecret rebuilds the account from a stored secret. With a fixed
// address in the config the config wins (the operator may have moved the
// server); otherwise the stored, user-given address is guarded again.
func (c *Connector) fromSecret(secret broker.Secret) (account, error) {
	a, err := c.account(func(k string) string { v, _ := secret.Field(k); return v })
	if err != nil {
		return account{}, fmt.Errorf("stored secret: %w", err)
	}
	return a, nil
}

// Verify implements connectors.Verifier. A stored password the server now
// refuses is ErrNeedsRelink.
func (c *Connector) Verify(ctx context.Context, secret broker.Secret) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	a, err := c.fromSecret(secret)
	if err != nil {
		return err
	}
	err = c.login(ctx, a)
	if errors.Is(err, connectors.ErrRejected) {
		return fmt.Errorf("the server no longer accepts the stored user name or password: %w", connectors.ErrNeedsRelink)
	}
	return err
}

// Materialize implements connectors.Materializer: the user name, password,
// host, port and TLS mode an MCP server needs to log in itself.
func (c *Connector) Materialize(ctx context.Context, secret broker.Secret) (connectors.Credential, error) {
	if err := ctx.Err(); err != nil {
		return connectors.Credential{}, err
	}
	a, err := c.fromSecret(secret)
	if err != nil {
		return connectors.Credential{}, err
	}
	host, port, _ := splitAddress(a.address)
	return connectors.Credential{
		Type: connectors.KindBasic,
		Fields: map[string]any{
			"username": a.username,
			"password": a.password,
			"host":     host,
			"port":     int(port),
			"tls":      c.cfg.TLS,
		},
	}, nil
}

// Errors a login returns, besides connectors.ErrRejected/ErrUpstream and
// broker.ErrInvalid.
var errRefused = errors.New("the server refused this user name or password")

// login dials, sets up TLS as configured, and logs in and out. A refused
// login is ErrRejected; anything else that goes wrong on the way is
// ErrUpstream (and also matches the context's error when the context ended).
func (c *Connector) login(ctx context.Context, a account) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("imap login: %w", err)
	}
	deadline := time.Now().Add(Timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	ctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	host := a.host()
	fail := func(what string, err error) error {
		ctxErr := ctx.Err()
		if ctxErr == nil && errors.Is(err, os.ErrDeadlineExceeded) {
			// The connection's deadline is the login's deadline; it may
			// fire a moment before the context's timer does.
			ctxErr = context.DeadlineExceeded
		}
		if ctxErr != nil {
			if errors.Is(ctxErr, context.DeadlineExceeded) {
				return fmt.Errorf("imap server %s: %s: timed out: %w (%w)", host, what, connectors.ErrUpstream, ctxErr)
			}
			return fmt.Errorf("imap server %s: %s: %w (%w)", host, what, connectors.ErrUpstream, ctxErr)
		}
		return fmt.Errorf("imap server %s: %s: %v: %w", host, what, err, connectors.ErrUpstream)
	}

	raw, err := dial(ctx, a)
	if err != nil {
		if errors.Is(err, broker.ErrInvalid) {
			return err
		}
		return fail("connect", err)
	}
	defer raw.Close()
	// The context ending closes the connection, which unblocks whatever the
	// IMAP client is waiting for; the deadline bounds every read and write.
	stop := context.AfterFunc(ctx, func() { _ = raw.Close() })
	defer stop()
	var conn net.Conn = boundedconn.New(raw, deadline)

	tlsConf := &tls.Config{ServerName: host, RootCAs: c.roots, MinVersion: tls.VersionTLS12}
	if c.cfg.TLS == TLSImplicit {
		tc := tls.Client(conn, tlsConf)
		if err := tc.HandshakeContext(ctx); err != nil {
			return fail("TLS handshake", err)
		}
		conn = tc
	}
	cl, err := client.New(conn)
	if err != nil {
		return fail("greeting", err)
	}
	cl.ErrorLog = log.New(io.Discard, "", 0) // our errors say what failed; no stray stderr lines
	if c.cfg.TLS == TLSStartTLS {
		ok, err := cl.SupportStartTLS()
		if err != nil {
			return fail("capabilities", err)
		}
		if !ok {
			return fmt.Errorf("imap server %s does not offer STARTTLS; the password is not sent in clear: %w", host, connectors.ErrUpstream)
		}
		if err := cl.StartTLS(tlsConf); err != nil {
			return fail("STARTTLS", err)
		}
	}
	if disabled, err := cl.Support("LOGINDISABLED"); err != nil {
		return fail("capabilities", err)
	} else if disabled {
		return fmt.Errorf("imap server %s does not accept a password on this connection (it wants TLS): %w", host, connectors.ErrUpstream)
	}
	// LOGIN through Execute rather than Client.Login, to see the response
	// code: RFC 5530 UNAVAILABLE and friends are the server's trouble, not a
	// wrong password.
	status, err := cl.Execute(&commands.Login{Username: a.username, Password: a.password}, nil)
	if err != nil {
		return fail("login", err)
	}
	switch {
	case status.Type == imap.StatusRespOk:
	case status.Type == imap.StatusRespNo && !serverTrouble(status.Code):
		return fmt.Errorf("imap server %s: %w: %w", host, errRefused, connectors.ErrRejected)
	default:
		return fmt.Errorf("imap server %s: login failed (%s %s %s): %w", host, status.Type, status.Code, cleanInfo(status.Info), connectors.ErrUpstream)
	}
	_ = cl.Logout() // best effort: the login already succeeded
	return nil
}

// serverTrouble: RFC 5530 codes that say the server, not the password, is
// the problem.
func serverTrouble(code imap.StatusRespCode) bool {
	switch strings.ToUpper(string(code)) {
	case "UNAVAILABLE", "SERVERBUG", "INUSE", "LIMIT", "PRIVACYREQUIRED", "CONTACTADMIN":
		return true
	}
	return false
}

// cleanInfo shortens server text for an error message and drops control
// characters.
func cleanInfo(s string) string {
	s = strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return -1
		}
		return r
	}, s)
	if len(s) > 200 {
		s = s[:200] + "…"
	}
	return strconv.Quote(s)
}

// dial connects to the account's server. A user-supplied address is dialled
// through safehttp.DialChecked: resolved once, every address it resolves to
// must pass safehttp.CheckAddr (no loopback, private, link-local, ...), and
// the checked IPs are dialled, with the dialer's Control hook checking
// again.
func dial(ctx context.Context, a account) (net.Conn, error) {
	if !a.guarded {
		var d net.Dialer
		return d.DialContext(ctx, "tcp", a.address)
	}
	host, _, err := splitAddress(a.address)
	if err != nil {
		return nil, fmt.Errorf("%v: %w", err, broker.ErrInvalid)
	}
	conn, err := safehttp.DialChecked(ctx, "tcp", a.address, false)
	if errors.Is(err, safehttp.ErrBlockedAddress) {
		return nil, fmt.Errorf("the IMAP server address %s is not allowed (%w): %w", host, err, broker.ErrInvalid)
	}
	return conn, err
}

// splitAddress parses host:port with a port in 1..65535.
func splitAddress(addr string) (host string, port uint16, err error) {
	h, p, err := net.SplitHostPort(addr)
	if err != nil || h == "" {
		return "", 0, errors.New("must be host:port")
	}
	n, err := strconv.ParseUint(p, 10, 16)
	if err != nil || n == 0 {
		return "", 0, errors.New("the port must be a number from 1 to 65535")
	}
	if !connectors.Printable(h) || strings.ContainsAny(h, " /@") {
		return "", 0, errors.New("the host name has characters that are not allowed")
	}
	return h, uint16(n), nil
}
