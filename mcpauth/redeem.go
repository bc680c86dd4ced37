package mcpauth

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"
)

// Redemption error codes (besides the RFC 6750 ones above).
const (
	CodeInvalidClient          = "invalid_client"
	CodeAccessDenied           = "access_denied"
	CodeUnauthorizedClient     = "unauthorized_client"
	CodeNeedsRelink            = "needs_relink"
	CodeTemporarilyUnavailable = "temporarily_unavailable"
	CodeServerError            = "server_error"
)

// maxCachedCredentials bounds the credential cache.
const maxCachedCredentials = 10000

// redeemTimeout bounds one redemption request when Config.HTTPClient has
// no timeout of its own.
const redeemTimeout = 30 * time.Second

// Credential is an upstream credential that Lanyard handed out for one
// tool call. Its String, GoString, LogValue and MarshalJSON name the
// fields but never show their values.
type Credential struct {
	// ConnectionID is the user's linked account it belongs to.
	ConnectionID string
	// Connector is the connector name, e.g. "github" or "imap".
	Connector string
	// Type is the connector kind: "oauth2", "apikey", "basic" or "socket".
	Type string
	// Fields are the credential itself, as Lanyard sent it (e.g.
	// "access_token" for oauth2, "username" and "password" for basic).
	Fields map[string]any
	// ExpiresAt is when the credential stops working; zero if Lanyard did
	// not say.
	ExpiresAt time.Time
}

// Field returns the string field name of the credential ("" if it is
// missing or not a string).
func (c *Credential) Field(name string) string {
	s, _ := c.Fields[name].(string)
	return s
}

func (c Credential) fieldNames() []string {
	return slices.Sorted(maps.Keys(c.Fields))
}

// String describes c without its secret values.
func (c Credential) String() string {
	exp := "none"
	if !c.ExpiresAt.IsZero() {
		exp = c.ExpiresAt.UTC().Format(time.RFC3339)
	}
	return fmt.Sprintf("mcpauth.Credential{connection: %q, connector: %q, type: %q, fields: %q (redacted), expires: %s}",
		c.ConnectionID, c.Connector, c.Type, c.fieldNames(), exp)
}

// GoString is String.
func (c Credential) GoString() string { return c.String() }

// LogValue implements slog.LogValuer without the secret values.
func (c Credential) LogValue() slog.Value {
	return slog.GroupValue(slog.String("connection_id", c.ConnectionID), slog.String("connector", c.Connector),
		slog.String("type", c.Type), slog.Any("fields", c.fieldNames()), slog.Time("expires_at", c.ExpiresAt))
}

// MarshalJSON encodes c with every field value replaced by "[redacted]".
func (c Credential) MarshalJSON() ([]byte, error) {
	red := make(map[string]string, len(c.Fields))
	for k := range c.Fields {
		red[k] = "[redacted]"
	}
	return json.Marshal(struct {
		ConnectionID string            `json:"connection_id"`
		Connector    string            `json:"connector"`
		Type         string            `json:"type"`
		Credential   map[string]string `json:"credential"`
		ExpiresAt    time.Time         `json:"expires_at,omitzero"`
	}{c.ConnectionID, c.Connector, c.Type, red, c.ExpiresAt})
}

// clone returns a deep copy, so that callers may not change the cache.
func (c *Credential) clone() *Credential {
	cp := *c
	cp.Fields, _ = deepCopy(c.Fields).(map[string]any)
	return &cp
}

func deepCopy(v any) any {
	switch v := v.(type) {
	case map[string]any:
		m := make(map[string]any, len(v))
		for k, x := range v {
			m[k] = deepCopy(x)
		}
		return m
	case []any:
		s := make([]any, len(v))
		for i, x := range v {
			s[i] = deepCopy(x)
		}
		return s
	default:
		return v
	}
}

// RedeemError is Lanyard's refusal of a redemption (or a failure to get
// an answer): the HTTP status and the error JSON. Find it with errors.As.
// Its message never contains a token or credential.
type RedeemError struct {
	// Status is the HTTP status of Lanyard's answer.
	Status int
	// Code is the "error": invalid_client or invalid_token (401);
	// access_denied, unauthorized_client or insufficient_scope (403);
	// needs_relink (409); temporarily_unavailable (502, 503). When the body
	// had none, it is temporarily_unavailable for 502, 503 and 504 and
	// server_error otherwise.
	Code string
	// Description is the "error_description", for people.
	Description string
	// Scope is, for insufficient_scope, the scope the tool needs.
	Scope string
}

func (e *RedeemError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "lanyard redeem: %d %s", e.Status, e.Code)
	if e.Description != "" {
		b.WriteString(": " + e.Description)
	}
	if e.Scope != "" {
		fmt.Fprintf(&b, " (scope %q)", e.Scope)
	}
	return b.String()
}

