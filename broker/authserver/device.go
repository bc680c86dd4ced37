package authserver

import (
	"context"
	"crypto/rand"
	"errors"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/lanyardhq/lanyard/broker"
	"github.com/lanyardhq/lanyard/broker/oauth"
)

// userCodeAlphabet has no vowels (no words) and no look-alike characters,
// as RFC 8628 §6.1 suggests; 8 characters give 20^8 ≈ 2^34.6 codes.
const userCodeAlphabet = "BCDFGHJKLMNPQRSTVWXZ"

func newUserCode() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	for i := range b {
		b[i] = userCodeAlphabet[int(b[i])%len(userCodeAlphabet)] // 256 % 20 bias is negligible next to the rate limit
	}
	return string(b)
}

// NormalizeUserCode upper-cases a typed user code and drops separators.
func NormalizeUserCode(s string) string {
	return strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z':
			return r - 'a' + 'A'
		case r >= 'A' && r <= 'Z':
			return r
		}
		return -1
	}, s)
}

// FormatUserCode shows a user code as XXXX-XXXX.
func FormatUserCode(s string) string {
	if len(s) == 8 {
		return s[:4] + "-" + s[4:]
	}
	return s
}

// deviceAuthorization is RFC 8628 §3.1-3.2.
func (s *Server) deviceAuthorization(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	p, client, ok := s.clientForm(w, r)
	if !ok {
		return
	}
	if !slices.Contains(grantTypes(client), GrantDeviceCode) {
		oauth.WriteError(w, r, oauth.ErrUnauthorizedClient.WithDescription("client may not use the device authorization grant"))
		return
	}
	res, oerr := s.resolveResource(ctx, p.Get("resource"))
	if oerr != nil {
		oauth.WriteError(w, r, oerr)
		return
	}
	scopes, oerr := grantableScopes(res, p.Get("scope"))
	if oerr != nil {
		oauth.WriteError(w, r, oerr)
		return
	}
	now := s.now()
	interval := int(s.o.DeviceInterval / time.Second)
	deviceCode := broker.NewToken("lyd_")
	var rec broker.DeviceCode
	var err error
	for range 5 { // a user-code collision is possible, if rare
		rec = broker.DeviceCode{ID: broker.HashSecret(deviceCode), UserCode: newUserCode(), ClientID: client.ID,
			Resource: res.URI, Scopes: scopes, Status: broker.DevicePending, IssuedAt: now,
			ExpiresAt: now.Add(s.o.DeviceCodeTTL), Interval: interval}
		if err = s.o.Store.DeviceCodes().Create(ctx, rec); !errors.Is(err, broker.ErrAlreadyExists) {
			break
		}
	}
	if err != nil {
		oauth.WriteError(w, r, oauth.ErrServerError.WithCause(err))
		return
	}
	verify := s.url(PathDevice)
	oauth.WriteJSON(w, http.StatusOK, map[string]any{
		"device_code": deviceCode, "user_code": FormatUserCode(rec.UserCode),
		"verification_uri":          verify,
		"verification_uri_complete": verify + "?" + url.Values{"user_code": {FormatUserCode(rec.UserCode)}}.Encode(),
		"expires_in":                int(s.o.DeviceCodeTTL / time.Second), "interval": interval,
	})
}

var (
	errPending  = oauth.ErrAuthorizationPending
	errSlowDown = oauth.ErrSlowDown
)

// deviceGrant is the polling side (RFC 8628 §3.4-3.5). The poll interval is
// enforced in the same atomic update that records the poll, so concurrent
// polls cannot slip under it; each too-early poll adds 5 seconds.
func (s *Server) deviceGrant(ctx context.Context, client broker.Client, p oauth.Params) (tokenResponse, error) {
	raw := p.Get("device_code")
	if raw == "" {
		return tokenResponse{}, oauth.ErrInvalidRequest.WithDescription("device_code is required")
	}
	id := broker.HashSecret(raw)
	now := s.now()
	var verdict error
	_, err := s.o.Store.DeviceCodes().Update(ctx, id, func(d broker.DeviceCode) (broker.DeviceCode, error) {
		verdict = nil
		switch {
		case d.ClientID != client.ID:
			return d, oauth.ErrInvalidGrant.WithDescription("device code was issued to another client")
		case !d.Consumed.IsZero():
			return d, oauth.ErrInvalidGrant.WithDescription("device code was already used")
		}
		if !d.LastPolled.IsZero() && now.Sub(d.LastPolled) < time.Duration(d.Interval)*time.Second {
			d.Interval += 5
			verdict = errSlowDown.WithDescription("poll less often")
		}
		d.LastPolled = now
		if verdict == nil {
			switch d.Status {
			case broker.DevicePending:
				verdict = errPending
			case broker.DeviceDenied:
				verdict = oauth.ErrAccessDenied.WithStatus(http.StatusBadRequest).WithDescription("the user denied the request")
			}
		}
		return d, nil
	})
	switch {
	case errors.Is(err, broker.ErrNotFound):
		return tokenResponse{}, oauth.ErrExpiredToken.WithDescription("device code is invalid or expired")
	case err != nil:
		return tokenResponse{}, err
	case verdict != nil:
		return tokenResponse{}, verdict
	}
	d, err := s.o.Store.DeviceCodes().Consume(ctx, id, func(d broker.DeviceCode) error {
		if d.Status != broker.DeviceApproved || d.ClientID != client.ID {
			return oauth.ErrInvalidGrant
		}
		return nil
	})
	if errors.Is(err, broker.ErrConsumed) {
		return tokenResponse{}, oauth.ErrInvalidGrant.WithDescription("device code was already used")
	}
	if err != nil {
		return tokenResponse{}, err
	}
	grant, err := s.liveGrant(ctx, d.GrantID)
	if err != nil {
		return tokenResponse{}, err
	}
	return s.issue(ctx, client, grant, d.Scopes, d.Scopes, "")
}

