package e2e

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/mixmta/mixmta/internal/peers"
)

// relayNode starts configs/relay.yaml with test ports and short delays,
// delivering to relayHost.
func relayNode(t *testing.T, relayHost string, extra map[string]any) *node {
	t.Helper()
	addr := freeAddr(t)
	patches := map[string]any{
		"listeners.0.address":                addr,
		"scheduler.window":                   "200ms",
		"pipeline.delay.config.mean":         "300ms",
		"pipeline.delay.config.min":          "0s",
		"pipeline.delay.config.max":          "2s",
		"pipeline.deliver.config.relay_host": relayHost,
		"log.stats_interval":                 "2s",
	}
	for k, v := range extra {
		patches[k] = v
	}
	cfg, data := profile(t, "configs/relay.yaml", patches)
	return startNode(t, cfg, data, addr)
}

// The headers a delivered message may carry: the sanitizer's allow list,
// the fields it writes, and what the receiving Postfix adds.
var allowedDelivered = regexp.MustCompile(`(?i)^(to|subject|newsgroups|references|in-reply-to|mime-version|content-type|content-transfer-encoding|from|message-id|date|return-path|delivered-to|x-original-to|received)$`)

type delivered struct {
	path   string
	header map[string][]string // lower-case name -> raw values
	names  []string
	raw    []byte
	body   []byte
}

func parseDelivered(t *testing.T, path string) delivered {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	d := delivered{path: path, raw: raw, header: map[string][]string{}}
	raw = bytes.ReplaceAll(raw, []byte("\r\n"), []byte("\n"))
	h, b, ok := bytes.Cut(raw, []byte("\n\n"))
	if !ok {
		h, b = raw, nil
	}
	d.body = b
	var last string
	for _, line := range strings.Split(string(h), "\n") {
		if line == "" {
			continue
		}
		if line[0] == ' ' || line[0] == '\t' {
			if last != "" {
				vs := d.header[last]
				vs[len(vs)-1] += "\n" + line
			}
			continue
		}
		name, val, _ := strings.Cut(line, ":")
		last = strings.ToLower(name)
		d.header[last] = append(d.header[last], val)
		d.names = append(d.names, name)
	}
	return d
}

