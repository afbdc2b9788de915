package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mixmta/mixmta/internal/peers"
)

func usersAdd(t *testing.T, file, name, password string, extra ...string) {
	t.Helper()
	cmd := mixmtaCommand(t, append([]string{"users", "add", name, "--file", file}, extra...)...)
	cmd.Stdin = strings.NewReader(password + "\n")
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "user "+name+" set in "+file) {
		t.Fatalf("users add %s: %v\n%s", name, err, out)
	}
}

// TestUsersAddArgon2idAndBcryptAuthenticate: `mixmta users add` writes an
// Argon2id hash (bcrypt with --bcrypt) into a 0600 users file; check-config
// accepts it and the running listener authenticates both users over
// STARTTLS; a malformed hash fails check-config and serve alike, as
// FILE:LINE.
func TestUsersAddArgon2idAndBcryptAuthenticate(t *testing.T) {
	sink := peers.SmtpSink(t)
	dir := t.TempDir()
	cert, err := peers.SelfSigned("localhost", "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile, users := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem"), filepath.Join(dir, "users")
	os.WriteFile(certFile, cert.CertPEM, 0o600)
	os.WriteFile(keyFile, cert.KeyPEM, 0o600)
	usersAdd(t, users, "alice", "argon pass")
	usersAdd(t, users, "bob", "bcrypt pass", "--bcrypt")
	usersAdd(t, users, "alice", "new argon pass") // replaces alice's line
	b, _ := os.ReadFile(users)
	fi, _ := os.Stat(users)
	if fi.Mode().Perm() != 0o600 || strings.Count(string(b), "alice:$argon2id$v=19$") != 1 || !strings.Contains(string(b), "bob:$2a$") || strings.Count(string(b), "\n") != 2 {
		t.Fatalf("users file (mode %o):\n%s", fi.Mode().Perm(), b)
	}
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
	if out, err := mixmta(t, "check-config", "-c", cfg); err != nil {
		t.Fatalf("check-config: %v\n%s", err, out)
	}
	n := startNode(t, cfg, data, addr)
	auth := func(user, pw string) (int, string) {
		return peers.Swaks(t, "--silent", "2", "--server", addr, "--from", "a@example.org", "--to", "b@example.com",
			"--tls", "--auth", "PLAIN", "--auth-user", user, "--auth-password", pw)
	}
	if code, out := auth("alice", "argon pass"); code == 0 || !strings.Contains(out, "535") {
		t.Fatalf("alice's old password: exit %d, want 535\n%s", code, out)
	}
	if code, out := auth("alice", "new argon pass"); code != 0 {
		t.Fatalf("alice (argon2id) refused: exit %d\n%s", code, out)
	}
	if code, out := auth("bob", "bcrypt pass"); code != 0 {
		t.Fatalf("bob (bcrypt) refused: exit %d\n%s", code, out)
	}
	if !sink.WaitCount(2, 30*time.Second) {
		t.Fatalf("sink has %d, want 2", sink.Count())
	}
	n.stop()

	// A malformed hash: both commands fail with the same FILE:LINE.
	os.WriteFile(users, append(b, []byte("carol:$argon2id$v=19$m=19456,t=2,p=1$short$key\n")...), 0o600)
	want := users + ":3: user \"carol\": malformed argon2id salt"
	for _, cmd := range []string{"check-config", "serve"} {
		if out, err := mixmta(t, cmd, "-c", cfg); err == nil || !strings.Contains(out, want) {
			t.Fatalf("%s with a malformed hash: %v\nwant %q in\n%s", cmd, err, want, out)
		}
	}
}
