// Package config is Lanyard's configuration: a plain struct read from YAML
// with ${ENV} expansion, filled with defaults, and validated all at once so
// that an operator sees every problem in one run.
//
// Secrets never appear as literals in a config file that is checked in: they
// come from ${ENV} references or from *_file keys, and are held as
// broker.SecretString so that logging the config cannot leak them.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/lanyardhq/lanyard/broker"
	"github.com/lanyardhq/lanyard/broker/oauth"
)

// Config is the whole configuration. configs/lanyard.example.yaml documents
// every key.
type Config struct {
	// Issuer is the OAuth issuer identifier and the public base URL. It is
	// taken from here only, never from request headers.
	Issuer  string  `yaml:"issuer"`
	Listen  string  `yaml:"listen"`
	DataDir string  `yaml:"data_dir"`
	Log     Log     `yaml:"log"`
	HTTP    HTTP    `yaml:"http"`
	Runtime Runtime `yaml:"runtime"`
	Store   Store   `yaml:"store"`
	Secrets Secrets `yaml:"secrets"`
	OAuth   OAuth   `yaml:"oauth"`
	// Resources are the MCP servers Lanyard issues tokens for.
	Resources []Resource `yaml:"resources"`
	// Clients are pre-registered OAuth clients (agents).
	Clients []Client `yaml:"clients"`
	// Connectors are the upstream services users link accounts of.
	Connectors []Connector `yaml:"connectors"`

	// Dev is set by `lanyard dev`: plain-http loopback issuer allowed.
	Dev bool `yaml:"-"`
}

// Log configures structured logging.
type Log struct {
	Level  string `yaml:"level"`  // debug, info, warn, error
	Format string `yaml:"format"` // json or text
}

// HTTP bounds the HTTP server.
type HTTP struct {
	ReadHeaderTimeout time.Duration `yaml:"read_header_timeout"`
	ReadTimeout       time.Duration `yaml:"read_timeout"`
	WriteTimeout      time.Duration `yaml:"write_timeout"`
	IdleTimeout       time.Duration `yaml:"idle_timeout"`
	MaxHeaderBytes    int           `yaml:"max_header_bytes"`
	ShutdownTimeout   time.Duration `yaml:"shutdown_timeout"`
}

// Runtime tunes the Go runtime (internal/gctune).
type Runtime struct {
	// GCHeadroomMB lets the heap grow by this many MiB above the live heap
	// between garbage collections (or by what GOGC=100 allows, if more);
	// 0 is Go's default.
	// The GOGC environment variable, if set, wins.
	GCHeadroomMB int `yaml:"gc_headroom_mb"`
}

// Store selects the metadata store.
type Store struct {
	Backend string `yaml:"backend"` // bolt or etcd
	Bolt    Bolt   `yaml:"bolt"`
	Etcd    Etcd   `yaml:"etcd"`
}

// Etcd configures the etcd metadata store, which any number of replicas
// share (with secrets.backend vault).
type Etcd struct {
	// Endpoints are the members' client URLs, all http:// or all https://.
	Endpoints []string `yaml:"endpoints"`
	// Prefix is prepended to every key: one deployment, one prefix.
	Prefix         string        `yaml:"prefix"`
	DialTimeout    time.Duration `yaml:"dial_timeout"`
	RequestTimeout time.Duration `yaml:"request_timeout"`
	// Username and Password authenticate to etcd (its auth enabled).
	Username     string              `yaml:"username"`
	Password     broker.SecretString `yaml:"password"`
	PasswordFile string              `yaml:"password_file"`
	// CACert verifies the members' certificates; Cert and Key are a
	// client certificate (both or neither). PEM files.
	CACert string `yaml:"ca_cert"`
	Cert   string `yaml:"cert"`
	Key    string `yaml:"key"`
}

// Bolt configures the embedded bbolt store.
type Bolt struct {
	Path string `yaml:"path"` // default DATA_DIR/lanyard.db
}

// Secrets selects the secret store.
type Secrets struct {
	Backend string `yaml:"backend"` // vault or sealed
	Vault   Vault  `yaml:"vault"`
	Sealed  Sealed `yaml:"sealed"`
	// CacheTTL is how long a replica reuses an upstream credential it read
	// from the secret store, and only while the connection record names
	// the same secret version (links.Options.CredentialCacheTTL). Changes
	// made through Lanyard are seen at once; this bounds only edits made in
	// the store behind Lanyard's back. 0 turns the cache off.
	CacheTTL time.Duration `yaml:"cache_ttl"`
}

