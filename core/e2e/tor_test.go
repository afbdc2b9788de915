package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/mixmta/mixmta/internal/peers"
)

// torYAML renders torrc lines as a YAML flow list.
func torYAML(lines []string) string {
	q := make([]string, len(lines))
	for i, l := range lines {
		q[i] = fmt.Sprintf("%q", l)
	}
	return "[" + strings.Join(q, ", ") + "]"
}

// waitLog waits until the node's log contains s.
func (n *node) waitLog(t testing.TB, s string, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !strings.Contains(n.log(), s) {
		if time.Now().After(deadline) {
			t.Fatalf("no %q in the mixmta log after %s:\n%s", s, d, tailLines(n.log(), 40))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// onionSession opens an SMTP session to addr through the test network's
// client tor.
func onionSession(t *testing.T, tn *peers.TorNet, addr string) *smtp.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	conn, err := tn.DialSocks(ctx, addr, "e2e", "session")
	if err != nil {
		t.Fatalf("dial %s through tor: %v", addr, err)
	}
	c := smtp.NewClient(conn)
	t.Cleanup(func() { c.Close() })
	if err := c.Hello("client.example.net"); err != nil {
		t.Fatal(err)
	}
	return c
}

// TestTorManagedGatewayOnionInAndOut: mixmta starts its own tor (managed),
// publishes its inbound listener as an onion service with a key kept in
// data_dir, and delivers through Tor to another onion service; the onionmx
// stage gets Tor's SocksPort from the core. Inbound, through the onion
// service every client is 127.0.0.1: mail for the local domain is taken,
// relaying to any other domain is refused.
func TestTorManagedGatewayOnionInAndOut(t *testing.T) {
	tn := peers.Tor(t)
	sink := peers.SmtpSink(t)
	remote := tn.AddOnion(t, 25, sink.Addr)
	sub, in := freeAddr(t), freeAddr(t)
	cfgText := fmt.Sprintf(`hostname: gw.example.org
log: {level: info, stats_interval: 2s}
scheduler: {window: 200ms}
listeners:
  - name: submission
    address: %s
    relay: {networks: [127.0.0.1/32]}
  - name: onion-in
    address: %s
    local_domains: [example.org]
pipeline:
  - name: deliver
    plugin: onionmx
    config: {relay_host: "%s:25", tls: none}
tor:
  managed: true
  torrc: %s
  onion_services:
    - listener: onion-in
`, sub, in, remote, torYAML(tn.ClientTorrc()))
	cfg, data := profile(t, cfgText, nil)
	want, err := mixmta(t, "onion", "address", "-c", cfg, "onion-in")
	if err != nil {
		t.Fatalf("mixmta onion address: %v\n%s", err, want)
	}
	want = strings.TrimSpace(want)
	keyFile := filepath.Join(data, "onion", "onion-in.key")
	if fi, err := os.Stat(keyFile); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("onion key %s: %v (want mode 0600)", keyFile, err)
	}
	n := startNode(t, cfg, data, sub)
	n.waitLog(t, "[TOR] onion service published", 90*time.Second)
	if !strings.Contains(n.log(), strings.TrimSuffix(want, ":25")) {
		t.Fatalf("published onion differs from `mixmta onion address` %s:\n%s", want, tailLines(n.log(), 20))
	}
	if fi, err := os.Stat(filepath.Join(data, "tor")); err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("managed tor data dir: %v (want mode 0700)", err)
	}

	// Out: submission -> Tor -> the remote onion service -> smtp-sink.
	body := "Subject: out\r\n\r\nover tor " + token() + "\r\n"
	if err := sendRaw(sub, "a@example.org", []string{"b@example.net"}, []byte(body), false); err != nil {
		t.Fatalf("submission: %v", err)
	}
	// In: through our onion service; relaying is refused.
	c := onionSession(t, tn, want)
	if err := c.Mail("x@example.net", nil); err != nil {
		t.Fatal(err)
	}
	err = c.Rcpt("victim@elsewhere.example", nil)
	var se *smtp.SMTPError
	if !asSMTP(err, &se) || se.Code/100 != 5 {
		t.Fatalf("relay through the onion service: %v, want a 5xx refusal", err)
	}
	if err := c.Rcpt("bob@example.org", nil); err != nil {
		t.Fatalf("local recipient through the onion service: %v", err)
	}
	inBody := "Subject: in\r\n\r\nfrom an onion " + token() + "\r\n"
	w, err := c.Data()
	if err != nil {
		t.Fatal(err)
	}
	w.Write([]byte(inBody))
	if err := w.Close(); err != nil {
		t.Fatalf("end of data: %v", err)
	}
	c.Quit()

	msgs := sinkMessages(t, sink, 2, 90*time.Second)
	got := map[string]bool{}
	for _, m := range msgs {
		for _, b := range []string{body, inBody} {
			want := strings.ReplaceAll(b, "\r\n", "\n")
			if bytes.Contains(m.Data, []byte(want[strings.Index(want, "\n\n")+2:])) {
				got[b] = true
			}
		}
		if r := m.RcptTo(); len(r) != 1 || r[0] == "victim@elsewhere.example" {
			t.Fatalf("sink got recipients %v", r)
		}
	}
	if len(got) != 2 {
		t.Fatalf("bodies not intact: %d of 2 found in %d messages", len(got), len(msgs))
	}
}

// sinkMessages waits until sink holds n complete transactions.
func sinkMessages(t *testing.T, sink *peers.SinkPeer, n int, d time.Duration) []peers.SinkMessage {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		msgs, err := sink.Messages()
		if err == nil && len(msgs) >= n {
			return msgs
		}
		if time.Now().After(deadline) {
			t.Fatalf("sink: %d complete messages after %s, want %d (%v)", len(msgs), d, n, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func asSMTP(err error, se **smtp.SMTPError) bool {
	e, ok := err.(*smtp.SMTPError)
	if ok {
		*se = e
	}
	return ok
}
