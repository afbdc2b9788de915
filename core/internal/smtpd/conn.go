package smtpd

import (
	"bytes"
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
// during DATA/BDAT, the junk-command and error limits, and it ends the
// session after a fatal reply, so that a timeout or error in the middle
// of a message can never leave the rest of the message to be read as
// commands (a desync that lets a client smuggle a second message).
//
// It sits below STARTTLS: once TLS starts it sees only ciphertext, so the
// reply-counting limits, the reply cleaning and the raw bare CR/LF check
// then stop (the session's own check of the data it reads still runs),
// while the deadlines and close-after-reply keep working.
type clientConn struct {
	net.Conn
	l     *limitListener
	ip    netip.Addr
	end   time.Time // the session's hard deadline (max_session_time)
	close sync.Once

	mu           sync.Mutex
	userDeadline time.Time // as go-smtp last set it
	inData       bool
	credit       time.Duration // DATA/BDAT time credit (min_data_rate)
	failed       error         // sticky: every later Read returns it
	closeAfter   bool          // close once the next reply is written
	tls          bool          // STARTTLS done: bytes are ciphertext
	lastCR       bool          // the previous byte read was CR
	bare         bool          // a CR or LF not in a CRLF pair was read
	junk, errs   int
	partial      []byte // an incomplete reply line being written
}

func newClientConn(c net.Conn, l *limitListener, ip netip.Addr) *clientConn {
	return &clientConn{Conn: c, l: l, ip: ip, end: time.Now().Add(l.s.cfg.MaxSessionTime.D())}
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

func (c *clientConn) Read(b []byte) (int, error) {
	c.mu.Lock()
	if c.failed != nil {
		err := c.failed
		c.mu.Unlock()
		return 0, err
	}
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
	c.mu.Unlock()

	_ = c.Conn.SetReadDeadline(dl)
	n, err := c.Conn.Read(b)

	c.mu.Lock()
	defer c.mu.Unlock()
	if c.inData {
		rate := float64(c.l.s.cfg.MinDataRate)
		c.credit += time.Duration(float64(n)/rate*float64(time.Second)) - time.Since(start)
		c.credit = min(c.credit, c.l.s.cfg.ReadTimeout.D())
	}
	if !c.tls {
		c.scanLineEnds(b[:n])
	}
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
	return n, err
}

// scanLineEnds notes a CR not followed by LF or an LF not preceded by CR
// anywhere in the plaintext stream (RFC 5321 §2.3.8): go-smtp's DATA
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

// takeBare reports, and clears, whether a bare CR or LF was read in
// plaintext since the last call. Bytes already read ahead count too: a
// pipelined command after the message with a bare LF refuses the message
// as well, which only a broken or hostile client causes.
func (c *clientConn) takeBare() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	b := c.bare && !c.tls
	c.bare = false
	return b
}

// startedTLS records that the session runs over TLS from now on.
func (c *clientConn) startedTLS() {
	c.mu.Lock()
	c.tls = true
	c.mu.Unlock()
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

// Write passes go-smtp's replies on. In plaintext it counts junk
// commands and error replies by the reply go-smtp writes for them (one
// Write per reply line), ends the session past a limit, and replaces
// control characters other than the CRLF line ends with "?": go-smtp
// echoes parts of commands (the EHLO name, an unknown verb), and a bare
// CR echoed into a reply would make it two lines for some clients.
func (c *clientConn) Write(b []byte) (int, error) {
	c.mu.Lock()
	plain := !c.tls
	c.mu.Unlock()
	out := b
	if plain {
		out = cleanReply(b)
	}
	n, err := c.Conn.Write(out)
	c.mu.Lock()
	var over string
	if !c.tls && err == nil {
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
		_, _ = io.WriteString(c.Conn, over)
	}
	if closeNow {
		_ = c.Close()
	}
	return n, err
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
// the session; TestJunkAndErrorLimitsEndTheSession pins the first three.
// STARTTLS is also seen by NewSession (startedTLS), which does not depend
// on the reply text.
var (
	replyNOOP     = []byte("250 2.0.0 I have successfully done nothing")
	replyRSET     = []byte("250 2.0.0 Session reset")
	replyVRFY     = []byte("252 ")
	replySTARTTLS = []byte("220 2.0.0 Ready to start TLS")
)

// countReply accounts one reply line; it returns the 421 that ends the
// session when a limit is passed.
func (c *clientConn) countReply(line []byte) string {
	cfg := c.l.s.cfg
	switch {
	case bytes.HasPrefix(line, replySTARTTLS):
		c.tls = true
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
		err = c.Conn.Close()
		c.l.release(c.ip)
	})
	return err
}
