package links_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/lanyardhq/lanyard/broker"
	"github.com/lanyardhq/lanyard/broker/links"
	"github.com/lanyardhq/lanyard/connectors"
)

// exchangeConn is tokenConn that can also exchange: the "provider" answers
// "x:SUBJECT@AUDIENCE" and refuses (invalid_grant) the subjects in refuse.
type exchangeConn struct {
	*tokenConn
	mu       sync.Mutex
	subjects []string
	refuse   map[string]bool
}

func (c *exchangeConn) Exchange(_ context.Context, sec broker.Secret, audience string, _ []string) (connectors.Credential, error) {
	at, _ := sec.Field("access_token")
	c.mu.Lock()
	defer c.mu.Unlock()
	c.subjects = append(c.subjects, at)
	if c.refuse[at] || c.refuse["*"] {
		return connectors.Credential{}, fmt.Errorf("upstream said invalid_grant: %w", connectors.ErrNeedsRelink)
	}
	return connectors.Credential{Type: connectors.KindOAuth2, Fields: map[string]any{"access_token": "x:" + at + "@" + audience}}, nil
}

func TestExchangeRefreshesFirstAndKeepsTheStoredToken(t *testing.T) {
	up := &exchangeConn{tokenConn: &tokenConn{}}
	s, _, secrets, _ := newService(t, up)
	ctx := context.Background()
	conn, err := s.LinkForm(ctx, "U1", "up", "", connectors.Input{"token": "a0"}) // a0 has expired
	if err != nil {
		t.Fatal(err)
	}
	cred, err := s.Exchange(ctx, conn, "api://mail")
	if err != nil {
		t.Fatal(err)
	}
	if cred.Fields["access_token"] != "x:a1@api://mail" || up.refreshes.Load() != 1 {
		t.Errorf("Exchange = %v after %d refreshes; want the refreshed a1 exchanged", cred.Fields, up.refreshes.Load())
	}
	if cred, err = s.Exchange(ctx, conn, ""); err != nil || cred.Fields["access_token"] != "x:a1@" || up.refreshes.Load() != 1 {
		t.Errorf("second Exchange = %v, %v after %d refreshes; want a1 exchanged again, no refresh", cred.Fields, err, up.refreshes.Load())
	}
	stored, _, _ := secrets.Get(ctx, conn.SecretKey)
	if at, _ := stored.Field("access_token"); at != "a1" {
		t.Errorf("stored access token %q, want a1 (the exchanged token is never stored)", at)
	}
}

func TestExchangeRefusedSubject(t *testing.T) {
	ctx := context.Background()
	t.Run("RefreshCures", func(t *testing.T) {
		// The access token alone was revoked: one refresh, one retry.
		up := &exchangeConn{tokenConn: &tokenConn{}, refuse: map[string]bool{"a1": true}}
		s, db, _, _ := newService(t, up)
		conn, err := s.LinkForm(ctx, "U1", "up", "", connectors.Input{"token": "a0"})
		if err != nil {
			t.Fatal(err)
		}
		cred, err := s.Exchange(ctx, conn, "")
		if err != nil || cred.Fields["access_token"] != "x:a2@" {
			t.Fatalf("Exchange = %v, %v; want a2 exchanged after a forced refresh", cred.Fields, err)
		}
		if fmt.Sprint(up.subjects) != "[a1 a2]" {
			t.Errorf("subjects %v, want [a1 a2]", up.subjects)
		}
		if c, _ := db.Connections().Get(ctx, conn.ID); c.Status != broker.ConnectionActive {
			t.Errorf("status %q, want active", c.Status)
		}
	})
	t.Run("GrantGone", func(t *testing.T) {
		// The refresh fails with invalid_grant too: needs re-link.
		up := &exchangeConn{tokenConn: &tokenConn{}, refuse: map[string]bool{"*": true}}
		s, db, _, _ := newService(t, up)
		conn, err := s.LinkForm(ctx, "U1", "up", "", connectors.Input{"token": "a0"})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.Credential(ctx, conn); err != nil { // refresh to a1 while the grant lives
			t.Fatal(err)
		}
		conn, _ = db.Connections().Get(ctx, conn.ID)
		up.fail = fmt.Errorf("invalid_grant: %w", connectors.ErrNeedsRelink)
		if _, err := s.Exchange(ctx, conn, ""); !errors.Is(err, links.ErrNeedsRelink) {
			t.Fatalf("Exchange = %v, want ErrNeedsRelink", err)
		}
		conn, _ = db.Connections().Get(ctx, conn.ID)
		if conn.Status != broker.ConnectionNeedsRelink {
			t.Errorf("status %q, want needs_relink", conn.Status)
		}
		if _, err := s.Exchange(ctx, conn, ""); !errors.Is(err, links.ErrNeedsRelink) || len(up.subjects) != 1 {
			t.Errorf("Exchange of a needs-relink connection = %v after %d exchanges; want ErrNeedsRelink without asking upstream", err, len(up.subjects))
		}
	})
	t.Run("PolicyRefusesEvenFreshTokens", func(t *testing.T) {
		up := &exchangeConn{tokenConn: &tokenConn{}, refuse: map[string]bool{"*": true}}
		s, db, _, _ := newService(t, up)
		conn, err := s.LinkForm(ctx, "U1", "up", "", connectors.Input{"token": "a0"})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.Exchange(ctx, conn, ""); !errors.Is(err, connectors.ErrUpstream) || errors.Is(err, connectors.ErrNeedsRelink) {
			t.Errorf("Exchange = %v, want ErrUpstream only", err)
		}
		if c, _ := db.Connections().Get(ctx, conn.ID); c.Status != broker.ConnectionActive {
			t.Errorf("status %q, want active (the user's link is not at fault)", c.Status)
		}
	})
}

func TestExchangeUnsupported(t *testing.T) {
	s, _, _, _ := newService(t, &tokenConn{})
	conn, err := s.LinkForm(context.Background(), "U1", "up", "", connectors.Input{"token": "a0"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Exchange(context.Background(), conn, ""); !errors.Is(err, errors.ErrUnsupported) {
		t.Errorf("Exchange with a connector that cannot = %v, want ErrUnsupported", err)
	}
}
