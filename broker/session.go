package broker

import (
	"errors"
	"time"
)

// Session is a signed-in browser. ID is the hash of the session cookie's
// value, never the value itself.
type Session struct {
	ID        string    `json:"id"`
	UserID    string    `json:"user_id"`
	AuthTime  time.Time `json:"auth_time"`
	CreatedAt time.Time `json:"created_at"`
	ExpiresAt time.Time `json:"expires_at"`
	// BadUserCodes counts wrong device user codes entered in this session.
	BadUserCodes int `json:"bad_user_codes,omitempty"`
}

func (s Session) RecordID() string        { return s.ID }
func (s Session) RecordExpiry() time.Time { return s.ExpiresAt }
func (s Session) RecordIndexes() []Index  { return []Index{{Name: IndexUser, Value: s.UserID}} }
func (s Session) Validate() error {
	return errors.Join(validateID("session", s.ID), required("session", "user_id", s.UserID),
		requireExpiry("session", s.ExpiresAt))
}

// AuthRequest is a validated authorization request waiting for the user to
// sign in and consent. ID is random and travels in the consent page's URL;
// the request is bound to the first user who opens it, and consumed once
// when the user approves or denies.
type AuthRequest struct {
	ID            string    `json:"id"`
	ClientID      string    `json:"client_id"`
	RedirectURI   string    `json:"redirect_uri"`
	State         string    `json:"state,omitempty"`
	CodeChallenge string    `json:"code_challenge"`
	Resource      string    `json:"resource"`
	Scopes        []string  `json:"scopes,omitempty"`
	UserID        string    `json:"user_id,omitempty"`
	CreatedAt     time.Time `json:"created_at"`
	ExpiresAt     time.Time `json:"expires_at"`
	Consumed      time.Time `json:"consumed_at,omitzero"`
}

func (a AuthRequest) RecordID() string        { return a.ID }
func (a AuthRequest) RecordExpiry() time.Time { return a.ExpiresAt }
func (a AuthRequest) RecordIndexes() []Index  { return nil }
func (a AuthRequest) Validate() error {
	return errors.Join(validateID("auth request", a.ID),
		required("auth request", "client_id", a.ClientID, "redirect_uri", a.RedirectURI, "resource", a.Resource),
		requireExpiry("auth request", a.ExpiresAt))
}
func (a AuthRequest) ConsumedAt() time.Time { return a.Consumed }
func (a AuthRequest) WithConsumedAt(t time.Time) AuthRequest {
	a.Consumed = t
	return a
}

var _ SingleUse[AuthRequest] = AuthRequest{}

// PendingLink is a redirect-based account link in flight (OAuth to an
// upstream). ID is the hash of the state parameter; the link is bound to
// the session that began it and completes once.
type PendingLink struct {
	ID           string    `json:"id"`
	UserID       string    `json:"user_id"`
	SessionID    string    `json:"session_id"`
	Connector    string    `json:"connector"`
	ConnectionID string    `json:"connection_id,omitempty"` // re-link of this connection
	CreatedAt    time.Time `json:"created_at"`
	ExpiresAt    time.Time `json:"expires_at"`
	Consumed     time.Time `json:"consumed_at,omitzero"`
}

func (p PendingLink) RecordID() string        { return p.ID }
func (p PendingLink) RecordExpiry() time.Time { return p.ExpiresAt }
func (p PendingLink) RecordIndexes() []Index  { return nil }
func (p PendingLink) Validate() error {
	return errors.Join(validateID("pending link", p.ID),
		required("pending link", "user_id", p.UserID, "session_id", p.SessionID, "connector", p.Connector),
		requireExpiry("pending link", p.ExpiresAt))
}
func (p PendingLink) ConsumedAt() time.Time { return p.Consumed }
func (p PendingLink) WithConsumedAt(t time.Time) PendingLink {
	p.Consumed = t
	return p
}

var _ SingleUse[PendingLink] = PendingLink{}
