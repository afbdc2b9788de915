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
	trySmuggling(t, func() *session { return dialFrom(t, in, "127.0.0.1").startTLS() })
	stallInData(t, dialFrom(t, in, "127.0.0.1").startTLS())

	s := dialFrom(t, in, "127.0.0.1").startTLS()
	for i := 0; i < 5; i++ {
		s.expect("NOOP", "250")
	}
	s.expect("NOOP", "250")
	s.expect("", "421 4.7.0")
	sessionClosed(t, s, "junk commands")

	s = dialFrom(t, in, "127.0.0.1")
	fmt.Fprint(s.c, "STARTTLS\r\n"+smuggledSecond)
	s.expect("", "554 5.5.1")
	sessionClosed(t, s, "pipelined after STARTTLS")

	if code, out := peers.Swaks(t, "--silent", "2", "--server", in, "--tls", "--from", "a@example.org", "--to", "b@example.net",
		"--header", "Subject: clean", "--body", "clean\n..dot\n\nlast"); code != 0 {
		t.Fatalf("clean message over STARTTLS: swaks exit %d\n%s", code, out)
	}
	onlyCleanDelivered(t, sink, func(d string) bool { return strings.Contains(d, "\nclean\n..dot\n\nlast") })
}
