package e2e

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/mixmta/mixmta/internal/peers"
)

func mixmta(t *testing.T, args ...string) (string, error) {
	t.Helper()
	out, err := mixmtaCommand(t, args...).CombinedOutput()
	return string(out), err
}

// TestQueueCommandsOnRunningAndStoppedDaemon: `mixmta queue ls|stats|
// flush|delete` work through the admin socket of a running daemon and on
// the queue directly when it is stopped; addresses only with --addresses.
func TestQueueCommandsOnRunningAndStoppedDaemon(t *testing.T) {
	sink := peers.SmtpSink(t)
	addr := freeAddr(t)
	cfg, data := profile(t, "configs/relay.yaml", map[string]any{
		"listeners.0.address":                addr,
		"pipeline.delay.config.mean":         "1h",
		"pipeline.delay.config.min":          "1h",
		"pipeline.delay.config.max":          "2h",
		"pipeline.deliver.config.relay_host": sink.Addr,
		"scheduler.window":                   "100ms",
	})
	n := startNode(t, cfg, data, addr)
	for i := 0; i < 3; i++ {
		if err := sendRaw(addr, "secret-sender@example.org", []string{fmt.Sprintf("r%d@example.net", i)}, []byte("Subject: q\r\n\r\nbody\r\n"), false); err != nil {
			t.Fatal(err)
		}
	}
	var items []map[string]any
	deadline := time.Now().Add(10 * time.Second)
	for {
		out, err := mixmta(t, "queue", "ls", "--json", "-c", cfg)
		if err != nil {
			t.Fatalf("queue ls: %v\n%s", err, out)
		}
		items = nil
		json.Unmarshal([]byte(out), &items)
		waiting := 0
		for _, it := range items {
			if it["waiting"] == true {
				waiting++
			}
		}
		if waiting == 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("want 3 waiting items, got:\n%s", out)
		}
		time.Sleep(100 * time.Millisecond)
	}
	out, _ := mixmta(t, "queue", "ls", "-c", cfg)
	if strings.Contains(out, "secret-sender") || !strings.Contains(out, "3 items") {
		t.Fatalf("queue ls without --addresses:\n%s", out)
	}
	out, _ = mixmta(t, "queue", "ls", "--addresses", "-c", cfg)
	if !strings.Contains(out, "secret-sender@example.org") {
		t.Fatalf("queue ls --addresses lacks the sender:\n%s", out)
	}
	out, err := mixmta(t, "queue", "stats", "-c", cfg)
	if err != nil || !regexp.MustCompile(`received=3 .*queued=3 delayed=3`).MatchString(out) {
		t.Fatalf("queue stats: %v\n%s", err, out)
	}
	id := items[0]["id"].(string)
	if out, err := mixmta(t, "queue", "delete", id, "-c", cfg); err != nil {
		t.Fatalf("queue delete: %v\n%s", err, out)
	}
	if out, err := mixmta(t, "queue", "flush", "-c", cfg); err != nil || !strings.Contains(out, "2 items flushed") {
		t.Fatalf("queue flush: %v\n%s", err, out)
	}
	if !sink.WaitCount(2, 20*time.Second) {
		t.Fatalf("flushed items not delivered: sink has %d", sink.Count())
	}
	time.Sleep(300 * time.Millisecond)
	if sink.Count() != 2 {
		t.Fatalf("sink has %d, want 2 (the deleted item must never leave)", sink.Count())
	}

	// Stopped daemon: the commands open the queue directly.
	sendRaw(addr, "a@example.org", []string{"late@example.net"}, []byte("Subject: q\r\n\r\nbody\r\n"), false)
	time.Sleep(300 * time.Millisecond)
	n.stop()
	out, err = mixmta(t, "queue", "ls", "-c", cfg)
	if err != nil || !strings.Contains(out, "1 items") {
		t.Fatalf("queue ls on a stopped daemon: %v\n%s", err, out)
	}
}

// TestPluginPinningRefusesAModifiedBinary: a plugin pinned by SHA-256 in
// the config starts only if the binary matches.
func TestPluginPinningRefusesAModifiedBinary(t *testing.T) {
	bin, err := os.ReadFile(filepath.Join(binDir, "onionmx"))
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(bin)
	good := hex.EncodeToString(sum[:])
	bad := strings.Repeat("0", 64)
	for _, c := range []struct {
		pin string
		ok  bool
	}{{good, true}, {bad, false}} {
		cfg, _ := profile(t, fmt.Sprintf(`
listeners:
  - {name: a, address: "127.0.0.1:0"}
plugins:
  onionmx: {sha256: "%s"}
pipeline:
  - name: deliver
    plugin: onionmx
    config: {relay_host: "127.0.0.1:25"}
`, c.pin), nil)
		out, err := mixmta(t, "check-config", "-c", cfg)
		if (err == nil) != c.ok {
			t.Fatalf("pin %s…: err=%v, want ok=%v\n%s", c.pin[:8], err, c.ok, out)
		}
		if !c.ok && !strings.Contains(strings.ToLower(out), "checksum") {
			t.Fatalf("mismatch error does not say why:\n%s", out)
		}
	}
}

// TestPublicEntryRateLimitPerClient: a listener open to anyone enforces
// its per-client rate limit with 450 4.7.1.
func TestPublicEntryRateLimitPerClient(t *testing.T) {
	sink := peers.SmtpSink(t)
	addr := freeAddr(t)
	cfg, data := profile(t, fmt.Sprintf(`
listeners:
  - name: public
    address: %s
    relay:
      anyone: true
      max_recipients: 2
      rate_limit: {messages: 2, per: 1h, burst: 2}
pipeline:
  - name: deliver
    plugin: onionmx
    config: {relay_host: %s, tls: none}
`, addr, sink.Addr), nil)
	startNode(t, cfg, data, addr)
	s := dialFrom(t, addr, "127.0.0.3")
	for i := 0; i < 2; i++ {
		s.expect("MAIL FROM:<a@example.org>", "250")
		s.expect("RCPT TO:<x@example.com>", "250")
		s.expect("RCPT TO:<y@example.com>", "250")
		s.expect("RCPT TO:<z@example.com>", "452 4.5.3")
		s.expect("RSET", "250")
	}
	s.expect("MAIL FROM:<a@example.org>", "450 4.7.1")
	// another client has its own bucket
	s2 := dialFrom(t, addr, "127.0.0.4")
	s2.expect("MAIL FROM:<a@example.org>", "250")
}
