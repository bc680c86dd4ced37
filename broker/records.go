package broker

import (
	"errors"
	"fmt"
	"slices"
	"time"
	"unicode/utf8"
)

// Index names used by the records below.
const (
	IndexUsername = "username" // User, unique
	IndexURI      = "uri"      // Resource, unique
	IndexUser     = "user"     // Connection, Grant, AuthCode, DeviceCode
	IndexClient   = "client"   // Grant
	IndexGrant    = "grant"    // RefreshToken, AuthCode
	IndexUserCode = "user_code"
)

// MaxIDLen bounds record IDs (client IDs may be URLs).
const MaxIDLen = 1024

func validateID(kind, id string) error {
	switch {
	case id == "":
		return fmt.Errorf("%s: empty id: %w", kind, ErrInvalid)
	case len(id) > MaxIDLen:
		return fmt.Errorf("%s: id longer than %d bytes: %w", kind, MaxIDLen, ErrInvalid)
	case !utf8.ValidString(id):
		return fmt.Errorf("%s: id is not UTF-8: %w", kind, ErrInvalid)
	}
	for _, r := range id {
		if r < 0x20 || r == 0x7f {
			return fmt.Errorf("%s: id has a control character: %w", kind, ErrInvalid)
		}
	}
	return nil
}

func required(kind string, fields ...string) error {
	var errs []error
	for i := 0; i+1 < len(fields); i += 2 {
		if fields[i+1] == "" {
			errs = append(errs, fmt.Errorf("%s: %s is required: %w", kind, fields[i], ErrInvalid))
		}
	}
	return errors.Join(errs...)
}

// User is a person who signs in to Lanyard. PasswordHash is a bcrypt or
// argon2id hash, never a password.
type User struct {
	ID           string    `json:"id"`
	Username     string    `json:"username"`
	PasswordHash string    `json:"password_hash,omitempty"`
	Admin        bool      `json:"admin,omitempty"`
	Groups       []string  `json:"groups,omitempty"`
	Disabled     bool      `json:"disabled,omitempty"`
	FailedLogins int       `json:"failed_logins,omitempty"`
	LockedUntil  time.Time `json:"locked_until,omitzero"`
	CreatedAt    time.Time `json:"created_at"`
	UpdatedAt    time.Time `json:"updated_at"`
}

func (u User) RecordID() string        { return u.ID }
func (u User) RecordExpiry() time.Time { return time.Time{} }
func (u User) RecordIndexes() []Index {
	return []Index{{Name: IndexUsername, Value: u.Username, Unique: true}}
}
func (u User) Validate() error {
	return errors.Join(validateID("user", u.ID), ValidateUsername(u.Username))
}

// ClientKind says how Lanyard learned of an OAuth client.
type ClientKind string

const (
	ClientStatic     ClientKind = "static"     // from the config file
	ClientRegistered ClientKind = "registered" // RFC 7591 dynamic registration
	ClientMetadata   ClientKind = "metadata"   // Client ID Metadata Document (cached)
)

// Client is an OAuth client (an MCP client / agent).
type Client struct {
	ID                      string     `json:"id"`
	Kind                    ClientKind `json:"kind"`
	Name                    string     `json:"name,omitempty"`
	RedirectURIs            []string   `json:"redirect_uris,omitempty"`
	GrantTypes              []string   `json:"grant_types,omitempty"`
	ApplicationType         string     `json:"application_type,omitempty"`
	TokenEndpointAuthMethod string     `json:"token_endpoint_auth_method,omitempty"`
	SecretHash              string     `json:"secret_hash,omitempty"`
	// PreApprovedUsers and PreApprovedGroups (user names and groups) skip
	// the consent screen: an enterprise allow-listing its own agents.
	PreApprovedUsers  []string  `json:"pre_approved_users,omitempty"`
	PreApprovedGroups []string  `json:"pre_approved_groups,omitempty"`
	CreatedAt         time.Time `json:"created_at"`
	ExpiresAt         time.Time `json:"expires_at,omitzero"`
}

