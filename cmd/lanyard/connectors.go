package main

import (
	"context"
	"fmt"

	"github.com/lanyardhq/lanyard/connectors"
	"github.com/lanyardhq/lanyard/connectors/apikey"
	"github.com/lanyardhq/lanyard/connectors/basic"
	"github.com/lanyardhq/lanyard/connectors/oauthconn"
	"github.com/lanyardhq/lanyard/connectors/socket"
	"github.com/lanyardhq/lanyard/internal/config"
)

// buildConnectors constructs every configured connector. A connector that
// cannot be built (for example OIDC discovery fails) stops the start-up
// with its name in the message.
func buildConnectors(ctx context.Context, cfg config.Config) ([]connectors.Connector, error) {
	var out []connectors.Connector
	for _, c := range cfg.Connectors {
		var (
			conn connectors.Connector
			err  error
		)
		switch c.Kind {
		case connectors.KindOAuth2:
			conn, err = oauthconn.New(ctx, c.Name, c.DisplayName, c.OAuth2, oauthconn.Options{Dev: cfg.Dev})
		case connectors.KindAPIKey:
			conn, err = apikey.New(c.Name, c.DisplayName, c.APIKey, apikey.Options{Dev: cfg.Dev})
		case connectors.KindBasic:
			conn, err = basic.New(c.Name, c.DisplayName, c.Basic)
		case connectors.KindSocket:
			conn, err = socket.New(c.Name, c.DisplayName, c.Socket)
		default:
			err = fmt.Errorf("unknown kind %q", c.Kind)
		}
		if err != nil {
			return nil, fmt.Errorf("connector %s: %w", c.Name, err)
		}
		out = append(out, conn)
	}
	return out, nil
}
