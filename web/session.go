package web

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/lanyardhq/lanyard/broker"
)

// Cookie names. With Secure the __Host- prefix makes the browser refuse
// cookies set by a sibling subdomain or without Secure (cookie tossing).
func (u *UI) cookieName(base string) string {
	if u.o.Secure {
		return "__Host-lanyard_" + base
	}
	return "lanyard_" + base
}

func (u *UI) setCookie(w http.ResponseWriter, base, value string, maxAge time.Duration) {
	http.SetCookie(w, &http.Cookie{
		Name: u.cookieName(base), Value: value, Path: "/", MaxAge: int(maxAge / time.Second),
		Secure: u.o.Secure, HttpOnly: true, SameSite: http.SameSiteLaxMode,
	})
}

func (u *UI) clearCookie(w http.ResponseWriter, base string) {
	http.SetCookie(w, &http.Cookie{Name: u.cookieName(base), Value: "", Path: "/", MaxAge: -1,
		Secure: u.o.Secure, HttpOnly: true, SameSite: http.SameSiteLaxMode})
}

// csrfToken returns the form token for this browser, setting the browser's
// CSRF cookie first if it has none. The token is an HMAC of the cookie, so
// a site that cannot read the cookie cannot forge it.
func (u *UI) csrfToken(w http.ResponseWriter, r *http.Request) string {
	c, err := r.Cookie(u.cookieName("csrf"))
	val := ""
	if err == nil && len(c.Value) == 43 {
		val = c.Value
	} else {
		val = broker.NewToken("")
		u.setCookie(w, "csrf", val, 24*time.Hour)
		// Later reads in this request see the new cookie.
		r.AddCookie(&http.Cookie{Name: u.cookieName("csrf"), Value: val})
	}
	return u.mac(val)
}

func (u *UI) mac(val string) string {
	m := hmac.New(sha256.New, u.o.Key)
	m.Write([]byte("lanyard csrf v1\x00" + val))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

func (u *UI) checkCSRF(r *http.Request) bool {
	c, err := r.Cookie(u.cookieName("csrf"))
	if err != nil || c.Value == "" {
		return false
	}
	got := r.PostForm.Get("csrf_token")
	return got != "" && hmac.Equal([]byte(got), []byte(u.mac(c.Value)))
}

// currentUser returns the signed-in user, or ok=false.
func (u *UI) currentUser(ctx context.Context, r *http.Request) (broker.User, broker.Session, bool, error) {
	c, err := r.Cookie(u.cookieName("session"))
	if err != nil || c.Value == "" {
		return broker.User{}, broker.Session{}, false, nil
	}
	s, err := u.o.Store.Sessions().Get(ctx, broker.HashSecret(c.Value))
	if errors.Is(err, broker.ErrNotFound) {
		return broker.User{}, broker.Session{}, false, nil
	}
	if err != nil {
		return broker.User{}, broker.Session{}, false, err
	}
	user, err := u.o.Store.Users().Get(ctx, s.UserID)
	if errors.Is(err, broker.ErrNotFound) || (err == nil && user.Disabled) {
		return broker.User{}, broker.Session{}, false, nil
	}
	return user, s, err == nil, err
}

// startSession signs user in: any session the browser had is deleted and a
// new one, with a new identifier, is created (no session fixation). The
// CSRF cookie is renewed too.
func (u *UI) startSession(ctx context.Context, w http.ResponseWriter, r *http.Request, user broker.User) error {
	if c, err := r.Cookie(u.cookieName("session")); err == nil && c.Value != "" {
		_ = u.o.Store.Sessions().Delete(ctx, broker.HashSecret(c.Value))
	}
	val, now := broker.NewToken(""), u.o.Now()
	s := broker.Session{ID: broker.HashSecret(val), UserID: user.ID, AuthTime: now, CreatedAt: now, ExpiresAt: now.Add(u.o.SessionTTL)}
	if err := u.o.Store.Sessions().Create(ctx, s); err != nil {
		return err
	}
	u.setCookie(w, "session", val, u.o.SessionTTL)
	u.setCookie(w, "csrf", broker.NewToken(""), 24*time.Hour)
	return nil
}

// allowSignIn counts a sign-in attempt from remoteAddr's IP (its /64 for
// IPv6) in the store's counters, shared by every replica, and reports
// whether it is within LoginRate for this minute.
func (u *UI) allowSignIn(ctx context.Context, remoteAddr string) (bool, error) {
	host, _, err := net.SplitHostPort(remoteAddr)
	if err != nil {
		host = remoteAddr
	}
	if ip := net.ParseIP(host); ip != nil && ip.To4() == nil {
		host = ip.Mask(net.CIDRMask(64, 128)).String()
	}
	n, err := u.o.Store.Counters().Incr(ctx, "signin/"+host, time.Minute)
	if err != nil {
		return false, fmt.Errorf("sign-in rate limit: %w", err)
	}
	return n <= int64(u.o.LoginRate), nil
}
