package pluginclient_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/mixmta/mixmta/internal/pluginclient"
	"github.com/mixmta/mixmta/sdk"
	"github.com/mixmta/mixmta/sdk/plugintest"
)

var echoBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "sdk-test-")
	if err != nil {
		panic(err)
	}
	if echoBin, err = plugintest.BuildTo("./internal/echoplugin", dir); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func echo(t *testing.T, cfg string) *pluginclient.Client {
	t.Helper()
	return plugintest.Start(t, echoBin, cfg)
}

// bigMessage is larger than grpc-go's 4 MiB default limit and than one
// frame, so it must be chunked.
func bigMessage() *sdk.Message {
	body := bytes.Repeat([]byte("0123456789abcdef\r\n"), (10<<20)/18) // ~10 MiB
	return &sdk.Message{ID: "00", Envelope: sdk.Envelope{MailFrom: "a@example.org", RcptTo: []string{"ok@example.net", "temp@example.net", "gone@example.net"}},
		Header: []byte("Subject: big\r\n\r\n"), Body: body}
}

func TestTransformCarriesTenMiBBothWays(t *testing.T) {
	p := echo(t, "")
	m := bigMessage()
	ch, err := p.Transform(context.Background(), m)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(m.Body)
	if string(ch.Body) != hex.EncodeToString(sum[:]) {
		t.Fatalf("plugin saw a different body: %q", ch.Body)
	}
	if string(ch.Header) != "SUBJECT: BIG\r\n\r\n" || ch.MailFrom == nil || *ch.MailFrom != "transformed@example.org" {
		t.Fatalf("change = %q %v", ch.Header, ch.MailFrom)
	}
}

func TestRouteReturnsLargeBodiesChunked(t *testing.T) {
	p := echo(t, "")
	m := bigMessage()
	routes, err := p.Route(context.Background(), m)
	if err != nil {
		t.Fatal(err)
	}
	if len(routes) != 3 || !bytes.Equal(routes[0].Body, m.Body) || routes[1].Body != nil || routes[2].RcptTo[0] != "gone@example.net" {
		t.Fatalf("routes: %d, first body %d bytes (want %d), second %v", len(routes), len(routes[0].Body), len(m.Body), routes[1].Body)
	}
}

func TestDeliverPerRecipientResultsAndClasses(t *testing.T) {
	p := echo(t, "")
	m := bigMessage()
	res, err := p.Deliver(context.Background(), m)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"ok@example.net": "", "temp@example.net": "temp", "gone@example.net": "perm"}
	for _, r := range res {
		got := ""
		if r.Err != nil {
			got = "perm"
			if !sdk.IsPermanent(r.Err) {
				got = "temp"
			}
		}
		if got != want[r.Rcpt] {
			t.Errorf("%s: %q (%v), want %q", r.Rcpt, got, r.Err, want[r.Rcpt])
		}
		if got == "perm" && !strings.Contains(r.Err.Error(), "len=") {
			t.Errorf("permanent error text lost: %v", r.Err)
		}
	}
}

func TestCheckRejectionCarriesSMTPCodes(t *testing.T) {
	p := echo(t, `{"reject":"spam"}`)
	err := p.Check(context.Background(), &sdk.Message{Envelope: sdk.Envelope{RcptTo: []string{"spam@example.net"}}})
	e := sdk.AsError(err)
	if e == nil || e.SMTPCode() != 550 || e.EnhancedCode() != "5.7.1" {
		t.Fatalf("got %v, want 550 5.7.1", err)
	}
	if err := p.Check(context.Background(), &sdk.Message{Envelope: sdk.Envelope{RcptTo: []string{"fine@example.net"}}}); err != nil {
		t.Fatal(err)
	}
}

func TestDelayReturnsCountSamples(t *testing.T) {
	p := echo(t, "")
	ds, err := p.Delay(context.Background(), sdk.DelayRequest{Size: 7, Count: 5})
	if err != nil || len(ds) != 5 || ds[4] != 7*time.Millisecond {
		t.Fatalf("got %v %v", ds, err)
	}
}

func TestNeedsLimitWhatCrossesTheWire(t *testing.T) {
	p := echo(t, "")
	if p.Info().Needs != sdk.NeedAll {
		t.Fatalf("needs = %v", p.Info().Needs)
	}
	info := p.Info()
	if !info.Has(sdk.KindDeliverer) || info.Name != "echo" || info.Schema.Properties["reject"] == nil {
		t.Fatalf("info = %+v", info)
	}
}

func TestCrashedPluginCallIsTransportError(t *testing.T) {
	p := echo(t, `{"crash":"boom"}`)
	_, err := p.Deliver(context.Background(), &sdk.Message{Envelope: sdk.Envelope{RcptTo: []string{"boom@example.net"}}})
	if !pluginclient.IsTransport(err) {
		t.Fatalf("got %v, want a transport error", err)
	}
}

func TestUnknownConfigKeyRejected(t *testing.T) {
	if _, err := plugintest.StartErr(t, echoBin, `{"rejekt":"x"}`); err == nil || !strings.Contains(err.Error(), "rejekt") {
		t.Fatalf("got %v, want an unknown-key error", err)
	}
}

func TestPluginRefusesToRunWithoutTheCore(t *testing.T) {
	out, err := exec.Command(echoBin).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "is a mixmta plugin") {
		t.Fatalf("run by hand: err=%v out=%q", err, out)
	}
}
