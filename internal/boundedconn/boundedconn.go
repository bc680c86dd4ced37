// Package boundedconn keeps a connection within an overall deadline. It is
// for wrapping a net.Conn handed to a protocol client that sets and clears
// its own read and write deadlines (go-imap's client clears them between
// commands), so that no deadline the client sets, and no cleared one, lets
// the whole exchange outlive the caller's deadline.
package boundedconn

import (
	"net"
	"time"
)

// Conn is a net.Conn whose deadlines never lie beyond Deadline: a zero
// deadline (none) or a later one becomes Deadline, an earlier one is kept.
type Conn struct {
	net.Conn
	Deadline time.Time
}

// New wraps c and sets its deadline to deadline. An error setting it (c
// already closed) is not returned: the next read or write reports it.
func New(c net.Conn, deadline time.Time) *Conn {
	b := &Conn{Conn: c, Deadline: deadline}
	_ = b.SetDeadline(deadline)
	return b
}

func (b *Conn) clamp(t time.Time) time.Time {
	if t.IsZero() || t.After(b.Deadline) {
		return b.Deadline
	}
	return t
}

// SetDeadline sets the read and write deadlines, no later than Deadline.
func (b *Conn) SetDeadline(t time.Time) error { return b.Conn.SetDeadline(b.clamp(t)) }

// SetReadDeadline sets the read deadline, no later than Deadline.
func (b *Conn) SetReadDeadline(t time.Time) error { return b.Conn.SetReadDeadline(b.clamp(t)) }

// SetWriteDeadline sets the write deadline, no later than Deadline.
func (b *Conn) SetWriteDeadline(t time.Time) error { return b.Conn.SetWriteDeadline(b.clamp(t)) }
