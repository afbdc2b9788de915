package main

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/net/proxy"
)

// network opens every outbound TCP connection of the plugin, SMTP and DNS
// alike. With a SOCKS5 proxy configured nothing is dialled directly:
// host names go to the proxy unresolved (Tor resolves them at the exit or
// reaches the onion service), and each destination gets its own SOCKS
// credentials so Tor (IsolateSOCKSAuth, on by default) keeps destinations
// on separate circuits.
type network struct {
	socks   string // proxy host:port, "" for direct
	timeout time.Duration
	// isolationKey makes the SOCKS credentials unguessable outside this
	// process while staying stable per destination (so pooled connections
	// to one destination share a circuit and different ones do not).
	isolationKey [32]byte
	// circuits is the number of SOCKS identities (so Tor circuits) per
	// destination; new connections take them in turn. Tor limits each
	// circuit by its flow-control window, so parallel deliveries to one
	// onion service need more than one circuit to use the bandwidth.
	circuits int
	turn     sync.Map // destination -> *atomic.Uint32
}

func newNetwork(socks string, timeout time.Duration, circuits int) *network {
	n := &network{socks: socks, timeout: timeout, circuits: max(circuits, 1)}
	_, _ = rand.Read(n.isolationKey[:])
	return n
}

// isolation returns the SOCKS username and password for a destination
// (an SMTP "host:port", or "dns SERVER DOMAIN"): 16 hex digits of
// HMAC-SHA256(key, destination | circuit number) each, the circuit number
// taken in turn from 0..circuits-1.
func (n *network) isolation(isolate string) *proxy.Auth {
	slot := uint32(0)
	if n.circuits > 1 {
		v, _ := n.turn.LoadOrStore(isolate, new(atomic.Uint32))
		slot = v.(*atomic.Uint32).Add(1) % uint32(n.circuits)
	}
	m := hmac.New(sha256.New, n.isolationKey[:])
	m.Write([]byte(isolate))
	if slot > 0 {
		fmt.Fprintf(m, "\x00%d", slot)
	}
	sum := hex.EncodeToString(m.Sum(nil))
	return &proxy.Auth{User: "mixmta-" + sum[:16], Password: sum[16:32]}
}

// dialHost connects to host:port. host is a name or an IP literal; with a
// proxy the name is passed to it as is. Without a proxy a name is resolved
// by lookup (our DNS client: A first, then AAAA) and each address is tried
// in turn. Errors are *dialError.
func (n *network) dialHost(ctx context.Context, host string, port int, lookup func(context.Context, string) ([]netip.Addr, error)) (net.Conn, error) {
	dest := net.JoinHostPort(host, strconv.Itoa(port))
	if n.socks != "" {
		return n.dialIsolated(ctx, dest, dest)
	}
	if _, err := netip.ParseAddr(host); err == nil {
		return n.dialIsolated(ctx, dest, dest)
	}
	addrs, err := lookup(ctx, host)
	if err != nil {
		return nil, err
	}
	if len(addrs) == 0 {
		return nil, &dialError{what: "host has no A or AAAA record"}
	}
	var last error
	for _, a := range addrs {
		c, err := n.dialIsolated(ctx, net.JoinHostPort(a.String(), strconv.Itoa(port)), dest)
		if err == nil {
			return c, nil
		}
		last = err
		if ctx.Err() != nil {
			break
		}
	}
	return nil, last
}

// dialIsolated connects to dest ("host:port"), through the proxy if set,
// with SOCKS credentials derived from isolate (the logical destination).
func (n *network) dialIsolated(ctx context.Context, dest, isolate string) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, n.timeout)
	defer cancel()
	d := &net.Dialer{}
	var c net.Conn
	var err error
	if n.socks == "" {
		c, err = d.DialContext(ctx, "tcp", dest)
	} else {
		var pd proxy.Dialer
		pd, err = proxy.SOCKS5("tcp", n.socks, n.isolation(isolate), d)
		if err == nil {
			c, err = pd.(proxy.ContextDialer).DialContext(ctx, "tcp", dest)
		}
	}
	if err != nil {
		return nil, &dialError{what: "connect failed: " + netReason(err), err: err}
	}
	return c, nil
}

// dialError is a failure to reach a host. what never names the host.
type dialError struct {
	what string
	err  error
}

func (e *dialError) Error() string {
	if e.err != nil {
		return e.what + ": " + e.err.Error()
	}
	return e.what
}
func (e *dialError) Unwrap() error { return e.err }

// netReason names a network failure without addresses or host names, for
// error messages the core may log at Info level.
func netReason(err error) string {
	var ne net.Error
	var errno syscall.Errno
	var op *net.OpError
	switch {
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	case errors.Is(err, context.Canceled):
		return "canceled"
	case errors.As(err, &op) && strings.HasPrefix(op.Op, "socks"):
		// x/net's SOCKS client: either the proxy itself was unreachable
		// (inner dial error) or it replied with a failure whose text has no
		// address ("unknown error host unreachable").
		var inner *net.OpError
		if errors.As(op.Err, &inner) {
			return "SOCKS proxy unreachable: " + netReason(inner)
		}
		msg := strings.TrimPrefix(op.Err.Error(), "unknown error ")
		if code, ok := strings.CutPrefix(msg, "unknown code: "); ok {
			if s, ok := torSOCKSErrors[code]; ok {
				msg = s
			}
		}
		return "SOCKS: " + msg
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, net.ErrClosed):
		return "connection closed"
	case errors.As(err, &errno):
		return errno.Error()
	}
	return "network error"
}

// torSOCKSErrors are Tor's extended SOCKS5 replies (0xF0-0xF7, with
// SocksPort ExtendedErrors) as x/net reports them ("unknown code: 240").
var torSOCKSErrors = map[string]string{
	"240": "onion service descriptor not found",
	"241": "onion service descriptor invalid",
	"242": "onion service introduction failed",
	"243": "onion service rendezvous failed",
	"244": "onion service needs client authorization",
	"245": "onion service client authorization wrong",
	"246": "invalid onion address",
	"247": "onion service introduction timed out",
}
