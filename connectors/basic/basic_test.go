package basic_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lanyardhq/lanyard/broker"
	"github.com/lanyardhq/lanyard/connectors"
	"github.com/lanyardhq/lanyard/connectors/basic"
	"github.com/lanyardhq/lanyard/connectors/connectortest"
	"github.com/lanyardhq/lanyard/internal/config"
	"github.com/lanyardhq/lanyard/internal/safehttp"
	"github.com/lanyardhq/lanyard/internal/testenv"
)

const (
	user     = "alice"
	password = "correct horse battery"
	wrongPW  = "wrong horse battery"
)

func input(kv ...string) connectors.Input {
	in := connectors.Input{}
	for i := 0; i+1 < len(kv); i += 2 {
		in[kv[i]] = broker.SecretString(kv[i+1])
	}
	return in
}

func newConnector(t *testing.T, cfg config.BasicConnector) *basic.Connector {
	t.Helper()
	c, err := basic.New("work-mail", "Work mail", cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return c
}

// TestSuite runs the shared connector suite against a real dovecot, once
// per TLS mode.
func TestSuite(t *testing.T) {
	for _, mode := range []string{basic.TLSImplicit, basic.TLSStartTLS, basic.TLSPlaintext} {
		t.Run(mode, func(t *testing.T) {
			d := testenv.StartDovecot(t, map[string]string{user: password})
			cfg := config.BasicConnector{Protocol: "imap", TLS: mode, Address: d.Addr}
			switch mode {
			case basic.TLSImplicit:
				cfg.Address, cfg.CACert = d.TLSAddr, d.CACert
			case basic.TLSStartTLS:
				// By name: the certificate is checked for "localhost".
				_, port, _ := net.SplitHostPort(d.Addr)
				cfg.Address, cfg.CACert = net.JoinHostPort("localhost", port), d.CACert
			}
			c := newConnector(t, cfg)
			good := input(basic.FieldUsername, user, basic.FieldPassword, password)
			connectortest.Run(t, connectortest.Harness{
				Connector: c,
				GoodInput: good,
				BadInput:  input(basic.FieldUsername, user, basic.FieldPassword, wrongPW),
				Link: func(t *testing.T) connectors.Linked {
					l, err := c.Link(context.Background(), good)
					if err != nil {
						t.Fatalf("Link: %v", err)
					}
					if want := user + " on " + strings.Split(cfg.Address, ":")[0]; l.Account != want {
						t.Errorf("Account = %q, want %q", l.Account, want)
					}
					return l
				},
				Break:   func(t *testing.T, _ connectors.Linked) { d.SetPassword(user, "a new password") },
				Secrets: []string{password, wrongPW, "a new password"},
			})
		})
	}
}

func TestRejectedPasswordMessage(t *testing.T) {
	d := testenv.StartDovecot(t, map[string]string{user: password})
	c := newConnector(t, config.BasicConnector{TLS: basic.TLSImplicit, Address: d.TLSAddr, CACert: d.CACert})
	_, err := c.Link(context.Background(), input(basic.FieldUsername, user, basic.FieldPassword, wrongPW))
	if !errors.Is(err, connectors.ErrRejected) {
		t.Fatalf("Link with a wrong password = %v, want ErrRejected", err)
	}
	if msg := err.Error(); !strings.Contains(msg, "refused this user name or password") || strings.Contains(msg, wrongPW) {
		t.Errorf("error message %q: want a clear refusal without the password", msg)
	}
	// An unknown user is the same refusal (no user enumeration).
	_, err = c.Link(context.Background(), input(basic.FieldUsername, "mallory", basic.FieldPassword, password))
	if !errors.Is(err, connectors.ErrRejected) {
		t.Errorf("Link of an unknown user = %v, want ErrRejected", err)
	}
}

func TestVerifyAfterPasswordChangeNeedsRelink(t *testing.T) {
	d := testenv.StartDovecot(t, map[string]string{user: password})
	c := newConnector(t, config.BasicConnector{TLS: basic.TLSImplicit, Address: d.TLSAddr, CACert: d.CACert})
	l, err := c.Link(context.Background(), input(basic.FieldUsername, user, basic.FieldPassword, password))
	if err != nil {
		t.Fatal(err)
	}
	d.SetPassword(user, "changed")
	if err := c.Verify(context.Background(), l.Secret); !errors.Is(err, connectors.ErrNeedsRelink) {
		t.Errorf("Verify after a password change = %v, want ErrNeedsRelink", err)
	}
}

// TestPlaintextServerRefused: with tls implicit or starttls, a server that
// only speaks plaintext (no STARTTLS) is an upstream error; the password is
// never sent.
func TestPlaintextServerRefused(t *testing.T) {
	d := testenv.StartDovecotPlaintext(t, map[string]string{user: password})
	good := input(basic.FieldUsername, user, basic.FieldPassword, password)
	for _, mode := range []string{basic.TLSImplicit, basic.TLSStartTLS} {
		t.Run(mode, func(t *testing.T) {
			c := newConnector(t, config.BasicConnector{TLS: mode, Address: d.Addr})
			_, err := c.Link(context.Background(), good)
			if !errors.Is(err, connectors.ErrUpstream) {
				t.Fatalf("Link = %v, want ErrUpstream", err)
			}
			if mode == basic.TLSStartTLS && !strings.Contains(err.Error(), "does not offer STARTTLS") {
				t.Errorf("error %q does not say STARTTLS is missing", err)
			}
		})
	}
	log, _ := os.ReadFile(filepath.Join(filepath.Dir(d.CACert), "dovecot.log"))
	if strings.Contains(string(log), "Login: user=<"+user+">") {
		t.Errorf("dovecot logged a login: the password was sent")
	}
	t.Run("plaintext allowed by config", func(t *testing.T) {
		c := newConnector(t, config.BasicConnector{TLS: basic.TLSPlaintext, Address: d.Addr})
		if _, err := c.Link(context.Background(), good); err != nil {
			t.Errorf("Link with tls: plaintext = %v", err)
		}
	})
}

func TestTLSCertificateChecked(t *testing.T) {
	d := testenv.StartDovecot(t, map[string]string{user: password})
	good := input(basic.FieldUsername, user, basic.FieldPassword, password)
	_, port, _ := net.SplitHostPort(d.TLSAddr)
	for _, tc := range []struct {
		name, addr, ca string
		ok             bool
	}{
		{"test CA by IP", d.TLSAddr, d.CACert, true},
		{"test CA by name", net.JoinHostPort("localhost", port), d.CACert, true},
		{"other CA", d.TLSAddr, otherCA(t), false},
		{"system roots", d.TLSAddr, "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newConnector(t, config.BasicConnector{TLS: basic.TLSImplicit, Address: tc.addr, CACert: tc.ca})
			_, err := c.Link(context.Background(), good)
			switch {
			case tc.ok && err != nil:
				t.Errorf("Link = %v, want success", err)
			case !tc.ok && !errors.Is(err, connectors.ErrUpstream):
				t.Errorf("Link = %v, want ErrUpstream", err)
			}
		})
	}
	t.Run("starttls other CA", func(t *testing.T) {
		c := newConnector(t, config.BasicConnector{TLS: basic.TLSStartTLS, Address: d.Addr, CACert: otherCA(t)})
		if _, err := c.Link(context.Background(), good); !errors.Is(err, connectors.ErrUpstream) {
			t.Errorf("Link = %v, want ErrUpstream", err)
		}
	})
}

