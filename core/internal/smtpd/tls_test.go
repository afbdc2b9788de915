package smtpd

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mixmta/mixmta/core/internal/config"
	"github.com/mixmta/mixmta/core/internal/users"
)

// modes are the two ways a session runs: every hardening test runs in
// both, because the checks must hold inside STARTTLS exactly as outside.
var modes = []string{"plain", "starttls"}

// withTLS gives l a fresh self-signed certificate, so that it offers
// STARTTLS.
func withTLS(t testing.TB, l config.Listener) config.Listener {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "mx.test.invalid"},
		DNSNames:     []string{"mx.test.invalid"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
	l.TLS = &config.TLS{CertFile: certFile, KeyFile: keyFile}
	return l
}

// startTLS runs STARTTLS on an open session and, over TLS, EHLO again.
func (c *client) startTLS() *client {
	c.t.Helper()
	c.expect("STARTTLS", "220")
	tc := tls.Client(c.c, &tls.Config{InsecureSkipVerify: true, ServerName: "mx.test.invalid"})
	_ = tc.SetDeadline(time.Now().Add(30 * time.Second))
	if err := tc.Handshake(); err != nil {
		c.t.Fatalf("TLS handshake: %v", err)
	}
	_ = tc.SetDeadline(time.Time{})
	c.c, c.r = tc, bufio.NewReader(tc)
	if e := c.ehlo(); !strings.HasPrefix(e, "250") || strings.Contains(e, "STARTTLS") {
		c.t.Fatalf("EHLO inside TLS: want 250 without STARTTLS:\n%s", e)
	}
	return c
}

// ehlo sends EHLO and returns the whole reply.
func (c *client) ehlo() string {
	c.t.Helper()
	fmt.Fprint(c.c, "EHLO client.example.org\r\n")
	var all []string
	c.c.SetReadDeadline(time.Now().Add(30 * time.Second))
	for {
		line, err := c.r.ReadString('\n')
		if err != nil {
			c.t.Fatalf("EHLO: %v", err)
		}
		all = append(all, strings.TrimRight(line, "\r\n"))
		if len(line) < 4 || line[3] != '-' {
			return strings.Join(all, "\n")
		}
	}
}

// open dials s and greets it, in the given mode: "starttls" runs
// STARTTLS before handing the session back.
func open(t testing.TB, s *Server, mode string) *client {
	t.Helper()
	c := dial(t, s, "").hello()
	if mode == "starttls" {
		c.startTLS()
	}
	return c
}

// TestStartTLSIsRunByTheServerItself: STARTTLS is offered only with a
// certificate; inside TLS, EHLO no longer offers it and a second STARTTLS
// is refused; no transaction state from before TLS survives it (RFC 3207
// §4.2), and a message sent inside TLS is stored as sent.
func TestStartTLSIsRunByTheServerItself(t *testing.T) {
	s, sink := startServer(t, withTLS(t, testListener(nil)))
	c := dial(t, s, "").hello()
	if e := c.ehlo(); !strings.Contains(e, "250-STARTTLS") {
		t.Fatalf("EHLO does not offer STARTTLS:\n%s", e)
	}
	c.expect("MAIL FROM:<before-tls@example.org>", "250")
	c.expect("RCPT TO:<b@example.net>", "250")
	c.startTLS()
	c.expect("DATA", "502 5.5.1") // go-smtp: "Missing RCPT TO command"
	c.expect("STARTTLS", "502")
	c.expect("MAIL FROM:<a@example.org>", "250")
	c.expect("RCPT TO:<b@example.net>", "250")
	c.expect("DATA", "354")
	fmt.Fprint(c.c, "Subject: inside tls\r\n\r\nbody\r\n.\r\n")
	c.expect("", "250")
	msgs := sink.all()
	if len(msgs) != 1 || msgs[0].env.MailFrom != "a@example.org" || strings.Join(msgs[0].env.RcptTo, ",") != "b@example.net" {
		t.Fatalf("stored %+v, want one message from a@example.org to b@example.net", msgs)
	}

	// Without a certificate, STARTTLS is neither offered nor run.
	s2, _ := startServer(t, testListener(nil))
	c = dial(t, s2, "").hello()
	if e := c.ehlo(); strings.Contains(e, "STARTTLS") {
		t.Fatalf("EHLO offers STARTTLS without a certificate:\n%s", e)
	}
	c.expect("STARTTLS", "502 5.5.1")
}

