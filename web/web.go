// Package web is the part of Lanyard a person sees: sign-in, the consent
// screen that shows which linked accounts an agent will reach, device code
// entry, and the home page. Pages are server-rendered html/template with
// templates and static files embedded; there is no JavaScript.
//
// Every page carries a strict Content-Security-Policy (frame-ancestors
// 'none'), X-Frame-Options: DENY, Referrer-Policy: no-referrer and
// nosniff. Forms are protected against CSRF twice: the standard library's
// http.CrossOriginProtection (Fetch metadata) and a token bound to a
// __Host- cookie. This is the one place that writes HTML errors.
package web

import (
	"bytes"
	"embed"
	"html/template"
	"io/fs"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/lanyardhq/lanyard/broker"
	"github.com/lanyardhq/lanyard/broker/authserver"
	"github.com/lanyardhq/lanyard/broker/links"
	"github.com/lanyardhq/lanyard/internal/httpx"
)

//go:embed templates/*.html
var templateFS embed.FS

//go:embed static
var staticFS embed.FS

// Mounter is where routes go (internal/server implements it).
type Mounter interface {
	Handle(path string, h http.Handler, methods ...string)
}

// Options configures the UI.
type Options struct {
	Store broker.Store
	Auth  *authserver.Server
	// Links manages linked upstream accounts; nil hides those pages.
	Links *links.Service
	// Secure: cookies are Secure with the __Host- prefix. False only for
	// plain-http loopback dev mode.
	Secure bool
	// Key authenticates CSRF tokens (at least 32 bytes; shared by replicas).
	Key        []byte
	SessionTTL time.Duration
	// VerifyPassword checks a password against a stored hash.
	VerifyPassword func(hash string, password broker.SecretString) error
	// LoginRate is the sign-in attempts allowed per client IP (per /64
	// for IPv6) per minute, counted in Store.Counters() so that the limit
	// holds across every replica; 0 means 10.
	LoginRate int
	Now       func() time.Time
	Logger    *slog.Logger
}

// UI serves the pages.
type UI struct {
	o    Options
	tmpl map[string]*template.Template
	cop  *http.CrossOriginProtection
}

// New parses the templates and returns the UI.
func New(o Options) (*UI, error) {
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.LoginRate <= 0 {
		o.LoginRate = 10
	}
	if o.SessionTTL <= 0 {
		o.SessionTTL = 12 * time.Hour
	}
	u := &UI{o: o, tmpl: map[string]*template.Template{}, cop: http.NewCrossOriginProtection()}
	funcs := template.FuncMap{"usercode": authserver.FormatUserCode, "join": strings.Join, "connectorName": u.connectorName}
	for _, page := range []string{"login", "consent", "device", "device_confirm", "home", "error", "done", "accounts", "link", "unlink"} {
		t, err := template.New("layout.html").Funcs(funcs).ParseFS(templateFS, "templates/layout.html", "templates/"+page+".html")
		if err != nil {
			return nil, err
		}
		u.tmpl[page] = t
	}
	return u, nil
}

// Mount adds the pages. State-changing routes are POST only and wrapped by
// the cross-origin check.
func (u *UI) Mount(m Mounter) {
	static, _ := fs.Sub(staticFS, "static")
	m.Handle("/static/{file}", http.StripPrefix("/static/", http.FileServerFS(static)), http.MethodGet)
	m.Handle("/", u.page(u.home), http.MethodGet)
	m.Handle("/login", u.page(u.loginForm), http.MethodGet)
	m.Handle("/login", u.post(u.login), http.MethodPost)
	m.Handle("/logout", u.post(u.logout), http.MethodPost)
	m.Handle(authserver.PathConsent, u.page(u.consentForm), http.MethodGet)
	m.Handle(authserver.PathConsent, u.post(u.consent), http.MethodPost)
	m.Handle(authserver.PathDevice, u.page(u.deviceForm), http.MethodGet)
	m.Handle(authserver.PathDevice, u.post(u.device), http.MethodPost)
	m.Handle(authserver.PathDevice+"/decide", u.post(u.deviceDecide), http.MethodPost)
	m.Handle("/grants/revoke", u.post(u.revokeGrant), http.MethodPost)
	u.mountAccounts(m)
}

