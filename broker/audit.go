package broker

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"time"
)

// Audit actions.
const (
	AuditLink     = "link"
	AuditUnlink   = "unlink"
	AuditConsent  = "consent"
	AuditIssue    = "token.issue"
	AuditRefresh  = "token.refresh"
	AuditRedeem   = "redeem"
	AuditExchange = "exchange"
	AuditRevoke   = "revoke"
	AuditLogin    = "login"
)

// Audit outcomes.
const (
	OutcomeOK     = "ok"
	OutcomeDenied = "denied"
	OutcomeError  = "error"
)

// AuditEvent is one record of the audit chain: who (user), which agent
// (client), which MCP server (resource), which tool and connection, what
// happened and why. It never holds a secret. Seq, PrevHash and Hash are set
// by AuditLog.Append.
type AuditEvent struct {
	Seq          uint64    `json:"seq"`
	Time         time.Time `json:"time"`
	Action       string    `json:"action"`
	Outcome      string    `json:"outcome"`
	Reason       string    `json:"reason,omitempty"`
	UserID       string    `json:"user_id,omitempty"`
	ClientID     string    `json:"client_id,omitempty"`
	Resource     string    `json:"resource,omitempty"`
	Tool         string    `json:"tool,omitempty"`
	Connector    string    `json:"connector,omitempty"`
	ConnectionID string    `json:"connection_id,omitempty"`
	GrantID      string    `json:"grant_id,omitempty"`
	RequestID    string    `json:"request_id,omitempty"`
	PrevHash     string    `json:"prev_hash"`
	Hash         string    `json:"hash"`
}

// ChainHash is the hash of e chained to the previous record's hash: the
// SHA-256 of prev and the event's JSON without its own Hash. Changing,
// removing or reordering a record breaks the chain after it.
func (e AuditEvent) ChainHash() string {
	_, h := e.hashed()
	return h
}

// hashed returns the JSON of e with an empty Hash and the chain hash over
// it.
func (e AuditEvent) hashed() ([]byte, string) {
	e.Hash = ""
	b, _ := json.Marshal(e) // a struct of strings, numbers and a time: cannot fail
	h := sha256.New()
	h.Write([]byte(e.PrevHash))
	h.Write([]byte{0})
	h.Write(b)
	return b, hex.EncodeToString(h.Sum(nil))
}

// AuditLog is the append-only, hash-chained audit record.
type AuditLog interface {
	// Append assigns the next Seq, the time (if zero), PrevHash and Hash,
	// and returns only once the record is durable. A caller must not send
	// the response an event describes before Append returned without error.
	Append(ctx context.Context, e AuditEvent) (AuditEvent, error)
	// Range returns up to limit records with Seq > after, in order.
	Range(ctx context.Context, after uint64, limit int) ([]AuditEvent, error)
}

// Chained returns e as record seq of the chain after the record whose hash
// is prevHash (Seq and PrevHash set, Time set to now if zero and made UTC,
// Hash computed), and its JSON as json.Marshal writes it: AuditLog backends
// store those bytes. One encoding serves both the hash and the record.
func (e AuditEvent) Chained(seq uint64, prevHash string, now time.Time) (AuditEvent, []byte) {
	e.Seq, e.PrevHash = seq, prevHash
	if e.Time.IsZero() {
		e.Time = now
	}
	e.Time = e.Time.UTC()
	b, h := e.hashed()
	e.Hash = h
	// Hash is the last member and hex needs no escaping: the encoding with
	// it is the one without, with the hash between the final quotes.
	const tail = `""}`
	out := make([]byte, 0, len(b)+len(h))
	out = append(out, b[:len(b)-len(tail)]...)
	out = append(out, '"')
	out = append(out, h...)
	out = append(out, `"}`...)
	return e, out
}
