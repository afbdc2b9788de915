package smtpd

import (
	"bytes"
	"errors"
	"io"
	"sync"

	"github.com/emersion/go-smtp"
)

// errBareLineEnd is message data with a CR not followed by LF or an LF
// not preceded by CR. RFC 5321 §2.3.8 forbids both; SMTP smuggling
// (CVE-2023-51764, -51765, -51766) hides a second message behind them
// for an MTA that reads them as line ends. Refused, never passed on.
var errBareLineEnd = errors.New("bare CR or LF in message data")

// lineEndReader passes message data through (as go-smtp's DATA or BDAT
// reader hands it over: dots unstuffed, CRLF kept) and fails with
// errBareLineEnd at the first bare CR or LF, so nothing after it is
// stored.
type lineEndReader struct {
	r      io.Reader
	lastCR bool
	err    error
}

func (l *lineEndReader) Read(p []byte) (int, error) {
	if l.err != nil {
		return 0, l.err
	}
	n, err := l.r.Read(p)
	for i := 0; i < n; i++ {
		c := p[i]
		if c == '\n' && !l.lastCR || c != '\n' && l.lastCR {
			l.err = errBareLineEnd
			return i, l.err
		}
		l.lastCR = c == '\r'
	}
	if err == io.EOF && l.lastCR {
		l.err = errBareLineEnd
		return n, l.err
	}
	return n, err
}

// dataBufSize is the read buffer of a session once it sends DATA: large
// enough that a 64 KiB message takes a handful of reads.
const dataBufSize = 64 << 10

// cmdBufSize is the read buffer of a session outside DATA.
const cmdBufSize = 4096

// dataReadBufs holds the read buffers of sessions inside DATA.
var dataReadBufs = sync.Pool{New: func() any { b := make([]byte, dataBufSize); return &b }}

// dotReader reads the message data that follows DATA's 354 (RFC 5321
// §4.5.2) straight from clientConn's read buffer, a line at a time
// (bytes.IndexByte for the LF) instead of go-smtp's byte-at-a-time
// state machine: it ends at the first line that is exactly ".\r\n",
// removes the leading dot of every other line that starts with one, and
// passes CRLF through. It refuses, as go-smtp and clientConn did before
// it:
//   - a CR not followed by LF or an LF not preceded by CR anywhere in the
//     data, the stuffing dot's line included (errBareLineEnd; RFC 5321
//     §2.3.8, the SMTP smuggling of CVE-2023-51764..51766);
//   - a line longer than max_line_length, counted on the wire with its
//     CRLF and leading dot (smtp.ErrTooLongLine);
//   - more than max_message_bytes of unstuffed data (smtp.ErrDataTooLarge);
//   - a client slower than min_data_rate or past max_session_time
//     (clientConn.fill's deadlines, errDataTimeout).
//
// After the error a session keeps (a message too large) or whose reply
// needs the client to have stopped sending (bare CR/LF), finish reads on
// to the end marker without the checks, as go-smtp does, so that the
// rest of the message is never read as commands.
type dotReader struct {
	c         *clientConn
	lineStart bool  // the next byte starts a line
	lastCR    bool  // the last byte taken was CR
	lineLen   int   // bytes of the current line taken so far, on the wire
	left      int64 // unstuffed bytes still allowed (max_message_bytes)
	limited   bool
	checks    bool  // false while draining after an error
	done      bool  // the end marker was read
	err       error // sticky
}

// startDot returns the reader for the message data of a DATA command
// whose 354 was just written, or nil (BDAT: go-smtp's chunk reader is
// used). c.mu is not held.
func (c *clientConn) startDot() *dotReader {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.dataNext {
		return nil
	}
	c.dataNext = false
	if len(c.rbuf) < dataBufSize {
		rb := *dataReadBufs.Get().(*[]byte)
		c.cmdBuf = c.rbuf
		c.buf = rb[:copy(rb, c.buf)]
		c.rbuf = rb
	}
	max := c.l.s.cfg.MaxMessageBytes
	c.dot = &dotReader{c: c, lineStart: true, checks: true, left: max, limited: max > 0}
	return c.dot
}