// pageFunc handles a page; it returns an error to show instead.
type pageFunc func(w http.ResponseWriter, r *http.Request) error

// page adapts a GET handler: security headers first, errors rendered once.
func (u *UI) page(h pageFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		securityHeaders(w, "")
		if err := h(w, r); err != nil {
			u.fail(w, r, err)
		}
	})
}

// post adapts a form POST: cross-origin requests are refused before the
// handler runs, and the form's CSRF token must match the browser's cookie.
func (u *UI) post(h pageFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		securityHeaders(w, "")
		if err := u.cop.Check(r); err != nil {
			u.fail(w, r, userError(http.StatusForbidden, "Request refused", "This form was sent from another site."))
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, 16<<10)
		if err := r.ParseForm(); err != nil {
			u.fail(w, r, userError(http.StatusBadRequest, "Bad request", "The form could not be read."))
			return
		}
		if !u.checkCSRF(r) {
			u.fail(w, r, userError(http.StatusForbidden, "Request refused", "The form expired or was not sent by this page. Go back, reload and try again."))
			return
		}
		if err := h(w, r); err != nil {
			u.fail(w, r, err)
		}
	})
}

// securityHeaders sets the headers every HTML response carries.
// formAction adds a source to CSP form-action: a form whose answer redirects
// to the client (consent) must allow the client's origin, or the browser
// blocks the redirect.
func securityHeaders(w http.ResponseWriter, formAction string) {
	h := w.Header()
	fa := "'self'"
	if formAction != "" {
		fa += " " + formAction
	}
	h.Set("Content-Security-Policy", "default-src 'none'; style-src 'self'; img-src 'self'; form-action "+fa+
		"; frame-ancestors 'none'; base-uri 'none'")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Cache-Control", "no-store")
	h.Set("Cross-Origin-Opener-Policy", "same-origin")
}

// cspSource is the CSP source expression for a redirect URI's origin:
// scheme://host[:port] for http(s), "scheme:" for a private-use scheme.
func cspSource(redirectURI string) string {
	ru, err := url.Parse(redirectURI)
	if err != nil || ru.Scheme == "" {
		return ""
	}
	if ru.Scheme == "http" || ru.Scheme == "https" {
		return ru.Scheme + "://" + ru.Host
	}
	return ru.Scheme + ":"
}

// pageError is an error page: what the user may read, and a cause to log.
type pageError struct {
	status        int
	title, detail string
	cause         error
}

func (e *pageError) Error() string {
	if e.cause != nil {
		return e.title + ": " + e.cause.Error()
	}
	return e.title
}

func userError(status int, title, detail string) error {
	return &pageError{status: status, title: title, detail: detail}
}

// fail renders an error page; anything that is not a *pageError is a 500
// whose cause is logged only.
func (u *UI) fail(w http.ResponseWriter, r *http.Request, err error) {
	pe, ok := err.(*pageError)
	if !ok {
		pe = &pageError{status: http.StatusInternalServerError, title: "Something went wrong",
			detail: "Lanyard could not complete this request. Try again later.", cause: err}
	}
	lvl := slog.LevelInfo
	if pe.status >= 500 {
		lvl = slog.LevelError
	}
	httpx.Logger(r.Context()).Log(r.Context(), lvl, "page error", "status", pe.status, "title", pe.title, "err", err)
	u.ShowError(w, r, pe.status, pe.title, pe.detail)
}

// ShowError renders the error page (authserver.Options.ShowError).
func (u *UI) ShowError(w http.ResponseWriter, r *http.Request, status int, title, detail string) {
	securityHeaders(w, "")
	u.render(w, r, status, "error", map[string]any{"Title": title, "Detail": detail})
}

// render executes a page into a buffer first, so a template error never
// sends half a page.
func (u *UI) render(w http.ResponseWriter, r *http.Request, status int, page string, data map[string]any) {
	switch page {
	case "accounts", "link", "unlink":
		data["Nav"] = "accounts"
	case "home":
		data["Nav"] = "agents"
	default:
		data["Nav"] = ""
	}
	var buf bytes.Buffer
	if err := u.tmpl[page].Execute(&buf, data); err != nil {
		httpx.Logger(r.Context()).Error("render page", "page", page, "err", err)
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	_, _ = w.Write(buf.Bytes())
}
