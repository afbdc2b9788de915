package main

// End-to-end tests: the plugin binary runs under the real plugin host
// (sdk/plugintest) and posts into a real INN (temp-dir innd), or forwards
// to a real Postfix.

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mixmta/mixmta/internal/peers"
	"github.com/mixmta/mixmta/sdk"
	"github.com/mixmta/mixmta/sdk/plugintest"
)

var (
	buildOnce sync.Once
	builtDir  string
	buildErr  error
)

// pluginBinary builds the plugin once per test run.
func pluginBinary(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "mail2news-test-")
		if err != nil {
			buildErr = err
			return
		}
		builtDir = dir
		out, err := exec.Command("go", "build", "-o", filepath.Join(dir, "mail2news"), ".").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return filepath.Join(builtDir, "mail2news")
}

func TestMain(m *testing.M) {
	code := m.Run()
	if builtDir != "" {
		os.RemoveAll(builtDir)
	}
	os.Exit(code)
}

// startPlugin launches the plugin with cfg (timeouts shortened).
func startPlugin(t testing.TB, cfg map[string]any) *plugintest.Plugin {
	t.Helper()
	cfg["connect_timeout"] = "5s"
	cfg["command_timeout"] = "10s"
	b, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return plugintest.Start(t, pluginBinary(t), string(b))
}

func deliver(t testing.TB, p *plugintest.Plugin, m *sdk.Message) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	res, err := p.Deliver(ctx, m)
	if err != nil {
		return err
	}
	if len(res) != len(m.Envelope.RcptTo) {
		t.Fatalf("%d results for %d recipients", len(res), len(m.Envelope.RcptTo))
	}
	for _, r := range res {
		if r.Err != nil {
			return r.Err
		}
	}
	return nil
}

// newsMsg is a message to the gateway with a fixed Message-ID.
func newsMsg(id, header, body string) *sdk.Message {
	m := msg("Message-ID: <"+id+"@test.invalid>\n"+header, body)
	m.ReceivedAt = time.Now()
	return m
}

func TestPostedArticleReadBackFromINN(t *testing.T) {
	inn := peers.INN(t)
	p := startPlugin(t, map[string]any{"servers": []map[string]any{{"address": inn.Addr}}, "path_host": "gw.example.test"})
	body := ".leading dot\n..two dots\n.\nend\n"
	m := newsMsg("readback-1", `Received: from laptop (203.0.113.7)
To: mail2news@gw.test
Cc: someone@example.org
X-Original-To: mail2news@gw.test
NNTP-Posting-Host: 203.0.113.7
Newsgroups: alt.test
Subject: read back`, body)
	if err := deliver(t, p, m); err != nil {
		t.Fatalf("Deliver: %v\n%s", err, inn.Log())
	}
	art := inn.WaitArticle(t, "<readback-1@test.invalid>", "", "", 10*time.Second)
	head, gotBody, ok := strings.Cut(art, "\r\n\r\n")
	if !ok {
		t.Fatalf("no empty line in article:\n%s", art)
	}
	if want := strings.ReplaceAll(body, "\n", "\r\n"); gotBody != want {
		t.Errorf("body = %q, want %q", gotBody, want)
	}
	lower := strings.ToLower("\r\n" + head)
	for _, f := range []string{"date", "from", "message-id", "newsgroups", "path", "subject"} {
		if !strings.Contains(lower, "\r\n"+f+": ") {
			t.Errorf("mandatory field %s missing:\n%s", f, head)
		}
	}
	for _, f := range []string{"received", "to", "cc", "x-original-to", "nntp-posting-host"} {
		if strings.Contains(lower, "\r\n"+f+":") {
			t.Errorf("tracing field %s in the article:\n%s", f, head)
		}
	}
	if strings.Contains(art, "203.0.113.7") || strings.Contains(art, "someone@example.org") {
		t.Errorf("a tracing value reached the article:\n%s", art)
	}
	if !strings.Contains(head, "gw.example.test!not-for-mail") {
		t.Errorf("Path lacks our path identity:\n%s", head)
	}
}

