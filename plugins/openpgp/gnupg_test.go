package main

import (
	"bytes"
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/mixmta/mixmta/sdk"
	"github.com/mixmta/mixmta/sdk/plugintest"
)

// TestGnuPGDecryptsEachRecipientsCopyBackToTheOriginal routes a
// multipart, 8-bit message for two recipients through the real plugin
// host with public keys that real GnuPG made and exported. Each recipient
// gets one copy that is valid PGP/MIME (RFC 3156 §4); that recipient's
// GnuPG decrypts it to the original MIME entity, byte for byte (Content-*
// fields and body), with the protected Subject inside while the outer
// Subject is "[...]"; the other recipient's GnuPG cannot decrypt it
// (each copy is encrypted to its own recipient only), and no copy holds
// the plaintext.
func TestGnuPGDecryptsEachRecipientsCopyBackToTheOriginal(t *testing.T) {
	keys := t.TempDir()
	users := map[string]*gnupg{
		"bob@example.net":   newGnuPG(t, "Bob <bob@example.net>"),
		"carol@example.net": newGnuPG(t, "Carol <carol@example.net>"),
	}
	for addr, g := range users {
		g.exportTo(keys, addr)
	}
	cfg, _ := json.Marshal(map[string]any{"keys_dir": keys})
	p := plugintest.Start(t, pluginBinary(t), string(cfg))
	if info := p.Info(); !info.Has(sdk.KindRouter) || info.Needs != sdk.NeedAll {
		t.Fatalf("plugin info %+v", info)
	}
	m := loadMessage(t, "multipart.eml", "bob@example.net", "Carol@Example.NET")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	routes, err := p.Route(ctx, m)
	if err != nil {
		t.Fatal(err)
	}
	if len(routes) != 2 {
		t.Fatalf("%d routes, want one per recipient", len(routes))
	}
	wantInner := []byte("Content-Type: multipart/alternative;\r\n boundary=\"alt-boundary-1\";\r\n protected-headers=\"v1\"\r\n")
	for _, r := range routes {
		if len(r.RcptTo) != 1 || r.Deliverer != "" || r.Body == nil {
			t.Fatalf("route %+v", r.RcptTo)
		}
		own := users[map[string]string{"bob@example.net": "bob@example.net", "Carol@Example.NET": "carol@example.net"}[r.RcptTo[0]]]
		if own == nil {
			t.Fatalf("route for unknown recipient %q", r.RcptTo)
		}
		for _, secret := range []string{"secret subject", "secret body", "Grüße"} {
			if bytes.Contains(r.Body, []byte(secret)) {
				t.Fatalf("%s's copy holds %q in clear", r.RcptTo[0], secret)
			}
		}
		outer, armored := pgpParts(t, r.Body)
		if outer.Get("Subject") != "[...]" || outer.Get("From") != "Anonymous <nobody@remailer.example.org>" ||
			outer.Get("Message-Id") != "<openpgp-test-1@remailer.example.org>" || !outer.Has("Received") {
			t.Fatalf("outer header: Subject %q From %q Message-ID %q", outer.Get("Subject"), outer.Get("From"), outer.Get("Message-Id"))
		}
		plain := own.run(armored, "--decrypt")
		inner, body := splitEntity(t, plain)
		if !bytes.HasPrefix(plain, wantInner) {
			t.Fatalf("decrypted entity starts\n%q\nwant\n%q", plain[:min(len(plain), 120)], wantInner)
		}
		if inner.Get("Subject") != "The secret subject line" || inner.Get("To") != "Bob <bob@example.net>, Carol <carol@example.net>" {
			t.Fatalf("protected headers: Subject %q To %q", inner.Get("Subject"), inner.Get("To"))
		}
		if inner.Has("Received") || inner.Has("Mime-Version") {
			t.Fatal("the inner part carries fields that are not protected headers")
		}
		if !bytes.Equal(body, m.Body) {
			t.Fatalf("decrypted body differs from the original:\n%q\nwant\n%q", body, m.Body)
		}
		for addr, g := range users {
			if g == own {
				continue
			}
			if _, err := g.try(armored, "--decrypt"); err == nil {
				t.Fatalf("%s could decrypt %s's copy", addr, r.RcptTo[0])
			}
		}
	}
}

