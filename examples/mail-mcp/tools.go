package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/lanyardhq/lanyard/mcpauth"
	"github.com/lanyardhq/lanyard/mcpauth/gosdk"
)

// Tool names. Lanyard's tool policy for this server names the same tools.
const (
	toolListMailboxes  = "list_mailboxes"
	toolSearchMessages = "search_messages"
	toolReadMessage    = "read_message"
)

// redeemer is the part of *mcpauth.Client the tools use.
type redeemer interface {
	Redeem(ctx context.Context, tok *mcpauth.Token, connector, tool string) (*mcpauth.Credential, error)
}

// mailServer holds what every tool call needs.
type mailServer struct {
	auth      redeemer
	connector string
	imap      imapDialer
	gate      *authGate
	log       *slog.Logger
}

// newMCPServer returns the MCP server with the three tools.
func newMCPServer(s *mailServer, version string) *mcp.Server {
	srv := mcp.NewServer(&mcp.Implementation{
		Name:    "lanyard-mail-mcp",
		Title:   "Mail (through Lanyard)",
		Version: version,
	}, &mcp.ServerOptions{
		Instructions: "Reads the signed-in user's mailbox over IMAP. The user links the mail account in Lanyard " +
			"and chooses it when approving this application; this server never sees the user's password " +
			"except for the one call it is used for.",
	})
	yes := true
	readOnly := &mcp.ToolAnnotations{ReadOnlyHint: true, IdempotentHint: true, OpenWorldHint: &yes}

	mcp.AddTool(srv, &mcp.Tool{
		Name:        toolListMailboxes,
		Title:       "List mailboxes",
		Description: "Lists the mailboxes (folders) of the user's linked mail account.",
		Annotations: readOnly,
	}, s.listMailboxes)
	mcp.AddTool(srv, &mcp.Tool{
		Name:  toolSearchMessages,
		Title: "Search messages",
		Description: "Searches one mailbox (default INBOX) of the user's linked mail account. Every criterion given " +
			"must match (case-insensitive substring); with none, the newest messages are listed. " +
			"Returns at most `limit` messages, newest first, with their UIDs for read_message.",
		Annotations: readOnly,
	}, s.searchMessages)
	mcp.AddTool(srv, &mcp.Tool{
		Name:        toolReadMessage,
		Title:       "Read a message",
		Description: "Reads one message (headers and plain-text body) by mailbox and UID, without marking it read.",
		Annotations: readOnly,
	}, s.readMessage)
	return srv
}

// Inputs and outputs of the tools.
type (
	listIn  struct{}
	listOut struct {
		Mailboxes []Mailbox `json:"mailboxes"`
	}
	searchIn struct {
		Subject string `json:"subject,omitempty" jsonschema:"only messages whose Subject contains this text"`
		From    string `json:"from,omitempty" jsonschema:"only messages whose From contains this text"`
		Text    string `json:"text,omitempty" jsonschema:"only messages whose headers or body contain this text"`
		Mailbox string `json:"mailbox,omitempty" jsonschema:"the mailbox to search; default INBOX"`
		Limit   int    `json:"limit,omitempty" jsonschema:"at most this many messages, newest first (1 to 50; default 10)"`
	}
	searchOut struct {
		Mailbox  string           `json:"mailbox"`
		Total    int              `json:"total"`
		Messages []MessageSummary `json:"messages"`
	}
	readIn struct {
		Mailbox string `json:"mailbox" jsonschema:"the mailbox that holds the message, as search_messages returned it"`
		UID     uint32 `json:"uid" jsonschema:"the message's UID, as search_messages returned it"`
	}
)

func (s *mailServer) listMailboxes(ctx context.Context, req *mcp.CallToolRequest, _ listIn) (*mcp.CallToolResult, listOut, error) {
	a, err := s.account(ctx, req, toolListMailboxes)
	if err != nil {
		return nil, listOut{}, err
	}
	boxes, err := s.imap.listMailboxes(ctx, a)
	if err != nil {
		return nil, listOut{}, s.imapFailed(toolListMailboxes, err)
	}
	if boxes == nil {
		boxes = []Mailbox{}
	}
	return nil, listOut{Mailboxes: boxes}, nil
}