// Temporary reports whether trying again later may succeed.
func (e *RedeemError) Temporary() bool {
	return e.Code == CodeTemporarilyUnavailable || e.Status >= 500
}

// Challenge returns the WWW-Authenticate value (RFC 6750 §3) that the MCP
// server should send when the agent's client can fix the error by getting
// a new token: for invalid_token, Bearer resource_metadata="…",
// error="invalid_token", error_description="…"; for insufficient_scope,
// the same with error="insufficient_scope" and scope="…" (the scope
// Lanyard named). For every other error it returns "": the client cannot
// fix it by signing in again.
func (e *RedeemError) Challenge(resourceMetadataURL string) string {
	switch e.Code {
	case CodeInvalidToken:
		return Challenge(resourceMetadataURL, CodeInvalidToken, e.Description, "")
	case CodeInsufficientScope:
		return Challenge(resourceMetadataURL, CodeInsufficientScope, e.Description, e.Scope)
	}
	return ""
}

// ResourceStatus is the HTTP status the MCP server should answer with:
// 401 for invalid_token, 403 for insufficient_scope and the other
// refusals, 502 when Lanyard failed or refused the MCP server itself
// (invalid_client is the server's misconfiguration, not the agent's), 503
// when Lanyard is temporarily unavailable.
func (e *RedeemError) ResourceStatus() int {
	switch {
	case e.Code == CodeInvalidToken:
		return http.StatusUnauthorized
	case e.Code == CodeTemporarilyUnavailable:
		return http.StatusServiceUnavailable
	case e.Code == CodeInvalidClient || e.Status >= 500:
		return http.StatusBadGateway
	default:
		return http.StatusForbidden
	}
}

// Redeem asks Lanyard for the credential of connector that tok's grant
// gives this MCP server for calling tool, authenticating with
// Config.ClientID and ClientSecret. Lanyard's refusals are *RedeemError.
// tok must be one that c's Verify (or Middleware) returned; any other is
// refused with ErrUnverifiedToken, and what Verify checked (not the
// exported fields, which a caller may change) is what is sent and what
// the cache is keyed on.
//
// Answers are cached per grant, scopes, connector and tool (so that
// Lanyard's per-tool policy still decides every tool): a cached credential
// is served until CredentialExpirySkew before its own expiry and at most
// Config.MaxCredentialTTL after it was redeemed, and only for an unexpired
// token. An invalid_token or access_denied answer drops every cached
// credential of the grant (and Verify then refuses the grant's tokens
// issued until then); needs_relink drops those of the grant's connector.
// Concurrent identical redemptions with the same token share one request;
// a caller whose ctx ends stops waiting without cancelling it for the
// others. The returned Credential is the caller's own copy.
func (c *Client) Redeem(ctx context.Context, tok *Token, connector, tool string) (*Credential, error) {
	switch {
	case tok == nil || tok.Raw == "":
		return nil, errors.New("mcpauth: redeem: no token")
	case connector == "" || tool == "":
		return nil, errors.New("mcpauth: redeem: connector and tool are required")
	case c.cfg.ClientID == "":
		return nil, errors.New("mcpauth: redeem: Config.ClientID and ClientSecret are not set")
	case tok.verified == nil || tok.verified.client != c:
		// A Token's fields are exported and ContextWithToken takes any
		// Token: one built from unverified input must not reach the cache of
		// the grant it names.
		return nil, ErrUnverifiedToken
	}
	// Everything below comes from what Verify checked, not from the
	// exported fields, which the caller may have changed since.
	v := tok.verified
	key := credKey{grant: v.grant, scopes: v.scopes, connector: connector, tool: tool}
	now := c.cfg.Now()
	if now.Before(v.expiry) {
		if cred, ok := c.credentials.get(key, now); ok {
			return cred.clone(), nil
		}
	}
	gen := c.credentials.generation()
	flightKey := key.String() + "\x00" + tokenDigest(v.raw)
	ch := c.flight.DoChan(flightKey, func() (any, error) {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), redeemTimeout)
		defer cancel()
		cred, err := c.redeem(rctx, v.raw, connector, tool)
		var re *RedeemError
		switch {
		case err == nil && c.cfg.MaxCredentialTTL > 0:
			c.credentials.put(key, cred, gen, c.cfg.Now(), c.cfg.MaxCredentialTTL)
		case err == nil:
		case errors.As(err, &re) && re.Code == CodeInvalidToken:
			c.markRevoked(v.grant, v.expiry)
			c.credentials.dropGrant(v.grant, c.cfg.Now())
		case errors.As(err, &re) && re.Code == CodeAccessDenied:
			c.credentials.dropGrant(v.grant, c.cfg.Now())
		case errors.As(err, &re) && re.Code == CodeNeedsRelink:
			c.credentials.dropConnector(v.grant, connector, c.cfg.Now())
		}
		return cred, err
	})
	select {
	case <-ctx.Done():
		return nil, ctx.Err()
	case res := <-ch:
		if res.Err != nil {
			return nil, res.Err
		}
		return res.Val.(*Credential).clone(), nil
	}
}

