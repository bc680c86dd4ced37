// Package connectortest is the suite every connector kind runs, the way
// testing/fstest checks a file system: it exercises the required interface
// and whichever optional capabilities the connector implements, against
// the real upstream the caller provides (dovecot, redis, an OIDC provider).
package connectortest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/lanyardhq/lanyard/broker"
	"github.com/lanyardhq/lanyard/connectors"
)

// Harness describes one connector under test and how to drive its upstream.
type Harness struct {
	Connector connectors.Connector
	// Link links an account successfully (a FormLinker with good input, or
	// a RedirectLinker driven through the provider) and returns the result.
	Link func(t *testing.T) connectors.Linked
	// GoodInput and BadInput are for FormLinkers: input the upstream
	// accepts, and input it rejects (a wrong password or key).
	GoodInput, BadInput connectors.Input
	// Break, if set, makes a linked credential stop working upstream
	// (change the password, revoke the token).
	Break func(t *testing.T, l connectors.Linked)
	// Secrets are values that must never appear in errors, the account
	// identity, or the printed Linked value (passwords, keys, tokens).
	Secrets []string
}

// Run runs the suite. Each check is a named subtest.
func Run(t *testing.T, h Harness) {
	t.Helper()
	c := h.Connector
	t.Run("Identity", func(t *testing.T) {
		if c.Name() == "" || c.DisplayName() == "" {
			t.Errorf("Name %q DisplayName %q: both must be set", c.Name(), c.DisplayName())
		}
		if !slices.Contains([]string{connectors.KindOAuth2, connectors.KindAPIKey, connectors.KindBasic, connectors.KindSocket}, c.Kind()) {
			t.Errorf("Kind %q is not a known kind", c.Kind())
		}
		_, form := c.(connectors.FormLinker)
		_, redirect := c.(connectors.RedirectLinker)
		if form == redirect {
			t.Errorf("a connector must be exactly one of FormLinker and RedirectLinker (form %v, redirect %v)", form, redirect)
		}
	})
	var linked connectors.Linked
	t.Run("Link", func(t *testing.T) {
		linked = h.Link(t)
		if linked.Secret.Len() == 0 {
			t.Fatal("Link returned an empty secret")
		}
		printed := fmt.Sprintf("%v %+v %#v %s", linked, linked, linked, linked.Account)
		h.noSecrets(t, "the printed Linked value or account", printed)
	})
	if fl, ok := c.(connectors.FormLinker); ok {
		t.Run("Form", func(t *testing.T) { h.testForm(t, fl) })
	}
	if linked.Secret.Len() == 0 {
		return
	}
	if m, ok := c.(connectors.Materializer); ok {
		t.Run("Materialize", func(t *testing.T) {
			cred, err := m.Materialize(context.Background(), linked.Secret)
			if err != nil {
				t.Fatalf("Materialize: %v", err)
			}
			if cred.Type != c.Kind() || len(cred.Fields) == 0 {
				t.Errorf("Materialize = type %q with %d fields; want type %q and fields", cred.Type, len(cred.Fields), c.Kind())
			}
		})
	}
	if v, ok := c.(connectors.Verifier); ok {
		t.Run("Verify", func(t *testing.T) {
			if err := v.Verify(context.Background(), linked.Secret); err != nil {
				t.Fatalf("Verify of a fresh link: %v", err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			if err := v.Verify(ctx, linked.Secret); !errors.Is(err, context.Canceled) {
				t.Errorf("Verify with a cancelled context = %v, want context.Canceled", err)
			}
			if err := v.Verify(context.Background(), broker.Secret{}); err == nil {
				t.Error("Verify of an empty secret succeeded")
			}
			if h.Break != nil {
				h.Break(t, linked)
				err := v.Verify(context.Background(), linked.Secret)
				if !errors.Is(err, connectors.ErrNeedsRelink) && !errors.Is(err, connectors.ErrRejected) {
					t.Errorf("Verify after Break = %v, want ErrNeedsRelink or ErrRejected", err)
				}
				if err != nil {
					h.noSecrets(t, "the Verify error", err.Error())
				}
			}
		})
	}
}

func (h Harness) testForm(t *testing.T, fl connectors.FormLinker) {
	fields := fl.Fields()
	if len(fields) == 0 {
		t.Fatal("a FormLinker must ask for at least one field")
	}
	seen := map[string]bool{}
	for _, f := range fields {
		if f.Name == "" || f.Label == "" || seen[f.Name] {
			t.Errorf("field %+v: name and label required, names unique", f)
		}
		seen[f.Name] = true
	}
	for _, f := range fields {
		if !f.Required || h.GoodInput == nil {
			continue
		}
		in := connectors.Input{}
		for k, v := range h.GoodInput {
			in[k] = v
		}
		delete(in, f.Name)
		if _, err := fl.Link(context.Background(), in); !errors.Is(err, broker.ErrInvalid) {
			t.Errorf("Link without required field %q = %v, want ErrInvalid", f.Name, err)
		}
	}
	if h.BadInput != nil {
		l, err := fl.Link(context.Background(), h.BadInput)
		if !errors.Is(err, connectors.ErrRejected) {
			t.Errorf("Link with rejected input = %v, want ErrRejected", err)
		}
		if l.Secret.Len() != 0 {
			t.Error("Link with rejected input returned a secret")
		}
		if err != nil {
			h.noSecrets(t, "the rejection error", err.Error())
			for _, v := range h.BadInput {
				if len(v) >= 6 && v.Reveal() != "" && strings.Contains(err.Error(), v.Reveal()) && !isPublicField(h.BadInput, v) {
					t.Errorf("the rejection error repeats an input value")
				}
			}
		}
	}
	if h.GoodInput != nil {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if _, err := fl.Link(ctx, h.GoodInput); !errors.Is(err, context.Canceled) {
			t.Errorf("Link with a cancelled context = %v, want context.Canceled", err)
		}
	}
}

// isPublicField: user names and addresses may appear in messages.
func isPublicField(in connectors.Input, v broker.SecretString) bool {
	for k, x := range in {
		if x == v && (k == "username" || k == "address" || k == "path") {
			return true
		}
	}
	return false
}

func (h Harness) noSecrets(t *testing.T, where, s string) {
	t.Helper()
	for _, sec := range h.Secrets {
		if sec != "" && strings.Contains(s, sec) {
			t.Errorf("%s contains a secret value", where)
		}
	}
}
