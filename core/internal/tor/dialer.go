package tor

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"golang.org/x/net/proxy"
)

// Dialer is the one way out when Tor is configured: every connection is a
// SOCKS5 CONNECT through tor's SocksPort (RFC 1928), the destination name
// passed unresolved, so no DNS query and no TCP connection leaves the host
// except through Tor. There is no fallback: when tor cannot be reached the
// dial fails.
//
// Stream isolation: each destination ("host:port", or the tag given to
// Isolated) gets its own SOCKS5 username/password (RFC 1929), an HMAC of it
// under a per-process random key, and tor's IsolateSOCKSAuth (on by
// default) keeps different credentials on different circuits. Two
// destinations never share a circuit; the credentials tell an observer of
// the SocksPort nothing about the destination.
type Dialer struct {
	// Socks is tor's SocksPort, "host:port".
	Socks string
	// Timeout bounds the SOCKS handshake including tor's circuit build and
	// the connection to the destination (default 2m: onion services can
	// take a minute on a cold start).
	Timeout time.Duration

	key [32]byte
}

// NewDialer returns a Dialer through the SocksPort at socks.
func NewDialer(socks string) (*Dialer, error) {
	if _, _, err := net.SplitHostPort(socks); err != nil {
		return nil, fmt.Errorf("tor: socks address %q: %w", socks, err)
	}
	d := &Dialer{Socks: socks, Timeout: 2 * time.Minute}
	if _, err := rand.Read(d.key[:]); err != nil {
		return nil, err
	}
	return d, nil
}

// Credentials returns the SOCKS5 username and password for an isolation
// tag (16 and 16 hex digits of HMAC-SHA256(key, tag)).
func (d *Dialer) Credentials(tag string) (user, pass string) {
	m := hmac.New(sha256.New, d.key[:])
	m.Write([]byte(tag))
	s := hex.EncodeToString(m.Sum(nil))
	return "mixmta-" + s[:16], s[16:32]
}

// DialContext connects to address ("host:port"; host may be a .onion
// name) through Tor, isolated by address. network must be "tcp".
func (d *Dialer) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	return d.Isolated(address).DialContext(ctx, network, address)
}

// Isolated returns a dialer whose streams all share the circuit of tag
// (e.g. one per mix peer), isolated from every other tag.
func (d *Dialer) Isolated(tag string) proxy.ContextDialer {
	return isolated{d: d, tag: tag}
}

type isolated struct {
	d   *Dialer
	tag string
}

func (i isolated) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	if network != "tcp" && network != "tcp4" && network != "tcp6" {
		return nil, fmt.Errorf("tor: cannot dial %s through Tor (TCP only)", network)
	}
	user, pass := i.d.Credentials(i.tag)
	fwd := &net.Dialer{Timeout: 10 * time.Second}
	p, err := proxy.SOCKS5("tcp", i.d.Socks, &proxy.Auth{User: user, Password: pass}, fwd)
	if err != nil {
		return nil, err
	}
	if i.d.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, i.d.Timeout)
		defer cancel()
	}
	c, err := p.(proxy.ContextDialer).DialContext(ctx, "tcp", address)
	if err != nil {
		return nil, fmt.Errorf("tor: %w", explainSOCKS(err))
	}
	return c, nil
}

// socksReplies names tor's SOCKS5 reply codes: RFC 1928's and the
// ExtendedErrors ones for onion services (tor's socks-extensions.txt).
var socksReplies = map[string]string{
	"general SOCKS server failure": "tor could not build a circuit or the exit failed",
	"connection refused":           "the destination refused the connection",
	"host unreachable":             "the destination is unreachable",
	"TTL expired":                  "the connection timed out",
	"unknown code: 240":            "onion service descriptor not found (the service is down or unknown)",
	"unknown code: 241":            "onion service descriptor invalid",
	"unknown code: 242":            "onion service introduction failed",
	"unknown code: 243":            "onion service rendezvous failed",
	"unknown code: 244":            "onion service needs client authorization",
	"unknown code: 245":            "onion service client authorization wrong",
	"unknown code: 246":            "onion address invalid",
	"unknown code: 247":            "onion service introduction timed out",
}

func explainSOCKS(err error) error {
	msg := err.Error()
	for k, v := range socksReplies {
		if strings.Contains(msg, k) {
			return fmt.Errorf("%s: %w", v, err)
		}
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return fmt.Errorf("timed out: %w", err)
	}
	return err
}