// Sealed configures the embedded sealed secret store.
type Sealed struct {
	KeyFile string `yaml:"key_file"` // default DATA_DIR/sealed.key
}

// Vault configures the Vault KV v2 secret store.
type Vault struct {
	Address   string              `yaml:"address"`
	Token     broker.SecretString `yaml:"token"`
	TokenFile string              `yaml:"token_file"`
	AppRole   *AppRole            `yaml:"approle"`
	Mount     string              `yaml:"mount"`
	Prefix    string              `yaml:"prefix"`
	Timeout   time.Duration       `yaml:"timeout"`
	CACert    string              `yaml:"ca_cert"`
	// AllowInsecureHTTP permits a plain-http address on a non-loopback
	// host (the token then crosses the network in clear). Never in
	// production.
	AllowInsecureHTTP bool `yaml:"allow_insecure_http"`
}

// AppRole configures Vault AppRole login.
type AppRole struct {
	MountPath    string              `yaml:"mount_path"`
	RoleID       string              `yaml:"role_id"`
	SecretID     broker.SecretString `yaml:"secret_id"`
	SecretIDFile string              `yaml:"secret_id_file"`
}

// OAuth configures the authorization server.
type OAuth struct {
	AccessTokenTTL  time.Duration `yaml:"access_token_ttl"`
	RefreshTokenTTL time.Duration `yaml:"refresh_token_ttl"`
	SessionTTL      time.Duration `yaml:"session_ttl"`
	DeviceCodeTTL   time.Duration `yaml:"device_code_ttl"`
	DeviceInterval  time.Duration `yaml:"device_interval"`
	SigningAlg      string        `yaml:"signing_alg"`
	// DefaultResource is used when an authorization request names none.
	DefaultResource string `yaml:"default_resource"`
	// Registration is RFC 7591 dynamic client registration.
	Registration Registration `yaml:"registration"`
	// ClientMetadataDocuments enables URL client IDs (CIMD).
	ClientMetadataDocuments bool `yaml:"client_metadata_documents"`
}

// Registration configures dynamic client registration.
type Registration struct {
	Enabled       bool `yaml:"enabled"`
	RatePerMinute int  `yaml:"rate_per_minute"`
}

// Resource is a registered MCP server.
type Resource struct {
	ID               string              `yaml:"id"`
	URI              string              `yaml:"uri"`
	Name             string              `yaml:"name"`
	Scopes           []string            `yaml:"scopes"`
	DefaultScopes    []string            `yaml:"default_scopes"`
	ClientSecret     broker.SecretString `yaml:"client_secret"`
	ClientSecretFile string              `yaml:"client_secret_file"`
	// AuthMethod is how the MCP server authenticates to Lanyard:
	// client_secret_basic (default) or private_key_jwt (JWKSURL or JWKS).
	AuthMethod string `yaml:"auth_method"`
	JWKSURL    string `yaml:"jwks_url"`
	JWKS       string `yaml:"jwks"`
	// Connectors this MCP server may redeem credentials of.
	Connectors []string `yaml:"connectors"`
	Policy     Policy   `yaml:"policy"`
}

// Policy is an MCP server's tool policy.
type Policy struct {
	Default string     `yaml:"default"` // deny (default) or allow
	Tools   []ToolRule `yaml:"tools"`
}

// ToolRule is the policy of one tool.
type ToolRule struct {
	Name       string   `yaml:"name"`
	Scopes     []string `yaml:"scopes"`
	Connectors []string `yaml:"connectors"`
}

// Client is a pre-registered OAuth client.
type Client struct {
	ClientID         string              `yaml:"client_id"`
	Name             string              `yaml:"name"`
	RedirectURIs     []string            `yaml:"redirect_uris"`
	GrantTypes       []string            `yaml:"grant_types"`
	ClientSecret     broker.SecretString `yaml:"client_secret"`
	ClientSecretFile string              `yaml:"client_secret_file"`
	PreApproved      PreApproved         `yaml:"pre_approved"`
}

// PreApproved lists who may use a client without a consent screen.
type PreApproved struct {
	Users  []string `yaml:"users"`
	Groups []string `yaml:"groups"`
}

