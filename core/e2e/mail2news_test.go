package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/mixmta/mixmta/internal/peers"
)

// mail2newsNode runs configs/mail2news.yaml with short delays, posting to
// inn.
func mail2newsNode(t *testing.T, inn *peers.INNPeer) *node {
	t.Helper()
	addr := freeAddr(t)
	cfg, data := profile(t, "configs/mail2news.yaml", map[string]any{
		"listeners.0.address":                    addr,
		"scheduler.window":                       "200ms",
		"pipeline.delay.config.mean":             "100ms",
		"pipeline.delay.config.min":              "0s",
		"pipeline.delay.config.max":              "1s",
		"pipeline.news.config.servers.0.address": inn.Addr,
		"listeners.0.relay.rate_limit.burst":     100,
	})
	return startNode(t, cfg, data, addr)
}

// waitGroupCount waits until INN reports want articles in group and
// fails if it reports more.
func waitGroupCount(t *testing.T, inn *peers.INNPeer, group string, want int, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		n, err := inn.GroupCount(group, "", "")
		if err != nil {
			t.Fatalf("GROUP %s: %v", group, err)
		}
		if n >= want {
			if n > want {
				t.Fatalf("%s holds %d articles, want %d", group, n, want)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s holds %d articles after %s, want %d", group, n, timeout, want)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestMail2NewsProfilePostsSanitizedArticleIntoINN: swaks into
// configs/mail2news.yaml; the article appears in a real INN with every
// mandatory field, no tracing field, no sender value, dot lines intact.
func TestMail2NewsProfilePostsSanitizedArticleIntoINN(t *testing.T) {
	inn := peers.INN(t)
	n := mail2newsNode(t, inn)
	body := ".leading dot\n..two\n.\nlast line LEAK-BODYOK\n"
	code, out := peers.Swaks(t, "--silent", "2", "--server", n.addr,
		"--from", "alice-LEAK-SENDER@example.org", "--to", "mail2news@news-gateway.invalid",
		"--helo", "laptop-LEAK-HELO.example.org",
		"--header", "From: Alice LEAK-FROM <alice-LEAK-FROM@example.org>",
		"--header", "Newsgroups: alt.test",
		"--header", "Subject: hello usenet",
		"--header", "Message-ID: <LEAK-MSGID@laptop.example.org>",
		"--header", "X-Mailer: LEAK-MAILER",
		"--header", "NNTP-Posting-Host: LEAK-HOST",
		"--body", body)
	if code != 0 {
		t.Fatalf("swaks exit %d\n%s", code, out)
	}
	waitGroupCount(t, inn, "alt.test", 1, 30*time.Second)
	art := readGroupArticle(t, inn, "alt.test", 1)
	head, gotBody, ok := strings.Cut(art, "\r\n\r\n")
	if !ok {
		t.Fatalf("no empty line in the article:\n%s", art)
	}
	// swaks ends the body with an extra empty line; the lines are the point.
	if want := strings.ReplaceAll(body, "\n", "\r\n"); strings.TrimRight(gotBody, "\r\n") != strings.TrimRight(want, "\r\n") {
		t.Errorf("body = %q, want %q", gotBody, want)
	}
	lower := "\r\n" + strings.ToLower(head)
	for _, f := range []string{"date", "from", "message-id", "newsgroups", "path", "subject"} {
		if !strings.Contains(lower, "\r\n"+f+": ") {
			t.Errorf("mandatory field %s missing:\n%s", f, head)
		}
	}
	for _, f := range []string{"received", "to", "x-mailer", "nntp-posting-host", "return-path"} {
		if strings.Contains(lower, "\r\n"+f+":") {
			t.Errorf("tracing field %s in the article:\n%s", f, head)
		}
	}
	if i := strings.Index(head, "LEAK"); i >= 0 {
		t.Errorf("a sender value reached the article header at %q:\n%s", head[i:min(len(head), i+30)], head)
	}
	if !strings.Contains(head, "news-gateway.invalid!not-for-mail") || !strings.Contains(head, "Subject: hello usenet") {
		t.Errorf("Path or Subject wrong:\n%s", head)
	}
	if strings.Contains(n.log(), "LEAK") || strings.Contains(n.log(), "alt.test") {
		t.Errorf("an address, group or content in the log:\n%s", n.log())
	}
}

// readGroupArticle returns article number num of group (INN numbers from 1).
func readGroupArticle(t *testing.T, inn *peers.INNPeer, group string, num int) string {
	t.Helper()
	a, found, err := inn.ArticleByNumber(group, num, "", "")
	if err != nil || !found {
		t.Fatalf("article %d of %s: found %v, %v", num, group, found, err)
	}
	return a
}

// TestMail2NewsProfileRefusalsHaveReasons: each refusal reaches the
// client at SMTP level (size) or the log at queue level with its reason,
// and nothing is posted.
func TestMail2NewsProfileRefusalsHaveReasons(t *testing.T) {
	inn := peers.INN(t)
	n := mail2newsNode(t, inn)
	today := time.Now().UTC().Format("20060102")
	old := time.Now().UTC().Add(-5 * 24 * time.Hour).Format("20060102")
	cases := []struct {
		name    string
		to      string
		headers []string
		reason  string
	}{
		{"control", "mail2news@news-gateway.invalid", []string{"Newsgroups: alt.test", "Control: cancel <x@y>"}, "Control header refused"},
		{"approved", "mail2news@news-gateway.invalid", []string{"Newsgroups: alt.test", "Approved: mod@example.org"}, "Approved header refused"},
		{"cancel", "mail2news@news-gateway.invalid", []string{"Newsgroups: alt.test", "Cancel: <x@y>"}, "Cancel header refused"},
		{"supersedes", "mail2news@news-gateway.invalid", []string{"Newsgroups: alt.test", "Supersedes: <x@y>"}, "Supersedes header refused"},
		{"also-control", "mail2news@news-gateway.invalid", []string{"Newsgroups: alt.test", "Also-Control: newgroup x"}, "Also-Control header refused"},
		{"no group", "mail2news@news-gateway.invalid", nil, "no newsgroup"},
		{"malformed group", "mail2news@news-gateway.invalid", []string{"Newsgroups: Alt Test"}, "is malformed"},
		{"too many groups", "mail2news@news-gateway.invalid", []string{"Newsgroups: alt.test,local.test,a.b,c.d"}, "crossposted to 4 newsgroups; the limit is 3"},
		{"stale address", "mail2news-" + old + "-alt.test@news-gateway.invalid", nil, "outside the accepted window"},
		{"bad address", "mail2news-" + today + "@news-gateway.invalid", nil, "not of the form"},
		{"not carried (441)", "mail2news@news-gateway.invalid", []string{"Newsgroups: no.such.group"}, "article refused: 441"},
	}
	for i, c := range cases {
		args := []string{"--silent", "2", "--server", n.addr, "--from", "a@example.org", "--to", c.to,
			"--header", fmt.Sprintf("Subject: refusal %d", i), "--body", "b"}
		for _, h := range c.headers {
			args = append(args, "--header", h)
		}
		if code, out := peers.Swaks(t, args...); code != 0 {
			t.Fatalf("%s: swaks exit %d\n%s", c.name, code, out)
		}
	}
	// Oversize is refused at SMTP level by the listener's limit.
	big := filepath.Join(t.TempDir(), "big.txt")
	if err := os.WriteFile(big, []byte(strings.Repeat("0123456789abcdef\n", 14000)), 0o644); err != nil {
		t.Fatal(err)
	}
	code, out := peers.Swaks(t, "--server", n.addr, "--from", "a@example.org", "--to", "mail2news@news-gateway.invalid",
		"--header", "Newsgroups: alt.test", "--body", "@"+big)
	if code == 0 || !strings.Contains(out, "552") {
		t.Errorf("oversize: swaks exit %d, want 552:\n%s", code, tailLines(out, 5))
	}
	deadline := time.Now().Add(60 * time.Second)
	for _, c := range cases {
		re := regexp.MustCompile(`\[MAIL2NEWS\] refused.*` + regexp.QuoteMeta(c.reason))
		for !re.MatchString(n.log()) {
			if time.Now().After(deadline) {
				t.Fatalf("%s: no refusal with %q in the log:\n%s", c.name, c.reason, tailLines(n.log(), 40))
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	// One good message after the refusals: it is the only article.
	if code, out := peers.Swaks(t, "--silent", "2", "--server", n.addr, "--from", "a@example.org",
		"--to", "mail2news-"+today+"-alt.test=local.test@news-gateway.invalid", "--header", "Subject: good", "--body", "b"); code != 0 {
		t.Fatalf("swaks exit %d\n%s", code, out)
	}
	waitGroupCount(t, inn, "local.test", 1, 30*time.Second)
	waitGroupCount(t, inn, "alt.test", 1, 5*time.Second)
}
