package oauth

import (
	"encoding/json"
	"errors"
	"net/http"
)

// Error is an OAuth error response. Values are prototypes: With* return a
// copy, so the package-level errors are never modified. errors.Is matches two
// Errors by Code.
type Error struct {
	Code        string
	Description string // safe for the client to see
	Status      int
	cause       error // logged, never sent
}

// The errors of RFC 6749, 7009, 7591, 8628, 8693, 8707 and 6750.
var (
	ErrInvalidRequest          = &Error{Code: "invalid_request", Status: http.StatusBadRequest}
	ErrInvalidClient           = &Error{Code: "invalid_client", Status: http.StatusUnauthorized}
	ErrInvalidGrant            = &Error{Code: "invalid_grant", Status: http.StatusBadRequest}
	ErrUnauthorizedClient      = &Error{Code: "unauthorized_client", Status: http.StatusBadRequest}
	ErrUnsupportedGrantType    = &Error{Code: "unsupported_grant_type", Status: http.StatusBadRequest}
	ErrUnsupportedResponseType = &Error{Code: "unsupported_response_type", Status: http.StatusBadRequest}
	ErrInvalidScope            = &Error{Code: "invalid_scope", Status: http.StatusBadRequest}
	ErrInvalidTarget           = &Error{Code: "invalid_target", Status: http.StatusBadRequest}
	ErrAccessDenied            = &Error{Code: "access_denied", Status: http.StatusForbidden}
	ErrServerError             = &Error{Code: "server_error", Status: http.StatusInternalServerError}
	ErrTemporarilyUnavailable  = &Error{Code: "temporarily_unavailable", Status: http.StatusServiceUnavailable}
	ErrUnsupportedTokenType    = &Error{Code: "unsupported_token_type", Status: http.StatusBadRequest}
	ErrInvalidRedirectURI      = &Error{Code: "invalid_redirect_uri", Status: http.StatusBadRequest}
	ErrInvalidClientMetadata   = &Error{Code: "invalid_client_metadata", Status: http.StatusBadRequest}
	ErrAuthorizationPending    = &Error{Code: "authorization_pending", Status: http.StatusBadRequest}
	ErrSlowDown                = &Error{Code: "slow_down", Status: http.StatusBadRequest}
	ErrExpiredToken            = &Error{Code: "expired_token", Status: http.StatusBadRequest}
	ErrInvalidToken            = &Error{Code: "invalid_token", Status: http.StatusUnauthorized}
	ErrInsufficientScope       = &Error{Code: "insufficient_scope", Status: http.StatusForbidden}
	ErrTooManyRequests         = &Error{Code: "too_many_requests", Status: http.StatusTooManyRequests}
)

func (e *Error) Error() string {
	s := e.Code
	if e.Description != "" {
		s += ": " + e.Description
	}
	if e.cause != nil {
		s += ": " + e.cause.Error()
	}
	return s
}

// Unwrap returns the logged cause.
func (e *Error) Unwrap() error { return e.cause }

// Is matches another *Error with the same Code.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Code == e.Code
}

// WithDescription returns a copy with a client-visible description.
func (e *Error) WithDescription(d string) *Error {
	c := *e
	c.Description = d
	return &c
}

// WithCause returns a copy carrying cause for the log only.
func (e *Error) WithCause(cause error) *Error {
	c := *e
	c.cause = cause
	return &c
}

// WithStatus returns a copy with another HTTP status.
func (e *Error) WithStatus(status int) *Error {
	c := *e
	c.Status = status
	return &c
}

// As returns err as an *Error; anything else becomes server_error with err
// as its cause.
func As(err error) *Error {
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	return ErrServerError.WithDescription("internal error").WithCause(err)
}

// WriteError writes err as an RFC 6749 §5.2 JSON error response with
// Cache-Control: no-store. An invalid_client answer to a request that used
// HTTP Basic authentication carries WWW-Authenticate: Basic (RFC 6749 §5.2).
func WriteError(w http.ResponseWriter, r *http.Request, err error) {
	e := As(err)
	if e.Code == ErrInvalidClient.Code && r != nil {
		if _, _, ok := r.BasicAuth(); ok {
			w.Header().Set("WWW-Authenticate", `Basic realm="lanyard", charset="UTF-8"`)
		}
	}
	body := map[string]string{"error": e.Code}
	if e.Description != "" {
		body["error_description"] = e.Description
	}
	WriteJSON(w, e.Status, body)
}

// WriteJSON writes v as JSON with the headers every token-bearing response
// needs: Cache-Control: no-store and Pragma: no-cache.
func WriteJSON(w http.ResponseWriter, status int, v any) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	h.Set("Pragma", "no-cache")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