// ErrUnverifiedToken is Redeem's refusal of a Token that this Client's
// Verify (or Middleware) did not return.
var ErrUnverifiedToken = errors.New("mcpauth: redeem: the token was not returned by this Client's Verify (or Middleware); build no Token by hand")

// tokenDigest is a SHA-256 of the raw token, to tell tokens apart without
// keeping them in keys.
func tokenDigest(raw string) string {
	sum := sha256.Sum256([]byte(raw))
	return string(sum[:])
}

func scopeKey(scopes []string) string {
	s := slices.Clone(scopes)
	slices.Sort(s)
	return strings.Join(slices.Compact(s), " ")
}

// redeem makes one request to the redemption endpoint.
func (c *Client) redeem(ctx context.Context, raw, connector, tool string) (*Credential, error) {
	body, _ := json.Marshal(map[string]string{"token": raw, "connector": connector, "tool": tool})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.redeemURL, bytes.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("mcpauth: redeem: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json")
	// RFC 6749 §2.3.1: the id and secret are form-urlencoded first.
	req.SetBasicAuth(url.QueryEscape(c.cfg.ClientID), url.QueryEscape(c.cfg.ClientSecret))
	resp, err := c.cfg.HTTPClient.Do(req)
	if err != nil {
		return nil, &RedeemError{Status: http.StatusBadGateway, Code: CodeTemporarilyUnavailable,
			Description: "cannot reach Lanyard: " + redactURLError(err)}
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, MaxResponseSize+1))
	if err != nil {
		return nil, &RedeemError{Status: http.StatusBadGateway, Code: CodeTemporarilyUnavailable, Description: "reading Lanyard's answer failed"}
	}
	if len(b) > MaxResponseSize {
		return nil, &RedeemError{Status: http.StatusBadGateway, Code: CodeServerError, Description: "Lanyard's answer is too large"}
	}
	if resp.StatusCode != http.StatusOK {
		return nil, redeemError(resp.StatusCode, b, raw)
	}
	var out struct {
		ConnectionID string          `json:"connection_id"`
		Connector    string          `json:"connector"`
		Type         string          `json:"type"`
		Credential   map[string]any  `json:"credential"`
		ExpiresAt    json.RawMessage `json:"expires_at"`
	}
	if err := json.Unmarshal(b, &out); err != nil || out.Credential == nil || out.ConnectionID == "" {
		return nil, &RedeemError{Status: http.StatusBadGateway, Code: CodeServerError, Description: "Lanyard's answer is not a credential"}
	}
	if out.Connector != connector {
		return nil, &RedeemError{Status: http.StatusBadGateway, Code: CodeServerError, Description: "Lanyard answered for another connector"}
	}
	exp, ok := parseTime(out.ExpiresAt)
	if !ok {
		return nil, &RedeemError{Status: http.StatusBadGateway, Code: CodeServerError, Description: "Lanyard's expires_at is not a time"}
	}
	return &Credential{ConnectionID: out.ConnectionID, Connector: out.Connector, Type: out.Type,
		Fields: out.Credential, ExpiresAt: exp}, nil
}

// redactURLError describes a transport error without the URL's query (the
// redemption URL has none, but a proxy error might quote more).
func redactURLError(err error) string {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err.Error()
	}
	return err.Error()
}

// parseTime reads expires_at: absent or null (zero), an RFC 3339 string,
// or seconds since the epoch.
func parseTime(raw json.RawMessage) (time.Time, bool) {
	s := strings.TrimSpace(string(raw))
	if s == "" || s == "null" || s == `""` {
		return time.Time{}, true
	}
	var t time.Time
	if err := json.Unmarshal(raw, &t); err == nil {
		return t, true
	}
	var n json.Number
	if err := json.Unmarshal(raw, &n); err == nil {
		if secs, err := n.Int64(); err == nil && secs > 0 {
			return time.Unix(secs, 0), true
		}
	}
	return time.Time{}, false
}

// redeemError builds the RedeemError of a non-200 answer.
func redeemError(status int, body []byte, raw string) *RedeemError {
	var e struct {
		Code        string `json:"error"`
		Description string `json:"error_description"`
		Scope       string `json:"scope"`
	}
	_ = json.Unmarshal(body, &e)
	re := &RedeemError{Status: status, Code: quotable(e.Code), Description: e.Description, Scope: quotable(e.Scope)}
	if re.Code == "" {
		switch status {
		case http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
			re.Code = CodeTemporarilyUnavailable
		default:
			re.Code = CodeServerError
		}
	}
	// Printable, short, and never the token even if Lanyard quoted it.
	d := strings.ReplaceAll(e.Description, raw, "[token]")
	d = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return -1
		}
		return r
	}, d)
	if len(d) > 300 {
		d = d[:300]
	}
	re.Description = d
	return re
}

