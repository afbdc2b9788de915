package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mixmta/mixmta/core/internal/config"
	"github.com/mixmta/mixmta/internal/peers"
)

// startNewsMixnet makes a 5-node mixnet from configs/local-mixnet.yaml:
// nodes 1-4 are exits delivering mail to relayHost, node 5 is not an exit
// but has the mail2news capability and posts to the news server innAddr.
// Node 5's descriptor is exported again after its config changed and
// replaces the one `mixnet init` wrote, as an operator would do.
func startNewsMixnet(t *testing.T, relayHost, innAddr string) *mixnet {
	t.Helper()
	const n = 5
	dir := t.TempDir()
	smtpPort, mixPort := freeRange(t, n), freeRange(t, n)
	profile, err := os.ReadFile(filepath.Join(repoRoot, "configs/local-mixnet.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	out, err := config.Patch(profile, map[string]any{
		"plugin_dir":              binDir,
		"log.stats_interval":      "1s",
		"pipeline.sphinx.config":  map[string]any{"hops": 3, "mail2news_local_part": "mail2news"},
		"pipeline.deliver.plugin": "onionmx",
		"pipeline.deliver.config": map[string]any{"relay_host": relayHost, "tls": "none"},
		"pipeline.delay.config":   map[string]any{"mean": "50ms", "max": "500ms"},
		"mix.hop_delay.config":    map[string]any{"mean": "50ms", "max": "500ms"},
		"mix.probe_interval":      "1s",
	})
	if err != nil {
		t.Fatal(err)
	}
	prof := filepath.Join(dir, "profile.yaml")
	os.WriteFile(prof, out, 0o600)
	if b, err := mixmtaCommand(t, "mixnet", "init", "--dir", dir, "--profile", prof, "--nodes", strconv.Itoa(n),
		"--smtp-port", strconv.Itoa(smtpPort), "--mix-port", strconv.Itoa(mixPort)).CombinedOutput(); err != nil {
		t.Fatalf("mixnet init: %v\n%s", err, b)
	}
	news := filepath.Join(dir, "node5", "mixmta.yaml")
	b, _ := os.ReadFile(news)
	b, err = config.Patch(b, map[string]any{
		"mix.exit":                false,
		"mix.capabilities":        []any{"mail2news"},
		"pipeline.deliver.plugin": "mail2news",
		"pipeline.deliver.config": map[string]any{"servers": []any{map[string]any{"address": innAddr}}, "path_host": "news-exit.invalid"},
	})
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(news, b, 0o600)
	desc, err := mixmtaCommand(t, "node", "export", "-c", news).Output()
	if err != nil {
		t.Fatalf("node export: %v", err)
	}
	descFile := filepath.Join(dir, "node5.json")
	os.WriteFile(descFile, desc, 0o600)
	if b, err := mixmtaCommand(t, "nodes", "add", "-c", news, descFile).CombinedOutput(); err != nil {
		t.Fatalf("nodes add: %v\n%s", err, b)
	}
	m := &mixnet{dir: dir}
	for i := 1; i <= n; i++ {
		cfg := filepath.Join(dir, fmt.Sprintf("node%d", i), "mixmta.yaml")
		addr := fmt.Sprintf("127.0.0.1:%d", smtpPort+i-1)
		m.smtp = append(m.smtp, addr)
		m.nodes = append(m.nodes, startNode(t, cfg, filepath.Join(filepath.Dir(cfg), "data"), addr))
	}
	return m
}

