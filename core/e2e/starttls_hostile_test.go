package e2e

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mixmta/mixmta/internal/peers"
)

const starttlsHostileConfig = `
hostname: mx.test.invalid
listeners:
  - name: inbound
    address: %s
    local_domains: [example.net]
    read_timeout: 1s
    max_junk_commands: 5
    tls: {cert_file: %s, key_file: %s}
pipeline:
  - name: deliver
    plugin: onionmx
    config:
      relay_host: %s
      tls: none
`

// startTLS runs STARTTLS on s and EHLO again inside TLS.
func (s *session) startTLS() *session {
	s.t.Helper()
	s.expect("STARTTLS", "220")
	tc := tls.Client(s.c, &tls.Config{InsecureSkipVerify: true})
	_ = tc.SetDeadline(time.Now().Add(30 * time.Second))
	if err := tc.Handshake(); err != nil {
		s.t.Fatalf("TLS handshake: %v", err)
	}
	s.c, s.r = tc, bufio.NewReader(tc)
	s.expect("EHLO client.example.org", "250")
	return s
}

// TestSmugglingOverStartTLSNeverReachesTheNextMTA: the SMTP smuggling
// separators (CVE-2023-51764/51765/51766), a stall past the read timeout
// in the middle of DATA, junk commands past max_junk_commands, and
// commands pipelined behind STARTTLS, all sent inside STARTTLS to the
// real daemon delivering through onionmx to a real smtp-sink. Each is
// refused and the session closed, as in plaintext; the sink receives
// exactly the one clean message sent after them over STARTTLS (swaks),
// and nothing smuggled.
func TestSmugglingOverStartTLSNeverReachesTheNextMTA(t *testing.T) {
	sink := peers.SmtpSink(t)
	cert, err := peers.SelfSigned("mx.test.invalid")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, cert.CertPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, cert.KeyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	in := freeAddr(t)
	cfg, data := profile(t, fmt.Sprintf(starttlsHostileConfig, in, certFile, keyFile, sink.Addr), nil)
	startNode(t, cfg, data, in)
	const second = "MAIL FROM:<spoof@example.org>\r\nRCPT TO:<victim@example.net>\r\nDATA\r\nSubject: smuggled\r\n\r\nsmuggled\r\n.\r\n"
	closed := func(s *session, what string) {
		s.c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := s.r.ReadString('\n'); err == nil {
			t.Errorf("%s: session still open", what)
		}
	}
	for _, sep := range []string{"\n.\n", "\n.\r\n", "\r\n.\n", "\r.\r\n", "\r\n.\r", "\r\n.\r\r\n", "\n..\n"} {
		s := dialFrom(t, in, "127.0.0.1").startTLS()
		s.expect("MAIL FROM:<a@example.org>", "250")
		s.expect("RCPT TO:<b@example.net>", "250")
		s.expect("DATA", "354")
		fmt.Fprintf(s.c, "Subject: first\r\n\r\nbody%s%s\r\n.\r\n", sep, second)
		s.expect("", "554 5.5.2")
		closed(s, fmt.Sprintf("%q", sep))
	}

	s := dialFrom(t, in, "127.0.0.1").startTLS()
	s.expect("MAIL FROM:<a@example.org>", "250")
	s.expect("RCPT TO:<b@example.net>", "250")
	s.expect("DATA", "354")
	fmt.Fprint(s.c, "Subject: stalled\r\n\r\nhalf a bo")
	time.Sleep(2 * time.Second)
	fmt.Fprint(s.c, "dy\r\n.\r\n"+second)
	if got := s.expect("", "421 4.4.2"); strings.Contains(got, "127.0.0.1") || strings.Contains(got, "i/o") {
		t.Errorf("reply carries internal details: %q", got)
	}

	s = dialFrom(t, in, "127.0.0.1").startTLS()
	for i := 0; i < 5; i++ {
		s.expect("NOOP", "250")
	}
	s.expect("NOOP", "250")
	s.expect("", "421 4.7.0")
	closed(s, "junk commands")

	s = dialFrom(t, in, "127.0.0.1")
	fmt.Fprint(s.c, "STARTTLS\r\n"+second)
	s.expect("", "554 5.5.1")
	closed(s, "pipelined after STARTTLS")

	if code, out := peers.Swaks(t, "--silent", "2", "--server", in, "--tls", "--from", "a@example.org", "--to", "b@example.net",
		"--header", "Subject: clean", "--body", "clean\n..dot\n\nlast"); code != 0 {
		t.Fatalf("clean message over STARTTLS: swaks exit %d\n%s", code, out)
	}
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
	if d := string(msgs[0].Data); !strings.Contains(d, "\nclean\n..dot\n\nlast") || strings.Contains(d, "smuggled") {
		t.Errorf("delivered %q", d)
	}
}
