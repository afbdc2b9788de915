package e2e

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mixmta/mixmta/internal/peers"
)

// TestRelayWithDKIMAfterSanitizingVerifiesAtPostfix runs configs/relay.yaml
// with a dkim stage between sanitize and the deliverer, as the dkim
// README places it: the message a real Postfix receives carries the
// sanitizer's From and a signature by the remailer's domain that dkimpy
// verifies with the Ed25519 key published by dnsmasq; the same message
// with a changed body does not verify.
func TestRelayWithDKIMAfterSanitizingVerifiesAtPostfix(t *testing.T) {
	peers.Ensure(t, "openssl", "openssl")
	key := filepath.Join(t.TempDir(), "mix.key")
	gen := exec.Command("sh", "-c", "umask 077; openssl genpkey -algorithm ed25519 -out "+key)
	if out, err := gen.CombinedOutput(); err != nil {
		t.Fatalf("openssl: %v\n%s", err, out)
	}
	pub, err := exec.Command("sh", "-c", "openssl pkey -in "+key+" -pubout -outform DER | tail -c 32 | base64 -w0").Output()
	if err != nil {
		t.Fatal(err)
	}
	dns := peers.Dnsmasq(t, peers.DNSRecords{TXT: map[string]string{
		"mix._domainkey.remailer.example.org": "v=DKIM1; k=ed25519; p=" + strings.TrimSpace(string(pub)),
	}, Zones: []string{"example.org"}})
	postfix := peers.Postfix(t)

	relay, err := os.ReadFile(filepath.Join(repoRoot, "configs", "relay.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	stage := "  - name: dkim\n    plugin: dkim\n    config:\n      domain: remailer.example.org\n      selector: mix\n      key_file: " + key + "\n"
	yaml := strings.Replace(string(relay), "  - name: deliver\n", stage+"  - name: deliver\n", 1)
	if yaml == string(relay) {
		t.Fatal("relay.yaml has no deliver stage to put dkim before")
	}
	addr := freeAddr(t)
	cfg, data := profile(t, yaml, map[string]any{
		"listeners.0.address":                        addr,
		"scheduler.window":                           "200ms",
		"pipeline.delay.config.mean":                 "300ms",
		"pipeline.delay.config.min":                  "0s",
		"pipeline.delay.config.max":                  "2s",
		"pipeline.sanitize.config.from":              "Anonymous <nobody@remailer.example.org>",
		"pipeline.sanitize.config.message_id_domain": "remailer.example.org",
		"pipeline.deliver.config.relay_host":         postfix.Addr,
	})
	n := startNode(t, cfg, data, addr)
	code, out := peers.Swaks(t, "--silent", "2", "--server", n.addr, "--from", "alice@example.org", "--to", "bob@example.net",
		"--header", "Subject: signed at the exit", "--header", "X-Secret: LEAK-DKIM", "--body", "body line one\n.dot line\nlast")
	if code != 0 {
		t.Fatalf("swaks exit %d\n%s", code, out)
	}
	files := postfix.WaitMessages(t, 1, 30*time.Second)
	if len(files) != 1 {
		t.Fatalf("Postfix got %d messages, want 1", len(files))
	}
	msg, _ := os.ReadFile(files[0])
	if bytes.Contains(msg, []byte("LEAK-")) || !bytes.Contains(msg, []byte("From: Anonymous <nobody@remailer.example.org>")) {
		t.Fatalf("the delivered message is not the sanitized one:\n%s", msg)
	}
	if !bytes.Contains(msg, []byte("d=remailer.example.org;")) || !bytes.Contains(msg, []byte("a=ed25519-sha256;")) {
		t.Fatalf("no ed25519 signature by remailer.example.org:\n%s", msg)
	}
	if ok, out := peers.DKIMVerify(t, dns.Addr, msg); !ok {
		t.Fatalf("dkimpy rejects the delivered message:\n%s\n%s", out, msg)
	}
	changed := bytes.Replace(msg, []byte("body line one"), []byte("body line 1"), 1)
	if ok, out := peers.DKIMVerify(t, dns.Addr, changed); ok {
		t.Fatalf("a changed body still verifies:\n%s", out)
	}
}
