package main

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/textproto"
	"strings"
	"time"
)

// go-smtp's client can only start TLS on a connection before its own first
// EHLO (NewClientStartTLS, which also says "EHLO localhost") and fails
// outright when STARTTLS is not offered. For a policy that needs to look at
// the EHLO reply first, this file speaks the pre-TLS part of the session
// itself (RFC 3207 §4-5): greeting, EHLO with our name, STARTTLS, TLS
// handshake. It then hands go-smtp the (TLS or plain) connection behind a
// synthetic 220 greeting; go-smtp sends EHLO again, as RFC 3207 §4.2
// requires after TLS starts.

// errNoSTARTTLS: the server does not offer STARTTLS (or refused it).
var errNoSTARTTLS = errors.New("server does not offer STARTTLS")

// tlsError is a failed TLS handshake (or a STARTTLS injection attempt).
type tlsError struct{ err error }

func (e *tlsError) Error() string { return "TLS handshake failed: " + e.err.Error() }
func (e *tlsError) Unwrap() error { return e.err }

// replyError is a non-success reply in the pre-TLS part of the session.
type replyError struct {
	phase string
	err   *textproto.Error
}

func (e *replyError) Error() string { return e.phase + ": " + e.err.Error() }

// negotiate runs greeting, EHLO and STARTTLS on conn within timeout per
// step and returns the connection to hand to go-smtp. encrypted says
// whether TLS is up. When the server does not offer STARTTLS (or answers
// it with an error) and require is false, it returns the plain connection
// and encrypted=false; with require it returns errNoSTARTTLS. A failed
// handshake returns a *tlsError (the connection is then unusable).
func negotiate(ctx context.Context, conn net.Conn, helo string, cfg *tls.Config, require bool, timeout time.Duration) (out net.Conn, encrypted bool, err error) {
	tp := textproto.NewConn(conn)
	step := func() { _ = conn.SetDeadline(time.Now().Add(timeout)) }
	defer conn.SetDeadline(time.Time{})
	read := func(phase string, want int) (string, error) {
		_, msg, err := tp.ReadResponse(want)
		var te *textproto.Error
		if errors.As(err, &te) {
			return "", &replyError{phase: phase, err: te}
		}
		return msg, err
	}
	step()
	if _, err := read("greeting", 220); err != nil {
		return nil, false, err
	}
	step()
	if err := tp.PrintfLine("EHLO %s", helo); err != nil {
		return nil, false, err
	}
	msg, err := read("EHLO", 250)
	var re *replyError
	if errors.As(err, &re) && re.err.Code >= 500 {
		// No ESMTP, hence no STARTTLS; go-smtp falls back to HELO.
		msg, err = "", nil
	}
	if err != nil {
		return nil, false, err
	}
	plain := func() (net.Conn, bool, error) {
		if require {
			return nil, false, errNoSTARTTLS
		}
		if tp.R.Buffered() > 0 {
			return nil, false, errors.New("server sent data before our command")
		}
		return greeted(conn), false, nil
	}
	if !hasExtension(msg, "STARTTLS") {
		return plain()
	}
	step()
	if err := tp.PrintfLine("STARTTLS"); err != nil {
		return nil, false, err
	}
	if _, err := read("STARTTLS", 220); err != nil {
		if errors.As(err, &re) {
			return plain() // e.g. 454 TLS not available: go on in plaintext
		}
		return nil, false, err
	}
	// Anything the server sent after its 220 and before the handshake was
	// injected into the plaintext stream (CVE-2011-0411 class): refuse it.
	if tp.R.Buffered() > 0 {
		return nil, false, &tlsError{errors.New("plaintext data after STARTTLS reply")}
	}
	tc := tls.Client(conn, cfg)
	hctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if err := tc.HandshakeContext(hctx); err != nil {
		return nil, false, &tlsError{err}
	}
	return greeted(tc), true, nil
}

// hasExtension reports whether an EHLO reply (lines after the first)
// advertises keyword ext.
func hasExtension(ehloReply, ext string) bool {
	lines := strings.Split(ehloReply, "\n")
	for _, l := range lines[min(1, len(lines)):] {
		kw, _, _ := strings.Cut(strings.TrimSpace(l), " ")
		if strings.EqualFold(kw, ext) {
			return true
		}
	}
	return false
}

// greetedConn replays a synthetic "220" greeting before the connection's
// own bytes, so go-smtp can take over a session mid-way.
type greetedConn struct {
	net.Conn
	pre []byte
}

func greeted(c net.Conn) net.Conn {
	return &greetedConn{Conn: c, pre: []byte("220 continuing\r\n")}
}

func (g *greetedConn) Read(b []byte) (int, error) {
	if len(g.pre) > 0 {
		n := copy(b, g.pre)
		g.pre = g.pre[n:]
		return n, nil
	}
	return g.Conn.Read(b)
}
