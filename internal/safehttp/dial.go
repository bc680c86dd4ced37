package safehttp

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
)

// The guards of NewClient for connections that are not HTTP (an IMAP
// server, a redis a user names): Dialer refuses, at dial time, every
// address CheckAddr refuses; Resolve checks every address a host resolves
// to before anything is dialled; DialChecked does both.

// Dialer returns a net.Dialer whose Control hook refuses every TCP address
// CheckAddr refuses (and every network other than tcp, tcp4 and tcp6),
// with an error wrapping ErrBlockedAddress. The hook sees each address
// after name resolution, so a host name is judged by what it resolves to
// at the moment of dialling. Callers set Timeout, Deadline or KeepAlive as
// they need.
func Dialer(allowLoopback bool) *net.Dialer {
	return &net.Dialer{Control: control(allowLoopback)}
}

// Resolve returns the addresses host stands for — host itself when it is an
// IP literal, else what the default resolver answers — after checking every
// one of them with CheckAddr: a single refused address refuses the host,
// with CheckAddr's error (wrapping ErrBlockedAddress). A failed lookup
// returns the resolver's error as it is, so errors.Is(err,
// ErrBlockedAddress) tells the two apart. The addresses are returned
// unmapped (an IPv4-mapped IPv6 address as the IPv4 address it carries);
// the list may be empty.
func Resolve(ctx context.Context, host string, allowLoopback bool) ([]netip.Addr, error) {
	return resolve(ctx, "ip", host, allowLoopback)
}

func resolve(ctx context.Context, network, host string, allowLoopback bool) ([]netip.Addr, error) {
	var ips []netip.Addr
	if ip, err := netip.ParseAddr(host); err == nil {
		ips = []netip.Addr{ip}
	} else {
		ips, err = net.DefaultResolver.LookupNetIP(ctx, network, host)
		if err != nil {
			return nil, err
		}
	}
	for i, ip := range ips {
		if err := CheckAddr(ip, allowLoopback); err != nil {
			return nil, err
		}
		ips[i] = ip.Unmap()
	}
	return ips, nil
}

// DialChecked connects to hostport (a numeric port) over network ("tcp",
// "tcp4" or "tcp6") the guarded way: the host is resolved once, every
// address it resolves to must pass CheckAddr, and the checked addresses are
// dialled in turn, with Dialer's Control hook checking again, until one
// connects. The context bounds the lookup and the dials.
//
// Errors: a refused address is CheckAddr's error (wrapping
// ErrBlockedAddress); a failed lookup is "resolve HOST: " and the
// resolver's error; a host without addresses is "HOST has no address";
// otherwise the first dial's error.
func DialChecked(ctx context.Context, network, hostport string, allowLoopback bool) (net.Conn, error) {
	var ipNet string
	switch network {
	case "tcp":
		ipNet = "ip"
	case "tcp4":
		ipNet = "ip4"
	case "tcp6":
		ipNet = "ip6"
	default:
		return nil, fmt.Errorf("%w: network %s", ErrBlockedAddress, network)
	}
	host, p, err := net.SplitHostPort(hostport)
	if err != nil {
		return nil, err
	}
	port, err := strconv.ParseUint(p, 10, 16)
	if err != nil {
		return nil, fmt.Errorf("%s: the port is not a number from 0 to 65535", hostport)
	}
	ips, err := resolve(ctx, ipNet, host, allowLoopback)
	if err != nil {
		if errors.Is(err, ErrBlockedAddress) {
			return nil, err
		}
		return nil, fmt.Errorf("resolve %s: %w", host, err)
	}
	d := Dialer(allowLoopback)
	var firstErr error
	for _, ip := range ips {
		conn, err := d.DialContext(ctx, network, netip.AddrPortFrom(ip, uint16(port)).String())
		if err == nil {
			return conn, nil
		}
		if firstErr == nil {
			firstErr = err
		}
		if ctx.Err() != nil {
			break
		}
	}
	if firstErr == nil {
		firstErr = fmt.Errorf("%s has no address", host)
	}
	return nil, firstErr
}
