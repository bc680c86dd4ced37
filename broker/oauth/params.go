package oauth

import (
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"strings"
	"unicode/utf8"
)

// MaxFormBytes caps form bodies of OAuth endpoints.
const MaxFormBytes = 64 << 10

// Params are the parameters of one OAuth request: every name appears once
// and has a non-empty value (RFC 6749 §3.1: parameters without a value are
// treated as omitted; parameters must not be included more than once).
type Params map[string]string

// Get returns the value of name, or "".
func (p Params) Get(name string) string { return p[name] }

// Has reports whether name is present.
func (p Params) Has(name string) bool { _, ok := p[name]; return ok }

// ParseQuery parses the query string of r (the authorization endpoint).
func ParseQuery(r *http.Request) (Params, error) {
	if len(r.URL.RawQuery) > MaxFormBytes {
		return nil, ErrInvalidRequest.WithDescription("query string too large")
	}
	v, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		return nil, ErrInvalidRequest.WithDescription("malformed query string")
	}
	return fromValues(v)
}

// ParseForm parses an application/x-www-form-urlencoded POST body capped at
// MaxFormBytes. Parameters in the query string of a POST are rejected, so a
// value cannot come from two places.
func ParseForm(w http.ResponseWriter, r *http.Request) (Params, error) {
	if r.Method != http.MethodPost {
		return nil, ErrInvalidRequest.WithDescription("method must be POST").WithStatus(http.StatusMethodNotAllowed)
	}
	mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || mt != "application/x-www-form-urlencoded" {
		return nil, ErrInvalidRequest.WithDescription("content type must be application/x-www-form-urlencoded")
	}
	if r.URL.RawQuery != "" {
		return nil, ErrInvalidRequest.WithDescription("parameters must be sent in the body, not the query string")
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxFormBytes))
	if err != nil {
		return nil, ErrInvalidRequest.WithDescription("request body too large or unreadable").WithStatus(http.StatusRequestEntityTooLarge)
	}
	v, err := url.ParseQuery(string(body))
	if err != nil {
		return nil, ErrInvalidRequest.WithDescription("malformed form body")
	}
	return fromValues(v)
}

func fromValues(v url.Values) (Params, error) {
	p := make(Params, len(v))
	for name, vals := range v {
		var nonEmpty []string
		for _, s := range vals {
			if s != "" {
				nonEmpty = append(nonEmpty, s)
			}
		}
		switch {
		case len(vals) > 1:
			return nil, ErrInvalidRequest.WithDescription(fmt.Sprintf("parameter %q is repeated", Printable(name)))
		case len(nonEmpty) == 0:
			continue
		}
		if !utf8.ValidString(nonEmpty[0]) || strings.ContainsRune(nonEmpty[0], 0) {
			return nil, ErrInvalidRequest.WithDescription(fmt.Sprintf("parameter %q is not valid text", Printable(name)))
		}
		p[name] = nonEmpty[0]
	}
	return p, nil
}

// Printable bounds and sanitises client-supplied text (a parameter name, a
// scope) for an error description.
func Printable(s string) string {
	if len(s) > 40 {
		s = s[:40]
	}
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f || r == utf8.RuneError {
			return '?'
		}
		return r
	}, s)
}

// Scopes splits a space-delimited scope parameter, dropping duplicates.
func Scopes(s string) []string {
	var out []string
	seen := map[string]bool{}
	for _, f := range strings.Split(s, " ") {
		if f != "" && !seen[f] {
			seen[f] = true
			out = append(out, f)
		}
	}
	return out
}
