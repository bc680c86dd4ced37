package oauthconn

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"golang.org/x/oauth2"

	"github.com/lanyardhq/lanyard/broker"
	"github.com/lanyardhq/lanyard/connectors"
)

// RFC 8693 names.
const (
	// GrantTokenExchange is the grant type of a token exchange request.
	GrantTokenExchange = "urn:ietf:params:oauth:grant-type:token-exchange"
	// TokenTypeAccessToken is the token type of an OAuth access token.
	TokenTypeAccessToken = "urn:ietf:params:oauth:token-type:access_token"
)

// Exchange implements connectors.Exchanger with RFC 8693 token exchange at
// the provider's token endpoint: grant_type token-exchange, the stored
// access token as subject_token (type access_token), requested_token_type
// access_token, audience (the argument, else the connector's
// exchange_audience, else none) and scope (scopes, if any), with the
// connector's client authentication (HTTP Basic, or client_id and
// client_secret in the body where the provider wants that or the client is
// public). The answer's access token and expires_in make the credential
// (no expiry when the provider gives none); the stored secret is neither
// used for anything else nor changed.
//
// An expired stored access token is ErrAccessTokenExpired (refresh first).
// invalid_grant (the provider no longer accepts the subject token) is
// ErrNeedsRelink; every other failure (an error response, 5xx, network,
// timeouts, an answer that is not a usable access token, a body over
// MaxBody) is ErrUpstream. Messages never carry a token or the client
// secret.
func (c *Connector) Exchange(ctx context.Context, secret broker.Secret, audience string, scopes []string) (connectors.Credential, error) {
	tok, err := c.liveToken(ctx, secret)
	if err != nil {
		return connectors.Credential{}, err
	}
	if audience == "" {
		audience = c.exchangeAudience
	}
	form := url.Values{
		"grant_type":           {GrantTokenExchange},
		"subject_token":        {tok.AccessToken},
		"subject_token_type":   {TokenTypeAccessToken},
		"requested_token_type": {TokenTypeAccessToken},
	}
	if audience != "" {
		form.Set("audience", audience)
	}
	if len(scopes) > 0 {
		form.Set("scope", strings.Join(scopes, " "))
	}
	sec := secret.Fields()
	sec["client_secret"] = c.conf.ClientSecret
	status, body, err := c.postToken(ctx, form)
	if err != nil {
		if ctxErr := ctx.Err(); ctxErr != nil {
			return connectors.Credential{}, fmt.Errorf("%w: token exchange: %w", connectors.ErrUpstream, ctxErr)
		}
		return connectors.Credential{}, fmt.Errorf("%w: %s token exchange: %s", connectors.ErrUpstream, c.DisplayName(), scrub(transportError(err), sec))
	}
	var r struct {
		AccessToken      string      `json:"access_token"`
		IssuedTokenType  string      `json:"issued_token_type"`
		TokenType        string      `json:"token_type"`
		ExpiresIn        json.Number `json:"expires_in"`
		Error            string      `json:"error"`
		ErrorDescription string      `json:"error_description"`
	}
	jerr := json.NewDecoder(bytes.NewReader(body)).Decode(&r)
	if status/100 != 2 {
		code, desc := clean(r.Error, 64), scrub(clean(r.ErrorDescription, 200), sec)
		switch {
		case code == "invalid_grant":
			return connectors.Credential{}, fmt.Errorf("%w: %s no longer accepts the access token for exchange (%s)", connectors.ErrNeedsRelink, c.DisplayName(), joinDesc(code, desc))
		case code != "":
			return connectors.Credential{}, fmt.Errorf("%w: %s: token exchange: %s", connectors.ErrUpstream, c.DisplayName(), joinDesc(code, desc))
		default:
			return connectors.Credential{}, fmt.Errorf("%w: %s: token exchange: status %d", connectors.ErrUpstream, c.DisplayName(), status)
		}
	}
	tt := r.TokenType
	if tt == "" {
		tt = "Bearer"
	}
	var expires time.Time
	if r.ExpiresIn != "" {
		n, err := r.ExpiresIn.Int64()
		if err != nil || n <= 0 || n > 10*365*24*3600 {
			jerr = fmt.Errorf("expires_in %q is not a positive number of seconds", clean(string(r.ExpiresIn), 32))
		} else {
			expires = c.now().Add(time.Duration(n) * time.Second)
		}
	}
	switch {
	case jerr != nil:
		return connectors.Credential{}, fmt.Errorf("%w: %s: token exchange: the answer is not a token response", connectors.ErrUpstream, c.DisplayName())
	case r.AccessToken == "":
		return connectors.Credential{}, fmt.Errorf("%w: %s: token exchange: the answer has no access token", connectors.ErrUpstream, c.DisplayName())
	case r.IssuedTokenType != "" && r.IssuedTokenType != TokenTypeAccessToken:
		return connectors.Credential{}, fmt.Errorf("%w: %s: token exchange: issued_token_type %q is not an access token", connectors.ErrUpstream, c.DisplayName(), clean(r.IssuedTokenType, 100))
	case strings.EqualFold(tt, "N_A"):
		return connectors.Credential{}, fmt.Errorf("%w: %s: token exchange: the issued token is not usable as an access token (token_type N_A)", connectors.ErrUpstream, c.DisplayName())
	}
	return connectors.Credential{
		Type:      connectors.KindOAuth2,
		Fields:    map[string]any{FieldAccessToken: r.AccessToken, FieldTokenType: tt},
		ExpiresAt: expires,
	}, nil
}

// postToken POSTs form to the token endpoint with the client's
// authentication and returns the status and the (capped) body.
func (c *Connector) postToken(ctx context.Context, form url.Values) (int, []byte, error) {
	inParams := c.conf.ClientSecret == "" || c.conf.Endpoint.AuthStyle == oauth2.AuthStyleInParams
	if inParams {
		form.Set("client_id", c.conf.ClientID)
		if c.conf.ClientSecret != "" {
			form.Set("client_secret", c.conf.ClientSecret)
		}
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.conf.Endpoint.TokenURL, strings.NewReader(form.Encode()))
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", "lanyard")
	if !inParams {
		// RFC 6749 2.3.1: form-encode, then basic auth.
		req.SetBasicAuth(url.QueryEscape(c.conf.ClientID), url.QueryEscape(c.conf.ClientSecret))
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body) // capped by capTransport
	if err != nil {
		return 0, nil, err
	}
	return resp.StatusCode, body, nil
}
