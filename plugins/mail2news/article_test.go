package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/mixmta/mixmta/sdk"
)

var testNow = time.Date(2026, 3, 10, 12, 0, 0, 0, time.UTC)

func testGateway(t *testing.T, mod func(*Config)) *gateway {
	t.Helper()
	cfg := defaults
	cfg.Servers = []Server{{Address: "127.0.0.1:119"}}
	if mod != nil {
		mod(&cfg)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatalf("config: %v", err)
	}
	g, err := newGateway(cfg, hclog.NewNullLogger())
	if err != nil {
		t.Fatal(err)
	}
	g.now = func() time.Time { return testNow }
	return g
}

func msg(header, body string, rcpts ...string) *sdk.Message {
	h := strings.ReplaceAll(header, "\n", "\r\n") + "\r\n"
	b := strings.ReplaceAll(body, "\n", "\r\n")
	if len(rcpts) == 0 {
		rcpts = []string{"mail2news@gateway.test"}
	}
	return &sdk.Message{ID: "0123", Envelope: sdk.Envelope{RcptTo: rcpts}, Header: []byte(h), Body: []byte(b), Size: int64(len(h) + len(b))}
}

// fields returns the article's header as name -> values (unfolded).
func fields(t *testing.T, a *Article) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	for _, line := range strings.Split(strings.ReplaceAll(string(a.Header), "\r\n\t", " "), "\r\n") {
		if line == "" {
			continue
		}
		name, value, ok := strings.Cut(line, ":")
		if !ok {
			t.Fatalf("header line without colon: %q in\n%s", line, a.Header)
		}
		out[strings.ToLower(name)] = append(out[strings.ToLower(name)], strings.TrimSpace(value))
	}
	return out
}

func TestArticleHasMandatoryHeadersAndNoTracingHeaders(t *testing.T) {
	g := testGateway(t, func(c *Config) { c.PathHost = "news.gateway.test" })
	m := msg(`Received: from laptop (203.0.113.7) by mx
Return-Path: <alice@example.org>
Delivered-To: mail2news@gateway.test
X-Original-To: mail2news@gateway.test
To: mail2news@gateway.test
Cc: bob@example.net
Path: forged!path
Xref: forged 1
Lines: 3
NNTP-Posting-Host: 203.0.113.7
Injection-Info: forged
Newsgroups: alt.test, local.test,alt.test
Subject: hello
References: <a@b>`, ".leading dot\nbody\n")
	a, err := g.buildArticle(m, testNow)
	if err != nil {
		t.Fatal(err)
	}
	f := fields(t, a)
	for _, name := range []string{"received", "return-path", "delivered-to", "x-original-to", "to", "cc", "xref", "lines", "nntp-posting-host", "injection-info"} {
		if v, ok := f[name]; ok {
			t.Errorf("tracing field %s kept: %q", name, v)
		}
	}
	want := map[string]string{
		"path":       "news.gateway.test!not-for-mail",
		"newsgroups": "alt.test,local.test",
		"subject":    "hello",
		"from":       "Anonymous <nobody@anonymous.invalid>",
		"date":       "Tue, 10 Mar 2026 12:00:00 +0000",
		"references": "<a@b>",
	}
	for k, v := range want {
		if got := f[k]; len(got) != 1 || got[0] != v {
			t.Errorf("%s = %q, want [%q]", k, got, v)
		}
	}
	if id := f["message-id"]; len(id) != 1 || !validMessageID(id[0]) || id[0] != a.MessageID {
		t.Errorf("Message-ID = %q (article id %q)", id, a.MessageID)
	}
	if string(a.Body) != ".leading dot\r\nbody\r\n" {
		t.Errorf("body changed: %q", a.Body)
	}
	if !strings.Contains(string(a.Bytes()), "\r\n\r\n.leading dot\r\n") {
		t.Errorf("article is not header, empty line, body:\n%s", a.Bytes())
	}
}

func TestArticleKeepsValidMessageIDAndDate(t *testing.T) {
	g := testGateway(t, nil)
	a, err := g.buildArticle(msg("Newsgroups: alt.test\nMessage-ID: <keep.me@example.org>\nDate: Mon, 09 Mar 2026 08:00:00 +0100\nFrom: Someone <s@example.org>", "x\n"), testNow)
	if err != nil {
		t.Fatal(err)
	}
	f := fields(t, a)
	if a.MessageID != "<keep.me@example.org>" || f["message-id"][0] != a.MessageID {
		t.Errorf("Message-ID = %q", f["message-id"])
	}
	if f["date"][0] != "Mon, 09 Mar 2026 08:00:00 +0100" || f["from"][0] != "Someone <s@example.org>" {
		t.Errorf("Date/From changed: %q %q", f["date"], f["from"])
	}
	a, err = g.buildArticle(msg("Newsgroups: alt.test\nMessage-ID: not an id\nDate: yesterday", "x\n"), testNow)
	if err != nil {
		t.Fatal(err)
	}
	if f := fields(t, a); !strings.HasSuffix(a.MessageID, "@anonymous.invalid>") || f["date"][0] != "Tue, 10 Mar 2026 12:00:00 +0000" || f["subject"][0] != "None" {
		t.Errorf("invalid Message-ID/Date not replaced or Subject missing: %q", f)
	}
}

