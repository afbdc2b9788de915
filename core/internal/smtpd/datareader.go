package smtpd

import (
	"errors"
	"io"
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
