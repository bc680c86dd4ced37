package web

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"slices"
	"time"

	"github.com/lanyardhq/lanyard/broker"
	"github.com/lanyardhq/lanyard/broker/authserver"
	"github.com/lanyardhq/lanyard/broker/oauth"
	"github.com/lanyardhq/lanyard/internal/httpx"
)

// Sign-in lockout: after maxFailures wrong passwords a user is locked for
// lockout, whatever address the attempts come from.
const (
	maxFailures     = 5
	lockout         = 15 * time.Minute
	maxBadUserCodes = 5
)

// dummyHash keeps a sign-in for an unknown user as slow as for a known one.
const dummyHash = "$2a$12$4HMtyE7rW1JNcbDLVk4I8e1YMRHFU9Pq1rAZjyOr0DpRQ4KgLwacy" // bcrypt of a fixed string, cost 12

// afterLogin is where a signed-in browser goes next. Only targets built
// here are possible, never a URL from the request (no open redirect).
func afterLogin(r *http.Request) string {
	if req := r.FormValue("req"); req != "" {
		return authserver.PathConsent + "?" + url.Values{"req": {req}}.Encode()
	}
	if r.FormValue("next") == "accounts" {
		return PathAccounts
	}
	if r.FormValue("next") == "device" {
		q := url.Values{}
		if uc := r.FormValue("user_code"); uc != "" {
			q.Set("user_code", uc)
		}
		return authserver.PathDevice + "?" + q.Encode()
	}
	return "/"
}

func (u *UI) home(w http.ResponseWriter, r *http.Request) error {
	if r.URL.Path != "/" {
		return userError(http.StatusNotFound, "Not found", "There is no such page.")
	}
	user, _, ok, err := u.currentUser(r.Context(), r)
	if err != nil {
		return err
	}
	if !ok {
		http.Redirect(w, r, "/login", http.StatusSeeOther)
		return nil
	}
	agents, err := u.agents(r, user)
	if err != nil {
		return err
	}
	u.render(w, r, http.StatusOK, "home", map[string]any{"User": user, "Agents": agents, "CSRF": u.csrfToken(w, r)})
	return nil
}

func (u *UI) loginForm(w http.ResponseWriter, r *http.Request) error {
	if _, _, ok, err := u.currentUser(r.Context(), r); err != nil {
		return err
	} else if ok {
		http.Redirect(w, r, afterLogin(r), http.StatusSeeOther)
		return nil
	}
	u.renderLogin(w, r, http.StatusOK, "")
	return nil
}

func (u *UI) renderLogin(w http.ResponseWriter, r *http.Request, status int, problem string) {
	data := map[string]any{
		"CSRF": u.csrfToken(w, r), "Req": r.FormValue("req"), "Next": r.FormValue("next"),
		"UserCode": r.FormValue("user_code"), "Problem": problem, "Username": r.PostFormValue("username"),
	}
	// A pending request may end in a redirect to the client straight after
	// sign-in (pre-approved), so the form may lead there.
	if req := r.FormValue("req"); req != "" {
		if ar, err := u.o.Store.AuthRequests().Get(r.Context(), req); err == nil {
			securityHeaders(w, cspSource(ar.RedirectURI))
			data["Pending"] = true
		}
	}
	u.render(w, r, status, "login", data)
}

