package smtpd

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base32"
	"fmt"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/hashicorp/go-hclog"

	"github.com/mixmta/mixmta/core/internal/config"
	"github.com/mixmta/mixmta/core/internal/stats"
	"github.com/mixmta/mixmta/sdk/onion"
)

// TestInvalidOnionAddressesRefused: a sender or recipient whose domain
// ends in .onion but is no valid v3 onion address (a mistyped character,
// so a wrong checksum; a wrong version byte; a v2 address; a wrong
// length) is refused at MAIL with 553 5.1.7 and at RCPT with 553 5.1.3,
// in both modes, with the reason in the text; a valid v3 address, also
// in upper case and with a subdomain, is accepted.
func TestInvalidOnionAddressesRefused(t *testing.T) {
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	valid := onion.Address(pub)
	id := strings.TrimSuffix(valid, ".onion")
	other := "a"
	if id[10] == 'a' {
		other = "b"
	}
	typo := id[:10] + other + id[11:] + ".onion" // one mistyped character
	raw, _ := base32.StdEncoding.WithPadding(base32.NoPadding).DecodeString(strings.ToUpper(id))
	raw[34] = 4
	v4 := strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(raw)) + ".onion"
	bad := map[string]string{
		typo:                         "checksum",
		v4:                           "version",
		"expyuzz4wqqyqhjn.onion":     "v2",
		id[:55] + ".onion":           "56",
		"mail." + id[:50] + ".onion": "56",
	}
	s, sink := startServer(t, withTLS(t, testListener(func(l *config.Listener) {
		l.Relay.Networks = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}
	})))
	for _, mode := range modes {
		t.Run(mode, func(t *testing.T) {
			sink.reset()
			c := open(t, s, mode)
			for d, why := range bad {
				if got := c.expect("MAIL FROM:<a@"+d+">", "553 5.1.7"); !strings.Contains(got, why) {
					t.Errorf("MAIL from @%s: %q does not say %q", d, got, why)
				}
			}
			c.expect("MAIL FROM:<a@"+valid+">", "250")
			for d, why := range bad {
				if got := c.expect("RCPT TO:<b@"+d+">", "553 5.1.3"); !strings.Contains(got, why) {
					t.Errorf("RCPT to @%s: %q does not say %q", d, got, why)
				}
			}
			for _, d := range []string{valid, strings.ToUpper(valid), "mail." + valid} {
				c.expect("RCPT TO:<b@"+d+">", "250")
			}
			c.expect("DATA", "354")
			fmt.Fprint(c.c, "Subject: onion\r\n\r\nbody\r\n.\r\n")
			c.expect("", "250")
			if msgs := sink.all(); len(msgs) != 1 || len(msgs[0].env.RcptTo) != 3 {
				t.Fatalf("stored %+v, want one message to the 3 valid addresses", msgs)
			}
		})
	}
}

// fullSink is a memSink whose queue is full while full is set.
type fullSink struct {
	*memSink
	full atomic.Bool
}

func (f *fullSink) QueueFull() bool { return f.full.Load() }

// TestFullQueueGets451NotADrop: while the sink's queue is full, MAIL,
// RCPT and DATA are answered 451 4.3.2 (temporary: the client keeps its
// message) and nothing is stored; a message that was accepted before
// stays stored, and mail is accepted again once there is room.
func TestFullQueueGets451NotADrop(t *testing.T) {
	sink := &fullSink{memSink: newMemSink(t)}
	s := startServerWith(t, testListener(nil), sink)
	c := open(t, s, "plain")
	send := func(c *client, want string) {
		c.expect("MAIL FROM:<a@example.org>", "250")
		c.expect("RCPT TO:<b@example.net>", "250")
		c.expect("DATA", "354")
		fmt.Fprint(c.c, "Subject: q\r\n\r\nbody\r\n.\r\n")
		c.expect("", want)
	}
	send(c, "250")
	sink.full.Store(true)
	c.expect("MAIL FROM:<a@example.org>", "451 4.3.2")
	sink.full.Store(false)
	c.expect("MAIL FROM:<a@example.org>", "250")
	sink.full.Store(true)
	c.expect("RCPT TO:<b@example.net>", "451 4.3.2")
	sink.full.Store(false)
	c.expect("RCPT TO:<b@example.net>", "250")
	c.expect("DATA", "354")
	sink.full.Store(true) // filled while the body streamed in
	fmt.Fprint(c.c, "Subject: q\r\n\r\nbody\r\n.\r\n")
	c.expect("", "451 4.3.2")
	sink.full.Store(false)
	send(c, "250")
	if n := len(sink.all()); n != 2 {
		t.Fatalf("%d messages stored, want 2", n)
	}
}

// startServerWith runs a real listener with the given sink.
func startServerWith(tb testing.TB, l config.Listener, sink Sink) *Server {
	tb.Helper()
	s, err := New(l, "mx.test.invalid", sink, nil, &stats.Counters{}, hclog.NewNullLogger())
	if err != nil {
		tb.Fatal(err)
	}
	if err := s.Listen(); err != nil {
		tb.Fatal(err)
	}
	go s.Serve()
	tb.Cleanup(func() { s.smtp.Close() })
	return s
}
