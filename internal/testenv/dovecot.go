package testenv

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"
)

// Dovecot is a real dovecot IMAP server started for one test.
type Dovecot struct {
	// Addr is the plaintext IMAP listener (127.0.0.1:port). When the server
	// has TLS it offers STARTTLS there.
	Addr string
	// TLSAddr is the implicit-TLS (imaps) listener; empty without TLS.
	TLSAddr string
	// CACert is the path of the PEM file of the CA that signed the server's
	// certificate (for "localhost" and 127.0.0.1); empty without TLS.
	CACert string
	// SetPassword sets (or adds) a user's password. It returns once every
	// later login sees the change (it may wait up to a second).
	SetPassword func(user, pw string)
}

// StartDovecot starts dovecot (Debian dovecot-imapd) on free loopback ports
// with the given users (name → password): plaintext IMAP with STARTTLS on
// Addr and implicit TLS on TLSAddr, with a certificate from a CA the test
// generates. The server is killed when the test ends.
//
// If dovecot is not installed the test fails under CI and is skipped
// otherwise (scripts/setup.sh installs it).
func StartDovecot(tb testing.TB, users map[string]string) *Dovecot {
	tb.Helper()
	return startDovecot(tb, users, true)
}

// StartDovecotPlaintext is StartDovecot without TLS: one plaintext listener
// that does not offer STARTTLS (ssl = no), for tests that a client refuses
// to send a password over it.
func StartDovecotPlaintext(tb testing.TB, users map[string]string) *Dovecot {
	tb.Helper()
	return startDovecot(tb, users, false)
}

func startDovecot(tb testing.TB, users map[string]string, withTLS bool) *Dovecot {
	tb.Helper()
	bin := needBinary(tb, "dovecot", "dovecot-core dovecot-imapd")
	// A short scratch directory rather than tb.TempDir(): dovecot puts unix
	// sockets under base_dir, and a path with a long test name would pass
	// the 108-byte limit of a socket address.
	dir := scratchDir(tb, "dc")
	// Dovecot's auth process (user dovecot) reads the passwd-file and mail
	// processes (uid 65534) open the homes below dir.
	if err := os.Chmod(dir, 0o755); err != nil {
		tb.Fatal(err)
	}
	for _, d := range []string{"run", "state", "mail"} {
		if err := os.Mkdir(filepath.Join(dir, d), 0o755); err != nil {
			tb.Fatal(err)
		}
	}
	if err := os.Chown(filepath.Join(dir, "mail"), 65534, 65534); err != nil && os.Geteuid() == 0 {
		tb.Fatal(err)
	}

	pw := &passwdFile{path: filepath.Join(dir, "users"), users: map[string]string{}}
	for u, p := range users {
		pw.users[u] = p
	}
	pw.write(tb)

	d := &Dovecot{Addr: Addr(FreePort(tb))}
	_, port, _ := net.SplitHostPort(d.Addr)
	sslConf := "ssl = no\n"
	imaps := "  inet_listener imaps {\n    port = 0\n  }\n"
	if withTLS {
		d.TLSAddr = Addr(FreePort(tb))
		_, tlsPort, _ := net.SplitHostPort(d.TLSAddr)
		d.CACert = writeServerCert(tb, dir)
		sslConf = fmt.Sprintf("ssl = yes\nssl_cert = <%s\nssl_key = <%s\nssl_min_protocol = TLSv1.2\n",
			filepath.Join(dir, "server.pem"), filepath.Join(dir, "server.key"))
		imaps = fmt.Sprintf("  inet_listener imaps {\n    address = 127.0.0.1\n    port = %s\n    ssl = yes\n  }\n", tlsPort)
	}
	conf := fmt.Sprintf(`protocols = imap
listen = 127.0.0.1
base_dir = %[1]s/run
state_dir = %[1]s/state
log_path = %[1]s/dovecot.log
%[2]sdisable_plaintext_auth = no
auth_mechanisms = plain login
auth_failure_delay = 0
mail_location = maildir:~/Maildir
service imap-login {
  inet_listener imap {
    address = 127.0.0.1
    port = %[3]s
  }
%[4]s}
# No auth penalty (anvil delays the next login from an IP by seconds after
# a failed one), which tests that fail logins on purpose would wait out.
service anvil {
  unix_listener anvil-auth-penalty {
    mode = 0
  }
}
passdb {
  driver = passwd-file
  args = scheme=PLAIN username_format=%%u %[1]s/users
}
userdb {
  driver = static
  args = uid=65534 gid=65534 home=%[1]s/mail/%%u
}
`, dir, sslConf, port, imaps)
	confPath := filepath.Join(dir, "dovecot.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		tb.Fatal(err)
	}
	// Check the configuration first: a bad one makes dovecot exit at once
	// with a message, where waiting for its port would only time out.
	if out, err := exec.Command(bin, "-c", confPath, "-n").CombinedOutput(); err != nil {
		tb.Fatalf("dovecot rejected its test configuration: %v\n%s", err, out)
	}
	Start(tb, exec.Command(bin, "-F", "-c", confPath))
	tb.Cleanup(func() {
		if tb.Failed() {
			if b, err := os.ReadFile(filepath.Join(dir, "dovecot.log")); err == nil {
				tb.Logf("dovecot.log:\n%s", b)
			}
		}
	})
	WaitTCP(tb, d.Addr, 15*time.Second)
	if d.TLSAddr != "" {
		WaitTCP(tb, d.TLSAddr, 15*time.Second)
	}
	d.SetPassword = func(user, p string) {
		pw.mu.Lock()
		pw.users[user] = p
		pw.mu.Unlock()
		pw.write(tb)
		// Dovecot looks at the passwd-file at most once per second (it
		// compares time(NULL) with the last check), so a login in the same
		// second as the last one could still see the old file. Wait for the
		// next second: any later login then re-reads it.
		time.Sleep(time.Until(time.Now().Truncate(time.Second).Add(time.Second + 10*time.Millisecond)))
	}
	return d
}