// TestGnuPGReadsEveryArmorLength: three messages whose lengths differ by
// one byte end their armor's base64 with each padding ("", "=", "=="); GnuPG
// 2.2 must read all three (it cannot when the armor lacks its CRC-24 and
// the base64 has no padding).
func TestGnuPGReadsEveryArmorLength(t *testing.T) {
	keys := t.TempDir()
	bob := newGnuPG(t, "Bob <bob@example.net>")
	bob.exportTo(keys, "bob@example.net")
	p := plugintest.Start(t, pluginBinary(t), `{"keys_dir":"`+keys+`"}`)
	for n := 0; n < 3; n++ {
		m := loadMessage(t, "multipart.eml", "bob@example.net")
		m.Body = append(append([]byte(nil), m.Body...), bytes.Repeat([]byte("x"), n)...)
		routes, err := p.Route(context.Background(), m)
		if err != nil || len(routes) != 1 {
			t.Fatalf("+%d bytes: %v", n, err)
		}
		_, armored := pgpParts(t, routes[0].Body)
		_, body := splitEntity(t, bob.run(armored, "--decrypt"))
		if !bytes.Equal(body, m.Body) {
			t.Fatalf("+%d bytes: decrypted body differs", n)
		}
	}
}

// TestAlreadyEncryptedMailPassesUnchanged: a PGP/MIME message and an
// inline OpenPGP message that GnuPG encrypted, and an S/MIME enveloped
// one, go to every recipient as they are (one route, no new body), even
// with keys for everyone.
func TestAlreadyEncryptedMailPassesUnchanged(t *testing.T) {
	keys := t.TempDir()
	bob := newGnuPG(t, "Bob <bob@example.net>")
	bob.exportTo(keys, "bob@example.net")
	armored := bob.run([]byte("Content-Type: text/plain\r\n\r\nhello\r\n"), "--armor", "--trust-model", "always", "--encrypt", "-r", "bob@example.net")
	inline := &sdk.Message{
		Header: []byte("From: a@example.org\r\nTo: bob@example.net\r\nSubject: inline\r\n\r\n"),
		Body:   append([]byte("\r\n"), bytes.ReplaceAll(armored, []byte("\n"), []byte("\r\n"))...),
	}
	// A PGP/MIME message as a mail client sends it: ours passed through
	// again must not be wrapped a second time either.
	s, err := newStage(Config{KeysDir: keys, MissingKey: policyReject, ProtectSubject: true}, nil)
	if err != nil {
		t.Fatal(err)
	}
	first, err := s.Route(context.Background(), &sdk.Message{Envelope: sdk.Envelope{RcptTo: []string{"bob@example.net"}},
		Header: []byte("From: a@example.org\r\nSubject: x\r\n\r\n"), Body: []byte("hello\r\n")})
	if err != nil || len(first) != 1 {
		t.Fatalf("%v %v", first, err)
	}
	pgpmime := &sdk.Message{Header: first[0].Body[:bytes.Index(first[0].Body, []byte("\r\n\r\n"))+4],
		Body: first[0].Body[bytes.Index(first[0].Body, []byte("\r\n\r\n"))+4:]}
	smime := &sdk.Message{
		Header: []byte("From: a@example.org\r\nMIME-Version: 1.0\r\nContent-Type: application/pkcs7-mime; smime-type=enveloped-data;\r\n name=smime.p7m\r\nContent-Transfer-Encoding: base64\r\n\r\n"),
		Body:   []byte("MIAGCSqGSIb3DQEHA6CAMIACAQAxggFOMIIBSgIBADAyMCYxETAPBgNVBAoTCE15\r\n"),
	}
	p := plugintest.Start(t, pluginBinary(t), `{"keys_dir":"`+keys+`"}`)
	for name, m := range map[string]*sdk.Message{"inline": inline, "pgp/mime": pgpmime, "s/mime": smime} {
		m.Envelope.RcptTo = []string{"bob@example.net", "nokey@example.net"}
		routes, err := p.Route(context.Background(), m)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if len(routes) != 1 || routes[0].Body != nil || len(routes[0].RcptTo) != 2 {
			t.Fatalf("%s: want one unchanged route for both recipients, got %d routes", name, len(routes))
		}
	}
	if got := bob.run(armored, "--decrypt"); !bytes.Contains(got, []byte("hello")) {
		t.Fatal("control: GnuPG cannot decrypt its own test message")
	}
}

// TestRouterConformance runs the SDK's router contract on the plugin
// through the real host, with two recipients' keys made by real GnuPG.
func TestRouterConformance(t *testing.T) {
	keys := t.TempDir()
	newGnuPG(t, "Bob <bob@example.net>").exportTo(keys, "bob@example.net")
	newGnuPG(t, "Carol <carol@example.net>").exportTo(keys, "carol@example.net")
	cfg, _ := json.Marshal(map[string]any{"keys_dir": keys})
	plugintest.RouterSuite{
		New: func(t *testing.T) sdk.Router {
			p := plugintest.Start(t, pluginBinary(t), string(cfg))
			plugintest.CheckInfo(t, p.Info(), sdk.KindRouter)
			return p
		},
		Rcpts:   []string{"bob@example.net", "carol@example.net"},
		Message: func(rcpts ...string) *sdk.Message { return loadMessage(t, "multipart.eml", rcpts...) },
	}.Run(t)
}
