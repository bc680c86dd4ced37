package web

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"slices"
	"strings"

	"github.com/lanyardhq/lanyard/broker"
	"github.com/lanyardhq/lanyard/broker/links"
	"github.com/lanyardhq/lanyard/connectors"
)

// Paths of the linked-accounts pages.
const (
	PathAccounts = "/accounts"
	PathCallback = "/accounts/callback" // + "/" + connector: upstream OAuth redirect URIs
)

func (u *UI) mountAccounts(m Mounter) {
	if u.o.Links == nil {
		return
	}
	m.Handle(PathAccounts, u.page(u.accounts), http.MethodGet)
	m.Handle(PathAccounts+"/link", u.page(u.linkForm), http.MethodGet)
	m.Handle(PathAccounts+"/link", u.post(u.link), http.MethodPost)
	m.Handle(PathAccounts+"/start", u.post(u.linkStart), http.MethodPost)
	m.Handle(PathCallback+"/{connector}", u.page(u.linkCallback), http.MethodGet)
	m.Handle(PathAccounts+"/verify", u.post(u.verify), http.MethodPost)
	m.Handle(PathAccounts+"/unlink", u.page(u.unlinkConfirm), http.MethodGet)
	m.Handle(PathAccounts+"/unlink", u.post(u.unlink), http.MethodPost)
}

// redirectOrigins are the upstream origins that a form on the accounts page
// may lead to (CSP form-action): starting an OAuth link answers the POST
// with a redirect to the provider.
func (u *UI) redirectOrigins(ctx context.Context) string {
	var out []string
	for _, c := range u.o.Links.Connectors() {
		rl, ok := c.(connectors.RedirectLinker)
		if !ok {
			continue
		}
		au, err := rl.AuthURL(ctx, connectors.LinkState{State: "x", Verifier: strings.Repeat("x", 43),
			RedirectURI: u.o.Links.CallbackURL(c.Name())})
		if err != nil {
			continue
		}
		if src := cspSource(au); src != "" && !slices.Contains(out, src) {
			out = append(out, src)
		}
	}
	return strings.Join(out, " ")
}

type connectorView struct {
	Name, DisplayName, Kind string
	Redirect                bool
}

func (u *UI) connectorViews() []connectorView {
	var out []connectorView
	for _, c := range u.o.Links.Connectors() {
		_, redirect := c.(connectors.RedirectLinker)
		out = append(out, connectorView{Name: c.Name(), DisplayName: c.DisplayName(), Kind: c.Kind(), Redirect: redirect})
	}
	return out
}

func (u *UI) accounts(w http.ResponseWriter, r *http.Request) error {
	user, ok, err := u.requireUser(w, r, url.Values{"next": {"accounts"}})
	if err != nil || !ok {
		return err
	}
	conns, err := u.o.Links.List(r.Context(), user.ID)
	if err != nil {
		return err
	}
	securityHeaders(w, u.redirectOrigins(r.Context()))
	u.render(w, r, http.StatusOK, "accounts", map[string]any{
		"User": user, "CSRF": u.csrfToken(w, r), "Connections": conns,
		"Connectors": u.connectorViews(), "Notice": notice(r.URL.Query().Get("done")),
	})
	return nil
}

// notice maps a fixed code from a redirect to a message (never free text
// from the URL).
func notice(code string) string {
	switch code {
	case "linked":
		return "Account linked."
	case "unlinked":
		return "Account unlinked. Its secret was deleted."
	case "verified":
		return "Checked: the account works."
	case "broken":
		return "Checked: the account no longer works. Link it again."
	}
	return ""
}

func (u *UI) linkForm(w http.ResponseWriter, r *http.Request) error {
	user, ok, err := u.requireUser(w, r, url.Values{"next": {"accounts"}})
	if err != nil || !ok {
		return err
	}
	return u.renderLinkForm(w, r, user, http.StatusOK, "")
}

func (u *UI) renderLinkForm(w http.ResponseWriter, r *http.Request, user broker.User, status int, problem string) error {
	name, relink := r.FormValue("connector"), r.FormValue("relink")
	c, err := u.o.Links.Connector(name)
	if err != nil {
		return userError(http.StatusNotFound, "Unknown service", "There is no such service to link.")
	}
	fl, ok := c.(connectors.FormLinker)
	if !ok {
		return userError(http.StatusBadRequest, "Not a form", "This service is linked by signing in to it.")
	}
	type fieldView struct {
		connectors.Field
		Value string
	}
	var fields []fieldView
	for _, f := range fl.Fields() {
		fv := fieldView{Field: f}
		if !f.Secret {
			fv.Value = r.PostFormValue(f.Name) // never echo a secret field
		}
		fields = append(fields, fv)
	}
	u.render(w, r, status, "link", map[string]any{"User": user, "CSRF": u.csrfToken(w, r), "Connector": connectorView{
		Name: c.Name(), DisplayName: c.DisplayName(), Kind: c.Kind()}, "Fields": fields, "Relink": relink, "Problem": problem})
	return nil
}

