package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"regexp"
	"testing"
	"time"

	"github.com/mixmta/mixmta/sdk"
	"github.com/mixmta/mixmta/sdk/plugintest"
)

func TestTransformCorpusMessageThroughRealHost(t *testing.T) {
	bin := plugintest.Build(t, ".")
	p := plugintest.Start(t, bin, `{
		"from": "Remailer <remailer@mix.example.org>",
		"message_id_domain": "mix.example.org",
		"envelope_sender": "bounces@mix.example.org",
		"add_headers": ["Comments: This message was sent through an anonymous remailer"]
	}`)
	if info := p.Info(); info.Needs != sdk.NeedHeader {
		t.Fatalf("want Needs = NeedHeader only (the body never crosses RPC), got %v", info.Needs)
	}
	raw, err := os.ReadFile("testdata/corpus/10-folded-received-chain.eml")
	if err != nil {
		t.Fatal(err)
	}
	header, body := splitMessage(raw)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ch, err := p.Transform(ctx, &sdk.Message{
		ID:       "0123456789abcdef0123456789abcdef",
		Envelope: sdk.Envelope{MailFrom: "lee.LEAK-10ENVFROM@corp.example.org", RcptTo: []string{"kim@example.net"}},
		Header:   header, Body: body, Size: int64(len(raw)), ReceivedAt: time.Now(),
	})
	if err != nil {
		t.Fatal(err)
	}
	if m := markerRE.Find(ch.Header); m != nil {
		t.Fatalf("marker %s leaked through the real host:\n%s", m, ch.Header)
	}
	if ch.MailFrom == nil || *ch.MailFrom != "bounces@mix.example.org" {
		t.Fatalf("want MAIL FROM bounces@mix.example.org, got %v", ch.MailFrom)
	}
	if ch.Body != nil {
		t.Fatalf("want no body in the Change, got %d bytes", len(ch.Body))
	}
	want := regexp.MustCompile(`^Date: [A-Z][a-z]{2}, \d\d [A-Z][a-z]{2} \d{4} \d\d:00:00 \+0000\r\n` +
		`From: Remailer <remailer@mix\.example\.org>\r\n` +
		`Message-ID: <[0-9a-f]{32}@mix\.example\.org>\r\n` +
		`To: Kim <kim@example\.net>\r\n` +
		`Subject: Build server is back\r\n` +
		`MIME-Version: 1\.0\r\n` +
		`Content-Type: text/plain; charset=us-ascii\r\n` +
		`Comments: This message was sent through an anonymous remailer\r\n\r\n$`)
	if !want.Match(ch.Header) {
		t.Fatalf("want a header matching\n%s\ngot\n%s", want, ch.Header)
	}
	if bytes.Contains(ch.Header, []byte("Received")) {
		t.Fatalf("Received survived:\n%s", ch.Header)
	}
}

func TestBadConfigIsRejectedThroughRealHost(t *testing.T) {
	bin := plugintest.Build(t, ".")
	for js, key := range map[string]string{
		`{"from":"not an address"}`:          "from",
		`{"allow":["To","Bcc"]}`:             "allow.1",
		`{"envelope_sender":"<a@example>"}`:  "envelope_sender",
		`{"message_id_domain":"bad_domain"}`: "message_id_domain",
	} {
		_, err := plugintest.StartErr(t, bin, js)
		var fe *sdk.FieldError
		if !errors.As(err, &fe) || fe.Field != key {
			t.Errorf("config %s: want an error on key %s, got %v", js, key, err)
		}
	}
}

// TestTransformerConformance runs the SDK's transformer contract on the
// plugin through the real host.
func TestTransformerConformance(t *testing.T) {
	bin := plugintest.Build(t, ".")
	plugintest.TransformerSuite{New: func(t *testing.T) sdk.Transformer {
		p := plugintest.Start(t, bin, `{"from": "Remailer <remailer@mix.example.org>", "message_id_domain": "mix.example.org"}`)
		plugintest.CheckInfo(t, p.Info(), sdk.KindTransformer)
		if !p.Info().Can(sdk.CapSanitizes) {
			t.Errorf("sanitize does not report %q", sdk.CapSanitizes)
		}
		return p
	}}.Run(t)
}