func (u *UI) login(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	if ok, err := u.allowSignIn(ctx, r.RemoteAddr); err != nil {
		return err
	} else if !ok {
		u.renderLogin(w, r, http.StatusTooManyRequests, "Too many sign-in attempts from your address. Wait a minute and try again.")
		return nil
	}
	name, pass := r.PostFormValue("username"), broker.SecretString(r.PostFormValue("password"))
	user, err := u.o.Store.Users().GetBy(ctx, broker.IndexUsername, name)
	if errors.Is(err, broker.ErrNotFound) || broker.ValidateUsername(name) != nil {
		_ = u.o.VerifyPassword(dummyHash, pass)
		u.renderLogin(w, r, http.StatusUnauthorized, "Wrong user name or password.")
		return nil
	}
	if err != nil {
		return err
	}
	now := u.o.Now()
	if user.LockedUntil.After(now) {
		u.renderLogin(w, r, http.StatusTooManyRequests, "Too many wrong passwords. This account is locked for a few minutes.")
		return nil
	}
	if user.Disabled || u.o.VerifyPassword(user.PasswordHash, pass) != nil {
		_, uerr := u.o.Store.Users().Update(ctx, user.ID, func(x broker.User) (broker.User, error) {
			x.FailedLogins++
			if x.FailedLogins >= maxFailures {
				x.FailedLogins, x.LockedUntil = 0, now.Add(lockout)
			}
			return x, nil
		})
		u.o.Logger.InfoContext(ctx, "sign-in failed", "user", user.ID, "err", uerr)
		u.audit(ctx, broker.AuditEvent{Action: broker.AuditLogin, Outcome: broker.OutcomeDenied, UserID: user.ID, Reason: "wrong password or disabled"})
		u.renderLogin(w, r, http.StatusUnauthorized, "Wrong user name or password.")
		return nil
	}
	if user.FailedLogins > 0 {
		if _, err := u.o.Store.Users().Update(ctx, user.ID, func(x broker.User) (broker.User, error) {
			x.FailedLogins = 0
			return x, nil
		}); err != nil {
			return err
		}
	}
	if err := u.startSession(ctx, w, r, user); err != nil {
		return err
	}
	u.o.Logger.InfoContext(ctx, "signed in", "user", user.ID)
	u.audit(ctx, broker.AuditEvent{Action: broker.AuditLogin, Outcome: broker.OutcomeOK, UserID: user.ID})
	http.Redirect(w, r, afterLogin(r), http.StatusSeeOther)
	return nil
}

func (u *UI) logout(w http.ResponseWriter, r *http.Request) error {
	if c, err := r.Cookie(u.cookieName("session")); err == nil && c.Value != "" {
		if err := u.o.Store.Sessions().Delete(r.Context(), broker.HashSecret(c.Value)); err != nil && !errors.Is(err, broker.ErrNotFound) {
			return err
		}
	}
	u.clearCookie(w, "session")
	http.Redirect(w, r, "/login", http.StatusSeeOther)
	return nil
}

// requireUser sends a browser that is not signed in to the sign-in page,
// carrying only the known continuation fields.
func (u *UI) requireUser(w http.ResponseWriter, r *http.Request, cont url.Values) (broker.User, bool, error) {
	user, _, ok, err := u.currentUser(r.Context(), r)
	if err != nil || ok {
		return user, ok, err
	}
	http.Redirect(w, r, "/login?"+cont.Encode(), http.StatusSeeOther)
	return user, false, nil
}

var errGone = userError(http.StatusBadRequest, "Request expired", authserver.ErrRequestGone.Error())

func (u *UI) consentForm(w http.ResponseWriter, r *http.Request) error {
	req := r.URL.Query().Get("req")
	if req == "" {
		return errGone
	}
	user, ok, err := u.requireUser(w, r, url.Values{"req": {req}})
	if err != nil || !ok {
		return err
	}
	pd, err := u.o.Auth.Pending(r.Context(), req, user)
	if errors.Is(err, authserver.ErrRequestGone) {
		return errGone
	}
	if err != nil {
		return err
	}
	if pd.PreApproved {
		return u.decide(w, r, req, user, authserver.Decision{Approve: true, Remembered: true})
	}
	securityHeaders(w, cspSource(pd.Request.RedirectURI))
	redirect, _ := url.Parse(pd.Request.RedirectURI)
	host := pd.Request.RedirectURI
	if redirect != nil && redirect.Host != "" {
		host = redirect.Host
	}
	u.render(w, r, http.StatusOK, "consent", map[string]any{
		"CSRF": u.csrfToken(w, r), "Req": req, "User": user, "Client": pd.Client, "Resource": pd.Resource,
		"Scopes": pd.Request.Scopes, "RedirectHost": host,
		"Localhost":   redirect != nil && oauth.IsLoopbackHost(redirect.Hostname()),
		"Connections": pd.Connections, "Offline": slices.Contains(pd.Request.Scopes, authserver.ScopeOfflineAccess),
	})
	return nil
}