// Connector configures one upstream service users can link. Exactly the
// settings block of its kind is used.
type Connector struct {
	Name        string          `yaml:"name"`
	Kind        string          `yaml:"kind"` // oauth2, apikey, basic, socket
	DisplayName string          `yaml:"display_name"`
	OAuth2      OAuth2Connector `yaml:"oauth2"`
	APIKey      APIKeyConnector `yaml:"apikey"`
	Basic       BasicConnector  `yaml:"basic"`
	Socket      SocketConnector `yaml:"socket"`
}

// OAuth2Connector links accounts at an OAuth 2.0 / OIDC provider.
type OAuth2Connector struct {
	// Preset fills the endpoints: github, google, microsoft, slack,
	// salesforce, workday, or oidc (discovery from Issuer). Empty: give
	// auth_url and token_url.
	Preset           string              `yaml:"preset"`
	Issuer           string              `yaml:"issuer"`
	Tenant           string              `yaml:"tenant"` // microsoft: tenant id or "organizations"
	Domain           string              `yaml:"domain"` // salesforce/workday: the instance host
	AuthURL          string              `yaml:"auth_url"`
	TokenURL         string              `yaml:"token_url"`
	RevocationURL    string              `yaml:"revocation_url"`
	UserInfoURL      string              `yaml:"userinfo_url"`
	ClientID         string              `yaml:"client_id"`
	ClientSecret     broker.SecretString `yaml:"client_secret"`
	ClientSecretFile string              `yaml:"client_secret_file"`
	Scopes           []string            `yaml:"scopes"`
	// TokenExchange: exchange onward at the provider (RFC 8693) instead of
	// handing out the stored token, where the provider supports it.
	TokenExchange bool `yaml:"token_exchange"`
	// ExchangeAudience is sent as the audience of an onward exchange: the
	// upstream API the exchanged token is for, in the provider's terms.
	// Empty: no audience is sent and the provider picks its default.
	ExchangeAudience string `yaml:"exchange_audience"`
}

// APIKeyConnector links an API key.
type APIKeyConnector struct {
	Header     string `yaml:"header"`      // e.g. Authorization
	Prefix     string `yaml:"prefix"`      // e.g. "Bearer "
	QueryParam string `yaml:"query_param"` // instead of a header
	// VerifyURL, if set, is fetched with the key before it is saved; a
	// 2xx answer means the key works.
	VerifyURL string `yaml:"verify_url"`
}

// BasicConnector links a user name and password for a non-OAuth protocol.
type BasicConnector struct {
	Protocol string `yaml:"protocol"` // imap
	// Address is host:port of the server. Empty with allow_user_address:
	// the user gives it (then SSRF-guarded).
	Address          string `yaml:"address"`
	AllowUserAddress bool   `yaml:"allow_user_address"`
	// TLS: implicit (default), starttls, or plaintext (only if set here).
	TLS    string `yaml:"tls"`
	CACert string `yaml:"ca_cert"` // PEM bundle for the server's certificate
}

// SocketConnector links a Unix-domain socket or TCP endpoint and its secret.
type SocketConnector struct {
	Network     string   `yaml:"network"`      // unix or tcp
	AllowedDirs []string `yaml:"allowed_dirs"` // unix: socket paths must resolve under one of these
	Probe       string   `yaml:"probe"`        // none or redis (AUTH then PING)
}

// MinSecretLen is the shortest client secret accepted for resources and
// confidential clients; secrets are stored as SHA-256 hashes, which is only
// safe for high-entropy values.
const MinSecretLen = 32

// Default returns the configuration every key starts from.
func Default() Config {
	return Config{
		Listen:  "127.0.0.1:8080",
		DataDir: ".lanyard",
		Log:     Log{Level: "info", Format: "json"},
		HTTP: HTTP{
			ReadHeaderTimeout: 5 * time.Second,
			ReadTimeout:       15 * time.Second,
			WriteTimeout:      30 * time.Second,
			IdleTimeout:       120 * time.Second,
			MaxHeaderBytes:    32 << 10,
			ShutdownTimeout:   15 * time.Second,
		},
		Runtime: Runtime{GCHeadroomMB: 32},
		Store:   Store{Backend: "bolt", Etcd: Etcd{Prefix: "/lanyard/", DialTimeout: 5 * time.Second, RequestTimeout: 5 * time.Second}},
		Secrets: Secrets{Backend: "sealed", Vault: Vault{Mount: "secret", Prefix: "lanyard", Timeout: 5 * time.Second},
			CacheTTL: time.Minute},
		OAuth: OAuth{
			AccessTokenTTL: 10 * time.Minute, RefreshTokenTTL: 30 * 24 * time.Hour, SessionTTL: 12 * time.Hour,
			DeviceCodeTTL: 10 * time.Minute, DeviceInterval: 5 * time.Second, SigningAlg: "ES256",
			Registration:            Registration{Enabled: true, RatePerMinute: 10},
			ClientMetadataDocuments: true,
		},
	}
}

