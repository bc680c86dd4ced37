package authserver

import (
	"context"
	"strings"

	"github.com/lanyardhq/lanyard/broker"
	"github.com/lanyardhq/lanyard/broker/oauth"
	"github.com/lanyardhq/lanyard/internal/httpx"
)

// audit appends e to the audit chain with the request's ID. Callers that
// are about to grant something fail closed on its error; denials only log
// it.
func (s *Server) audit(ctx context.Context, e broker.AuditEvent) error {
	e.RequestID = httpx.RequestID(ctx)
	if _, err := s.o.Store.Audit().Append(ctx, e); err != nil {
		s.o.Logger.ErrorContext(ctx, "audit append failed", "action", e.Action, "outcome", e.Outcome, "err", err)
		return oauth.ErrTemporarilyUnavailable.WithDescription("the audit record could not be written; try again").WithCause(err)
	}
	return nil
}

// auditDenied records a refused request; its own failure is only logged.
func (s *Server) auditDenied(ctx context.Context, action string, err error, e broker.AuditEvent) {
	oe := oauth.As(err)
	e.Action, e.Outcome, e.Reason = action, broker.OutcomeDenied, strings.TrimSpace(oe.Code+" "+oe.Description)
	if oe.Status >= 500 {
		e.Outcome = broker.OutcomeError
	}
	_ = s.audit(ctx, e)
}