func (s *mailServer) searchMessages(ctx context.Context, req *mcp.CallToolRequest, in searchIn) (*mcp.CallToolResult, searchOut, error) {
	if in.Mailbox == "" {
		in.Mailbox = "INBOX"
	}
	var errs []error
	if err := validMailbox(in.Mailbox); err != nil {
		errs = append(errs, err)
	}
	for _, f := range []struct{ name, v string }{{"subject", in.Subject}, {"from", in.From}, {"text", in.Text}} {
		if err := validQueryText(f.name, f.v); err != nil {
			errs = append(errs, err)
		}
	}
	switch {
	case in.Limit == 0:
		in.Limit = defaultSearchLimit
	case in.Limit < 1 || in.Limit > maxSearchLimit:
		errs = append(errs, fmt.Errorf("limit must be between 1 and %d", maxSearchLimit))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, searchOut{}, err // before any redemption: bad input costs nothing
	}
	a, err := s.account(ctx, req, toolSearchMessages)
	if err != nil {
		return nil, searchOut{}, err
	}
	msgs, total, err := s.imap.searchMessages(ctx, a, in.Mailbox, Query{Subject: in.Subject, From: in.From, Text: in.Text}, in.Limit)
	if err != nil {
		return nil, searchOut{}, s.imapFailed(toolSearchMessages, err)
	}
	if msgs == nil {
		msgs = []MessageSummary{}
	}
	return nil, searchOut{Mailbox: in.Mailbox, Total: total, Messages: msgs}, nil
}

func (s *mailServer) readMessage(ctx context.Context, req *mcp.CallToolRequest, in readIn) (*mcp.CallToolResult, *Message, error) {
	var errs []error
	if err := validMailbox(in.Mailbox); err != nil {
		errs = append(errs, err)
	}
	if in.UID == 0 {
		errs = append(errs, errors.New("uid is required (a positive number from search_messages)"))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, nil, err
	}
	a, err := s.account(ctx, req, toolReadMessage)
	if err != nil {
		return nil, nil, err
	}
	m, err := s.imap.readMessage(ctx, a, in.Mailbox, in.UID)
	if err != nil {
		return nil, nil, s.imapFailed(toolReadMessage, err)
	}
	return nil, m, nil
}

// account redeems the agent's token at Lanyard for the user's mail
// account, for this one tool call. Nothing of the credential is logged or
// kept beyond what the SDK caches (never past the credential's expiry).
func (s *mailServer) account(ctx context.Context, req *mcp.CallToolRequest, tool string) (imapAccount, error) {
	tok, ok := gosdk.TokenFromRequest(req)
	if !ok {
		// The bearer middleware runs before every request; this is a wiring bug.
		s.log.Error("tool call without a verified token", "tool", tool)
		return imapAccount{}, errors.New("this request carries no verified access token")
	}
	log := s.log.With("tool", tool, "client_id", tok.ClientID, "grant", tok.GrantID, "sub", tok.Subject)
	cred, err := s.auth.Redeem(ctx, tok, s.connector, tool)
	if err != nil {
		var re *mcpauth.RedeemError
		if errors.As(err, &re) {
			log.Info("redemption refused", "status", re.Status, "error", re.Code, "description", re.Description, "scope", re.Scope)
			return imapAccount{}, s.gate.refused(req, re)
		}
		log.Warn("redemption failed", "err", err)
		return imapAccount{}, fmt.Errorf("could not get the mail account from Lanyard (try again later): %v", err)
	}
	if cred.Type != "basic" {
		log.Error("redeemed a credential of the wrong type", "connector", cred.Connector, "type", cred.Type, "connection", cred.ConnectionID)
		return imapAccount{}, fmt.Errorf("the %q connector in Lanyard is not a user name and password (IMAP) connector", s.connector)
	}
	a, err := accountFromFields(cred.Fields)
	if err != nil {
		log.Error("redeemed credential is unusable", "connection", cred.ConnectionID, "err", err)
		return imapAccount{}, fmt.Errorf("the mail account from Lanyard is unusable: %v", err)
	}
	if cred.ExpiresAt.IsZero() {
		log.Info("redeemed", "connection", cred.ConnectionID)
	} else {
		log.Info("redeemed", "connection", cred.ConnectionID, "expires_at", cred.ExpiresAt.UTC().Format(time.RFC3339))
	}
	return a, nil
}

// imapFailed logs an IMAP failure and returns the tool's error. A failure
// to reach or talk to the mail server is only msgUnreachable to the agent:
// the address the credential named and the dial or TLS error (which could
// tell what listens where) are for the log alone.
func (s *mailServer) imapFailed(tool string, err error) error {
	var me *mailServerError
	if errors.As(err, &me) {
		s.log.Warn("mail server unreachable", "tool", tool, "err", me.Detail())
		return errors.New(msgUnreachable)
	}
	s.log.Info("mail server call failed", "tool", tool, "err", err)
	return err
}

// refusal is what an agent is told when Lanyard refused a redemption.
func refusal(re *mcpauth.RedeemError) string {
	msg := "Lanyard refused access to the mail account"
	if re.Code != "" {
		msg += " (" + re.Code + ")"
	}
	if re.Description != "" {
		msg += ": " + re.Description
	}
	switch {
	case re.Code == "insufficient_scope" && re.Scope != "":
		msg += fmt.Sprintf("; the token needs scope %q", re.Scope)
	case re.Status == http.StatusUnauthorized:
		msg += "; sign in again"
	}
	return msg
}
