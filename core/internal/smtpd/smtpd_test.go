package smtpd

import (
	"net/netip"
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