func token() string {
	b := make([]byte, 8)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// TestRelayProfileSanitizesAndDelivers: swaks and smtp-source send into
// mixmta running configs/relay.yaml, which relays through onionmx to a
// real Postfix with Maildir. The mail arrives sanitized, with the body
// byte-identical and the envelope sender rewritten to <>.
func TestRelayProfileSanitizesAndDelivers(t *testing.T) {
	pf := peers.Postfix(t)
	n := relayNode(t, pf.Addr, nil)

	tok := token()
	body := "Hello through the relay.\r\n.a line starting with a dot\r\nbody-token " + tok + "\r\n"
	code, out := peers.Swaks(t, "--silent", "2", "--server", n.addr, "--from", "alice-LEAK-SWAKSFROM@example.org",
		"--to", "bob@example.net", "--header", "Subject: relay test "+tok,
		"--header", "X-Secret: LEAK-SWAKSX", "--header", "Reply-To: LEAK-SWAKSREPLY@example.org",
		"--body", body)
	if code != 0 {
		t.Fatalf("swaks exit %d:\n%s", code, out)
	}
	if _, err := peers.SmtpSource(t, n.addr, peers.SourceOptions{Sessions: 5, Count: 20, Size: 2048,
		From: "source-LEAK-SRCFROM@example.org", To: "carol@example.net"}); err != nil {
		t.Fatal(err)
	}
	files := pf.WaitMessages(t, 21, 60*time.Second)
	if len(files) != 21 {
		t.Fatalf("Postfix got %d messages, want 21", len(files))
	}
	var swaksMsg *delivered
	for _, f := range files {
		d := parseDelivered(t, f)
		checkSanitized(t, d)
		if rp := strings.TrimSpace(strings.Join(d.header["return-path"], "")); rp != "<>" {
			t.Errorf("%s: Return-Path %q: envelope sender not rewritten to <>", f, rp)
		}
		if strings.Contains(strings.Join(d.header["subject"], ""), tok) {
			swaksMsg = &d
		}
	}
	if swaksMsg == nil {
		t.Fatal("the swaks message did not arrive")
	}
	// swaks appends empty lines of its own after --body; the corpus test
	// checks exact bytes with a client that sends exactly what it is given.
	want := strings.ReplaceAll(body, "\r\n", "\n")
	if strings.TrimRight(string(swaksMsg.body), "\n") != strings.TrimRight(want, "\n") {
		t.Fatalf("body changed:\nwant %q\ngot  %q", want, swaksMsg.body)
	}
	// No address or subject in the daemon's log at the default level.
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(n.log(), "[STATS]") && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	log := n.log()
	for _, s := range []string{"alice", "bob@", "carol@", "example.net", tok} {
		if strings.Contains(log, s) {
			t.Errorf("daemon log at info level contains %q", s)
		}
	}
	if !strings.Contains(log, "[STATS]") {
		t.Errorf("no [STATS] line in the log")
	}
}

var leakMarker = regexp.MustCompile(`LEAK-[A-Z0-9]+`)

// checkSanitized asserts a delivered message has only allowed headers, the
// sanitizer's From and Message-ID, and no leak marker anywhere.
func checkSanitized(t *testing.T, d delivered) {
	t.Helper()
	for _, name := range d.names {
		if !allowedDelivered.MatchString(name) {
			t.Errorf("%s: header %q survived sanitizing", filepath.Base(d.path), name)
		}
	}
	if from := d.header["from"]; len(from) != 1 || !strings.Contains(from[0], "nobody@remailer.invalid") {
		t.Errorf("%s: From = %q, want the anonymous address", filepath.Base(d.path), from)
	}
	if mid := d.header["message-id"]; len(mid) != 1 || !strings.Contains(mid[0], "@remailer.invalid>") {
		t.Errorf("%s: Message-ID = %q, want one at remailer.invalid", filepath.Base(d.path), mid)
	}
	if len(d.header["date"]) != 1 {
		t.Errorf("%s: want exactly one Date, got %q", filepath.Base(d.path), d.header["date"])
	}
	if m := leakMarker.FindAll(d.raw, -1); len(m) > 0 {
		t.Errorf("%s: leaked %q", filepath.Base(d.path), m)
	}
}

// TestCorpusRelayedBodiesIdenticalNoLeaks relays every message of the
// corpus (plugins/sanitize/testdata/corpus) through relay.yaml to Postfix:
// every body byte-identical (Postfix stores LF line endings, so CRLF is
// compared as LF), no header outside the allow list, no leak marker (text
// from From, Sender, Reply-To, Received, X-* of the original) anywhere.
func TestCorpusRelayedBodiesIdenticalNoLeaks(t *testing.T) {
	corpus, _ := filepath.Glob(filepath.Join(repoRoot, "plugins/sanitize/testdata/corpus/*.eml"))
	if len(corpus) < 30 {
		t.Fatalf("corpus has %d messages, want >= 30", len(corpus))
	}
	pf := peers.Postfix(t)
	n := relayNode(t, pf.Addr, nil)

	wantBody := map[string][]byte{}
	for i, f := range corpus {
		raw, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		rcpt := fmt.Sprintf("c%02d@example.net", i)
		if err := sendRaw(n.addr, "sender-LEAK-ENVFROM@example.org", []string{rcpt}, raw, true); err != nil {
			t.Fatalf("%s: %v", filepath.Base(f), err)
		}
		_, body := splitRaw(raw)
		b := bytes.ReplaceAll(body, []byte("\r\n"), []byte("\n"))
		if len(b) > 0 && b[len(b)-1] != '\n' {
			b = append(b, '\n') // SMTP DATA always ends the last line
		}
		wantBody[rcpt] = b
		if !bytes.Contains(raw, []byte("LEAK-")) {
			t.Errorf("%s: corpus message carries no leak marker to check", filepath.Base(f))
		}
	}
	files := pf.WaitMessages(t, len(corpus), 90*time.Second)
	if len(files) != len(corpus) {
		t.Fatalf("Postfix got %d messages, want %d", len(files), len(corpus))
	}
	got := map[string]bool{}
	for _, f := range files {
		d := parseDelivered(t, f)
		rcpt := strings.Trim(strings.TrimSpace(strings.Join(d.header["delivered-to"], "")), "<>")
		want, ok := wantBody[rcpt]
		if !ok {
			t.Errorf("%s: unexpected Delivered-To %q", f, rcpt)
			continue
		}
		got[rcpt] = true
		checkSanitized(t, d)
		if !bytes.Equal(d.body, want) {
			t.Errorf("%s: body changed (%d bytes, want %d)", rcpt, len(d.body), len(want))
		}
	}
	if len(got) != len(corpus) {
		var miss []string
		for r := range wantBody {
			if !got[r] {
				miss = append(miss, r)
			}
		}
		sort.Strings(miss)
		t.Fatalf("missing deliveries: %v", miss)
	}
}

func splitRaw(raw []byte) (header, body []byte) {
	if i := bytes.Index(raw, []byte("\r\n\r\n")); i >= 0 {
		return raw[:i+4], raw[i+4:]
	}
	return raw, nil
}

// sendRaw sends one message with a go-smtp client (SMTPUTF8 and 8BITMIME
// when utf8 is set).
func sendRaw(addr, from string, to []string, raw []byte, utf8 bool) error {
	c, err := smtp.Dial(addr)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.Hello("client.example.org"); err != nil {
		return err
	}
	opts := &smtp.MailOptions{}
	if utf8 {
		opts.UTF8, opts.Body = true, smtp.Body8BitMIME
	}
	if err := c.Mail(from, opts); err != nil {
		return err
	}
	for _, r := range to {
		if err := c.Rcpt(r, nil); err != nil {
			return err
		}
	}
	w, err := c.Data()
	if err != nil {
		return err
	}
	if _, err := w.Write(raw); err != nil {
		return err
	}
	if err := w.Close(); err != nil {
		return err
	}
	return c.Quit()
}
