package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/mixmta/mixmta/internal/peers"
	"github.com/mixmta/mixmta/sdk"
	"github.com/mixmta/mixmta/sdk/plugintest"
)

// TestDkimpyVerifiesBothAlgorithmsDirectAndThroughPostfix signs through
// the real plugin host with keys made by openssl as the README says,
// publishes the public keys with dnsmasq as TXT records, and has dkimpy,
// an independent verifier, fetch them and check the signatures: on the
// signed message as the stage returns it, and on the copy a real Postfix
// stored after receiving it over SMTP (Postfix adds its own trace fields
// and stores LF line endings). A changed body and an added Subject must
// fail (negative controls: the verifier does check).
func TestDkimpyVerifiesBothAlgorithmsDirectAndThroughPostfix(t *testing.T) {
	type signerCase struct{ algo, selector, keyFile, txt string }
	var cases []*signerCase
	txt := map[string]string{}
	for _, algo := range []string{"ed25519", "rsa"} {
		c := &signerCase{algo: algo, selector: "mix-" + algo}
		c.keyFile, c.txt = opensslKey(t, algo)
		txt[c.selector+"._domainkey.example.org"] = c.txt
		cases = append(cases, c)
	}
	dns := peers.Dnsmasq(t, peers.DNSRecords{TXT: txt, Zones: []string{"example.org"}})
	postfix := peers.Postfix(t, peers.PostfixConfig{TLS: "none"})
	bin := plugintest.Build(t, ".")
	for i, c := range cases {
		t.Run(c.algo, func(t *testing.T) {
			cfg, _ := json.Marshal(map[string]string{"domain": "example.org", "selector": c.selector, "key_file": c.keyFile})
			p := plugintest.Start(t, bin, string(cfg))
			m := loadMessage(t)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			ch, err := p.Transform(ctx, m)
			if err != nil {
				t.Fatal(err)
			}
			msg := signed(t, m, ch)
			if a := tag(t, msg, "a"); a != c.algo+"-sha256" {
				t.Fatalf("a=%s", a)
			}
			if ok, out := peers.DKIMVerify(t, dns.Addr, msg); !ok {
				t.Fatalf("dkimpy rejects the signature:\n%s\n%s", out, msg)
			}
			body := bytes.Replace(msg, []byte("a body with"), []byte("a body without"), 1)
			if ok, out := peers.DKIMVerify(t, dns.Addr, body); ok || !strings.Contains(out, "body hash mismatch") {
				t.Fatalf("changed body: want a body hash mismatch, got ok=%v\n%s", ok, out)
			}
			at := bytes.Index(msg, []byte("\r\n\r\n")) + 2
			added := append(append(append([]byte(nil), msg[:at]...), "Subject: added later\r\n"...), msg[at:]...)
			if ok, out := peers.DKIMVerify(t, dns.Addr, added); ok {
				t.Fatalf("an added Subject still verifies (oversigning):\n%s", out)
			}

			if err := sendPlain(postfix.Addr, "bob@example.net", msg); err != nil {
				t.Fatalf("sending to Postfix: %v", err)
			}
			files := postfix.WaitMessages(t, i+1, 20*time.Second)
			if len(files) != i+1 {
				t.Fatalf("Postfix stored %d messages, want %d", len(files), i+1)
			}
			var stored []byte
			for _, f := range files {
				b, _ := os.ReadFile(f)
				if bytes.Contains(b, []byte("s="+c.selector+";")) {
					stored = b
				}
			}
			if stored == nil || !bytes.Contains(stored, []byte("\nReceived: ")) {
				t.Fatalf("no message signed with %s in Postfix's Maildir (or no Received line)", c.selector)
			}
			if ok, out := peers.DKIMVerify(t, dns.Addr, stored); !ok {
				t.Fatalf("dkimpy rejects the copy Postfix stored:\n%s\n%s", out, stored)
			}
		})
	}
}

// sendPlain sends msg over SMTP without TLS (the test Postfix offers none).
func sendPlain(addr, rcpt string, msg []byte) error {
	c, err := smtp.Dial(addr)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.Hello("exit.example.org"); err != nil {
		return err
	}
	if err := c.Mail("", nil); err != nil {
		return err
	}
	if err := c.Rcpt(rcpt, nil); err != nil {
		return err
	}
	w, err := c.Data()
	if err != nil {
		return err
	}
	if _, err := w.Write(msg); err != nil {
		return err
	}
	if err := w.Close(); err != nil {
		return err
	}
	return c.Quit()
}

// TestTransformerConformance runs the SDK's transformer contract on the
// plugin through the real host.
func TestTransformerConformance(t *testing.T) {
	keyFile, _ := opensslKey(t, "ed25519")
	bin := plugintest.Build(t, ".")
	cfg, _ := json.Marshal(map[string]string{"domain": "example.org", "selector": "conform", "key_file": keyFile})
	plugintest.TransformerSuite{New: func(t *testing.T) sdk.Transformer {
		p := plugintest.Start(t, bin, string(cfg))
		plugintest.CheckInfo(t, p.Info(), sdk.KindTransformer)
		return p
	}}.Run(t)
}