// TestINN441IsPermanent: INN refuses a POST to a group it does not carry
// with 441; the gateway gives up on the article.
func TestINN441IsPermanent(t *testing.T) {
	inn := peers.INN(t)
	p := startPlugin(t, map[string]any{"servers": []map[string]any{{"address": inn.Addr}}})
	err := deliver(t, p, newsMsg("no-group-1", "Newsgroups: no.such.group\nSubject: s", "b\n"))
	e := sdk.AsError(err)
	if e == nil || e.Temporary || !strings.Contains(e.Message, "441") {
		t.Fatalf("got %v, want a permanent failure carrying INN's 441", err)
	}
	// The same over a peering feed: INN's 437 for an unwanted group is a
	// refusal too, not the "already have it" that counts as delivered.
	p = startPlugin(t, map[string]any{"servers": []map[string]any{{"address": inn.Addr, "method": "ihave"}}})
	err = deliver(t, p, newsMsg("no-group-2", "Newsgroups: no.such.group\nSubject: s", "b\n"))
	if e := sdk.AsError(err); e == nil || e.Temporary || !strings.Contains(e.Message, "437") {
		t.Fatalf("IHAVE: got %v, want a permanent failure carrying INN's 437", err)
	}
}

// TestDuplicateHeaderFieldIsARefusalNotADuplicate: INN refuses an article
// with a repeated header field with "441 Duplicate Subject header field"
// (POST) or `437 Duplicate "Subject" header field` (IHAVE). That is a
// permanent refusal with the code, not the "already have it" that counts
// as posted: the article is not in the group.
func TestDuplicateHeaderFieldIsARefusalNotADuplicate(t *testing.T) {
	inn := peers.INN(t)
	for method, code := range map[string]string{"post": "441", "ihave": "437"} {
		p := startPlugin(t, map[string]any{"servers": []map[string]any{{"address": inn.Addr, "method": method}}})
		err := deliver(t, p, newsMsg("dup-field-"+method, "Newsgroups: alt.test\nSubject: s\nSubject: t", "b\n"))
		if e := sdk.AsError(err); e == nil || e.Temporary || !strings.Contains(e.Message, code) {
			t.Errorf("%s: got %v, want a permanent failure carrying INN's %s", method, err, code)
		}
	}
	if n, err := inn.GroupCount("alt.test", "", ""); err != nil || n != 0 {
		t.Errorf("alt.test holds %d articles (%v), want 0", n, err)
	}
}

// TestRepeatedPostingCountsAsSuccess: a posting repeated (the core retries
// after a crash) is a success with IHAVE (435/437) and with POST (INN's
// 441 duplicate), and the group holds the article once.
func TestRepeatedPostingCountsAsSuccess(t *testing.T) {
	inn := peers.INN(t)
	for _, method := range []string{"ihave", "post"} {
		p := startPlugin(t, map[string]any{"servers": []map[string]any{{"address": inn.Addr, "method": method}}})
		group := map[string]string{"ihave": "alt.test", "post": "local.test"}[method]
		m := newsMsg("dup-"+method, "Newsgroups: "+group+"\nSubject: twice", "b\n")
		for i := 0; i < 2; i++ {
			if err := deliver(t, p, m); err != nil {
				t.Fatalf("%s attempt %d: %v\n%s", method, i+1, err, inn.Log())
			}
		}
		inn.WaitArticle(t, "<dup-"+method+"@test.invalid>", "", "", 10*time.Second)
		if n, err := inn.GroupCount(group, "", ""); err != nil || n != 1 {
			t.Errorf("%s: %s holds %d articles (%v), want 1", method, group, n, err)
		}
	}
}

