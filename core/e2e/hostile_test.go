package e2e

import (
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mixmta/mixmta/core/internal/config"
	"github.com/mixmta/mixmta/internal/peers"
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

const hostileConfig = `
hostname: mx.test.invalid
listeners:
  - name: inbound
    address: %s
    local_domains: [example.net]
    read_timeout: 1s
pipeline:
  - name: deliver
    plugin: onionmx
    config:
      relay_host: %s
      tls: none
`

// TestSmugglingNeverReachesTheNextMTA: the SMTP smuggling separators
// (CVE-2023-51764/51765/51766) and a stall past the read timeout in the
// middle of DATA, each followed by a complete second transaction, sent
// to the real daemon delivering through onionmx to a real smtp-sink.
// Each is refused (554 5.5.2, or 421 4.4.2 for the stall) and the session
// closed; the sink receives exactly the one clean message sent after
// them, and no smuggled one.
func TestSmugglingNeverReachesTheNextMTA(t *testing.T) {
	sink := peers.SmtpSink(t)
	in := freeAddr(t)
	cfg, data := profile(t, fmt.Sprintf(hostileConfig, in, sink.Addr), nil)
	startNode(t, cfg, data, in)
	trySmuggling(t, func() *session { return dialFrom(t, in, "127.0.0.1") })
	stallInData(t, dialFrom(t, in, "127.0.0.1"))

	s := dialFrom(t, in, "127.0.0.1")
	s.send("a@example.org", "<b@example.net>", "clean\r\n..dot\r\n\r\nlast")
	onlyCleanDelivered(t, sink, func(d string) bool { return strings.HasSuffix(d, "\nclean\n.dot\n\nlast\n") })
}

// smuggledSecond is a complete second transaction that a smuggling
// separator or a stalled DATA would have the server read as commands.
const smuggledSecond = "MAIL FROM:<spoof@example.org>\r\nRCPT TO:<victim@example.net>\r\nDATA\r\nSubject: smuggled\r\n\r\nsmuggled\r\n.\r\n"

// trySmuggling sends, on a fresh session from dial each, a message whose
// body holds one of the SMTP smuggling separators (CVE-2023-51764/51765/
// 51766) followed by smuggledSecond: each must get 554 5.5.2 and the
// session closed.
func trySmuggling(t *testing.T, dial func() *session) {
	t.Helper()
	for _, sep := range []string{"\n.\n", "\n.\r\n", "\r\n.\n", "\r.\r\n", "\r\n.\r", "\r\n.\r\r\n", "\n..\n"} {
		s := dial()
		s.expect("MAIL FROM:<a@example.org>", "250")
		s.expect("RCPT TO:<b@example.net>", "250")
		s.expect("DATA", "354")
		fmt.Fprintf(s.c, "Subject: first\r\n\r\nbody%s%s\r\n.\r\n", sep, smuggledSecond)
		s.expect("", "554 5.5.2")
		sessionClosed(t, s, fmt.Sprintf("%q", sep))
	}
}

// stallInData stops for 2 s (past the listener's 1 s read_timeout) in the
// middle of a message body on s, then sends the rest and smuggledSecond:
// the reply is 421 4.4.2 without internal details.
func stallInData(t *testing.T, s *session) {
	t.Helper()
	s.expect("MAIL FROM:<a@example.org>", "250")
	s.expect("RCPT TO:<b@example.net>", "250")
	s.expect("DATA", "354")
	fmt.Fprint(s.c, "Subject: stalled\r\n\r\nhalf a bo")
	time.Sleep(2 * time.Second)
	fmt.Fprint(s.c, "dy\r\n.\r\n"+smuggledSecond)
	if got := s.expect("", "421 4.4.2"); strings.Contains(got, "127.0.0.1") || strings.Contains(got, "i/o") {
		t.Errorf("reply carries internal details: %q", got)
	}
}

// sessionClosed fails t when the server still answers on s within 10 s.
func sessionClosed(t *testing.T, s *session, what string) {
	t.Helper()
	s.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := s.r.ReadString('\n'); err == nil {
		t.Errorf("%s: session still open", what)
	}
}

// onlyCleanDelivered waits for sink's one message, gives a smuggled one
// 2 s more to arrive, and checks that the sink holds exactly one, which
// clean accepts and which contains nothing smuggled.
func onlyCleanDelivered(t *testing.T, sink *peers.SinkPeer, clean func(data string) bool) {
	t.Helper()
	if !sink.WaitCount(1, 60*time.Second) {
		t.Fatal("the clean message was not delivered")
	}
	time.Sleep(2 * time.Second) // a smuggled message would arrive by now
	msgs, err := sink.Messages()
	if err != nil {
		t.Fatal(err)
	}
	if len(msgs) != 1 {
		t.Fatalf("sink got %d messages, want only the clean one", len(msgs))
	}
	if d := string(msgs[0].Data); !clean(d) || strings.Contains(d, "smuggled") {
		t.Errorf("delivered %q", d)
	}
}

// TestIdleConnectionsOnTheMixPortKeepTheNodeHealthy: 70 TCP connections
// that never send a byte (re-opened when the node closes them) held on
// one node's mix port of a 4-node mixnet of real processes (a path has
// 3 hops and never starts at its sender). Its peers'
// probes keep it healthy all along (healthy_nodes never drops), and
// mail still crosses the mixnet.
func TestIdleConnectionsOnTheMixPortKeepTheNodeHealthy(t *testing.T) {
	sink := peers.SmtpSink(t)
	m := startMixnet(t, 4, sink.Addr, nil)
	m.waitHealthy(t)
	target, err := config.Load(m.nodes[3].cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 70 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				c, err := net.Dial("tcp", target.Mix.Address)
				if err != nil {
					time.Sleep(100 * time.Millisecond)
					continue
				}
				c.SetReadDeadline(time.Now().Add(2 * time.Second))
				for {
					if _, err := c.Read(make([]byte, 64)); err != nil {
						break
					}
				}
				c.Close()
				time.Sleep(100 * time.Millisecond)
			}
		}()
	}
	defer wg.Wait()
	defer close(stop)
	time.Sleep(time.Second)
	for i := 0; i < 3; i++ {
		if err := sendRaw(m.smtp[i], "a@example.org", []string{fmt.Sprintf("idle%d@example.net", i)}, []byte("Subject: idle\r\n\r\nthrough\r\n"), false); err != nil {
			t.Fatal(err)
		}
	}
	// Probes run every second; 8 s is several rounds of them.
	for end := time.Now().Add(8 * time.Second); time.Now().Before(end); time.Sleep(250 * time.Millisecond) {
		for _, n := range m.nodes[:3] {
			if s := lastStats(n.log()); !strings.Contains(s, "healthy_nodes=3") {
				t.Fatalf("a peer marked a node down with idle connections on its mix port: %s", s)
			}
		}
	}
	if !sink.WaitCount(3, 60*time.Second) {
		t.Fatalf("%d of 3 messages delivered", sink.Count())
	}
}
