package smtpd

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"
)

func TestSplitMessageAtFirstEmptyLine(t *testing.T) {
	cases := []struct {
		raw, header, body string
	}{
		{"Subject: a\r\n\r\nbody\r\n", "Subject: a\r\n\r\n", "body\r\n"},
		{"Subject: a\r\n\r\nline\r\n\r\nmore\r\n", "Subject: a\r\n\r\n", "line\r\n\r\nmore\r\n"},
		{"\r\nbody only\r\n", "\r\n", "body only\r\n"},
		{"Subject: no body\r\n", "Subject: no body\r\n", ""},
		{"Subject: lf\n\nbody\n", "Subject: lf\n\n", "body\n"},
		{"X: a\r\n \r\nY: folded-looking\r\n\r\nb", "X: a\r\n \r\nY: folded-looking\r\n\r\n", "b"},
	}
	for _, c := range cases {
		h, b := SplitMessage([]byte(c.raw))
		if string(h) != c.header || string(b) != c.body {
			t.Errorf("SplitMessage(%q) = %q, %q; want %q, %q", c.raw, h, b, c.header, c.body)
		}
	}
}

func TestCountFieldsIgnoresContinuations(t *testing.T) {
	h := []byte("A: 1\r\n folded\r\n\tmore\r\nB: 2\r\nC: 3\r\n\r\n")
	if n := CountFields(h); n != 3 {
		t.Fatalf("CountFields = %d, want 3", n)
	}
}

func TestParseMailbox(t *testing.T) {
	cases := []struct {
		addr string
		utf8 bool
		err  error // nil: ok; errSyntax: any other error
	}{
		{"user@example.org", false, nil},
		{"first.last+tag@sub.example.org", false, nil},
		{"user@[127.0.0.1]", false, nil},
		{"jörg@exämple.org", true, nil},
		{"jörg@exämple.org", false, errNeedsSMTPUTF8},
		{"j\xf6rg@example.org", true, errNotUTF8},
		{"user@ex\xe4mple.org", true, errNotUTF8},
		{"user@xn--zz.example", false, errSyntax},
		{"no-at-sign", false, errSyntax},
		{"@example.org", false, errSyntax},
		{"user@", false, errSyntax},
		{"user@bad..domain", false, errSyntax},
		{"user@-leading.example", false, errSyntax},
		{"john doe@example.org", false, nil}, // was "john doe"@example.org
		{"user@exa_mple.org", false, errSyntax},
		{"ctrl\x01@example.org", false, errSyntax},
		{"c1\u0085@example.org", true, errSyntax},
		{"bob>evil@example.org", false, errSyntax}, // was "bob>evil"@example.org
		{strings.Repeat("l", 65) + "@example.org", false, errSyntax},
	}
	for _, c := range cases {
		_, err := parseMailbox(c.addr, c.utf8)
		switch {
		case c.err == nil && err != nil, c.err != nil && err == nil:
			t.Errorf("parseMailbox(%q, utf8=%v) = %v, want %v", c.addr, c.utf8, err, c.err)
		case c.err != nil && c.err != errSyntax && !errors.Is(err, c.err):
			t.Errorf("parseMailbox(%q, utf8=%v) = %v, want %v", c.addr, c.utf8, err, c.err)
		}
	}
}

var errSyntax = errors.New("syntax")

// TestMailboxKeepsQuotingAndFlagsRouting: go-smtp hands over local parts
// unquoted; what goes into the queue is quoted again where RFC 5321 §4.1.2
// needs it, so the next MTA sees the same mailbox the policy judged.
func TestMailboxKeepsQuotingAndFlagsRouting(t *testing.T) {
	cases := []struct {
		in, out string
		routed  bool
	}{
		{"bob@example.net", "bob@example.net", false},
		{"john doe@example.net", `"john doe"@example.net`, false},
		{"bob@evil.example@example.net", `"bob@evil.example"@example.net`, true},
		{"bob%evil.example@example.net", "bob%evil.example@example.net", true},
		{"evil.example!bob@example.net", "evil.example!bob@example.net", true},
		{`a"b\c@example.net`, `"a\"b\\c"@example.net`, false},
		{".dot@example.net", `".dot"@example.net`, false},
		{"a..b@example.net", `"a..b"@example.net`, false},
	}
	for _, c := range cases {
		m, err := parseMailbox(c.in, false)
		if err != nil {
			t.Fatalf("parseMailbox(%q): %v", c.in, err)
		}
		if m.String() != c.out || m.routed() != c.routed {
			t.Errorf("%q: got %q routed=%v, want %q routed=%v", c.in, m.String(), m.routed(), c.out, c.routed)
		}
	}
}

func TestRateLimiterIsPerClientTokenBucket(t *testing.T) {
	l := newRateLimiter(2, time.Minute, 2)
	a, b := netip.MustParseAddr("127.0.0.3"), netip.MustParseAddr("127.0.0.4")
	now := time.Unix(1_000_000, 0)
	if !l.allow(a, now) || !l.allow(a, now) {
		t.Fatal("burst of 2 refused")
	}
	if l.allow(a, now) {
		t.Fatal("third message within the burst allowed")
	}
	if !l.allow(b, now) {
		t.Fatal("another client shares the bucket")
	}
	if !l.allow(a, now.Add(31*time.Second)) { // 2 per minute: one token back after 30 s
		t.Fatal("token not refilled after 31 s")
	}
	if l.allow(a, now.Add(32*time.Second)) {
		t.Fatal("refilled more than the rate")
	}
}
