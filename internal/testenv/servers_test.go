package testenv_test

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/lanyardhq/lanyard/internal/testenv"
)

// imapLogin sends a LOGIN over c and returns the tagged answer line.
func imapLogin(t *testing.T, c net.Conn, user, pw string) string {
	t.Helper()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	r := bufio.NewReader(c)
	if greet, err := r.ReadString('\n'); err != nil || !strings.HasPrefix(greet, "* OK") {
		t.Fatalf("greeting %q, %v", greet, err)
	}
	if _, err := c.Write([]byte("a1 LOGIN " + user + " " + pw + "\r\n")); err != nil {
		t.Fatal(err)
	}
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			t.Fatalf("reading LOGIN answer: %v", err)
		}
		if strings.HasPrefix(line, "a1 ") {
			return line
		}
	}
}

func TestStartDovecot(t *testing.T) {
	d := testenv.StartDovecot(t, map[string]string{"alice": "secret1"})
	c, err := net.Dial("tcp", d.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got := imapLogin(t, c, "alice", "secret1"); !strings.HasPrefix(got, "a1 OK") {
		t.Errorf("plaintext LOGIN = %q, want OK", got)
	}

	pem, err := os.ReadFile(d.CACert)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(pem)
	tc, err := tls.Dial("tcp", d.TLSAddr, &tls.Config{RootCAs: roots, ServerName: "localhost"})
	if err != nil {
		t.Fatalf("TLS to %s with the test CA: %v", d.TLSAddr, err)
	}
	defer tc.Close()
	d.SetPassword("alice", "secret2")
	if got := imapLogin(t, tc, "alice", "secret1"); !strings.HasPrefix(got, "a1 NO") {
		t.Errorf("LOGIN with the old password after SetPassword = %q, want NO", got)
	}
}

func TestStartDovecotPlaintext(t *testing.T) {
	d := testenv.StartDovecotPlaintext(t, map[string]string{"bob": "pw"})
	if d.TLSAddr != "" || d.CACert != "" {
		t.Errorf("plaintext dovecot has TLSAddr %q CACert %q", d.TLSAddr, d.CACert)
	}
	c, err := net.Dial("tcp", d.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	greet, _ := bufio.NewReader(c).ReadString('\n')
	if strings.Contains(greet, "STARTTLS") {
		t.Errorf("greeting %q offers STARTTLS", greet)
	}
}

func TestStartRedis(t *testing.T) {
	sock := testenv.StartRedis(t, "pw")
	fi, err := os.Stat(sock)
	if err != nil || fi.Mode()&os.ModeSocket == 0 {
		t.Fatalf("stat %s: %v %v", sock, fi, err)
	}
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	r := bufio.NewReader(c)
	for cmd, want := range map[string]string{"PING\r\n": "-NOAUTH"} {
		_, _ = c.Write([]byte(cmd))
		if got, _ := r.ReadString('\n'); !strings.HasPrefix(got, want) {
			t.Errorf("%q = %q, want %s", cmd, got, want)
		}
	}
	_, _ = c.Write([]byte("AUTH pw\r\nPING\r\n"))
	for _, want := range []string{"+OK", "+PONG"} {
		if got, _ := r.ReadString('\n'); !strings.HasPrefix(got, want) {
			t.Errorf("got %q, want %s", got, want)
		}
	}
}
