package smtpd

import (
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"

	"github.com/emersion/go-smtp"
)

// limitListener refuses connections beyond max_sessions, or beyond
// max_sessions_per_client from one client (clientKey), with 421 (RFC 5321
// §3.8) instead of letting them queue, and wraps each accepted one in a
// clientConn.
type limitListener struct {
	net.Listener
	s *Server

	mu       sync.Mutex
	perIP    map[netip.Addr]int
	sessions int
}

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		ip := remoteIP(c)
		if reply := l.admit(clientKey(ip)); reply != "" {
			l.s.c.Rejected.Add(1)
			_ = c.SetWriteDeadline(time.Now().Add(time.Second))
			_, _ = io.WriteString(c, reply)
			c.Close()
			continue
		}
		l.s.sessions.Add(1)
		return newClientConn(c, l, clientKey(ip)), nil
	}
}

// admit takes a session slot for ip, or returns the reply that refuses it.
func (l *limitListener) admit(ip netip.Addr) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.sessions >= l.s.cfg.MaxSessions {
		return "421 4.3.2 Too many sessions, try again later\r\n"
	}
	if l.perIP[ip] >= l.s.cfg.MaxSessionsPerClient {
		return "421 4.7.0 Too many sessions from your address, try again later\r\n"
	}
	l.sessions++
	l.perIP[ip]++
	return ""
}

func (l *limitListener) release(ip netip.Addr) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.sessions--
	if l.perIP[ip]--; l.perIP[ip] <= 0 {
		delete(l.perIP, ip)
	}
	l.s.sessions.Add(-1)
}

// clientKey is the unit the per-client limits count: an IPv4 address, or
// the /64 an IPv6 address is in. A single IPv6 host or site is routinely
// given a whole /64 (RFC 6177), so counting each address alone would let
// one client open max_sessions_per_client sessions from each of 2^64
// addresses; Postfix's anvil groups IPv6 clients by prefix the same way
// (smtpd_client_ipv6_prefix_length).
func clientKey(ip netip.Addr) netip.Addr {
	if ip.Is6() && !ip.Is4In6() {
		p, _ := ip.Prefix(64)
		return p.Addr()
	}
	return ip
}

func remoteIP(c net.Conn) netip.Addr {
	if ta, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		ip, _ := netip.AddrFromSlice(ta.IP)
		return ip.Unmap()
	}
	return netip.Addr{}
}

// clientConn is one client's connection as go-smtp sees it. It enforces
// what go-smtp cannot: the session's lifetime, the minimum data rate
// during DATA/BDAT, the junk-command and error limits, the raw bare CR/LF
// check, and it ends the session after a fatal reply, so that a timeout
// or error in the middle of a message can never leave the rest of the
// message to be read as commands (a desync that lets a client smuggle a
// second message).
//
// It also runs STARTTLS itself (RFC 3207), so that all of this applies
// to the plaintext inside TLS exactly as outside it: go-smtp is built
// without a TLS config and answers STARTTLS with "502 TLS not
// supported"; clientConn replaces that reply with 220, does the TLS
// handshake on the TCP connection, and from then on reads and writes
// through the TLS connection. go-smtp's own STARTTLS would put its
// tls.Conn above clientConn, which would then see only ciphertext.
//
// Read hands go-smtp at most one line per call, so go-smtp never holds
// bytes beyond the command it is answering: at STARTTLS, anything the
// client sent after the command is still here, and is refused rather
// than read as if it had come inside TLS (the plaintext command
// injection of CVE-2011-0411).
type clientConn struct {
	net.Conn // the TCP connection
	l        *limitListener
	ip       netip.Addr
	end      time.Time   // the session's hard deadline (max_session_time)
	tlsCfg   *tls.Config // nil: no STARTTLS on this listener
	close    sync.Once

	mu           sync.Mutex
	tc           *tls.Conn // after STARTTLS: every read and write goes through it
	buf          []byte    // read from the client, not yet handed to go-smtp
	rbuf         []byte    // backing array of buf
	cmdBuf       []byte    // the command-sized rbuf, while rbuf is a DATA buffer
	rerr         error     // the error of the read that filled buf, returned once buf is empty
	resetReply   bool      // swallow the reply to the RSET injected after STARTTLS
	helloAgain   bool      // STARTTLS done and no EHLO/HELO since (needsHello)
	userDeadline time.Time // as go-smtp last set it
	inData       bool
	credit       time.Duration // DATA/BDAT time credit (min_data_rate)
	failed       error         // sticky: every later Read returns it
	closeAfter   bool          // close once the next reply is written
	lastCR       bool          // the previous byte read was CR
	bare         bool          // a CR or LF not in a CRLF pair was read
	junk, errs   int
	partial      []byte // an incomplete reply line being written
	dataNext     bool   // 354 was written: message data follows (DATA, not BDAT)
	dot          *dotReader
	endMarker    []byte // handed to go-smtp's DATA reader after dotReader read the message
}

