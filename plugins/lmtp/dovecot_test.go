package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"testing"
	"time"

	"github.com/mixmta/mixmta/internal/peers"
	"github.com/mixmta/mixmta/sdk"
	"github.com/mixmta/mixmta/sdk/plugintest"
)

// TestDovecotAcceptsOneAndRejectsOneRecipientInOneTransaction delivers one
// message to two recipients through the real plugin host into a real
// Dovecot, over its Unix socket and over TCP: Dovecot refuses one at RCPT
// TO, so the stage must report 250 for one and 550 5.1.1 for the other,
// and only the accepted one's Maildir may hold the message, intact.
func TestDovecotAcceptsOneAndRejectsOneRecipientInOneTransaction(t *testing.T) {
	dc := peers.Dovecot(t, peers.DovecotConfig{Deny: []string{"reject@example.net"}})
	bin := plugintest.Build(t, ".")
	for _, tc := range []struct{ name, address, rcpt string }{
		{"unix socket", dc.Socket, "bob@example.net"},
		{"tcp", dc.Addr, "carol@example.net"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, _ := json.Marshal(map[string]string{"address": tc.address})
			p := plugintest.Start(t, bin, string(cfg))
			msg := loadMessage(t, tc.rcpt, "reject@example.net")
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			res, err := p.Deliver(ctx, msg)
			if err != nil {
				t.Fatal(err)
			}
			got := map[string]*sdk.Error{}
			for _, r := range res {
				got[r.Rcpt] = sdk.AsError(r.Err)
			}
			if len(res) != 2 {
				t.Fatalf("%d results, want 2: %v", len(res), got)
			}
			if got[tc.rcpt] != nil {
				t.Fatalf("%s: %v\n%s", tc.rcpt, got[tc.rcpt], dc.Log())
			}
			wantErr(t, "reject", got["reject@example.net"], false, 550, "5.1.1")
			files := dc.Messages(tc.rcpt)
			if len(files) != 1 {
				t.Fatalf("%s's Maildir holds %d messages, want 1", tc.rcpt, len(files))
			}
			stored, _ := os.ReadFile(files[0])
			// Dovecot stores LF line endings and prepends Return-Path,
			// Delivered-To and Received.
			want := bytes.ReplaceAll(append(append([]byte(nil), msg.Header...), msg.Body...), []byte("\r\n"), []byte("\n"))
			if !bytes.HasSuffix(stored, want) {
				t.Fatalf("stored message does not end with the message sent:\n%s", stored)
			}
			if !bytes.HasPrefix(stored, []byte("Return-Path: <>\n")) {
				t.Fatalf("stored message lacks Return-Path of the null sender:\n%.300s", stored)
			}
			if n := len(dc.Messages("reject@example.net")); n != 0 {
				t.Fatalf("refused recipient has %d messages", n)
			}
		})
	}
}

// TestDelivererConformance runs the SDK's delivery-stage contract on the
// plugin through the real host against a real Dovecot LMTP server.
func TestDelivererConformance(t *testing.T) {
	dc := peers.Dovecot(t)
	bin := plugintest.Build(t, ".")
	plugintest.DelivererSuite{
		Good: []string{"alice@example.net", "bob@example.net"},
		New: func(t *testing.T) sdk.Deliverer {
			cfg, _ := json.Marshal(map[string]string{"address": dc.Socket})
			p := plugintest.Start(t, bin, string(cfg))
			plugintest.CheckInfo(t, p.Info(), sdk.KindDeliverer)
			return p
		},
	}.Run(t)
}

// TestBareCRCannotSmuggleIntoDovecot delivers a message whose header and
// body carry bare CRs ("\r.\r" then LMTP commands for a second message to
// another recipient: a mixnet exit's payload is whatever its anonymous
// sender made) through the real plugin host into a real Dovecot. The one
// recipient gets one message, stored with every CR as a line end and the
// lone dot as content; the other recipient gets nothing.
func TestBareCRCannotSmuggleIntoDovecot(t *testing.T) {
	dc := peers.Dovecot(t)
	bin := plugintest.Build(t, ".")
	cfg, _ := json.Marshal(map[string]string{"address": dc.Addr})
	p := plugintest.Start(t, bin, string(cfg))
	msg := loadMessage(t, "bob@example.net")
	msg.Header = []byte("Subject: cr\rX-Injected: 1\r\n\r\n")
	msg.Body = []byte("first\r.\rMAIL FROM:<forged@example.org>\rRCPT TO:<carol@example.net>\rDATA\rforged\r.\r\nlast\r")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	res, err := p.Deliver(ctx, msg)
	if err != nil {
		t.Fatal(err)
	}
	if len(res) != 1 || res[0].Err != nil {
		t.Fatalf("results %+v\n%s", res, dc.Log())
	}
	files := dc.Messages("bob@example.net")
	if len(files) != 1 {
		t.Fatalf("bob's Maildir holds %d messages, want 1", len(files))
	}
	stored, _ := os.ReadFile(files[0])
	if bytes.IndexByte(stored, '\r') >= 0 {
		t.Errorf("a bare CR was stored:\n%q", stored)
	}
	want := "Subject: cr\nX-Injected: 1\n\nfirst\n.\nMAIL FROM:<forged@example.org>\nRCPT TO:<carol@example.net>\nDATA\nforged\n.\nlast\n"
	if !bytes.HasSuffix(stored, []byte(want)) {
		t.Errorf("stored message does not end with the CRs as line ends:\n%q", stored)
	}
	if n := len(dc.Messages("carol@example.net")); n != 0 {
		t.Errorf("a smuggled message reached carol: %d messages", n)
	}
}