func (u *UI) consent(w http.ResponseWriter, r *http.Request) error {
	req := r.PostFormValue("req")
	user, ok, err := u.requireUser(w, r, url.Values{"req": {req}})
	if err != nil || !ok {
		return err
	}
	d := authserver.Decision{Approve: r.PostFormValue("decision") == "approve", ConnectionIDs: r.PostForm["connection"]}
	return u.decide(w, r, req, user, d)
}

func (u *UI) decide(w http.ResponseWriter, r *http.Request, req string, user broker.User, d authserver.Decision) error {
	target, err := u.o.Auth.Decide(r.Context(), req, user, d)
	if errors.Is(err, authserver.ErrRequestGone) {
		return errGone
	}
	if err != nil {
		return err
	}
	// 303: the browser follows with GET, never re-posting the form (a 307
	// would send the user's form, CSRF token included, to the client).
	http.Redirect(w, r, target, http.StatusSeeOther)
	return nil
}

func (u *UI) deviceForm(w http.ResponseWriter, r *http.Request) error {
	code := r.URL.Query().Get("user_code")
	_, ok, err := u.requireUser(w, r, url.Values{"next": {"device"}, "user_code": {code}})
	if err != nil || !ok {
		return err
	}
	u.render(w, r, http.StatusOK, "device", map[string]any{"CSRF": u.csrfToken(w, r), "UserCode": code})
	return nil
}

func (u *UI) device(w http.ResponseWriter, r *http.Request) error {
	code := r.PostFormValue("user_code")
	user, sess, ok, err := u.currentUser(r.Context(), r)
	if err != nil {
		return err
	}
	if !ok {
		http.Redirect(w, r, "/login?"+url.Values{"next": {"device"}}.Encode(), http.StatusSeeOther)
		return nil
	}
	if sess.BadUserCodes >= maxBadUserCodes {
		return userError(http.StatusTooManyRequests, "Too many wrong codes",
			"You entered too many wrong codes. Sign out and in again, then start over on your device.")
	}
	dp, err := u.o.Auth.LookupDevice(r.Context(), code, user)
	if errors.Is(err, authserver.ErrUnknownUserCode) {
		if _, err := u.o.Store.Sessions().Update(r.Context(), sess.ID, func(s broker.Session) (broker.Session, error) {
			s.BadUserCodes++
			return s, nil
		}); err != nil {
			return err
		}
		u.render(w, r, http.StatusBadRequest, "device", map[string]any{"CSRF": u.csrfToken(w, r), "UserCode": code,
			"Problem": "That code is wrong or has expired. Check the code on your device."})
		return nil
	}
	if err != nil {
		return err
	}
	u.render(w, r, http.StatusOK, "device_confirm", map[string]any{
		"CSRF": u.csrfToken(w, r), "UserCode": dp.UserCode, "User": user, "Client": dp.Client,
		"Resource": dp.Resource, "Scopes": dp.Scopes, "Connections": dp.Connections,
	})
	return nil
}

func (u *UI) deviceDecide(w http.ResponseWriter, r *http.Request) error {
	user, ok, err := u.requireUser(w, r, url.Values{"next": {"device"}})
	if err != nil || !ok {
		return err
	}
	approve := r.PostFormValue("decision") == "approve"
	err = u.o.Auth.DecideDevice(r.Context(), r.PostFormValue("user_code"), user,
		authserver.Decision{Approve: approve, ConnectionIDs: r.PostForm["connection"]})
	if errors.Is(err, authserver.ErrUnknownUserCode) {
		return userError(http.StatusBadRequest, "Request expired", "That code has expired or was already used. Start again on your device.")
	}
	if err != nil {
		return err
	}
	u.render(w, r, http.StatusOK, "done", map[string]any{"Approved": approve})
	return nil
}

