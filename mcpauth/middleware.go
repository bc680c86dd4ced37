package mcpauth

import (
	"encoding/json"
	"errors"
	"net/http"
	"strings"
)

// RFC 6750 §3.1 error codes.
const (
	CodeInvalidRequest    = "invalid_request"
	CodeInvalidToken      = "invalid_token"
	CodeInsufficientScope = "insufficient_scope"
)

// Middleware returns middleware that lets a request through only with a
// valid bearer token (see Verify) in its Authorization header that
// carries every one of requiredScopes; the handler finds the token with
// TokenFromContext. Otherwise it answers, with a JSON body
// {"error","error_description"} and Cache-Control: no-store:
//
//   - no bearer token: 401, WWW-Authenticate: Bearer
//     resource_metadata="…"[, scope="…"] (no error code, RFC 6750 §3.1);
//   - a bad token: 401, WWW-Authenticate: Bearer resource_metadata="…",
//     error="invalid_token", error_description="…";
//   - a good token without a required scope: 403, WWW-Authenticate: Bearer
//     resource_metadata="…", error="insufficient_scope", scope="…" (the
//     required scopes), error_description="…";
//   - more than one Authorization header: 400 invalid_request;
//   - Lanyard's keys cannot be fetched: 503 temporarily_unavailable.
//
// resource_metadata is MetadataURL.
func (c *Client) Middleware(requiredScopes ...string) func(http.Handler) http.Handler {
	scope := strings.Join(requiredScopes, " ")
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			tok, status, code, desc := c.authenticate(r, requiredScopes)
			if status != 0 {
				c.deny(w, status, code, desc, scope)
				return
			}
			next.ServeHTTP(w, r.WithContext(ContextWithToken(r.Context(), tok)))
		})
	}
}

// authenticate verifies the request's bearer token; status 0 means it is
// good and has the scopes.
func (c *Client) authenticate(r *http.Request, scopes []string) (_ *Token, status int, code, desc string) {
	hdrs := r.Header.Values("Authorization")
	if len(hdrs) > 1 {
		return nil, http.StatusBadRequest, CodeInvalidRequest, "more than one Authorization header"
	}
	raw, ok := bearer(r)
	if !ok {
		return nil, http.StatusUnauthorized, "", "no bearer token"
	}
	tok, err := c.Verify(r.Context(), raw)
	switch {
	case errors.Is(err, ErrInvalidToken):
		return nil, http.StatusUnauthorized, CodeInvalidToken, strings.TrimPrefix(err.Error(), ErrInvalidToken.Error()+": ")
	case err != nil:
		return nil, http.StatusServiceUnavailable, "temporarily_unavailable", "cannot check the token now"
	case !tok.HasScopes(scopes...):
		return nil, http.StatusForbidden, CodeInsufficientScope, "the token lacks a required scope"
	}
	return tok, 0, "", ""
}

// bearer returns the token of an "Authorization: Bearer <token>" header
// (scheme case-insensitive).
func bearer(r *http.Request) (string, bool) {
	scheme, raw, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	raw = strings.TrimLeft(raw, " ")
	return raw, raw != ""
}

// deny writes an error answer; scope is the space-separated scopes the
// resource needs.
func (c *Client) deny(w http.ResponseWriter, status int, code, desc, scope string) {
	h := w.Header()
	switch status {
	case http.StatusUnauthorized:
		if code == "" {
			h.Set("WWW-Authenticate", Challenge(c.metaURL, "", "", scope))
		} else {
			h.Set("WWW-Authenticate", Challenge(c.metaURL, code, desc, ""))
		}
	case http.StatusForbidden:
		h.Set("WWW-Authenticate", Challenge(c.metaURL, code, desc, scope))
	case http.StatusServiceUnavailable:
		h.Set("Retry-After", "5")
	}
	if code == "" {
		code = CodeInvalidToken // the body needs one; the challenge must not have one
	}
	writeJSONError(w, status, code, desc)
}

func writeJSONError(w http.ResponseWriter, status int, code, desc string) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]string{"error": code, "error_description": desc})
}

// Challenge returns an RFC 6750 §3 WWW-Authenticate value for a Bearer
// resource: Bearer resource_metadata="…", error="…",
// error_description="…", scope="…", each parameter present only when not
// empty. Characters that may not appear in these values (RFC 6750 §3:
// double quote, backslash, controls and non-ASCII) are dropped.
func Challenge(resourceMetadataURL, code, description, scope string) string {
	var params []string
	for _, p := range [][2]string{
		{"resource_metadata", resourceMetadataURL},
		{"error", code},
		{"error_description", description},
		{"scope", scope},
	} {
		if v := quotable(p[1]); v != "" {
			params = append(params, p[0]+`="`+v+`"`)
		}
	}
	if len(params) == 0 {
		return "Bearer"
	}
	return "Bearer " + strings.Join(params, ", ")
}

// quotable keeps the characters RFC 6750 allows in its quoted values:
// %x20-21 / %x23-5B / %x5D-7E.
func quotable(s string) string {
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r > 0x7e || r == '"' || r == '\\' {
			return -1
		}
		return r
	}, s)
}

// WriteError answers a request whose tool call failed with err from
// Verify or Redeem: a RedeemError that the agent's client can act on
// (invalid_token, insufficient_scope) becomes 401 or 403 with its
// challenge; other RedeemErrors 403 (refused) or 502 (Lanyard failed); a
// Verify error 401 or 503; anything else 500. The body never contains a
// token or credential.
func (c *Client) WriteError(w http.ResponseWriter, err error) {
	var re *RedeemError
	switch {
	case errors.As(err, &re):
		status := re.ResourceStatus()
		if ch := re.Challenge(c.metaURL); ch != "" {
			w.Header().Set("WWW-Authenticate", ch)
		}
		writeJSONError(w, status, re.Code, re.Description)
	case errors.Is(err, ErrInvalidToken):
		c.deny(w, http.StatusUnauthorized, CodeInvalidToken, strings.TrimPrefix(err.Error(), ErrInvalidToken.Error()+": "), "")
	case errors.Is(err, ErrUnavailable):
		c.deny(w, http.StatusServiceUnavailable, "temporarily_unavailable", "cannot check the token now", "")
	default:
		writeJSONError(w, http.StatusInternalServerError, "server_error", "internal error")
	}
}