func TestNewsgroupsFromRecipientAddress(t *testing.T) {
	g := testGateway(t, nil)
	cases := []struct {
		rcpt string
		want string // "" = refused
	}{
		{"mail2news-20260310-alt.test@gw.test", "alt.test"},
		{"mail2news-20260310-alt.test=local.test=alt.test@gw.test", "alt.test,local.test"},
		{"Mail2News-20260310-Alt.Test@gw.test", "alt.test"},
		{"mail2news-20260308-alt.test@gw.test", "alt.test"}, // 36 h before now: inside 48 h
		{"mail2news-20260311-alt.test@gw.test", "alt.test"}, // starts 12 h after now: inside 24 h
		{"mail2news-20260307-alt.test@gw.test", ""},         // ended 36 h... 60 h ago
		{"mail2news-20260312-alt.test@gw.test", ""},         // starts 36 h after now
		{"mail2news-20261399-alt.test@gw.test", ""},
		{"mail2news-2026031-alt.test@gw.test", ""},
		{"mail2news-20260310-@gw.test", ""},
		{"mail2news@gw.test", ""}, // no groups anywhere
	}
	for _, c := range cases {
		a, err := g.buildArticle(msg("Subject: s", "b\n", c.rcpt), testNow)
		if c.want == "" {
			if err == nil || !sdk.IsPermanent(err) {
				t.Errorf("%s: got %v, want a permanent refusal", c.rcpt, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", c.rcpt, err)
			continue
		}
		if got := strings.Join(a.Groups, ","); got != c.want {
			t.Errorf("%s: groups %q, want %q", c.rcpt, got, c.want)
		}
	}
	// The header wins over the address.
	a, err := g.buildArticle(msg("Newsgroups: local.test", "b\n", "mail2news-20260310-alt.test@gw.test"), testNow)
	if err != nil || strings.Join(a.Groups, ",") != "local.test" {
		t.Errorf("header did not win: %v %v", a, err)
	}
}

// TestRefusalsArePermanentWithReason: each refusal the gateway makes is
// permanent and its reply text says why.
func TestRefusalsArePermanentWithReason(t *testing.T) {
	g := testGateway(t, func(c *Config) { c.MaxBytes = 2048 })
	cases := []struct {
		name, header, body string
		code               int
		reason             string
	}{
		{"control", "Newsgroups: alt.test\nControl: cancel <x@y>", "b\n", 554, "Control header refused"},
		{"also-control", "Newsgroups: alt.test\nAlso-Control: newgroup x", "b\n", 554, "Also-Control header refused"},
		{"approved", "Newsgroups: alt.test\nApproved: mod@example.org", "b\n", 554, "Approved header refused"},
		{"cancel", "Newsgroups: alt.test\nCancel: <x@y>", "b\n", 554, "Cancel header refused"},
		{"supersedes", "Newsgroups: alt.test\nSupersedes: <x@y>", "b\n", 554, "Supersedes header refused"},
		{"missing group", "Subject: s", "b\n", 554, "no newsgroup"},
		{"empty group", "Newsgroups: alt.test,,local.test", "b\n", 554, "newsgroup 2 of 3 is malformed"},
		{"malformed group", "Newsgroups: alt.test, Bad Group", "b\n", 554, "malformed"},
		{"one component", "Newsgroups: test", "b\n", 554, "malformed"},
		{"control group", "Newsgroups: control.cancel", "b\n", 554, "control or junk"},
		{"too many groups", "Newsgroups: a.a,b.b,c.c,d.d", "b\n", 554, "crossposted to 4 newsgroups; the limit is 3"},
		{"future date", "Newsgroups: alt.test\nDate: Thu, 12 Mar 2026 12:00:00 +0000", "b\n", 554, "more than 24 hours in the future"},
		{"too big", "Newsgroups: alt.test", strings.Repeat("x", 3000), 552, "over the 2048-byte article limit"},
		{"malformed header", "Newsgroups: alt.test\nno colon here", "b\n", 554, "malformed header"},
	}
	for _, c := range cases {
		_, err := g.buildArticle(msg(c.header, c.body), testNow)
		e := sdk.AsError(err)
		if e == nil || e.Temporary || e.SMTPCode() != c.code || !strings.Contains(e.Message, c.reason) {
			t.Errorf("%s: got %v, want permanent %d with %q", c.name, err, c.code, c.reason)
		}
	}
	// Duplicates are removed before the limit is applied.
	if _, err := g.buildArticle(msg("Newsgroups: a.a,b.b,c.c,a.a,b.b", "b\n"), testNow); err != nil {
		t.Errorf("3 groups after removing duplicates refused: %v", err)
	}
	// A Date just under 24 h ahead is fine.
	if _, err := g.buildArticle(msg("Newsgroups: a.a\nDate: Wed, 11 Mar 2026 11:00:00 +0000", "b\n"), testNow); err != nil {
		t.Errorf("Date 23 h ahead refused: %v", err)
	}
}

// TestBareCROrNULInHeaderIsRefused: a header field with a bare CR (a
// line break for some news software, so a Control field could ride in a
// Subject) or a NUL is refused, not written into the article.
func TestBareCROrNULInHeaderIsRefused(t *testing.T) {
	g := testGateway(t, nil)
	for _, h := range []string{"Newsgroups: alt.test\nSubject: x\rControl: cancel <a@b>", "Newsgroups: alt.test\nSubject: x\x00y",
		"Newsgroups: alt.test\nSubject: x\n \rControl: cancel <a@b>"} {
		_, err := g.buildArticle(msg(h, "b\n"), testNow)
		if e := sdk.AsError(err); e == nil || e.Temporary || !strings.Contains(e.Message, "bare CR or a NUL") {
			t.Errorf("%q: got %v, want a permanent refusal", h, err)
		}
	}
}

func TestConfigValidation(t *testing.T) {
	pwFile := filepath.Join(t.TempDir(), "pw")
	if err := os.WriteFile(pwFile, []byte("secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		mod  func(*Config)
		key  string
	}{
		{"no servers", func(c *Config) { c.Servers = nil }, "servers"},
		{"bad address", func(c *Config) { c.Servers[0].Address = "nohost" }, "servers.0.address"},
		{"bad method", func(c *Config) { c.Servers[0].Method = "mail" }, "servers.0.method"},
		{"starttls ihave", func(c *Config) { c.Servers[0].Method = "ihave"; c.Servers[0].TLS = "starttls" }, "servers.0.tls"},
		{"user without password", func(c *Config) { c.Servers[0].User = "u" }, "servers.0.user"},
		{"both modes", func(c *Config) { c.Forward = &Forward{To: "m@g.test", Host: "h:25"} }, "forward"},
		{"bad post_to", func(c *Config) { c.PostTo = "all" }, "post_to"},
		{"bad path_host", func(c *Config) { c.PathHost = "a!b" }, "path_host"},
		{"max_groups", func(c *Config) { c.MaxGroups = 0 }, "max_groups"},
		{"max_bytes", func(c *Config) { c.MaxBytes = 10 }, "max_bytes"},
		{"socks5", func(c *Config) { c.SOCKS5 = "9050" }, "socks5"},
		{"password in the clear", func(c *Config) {
			c.Servers[0] = Server{Address: "news.example.org:119", User: "u", PasswordFile: pwFile}
		}, "servers.0.tls"},
	}
	for _, c := range cases {
		cfg := defaults
		cfg.Servers = []Server{{Address: "127.0.0.1:119"}}
		c.mod(&cfg)
		err := cfg.Validate()
		fe, ok := err.(*sdk.FieldError)
		if !ok || fe.Field != c.key {
			t.Errorf("%s: got %v, want an error for %s", c.name, err, c.key)
		}
	}
}

func TestPasswordFileMustBePrivate(t *testing.T) {
	pw := filepath.Join(t.TempDir(), "pw")
	if err := os.WriteFile(pw, []byte("secret\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := defaults
	cfg.Servers = []Server{{Address: "127.0.0.1:119", User: "u", PasswordFile: pw}}
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "0600") {
		t.Fatalf("a world-readable password file: %v, want an error", err)
	}
	os.Chmod(pw, 0o600)
	for _, addr := range []string{"127.0.0.1:119", "localhost:119", "abcdef.onion:119"} {
		cfg.Servers = []Server{{Address: addr, User: "u", PasswordFile: pw}}
		if err := cfg.Validate(); err != nil {
			t.Errorf("%s without TLS: %v, want accepted (no eavesdropper on the link)", addr, err)
		}
	}
}