func newClientConn(c net.Conn, l *limitListener, ip netip.Addr) *clientConn {
	return &clientConn{Conn: c, l: l, ip: ip, end: time.Now().Add(l.s.cfg.MaxSessionTime.D()), tlsCfg: l.s.tlsConfig, rbuf: make([]byte, cmdBufSize)}
}

// errDataTimeout ends DATA/BDAT that ran out of time (min_data_rate,
// max_session_time). It is what go-smtp writes when the chunk copy of a
// BDAT fails, so it carries no Go error text.
var errDataTimeout = &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 4, 2}, Message: "Timeout during message transfer, closing connection"}

func (c *clientConn) SetReadDeadline(t time.Time) error {
	c.mu.Lock()
	c.userDeadline = t
	c.mu.Unlock()
	return nil
}

func (c *clientConn) SetDeadline(t time.Time) error {
	_ = c.SetReadDeadline(t)
	return c.Conn.SetWriteDeadline(t)
}

// Read hands go-smtp the client's bytes (plaintext, inside TLS too), at
// most up to and including the next LF.
func (c *clientConn) Read(b []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.failed != nil {
		return 0, c.failed
	}
	if len(c.endMarker) > 0 {
		n := copy(b, c.endMarker)
		c.endMarker = c.endMarker[n:]
		return n, nil
	}
	if len(c.buf) == 0 {
		if err := c.rerr; err != nil {
			c.rerr = nil
			return 0, err
		}
		c.fill()
		if len(c.buf) == 0 {
			err := c.rerr
			c.rerr = nil
			return 0, err
		}
	}
	n := len(c.buf)
	if i := bytes.IndexByte(c.buf, '\n'); i >= 0 {
		n = i + 1
	}
	n = copy(b, c.buf[:n])
	c.buf = c.buf[n:]
	return n, nil
}

// fill reads once from the client, appending to buf, with the deadline
// the session's limits allow; c.mu is held, and released during the read.
// Bytes still in buf move to the front of rbuf first (only dotReader
// calls fill with buf not empty: a line start it cannot judge yet).
func (c *clientConn) fill() {
	keep := copy(c.rbuf, c.buf)
	c.buf = c.rbuf[:keep]
	start := time.Now()
	dl := c.userDeadline
	if c.inData {
		// go-smtp sets no deadline inside DATA: the credit is the deadline.
		dl = start.Add(c.credit)
	}
	if dl.IsZero() || c.end.Before(dl) {
		dl = c.end
	}
	inData := c.inData
	var src io.Reader = c.Conn
	if c.tc != nil {
		src = c.tc
	}
	c.mu.Unlock()
	_ = c.Conn.SetReadDeadline(dl)
	n, err := src.Read(c.rbuf[keep:])
	c.mu.Lock()

	if c.inData {
		rate := float64(c.l.s.cfg.MinDataRate)
		c.credit += time.Duration(float64(n)/rate*float64(time.Second)) - time.Since(start)
		c.credit = min(c.credit, c.l.s.cfg.ReadTimeout.D())
	}
	if c.dot == nil {
		// dotReader checks message data itself, line by line.
		c.scanLineEnds(c.rbuf[keep : keep+n])
	}
	c.buf = c.rbuf[:keep+n]
	var ne net.Error
	if err != nil && errors.As(err, &ne) && ne.Timeout() {
		// Whatever go-smtp answers now is the session's last reply.
		c.closeAfter = true
		if inData {
			err = errDataTimeout
		} else {
			err = os.ErrDeadlineExceeded
		}
		c.failed = err
	}
	c.rerr = err
}

