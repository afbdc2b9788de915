package e2e

import (
	"bytes"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"go.yaml.in/yaml/v3"

	"github.com/mixmta/mixmta/internal/peers"
)

var buildRecorder sync.Once

// recorderPlugin builds the test-only recorder plugin (testdata/recorder)
// into the package's plugin directory.
func recorderPlugin(t testing.TB) {
	t.Helper()
	var err error
	var out []byte
	buildRecorder.Do(func() {
		cmd := exec.Command("go", "build", "-o", filepath.Join(binDir, "recorder"), "./core/e2e/testdata/recorder")
		cmd.Dir = repoRoot
		out, err = cmd.CombinedOutput()
	})
	if err != nil {
		t.Fatalf("building the recorder plugin: %v\n%s", err, out)
	}
}

// profilePipeline returns the pipeline of a profile in configs/ as a list
// of stage mappings, for a test to rearrange.
func profilePipeline(t testing.TB, name string) []map[string]any {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot, "configs", name))
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Pipeline []map[string]any `yaml:"pipeline"`
	}
	if err := yaml.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
	return doc.Pipeline
}

// withRecorders returns pipeline with a recorder stage first ("record-in":
// what the node's SMTP server hands its pipeline) and one right after the
// packet router ("record-exit": what a reassembled message at an exit is
// given). Each appends to DIR/<stage>-<mixmta pid>.log.
func withRecorders(t testing.TB, pipeline []map[string]any, dir, router string) []any {
	t.Helper()
	rec := func(name string) map[string]any {
		return map[string]any{"name": name, "plugin": "recorder", "config": map[string]any{"path": filepath.Join(dir, name)}}
	}
	out := []any{rec("record-in")}
	found := false
	for _, st := range pipeline {
		out = append(out, st)
		if st["name"] == router {
			out = append(out, rec("record-exit"))
			found = true
		}
	}
	if !found {
		t.Fatalf("the profile has no stage %q", router)
	}
	return out
}

// sendWithHelo sends one message, greeting with helo.
func sendWithHelo(addr, helo, from string, to []string, raw []byte) error {
	c, err := smtp.Dial(addr)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.Hello(helo); err != nil {
		return err
	}
	if err := c.SendMail(from, to, bytes.NewReader(raw)); err != nil {
		return err
	}
	return c.Quit()
}

