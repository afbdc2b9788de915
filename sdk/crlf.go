package sdk

import (
	"bytes"
	"io"
)

// CRLFWriter returns a writer that passes message content to w with every
// line ended by CR LF: a bare CR and a bare LF each become CR LF, a CR LF
// stays as it is (RFC 5321 §2.3.8 and RFC 3977 §3.1.1: CR and LF only as
// a pair). Put it in front of a dot writer (net/textproto's, go-smtp's
// DATA writer) when sending a message to the next MTA, an LMTP server or
// a news server. Those dot writers turn a bare LF into CR LF but pass a
// bare CR as is, so "\r.\r" in a message from a stage (a mixnet exit's
// payload is whatever its anonymous sender made; SMTP ingress refuses
// bare CRs, a Sphinx payload does not) would reach a receiver that takes
// a bare CR for a line end as the end of data, with a smuggled second
// message or command behind it (SMTP smuggling, CVE-2023-51764..51766).
//
// The writer keeps one bit of state across Write calls (the last byte was
// a CR, already sent as CR LF), so a CR LF split between two writes stays
// one line end. It works on spans between line ends, not a byte at a
// time: clean lines go to w in one Write. Write reports len(b) on success
// and w's error otherwise.
func CRLFWriter(w io.Writer) io.Writer { return &lineWriter{w: w} }

// DotWriter is CRLFWriter plus the rest of SMTP DATA and NNTP multi-line
// framing (RFC 5321 §4.5.2, RFC 3977 §3.1.1): a line starting with "."
// gets a second one, and Close ends the content with ".\r\n" (after a
// CR LF if the last line had none; empty content ends with an empty line,
// as net/textproto's dot writer does). It replaces a textproto dot writer
// fed by CRLFWriter, with the same bytes on the wire. Close does not
// close w.
func DotWriter(w io.Writer) io.WriteCloser { return &lineWriter{w: w, stuff: true} }

type lineWriter struct {
	w         io.Writer
	stuff     bool
	skipLF    bool // the last byte was a CR, sent as CR LF: an LF next is its
	midLine   bool // not at the start of a line
	wroteSome bool
}

var (
	crlfBytes = []byte("\r\n")
	dotByte   = []byte(".")
)

func (c *lineWriter) Write(b []byte) (int, error) {
	if len(b) > 0 {
		c.wroteSome = true
	}
	// b[start:i] is checked and not yet written.
	start, i := 0, 0
	// cut writes b[start:at] and extra, and goes on at b[next:].
	cut := func(at int, extra []byte, next int) error {
		if _, err := c.w.Write(b[start:at]); err != nil {
			return err
		}
		if _, err := c.w.Write(extra); err != nil {
			return err
		}
		i, start = next, next
		return nil
	}
	for i < len(b) {
		if c.skipLF {
			c.skipLF = false
			if b[i] == '\n' {
				if err := cut(i, nil, i+1); err != nil {
					return 0, err
				}
				continue
			}
		}
		if !c.midLine {
			c.midLine = true
			if c.stuff && b[i] == '.' {
				if err := cut(i, dotByte, i); err != nil {
					return 0, err
				}
			}
		}
		rest := b[i:]
		lf := bytes.IndexByte(rest, '\n')
		line := rest
		if lf >= 0 {
			line = rest[:lf]
		}
		cr := bytes.IndexByte(line, '\r')
		switch {
		case cr >= 0 && cr == lf-1:
			i += lf + 1 // a CR LF: part of the span
		case cr >= 0:
			// A bare CR, or one whose LF may come in the next Write.
			p := i + cr
			if err := cut(p, crlfBytes, p+1); err != nil {
				return 0, err
			}
			c.skipLF = p+1 == len(b)
		case lf >= 0:
			if err := cut(i+lf, crlfBytes, i+lf+1); err != nil { // a bare LF
				return 0, err
			}
		default:
			i = len(b)
			continue
		}
		c.midLine = false
	}
	if _, err := c.w.Write(b[start:]); err != nil {
		return 0, err
	}
	return len(b), nil
}

// Close ends the content (DotWriter only: a CRLFWriter has nothing to end).
func (c *lineWriter) Close() error {
	if !c.stuff {
		return nil
	}
	end := ".\r\n"
	if c.midLine || !c.wroteSome {
		end = "\r\n" + end
	}
	_, err := io.WriteString(c.w, end)
	return err
}
