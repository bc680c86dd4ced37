package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log"
	"mime"
	"mime/multipart"
	"mime/quotedprintable"
	"net"
	"net/mail"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/emersion/go-imap"
	"github.com/emersion/go-imap/client"
	"github.com/emersion/go-imap/commands"

	"github.com/lanyardhq/lanyard/internal/boundedconn"
	"github.com/lanyardhq/lanyard/internal/safehttp"
)

// Limits of what the tools return.
const (
	defaultSearchLimit = 10
	maxSearchLimit     = 50
	maxMailboxes       = 500
	maxMessageBytes    = 256 << 10 // fetched of one message (BODY.PEEK[]<0.N>)
	maxTextChars       = 32 << 10  // of the text returned by read_message
	maxQueryLen        = 200
	maxMailboxNameLen  = 512
)

// TLS modes of a basic credential ("tls" field), as Lanyard's basic
// connector names them.
const (
	tlsImplicit  = "implicit"
	tlsStartTLS  = "starttls"
	tlsPlaintext = "plaintext"
)

// imapAccount is what a redeemed basic credential says about the mailbox.
// String never shows the password.
type imapAccount struct {
	Username, Password string
	Host               string
	Port               int
	TLS                string
}

func (a imapAccount) String() string {
	return fmt.Sprintf("%s on %s (%s)", a.Username, net.JoinHostPort(a.Host, strconv.Itoa(a.Port)), a.TLS)
}

// accountFromFields reads the fields of a credential of Lanyard's basic
// connector: username, password, host, port, tls. Errors name the field,
// never its value.
func accountFromFields(f map[string]any) (imapAccount, error) {
	str := func(k string) (string, error) {
		v, ok := f[k]
		if !ok {
			return "", fmt.Errorf("the credential has no %q field", k)
		}
		s, ok := v.(string)
		if !ok || s == "" {
			return "", fmt.Errorf("the credential's %q field is not a non-empty string", k)
		}
		return s, nil
	}
	var a imapAccount
	var errs []error
	var err error
	if a.Username, err = str("username"); err != nil {
		errs = append(errs, err)
	}
	if a.Password, err = str("password"); err != nil {
		errs = append(errs, err)
	}
	if a.Host, err = str("host"); err != nil {
		errs = append(errs, err)
	}
	switch p := f["port"].(type) {
	case float64:
		if p == float64(int(p)) {
			a.Port = int(p)
		}
	case int:
		a.Port = p
	case int64:
		a.Port = int(p)
	case string:
		a.Port, _ = strconv.Atoi(p)
	case interface{ Int64() (int64, error) }: // json.Number
		n, _ := p.Int64()
		a.Port = int(n)
	}
	if a.Port < 1 || a.Port > 65535 {
		errs = append(errs, errors.New(`the credential's "port" field is not a port number`))
	}
	a.TLS = tlsImplicit
	if v, ok := f["tls"]; ok {
		s, _ := v.(string)
		switch s {
		case tlsImplicit, tlsStartTLS, tlsPlaintext:
			a.TLS = s
		default:
			errs = append(errs, errors.New(`the credential's "tls" field is not implicit, starttls or plaintext`))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return imapAccount{}, err
	}
	return a, nil
}

// imapDialer opens IMAP sessions. Every session (dial, TLS, login, the
// work, logout) is bounded by Timeout and by the caller's context.
//
// The mail server's host comes from the redeemed credential, which the
// user may have typed in (a connector that allows user-supplied servers):
// whoever names it chooses where this server connects. So every address
// actually dialled (after DNS resolution, so DNS rebinding cannot slip
// past) must be a public unicast address, as safehttp.CheckAddr judges it:
// loopback (unless AllowLoopback), private, link-local (cloud metadata at
// 169.254.169.254) and reserved ranges are refused.
type imapDialer struct {
	Timeout time.Duration
	Roots   *x509.CertPool // nil: the system roots
	// AllowLoopback lets sessions reach mail servers on loopback addresses
	// (--allow-loopback-imap, for development and tests). Private and
	// link-local addresses stay refused.
	AllowLoopback bool
}

// msgUnreachable is all the agent learns when the mail server cannot be
// reached or spoken to: where the credential pointed and why it failed
// (a refused address, a connection error, a TLS error) go to the log.
const msgUnreachable = "mail server unreachable"

// mailServerError is a failure to reach or talk to the mail server. Its
// Error is msgUnreachable whatever happened; Detail (for the log only)
// says where and why. Neither ever contains a credential.
type mailServerError struct {
	addr, what string
	err        error
}

func (e *mailServerError) Error() string { return msgUnreachable }
func (e *mailServerError) Unwrap() error { return e.err }

// Detail describes the failure for the server's log.
func (e *mailServerError) Detail() string {
	if e.err == nil {
		return fmt.Sprintf("mail server %s: %s", e.addr, e.what)
	}
	return fmt.Sprintf("mail server %s: %s: %v", e.addr, e.what, e.err)
}

// loadRoots reads a PEM bundle of CA certificates.
func loadRoots(path string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s holds no PEM certificate", path)
	}
	return pool, nil
}

