package storetest

import (
	"time"

	"github.com/lanyardhq/lanyard/broker"
)

// kind describes one record kind to the generic tests. Fixtures use UTC
// times with nanoseconds, which a JSON round trip keeps exactly.
type kind[T broker.Record] struct {
	table func(broker.Store) broker.Table[T]
	// fixture returns a valid record; uniq feeds the values of unique
	// indexes (and of other indexes), so two fixtures with different uniq
	// never collide.
	fixture func(id, uniq string, now time.Time) T
	// mutate changes some fields, every index value among them.
	mutate func(T) T
	// invalid returns a copy that fails Validate.
	invalid func(T) T
}

// singleUseKind adds the single-use accessor to a kind.
type singleUseKind[T broker.SingleUse[T]] struct {
	kind[T]
	su func(broker.Store) broker.SingleUseTable[T]
}

var users = kind[broker.User]{
	table: broker.Store.Users,
	fixture: func(id, uniq string, now time.Time) broker.User {
		return broker.User{ID: id, Username: "user-" + uniq, PasswordHash: "$argon2id$v=19$not-a-real-hash",
			CreatedAt: now, UpdatedAt: now}
	},
	mutate: func(u broker.User) broker.User {
		u.Username += "-renamed"
		u.Admin, u.FailedLogins = true, 3
		u.UpdatedAt = u.UpdatedAt.Add(time.Second)
		return u
	},
	invalid: func(u broker.User) broker.User { u.Username = ""; return u },
}

var clients = kind[broker.Client]{
	table: broker.Store.Clients,
	fixture: func(id, uniq string, now time.Time) broker.Client {
		return broker.Client{ID: id, Kind: broker.ClientRegistered, Name: "agent " + uniq,
			RedirectURIs: []string{"http://127.0.0.1:33418/callback"}, GrantTypes: []string{"authorization_code", "refresh_token"},
			TokenEndpointAuthMethod: "none", CreatedAt: now, ExpiresAt: now.Add(90 * 24 * time.Hour)}
	},
	mutate: func(c broker.Client) broker.Client {
		c.Name += " (renamed)"
		c.RedirectURIs = append(c.RedirectURIs, "http://localhost:33418/callback")
		return c
	},
	invalid: func(c broker.Client) broker.Client { c.Kind = ""; return c },
}

var resources = kind[broker.Resource]{
	table: broker.Store.Resources,
	fixture: func(id, uniq string, now time.Time) broker.Resource {
		return broker.Resource{ID: id, URI: "https://mcp.example.com/" + uniq, Name: "MCP " + uniq,
			TokenEndpointAuthMethod: "client_secret_basic", SecretHash: "$argon2id$x", Connectors: []string{"github"}, CreatedAt: now,
			Policy: broker.ToolPolicy{Tools: []broker.ToolRule{{Name: "read", Scopes: []string{"mail.read"}, Connectors: []string{"github"}}}}}
	},
	mutate: func(r broker.Resource) broker.Resource {
		r.URI += "/v2"
		r.Connectors = append(r.Connectors, "imap")
		return r
	},
	invalid: func(r broker.Resource) broker.Resource { r.URI = ""; return r },
}

var connections = kind[broker.Connection]{
	table: broker.Store.Connections,
	fixture: func(id, uniq string, now time.Time) broker.Connection {
		return broker.Connection{ID: id, UserID: "u-" + uniq, Connector: "github", Kind: "oauth2", Account: "octocat",
			Status: broker.ConnectionActive, SecretKey: broker.SecretKey{Owner: "u-" + uniq, Name: id}, SecretVer: 1,
			CreatedAt: now, UpdatedAt: now}
	},
	mutate: func(c broker.Connection) broker.Connection {
		c.UserID += "-moved"
		c.Status = broker.ConnectionNeedsRelink
		c.LastVerified = c.UpdatedAt.Add(time.Minute)
		return c
	},
	invalid: func(c broker.Connection) broker.Connection { c.Connector = ""; return c },
}

var grants = kind[broker.Grant]{
	table: broker.Store.Grants,
	fixture: func(id, uniq string, now time.Time) broker.Grant {
		return broker.Grant{ID: id, UserID: "u-" + uniq, ClientID: "c-" + uniq, Resource: "https://mcp.example.com/a",
			Scopes: []string{"mcp"}, ConnectionIDs: []string{"conn-1"}, CreatedAt: now, UpdatedAt: now,
			ExpiresAt: now.Add(30 * 24 * time.Hour)}
	},
	mutate: func(g broker.Grant) broker.Grant {
		g.UserID += "-moved"
		g.ClientID += "-moved"
		g.RevokedAt, g.RevokeReason = g.UpdatedAt.Add(time.Hour), "user revoked"
		return g
	},
	invalid: func(g broker.Grant) broker.Grant { g.Resource = ""; return g },
}

