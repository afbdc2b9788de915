package smtpd

import (
	"bufio"
	"io"
	"strings"
	"testing"
)

// TestReadHeaderStopsAtFirstEmptyLine: the streaming header reader splits
// where SplitMessage does for CRLF and LF messages, leaves the body in the
// reader, and stops with tooBig past the limit without reading the rest.
func TestReadHeaderStopsAtFirstEmptyLine(t *testing.T) {
	cases := []struct {
		raw, header, body string
	}{
		{"Subject: a\r\n\r\nbody\r\n", "Subject: a\r\n\r\n", "body\r\n"},
		{"Subject: a\r\n\r\nline\r\n\r\nmore\r\n", "Subject: a\r\n\r\n", "line\r\n\r\nmore\r\n"},
		{"\r\nbody only\r\n", "\r\n", "body only\r\n"},
		{"Subject: no body\r\n", "Subject: no body\r\n", ""},
		{"Subject: lf\n\nbody\n", "Subject: lf\n\n", "body\n"},
		{"X: a\r\n \r\nY: folded-looking\r\n\r\nb", "X: a\r\n \r\nY: folded-looking\r\n\r\n", "b"},
		{"X: " + strings.Repeat("y", 40) + "\r\n\r\nb", "X: " + strings.Repeat("y", 40) + "\r\n\r\n", "b"},
	}
	for _, c := range cases {
		br := bufio.NewReaderSize(strings.NewReader(c.raw), 16) // lines longer than the buffer too
		h, tooBig, err := readHeader(br, 1000)
		rest, _ := io.ReadAll(br)
		if err != nil || tooBig || string(h) != c.header || string(rest) != c.body {
			t.Errorf("readHeader(%q) = %q, %v, %v, rest %q; want %q, rest %q", c.raw, h, tooBig, err, rest, c.header, c.body)
		}
		if sh, sb := SplitMessage([]byte(c.raw)); string(sh) != c.header || string(sb) != c.body {
			t.Errorf("SplitMessage(%q) disagrees: %q, %q", c.raw, sh, sb)
		}
	}
	big := strings.Repeat("X-Filler: 0123456789\r\n", 100) + "\r\nbody"
	h, tooBig, err := readHeader(bufio.NewReader(strings.NewReader(big)), 1000)
	if err != nil || !tooBig || len(h) > 1000+len("X-Filler: 0123456789\r\n") {
		t.Errorf("header of %d bytes with limit 1000: read %d, tooBig %v, %v", len(big), len(h), tooBig, err)
	}
}