func TestAuthinfoUserPass(t *testing.T) {
	inn := peers.INN(t, peers.INNConfig{Users: map[string]string{"gw": "news-pass"}})
	dir := t.TempDir()
	good, bad := filepath.Join(dir, "good"), filepath.Join(dir, "bad")
	if err := os.WriteFile(good, []byte("news-pass\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bad, []byte("wrong\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	p := startPlugin(t, map[string]any{"servers": []map[string]any{{"address": inn.Addr, "user": "gw", "password_file": good}}})
	if err := deliver(t, p, newsMsg("auth-1", "Newsgroups: alt.test\nSubject: s", "b\n")); err != nil {
		t.Fatalf("with the right password: %v\n%s", err, inn.Log())
	}
	inn.WaitArticle(t, "<auth-1@test.invalid>", "gw", "news-pass", 10*time.Second)
	p = startPlugin(t, map[string]any{"servers": []map[string]any{{"address": inn.Addr, "user": "gw", "password_file": bad}}})
	err := deliver(t, p, newsMsg("auth-2", "Newsgroups: alt.test\nSubject: s", "b\n"))
	if e := sdk.AsError(err); e == nil || !e.Temporary || !strings.Contains(e.Message, "AUTHINFO") {
		t.Fatalf("with a wrong password: %v, want a temporary AUTHINFO failure", err)
	}
	// Without AUTHINFO this INN does not let us post at all: temporary too.
	p = startPlugin(t, map[string]any{"servers": []map[string]any{{"address": inn.Addr}}})
	if err := deliver(t, p, newsMsg("auth-3", "Newsgroups: alt.test\nSubject: s", "b\n")); !isTemporary(err) {
		t.Fatalf("without AUTHINFO: %v, want temporary", err)
	}
}

func isTemporary(err error) bool {
	e := sdk.AsError(err)
	return e != nil && e.Temporary
}

// TestEachAndFirstServer: post_to each reaches every server and retries
// while one is down; post_to first stops at the first that takes it.
func TestEachAndFirstServer(t *testing.T) {
	a, b := peers.INN(t), peers.INN(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	down := l.Addr().String()
	l.Close()

	each := startPlugin(t, map[string]any{"servers": []map[string]any{{"address": a.Addr}, {"address": b.Addr, "method": "ihave"}}})
	if err := deliver(t, each, newsMsg("each-1", "Newsgroups: alt.test\nSubject: s", "b\n")); err != nil {
		t.Fatal(err)
	}
	a.WaitArticle(t, "<each-1@test.invalid>", "", "", 10*time.Second)
	b.WaitArticle(t, "<each-1@test.invalid>", "", "", 10*time.Second)

	eachDown := startPlugin(t, map[string]any{"servers": []map[string]any{{"address": a.Addr}, {"address": down}}})
	if err := deliver(t, eachDown, newsMsg("each-2", "Newsgroups: alt.test\nSubject: s", "b\n")); !isTemporary(err) {
		t.Fatalf("each with a server down: %v, want temporary", err)
	}

	first := startPlugin(t, map[string]any{"post_to": "first", "servers": []map[string]any{{"address": down}, {"address": a.Addr}, {"address": b.Addr}}})
	if err := deliver(t, first, newsMsg("first-1", "Newsgroups: local.test\nSubject: s", "b\n")); err != nil {
		t.Fatal(err)
	}
	a.WaitArticle(t, "<first-1@test.invalid>", "", "", 10*time.Second)
	if _, found, err := b.Article("<first-1@test.invalid>", "", ""); err != nil || found {
		t.Fatalf("post_to first also posted to the third server (found %v, %v)", found, err)
	}
}

// TestForwardModeMailsArticleToGateway: the article goes by SMTP to an
// external gateway address (a real Postfix stands in for it).
func TestForwardModeMailsArticleToGateway(t *testing.T) {
	pf := peers.Postfix(t)
	p := startPlugin(t, map[string]any{"forward": map[string]any{"to": "mail2news@example.net", "host": pf.Addr, "helo": "gw.example.test"}})
	m := newsMsg("fwd-1", "Received: from laptop (203.0.113.7)\nNewsgroups: alt.test\nSubject: forwarded", ".dot line\nbody\n")
	if err := deliver(t, p, m); err != nil {
		t.Fatal(err)
	}
	var got string
	deadline := time.Now().Add(20 * time.Second)
	for got == "" && time.Now().Before(deadline) {
		files, _ := filepath.Glob(filepath.Join(pf.MailDir, "new", "*"))
		if len(files) > 0 {
			b, _ := os.ReadFile(files[0])
			got = string(b)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if got == "" {
		t.Fatal("nothing arrived at the gateway address")
	}
	for _, want := range []string{"Newsgroups: alt.test", "Subject: forwarded", "To: mail2news@example.net", "\n.dot line\n"} {
		if !strings.Contains(got, want) {
			t.Errorf("forwarded mail lacks %q:\n%s", want, got)
		}
	}
	if strings.Contains(got, "203.0.113.7") || strings.Contains(got, "not-for-mail") {
		t.Errorf("forwarded mail carries a tracing value or our Path:\n%s", got)
	}
}

// TestSTARTTLSVerifiesTheNewsServer: with tls: starttls the article goes
// only over TLS to a server whose certificate checks out; an untrusted
// certificate or a server without STARTTLS is a temporary failure and
// nothing is posted in the clear.
func TestSTARTTLSVerifiesTheNewsServer(t *testing.T) {
	inn := peers.INN(t, peers.INNConfig{TLS: true})
	ca := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(ca, inn.Cert.CertPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	p := startPlugin(t, map[string]any{"servers": []map[string]any{{"address": inn.Addr, "tls": "starttls", "tls_ca_file": ca}}})
	if err := deliver(t, p, newsMsg("tls-1", "Newsgroups: alt.test\nSubject: s", "b\n")); err != nil {
		t.Fatalf("STARTTLS with the right CA: %v\n%s", err, inn.Log())
	}
	inn.WaitArticle(t, "<tls-1@test.invalid>", "", "", 10*time.Second)

	p = startPlugin(t, map[string]any{"servers": []map[string]any{{"address": inn.Addr, "tls": "starttls"}}})
	err := deliver(t, p, newsMsg("tls-2", "Newsgroups: alt.test\nSubject: s", "b\n"))
	if e := sdk.AsError(err); e == nil || !e.Temporary || !strings.Contains(e.Message, "certificate not trusted") {
		t.Fatalf("untrusted certificate: %v, want a temporary TLS failure", err)
	}
	plain := peers.INN(t)
	p = startPlugin(t, map[string]any{"servers": []map[string]any{{"address": plain.Addr, "tls": "starttls"}}})
	err = deliver(t, p, newsMsg("tls-3", "Newsgroups: alt.test\nSubject: s", "b\n"))
	if e := sdk.AsError(err); e == nil || !e.Temporary || !strings.Contains(e.Message, "STARTTLS") {
		t.Fatalf("server without STARTTLS: %v, want a temporary failure", err)
	}
	for _, pr := range []struct {
		inn *peers.INNPeer
		id  string
	}{{inn, "<tls-2@test.invalid>"}, {plain, "<tls-3@test.invalid>"}} {
		if _, found, err := pr.inn.Article(pr.id, "", ""); err != nil || found {
			t.Errorf("%s posted despite the TLS failure (found %v, %v)", pr.id, found, err)
		}
	}
}

// TestDelivererConformance runs the SDK's delivery-stage contract on the
// plugin through the real host, posting to a real INN.
func TestDelivererConformance(t *testing.T) {
	inn := peers.INN(t)
	plugintest.DelivererSuite{
		Good: []string{"mail2news@gw.test"},
		New: func(t *testing.T) sdk.Deliverer {
			p := startPlugin(t, map[string]any{"servers": []map[string]any{{"address": inn.Addr}}, "path_host": "gw.example.test"})
			plugintest.CheckInfo(t, p.Info(), sdk.KindDeliverer)
			return p
		},
	}.Run(t)
}

// TestBareCRCannotSmuggleIntoINN posts an article whose body carries bare
// CRs ("\r.\r" then a second POST of a forged article to another group: a
// body from the mixnet is whatever its anonymous sender made) into a real
// INN. The article reads back with every CR as a line end and the lone dot
// as content, and the other group stays empty.
func TestBareCRCannotSmuggleIntoINN(t *testing.T) {
	inn := peers.INN(t)
	p := startPlugin(t, map[string]any{"servers": []map[string]any{{"address": inn.Addr}}, "path_host": "gw.example.test"})
	m := newsMsg("bare-cr-1", "Newsgroups: alt.test\nSubject: bare cr", "")
	m.Body = []byte("first\r.\rPOST\rNewsgroups: local.test\rFrom: f@example.org\rSubject: forged\r\rforged\r.\r\nlast\r")
	if err := deliver(t, p, m); err != nil {
		t.Fatalf("Deliver: %v\n%s", err, inn.Log())
	}
	art := inn.WaitArticle(t, "<bare-cr-1@test.invalid>", "", "", 10*time.Second)
	_, gotBody, _ := strings.Cut(art, "\r\n\r\n")
	want := "first\r\n.\r\nPOST\r\nNewsgroups: local.test\r\nFrom: f@example.org\r\nSubject: forged\r\n\r\nforged\r\n.\r\nlast\r\n"
	if gotBody != want {
		t.Errorf("body = %q, want %q", gotBody, want)
	}
	if n, err := inn.GroupCount("local.test", "", ""); err != nil || n != 0 {
		t.Errorf("local.test holds %d articles (%v), want 0: a smuggled article", n, err)
	}
}