// scanLineEnds notes a CR not followed by LF or an LF not preceded by CR
// anywhere in the client's stream (RFC 5321 §2.3.8): go-smtp's DATA
// reader hides some of them (it drops ".\r" at the start of a line).
func (c *clientConn) scanLineEnds(b []byte) {
	for _, x := range b {
		switch {
		case x == '\n' && !c.lastCR, x != '\n' && c.lastCR:
			c.bare = true
		}
		c.lastCR = x == '\r'
	}
}

// takeBare reports, and clears, whether a bare CR or LF was read since
// the last call. Bytes already read ahead count too: a
// pipelined command after the message with a bare LF refuses the message
// as well, which only a broken or hostile client causes.
func (c *clientConn) takeBare() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	b := c.bare
	c.bare = false
	return b
}

// isTLS reports whether STARTTLS has completed.
func (c *clientConn) isTLS() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.tc != nil
}

func (c *clientConn) beginData() {
	c.mu.Lock()
	c.inData = true
	c.credit = c.l.s.cfg.ReadTimeout.D()
	c.mu.Unlock()
}

func (c *clientConn) endData() {
	c.mu.Lock()
	c.inData = false
	c.mu.Unlock()
}

// accepted starts the junk and error counts afresh after a message was
// accepted, as Postfix does: an MTA that keeps its connection open sends
// RSET between messages for as long as it has mail.
func (c *clientConn) accepted() {
	c.mu.Lock()
	c.junk, c.errs = 0, 0
	c.mu.Unlock()
}

// closeAfterReply makes the next reply written the session's last.
func (c *clientConn) closeAfterReply() {
	c.mu.Lock()
	c.closeAfter = true
	c.mu.Unlock()
}

// Write passes go-smtp's replies on (one Write per reply line). It
// counts junk commands and error replies by the reply go-smtp writes for
// them, ends the session past a limit, and replaces control characters
// other than the CRLF line ends with "?": go-smtp echoes parts of
// commands (the EHLO name, an unknown verb), and a bare CR echoed into a
// reply would make it two lines for some clients. On a listener with
// TLS it adds STARTTLS to the EHLO keywords and runs STARTTLS in place
// of go-smtp's refusal.
func (c *clientConn) Write(b []byte) (int, error) {
	c.mu.Lock()
	var w io.Writer = c.Conn
	if c.tc != nil {
		w = c.tc
	}
	offerTLS := c.tlsCfg != nil && c.tc == nil
	if c.resetReply && bytes.HasPrefix(b, replyRSET) {
		c.resetReply = false
		c.mu.Unlock()
		return len(b), nil
	}
	if bytes.HasPrefix(b, replyEHLO) || bytes.HasPrefix(b, replyHELO) {
		c.helloAgain = false
	}
	if bytes.HasPrefix(b, replyDATA) {
		c.dataNext = true
	}
	c.mu.Unlock()
	if offerTLS && bytes.HasPrefix(b, replyNoTLS) {
		return len(b), c.startTLS()
	}
	n, err := w.Write(cleanReply(b))
	if offerTLS && err == nil && bytes.HasPrefix(b, replyEHLOPipelining) {
		_, err = io.WriteString(w, "250-STARTTLS\r\n")
	}
	c.mu.Lock()
	var over string
	if err == nil {
		c.partial = append(c.partial, b...)
		for {
			i := bytes.IndexByte(c.partial, '\n')
			if i < 0 {
				break
			}
			over = c.countReply(c.partial[:i+1])
			c.partial = c.partial[i+1:]
			if over != "" {
				break
			}
		}
	}
	closeNow := c.closeAfter || over != ""
	c.mu.Unlock()
	if over != "" {
		_, _ = io.WriteString(w, over)
	}
	if closeNow {
		_ = c.Close()
	}
	return n, err
}