// errIMAPLogin is a refused login: the stored password no longer works.
var errIMAPLogin = errors.New("the mail server refused the linked account's user name or password; re-link the account in Lanyard")

// session logs in to a's server and runs fn with the logged-in client.
func (d imapDialer) session(ctx context.Context, a imapAccount, fn func(*client.Client) error) error {
	timeout := d.Timeout
	if timeout <= 0 {
		timeout = 20 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	deadline, _ := ctx.Deadline()
	addr := net.JoinHostPort(a.Host, strconv.Itoa(a.Port))
	fail := func(what string, err error) error {
		if ctx.Err() != nil || errors.Is(err, os.ErrDeadlineExceeded) {
			return &mailServerError{addr: addr, what: what + ": timed out", err: err}
		}
		return &mailServerError{addr: addr, what: what, err: err}
	}

	raw, err := safehttp.Dialer(d.AllowLoopback).DialContext(ctx, "tcp", addr)
	if err != nil {
		return fail("connect", err)
	}
	defer raw.Close()
	// The context ending closes the connection, which unblocks the client;
	// the deadline bounds every read and write.
	stop := context.AfterFunc(ctx, func() { _ = raw.Close() })
	defer stop()
	var conn net.Conn = boundedconn.New(raw, deadline)

	tlsConf := &tls.Config{ServerName: a.Host, RootCAs: d.Roots, MinVersion: tls.VersionTLS12}
	if a.TLS == tlsImplicit {
		tc := tls.Client(conn, tlsConf)
		if err := tc.HandshakeContext(ctx); err != nil {
			return fail("TLS handshake", err)
		}
		conn = tc
	}
	c, err := client.New(conn)
	if err != nil {
		return fail("greeting", err)
	}
	c.ErrorLog = log.New(io.Discard, "", 0)
	if a.TLS == tlsStartTLS {
		ok, err := c.SupportStartTLS()
		if err != nil {
			return fail("capabilities", err)
		}
		if !ok {
			return &mailServerError{addr: addr, what: "does not offer STARTTLS; the password is not sent in clear"}
		}
		if err := c.StartTLS(tlsConf); err != nil {
			return fail("STARTTLS", err)
		}
	}
	if disabled, err := c.Support("LOGINDISABLED"); err != nil {
		return fail("capabilities", err)
	} else if disabled {
		return &mailServerError{addr: addr, what: "does not accept a password on this connection (it wants TLS)"}
	}
	// LOGIN through Execute, to tell a refused password (tagged NO) from a
	// connection that failed.
	status, err := c.Execute(&commands.Login{Username: a.Username, Password: a.Password}, nil)
	if err != nil {
		return fail("login", err)
	}
	switch status.Type {
	case imap.StatusRespOk:
	case imap.StatusRespNo:
		return errIMAPLogin
	default:
		return &mailServerError{addr: addr, what: fmt.Sprintf("login failed (%s %s)", status.Type, clean(status.Info, 200))}
	}
	c.SetState(imap.AuthenticatedState, nil)
	err = fn(c)
	if err != nil && (ctx.Err() != nil || errors.Is(err, os.ErrDeadlineExceeded)) {
		err = fail("command", err)
	}
	_ = c.Logout()
	return err
}

// Mailbox is one entry of list_mailboxes.
type Mailbox struct {
	Name       string   `json:"name"`
	Attributes []string `json:"attributes,omitempty"`
}

func (d imapDialer) listMailboxes(ctx context.Context, a imapAccount) ([]Mailbox, error) {
	var out []Mailbox
	err := d.session(ctx, a, func(c *client.Client) error {
		ch := make(chan *imap.MailboxInfo, 16)
		done := make(chan error, 1)
		go func() { done <- c.List("", "*", ch) }()
		for m := range ch {
			if len(out) < maxMailboxes {
				out = append(out, Mailbox{Name: clean(m.Name, maxMailboxNameLen), Attributes: m.Attributes})
			}
		}
		if err := <-done; err != nil {
			return fmt.Errorf("LIST: %w", err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	slices.SortFunc(out, func(x, y Mailbox) int { return strings.Compare(x.Name, y.Name) })
	return out, nil
}

// Query is what search_messages looks for; every given field must match.
type Query struct {
	Subject string
	From    string
	Text    string
}

// MessageSummary is one hit of search_messages.
type MessageSummary struct {
	Mailbox string    `json:"mailbox"`
	UID     uint32    `json:"uid"`
	Subject string    `json:"subject"`
	From    []string  `json:"from,omitempty"`
	Date    time.Time `json:"date,omitzero"`
	Size    uint32    `json:"size,omitempty"`
	Seen    bool      `json:"seen"`
}

// searchMessages returns the newest limit messages of mailbox matching q,
// newest first, and how many matched in all.
func (d imapDialer) searchMessages(ctx context.Context, a imapAccount, mailbox string, q Query, limit int) ([]MessageSummary, int, error) {
	var out []MessageSummary
	total := 0
	err := d.session(ctx, a, func(c *client.Client) error {
		if _, err := c.Select(mailbox, true); err != nil {
			return fmt.Errorf("mailbox %q: %v", mailbox, err)
		}
		crit := imap.NewSearchCriteria()
		if q.Subject != "" {
			crit.Header.Add("Subject", q.Subject)
		}
		if q.From != "" {
			crit.Header.Add("From", q.From)
		}
		if q.Text != "" {
			crit.Text = []string{q.Text}
		}
		uids, err := c.UidSearch(crit)
		if err != nil {
			return fmt.Errorf("SEARCH: %v", err)
		}
		total = len(uids)
		if total == 0 {
			return nil
		}
		slices.Sort(uids)
		if len(uids) > limit {
			uids = uids[len(uids)-limit:]
		}
		set := new(imap.SeqSet)
		set.AddNum(uids...)
		ch := make(chan *imap.Message, 16)
		done := make(chan error, 1)
		go func() {
			done <- c.UidFetch(set, []imap.FetchItem{imap.FetchUid, imap.FetchEnvelope, imap.FetchFlags, imap.FetchRFC822Size, imap.FetchInternalDate}, ch)
		}()
		for m := range ch {
			out = append(out, summarize(mailbox, m))
		}
		if err := <-done; err != nil {
			return fmt.Errorf("FETCH: %v", err)
		}
		return nil
	})
	if err != nil {
		return nil, 0, err
	}
	slices.SortFunc(out, func(x, y MessageSummary) int { return -cmpUint(x.UID, y.UID) })
	return out, total, nil
}

func cmpUint(a, b uint32) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func summarize(mailbox string, m *imap.Message) MessageSummary {
	s := MessageSummary{Mailbox: mailbox, UID: m.Uid, Size: m.Size, Date: m.InternalDate.UTC()}
	s.Seen = slices.Contains(m.Flags, imap.SeenFlag)
	if e := m.Envelope; e != nil {
		s.Subject = clean(e.Subject, 1000)
		s.From = addresses(e.From)
		if !e.Date.IsZero() {
			s.Date = e.Date.UTC()
		}
	}
	return s
}

func addresses(as []*imap.Address) []string {
	var out []string
	for _, a := range as {
		if a == nil {
			continue
		}
		addr := a.Address()
		if a.PersonalName != "" {
			addr = (&mail.Address{Name: a.PersonalName, Address: addr}).String()
		}
		out = append(out, clean(addr, 400))
	}
	return out
}

// Message is what read_message returns.
type Message struct {
	MessageSummary
	To        []string `json:"to,omitempty"`
	Cc        []string `json:"cc,omitempty"`
	MessageID string   `json:"message_id,omitempty"`
	// Text is the message's plain-text body (the first text/plain part, or
	// the HTML part with its tags removed when there is none).
	Text      string `json:"text"`
	Truncated bool   `json:"truncated,omitempty"`
}

// errNoMessage is a UID that is not in the mailbox.
var errNoMessage = errors.New("no message with this UID in the mailbox")

// readMessage fetches one message without marking it seen.
func (d imapDialer) readMessage(ctx context.Context, a imapAccount, mailbox string, uid uint32) (*Message, error) {
	var out *Message
	err := d.session(ctx, a, func(c *client.Client) error {
		if _, err := c.Select(mailbox, true); err != nil {
			return fmt.Errorf("mailbox %q: %v", mailbox, err)
		}
		set := new(imap.SeqSet)
		set.AddNum(uid)
		section := &imap.BodySectionName{Peek: true, Partial: []int{0, maxMessageBytes}}
		ch := make(chan *imap.Message, 1)
		done := make(chan error, 1)
		go func() {
			done <- c.UidFetch(set, []imap.FetchItem{imap.FetchUid, imap.FetchEnvelope, imap.FetchFlags, imap.FetchRFC822Size, imap.FetchInternalDate, section.FetchItem()}, ch)
		}()
		for m := range ch {
			if m.Uid != uid || out != nil {
				continue
			}
			msg := &Message{MessageSummary: summarize(mailbox, m)}
			if e := m.Envelope; e != nil {
				msg.To = addresses(e.To)
				msg.Cc = addresses(e.Cc)
				msg.MessageID = clean(e.MessageId, 400)
			}
			var raw []byte
			if lit := m.GetBody(section); lit != nil {
				raw, _ = io.ReadAll(io.LimitReader(lit, maxMessageBytes+1))
			}
			msg.Text, msg.Truncated = bodyText(raw)
			if m.Size > maxMessageBytes {
				msg.Truncated = true
			}
			out = msg
		}
		if err := <-done; err != nil {
			return fmt.Errorf("FETCH: %v", err)
		}
		if out == nil {
			return errNoMessage
		}
		return nil
	})
	return out, err
}

// bodyText extracts readable text from a raw RFC 5322 message: the first
// text/plain part (else text/html without tags), transfer-decoded, cut to
// maxTextChars.
func bodyText(raw []byte) (string, bool) {
	if len(raw) == 0 {
		return "", false
	}
	m, err := mail.ReadMessage(bytes.NewReader(raw))
	if err != nil {
		return truncate(clean(string(raw), -1))
	}
	text, html := findText(m.Header.Get("Content-Type"), m.Header.Get("Content-Transfer-Encoding"), m.Body, 0)
	if text == "" && html != "" {
		text = stripTags(html)
	}
	return truncate(text)
}

// findText walks a MIME entity (depth-bounded) and returns its first
// text/plain and text/html bodies, decoded.
func findText(contentType, encoding string, body io.Reader, depth int) (plain, html string) {
	mt, params, err := mime.ParseMediaType(contentType)
	if err != nil || contentType == "" {
		mt, params = "text/plain", map[string]string{}
	}
	switch {
	case strings.HasPrefix(mt, "multipart/") && depth < 5 && params["boundary"] != "":
		mr := multipart.NewReader(body, params["boundary"])
		for {
			p, err := mr.NextRawPart()
			if err != nil {
				break
			}
			pt, ph := findText(p.Header.Get("Content-Type"), p.Header.Get("Content-Transfer-Encoding"), p, depth+1)
			if plain == "" {
				plain = pt
			}
			if html == "" {
				html = ph
			}
			if plain != "" {
				break
			}
		}
		return plain, html
	case mt == "text/plain" || mt == "text/html":
		b, _ := io.ReadAll(decodeTransfer(encoding, body))
		s := toUTF8(b, params["charset"])
		if mt == "text/plain" {
			return s, ""
		}
		return "", s
	}
	return "", ""
}

func decodeTransfer(enc string, r io.Reader) io.Reader {
	switch strings.ToLower(strings.TrimSpace(enc)) {
	case "quoted-printable":
		return quotedprintable.NewReader(r)
	case "base64":
		return base64.NewDecoder(base64.StdEncoding, &skipSpace{r: r})
	}
	return r
}

// skipSpace drops the line breaks of a base64 body.
type skipSpace struct{ r io.Reader }

func (s *skipSpace) Read(p []byte) (int, error) {
	for {
		n, err := s.r.Read(p)
		j := 0
		for _, b := range p[:n] {
			if b != '\r' && b != '\n' && b != ' ' && b != '\t' {
				p[j] = b
				j++
			}
		}
		if j > 0 || err != nil {
			return j, err
		}
	}
}

// toUTF8 converts the charsets the standard library can: UTF-8/ASCII as
// they are, ISO-8859-1 byte by byte; anything else keeps its valid UTF-8.
func toUTF8(b []byte, charset string) string {
	switch strings.ToLower(charset) {
	case "iso-8859-1", "latin1", "latin-1", "windows-1252":
		r := make([]rune, len(b))
		for i, c := range b {
			r[i] = rune(c)
		}
		return clean(string(r), -1)
	}
	return clean(strings.ToValidUTF8(string(b), "\uFFFD"), -1)
}

func stripTags(s string) string {
	var b strings.Builder
	in := false
	for _, r := range s {
		switch {
		case r == '<':
			in = true
		case r == '>':
			in = false
		case !in:
			b.WriteRune(r)
		}
	}
	return b.String()
}

func truncate(s string) (string, bool) {
	if utf8.RuneCountInString(s) <= maxTextChars {
		return s, false
	}
	r := []rune(s)
	return string(r[:maxTextChars]), true
}

// clean drops control characters other than line breaks and tabs (and
// invalid UTF-8) and cuts to max runes (max < 0: no limit).
func clean(s string, max int) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	s = strings.Map(func(r rune) rune {
		if r == '\n' || r == '\t' {
			return r
		}
		if r == '\r' || unicode.IsControl(r) {
			return -1
		}
		return r
	}, s)
	if max >= 0 && utf8.RuneCountInString(s) > max {
		s = string([]rune(s)[:max]) + "…"
	}
	return s
}

// validMailbox checks a mailbox name given by the agent.
func validMailbox(name string) error {
	switch {
	case name == "":
		return errors.New("mailbox is required")
	case len(name) > maxMailboxNameLen:
		return errors.New("mailbox name is too long")
	case !utf8.ValidString(name) || strings.ContainsFunc(name, unicode.IsControl):
		return errors.New("mailbox name has characters that are not allowed")
	}
	return nil
}

// validQueryText checks one search string.
func validQueryText(field, s string) error {
	switch {
	case len(s) > maxQueryLen:
		return fmt.Errorf("%s is longer than %d bytes", field, maxQueryLen)
	case !utf8.ValidString(s) || strings.ContainsFunc(s, unicode.IsControl):
		return fmt.Errorf("%s has characters that are not allowed", field)
	}
	return nil
}
