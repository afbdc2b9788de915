package main

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"net"
	"strings"
	"syscall"
	"time"

	"golang.org/x/net/proxy"
)

// network opens every outbound connection. With a SOCKS5 proxy nothing is
// dialled directly: host names go to the proxy unresolved (Tor resolves
// them at the exit or reaches the onion service), and each destination
// gets its own SOCKS credentials so Tor (IsolateSOCKSAuth, on by default)
// keeps destinations on separate circuits.
type network struct {
	socks   string
	timeout time.Duration
	// isolationKey keeps the credentials unguessable outside this process
	// and stable per destination.
	isolationKey [32]byte
}

func newNetwork(socks string, timeout time.Duration) *network {
	n := &network{socks: socks, timeout: timeout}
	_, _ = rand.Read(n.isolationKey[:])
	return n
}

// isolation returns SOCKS credentials for a destination "host:port":
// HMAC-SHA256(key, destination) in hex, split in two.
func (n *network) isolation(dest string) *proxy.Auth {
	m := hmac.New(sha256.New, n.isolationKey[:])
	m.Write([]byte(dest))
	sum := hex.EncodeToString(m.Sum(nil))
	return &proxy.Auth{User: "mail2news-" + sum[:16], Password: sum[16:32]}
}

// dial connects to dest ("host:port"), through the proxy when set. Its
// errors never name the host.
func (n *network) dial(ctx context.Context, dest string) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, n.timeout)
	defer cancel()
	d := &net.Dialer{}
	var c net.Conn
	var err error
	if n.socks == "" {
		c, err = d.DialContext(ctx, "tcp", dest)
	} else {
		var pd proxy.Dialer
		pd, err = proxy.SOCKS5("tcp", n.socks, n.isolation(dest), d)
		if err == nil {
			c, err = pd.(proxy.ContextDialer).DialContext(ctx, "tcp", dest)
		}
	}
	if err != nil {
		return nil, errors.New("connect failed: " + netReason(err))
	}
	return c, nil
}

// netReason names a network failure without addresses or host names, for
// messages the core logs at Info level.
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
		var inner *net.OpError
		if errors.As(op.Err, &inner) {
			return "SOCKS proxy unreachable: " + netReason(inner)
		}
		return "SOCKS: " + printable(strings.TrimPrefix(op.Err.Error(), "unknown error "), 80)
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, net.ErrClosed):
		return "connection closed"
	case errors.As(err, &errno):
		return errno.Error()
	}
	return "network error"
}
