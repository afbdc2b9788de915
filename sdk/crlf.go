package sdk

import "io"

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
// The writer keeps one bit of state across Write calls (whether the last
// byte was CR), so a CR LF split between two writes stays one line end.
// Write reports len(b) on success and w's error otherwise.
func CRLFWriter(w io.Writer) io.Writer { return &crlfWriter{w: w} }

type crlfWriter struct {
	w   io.Writer
	cr  bool // the last byte written was CR (already sent as CR LF)
	out []byte
}

func (c *crlfWriter) Write(b []byte) (int, error) {
	out := c.out[:0]
	for _, x := range b {
		switch {
		case x == '\n' && c.cr:
			// The LF of a CR LF whose CR went out as CR LF.
		case x == '\r' || x == '\n':
			out = append(out, '\r', '\n')
		default:
			out = append(out, x)
		}
		c.cr = x == '\r'
	}
	c.out = out
	if _, err := c.w.Write(out); err != nil {
		return 0, err
	}
	return len(b), nil
}