func (u *UI) link(w http.ResponseWriter, r *http.Request) error {
	user, ok, err := u.requireUser(w, r, url.Values{"next": {"accounts"}})
	if err != nil || !ok {
		return err
	}
	c, err := u.o.Links.Connector(r.PostFormValue("connector"))
	if err != nil {
		return userError(http.StatusNotFound, "Unknown service", "There is no such service to link.")
	}
	fl, ok := c.(connectors.FormLinker)
	if !ok {
		return userError(http.StatusBadRequest, "Not a form", "This service is linked by signing in to it.")
	}
	in := connectors.Input{}
	for _, f := range fl.Fields() {
		if v := r.PostFormValue(f.Name); v != "" {
			in[f.Name] = broker.SecretString(v)
		}
	}
	_, err = u.o.Links.LinkForm(r.Context(), user.ID, c.Name(), r.PostFormValue("relink"), in)
	switch {
	case err == nil:
		http.Redirect(w, r, PathAccounts+"?done=linked", http.StatusSeeOther)
		return nil
	case errors.Is(err, connectors.ErrRejected):
		return u.renderLinkForm(w, r, user, http.StatusBadRequest,
			"The service refused these credentials. Check them and try again. Nothing was saved.")
	case errors.Is(err, broker.ErrInvalid):
		return u.renderLinkForm(w, r, user, http.StatusBadRequest, "Some of the input is missing or not allowed. Nothing was saved.")
	case errors.Is(err, connectors.ErrUpstream):
		return u.renderLinkForm(w, r, user, http.StatusBadGateway, "The service could not be reached. Try again later. Nothing was saved.")
	case errors.Is(err, broker.ErrNotFound):
		return userError(http.StatusNotFound, "Not found", "There is no such linked account.")
	}
	return err
}

func (u *UI) linkStart(w http.ResponseWriter, r *http.Request) error {
	user, sess, ok, err := u.currentUser(r.Context(), r)
	if err != nil {
		return err
	}
	if !ok {
		http.Redirect(w, r, "/login", http.StatusSeeOther)
		return nil
	}
	target, err := u.o.Links.BeginLink(r.Context(), user.ID, sess.ID, r.PostFormValue("connector"), r.PostFormValue("relink"))
	if errors.Is(err, links.ErrUnknownConnector) || errors.Is(err, broker.ErrInvalid) || errors.Is(err, broker.ErrNotFound) {
		return userError(http.StatusBadRequest, "Cannot link", "This service cannot be linked this way.")
	}
	if err != nil {
		return err
	}
	http.Redirect(w, r, target, http.StatusSeeOther)
	return nil
}

func (u *UI) linkCallback(w http.ResponseWriter, r *http.Request) error {
	user, sess, ok, err := u.currentUser(r.Context(), r)
	if err != nil {
		return err
	}
	if !ok {
		return userError(http.StatusUnauthorized, "Signed out", "Your session ended while you were away. Sign in and link the account again.")
	}
	name := strings.TrimPrefix(r.URL.Path, PathCallback+"/")
	_, err = u.o.Links.CompleteLink(r.Context(), user.ID, sess.ID, name, r.URL.Query())
	switch {
	case err == nil:
		http.Redirect(w, r, PathAccounts+"?done=linked", http.StatusSeeOther)
		return nil
	case errors.Is(err, links.ErrLinkExpired):
		return userError(http.StatusBadRequest, "Link expired", links.ErrLinkExpired.Error())
	case errors.Is(err, connectors.ErrRejected):
		return userError(http.StatusBadRequest, "Not linked", "The service did not grant access. Nothing was saved.")
	case errors.Is(err, connectors.ErrUpstream):
		return userError(http.StatusBadGateway, "Not linked", "The service could not be reached. Nothing was saved.")
	}
	return err
}

func (u *UI) verify(w http.ResponseWriter, r *http.Request) error {
	user, ok, err := u.requireUser(w, r, url.Values{"next": {"accounts"}})
	if err != nil || !ok {
		return err
	}
	conn, err := u.o.Links.Verify(r.Context(), user.ID, r.PostFormValue("connection"))
	switch {
	case errors.Is(err, broker.ErrNotFound):
		return userError(http.StatusNotFound, "Not found", "There is no such linked account.")
	case errors.Is(err, connectors.ErrUpstream):
		return userError(http.StatusBadGateway, "Check failed", "The service could not be reached. The account was left as it was.")
	case err != nil:
		return err
	}
	done := "verified"
	if conn.Status != broker.ConnectionActive {
		done = "broken"
	}
	http.Redirect(w, r, PathAccounts+"?done="+done, http.StatusSeeOther)
	return nil
}

func (u *UI) unlink(w http.ResponseWriter, r *http.Request) error {
	user, ok, err := u.requireUser(w, r, url.Values{"next": {"accounts"}})
	if err != nil || !ok {
		return err
	}
	err = u.o.Links.Unlink(r.Context(), user.ID, r.PostFormValue("connection"))
	if errors.Is(err, broker.ErrNotFound) {
		return userError(http.StatusNotFound, "Not found", "There is no such linked account.")
	}
	if err != nil {
		return err
	}
	http.Redirect(w, r, PathAccounts+"?done=unlinked", http.StatusSeeOther)
	return nil
}

// unlinkConfirm asks before an account is unlinked: the secret is deleted
// and agents lose access to it at once.
func (u *UI) unlinkConfirm(w http.ResponseWriter, r *http.Request) error {
	user, ok, err := u.requireUser(w, r, url.Values{"next": {"accounts"}})
	if err != nil || !ok {
		return err
	}
	conn, err := u.o.Links.Get(r.Context(), user.ID, r.URL.Query().Get("connection"))
	if errors.Is(err, broker.ErrNotFound) {
		return userError(http.StatusNotFound, "Not found", "There is no such linked account.")
	}
	if err != nil {
		return err
	}
	name := conn.Connector
	if c, err := u.o.Links.Connector(conn.Connector); err == nil {
		name = c.DisplayName()
	}
	u.render(w, r, http.StatusOK, "unlink", map[string]any{"User": user, "CSRF": u.csrfToken(w, r), "Conn": conn, "Name": name})
	return nil
}