// credKey is what a cached credential is for.
type credKey struct{ grant, scopes, connector, tool string }

func (k credKey) String() string {
	return k.grant + "\x00" + k.scopes + "\x00" + k.connector + "\x00" + k.tool
}

type credEntry struct {
	cred  *Credential
	until time.Time
}

// credCache holds redeemed credentials.
//
// A redemption must not put back what a drop removed while it was in
// flight, so every drop takes the next number of a counter and records it
// for its grant; a redemption reads the counter when it starts
// (generation) and put refuses its answer if its grant was dropped since.
// Drop records are kept for dropRetention and then pruned, so the map does
// not grow with every grant ever dropped; pruning raises floor to the
// newest pruned number, and put refuses any redemption that started before
// floor (for whichever grant: at worst an answer is not cached).
type credCache struct {
	mu        sync.Mutex
	entries   map[credKey]credEntry
	drops     map[string]dropRecord // grant → its latest drop
	seq       uint64                // number of the latest drop
	floor     uint64                // redemptions started before this are not cached
	lastPrune time.Time
	retention time.Duration
}

type dropRecord struct {
	seq uint64
	at  time.Time
}

// minDropRetention is the least time a drop record is kept: longer than a
// redemption can be in flight (redeemTimeout), so that floor rarely
// refuses an answer that would have been right to cache.
const minDropRetention = 2 * redeemTimeout

// init sets the cache up; maxTTL is Config.MaxCredentialTTL (a drop record
// is kept at least that long, and at least minDropRetention).
func (cc *credCache) init(maxTTL time.Duration) {
	cc.entries = map[credKey]credEntry{}
	cc.drops = map[string]dropRecord{}
	cc.retention = max(maxTTL, minDropRetention)
}

func (cc *credCache) get(k credKey, now time.Time) (*Credential, bool) {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	e, ok := cc.entries[k]
	if !ok {
		return nil, false
	}
	if !now.Before(e.until) {
		delete(cc.entries, k)
		return nil, false
	}
	return e.cred, true
}

// generation is the drop counter when a redemption starts.
func (cc *credCache) generation() uint64 {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	return cc.seq
}

// put caches cred until the earlier of its expiry less the skew and
// now+maxTTL, unless k's grant was dropped since gen was read.
func (cc *credCache) put(k credKey, cred *Credential, gen uint64, now time.Time, maxTTL time.Duration) {
	until := now.Add(maxTTL)
	if !cred.ExpiresAt.IsZero() {
		if exp := cred.ExpiresAt.Add(-CredentialExpirySkew); exp.Before(until) {
			until = exp
		}
	}
	if !now.Before(until) {
		return
	}
	cc.mu.Lock()
	defer cc.mu.Unlock()
	if d, ok := cc.drops[k.grant]; (ok && d.seq > gen) || gen < cc.floor {
		return
	}
	if len(cc.entries) >= maxCachedCredentials {
		for key, e := range cc.entries {
			if !now.Before(e.until) {
				delete(cc.entries, key)
			}
		}
		if len(cc.entries) >= maxCachedCredentials {
			return
		}
	}
	cc.entries[k] = credEntry{cred: cred, until: until}
}

// dropLocked records a drop of grant and prunes old drop records (at most
// once per half retention, so a stream of drops costs amortized O(1)).
func (cc *credCache) dropLocked(grant string, now time.Time) {
	cc.seq++
	cc.drops[grant] = dropRecord{seq: cc.seq, at: now}
	if now.Sub(cc.lastPrune) < cc.retention/2 {
		return
	}
	cc.lastPrune = now
	for g, d := range cc.drops {
		if now.Sub(d.at) > cc.retention {
			delete(cc.drops, g)
			cc.floor = max(cc.floor, d.seq)
		}
	}
}

func (cc *credCache) dropGrant(grant string, now time.Time) {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	cc.dropLocked(grant, now)
	for k := range cc.entries {
		if k.grant == grant {
			delete(cc.entries, k)
		}
	}
}

func (cc *credCache) dropConnector(grant, connector string, now time.Time) {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	cc.dropLocked(grant, now)
	for k := range cc.entries {
		if k.grant == grant && k.connector == connector {
			delete(cc.entries, k)
		}
	}
}

// dropRecords is how many drop records are kept (for tests).
func (cc *credCache) dropRecords() int {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	return len(cc.drops)
}

// Forget drops every cached credential of grant, e.g. when the MCP server
// learns by other means that it was revoked.
func (c *Client) Forget(grantID string) { c.credentials.dropGrant(grantID, c.cfg.Now()) }
