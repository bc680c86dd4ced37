package vault

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"regexp"
	"strings"
	"time"

	"github.com/lanyardhq/lanyard/broker"
)

// Defaults applied by New to a zero Config field.
const (
	DefaultMount        = "secret"
	DefaultPrefix       = "lanyard"
	DefaultAppRoleMount = "approle"
	DefaultTimeout      = 5 * time.Second
)

// Config says where the Vault server is and how to authenticate to it. It is
// plain data; New validates it and reports every problem at once. Exactly one
// of Token and AppRole must be set.
//
// Only Config decides where the store connects and what it sends: VAULT_*
// environment variables and the proxy ones (HTTP_PROXY, HTTPS_PROXY,
// NO_PROXY) have no effect, so wiring code decides where configuration comes
// from. The Vault client library still parses the VAULT_* variables when New
// builds it, and fails on a malformed one; New reports which.
type Config struct {
	// Address is the Vault URL, for example "https://vault.internal:8200".
	// A plain http:// address is refused unless its host is a loopback
	// address (or "localhost") or AllowInsecureHTTP is set: the token and
	// every secret would cross the network in cleartext.
	Address string
	// AllowInsecureHTTP allows an http:// Address on a host that is not a
	// loopback address. It is meant for development only.
	AllowInsecureHTTP bool
	// Token is a Vault token used as is (it is not renewed).
	Token broker.SecretString
	// AppRole, when set, logs in with the AppRole auth method and keeps the
	// resulting token alive (renewing it, and logging in again when it can no
	// longer be renewed).
	AppRole *AppRoleConfig
	// Mount is the path of the KV version 2 secrets engine; default "secret".
	Mount string
	// Prefix is the path under the mount that holds Lanyard's secrets;
	// default "lanyard". Secrets live at <Mount>/data/<Prefix>/<owner>/<name>.
	Prefix string
	// Timeout bounds every call to Vault, retries included; default 5s. A
	// call that does not finish in time fails with broker.ErrUnavailable.
	Timeout time.Duration
	// CACert is the path of a PEM file with the CA certificate(s) that sign
	// Vault's TLS certificate. Empty means the system roots.
	CACert string
	// Observer, if not nil, is told about every call (component "vault").
	Observer broker.Observer
	// Logger receives the store's own messages (token renewal, re-login). It
	// never receives a token or a secret id. Nil means slog.Default().
	Logger *slog.Logger
}

// AppRoleConfig holds the credentials of Vault's AppRole auth method.
type AppRoleConfig struct {
	// MountPath is where the AppRole auth method is mounted; default "approle".
	MountPath string
	// RoleID identifies the role; it is not secret.
	RoleID string
	// SecretID is the role's secret id.
	SecretID broker.SecretString
}

// pathSegments matches a slash-separated Vault path with no empty, "." or
// ".." segment.
var pathSegment = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*$`)

func validPath(p string) bool {
	if p == "" {
		return false
	}
	for seg := range strings.SplitSeq(p, "/") {
		if !pathSegment.MatchString(seg) || seg == ".." {
			return false
		}
	}
	return true
}

// loopback reports whether host names this machine: "localhost" or a
// loopback IP address.
func loopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// withDefaults returns c with every zero field that has a default filled in.
func (c Config) withDefaults() Config {
	if c.Mount == "" {
		c.Mount = DefaultMount
	}
	if c.Prefix == "" {
		c.Prefix = DefaultPrefix
	}
	if c.Timeout == 0 {
		c.Timeout = DefaultTimeout
	}
	if c.AppRole != nil {
		ar := *c.AppRole
		if ar.MountPath == "" {
			ar.MountPath = DefaultAppRoleMount
		}
		c.AppRole = &ar
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

// Validate reports every problem with the configuration (after defaults are
// applied), each wrapping broker.ErrInvalid. It never echoes a credential.
func (c Config) Validate() error {
	c = c.withDefaults()
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("vault config: "+format+": %w", append(args, broker.ErrInvalid)...))
	}
	if c.Address == "" {
		bad("address is required")
	} else if u, err := url.Parse(c.Address); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		bad("address %q is not an http(s) URL", c.Address)
	} else if u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		bad("address %q must not carry user information, a query or a fragment", u.Redacted())
	} else if u.Scheme == "http" && !c.AllowInsecureHTTP && !loopback(u.Hostname()) {
		bad("address %q is plain http to a host that is not loopback, so the token would cross the network "+
			"in cleartext; use https (or allow insecure http explicitly, for development only)", c.Address)
	}
	switch {
	case c.Token == "" && c.AppRole == nil:
		bad("one of token and approle is required")
	case c.Token != "" && c.AppRole != nil:
		bad("token and approle are mutually exclusive")
	}
	if c.AppRole != nil {
		if c.AppRole.RoleID == "" {
			bad("approle role_id is required")
		}
		if c.AppRole.SecretID == "" {
			bad("approle secret_id is required")
		}
		if !validPath(c.AppRole.MountPath) {
			bad("approle mount path %q is not a valid Vault path", c.AppRole.MountPath)
		}
	}
	if !validPath(c.Mount) {
		bad("mount %q is not a valid Vault path", c.Mount)
	}
	if !validPath(c.Prefix) {
		bad("prefix %q is not a valid Vault path", c.Prefix)
	}
	if c.Timeout < 0 {
		bad("timeout %v is negative", c.Timeout)
	}
	return errors.Join(errs...)
}
