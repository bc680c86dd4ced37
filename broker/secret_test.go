package broker_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"github.com/lanyardhq/lanyard/broker"
)

// TestSecretsRedactThemselves prints secret-bearing values every way a stray
// log line or error might, directly and nested in structs, maps and slices.
func TestSecretsRedactThemselves(t *testing.T) {
	const canary = "canary-value-31c7"
	s := broker.SecretString(canary)
	sec := broker.NewSecret(map[string]string{"access_token": canary})
	type holder struct {
		Password broker.SecretString
		Cred     broker.Secret
		Ptr      *broker.SecretString
	}
	h := holder{Password: s, Cred: sec, Ptr: &s}
	values := []any{s, sec, h, &h, []broker.SecretString{s}, map[string]broker.Secret{"k": sec}}

	var out bytes.Buffer
	for _, v := range values {
		for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x", "%X", "%d", "%10.3s"} {
			fmt.Fprintf(&out, verb+"\n", v)
		}
		fmt.Fprintln(&out, v)
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatalf("json.Marshal(%T): %v", v, err)
		}
		out.Write(b)
	}
	log := slog.New(slog.NewJSONHandler(&out, nil))
	log.Info("x", "s", s, "sec", sec, "h", h)
	slog.New(slog.NewTextHandler(&out, nil)).Info("x", "s", s, "sec", sec, "h", h)
	fmt.Fprint(&out, fmt.Errorf("wrapped: %v", s), errors.New(s.String()))

	if strings.Contains(out.String(), canary) {
		t.Fatalf("a secret leaked:\n%s", out.String())
	}
	if !strings.Contains(out.String(), broker.Redacted) || !strings.Contains(out.String(), "access_token") {
		t.Errorf("output lacks the redaction marker or the field name:\n%s", out.String())
	}
	if s.Reveal() != canary {
		t.Errorf("Reveal = %q", s.Reveal())
	}
	if v, ok := sec.Field("access_token"); !ok || v != canary {
		t.Errorf("Field = %q, %v", v, ok)
	}
	f := sec.Fields()
	f["access_token"] = "changed"
	if v, _ := sec.Field("access_token"); v != canary {
		t.Error("Fields returned the secret's own map, not a copy")
	}
}

func TestRecordValidation(t *testing.T) {
	long := strings.Repeat("x", broker.MaxIDLen+1)
	for _, tc := range []struct {
		name string
		rec  broker.Record
		ok   bool
	}{
		{"user ok", broker.User{ID: "u1", Username: "alice@example.com"}, true},
		{"user no id", broker.User{Username: "alice"}, false},
		{"user long id", broker.User{ID: long, Username: "alice"}, false},
		{"user control char", broker.User{ID: "u\n1", Username: "alice"}, false},
		{"user bad name", broker.User{ID: "u1", Username: "../alice"}, false},
		{"client url id", broker.Client{ID: "https://app.example/client.json", Kind: broker.ClientMetadata}, true},
		{"grant missing resource", broker.Grant{ID: "g", UserID: "u", ClientID: "c"}, false},
		{"code without expiry", broker.AuthCode{ID: "h", ClientID: "c"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.rec.Validate()
			if (err == nil) != tc.ok {
				t.Fatalf("Validate = %v, want ok=%v", err, tc.ok)
			}
			if err != nil && !errors.Is(err, broker.ErrInvalid) {
				t.Errorf("Validate = %v, want it to wrap ErrInvalid", err)
			}
		})
	}
}

func TestSecretKey(t *testing.T) {
	for _, k := range []broker.SecretKey{{"", "n"}, {"o", ""}, {"..", "n"}, {"o", "a/b"}, {"o", "x\x00"}, {"o", ".hidden"}} {
		if err := k.Validate(); !errors.Is(err, broker.ErrInvalid) {
			t.Errorf("%q.Validate() = %v, want ErrInvalid", k.String(), err)
		}
	}
	if err := (broker.SecretKey{Owner: "user-1", Name: "github.com_oauth"}).Validate(); err != nil {
		t.Errorf("valid key: %v", err)
	}
}
