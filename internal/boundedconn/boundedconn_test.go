package boundedconn_test

import (
	"errors"
	"net"
	"os"
	"testing"
	"time"

	"github.com/lanyardhq/lanyard/internal/boundedconn"
)

// TestDeadlineHolds: clearing or extending the deadline does not let a read
// outlive the overall deadline; an earlier deadline is kept.
func TestDeadlineHolds(t *testing.T) {
	for _, tc := range []struct {
		name    string
		overall time.Duration
		set     func(c net.Conn) error
		max     time.Duration
	}{
		{"cleared", 200 * time.Millisecond, func(c net.Conn) error { return c.SetDeadline(time.Time{}) }, 3 * time.Second},
		{"read cleared", 200 * time.Millisecond, func(c net.Conn) error { return c.SetReadDeadline(time.Time{}) }, 3 * time.Second},
		{"extended", 200 * time.Millisecond, func(c net.Conn) error { return c.SetReadDeadline(time.Now().Add(time.Hour)) }, 3 * time.Second},
		{"earlier kept", 10 * time.Second, func(c net.Conn) error { return c.SetReadDeadline(time.Now().Add(10 * time.Millisecond)) }, 3 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, b := net.Pipe()
			defer a.Close()
			defer b.Close()
			c := boundedconn.New(a, time.Now().Add(tc.overall))
			if err := tc.set(c); err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			_, err := c.Read(make([]byte, 1))
			if !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Errorf("Read = %v, want ErrDeadlineExceeded", err)
			}
			if el := time.Since(start); el > tc.max {
				t.Errorf("Read returned after %v, want within %v", el, tc.max)
			}
		})
	}
}

// TestWriteBounded: a write nobody reads ends at the overall deadline even
// after the write deadline is cleared.
func TestWriteBounded(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	c := boundedconn.New(a, time.Now().Add(100*time.Millisecond))
	if err := c.SetWriteDeadline(time.Time{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write([]byte("x")); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("Write = %v, want ErrDeadlineExceeded", err)
	}
}