// otherCA writes a CA certificate that did not sign dovecot's certificate.
func otherCA(t *testing.T) string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "some other CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "other-ca.pem")
	if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestUserAddressSSRF: a user-supplied server address must not reach
// loopback, private or link-local addresses; the same dovecot is fine when
// the operator fixes the address in the config.
func TestUserAddressSSRF(t *testing.T) {
	d := testenv.StartDovecot(t, map[string]string{user: password})
	c := newConnector(t, config.BasicConnector{TLS: basic.TLSImplicit, AllowUserAddress: true, CACert: d.CACert})
	if f := c.Fields(); len(f) != 3 || f[2].Name != basic.FieldAddress {
		t.Errorf("Fields = %+v, want username, password, address", f)
	}
	_, port, _ := net.SplitHostPort(d.TLSAddr)
	for _, addr := range []string{
		d.TLSAddr, net.JoinHostPort("localhost", port), "[::1]:993", "[::ffff:127.0.0.1]:993",
		"10.1.2.3:993", "192.168.0.1:993", "169.254.169.254:993", "[fe80::1]:993", "0.0.0.0:993",
	} {
		t.Run(addr, func(t *testing.T) {
			_, err := c.Link(context.Background(), input(basic.FieldUsername, user, basic.FieldPassword, password, basic.FieldAddress, addr))
			if !errors.Is(err, broker.ErrInvalid) || !errors.Is(err, safehttp.ErrBlockedAddress) {
				t.Errorf("Link to %s = %v, want ErrInvalid and ErrBlockedAddress", addr, err)
			}
		})
	}
	for _, addr := range []string{"imap.example.com", "imap.example.com:0", "imap.example.com:99999", ":993", "a b:993"} {
		_, err := c.Link(context.Background(), input(basic.FieldUsername, user, basic.FieldPassword, password, basic.FieldAddress, addr))
		if !errors.Is(err, broker.ErrInvalid) {
			t.Errorf("Link to malformed %q = %v, want ErrInvalid", addr, err)
		}
	}

	fixed := newConnector(t, config.BasicConnector{TLS: basic.TLSImplicit, Address: d.TLSAddr, AllowUserAddress: true, CACert: d.CACert})
	if f := fixed.Fields(); len(f) != 2 {
		t.Errorf("Fields with a fixed address = %+v, want no address field", f)
	}
	// The fixed address wins over anything the user sends.
	l, err := fixed.Link(context.Background(), input(basic.FieldUsername, user, basic.FieldPassword, password, basic.FieldAddress, "169.254.169.254:993"))
	if err != nil {
		t.Fatalf("Link with the fixed loopback address = %v", err)
	}
	if got, _ := l.Secret.Field(basic.FieldAddress); got != d.TLSAddr {
		t.Errorf("stored address = %q, want %q", got, d.TLSAddr)
	}
}