// TestCommandsPipelinedAfterStartTLSRefused: commands sent in plaintext
// right behind STARTTLS, before the handshake (what an attacker on the
// path injects, CVE-2011-0411), are never run inside TLS: the server
// answers 554 5.5.1 and closes instead of starting TLS. A failed
// handshake ends the session too, and frees its slot.
func TestCommandsPipelinedAfterStartTLSRefused(t *testing.T) {
	s, sink := startServer(t, withTLS(t, testListener(nil)))
	c := dial(t, s, "").hello()
	fmt.Fprint(c.c, "STARTTLS\r\nMAIL FROM:<injected@example.org>\r\nRCPT TO:<b@example.net>\r\n")
	c.expect("", "554 5.5.1")
	if !c.closed(5 * time.Second) {
		t.Error("session open after pipelined STARTTLS")
	}
	if n := len(sink.all()); n != 0 {
		t.Errorf("%d messages stored", n)
	}

	// A client that answers 220 with plaintext instead of a TLS
	// handshake is closed, and its session slot freed.
	c = dial(t, s, "").hello()
	c.expect("STARTTLS", "220")
	fmt.Fprint(c.c, "MAIL FROM:<plain@example.org>\r\n")
	if !c.closed(10 * time.Second) {
		t.Error("session open after a failed handshake")
	}
	for end := time.Now().Add(10 * time.Second); s.Sessions() != 0; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("%d sessions still counted", s.Sessions())
		}
	}
}

// TestRepliesCarryNoControlCharacters: go-smtp echoes the EHLO name and
// an unknown verb into its replies; a bare CR, ESC or NUL sent in them
// comes back as "?", in plaintext and inside STARTTLS, so an echoed CR
// can never split a reply line for the client.
func TestRepliesCarryNoControlCharacters(t *testing.T) {
	s, _ := startServer(t, withTLS(t, testListener(nil)))
	for _, mode := range modes {
		t.Run(mode, func(t *testing.T) {
			c := open(t, s, mode)
			for _, cmd := range []string{"EHLO evil\rexample\x1b[2J", "XY\x1bZ\r"} {
				fmt.Fprintf(c.c, "%s\r\n", cmd)
				c.c.SetReadDeadline(time.Now().Add(30 * time.Second))
				var all string
				for {
					line, err := c.r.ReadString('\n')
					if err != nil {
						t.Fatalf("after %q: %v", cmd, err)
					}
					all += line
					body := strings.TrimSuffix(line, "\r\n")
					if strings.ContainsAny(body, "\r\x1b\x00") {
						t.Errorf("reply to %q carries a control character: %q", cmd, line)
					}
					if len(line) < 4 || line[3] != '-' {
						if !strings.Contains(all, "?") {
							t.Errorf("reply to %q: %q, want the control characters as ?", cmd, all)
						}
						break
					}
				}
			}
		})
	}
}

// TestNoMailOrAuthBeforeEHLOAfterStartTLS: RFC 3207 §4.2 has the server
// forget what it learnt before TLS, the EHLO name included. A client that
// sends MAIL or AUTH right after the handshake gets 503 5.5.1 and must
// greet again; after EHLO (or HELO) inside TLS, mail flows.
func TestNoMailOrAuthBeforeEHLOAfterStartTLS(t *testing.T) {
	usersFile := filepath.Join(t.TempDir(), "users")
	if err := users.Set(usersFile, "alice", users.HashArgon2id("secret")); err != nil {
		t.Fatal(err)
	}
	s, sink := startServer(t, withTLS(t, testListener(func(l *config.Listener) {
		l.Auth = &config.Auth{UsersFile: usersFile}
	})))
	for _, greet := range []string{"EHLO", "HELO"} {
		c := dial(t, s, "").hello()
		c.expect("STARTTLS", "220")
		tc := tls.Client(c.c, &tls.Config{InsecureSkipVerify: true, ServerName: "mx.test.invalid"})
		_ = tc.SetDeadline(time.Now().Add(30 * time.Second))
		if err := tc.Handshake(); err != nil {
			t.Fatalf("TLS handshake: %v", err)
		}
		_ = tc.SetDeadline(time.Time{})
		c.c, c.r = tc, bufio.NewReader(tc)
		c.expect("MAIL FROM:<a@example.org>", "503 5.5.1")
		c.expect("AUTH PLAIN AGFsaWNlAHNlY3JldA==", "503 5.5.1") // alice, secret
		if greet == "EHLO" {
			c.ehlo()
			c.expect("AUTH PLAIN AGFsaWNlAHNlY3JldA==", "235")
		} else {
			c.expect("HELO client.example.org", "250")
		}
		c.expect("MAIL FROM:<a@example.org>", "250")
		c.expect("RCPT TO:<b@example.net>", "250")
		c.expect("DATA", "354")
		fmt.Fprint(c.c, "Subject: after greeting again\r\n\r\nbody\r\n.\r\n")
		c.expect("", "250")
	}
	if n := len(sink.all()); n != 2 {
		t.Fatalf("stored %d messages, want 2", n)
	}
}