// Problems is a validation failure listing every problem found.
type Problems []string

func (p Problems) Error() string {
	return "invalid configuration:\n  - " + strings.Join(p, "\n  - ")
}

// Load reads the YAML file at path over Default, expands ${ENV} references
// with getenv, reads *_file secrets, fills derived defaults and validates.
// A validation failure is a Problems error.
func Load(path string, getenv func(string) string) (Config, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("read config: %w", err)
	}
	return Parse(raw, getenv)
}

// LoadDev is Load for `lanyard dev --config`: plain-http loopback URIs are
// allowed and the issuer may be left out.
func LoadDev(path string, getenv func(string) string) (Config, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("read config: %w", err)
	}
	return parse(raw, getenv, true)
}

// Parse is Load on the bytes of a file.
func Parse(raw []byte, getenv func(string) string) (Config, error) {
	return parse(raw, getenv, false)
}

func parse(raw []byte, getenv func(string) string, dev bool) (Config, error) {
	var root yaml.Node
	if err := yaml.Unmarshal(raw, &root); err != nil {
		return Config{}, Problems{fmt.Sprintf("yaml: %v", err)}
	}
	var probs Problems
	expandNode(&root, getenv, &probs)
	cfg := Default()
	cfg.Dev = dev
	if len(root.Content) > 0 {
		// Re-encode the expanded tree and decode strictly, so that an unknown
		// key is an error rather than silently ignored.
		var buf bytes.Buffer
		enc := yaml.NewEncoder(&buf)
		if err := enc.Encode(&root); err != nil {
			return Config{}, Problems{fmt.Sprintf("yaml: %v", err)}
		}
		dec := yaml.NewDecoder(&buf)
		dec.KnownFields(true)
		if err := dec.Decode(&cfg); err != nil && !errors.Is(err, io.EOF) {
			probs = append(probs, yamlProblems(err)...)
		}
	}
	probs = append(probs, cfg.finish()...)
	if len(probs) > 0 {
		return cfg, probs
	}
	return cfg, nil
}

// yamlProblems reports decoding errors without the offending values: yaml
// quotes them in backticks, and after ${ENV} expansion a value may be a
// secret.
func yamlProblems(err error) []string {
	var te *yaml.TypeError
	if !errors.As(err, &te) {
		return []string{fmt.Sprintf("yaml: %s", quotedValue.ReplaceAllString(err.Error(), "(value hidden)"))}
	}
	out := make([]string, len(te.Errors))
	for i, e := range te.Errors {
		out[i] = quotedValue.ReplaceAllString(e, "(value hidden)")
	}
	return out
}

var quotedValue = regexp.MustCompile("`[^`]*`")

var envRef = regexp.MustCompile(`\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$\$`)

// expandNode replaces ${NAME} in scalar values only (never in keys or
// structure), so an environment value cannot inject YAML. "$$" is a literal
// "$". An unset variable is a problem, not an empty string.
func expandNode(n *yaml.Node, getenv func(string) string, probs *Problems) {
	if n.Kind == yaml.ScalarNode {
		orig := n.Value
		n.Value = envRef.ReplaceAllStringFunc(n.Value, func(m string) string {
			if m == "$$" {
				return "$"
			}
			name := m[2 : len(m)-1]
			v := getenv(name)
			if v == "" {
				*probs = append(*probs, fmt.Sprintf("line %d: environment variable %s is not set", n.Line, name))
			}
			return v
		})
		if n.Value != orig && n.Style&(yaml.DoubleQuotedStyle|yaml.SingleQuotedStyle) == 0 {
			// An unquoted reference takes the type the target field wants
			// (port: ${PORT} decodes as an int).
			n.Tag = ""
		}
		return
	}
	for i, c := range n.Content {
		if n.Kind == yaml.MappingNode && i%2 == 0 {
			continue // keys
		}
		expandNode(c, getenv, probs)
	}
}