// filesContaining returns every regular file under root that contains one
// of markers, with the markers it holds.
func filesContaining(t testing.TB, root string, markers []string) map[string][]string {
	t.Helper()
	hits := map[string][]string{}
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			if os.IsNotExist(err) { // badger removed it while we walked
				return nil
			}
			return err
		}
		if !d.Type().IsRegular() {
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			if os.IsNotExist(err) {
				return nil
			}
			return err
		}
		for _, m := range markers {
			if bytes.Contains(b, []byte(m)) {
				hits[path] = append(hits[path], m)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return hits
}

// TestExitNeverLearnsTheSender: messages whose MAIL FROM, HELO and every
// sender-identifying header field carry unique markers enter a 5-node
// mixnet made from configs/local-mixnet.yaml's own pipeline. The entry's
// pipeline is given every marker (recorded: the positive control), yet no
// file anywhere under any other node's data directory, nothing any other
// node's exit stages are given (recorded right after the router), and
// nothing delivered to Postfix contains any of them. On a pipeline that
// sanitizes only at the exit (the order before this test), the exit's
// recorder and queue files hold MAIL FROM, From, Received and the rest.
func TestExitNeverLearnsTheSender(t *testing.T) {
	recorderPlugin(t)
	pf := peers.Postfix(t)
	recDir := t.TempDir()
	stages := withRecorders(t, profilePipeline(t, "local-mixnet.yaml"), recDir, "sphinx")
	// The mixnet harness points the deliver stage at Postfix and shortens
	// the delays; keep that whatever order it applies its patches in.
	for _, st := range stages {
		st := st.(map[string]any)
		switch st["name"] {
		case "deliver":
			st["plugin"] = "onionmx"
			st["config"] = map[string]any{"relay_host": pf.Addr, "tls": "none"}
		case "delay":
			st["config"] = map[string]any{"mean": "50ms", "max": "500ms"}
		}
	}
	m := startMixnet(t, 5, pf.Addr, map[string]any{"pipeline": stages})
	m.waitHealthy(t)

	const msgs = 4
	var markers, heloMarkers []string
	for i := 0; i < msgs; i++ {
		tok := token()
		mk := func(s string) string {
			v := fmt.Sprintf("leak%s%d%s", s, i, tok)
			markers = append(markers, v)
			return v
		}
		// The core writes no Received field, so the HELO name reaches no
		// stage; it is looked for everywhere all the same.
		helo := fmt.Sprintf("leakhelo%d%s.example.org", i, tok)
		heloMarkers = append(heloMarkers, helo)
		mailFrom := mk("mailfrom") + "@example.org"
		hdr := strings.Join([]string{
			"Received: from " + mk("rcvdhost") + ".example.org ([192.0.2.77]) by mx." + mk("rcvdby") + ".example",
			"From: " + mk("name") + " <" + mk("from") + "@example.org>",
			"Sender: " + mk("sender") + "@example.org",
			"Reply-To: " + mk("replyto") + "@example.org",
			"Cc: " + mk("cc") + "@example.org",
			"Date: Tue, 1 Dec 2026 10:00:00 +0937 (" + mk("zone") + ")",
			"Message-ID: <" + mk("msgid") + "@laptop.example.org>",
			"X-Mailer: " + mk("mailer"),
			"User-Agent: " + mk("useragent"),
			"Organization: " + mk("org"),
			"X-Originating-IP: [" + mk("ip") + "]",
			"Return-Path: <" + mk("returnpath") + "@example.org>",
			"DKIM-Signature: v=1; d=example.org; s=" + mk("dkim"),
			"To: <anon" + fmt.Sprint(i) + "@example.net>",
			"Subject: hello " + fmt.Sprint(i),
		}, "\r\n") + "\r\n\r\nthe body " + tok + "\r\n"
		if err := sendWithHelo(m.smtp[0], helo, mailFrom, []string{fmt.Sprintf("anon%d@example.net", i)}, []byte(hdr)); err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
	}
	files := pf.WaitMessages(t, msgs, 90*time.Second)
	if len(files) != msgs {
		t.Fatalf("Postfix got %d messages, want %d", len(files), msgs)
	}
	// Let every exit finish (delete its items) before looking at its disk.
	time.Sleep(2 * time.Second)

	entryPID := m.nodes[0].pid()
	recorded := func(stage string, pid int) []byte {
		b, _ := os.ReadFile(filepath.Join(recDir, fmt.Sprintf("%s-%d.log", stage, pid)))
		return b
	}
	// Positive control: the entry's pipeline was given every marker, and
	// the file scan finds them there.
	entryIn := filepath.Join(recDir, fmt.Sprintf("record-in-%d.log", entryPID))
	if got := filesContaining(t, recDir, markers)[entryIn]; len(got) != len(markers) {
		t.Fatalf("the entry recorded %d of %d markers; the test cannot see a leak", len(got), len(markers))
	}
	markers = append(markers, heloMarkers...)
	exitsGiven := 0
	for i, n := range m.nodes[1:] {
		name := fmt.Sprintf("node%d", i+2)
		for path, got := range filesContaining(t, n.dataDir, markers) {
			t.Errorf("%s: %s holds %v", name, path, got)
		}
		in := recorded("record-exit", n.pid())
		exitsGiven += bytes.Count(in, []byte("MAIL FROM:<"))
		for _, mk := range markers {
			if bytes.Contains(in, []byte(mk)) {
				t.Errorf("%s's exit stages were given %q", name, mk)
			}
		}
		if all, null := bytes.Count(in, []byte("MAIL FROM:<")), bytes.Count(in, []byte("MAIL FROM:<> ")); all != null {
			t.Errorf("%s's exit stages were given %d messages with a sender other than <>", name, all-null)
		}
	}
	if exitsGiven != msgs {
		t.Errorf("exit stages were given %d messages, want %d", exitsGiven, msgs)
	}
	if b := recorded("record-exit", entryPID); len(b) != 0 {
		t.Errorf("the entry was an exit for its own messages")
	}
	for _, f := range files {
		raw, _ := os.ReadFile(f)
		for _, mk := range markers {
			if bytes.Contains(raw, []byte(mk)) {
				t.Errorf("delivered %s contains %q", filepath.Base(f), mk)
			}
		}
	}
}

// TestCheckConfigRefusesPacketRouterBeforeSanitizing: `mixmta
// check-config` refuses configs/local-mixnet.yaml with its entry-side
// sanitize stage moved after the router (the order that let exits learn
// senders), naming the router's FILE:LINE; the profile as shipped passes
// the same check.
func TestCheckConfigRefusesPacketRouterBeforeSanitizing(t *testing.T) {
	var moved []any
	var entry map[string]any
	for _, st := range profilePipeline(t, "local-mixnet.yaml") {
		if st["name"] == "sanitize-entry" {
			entry = st
			continue
		}
		moved = append(moved, st)
		if st["name"] == "sphinx" && entry != nil {
			moved = append(moved, entry)
		}
	}
	if entry == nil {
		t.Fatal("configs/local-mixnet.yaml has no sanitize-entry stage")
	}
	cfg, _ := profile(t, "configs/local-mixnet.yaml", map[string]any{"pipeline": moved})
	out, err := mixmta(t, "check-config", "-c", cfg)
	if err == nil {
		t.Fatalf("check-config accepted a packet router with no sanitizing stage before it:\n%s", out)
	}
	// The router's stage starts at the "- " of its list item.
	b, _ := os.ReadFile(cfg)
	lines := strings.Split(string(b), "\n")
	line := 0
	for i, l := range lines {
		if strings.Contains(l, "name: sphinx") {
			for line = i + 1; line > 1 && !strings.HasPrefix(strings.TrimSpace(lines[line-1]), "- "); line-- {
			}
		}
	}
	if want := fmt.Sprintf("%s:%d:", cfg, line); !strings.Contains(out, want) || !strings.Contains(out, "sanitize") {
		t.Fatalf("check-config said:\n%s\nwant an error at %s about sanitizing", out, want)
	}
	// The shipped order passes the pipeline check (it may still miss this
	// test's keys and nodes file, which come later).
	cfg, _ = profile(t, "configs/local-mixnet.yaml", nil)
	if out, _ := mixmta(t, "check-config", "-c", cfg); strings.Contains(out, "sanitize") {
		t.Fatalf("check-config refused the shipped profile:\n%s", out)
	}
}