// TestHangingServerBounded: a server that accepts and never answers costs
// at most the caller's deadline, and the error says so.
func TestHangingServerBounded(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	for _, mode := range []string{basic.TLSImplicit, basic.TLSPlaintext} {
		c := newConnector(t, config.BasicConnector{TLS: mode, Address: ln.Addr().String()})
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		start := time.Now()
		_, err := c.Link(ctx, input(basic.FieldUsername, user, basic.FieldPassword, password))
		cancel()
		if el := time.Since(start); el > 3*time.Second {
			t.Errorf("%s: Link took %v with a 300ms deadline", mode, el)
		}
		if !errors.Is(err, connectors.ErrUpstream) || !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("%s: Link = %v, want ErrUpstream and DeadlineExceeded", mode, err)
		}
	}
}

func TestMaterialize(t *testing.T) {
	d := testenv.StartDovecot(t, map[string]string{user: password})
	c := newConnector(t, config.BasicConnector{TLS: basic.TLSImplicit, Address: d.TLSAddr, CACert: d.CACert})
	l, err := c.Link(context.Background(), input(basic.FieldUsername, user, basic.FieldPassword, password))
	if err != nil {
		t.Fatal(err)
	}
	cred, err := c.Materialize(context.Background(), l.Secret)
	if err != nil {
		t.Fatal(err)
	}
	host, port, _ := net.SplitHostPort(d.TLSAddr)
	want := map[string]any{"username": user, "password": password, "host": host, "tls": "implicit"}
	for k, v := range want {
		if cred.Fields[k] != v {
			t.Errorf("Fields[%s] = %v, want %v", k, cred.Fields[k], v)
		}
	}
	if p, ok := cred.Fields["port"].(int); !ok || port != itoa(p) {
		t.Errorf("Fields[port] = %v, want %s", cred.Fields["port"], port)
	}
	if cred.Type != "basic" {
		t.Errorf("Type = %q", cred.Type)
	}
	if _, err := c.Materialize(context.Background(), broker.Secret{}); !errors.Is(err, broker.ErrInvalid) {
		t.Errorf("Materialize of an empty secret = %v, want ErrInvalid", err)
	}
}

func itoa(n int) string { return big.NewInt(int64(n)).String() }

func TestNewRejectsBadConfig(t *testing.T) {
	for name, cfg := range map[string]config.BasicConnector{
		"no address":    {TLS: "implicit"},
		"bad tls":       {TLS: "sometimes", Address: "imap.example.com:993"},
		"bad protocol":  {Protocol: "pop3", Address: "imap.example.com:995"},
		"bad address":   {Address: "imap.example.com"},
		"missing CA":    {Address: "imap.example.com:993", CACert: "/nonexistent/ca.pem"},
		"empty CA file": {Address: "imap.example.com:993", CACert: os.DevNull},
	} {
		if _, err := basic.New("x", "X", cfg); err == nil {
			t.Errorf("%s: New succeeded", name)
		}
	}
	if _, err := basic.New("", "X", config.BasicConnector{Address: "imap.example.com:993"}); err == nil {
		t.Error("New without a name succeeded")
	}
}

func TestInputValidation(t *testing.T) {
	c := newConnector(t, config.BasicConnector{Address: "127.0.0.1:1"})
	for name, in := range map[string]connectors.Input{
		"CRLF in user":     input(basic.FieldUsername, "a\r\nb", basic.FieldPassword, "x"),
		"CRLF in password": input(basic.FieldUsername, "a", basic.FieldPassword, "x\r\nA1 LOGOUT"),
		"long password":    input(basic.FieldUsername, "a", basic.FieldPassword, strings.Repeat("x", 2000)),
		"no fields":        input(),
	} {
		if _, err := c.Link(context.Background(), in); !errors.Is(err, broker.ErrInvalid) {
			t.Errorf("%s: Link = %v, want ErrInvalid", name, err)
		}
	}
}