// finish fills defaults that depend on other keys, reads secret files, and
// returns every problem.
func (c *Config) finish() Problems {
	var p Problems
	add := func(format string, args ...any) { p = append(p, fmt.Sprintf(format, args...)) }

	if c.DataDir == "" {
		add("data_dir: must not be empty")
	}
	if c.Store.Bolt.Path == "" {
		c.Store.Bolt.Path = filepath.Join(c.DataDir, "lanyard.db")
	}
	if c.Secrets.Sealed.KeyFile == "" {
		c.Secrets.Sealed.KeyFile = filepath.Join(c.DataDir, "sealed.key")
	}
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		add("listen: %q is not host:port", c.Listen)
	}
	if c.Issuer != "" || !c.Dev {
		if err := checkIssuer(c.Issuer, c.Dev); err != nil {
			add("issuer: %v", err)
		}
	}
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		add("log.level: %q is not one of debug, info, warn, error", c.Log.Level)
	}
	switch c.Log.Format {
	case "json", "text":
	default:
		add("log.format: %q is not one of json, text", c.Log.Format)
	}
	for name, d := range map[string]time.Duration{
		"http.read_header_timeout": c.HTTP.ReadHeaderTimeout, "http.read_timeout": c.HTTP.ReadTimeout,
		"http.write_timeout": c.HTTP.WriteTimeout, "http.idle_timeout": c.HTTP.IdleTimeout,
		"http.shutdown_timeout": c.HTTP.ShutdownTimeout,
	} {
		if d <= 0 {
			add("%s: must be a positive duration such as 10s", name)
		}
	}
	if c.HTTP.MaxHeaderBytes < 4<<10 || c.HTTP.MaxHeaderBytes > 1<<20 {
		add("http.max_header_bytes: %d is outside 4096..1048576", c.HTTP.MaxHeaderBytes)
	}
	if c.Runtime.GCHeadroomMB < 0 || c.Runtime.GCHeadroomMB > 1<<16 {
		add("runtime.gc_headroom_mb: %d is outside 0..65536", c.Runtime.GCHeadroomMB)
	}
	switch c.Store.Backend {
	case "bolt":
	case "etcd":
		p = append(p, c.Store.Etcd.finish()...)
		if c.Secrets.Backend != "vault" {
			add("store.backend: etcd needs secrets.backend: vault (the sealed secret store keeps its data in the local bolt file, which replicas cannot share)")
		}
	default:
		add("store.backend: %q is not one of bolt, etcd", c.Store.Backend)
	}
	p = append(p, c.finishOAuth()...)
	if c.Secrets.CacheTTL < 0 || c.Secrets.CacheTTL > time.Hour {
		add("secrets.cache_ttl: %v is outside 0s..1h", c.Secrets.CacheTTL)
	}
	switch c.Secrets.Backend {
	case "sealed":
	case "vault":
		p = append(p, c.Secrets.Vault.finish()...)
	default:
		add("secrets.backend: %q is not one of vault, sealed", c.Secrets.Backend)
	}
	return p
}

func (e *Etcd) finish() Problems {
	var p Problems
	add := func(format string, args ...any) { p = append(p, fmt.Sprintf(format, args...)) }
	readSecretFile(&e.Password, &e.PasswordFile, "store.etcd.password_file", &p)
	if len(e.Endpoints) == 0 {
		add("store.etcd.endpoints: list the etcd members' client URLs")
	}
	schemes := map[string]bool{}
	remoteHTTP := false
	for i, ep := range e.Endpoints {
		u, err := url.Parse(ep)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.Port() == "" {
			add("store.etcd.endpoints[%d]: %q is not an http(s)://host:port URL", i, ep)
			continue
		}
		schemes[u.Scheme] = true
		remoteHTTP = remoteHTTP || (u.Scheme == "http" && !isLoopback(u.Hostname()))
	}
	if len(schemes) > 1 {
		add("store.etcd.endpoints: mix http and https; use one (https for TLS)")
	}
	tlsFiles := e.CACert != "" || e.Cert != "" || e.Key != ""
	if tlsFiles && schemes["http"] {
		add("store.etcd: ca_cert, cert and key need https endpoints")
	}
	if (e.Cert == "") != (e.Key == "") {
		add("store.etcd: set both cert and key (a client certificate), or neither")
	}
	if (e.Username == "") != (e.Password == "") {
		add("store.etcd: set both username and password (or password_file), or neither")
	}
	if e.Password != "" && remoteHTTP {
		add("store.etcd: the password would cross the network in clear to a plain-http endpoint on another host; use https endpoints")
	}
	if e.Prefix == "" || !strings.HasPrefix(e.Prefix, "/") || strings.ContainsFunc(e.Prefix, func(r rune) bool { return r < 0x20 }) {
		add("store.etcd.prefix: %q must start with / and hold no control characters", e.Prefix)
	}
	if e.DialTimeout <= 0 {
		add("store.etcd.dial_timeout: must be a positive duration")
	}
	if e.RequestTimeout <= 0 {
		add("store.etcd.request_timeout: must be a positive duration")
	}
	return p
}