// DevicePending is what the device approval page shows.
type DevicePending struct {
	UserCode    string
	Client      broker.Client
	Resource    broker.Resource
	Scopes      []string
	Connections []broker.Connection
}

// ErrUnknownUserCode: no live, pending device authorization has that code.
var ErrUnknownUserCode = errors.New("unknown or expired code")

// LookupDevice finds the pending device authorization for a typed user code.
func (s *Server) LookupDevice(ctx context.Context, userCode string, user broker.User) (DevicePending, error) {
	var dp DevicePending
	d, err := s.o.Store.DeviceCodes().GetBy(ctx, broker.IndexUserCode, NormalizeUserCode(userCode))
	if errors.Is(err, broker.ErrNotFound) || (err == nil && (d.Status != broker.DevicePending || !d.Consumed.IsZero())) {
		return dp, ErrUnknownUserCode
	}
	if err != nil {
		return dp, err
	}
	dp.UserCode, dp.Scopes = d.UserCode, d.Scopes
	if dp.Client, err = s.o.Clients.Resolve(ctx, d.ClientID); err != nil {
		return dp, ErrUnknownUserCode
	}
	if dp.Resource, err = s.o.Store.Resources().GetBy(ctx, broker.IndexURI, d.Resource); err != nil {
		return dp, ErrUnknownUserCode
	}
	dp.Connections, err = s.connections(ctx, user.ID)
	return dp, err
}

// DecideDevice records the user's decision for a device authorization.
func (s *Server) DecideDevice(ctx context.Context, userCode string, user broker.User, d Decision) error {
	code := NormalizeUserCode(userCode)
	dev, err := s.o.Store.DeviceCodes().GetBy(ctx, broker.IndexUserCode, code)
	if err != nil || dev.Status != broker.DevicePending || !dev.Consumed.IsZero() {
		// Checked before grantFor: a grant is remembered consent, so one
		// must not be created or widened for a code already decided.
		return ErrUnknownUserCode
	}
	ev := broker.AuditEvent{Action: broker.AuditConsent, Outcome: broker.OutcomeDenied, Reason: "device authorization",
		UserID: user.ID, ClientID: dev.ClientID, Resource: dev.Resource}
	var grantID string
	if d.Approve {
		g, err := s.grantFor(ctx, user, broker.AuthRequest{ClientID: dev.ClientID, Resource: dev.Resource, Scopes: dev.Scopes}, d,
			func(g broker.Grant) error {
				ev.Outcome, ev.GrantID = broker.OutcomeOK, g.ID
				return s.audit(ctx, ev)
			})
		if err != nil {
			return err
		}
		grantID = g.ID
	}
	_, err = s.o.Store.DeviceCodes().Update(ctx, dev.ID, func(x broker.DeviceCode) (broker.DeviceCode, error) {
		if x.Status != broker.DevicePending || !x.Consumed.IsZero() {
			return x, ErrUnknownUserCode
		}
		x.Status, x.UserID, x.GrantID = broker.DeviceDenied, user.ID, grantID
		if d.Approve {
			x.Status = broker.DeviceApproved
		}
		return x, nil
	})
	if err != nil {
		return err
	}
	s.o.Logger.InfoContext(ctx, "device authorization decided", "user", user.ID, "client_id", dev.ClientID,
		"aud", dev.Resource, "approved", d.Approve)
	if d.Approve {
		return nil // recorded before the grant was written
	}
	return s.audit(ctx, ev)
}
