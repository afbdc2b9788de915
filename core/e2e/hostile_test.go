package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// send runs one whole transaction on s and expects 250 at the final dot.
func (s *session) send(from, to, body string) {
	s.t.Helper()
	s.expect("MAIL FROM:<"+from+">", "250")
	s.expect("RCPT TO:"+to, "250")
	s.expect("DATA", "354")
	fmt.Fprintf(s.c, "Subject: hostile test\r\n\r\n%s\r\n.\r\n", body)
	s.expect("", "250")
}

// TestRoutingTricksNeverReachTheNextMTA: a client that may not relay sends
// the recipient forms that make a later MTA relay (%-hack, bang path, a
// quoted local part with @, a second @) to a local domain of a listener
// that hands mail to onionmx and a real smtp-sink. Each is refused with
// 550 5.7.1 and none reaches the sink; a source route is dropped (RFC 5321
// §4.1.1.3); quoted local parts keep their quotes to the sink, and a
// client that may relay gets its quoted address delivered exactly.
func TestRoutingTricksNeverReachTheNextMTA(t *testing.T) {
	in, sub, sink := policyNode(t)

	s := dialFrom(t, in, "127.0.0.1")
	s.expect("MAIL FROM:<a@example.org>", "250")
	for _, rcpt := range []string{
		"<bob%evil.example@example.net>",
		"<evil.example!bob@example.net>",
		`<"bob@evil.example"@example.net>`,
		"<bob@evil.example@example.net>",
		`<"bob%evil.example"@example.net>`,
	} {
		s.expect("RCPT TO:"+rcpt, "550 5.7.1")
	}
	s.expect("RSET", "250")
	s.send("a@example.org", "<@evil.example:routed@example.net>", "routed")
	s.send("a@example.org", `<"john doe"@example.net>`, "quoted")
	r := dialFrom(t, sub, "127.0.0.1")
	r.send("a@example.org", `<"bob@elsewhere.example"@example.com>`, "relayed")

	if !sink.WaitCount(3, 60*time.Second) {
		t.Fatalf("sink got %d of 3 messages", sink.Count())
	}
	time.Sleep(time.Second) // anything refused would have arrived by now too
	msgs, err := sink.Messages()
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, m := range msgs {
		got = append(got, m.RcptArgs...)
	}
	want := map[string]bool{"<routed@example.net>": true, `<"john doe"@example.net>`: true, `<"bob@elsewhere.example"@example.com>`: true}
	if len(got) != len(want) {
		t.Fatalf("sink recipients %q, want %d: %v", got, len(want), want)
	}
	for _, g := range got {
		if !want[g] {
			t.Errorf("sink got recipient %q; want only %v", g, want)
		}
		if strings.Contains(g, "evil") {
			t.Errorf("a routing trick reached the next MTA: %q", g)
		}
	}
}

// TestInvalidUTF8AddressesRefused: invalid UTF-8 in MAIL FROM / RCPT TO
// is refused at the command (RFC 6531 §3.3, RFC 3463), never accepted to
// fail later in the pipeline; 8-bit without SMTPUTF8 gets 553 5.6.7.
func TestInvalidUTF8AddressesRefused(t *testing.T) {
	in, _, _ := policyNode(t)
	s := dialFrom(t, in, "127.0.0.1")
	s.expect("MAIL FROM:<\xff\xfe@example.org> SMTPUTF8", "501 5.1.7")
	s.expect("MAIL FROM:<jörg@example.org>", "553 5.6.7")
	s.expect("MAIL FROM:<jörg@example.org> SMTPUTF8", "250")
	s.expect("RCPT TO:<b\xc3x@example.net>", "501 5.1.3")
	s.expect("RCPT TO:<b@ex\xe4mple.net>", "501 5.1.3")
	s.expect("RCPT TO:<bad@xn--zz.example.net>", "553 5.1.3")
	s.expect("RCPT TO:<jürgen@example.net>", "250")
	s.expect("DATA", "354")
	fmt.Fprintf(s.c, "Subject: utf8\r\n\r\nok\r\n.\r\n")
	s.expect("", "250")
}