// startTLS answers STARTTLS (RFC 3207 §4) and does the TLS handshake. A
// client that sent anything after the command before the handshake
// (pipelined commands, which §4.2 forbids and which an attacker on the
// path could have injected) gets 554 5.5.1 and the session ends. After
// the handshake an RSET is passed to go-smtp, whose reply is not sent,
// so that no transaction state from before TLS survives it; the client
// starts again with EHLO, as §4.2 says it should.
func (c *clientConn) startTLS() error {
	c.mu.Lock()
	pipelined := len(c.buf) > 0 || c.rerr != nil
	c.mu.Unlock()
	if pipelined {
		c.l.s.c.Rejected.Add(1)
		_, _ = io.WriteString(c.Conn, "554 5.5.1 Commands pipelined after STARTTLS, closing connection\r\n")
		return c.fail()
	}
	if _, err := io.WriteString(c.Conn, "220 2.0.0 Ready to start TLS\r\n"); err != nil {
		return c.fail()
	}
	tc := tls.Server(c.Conn, c.tlsCfg)
	dl := time.Now().Add(c.l.s.cfg.ReadTimeout.D())
	if c.end.Before(dl) {
		dl = c.end
	}
	_ = c.Conn.SetDeadline(dl)
	if err := tc.Handshake(); err != nil {
		return c.fail()
	}
	_ = c.Conn.SetDeadline(time.Time{})
	c.mu.Lock()
	c.tc = tc
	c.buf = []byte("RSET\r\n")
	c.resetReply = true
	c.helloAgain = true
	c.lastCR = false
	c.partial = nil
	c.mu.Unlock()
	return nil
}

// needsHello reports whether STARTTLS has completed and the client has
// not greeted again since: RFC 3207 §4.2 has the server discard what it
// learnt before TLS, the EHLO name included, so MAIL and AUTH wait for a
// new EHLO as they do at the start of a session. (go-smtp keeps its
// pre-TLS EHLO name: it does not see the STARTTLS that clientConn runs.)
func (c *clientConn) needsHello() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.helloAgain
}

// fail ends the session: every later Read returns net.ErrClosed.
func (c *clientConn) fail() error {
	c.mu.Lock()
	c.failed = net.ErrClosed
	c.mu.Unlock()
	_ = c.Close()
	return net.ErrClosed
}

// cleanReply returns b with every control byte that is not part of a
// CRLF pair replaced by "?" (b itself when there is none).
func cleanReply(b []byte) []byte {
	var out []byte
	for i, x := range b {
		ok := x >= 0x20 && x != 0x7f || x == '\r' && i+1 < len(b) && b[i+1] == '\n' || x == '\n' && i > 0 && b[i-1] == '\r'
		if ok {
			continue
		}
		if out == nil {
			out = append([]byte{}, b...)
		}
		out[i] = '?'
	}
	if out == nil {
		return b
	}
	return out
}

// Replies go-smtp v0.25 writes for commands it handles without asking
// the session; TestJunkAndErrorLimitsEndTheSession pins the first three,
// the STARTTLS tests the rest (go-smtp runs without a TLS config, so it
// refuses STARTTLS, and always lists PIPELINING first in its EHLO reply,
// after the "Hello" line that also answers HELO).
var (
	replyNOOP           = []byte("250 2.0.0 I have successfully done nothing")
	replyRSET           = []byte("250 2.0.0 Session reset")
	replyVRFY           = []byte("252 ")
	replyNoTLS          = []byte("502 5.5.1 TLS not supported")
	replyEHLOPipelining = []byte("250-PIPELINING\r\n")
	replyEHLO           = []byte("250-Hello ")
	replyHELO           = []byte("250 2.0.0 Hello ")
	replyDATA           = []byte("354 ")
)

// countReply accounts one reply line; it returns the 421 that ends the
// session when a limit is passed.
func (c *clientConn) countReply(line []byte) string {
	cfg := c.l.s.cfg
	switch {
	case bytes.HasPrefix(line, replyNOOP), bytes.HasPrefix(line, replyRSET), bytes.HasPrefix(line, replyVRFY):
		if c.junk++; c.junk > cfg.MaxJunkCommands {
			return "421 4.7.0 Too many NOOP, RSET or VRFY commands, closing connection\r\n"
		}
	case len(line) > 4 && (line[0] == '4' || line[0] == '5') && line[3] == ' ':
		if c.errs++; c.errs > cfg.MaxErrors {
			return "421 4.7.0 Too many errors, closing connection\r\n"
		}
	}
	return ""
}

func (c *clientConn) Close() error {
	err := net.ErrClosed
	c.close.Do(func() {
		c.mu.Lock()
		tc := c.tc
		// Bytes read ahead are never handed to go-smtp after the close.
		if c.failed == nil {
			c.failed = net.ErrClosed
		}
		c.mu.Unlock()
		if tc != nil {
			// Sends close_notify first (with its own short deadline).
			err = tc.Close()
		} else {
			err = c.Conn.Close()
		}
		c.l.release(c.ip)
	})
	return err
}