func (v *Vault) finish() Problems {
	var p Problems
	add := func(format string, args ...any) { p = append(p, fmt.Sprintf(format, args...)) }
	if u, err := url.Parse(v.Address); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		add("secrets.vault.address: %q is not an http(s) URL", v.Address)
	} else if u.Scheme == "http" && !isLoopback(u.Hostname()) && !v.AllowInsecureHTTP {
		add("secrets.vault.address: %q is plain http to another host; use https (or set allow_insecure_http)", v.Address)
	}
	readSecretFile(&v.Token, &v.TokenFile, "secrets.vault.token_file", &p)
	if v.AppRole != nil {
		a := v.AppRole
		readSecretFile(&a.SecretID, &a.SecretIDFile, "secrets.vault.approle.secret_id_file", &p)
		if a.MountPath == "" {
			a.MountPath = "approle"
		}
		if a.RoleID == "" {
			add("secrets.vault.approle.role_id: required")
		}
		if a.SecretID == "" {
			add("secrets.vault.approle: secret_id or secret_id_file is required")
		}
		if v.Token != "" {
			add("secrets.vault: set token or approle, not both")
		}
	} else if v.Token == "" {
		add("secrets.vault: token, token_file or approle is required")
	}
	if v.Mount == "" {
		add("secrets.vault.mount: must not be empty")
	}
	if v.Timeout <= 0 {
		add("secrets.vault.timeout: must be a positive duration")
	}
	return p
}

// readSecretFile reads *path into dst and clears *path, so that finishing a
// config twice does not read it again.
func readSecretFile(dst *broker.SecretString, pathp *string, key string, p *Problems) {
	path := *pathp
	if path == "" {
		return
	}
	*pathp = ""
	if *dst != "" {
		*p = append(*p, fmt.Sprintf("%s: set either the value or the file, not both", key))
		return
	}
	b, err := os.ReadFile(path)
	if err != nil {
		*p = append(*p, fmt.Sprintf("%s: %v", key, err))
		return
	}
	*dst = broker.SecretString(strings.TrimSpace(string(b)))
}

// checkIssuer requires an absolute https URL without query or fragment; plain
// http is allowed for loopback hosts in dev mode only.
func checkIssuer(s string, dev bool) error {
	if s == "" {
		return errors.New("required (the public https URL of this Lanyard)")
	}
	u, err := url.Parse(s)
	if err != nil || u.Host == "" {
		return fmt.Errorf("%q is not an absolute URL", s)
	}
	if u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return fmt.Errorf("%q must not have a query, fragment or user info", s)
	}
	switch {
	case u.Scheme == "https":
	case u.Scheme == "http" && dev && isLoopback(u.Hostname()):
	default:
		return fmt.Errorf("%q must use https (http only for a loopback host in dev mode)", s)
	}
	return nil
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// Finish fills derived defaults of a Config built in code (for example from
// command-line flags) and validates it like Parse does.
func Finish(cfg Config) (Config, error) {
	if p := cfg.finish(); len(p) > 0 {
		return cfg, p
	}
	return cfg, nil
}