func (u *UI) revokeGrant(w http.ResponseWriter, r *http.Request) error {
	user, ok, err := u.requireUser(w, r, url.Values{})
	if err != nil || !ok {
		return err
	}
	g, err := u.o.Store.Grants().Get(r.Context(), r.PostFormValue("grant"))
	if errors.Is(err, broker.ErrNotFound) || (err == nil && g.UserID != user.ID) {
		return userError(http.StatusNotFound, "Not found", "There is no such authorization.")
	}
	if err != nil {
		return err
	}
	if err := u.o.Auth.RevokeGrant(r.Context(), g.ID, "revoked by the user"); err != nil {
		return err
	}
	http.Redirect(w, r, "/", http.StatusSeeOther)
	return nil
}

// agentView is one grant as the Agents page shows it.
type agentView struct {
	Grant    broker.Grant
	Client   string // the client's own (untrusted) name, or its id
	Resource string
	Accounts []string
}

// agents lists the user's live grants with names resolved for display.
func (u *UI) agents(r *http.Request, user broker.User) ([]agentView, error) {
	ctx := r.Context()
	conns := map[string]string{}
	list, err := broker.ListAll(ctx, u.o.Store.Connections(), broker.Query{Index: broker.IndexUser, Value: user.ID})
	if err != nil {
		return nil, err
	}
	for _, c := range list {
		conns[c.ID] = u.connectorName(c.Connector) + ": " + c.Account
	}
	grants, err := broker.ListAll(ctx, u.o.Store.Grants(), broker.Query{Index: broker.IndexUser, Value: user.ID})
	if err != nil {
		return nil, err
	}
	// Several grants often share a client or an MCP server: read each once.
	clients, resources := map[string]string{}, map[string]string{}
	var out []agentView
	for _, g := range grants {
		if g.Revoked() {
			continue
		}
		client, ok := clients[g.ClientID]
		if !ok {
			client = g.ClientID
			if c, err := u.o.Store.Clients().Get(ctx, g.ClientID); err == nil && c.Name != "" {
				client = c.Name
			}
			clients[g.ClientID] = client
		}
		resource, ok := resources[g.Resource]
		if !ok {
			resource = g.Resource
			if res, err := u.o.Store.Resources().GetBy(ctx, broker.IndexURI, g.Resource); err == nil && res.Name != "" {
				resource = res.Name
			}
			resources[g.Resource] = resource
		}
		v := agentView{Grant: g, Client: client, Resource: resource}
		for _, id := range g.ConnectionIDs {
			if name, ok := conns[id]; ok {
				v.Accounts = append(v.Accounts, name)
			} else {
				v.Accounts = append(v.Accounts, "(unlinked account)")
			}
		}
		out = append(out, v)
	}
	return out, nil
}

// audit records a sign-in; a failure to record is logged (sign-in itself
// hands out nothing an agent can use).
func (u *UI) audit(ctx context.Context, e broker.AuditEvent) {
	e.RequestID = httpx.RequestID(ctx)
	if _, err := u.o.Store.Audit().Append(ctx, e); err != nil {
		u.o.Logger.ErrorContext(ctx, "audit append failed", "action", e.Action, "err", err)
	}
}

// connectorName is the name people see for a connector; one no longer
// configured shows under its own name. Templates call it as connectorName.
func (u *UI) connectorName(name string) string {
	if u.o.Links != nil {
		if c, err := u.o.Links.Connector(name); err == nil {
			return c.DisplayName()
		}
	}
	return name
}
