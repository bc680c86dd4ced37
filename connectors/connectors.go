// Package connectors defines how Lanyard links, checks, refreshes and hands
// out an upstream account: one small required interface, Connector, and
// optional capabilities that a connector kind implements when it can
// (found by type assertion, as in dex). Each kind lives in its own package
// (connectors/oauthconn, apikey, basic, socket) and every kind runs the
// shared suite in connectors/connectortest.
//
// Connectors never store anything: they verify input and return the secret
// to keep (Linked.Secret) and the non-secret account identity. The link
// service (broker/links) writes secrets to the SecretStore and records to
// the metadata store. Every method takes a context and must honour it.
package connectors

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/lanyardhq/lanyard/broker"
)

// Kinds of connector.
const (
	KindOAuth2 = "oauth2"
	KindAPIKey = "apikey"
	KindBasic  = "basic"
	KindSocket = "socket"
)

// Connector is one configured upstream, by name (for example "github" or
// "work-mail"), of one kind.
type Connector interface {
	Name() string
	Kind() string
	DisplayName() string
}

// Named implements Connector for every kind: embed it in a kind's
// Connector and build it with NewNamed.
type Named struct {
	name, kind, displayName string
}

// NewNamed checks that name is set and defaults displayName to it.
func NewNamed(kind, name, displayName string) (Named, error) {
	if name == "" {
		return Named{}, fmt.Errorf("%w: %s connector: name is required", broker.ErrInvalid, kind)
	}
	if displayName == "" {
		displayName = name
	}
	return Named{name: name, kind: kind, displayName: displayName}, nil
}

// Name implements Connector.
func (n Named) Name() string { return n.name }

// Kind implements Connector.
func (n Named) Kind() string { return n.kind }

// DisplayName implements Connector.
func (n Named) DisplayName() string { return n.displayName }

// Printable reports whether s is valid UTF-8 without control characters
// (what user-typed names, hosts and paths must be).
func Printable(s string) bool {
	if !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if unicode.IsControl(r) {
			return false
		}
	}
	return true
}

// Field is one input of a link form. Secret fields are never echoed back
// into a page.
type Field struct {
	Name     string
	Label    string
	Secret   bool
	Required bool
	Help     string
}

// Input is what a user typed into a link form. Every value is held as a
// broker.SecretString so a stray log line cannot leak a password.
type Input map[string]broker.SecretString

// Get returns the revealed value of a field.
func (in Input) Get(name string) string { return in[name].Reveal() }

// Linked is the outcome of a successful link: the account identity to show
// (never secret), the secret to keep, and when the secret expires (zero:
// never, or unknown).
type Linked struct {
	Account   string
	Secret    broker.Secret
	ExpiresAt time.Time
}

// FormLinker links from a form the user fills in (API keys, passwords,
// sockets). Link must verify the input against the upstream before it
// returns (a wrong password is ErrRejected and nothing is kept).
type FormLinker interface {
	Fields() []Field
	Link(ctx context.Context, in Input) (Linked, error)
}

// LinkState is what a redirect-based link carries across the round trip:
// State is the single-use value bound to the user's session; Verifier is the
// PKCE code verifier; RedirectURI is Lanyard's callback.
type LinkState struct {
	State       string
	Verifier    string
	RedirectURI string
}

// RedirectLinker links by sending the browser to the upstream (OAuth).
type RedirectLinker interface {
	// AuthURL returns where to send the browser.
	AuthURL(ctx context.Context, st LinkState) (string, error)
	// Complete finishes the link from the callback's query parameters; the
	// caller has already checked st.State against the query's state.
	Complete(ctx context.Context, st LinkState, query url.Values) (Linked, error)
}

// Verifier re-checks a stored credential ("test now").
type Verifier interface {
	Verify(ctx context.Context, secret broker.Secret) error
}

// Refresher renews a credential that expires (OAuth access tokens). The
// returned secret replaces the stored one (it may carry a rotated refresh
// token). An upstream refusal that needs the user (invalid_grant) is
// ErrNeedsRelink.
type Refresher interface {
	Refresh(ctx context.Context, secret broker.Secret) (Linked, error)
}

// Revoker revokes the credential upstream when the user unlinks it.
type Revoker interface {
	RevokeUpstream(ctx context.Context, secret broker.Secret) error
}

// Credential is what redemption hands an MCP server for one tool call.
type Credential struct {
	Type      string         `json:"type"`
	Fields    map[string]any `json:"credential"`
	ExpiresAt time.Time      `json:"expires_at,omitzero"`
}

// Materializer turns a stored secret into the credential an MCP server
// receives (for example: the access token and how to present it).
type Materializer interface {
	Materialize(ctx context.Context, secret broker.Secret) (Credential, error)
}

// Exchanger trades a stored credential for a new one at the upstream's own
// authorization server with RFC 8693 token exchange (OAuth providers that
// support it): the stored access token is the subject_token and the answer,
// typically shorter-lived and restricted to audience, is what an MCP server
// receives instead of the stored token. audience "" means the connector's
// configured one (or none); scopes nil means the subject token's. The stored
// secret is not changed. A refused subject token (invalid_grant) is
// ErrNeedsRelink; other failures are ErrUpstream. The caller refreshes an
// expiring access token first.
type Exchanger interface {
	Exchange(ctx context.Context, secret broker.Secret, audience string, scopes []string) (Credential, error)
}

// Errors connectors return (wrapped, matched with errors.Is).
var (
	// ErrRejected: the upstream refused the credential (wrong password,
	// bad key). The message may be shown to the user.
	ErrRejected = errors.New("the upstream service rejected these credentials")
	// ErrNeedsRelink: the stored credential no longer works and only the
	// user can fix it (revoked grant, changed password).
	ErrNeedsRelink = errors.New("the linked account must be linked again")
	// ErrUpstream: the upstream failed or could not be reached; retrying
	// later may help.
	ErrUpstream = errors.New("the upstream service could not be reached")
)