func (c *Config) finishOAuth() Problems {
	var p Problems
	add := func(format string, args ...any) { p = append(p, fmt.Sprintf(format, args...)) }
	o := &c.OAuth
	for name, d := range map[string]time.Duration{
		"oauth.access_token_ttl": o.AccessTokenTTL, "oauth.refresh_token_ttl": o.RefreshTokenTTL,
		"oauth.session_ttl": o.SessionTTL, "oauth.device_code_ttl": o.DeviceCodeTTL, "oauth.device_interval": o.DeviceInterval,
	} {
		if d <= 0 {
			add("%s: must be a positive duration", name)
		}
	}
	if o.AccessTokenTTL > 24*time.Hour {
		add("oauth.access_token_ttl: at most 24h (use refresh tokens)")
	}
	switch o.SigningAlg {
	case "ES256", "RS256", "EdDSA":
	default:
		add("oauth.signing_alg: %q is not one of ES256, RS256, EdDSA", o.SigningAlg)
	}
	if o.Registration.RatePerMinute <= 0 {
		o.Registration.RatePerMinute = 10
	}
	ids, uris := map[string]bool{}, map[string]bool{}
	for i := range c.Resources {
		r := &c.Resources[i]
		key := fmt.Sprintf("resources[%d]", i)
		readSecretFile(&r.ClientSecret, &r.ClientSecretFile, key+".client_secret_file", &p)
		if !idRE.MatchString(r.ID) {
			add("%s.id: %q must be 1-64 of A-Z a-z 0-9 . _ -", key, r.ID)
		} else if ids[r.ID] {
			add("%s.id: %q is used twice", key, r.ID)
		}
		ids[r.ID] = true
		canon, err := oauth.CanonicalResource(r.URI, c.Dev)
		if err != nil {
			add("%s.uri: %q must be an absolute https URI without fragment", key, r.URI)
		} else if uris[canon] {
			add("%s.uri: %q is used twice", key, r.URI)
		}
		r.URI, uris[canon] = canon, true
		if len(r.Scopes) == 0 {
			add("%s.scopes: list the scopes this MCP server understands", key)
		}
		for _, s := range r.DefaultScopes {
			if !slices.Contains(r.Scopes, s) {
				add("%s.default_scopes: %q is not in scopes", key, s)
			}
		}
		if r.DefaultScopes == nil {
			r.DefaultScopes = r.Scopes
		}
		switch r.AuthMethod {
		case "", "client_secret_basic":
			r.AuthMethod = "client_secret_basic"
			if len(r.ClientSecret) < MinSecretLen {
				add("%s.client_secret: at least %d characters (from ${ENV} or client_secret_file)", key, MinSecretLen)
			}
		case "private_key_jwt":
			if (r.JWKSURL == "") == (r.JWKS == "") {
				add("%s: private_key_jwt needs exactly one of jwks_url and jwks", key)
			}
		default:
			add("%s.auth_method: %q is not one of client_secret_basic, private_key_jwt", key, r.AuthMethod)
		}
		switch r.Policy.Default {
		case "":
			r.Policy.Default = "deny"
		case "deny", "allow":
		default:
			add("%s.policy.default: %q is not one of deny, allow", key, r.Policy.Default)
		}
		tools := map[string]bool{}
		for j, tr := range r.Policy.Tools {
			if tr.Name == "" || tools[tr.Name] {
				add("%s.policy.tools[%d].name: required and unique", key, j)
			}
			tools[tr.Name] = true
			for _, c := range tr.Connectors {
				if !slices.Contains(r.Connectors, c) {
					add("%s.policy.tools[%d].connectors: %q is not in the resource's connectors", key, j, c)
				}
			}
		}
	}
	if o.DefaultResource != "" {
		canon, err := oauth.CanonicalResource(o.DefaultResource, c.Dev)
		if err != nil || !uris[canon] {
			add("oauth.default_resource: %q is not one of the resources' uri", o.DefaultResource)
		}
		o.DefaultResource = canon
	}
	p = append(p, c.finishConnectors()...)
	known := map[string]bool{}
	for _, cn := range c.Connectors {
		known[cn.Name] = true
	}
	for i, r := range c.Resources {
		for _, cn := range r.Connectors {
			if !known[cn] {
				add("resources[%d].connectors: %q is not a configured connector", i, cn)
			}
		}
	}
	seen := map[string]bool{}
	for i := range c.Clients {
		cl := &c.Clients[i]
		key := fmt.Sprintf("clients[%d]", i)
		readSecretFile(&cl.ClientSecret, &cl.ClientSecretFile, key+".client_secret_file", &p)
		if !idRE.MatchString(cl.ClientID) {
			add("%s.client_id: %q must be 1-64 of A-Z a-z 0-9 . _ -", key, cl.ClientID)
		} else if seen[cl.ClientID] {
			add("%s.client_id: %q is used twice", key, cl.ClientID)
		}
		seen[cl.ClientID] = true
		if len(cl.RedirectURIs) == 0 && !slices.Contains(cl.GrantTypes, "urn:ietf:params:oauth:grant-type:device_code") {
			add("%s.redirect_uris: at least one (or grant the device_code grant type)", key)
		}
		for _, u := range cl.RedirectURIs {
			if err := checkRedirect(u); err != nil {
				add("%s.redirect_uris: %q %v", key, u, err)
			}
		}
		if cl.GrantTypes == nil {
			cl.GrantTypes = []string{"authorization_code", "refresh_token"}
		}
		for _, g := range cl.GrantTypes {
			switch g {
			case "authorization_code", "refresh_token", "urn:ietf:params:oauth:grant-type:device_code":
			default:
				add("%s.grant_types: %q is not supported", key, g)
			}
		}
		if cl.ClientSecret != "" && len(cl.ClientSecret) < MinSecretLen {
			add("%s.client_secret: at least %d characters", key, MinSecretLen)
		}
	}
	return p
}

var idRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

// checkRedirect accepts https URLs, http loopback URLs, and private-use
// (reverse-DNS) schemes for native apps; never a fragment.
func checkRedirect(s string) error {
	u, err := url.Parse(s)
	switch {
	case err != nil || !u.IsAbs():
		return errors.New("is not an absolute URI")
	case u.Fragment != "" || strings.Contains(s, "#"):
		return errors.New("must not have a fragment")
	case u.Scheme == "https" && u.Host != "":
	case u.Scheme == "http" && oauth.IsLoopbackHost(u.Hostname()):
	case strings.Contains(u.Scheme, "."):
	default:
		return errors.New("must be https, http on a loopback host, or a reverse-DNS private-use scheme")
	}
	return nil
}

func (c *Config) finishConnectors() Problems {
	var p Problems
	add := func(format string, args ...any) { p = append(p, fmt.Sprintf(format, args...)) }
	names := map[string]bool{}
	for i := range c.Connectors {
		cn := &c.Connectors[i]
		key := fmt.Sprintf("connectors[%d]", i)
		if !idRE.MatchString(cn.Name) {
			add("%s.name: %q must be 1-64 of A-Z a-z 0-9 . _ -", key, cn.Name)
		} else if names[cn.Name] {
			add("%s.name: %q is used twice", key, cn.Name)
		}
		names[cn.Name] = true
		if cn.DisplayName == "" {
			cn.DisplayName = cn.Name
		}
		switch cn.Kind {
		case "oauth2":
			o := &cn.OAuth2
			readSecretFile(&o.ClientSecret, &o.ClientSecretFile, key+".oauth2.client_secret_file", &p)
			if o.ClientID == "" {
				add("%s.oauth2.client_id: required", key)
			}
			switch o.Preset {
			case "github", "google", "microsoft", "slack", "salesforce", "workday":
			case "oidc":
				if o.Issuer == "" {
					add("%s.oauth2.issuer: required with preset oidc", key)
				}
			case "":
				if o.AuthURL == "" || o.TokenURL == "" {
					add("%s.oauth2: auth_url and token_url are required without a preset", key)
				}
			default:
				add("%s.oauth2.preset: %q is not one of github, google, microsoft, slack, salesforce, workday, oidc", key, o.Preset)
			}
		case "apikey":
			a := cn.APIKey
			if (a.Header == "") == (a.QueryParam == "") {
				add("%s.apikey: set exactly one of header and query_param", key)
			}
		case "basic":
			b := &cn.Basic
			if b.Protocol == "" {
				b.Protocol = "imap"
			}
			if b.Protocol != "imap" {
				add("%s.basic.protocol: %q is not supported (imap)", key, b.Protocol)
			}
			if b.TLS == "" {
				b.TLS = "implicit"
			}
			if b.TLS != "implicit" && b.TLS != "starttls" && b.TLS != "plaintext" {
				add("%s.basic.tls: %q is not one of implicit, starttls, plaintext", key, b.TLS)
			}
			if b.Address == "" && !b.AllowUserAddress {
				add("%s.basic: address is required unless allow_user_address is set", key)
			}
		case "socket":
			s := &cn.Socket
			if s.Network == "" {
				s.Network = "unix"
			}
			if s.Network != "unix" && s.Network != "tcp" {
				add("%s.socket.network: %q is not one of unix, tcp", key, s.Network)
			}
			if s.Network == "unix" && len(s.AllowedDirs) == 0 {
				add("%s.socket.allowed_dirs: list the directories socket paths may be under", key)
			}
			if s.Probe == "" {
				s.Probe = "none"
			}
			if s.Probe != "none" && s.Probe != "redis" {
				add("%s.socket.probe: %q is not one of none, redis", key, s.Probe)
			}
		default:
			add("%s.kind: %q is not one of oauth2, apikey, basic, socket", key, cn.Kind)
		}
	}
	return p
}
