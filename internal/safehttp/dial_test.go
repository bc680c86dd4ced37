package safehttp

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"
)

// countingListener listens on 127.0.0.1 and counts the connections it
// accepts.
func countingListener(t *testing.T) (addr string, accepted *atomic.Int32) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	accepted = new(atomic.Int32)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			_ = c.Close()
		}
	}()
	return l.Addr().String(), accepted
}

func TestDialer(t *testing.T) {
	addr, accepted := countingListener(t)
	ctx := t.Context()
	if _, err := Dialer(false).DialContext(ctx, "tcp", addr); !errors.Is(err, ErrBlockedAddress) {
		t.Errorf("Dialer(false) to %s = %v, want ErrBlockedAddress", addr, err)
	}
	if _, err := Dialer(true).DialContext(ctx, "udp", "8.8.8.8:53"); !errors.Is(err, ErrBlockedAddress) {
		t.Errorf("Dialer(true) over udp = %v, want ErrBlockedAddress", err)
	}
	if n := accepted.Load(); n != 0 {
		t.Errorf("%d connections reached the listener through a refusing dialer", n)
	}
	c, err := Dialer(true).DialContext(ctx, "tcp", addr)
	if err != nil {
		t.Fatalf("Dialer(true) to %s = %v", addr, err)
	}
	c.Close()
}

func TestResolve(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	for _, tc := range []struct {
		host          string
		allowLoopback bool
		want          string // the one address returned; "" for a refusal
	}{
		{"93.184.216.34", false, "93.184.216.34"},
		{"::ffff:93.184.216.34", false, "93.184.216.34"}, // unmapped
		{"2606:2800:220:1:248:1893:25c8:1946", false, "2606:2800:220:1:248:1893:25c8:1946"},
		{"127.0.0.1", true, "127.0.0.1"},
		{"::ffff:127.0.0.1", true, "127.0.0.1"},
		{"127.0.0.1", false, ""},
		{"::1", false, ""},
		{"10.1.2.3", true, ""},
		{"169.254.169.254", true, ""},
		{"::ffff:169.254.169.254", false, ""},
		{"fe80::1%eth0", true, ""},
		{"0.0.0.0", true, ""},
	} {
		ips, err := Resolve(ctx, tc.host, tc.allowLoopback)
		if tc.want == "" {
			if !errors.Is(err, ErrBlockedAddress) || ips != nil {
				t.Errorf("Resolve(%s, %v) = %v, %v; want ErrBlockedAddress", tc.host, tc.allowLoopback, ips, err)
			}
			continue
		}
		if err != nil || len(ips) != 1 || ips[0] != netip.MustParseAddr(tc.want) {
			t.Errorf("Resolve(%s, %v) = %v, %v; want [%s]", tc.host, tc.allowLoopback, ips, err, tc.want)
		}
	}

	// localhost is a name: it is resolved, and every address it stands for
	// is judged.
	if _, err := Resolve(ctx, "localhost", false); !errors.Is(err, ErrBlockedAddress) {
		t.Errorf("Resolve(localhost, false) = %v, want ErrBlockedAddress", err)
	}
	ips, err := Resolve(ctx, "localhost", true)
	if err != nil || len(ips) == 0 {
		t.Fatalf("Resolve(localhost, true) = %v, %v", ips, err)
	}
	for _, ip := range ips {
		if !ip.IsLoopback() || ip.Is4In6() {
			t.Errorf("Resolve(localhost, true) returned %s", ip)
		}
	}

	// A failed lookup is not a refused address.
	if _, err := Resolve(ctx, "no-such-host.invalid", true); err == nil || errors.Is(err, ErrBlockedAddress) {
		t.Errorf("Resolve of an unknown name = %v, want a lookup error", err)
	}
}

func TestDialChecked(t *testing.T) {
	addr, accepted := countingListener(t)
	_, port, _ := net.SplitHostPort(addr)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()

	// Refused before any connection is made.
	for _, hp := range []string{addr, net.JoinHostPort("localhost", port), net.JoinHostPort("::ffff:127.0.0.1", port), "10.0.0.1:993", "169.254.169.254:80", "[fd00::1]:993"} {
		c, err := DialChecked(ctx, "tcp", hp, false)
		if !errors.Is(err, ErrBlockedAddress) || c != nil {
			t.Errorf("DialChecked(%s, false) = %v, %v; want ErrBlockedAddress", hp, c, err)
		}
	}
	if n := accepted.Load(); n != 0 {
		t.Errorf("%d connections reached the loopback listener", n)
	}
	if _, err := DialChecked(ctx, "udp", "8.8.8.8:53", true); !errors.Is(err, ErrBlockedAddress) {
		t.Errorf("DialChecked over udp = %v, want ErrBlockedAddress", err)
	}

	// Allowed: an IP literal, and localhost, whose addresses are dialled in
	// turn (the listener is on 127.0.0.1 only; ::1, if localhost has it and
	// it comes first, is refused by the kernel and the next address tried).
	for _, hp := range []string{addr, net.JoinHostPort("localhost", port)} {
		c, err := DialChecked(ctx, "tcp", hp, true)
		if err != nil {
			t.Errorf("DialChecked(%s, true) = %v", hp, err)
			continue
		}
		if got := c.RemoteAddr().String(); got != addr {
			t.Errorf("DialChecked(%s, true) reached %s, want %s", hp, got, addr)
		}
		c.Close()
	}
	c, err := DialChecked(ctx, "tcp4", addr, true)
	if err != nil {
		t.Errorf("DialChecked(tcp4, %s) = %v", addr, err)
	} else {
		c.Close()
	}

	// Errors that are not refusals: malformed input, a failed lookup, a
	// closed port, an ended context.
	for _, hp := range []string{"127.0.0.1", "127.0.0.1:imap", "127.0.0.1:70000"} {
		if _, err := DialChecked(ctx, "tcp", hp, true); err == nil || errors.Is(err, ErrBlockedAddress) {
			t.Errorf("DialChecked(%q) = %v, want an error that is not ErrBlockedAddress", hp, err)
		}
	}
	if _, err := DialChecked(ctx, "tcp", "no-such-host.invalid:993", true); err == nil || errors.Is(err, ErrBlockedAddress) {
		t.Errorf("DialChecked to an unknown name = %v, want a lookup error", err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := l.Addr().String()
	l.Close()
	var oe *net.OpError
	if _, err := DialChecked(ctx, "tcp", closed, true); !errors.As(err, &oe) || errors.Is(err, ErrBlockedAddress) {
		t.Errorf("DialChecked to a closed port = %v, want the dial's error", err)
	}
	done, stop := context.WithCancel(t.Context())
	stop()
	if _, err := DialChecked(done, "tcp", addr, true); !errors.Is(err, context.Canceled) {
		t.Errorf("DialChecked with an ended context = %v, want context.Canceled", err)
	}
}