func (c Client) RecordID() string        { return c.ID }
func (c Client) RecordExpiry() time.Time { return c.ExpiresAt }
func (c Client) RecordIndexes() []Index  { return nil }
func (c Client) Validate() error {
	return errors.Join(validateID("client", c.ID), required("client", "kind", string(c.Kind)))
}

// Resource is a registered MCP server: the audience of access tokens and the
// caller of redemption.
type Resource struct {
	ID                      string   `json:"id"`
	URI                     string   `json:"uri"`
	Name                    string   `json:"name,omitempty"`
	Scopes                  []string `json:"scopes,omitempty"`
	DefaultScopes           []string `json:"default_scopes,omitempty"`
	TokenEndpointAuthMethod string   `json:"token_endpoint_auth_method,omitempty"`
	SecretHash              string   `json:"secret_hash,omitempty"`
	JWKSURL                 string   `json:"jwks_url,omitempty"`
	// Connectors are the connectors this MCP server may redeem.
	Connectors []string `json:"connectors,omitempty"`
	// Policy decides which tools may use which credentials.
	Policy ToolPolicy `json:"policy"`
	// JWKS is an inline JSON Web Key Set for private_key_jwt (JWKSURL is
	// the alternative).
	JWKS string `json:"jwks,omitempty"`
	// FromConfig: defined in the config file, removed when it leaves it.
	FromConfig bool      `json:"from_config,omitempty"`
	CreatedAt  time.Time `json:"created_at"`
}

// Clone returns a copy of r that shares no slice with it.
func (r Resource) Clone() Resource {
	r.Scopes = slices.Clone(r.Scopes)
	r.DefaultScopes = slices.Clone(r.DefaultScopes)
	r.Connectors = slices.Clone(r.Connectors)
	r.Policy.Tools = slices.Clone(r.Policy.Tools)
	for i, t := range r.Policy.Tools {
		r.Policy.Tools[i].Scopes = slices.Clone(t.Scopes)
		r.Policy.Tools[i].Connectors = slices.Clone(t.Connectors)
	}
	return r
}

func (r Resource) RecordID() string        { return r.ID }
func (r Resource) RecordExpiry() time.Time { return time.Time{} }
func (r Resource) RecordIndexes() []Index {
	return []Index{{Name: IndexURI, Value: r.URI, Unique: true}}
}
func (r Resource) Validate() error {
	return errors.Join(validateID("resource", r.ID), required("resource", "uri", r.URI))
}

// ConnectionStatus is the health of a linked upstream account.
type ConnectionStatus string

const (
	ConnectionActive      ConnectionStatus = "active"
	ConnectionNeedsRelink ConnectionStatus = "needs_relink"
)

// Connection is an upstream account a user linked. Its secret lives in the
// SecretStore under SecretKey; the record holds only non-secret facts.
type Connection struct {
	ID           string           `json:"id"`
	UserID       string           `json:"user_id"`
	Connector    string           `json:"connector"`
	Kind         string           `json:"kind"`
	Account      string           `json:"account,omitempty"`
	Status       ConnectionStatus `json:"status"`
	SecretKey    SecretKey        `json:"secret_key"`
	SecretVer    int              `json:"secret_version,omitempty"`
	CreatedAt    time.Time        `json:"created_at"`
	UpdatedAt    time.Time        `json:"updated_at"`
	LastVerified time.Time        `json:"last_verified,omitzero"`
}

// Clone returns a copy of c that shares nothing with it.
func (c Connection) Clone() Connection { return c }

func (c Connection) RecordID() string        { return c.ID }
func (c Connection) RecordExpiry() time.Time { return time.Time{} }
func (c Connection) RecordIndexes() []Index {
	return []Index{{Name: IndexUser, Value: c.UserID}}
}
func (c Connection) Validate() error {
	return errors.Join(validateID("connection", c.ID),
		required("connection", "user_id", c.UserID, "connector", c.Connector))
}