// endDot finishes the message data before go-smtp sees the connection
// again: it reads on to the end marker when the session goes on, and
// then has go-smtp's own DATA reader (which go-smtp drains after
// Session.Data returns) read just an end marker. When the end marker
// cannot be reached (a line too long, a read error), the reply to the
// message is the session's last. c.mu is not held.
func (c *clientConn) endDot() {
	c.mu.Lock()
	d := c.dot
	c.mu.Unlock()
	if d == nil {
		return
	}
	d.finish()
	c.mu.Lock()
	c.dot = nil
	c.endMarker = []byte(".\r\n")
	if !d.done {
		// The rest of the message is still unread (a line too long or a
		// read error while draining): the reply is the session's last,
		// or go-smtp would read that rest as commands.
		c.closeAfter = true
	}
	// Back to a command-sized buffer, unless the client pipelined more
	// than that after the message. Only this goroutine reads, so no fill
	// is using the large buffer now.
	if c.cmdBuf != nil && len(c.buf) <= len(c.cmdBuf) {
		big := c.rbuf
		c.buf = c.cmdBuf[:copy(c.cmdBuf, c.buf)]
		c.rbuf, c.cmdBuf = c.cmdBuf, nil
		dataReadBufs.Put(&big)
	}
	c.mu.Unlock()
}

// finish drains to the end marker after errBareLineEnd or
// smtp.ErrDataTooLarge (go-smtp did the same: the reply goes out once the
// client has sent all of its message); any other error leaves the rest
// unread, and the session ends with the reply.
func (d *dotReader) finish() {
	if d.done || d.err != nil && !errors.Is(d.err, errBareLineEnd) && !errors.Is(d.err, smtp.ErrDataTooLarge) {
		return
	}
	d.err = nil
	d.checks = false
	_, _ = io.Copy(io.Discard, d)
}

func (d *dotReader) Read(p []byte) (int, error) {
	if d.done {
		return 0, io.EOF
	}
	if d.err != nil {
		return 0, d.err
	}
	c := d.c
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for n < len(p) {
		if c.failed != nil {
			d.err = c.failed
			break
		}
		if len(c.buf) == 0 || d.lineStart && c.buf[0] == '.' && len(c.buf) < 3 && bytes.HasPrefix([]byte(".\r\n"), c.buf) {
			// Nothing to take, or a line start that may be the end
			// marker: give what is taken, or read more.
			if n > 0 {
				break
			}
			if err := c.rerr; err != nil {
				c.rerr = nil
				if err == io.EOF {
					err = io.ErrUnexpectedEOF
				}
				d.err = err
				break
			}
			c.fill()
			continue
		}
		if d.lineStart {
			if bytes.HasPrefix(c.buf, []byte(".\r\n")) {
				c.buf = c.buf[3:]
				d.done = true
				// The rest of the buffer is the client's next commands,
				// checked for bare CR/LF as everything outside DATA is
				// (before Session.Data's own takeBare, as before).
				c.lastCR = false
				c.scanLineEnds(c.buf)
				return n, io.EOF
			}
			d.lineStart = false
			d.lineLen = 0
			if c.buf[0] == '.' {
				c.buf = c.buf[1:]
				d.lineLen = 1
				continue
			}
		}
		span := c.buf
		if i := bytes.IndexByte(span, '\n'); i >= 0 {
			span = span[:i+1]
		}
		span = span[:min(len(span), len(p)-n)]
		if max := c.l.s.cfg.MaxLineLength; max > 0 && d.lineLen+len(span) > max {
			d.err = smtp.ErrTooLongLine
			break
		}
		if d.checks {
			if d.limited && d.left < int64(len(span)) {
				if d.left == 0 {
					d.err = smtp.ErrDataTooLarge
					break
				}
				span = span[:d.left]
			}
			if d.bare(span) {
				d.err = errBareLineEnd
				break
			}
			d.left -= int64(len(span))
		}
		n += copy(p[n:], span)
		c.buf = c.buf[len(span):]
		d.lineLen += len(span)
		// A line starts only after CRLF: while draining, a bare LF must
		// not make ".\r\n" after it the end of the message.
		last := span[len(span)-1]
		d.lineStart = last == '\n' && (len(span) > 1 && span[len(span)-2] == '\r' || len(span) == 1 && d.lastCR)
		d.lastCR = last == '\r'
	}
	return n, d.err
}

// bare reports whether span (taken after d.lastCR; at most one LF, at its
// end) holds a CR not followed by LF or an LF not preceded by CR.
func (d *dotReader) bare(span []byte) bool {
	if d.lastCR && span[0] != '\n' {
		return true
	}
	end := len(span)
	switch span[end-1] {
	case '\n':
		if end == 1 {
			return !d.lastCR
		}
		if span[end-2] != '\r' {
			return true
		}
		end -= 2
	case '\r':
		end--
	}
	return bytes.IndexByte(span[:end], '\r') >= 0
}
