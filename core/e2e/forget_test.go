package e2e

import (
	"bytes"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mixmta/mixmta/core/internal/config"
	"github.com/mixmta/mixmta/core/internal/queue"
	"github.com/mixmta/mixmta/internal/peers"
)

// forgetWait is how long the tests wait after the last delivery before
// they look at the disk: the queue's documented bound is two
// queue.FlushIntervals (2 s) after an item left; a minute is allowed.
const forgetWait = 5 * time.Second

// secretMessage is a message whose every identifying value is a token.
type secretMessage struct {
	from, rcpt, subject, body string
	size                      int
}

func newSecret(tag string, size int) secretMessage {
	tok := token()
	return secretMessage{
		from:    "from-" + tag + tok + "@example.org",
		rcpt:    "rcpt-" + tag + tok + "@example.net",
		subject: "subject-" + tag + tok,
		body:    "body-" + tag + tok,
		size:    size,
	}
}

func (m secretMessage) tokens() []string { return []string{m.from, m.rcpt, m.subject, m.body} }

func (m secretMessage) send(t *testing.T, addr string) {
	t.Helper()
	var b bytes.Buffer
	fmt.Fprintf(&b, "From: Sender <%s>\r\nTo: <%s>\r\nSubject: %s\r\n\r\n", m.from, m.rcpt, m.subject)
	line := m.body + " " + strings.Repeat("x", 40) + "\r\n"
	for b.Len() < m.size {
		b.WriteString(line)
	}
	if err := sendRaw(addr, m.from, []string{m.rcpt}, b.Bytes(), false); err != nil {
		t.Fatalf("send %s: %v", m.subject, err)
	}
}

// plainTokens returns the tokens found in the raw bytes of any file under
// dir, with the files.
func plainTokens(t *testing.T, dir string, tokens []string) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		for _, tok := range tokens {
			if bytes.Contains(b, []byte(tok)) {
				rel, _ := filepath.Rel(dir, p)
				out[tok] = append(out[tok], rel)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// assertForgotten checks one node's data dir: no token of a delivered
// message in any file, and none in any sealed value that the key slots on
// disk open. It returns what Recover found.
func assertForgotten(t *testing.T, name, dataDir string, gone []string) queue.Recovered {
	t.Helper()
	for tok, files := range plainTokens(t, dataDir, gone) {
		t.Errorf("%s: %q of a delivered message is in plain text in %v", name, tok, files)
	}
	r, err := queue.Recover(dataDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, tok := range gone {
		if r.Contains([]byte(tok)) {
			t.Errorf("%s: %q of a delivered message recovered with the key slots on disk", name, tok)
		}
	}
	t.Logf("%s: %d key slots, %d sealed values on disk, %d opened, none of a delivered message", name, r.Keys, r.Sealed, len(r.Opened))
	return r
}

// TestRelayStorageForgetsDeliveredMessages: configs/relay.yaml holds one
// message for an hour (its relay host refused it), then delivers messages
// of 1 KiB, 300 KiB and 3 MiB to a real smtp-sink. Seconds after the last
// delivery no file under the data dir contains the envelope sender,
// recipient, subject or body token of a delivered message, and with every
// key slot on disk none of their sealed values opens. The held message,
// still queued, opens with the same method (the negative control) but is
// in plain text nowhere.
func TestRelayStorageForgetsDeliveredMessages(t *testing.T) {
	sink := peers.SmtpSink(t)
	refused := freeAddr(t) // nothing listens: a temporary failure
	n := relayNode(t, refused, map[string]any{"retry.base": "1h", "pipeline.delay.config.mean": "10ms", "pipeline.delay.config.max": "50ms"})
	held := newSecret("held", 2000)
	held.send(t, n.addr)
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(n.log(), "[DELIVER] deferred") {
		if time.Now().After(deadline) {
			t.Fatal("the held message was never deferred")
		}
		time.Sleep(100 * time.Millisecond)
	}
	n.stop()
	b, err := os.ReadFile(n.cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	if b, err = config.Patch(b, map[string]any{"pipeline.deliver.config.relay_host": sink.Addr}); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(n.cfgPath, b, 0o600); err != nil {
		t.Fatal(err)
	}
	n.start()

	var gone []string
	for i, size := range []int{1 << 10, 300 << 10, 3 << 20} {
		m := newSecret(fmt.Sprintf("gone%d-", i), size)
		m.send(t, n.addr)
		gone = append(gone, m.tokens()...)
	}
	if !sink.WaitCount(3, 60*time.Second) {
		t.Fatalf("smtp-sink got %d messages, want 3", sink.Count())
	}
	time.Sleep(forgetWait)

	r := assertForgotten(t, "relay", n.dataDir, gone)
	for _, tok := range held.tokens() {
		if !r.Contains([]byte(tok)) {
			t.Errorf("negative control: %q of the held message does not open with the key slots on disk", tok)
		}
	}
	for tok, files := range plainTokens(t, n.dataDir, held.tokens()) {
		t.Errorf("%q of the held message is in plain text in %v", tok, files)
	}
	if sink.Count() != 3 {
		t.Errorf("smtp-sink got %d messages, want 3 (the held one must still wait)", sink.Count())
	}
}

// TestMixnetStorageForgetsDeliveredMessages: messages of 1 KiB and 200 KiB
// (4 fragments) go through a 5-node mixnet of real processes to a real
// smtp-sink. Seconds after delivery, no file of any node, the entry
// included, holds any envelope value, subject or body token, and with each
// node's key slots none of its sealed values reveals them.
func TestMixnetStorageForgetsDeliveredMessages(t *testing.T) {
	sink := peers.SmtpSink(t)
	m := startMixnet(t, 5, sink.Addr, nil)
	m.waitHealthy(t)
	var gone []string
	sizes := []int{1 << 10, 200 << 10, 1 << 10, 200 << 10}
	for i, size := range sizes {
		s := newSecret(fmt.Sprintf("mix%d-", i), size)
		s.send(t, m.smtp[i%2])
		gone = append(gone, s.tokens()...)
	}
	if !sink.WaitCount(len(sizes), 120*time.Second) {
		t.Fatalf("smtp-sink got %d messages, want %d", sink.Count(), len(sizes))
	}
	time.Sleep(forgetWait)
	for i, n := range m.nodes {
		r := assertForgotten(t, fmt.Sprintf("node%d", i+1), n.dataDir, gone)
		if r.Sealed == 0 {
			t.Errorf("node%d: no sealed value found on disk: the scan does not see the queue", i+1)
		}
	}
}