// Grant is a user's consent: one client, one MCP server (resource), the
// scopes, and the set of connections tokens under it may reach.
type Grant struct {
	ID       string `json:"id"`
	UserID   string `json:"user_id"`
	ClientID string `json:"client_id"`
	Resource string `json:"resource"`
	// ResourceID is the registration the grant was made for: a server
	// registered later at the same URI does not inherit the grant.
	ResourceID    string    `json:"resource_id,omitempty"`
	Scopes        []string  `json:"scopes,omitempty"`
	ConnectionIDs []string  `json:"connection_ids,omitempty"`
	CreatedAt     time.Time `json:"created_at"`
	UpdatedAt     time.Time `json:"updated_at"`
	ExpiresAt     time.Time `json:"expires_at,omitzero"`
	RevokedAt     time.Time `json:"revoked_at,omitzero"`
	RevokeReason  string    `json:"revoke_reason,omitempty"`
	// LastUsedAt is when a token was last issued or redeemed under it.
	LastUsedAt time.Time `json:"last_used_at,omitzero"`
}

// Clone returns a copy of g that shares no slice with it.
func (g Grant) Clone() Grant {
	g.Scopes = slices.Clone(g.Scopes)
	g.ConnectionIDs = slices.Clone(g.ConnectionIDs)
	return g
}

func (g Grant) RecordID() string        { return g.ID }
func (g Grant) RecordExpiry() time.Time { return g.ExpiresAt }
func (g Grant) RecordIndexes() []Index {
	return []Index{{Name: IndexUser, Value: g.UserID}, {Name: IndexClient, Value: g.ClientID}}
}
func (g Grant) Validate() error {
	return errors.Join(validateID("grant", g.ID),
		required("grant", "user_id", g.UserID, "client_id", g.ClientID, "resource", g.Resource))
}

// Revoked reports whether the grant was revoked.
func (g Grant) Revoked() bool { return !g.RevokedAt.IsZero() }

// AuthCode is an authorization code. ID is the hash of the code, never the
// code itself.
type AuthCode struct {
	ID            string    `json:"id"`
	ClientID      string    `json:"client_id"`
	UserID        string    `json:"user_id"`
	GrantID       string    `json:"grant_id"`
	RedirectURI   string    `json:"redirect_uri"`
	CodeChallenge string    `json:"code_challenge"`
	Resource      string    `json:"resource"`
	Scopes        []string  `json:"scopes,omitempty"`
	IssuedAt      time.Time `json:"issued_at"`
	ExpiresAt     time.Time `json:"expires_at"`
	Consumed      time.Time `json:"consumed_at,omitzero"`
}

func (c AuthCode) RecordID() string        { return c.ID }
func (c AuthCode) RecordExpiry() time.Time { return c.ExpiresAt }
func (c AuthCode) RecordIndexes() []Index {
	return []Index{{Name: IndexGrant, Value: c.GrantID}}
}
func (c AuthCode) Validate() error {
	return errors.Join(validateID("auth code", c.ID), required("auth code", "client_id", c.ClientID),
		requireExpiry("auth code", c.ExpiresAt))
}
func (c AuthCode) ConsumedAt() time.Time { return c.Consumed }
func (c AuthCode) WithConsumedAt(t time.Time) AuthCode {
	c.Consumed = t
	return c
}

// RefreshToken is a refresh token. ID is the hash of the token.
type RefreshToken struct {
	ID         string    `json:"id"`
	GrantID    string    `json:"grant_id"`
	ClientID   string    `json:"client_id"`
	Scopes     []string  `json:"scopes,omitempty"`
	IssuedAt   time.Time `json:"issued_at"`
	ExpiresAt  time.Time `json:"expires_at"`
	Consumed   time.Time `json:"consumed_at,omitzero"`
	ReplacedBy string    `json:"replaced_by,omitempty"`
}

