package e2e

import (
	"bytes"
	"mime"
	"mime/multipart"
	"net/mail"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mixmta/mixmta/internal/peers"
)

// gpgUser is a GnuPG home with one key pair (ed25519 + cv25519).
type gpgUser struct{ home string }

func newGPGUser(t *testing.T, uid string) *gpgUser {
	t.Helper()
	peers.Ensure(t, "gpg", "gnupg")
	home, err := os.MkdirTemp("", "gpg") // short: gpg-agent's socket path
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		exec.Command("gpgconf", "--homedir", home, "--kill", "all").Run()
		os.RemoveAll(home)
	})
	u := &gpgUser{home}
	u.gpg(t, nil, "--passphrase", "", "--pinentry-mode", "loopback", "--quick-gen-key", uid, "future-default", "default", "never")
	return u
}

func (u *gpgUser) gpg(t *testing.T, stdin []byte, args ...string) []byte {
	t.Helper()
	cmd := exec.Command("gpg", append([]string{"--homedir", u.home, "--batch", "--quiet", "--no-tty"}, args...)...)
	cmd.Stdin = bytes.NewReader(stdin)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("gpg %v: %v\n%s", args, err, stderr.String())
	}
	return out
}

// waitMail waits for n messages in a Dovecot user's Maildir.
func waitMail(dc *peers.DovecotPeer, addr string, n int, d time.Duration) []string {
	deadline := time.Now().Add(d)
	for {
		files := dc.Messages(addr)
		if len(files) >= n || time.Now().After(deadline) {
			return files
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// decryptStored checks that a message Dovecot stored is PGP/MIME with the
// outer Subject obscured and no plaintext marker, and returns what the
// recipient's GnuPG decrypts from it.
func decryptStored(t *testing.T, file string, u *gpgUser) []byte {
	t.Helper()
	raw, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(raw, []byte("LEAK-")) {
		t.Fatalf("the stored message holds plaintext:\n%s", raw)
	}
	msg, err := mail.ReadMessage(bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	mt, params, _ := mime.ParseMediaType(msg.Header.Get("Content-Type"))
	if mt != "multipart/encrypted" || params["protocol"] != "application/pgp-encrypted" || msg.Header.Get("Subject") != "[...]" {
		t.Fatalf("stored message is not PGP/MIME with an obscured Subject:\n%s", raw)
	}
	mr := multipart.NewReader(msg.Body, params["boundary"])
	var parts [][]byte
	for {
		p, err := mr.NextPart()
		if err != nil {
			break
		}
		b := new(bytes.Buffer)
		b.ReadFrom(p)
		parts = append(parts, b.Bytes())
	}
	if len(parts) != 2 || !bytes.Contains(parts[0], []byte("Version: 1")) {
		t.Fatalf("want 2 parts, the first Version: 1; got %d", len(parts))
	}
	return u.gpg(t, parts[1], "--decrypt")
}

// TestFogmailProfileStoresMailOnlyEncryptedInDovecot runs
// configs/fogmail.yaml with the real binaries: swaks sends to a local
// recipient with a key, and the copy a real Dovecot stores (through the
// lmtp stage) is PGP/MIME that the recipient's GnuPG decrypts to the
// original Subject and body, with no plaintext in the store. A recipient
// without a key is held (missing_key: hold): nothing is stored for them
// until their key file appears, then their copy arrives, encrypted.
func TestFogmailProfileStoresMailOnlyEncryptedInDovecot(t *testing.T) {
	dc := peers.Dovecot(t)
	keys := filepath.Join(t.TempDir(), "keys")
	os.Mkdir(keys, 0o700)
	bob := newGPGUser(t, "Bob <bob@example.net>")
	os.WriteFile(filepath.Join(keys, "bob@example.net.asc"), bob.gpg(t, nil, "--armor", "--export", "bob@example.net"), 0o644)
	carol := newGPGUser(t, "Carol <carol@example.net>")

	addr := freeAddr(t)
	cfg, data := profile(t, "configs/fogmail.yaml", map[string]any{
		"listeners.0.address":              addr,
		"pipeline.encrypt.config.keys_dir": keys,
		"pipeline.deliver.config.address":  dc.Socket,
	})
	n := startNode(t, cfg, data, addr)
	for _, to := range []string{"bob@example.net", "carol@example.net"} {
		code, out := peers.Swaks(t, "--silent", "2", "--server", n.addr, "--from", "alice@example.org", "--to", to,
			"--header", "Subject: LEAK-SUBJECT "+to, "--body", "LEAK-BODY line one\nline two")
		if code != 0 {
			t.Fatalf("swaks to %s: exit %d\n%s", to, code, out)
		}
	}
	files := waitMail(dc, "bob@example.net", 1, 30*time.Second)
	if len(files) != 1 {
		t.Fatalf("bob's Maildir holds %d messages, want 1\n%s", len(files), dc.Log())
	}
	plain := string(decryptStored(t, files[0], bob))
	if !strings.Contains(plain, "Subject: LEAK-SUBJECT bob@example.net\r\n") || !strings.Contains(plain, "\r\n\r\nLEAK-BODY line one\r\nline two\r\n") {
		t.Fatalf("decrypted entity lacks the original Subject or body:\n%q", plain)
	}

	// Carol has no key: held, not stored in clear.
	time.Sleep(3 * time.Second)
	if got := dc.Messages("carol@example.net"); len(got) != 0 {
		t.Fatalf("carol's message was stored without her key: %v", got)
	}
	os.WriteFile(filepath.Join(keys, "carol@example.net.asc"), carol.gpg(t, nil, "--armor", "--export", "carol@example.net"), 0o644)
	files = waitMail(dc, "carol@example.net", 1, 30*time.Second)
	if len(files) != 1 {
		t.Fatalf("carol's held message did not arrive once her key was there (%d messages)", len(files))
	}
	if plain := string(decryptStored(t, files[0], carol)); !strings.Contains(plain, "LEAK-BODY line one") {
		t.Fatalf("carol's copy decrypts to %q", plain)
	}
	if strings.Contains(n.log(), "@example.") {
		t.Fatalf("the daemon's log names an address:\n%s", tailLines(n.log(), 40))
	}
}