var authCodes = singleUseKind[broker.AuthCode]{
	kind: kind[broker.AuthCode]{
		table: func(s broker.Store) broker.Table[broker.AuthCode] { return s.AuthCodes() },
		fixture: func(id, uniq string, now time.Time) broker.AuthCode {
			return broker.AuthCode{ID: id, ClientID: "c-" + uniq, UserID: "u-" + uniq, GrantID: "g-" + uniq,
				RedirectURI: "http://127.0.0.1/cb", CodeChallenge: "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
				Resource: "https://mcp.example.com/a", Scopes: []string{"mcp"}, IssuedAt: now, ExpiresAt: now.Add(10 * time.Minute)}
		},
		mutate: func(c broker.AuthCode) broker.AuthCode {
			c.GrantID += "-moved"
			c.Scopes = append(c.Scopes, "offline_access")
			return c
		},
		invalid: func(c broker.AuthCode) broker.AuthCode { c.ClientID = ""; return c },
	},
	su: broker.Store.AuthCodes,
}

var refreshTokens = singleUseKind[broker.RefreshToken]{
	kind: kind[broker.RefreshToken]{
		table: func(s broker.Store) broker.Table[broker.RefreshToken] { return s.RefreshTokens() },
		fixture: func(id, uniq string, now time.Time) broker.RefreshToken {
			return broker.RefreshToken{ID: id, GrantID: "g-" + uniq, ClientID: "c-" + uniq, Scopes: []string{"mcp"},
				IssuedAt: now, ExpiresAt: now.Add(30 * 24 * time.Hour)}
		},
		mutate: func(r broker.RefreshToken) broker.RefreshToken {
			r.GrantID += "-moved"
			r.ReplacedBy = "next"
			return r
		},
		invalid: func(r broker.RefreshToken) broker.RefreshToken { r.ExpiresAt = time.Time{}; return r },
	},
	su: broker.Store.RefreshTokens,
}

var deviceCodes = singleUseKind[broker.DeviceCode]{
	kind: kind[broker.DeviceCode]{
		table: func(s broker.Store) broker.Table[broker.DeviceCode] { return s.DeviceCodes() },
		fixture: func(id, uniq string, now time.Time) broker.DeviceCode {
			return broker.DeviceCode{ID: id, UserCode: "UC-" + uniq, ClientID: "c-" + uniq, Resource: "https://mcp.example.com/a",
				Scopes: []string{"mcp"}, Status: broker.DevicePending, IssuedAt: now, ExpiresAt: now.Add(15 * time.Minute)}
		},
		mutate: func(d broker.DeviceCode) broker.DeviceCode {
			d.UserCode += "-X"
			d.Status, d.UserID, d.GrantID = broker.DeviceApproved, "u-1", "g-1"
			d.LastPolled = d.IssuedAt.Add(5 * time.Second)
			return d
		},
		invalid: func(d broker.DeviceCode) broker.DeviceCode { d.UserCode = ""; return d },
	},
	su: broker.Store.DeviceCodes,
}

var sessions = kind[broker.Session]{
	table: broker.Store.Sessions,
	fixture: func(id, uniq string, now time.Time) broker.Session {
		return broker.Session{ID: id, UserID: "u-" + uniq, AuthTime: now, CreatedAt: now, ExpiresAt: now.Add(12 * time.Hour)}
	},
	mutate: func(s broker.Session) broker.Session {
		s.UserID += "-other"
		s.BadUserCodes = 2
		return s
	},
	invalid: func(s broker.Session) broker.Session { s.UserID = ""; return s },
}

var authRequests = singleUseKind[broker.AuthRequest]{
	kind: kind[broker.AuthRequest]{
		table: func(s broker.Store) broker.Table[broker.AuthRequest] { return s.AuthRequests() },
		fixture: func(id, uniq string, now time.Time) broker.AuthRequest {
			return broker.AuthRequest{ID: id, ClientID: "c-" + uniq, RedirectURI: "http://127.0.0.1/cb", State: "s-" + uniq,
				CodeChallenge: "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM", Resource: "https://mcp.example.com/a",
				Scopes: []string{"mcp"}, CreatedAt: now, ExpiresAt: now.Add(10 * time.Minute)}
		},
		mutate: func(a broker.AuthRequest) broker.AuthRequest {
			a.UserID = "u-bound"
			return a
		},
		invalid: func(a broker.AuthRequest) broker.AuthRequest { a.Resource = ""; return a },
	},
	su: broker.Store.AuthRequests,
}

var pendingLinks = singleUseKind[broker.PendingLink]{
	kind: kind[broker.PendingLink]{
		table: func(s broker.Store) broker.Table[broker.PendingLink] { return s.PendingLinks() },
		fixture: func(id, uniq string, now time.Time) broker.PendingLink {
			return broker.PendingLink{ID: id, UserID: "u-" + uniq, SessionID: "s-" + uniq, Connector: "github",
				CreatedAt: now, ExpiresAt: now.Add(10 * time.Minute)}
		},
		mutate: func(p broker.PendingLink) broker.PendingLink {
			p.ConnectionID = "conn-1"
			return p
		},
		invalid: func(p broker.PendingLink) broker.PendingLink { p.SessionID = ""; return p },
	},
	su: broker.Store.PendingLinks,
}