func (t RefreshToken) RecordID() string        { return t.ID }
func (t RefreshToken) RecordExpiry() time.Time { return t.ExpiresAt }
func (t RefreshToken) RecordIndexes() []Index {
	return []Index{{Name: IndexGrant, Value: t.GrantID}}
}
func (t RefreshToken) Validate() error {
	return errors.Join(validateID("refresh token", t.ID),
		required("refresh token", "grant_id", t.GrantID, "client_id", t.ClientID),
		requireExpiry("refresh token", t.ExpiresAt))
}
func (t RefreshToken) ConsumedAt() time.Time { return t.Consumed }
func (t RefreshToken) WithConsumedAt(at time.Time) RefreshToken {
	t.Consumed = at
	return t
}

// DeviceCodeStatus is where an RFC 8628 device authorization stands.
type DeviceCodeStatus string

const (
	DevicePending  DeviceCodeStatus = "pending"
	DeviceApproved DeviceCodeStatus = "approved"
	DeviceDenied   DeviceCodeStatus = "denied"
)

// DeviceCode is an RFC 8628 device authorization. ID is the hash of the
// device code; UserCode is what the user types (unique while live).
type DeviceCode struct {
	ID         string           `json:"id"`
	UserCode   string           `json:"user_code"`
	ClientID   string           `json:"client_id"`
	Resource   string           `json:"resource,omitempty"`
	Scopes     []string         `json:"scopes,omitempty"`
	Status     DeviceCodeStatus `json:"status"`
	UserID     string           `json:"user_id,omitempty"`
	GrantID    string           `json:"grant_id,omitempty"`
	IssuedAt   time.Time        `json:"issued_at"`
	ExpiresAt  time.Time        `json:"expires_at"`
	LastPolled time.Time        `json:"last_polled,omitzero"`
	// Interval is the minimum polling interval in seconds; slow_down adds 5.
	Interval int       `json:"interval,omitempty"`
	Consumed time.Time `json:"consumed_at,omitzero"`
}

func (d DeviceCode) RecordID() string        { return d.ID }
func (d DeviceCode) RecordExpiry() time.Time { return d.ExpiresAt }
func (d DeviceCode) RecordIndexes() []Index {
	return []Index{{Name: IndexUserCode, Value: d.UserCode, Unique: true}}
}
func (d DeviceCode) Validate() error {
	return errors.Join(validateID("device code", d.ID),
		required("device code", "user_code", d.UserCode, "client_id", d.ClientID),
		requireExpiry("device code", d.ExpiresAt))
}
func (d DeviceCode) ConsumedAt() time.Time { return d.Consumed }
func (d DeviceCode) WithConsumedAt(t time.Time) DeviceCode {
	d.Consumed = t
	return d
}

func requireExpiry(kind string, t time.Time) error {
	if t.IsZero() {
		return fmt.Errorf("%s: expires_at is required: %w", kind, ErrInvalid)
	}
	return nil
}

// Compile-time checks that single-use records satisfy SingleUse.
var (
	_ SingleUse[AuthCode]     = AuthCode{}
	_ SingleUse[RefreshToken] = RefreshToken{}
	_ SingleUse[DeviceCode]   = DeviceCode{}
)

// ToolPolicy decides, per MCP tool, whether a redemption may happen. A tool
// without a rule is allowed only when DefaultAllow is set.
type ToolPolicy struct {
	DefaultAllow bool       `json:"default_allow,omitempty"`
	Tools        []ToolRule `json:"tools,omitempty"`
}

// ToolRule is the rule for one tool: the token must carry every scope in
// Scopes, and only the listed connectors may be redeemed for it (empty: any
// connector the MCP server may redeem).
type ToolRule struct {
	Name       string   `json:"name"`
	Scopes     []string `json:"scopes,omitempty"`
	Connectors []string `json:"connectors,omitempty"`
}