// passwdFile is dovecot's passwd-file of the test users.
type passwdFile struct {
	mu    sync.Mutex
	path  string
	users map[string]string
	stamp time.Time // mtime of the last write
}

// write replaces the file atomically and moves its mtime forward by at
// least a second, because dovecot notices a changed passwd-file by its
// mtime (whole seconds) and size.
func (p *passwdFile) write(tb testing.TB) {
	tb.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	names := make([]string, 0, len(p.users))
	for u := range p.users {
		if strings.ContainsAny(u, ":\n") || strings.ContainsAny(p.users[u], "\n") {
			tb.Fatalf("dovecot test user %q: user names may not contain ':' or newlines", u)
		}
		names = append(names, u)
	}
	sort.Strings(names)
	var b strings.Builder
	for _, u := range names {
		fmt.Fprintf(&b, "%s:{PLAIN}%s\n", u, p.users[u])
	}
	tmp := p.path + ".tmp"
	if err := os.WriteFile(tmp, []byte(b.String()), 0o644); err != nil {
		tb.Fatal(err)
	}
	mt := time.Now().Truncate(time.Second)
	if !p.stamp.IsZero() && !mt.After(p.stamp) {
		mt = p.stamp.Add(time.Second)
	}
	p.stamp = mt
	if err := os.Chtimes(tmp, mt, mt); err != nil {
		tb.Fatal(err)
	}
	if err := os.Rename(tmp, p.path); err != nil {
		tb.Fatal(err)
	}
}

// writeServerCert writes a throwaway CA (ca.pem) and a server certificate
// for localhost and 127.0.0.1 signed by it (server.pem, server.key) into dir
// and returns the CA's path.
func writeServerCert(tb testing.TB, dir string) string {
	tb.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "lanyard test CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		tb.Fatal(err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		tb.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "localhost"},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		tb.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		tb.Fatal(err)
	}
	caPath := filepath.Join(dir, "ca.pem")
	for path, blk := range map[string]*pem.Block{
		caPath:                           {Type: "CERTIFICATE", Bytes: caDER},
		filepath.Join(dir, "server.pem"): {Type: "CERTIFICATE", Bytes: der},
		filepath.Join(dir, "server.key"): {Type: "PRIVATE KEY", Bytes: keyDER},
	} {
		if err := os.WriteFile(path, pem.EncodeToMemory(blk), 0o600); err != nil {
			tb.Fatal(err)
		}
	}
	if err := os.Chmod(caPath, 0o644); err != nil {
		tb.Fatal(err)
	}
	return caPath
}

// needBinary returns the path of a server binary, failing the test under CI
// and skipping it otherwise when it is not installed.
func needBinary(tb testing.TB, name, debPackages string) string {
	tb.Helper()
	path, err := exec.LookPath(name)
	if err == nil {
		return path
	}
	for _, dir := range []string{"/usr/sbin", "/usr/bin"} {
		if p := filepath.Join(dir, name); isExecutable(p) {
			return p
		}
	}
	msg := name + " is not installed (apt-get install " + debPackages + ", or run scripts/setup.sh)"
	if InCI() {
		tb.Fatal(msg)
	}
	tb.Skip(msg)
	return ""
}

func isExecutable(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0
}

// scratchDir makes a short-named directory under the system temp dir that is
// removed when the test ends (after the processes started later, since
// cleanups run last-registered first).
func scratchDir(tb testing.TB, prefix string) string {
	tb.Helper()
	dir, err := os.MkdirTemp("", prefix)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = os.RemoveAll(dir) })
	return dir
}