// TestMixnetPostsMail2NewsAtCapableExit: through a 5-node mixnet of real
// processes, mail for mail2news addresses submitted at node 1 is posted
// into a real INN by node 5, the only node with the mail2news capability
// (and not an exit for ordinary mail), while ordinary mail reaches Postfix
// through the other exits; a message for both a mail2news address and a
// mail recipient is posted by node 5 and delivered through an exit. The
// articles carry no value from the sender, and no node logs one.
func TestMixnetPostsMail2NewsAtCapableExit(t *testing.T) {
	inn := peers.INN(t)
	pf := peers.Postfix(t)
	m := startNewsMixnet(t, pf.Addr, inn.Addr)
	m.waitHealthy(t)

	today := time.Now().UTC().Format("20060102")
	news := []struct{ to, group, header string }{
		{"mail2news@news.invalid", "alt.test", "Newsgroups: alt.test\r\n"},
		{"mail2news-" + today + "-local.test@news.invalid", "local.test", ""},
		{"mail2news@news.invalid", "alt.test", "Newsgroups: alt.test\r\n"},
		{"mail2news-" + today + "-local.test@news.invalid", "local.test", ""},
	}
	for i, a := range news {
		msg := fmt.Sprintf("From: Alice LEAK-FROM%d <alice@laptop-LEAK.example.org>\r\n%sSubject: mixnet post %d\r\n"+
			"Message-ID: <LEAK-MSGID%d@laptop.example.org>\r\nX-Mailer: LEAK-MAILER\r\nReceived: from LEAK-HOST\r\n\r\n.dot line\r\nbody %d\r\n", i, a.header, i, i, i)
		if err := sendRaw(m.smtp[0], fmt.Sprintf("alice-LEAK-ENV%d@example.org", i), []string{a.to}, []byte(msg), false); err != nil {
			t.Fatalf("mail2news message %d: %v", i, err)
		}
	}
	if err := sendRaw(m.smtp[0], "bob-LEAK-ENV@example.org", []string{"carol@example.net"},
		[]byte("From: Bob <bob@example.org>\r\nSubject: ordinary\r\n\r\nordinary mail\r\n"), false); err != nil {
		t.Fatal(err)
	}
	// One message for both kinds: no node has both capabilities, so its
	// news recipient's copy is posted by node 5 and its mail recipient's
	// goes to an exit for mail.
	if err := sendRaw(m.smtp[0], "alice-LEAK-ENV-MIXED@example.org", []string{"mail2news@news.invalid", "dave@example.net"},
		[]byte("From: Alice <alice@laptop-LEAK.example.org>\r\nNewsgroups: alt.test\r\nSubject: mixed\r\n\r\n.dot line\r\nbody mixed\r\n"), false); err != nil {
		t.Fatal(err)
	}

	waitGroupCount(t, inn, "alt.test", 3, 120*time.Second)
	waitGroupCount(t, inn, "local.test", 2, 120*time.Second)
	for group, count := range map[string]int{"alt.test": 3, "local.test": 2} {
		for num := 1; num <= count; num++ {
			art := readGroupArticle(t, inn, group, num)
			head, body, _ := strings.Cut(art, "\r\n\r\n")
			if i := strings.Index(art, "LEAK"); i >= 0 {
				t.Errorf("%s #%d carries a sender value at %q:\n%s", group, num, art[i:min(len(art), i+30)], art)
			}
			if !strings.Contains(head, "news-exit.invalid!not-for-mail") || !strings.Contains(head, "\r\nNewsgroups: "+group) {
				t.Errorf("%s #%d: Path or Newsgroups wrong:\n%s", group, num, head)
			}
			if !strings.HasPrefix(body, ".dot line\r\nbody ") {
				t.Errorf("%s #%d: body %q", group, num, body)
			}
		}
	}
	// Ordinary mail still goes to an exit for mail, never to node 5.
	files := pf.WaitMessages(t, 2, 120*time.Second)
	if len(files) != 2 {
		t.Fatalf("Postfix got %d messages, want 2", len(files))
	}
	// The stats line comes once a second: wait for the one after the last
	// assembly.
	v := 0
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		if v = statValue(lastStats(m.nodes[4].log()), "assembled"); v >= len(news)+1 {
			break
		}
	}
	if v != len(news)+1 {
		t.Errorf("node5 assembled %d messages, want the %d for mail2news only", v, len(news)+1)
	}
	for i, n := range m.nodes {
		log := n.log()
		for _, s := range []string{"LEAK", "alice", "mail2news-" + today, "local.test", "carol", "dave"} {
			if strings.Contains(log, s) {
				t.Errorf("node%d's log contains %q", i+1, s)
			}
		}
	}
}
