package links

import (
	"context"
	"errors"
	"fmt"

	"github.com/lanyardhq/lanyard/broker"
	"github.com/lanyardhq/lanyard/connectors"
)

// Exchange returns a credential for conn that the connector's upstream
// authorization server issues by RFC 8693 token exchange
// (connectors.Exchanger) in place of the stored token, for audience (""
// is the connector's configured one). The stored access token is the
// subject: an expiring one is refreshed first, single-flight like
// Credential's. The stored secret is never replaced by the exchanged
// token, and nothing exchanged is cached: every call is one exchange.
//
// If the provider refuses the subject token (connectors.ErrNeedsRelink:
// invalid_grant), the access token alone may have been revoked: the token
// is refreshed (unless another caller already did) and the exchange tried
// once more. A refresh that fails with invalid_grant marks the connection
// needs-relink, as in Credential. A provider that refuses even a freshly
// refreshed token is reported as ErrUpstream (its exchange policy, not the
// user's link, is at fault) and the connection stays active. A connector
// that cannot exchange is errors.ErrUnsupported.
func (s *Service) Exchange(ctx context.Context, conn broker.Connection, audience string) (connectors.Credential, error) {
	if conn.Status == broker.ConnectionNeedsRelink {
		return connectors.Credential{}, fmt.Errorf("connection %s: %w", conn.ID, ErrNeedsRelink)
	}
	c, err := s.Connector(conn.Connector)
	if err != nil {
		return connectors.Credential{}, err
	}
	ex, ok := c.(connectors.Exchanger)
	if !ok {
		return connectors.Credential{}, fmt.Errorf("connector %q cannot exchange tokens onward: %w", c.Name(), errors.ErrUnsupported)
	}
	_, canRefresh := c.(connectors.Refresher)
	sec, _, err := s.o.Secrets.Get(ctx, conn.SecretKey)
	if err != nil {
		return connectors.Credential{}, err
	}
	if canRefresh && s.expiring(sec) {
		if sec, err = s.refresh(ctx, conn, c, false); err != nil {
			return connectors.Credential{}, err
		}
	}
	cred, err := ex.Exchange(ctx, sec, audience, nil)
	if !errors.Is(err, connectors.ErrNeedsRelink) {
		return cred, err
	}
	if !canRefresh {
		s.markNeedsRelink(ctx, conn.ID)
		return connectors.Credential{}, fmt.Errorf("connection %s: %w", conn.ID, err)
	}
	refused, _ := sec.Field("access_token")
	cur, _, gerr := s.o.Secrets.Get(ctx, conn.SecretKey)
	if gerr != nil {
		return connectors.Credential{}, gerr
	}
	if at, _ := cur.Field("access_token"); at == refused {
		// Still the refused token: refresh (invalid_grant there marks the
		// connection needs-relink).
		if cur, err = s.refresh(ctx, conn, c, true); err != nil {
			return connectors.Credential{}, err
		}
	}
	cred, err = ex.Exchange(ctx, cur, audience, nil)
	if errors.Is(err, connectors.ErrNeedsRelink) {
		return connectors.Credential{}, fmt.Errorf("%w: the provider refuses to exchange even a freshly refreshed token (check its token exchange policy for this client): %v",
			connectors.ErrUpstream, err)
	}
	return cred, err
}
