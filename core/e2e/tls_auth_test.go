package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/mixmta/mixmta/internal/peers"
)

// TestStartTLSAndAuthPlainForSubmission: a listener with STARTTLS and AUTH
// PLAIN lets an authenticated user relay; AUTH is not offered before TLS;
// wrong passwords get 535 5.7.8; unauthenticated relaying gets 5.7.1.
func TestStartTLSAndAuthPlainForSubmission(t *testing.T) {
	sink := peers.SmtpSink(t)
	dir := t.TempDir()
	cert, err := peers.SelfSigned("localhost", "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile, users := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem"), filepath.Join(dir, "users")
	os.WriteFile(certFile, cert.CertPEM, 0o600)
	os.WriteFile(keyFile, cert.KeyPEM, 0o600)
	hash, _ := bcrypt.GenerateFromPassword([]byte("s3cret pass"), bcrypt.MinCost)
	os.WriteFile(users, []byte("# submission users\nalice:"+string(hash)+"\n"), 0o600)
	addr := freeAddr(t)
	cfg, data := profile(t, fmt.Sprintf(`
listeners:
  - name: submission
    address: %s
    tls: {cert_file: %s, key_file: %s}
    auth: {users_file: %s}
    relay: {authenticated_users: true}
pipeline:
  - name: deliver
    plugin: onionmx
    config: {relay_host: %s, tls: none}
`, addr, certFile, keyFile, users, sink.Addr), nil)
	startNode(t, cfg, data, addr)

	// No AUTH before STARTTLS.
	s := dialFrom(t, addr, "127.0.0.1")
	ehlo := s.expect("EHLO again.example.org", "250")
	if strings.Contains(ehlo, "AUTH") || !strings.Contains(ehlo, "STARTTLS") {
		t.Fatalf("EHLO before TLS: want STARTTLS and no AUTH:\n%s", ehlo)
	}
	s.expect("MAIL FROM:<a@example.org>", "250")
	s.expect("RCPT TO:<x@example.com>", "550 5.7.1")

	base := []string{"--silent", "2", "--server", addr, "--from", "alice@example.org", "--to", "bob@example.com", "--tls", "--auth", "PLAIN", "--auth-user", "alice"}
	if code, out := peers.Swaks(t, append(base, "--auth-password", "wrong")...); code == 0 || !strings.Contains(out, "535") {
		t.Fatalf("wrong password: swaks exit %d, want a 535 failure:\n%s", code, out)
	}
	if code, out := peers.Swaks(t, append(base, "--auth-password", "s3cret pass")...); code != 0 {
		t.Fatalf("authenticated relay refused: exit %d\n%s", code, out)
	}
	if !sink.WaitCount(1, 30*time.Second) {
		t.Fatal("authenticated message not delivered")
	}
}
