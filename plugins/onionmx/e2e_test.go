package main

// End-to-end tests: the plugin binary runs under the real plugin host
// (sdk/plugintest) and delivers to real peers: a temp-dir Postfix MX,
// dnsmasq for MX records, smtp-sink.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mixmta/mixmta/internal/peers"
	"github.com/mixmta/mixmta/sdk"
	"github.com/mixmta/mixmta/sdk/plugintest"
)

// startPlugin builds and launches the plugin with cfg as its config.
func startPlugin(t *testing.T, cfg map[string]any) *plugintest.Plugin {
	t.Helper()
	cfg["connect_timeout"] = "5s"
	cfg["command_timeout"] = "10s"
	b, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return plugintest.Start(t, pluginBinary(t), string(b))
}

// pluginBinary builds the plugin once per test run (plugintest.Build would
// rebuild it in every test's temp dir).
func pluginBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "onionmx-test-")
		if err != nil {
			buildErr = err
			return
		}
		builtDir = dir
		out, err := exec.Command("go", "build", "-o", filepath.Join(dir, "onionmx"), ".").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return filepath.Join(builtDir, "onionmx")
}

var (
	buildOnce sync.Once
	builtDir  string
	buildErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if builtDir != "" {
		os.RemoveAll(builtDir)
	}
	os.Exit(code)
}

// e2eMessage is testdata/8bit-dots.eml, a message whose bytes are easy to
// get wrong: dot-stuffing, 8-bit UTF-8, a 900-octet line, trailing white
// space, an empty last line.
func e2eMessage(from string, rcpts ...string) *sdk.Message {
	raw, err := os.ReadFile("testdata/8bit-dots.eml")
	if err != nil {
		panic(err)
	}
	i := bytes.Index(raw, []byte("\r\n\r\n")) + 4
	h, b := raw[:i], raw[i:]
	return &sdk.Message{ID: "00112233445566778899aabbccddeeff", Envelope: sdk.Envelope{MailFrom: from, RcptTo: rcpts, BodyType: sdk.Body8BitMIME},
		Header: h, Body: b, Size: int64(len(raw))}
}

func lf(b []byte) []byte { return bytes.ReplaceAll(b, []byte("\r\n"), []byte("\n")) }

func deliverVia(t *testing.T, p *plugintest.Plugin, m *sdk.Message) map[string]error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	res, err := p.Deliver(ctx, m)
	if err != nil {
		t.Fatalf("Deliver: %v", err)
	}
	got := map[string]error{}
	for _, r := range res {
		got[r.Rcpt] = r.Err
	}
	if len(got) != len(m.Envelope.RcptTo) {
		t.Fatalf("got %d results for %d recipients: %v", len(got), len(m.Envelope.RcptTo), got)
	}
	return got
}

// wantMaildirMessage checks that a Maildir file ends with the message as
// sent: Postfix prepends Return-Path, Delivered-To and Received and stores
// LF line endings; every other byte must be identical.
func wantMaildirMessage(t *testing.T, path string, m *sdk.Message) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	want := lf(append(append([]byte(nil), m.Header...), m.Body...))
	if !bytes.HasSuffix(b, want) {
		t.Fatalf("Maildir file does not end with the message as sent.\ngot:\n%q\nwant suffix:\n%q", b, want)
	}
	return b
}

func TestPluginRelaysToPostfixOverRequiredTLSBodyIntact(t *testing.T) {
	pf := peers.Postfix(t)
	p := startPlugin(t, map[string]any{"relay_host": pf.Addr, "tls": "require", "helo": "exit.mixmta.test"})
	m := e2eMessage("sender@example.org", "bob@example.net")
	got := deliverVia(t, p, m)
	if got["bob@example.net"] != nil {
		t.Fatalf("bob@example.net: %v", got["bob@example.net"])
	}
	files := pf.WaitMessages(t, 1, 10*time.Second)
	b := wantMaildirMessage(t, files[0], m)
	if !bytes.Contains(b, []byte("Delivered-To: bob@example.net\n")) || !bytes.Contains(b, []byte("Return-Path: <sender@example.org>\n")) {
		t.Fatalf("envelope not as sent:\n%s", b)
	}
	log := pf.Log()
	if !strings.Contains(log, "TLS connection established from localhost") {
		t.Fatalf("Postfix logged no TLS session:\n%s", log)
	}
	if !strings.Contains(string(b), "Received: from exit.mixmta.test (") {
		t.Fatalf("Received field does not show our HELO name:\n%s", b)
	}
}

func TestPluginMXModeViaDnsmasqReachesPostfixSkippingDeadMX(t *testing.T) {
	pf := peers.Postfix(t)
	dns := peers.Dnsmasq(t, peers.DNSRecords{
		Hosts: map[string][]string{"mx0.example.org": {"127.0.0.2"}, "mx1.example.org": {"127.0.0.1"}},
		MX:    []peers.MX{{Domain: "example.org", Host: "mx1.example.org", Pref: 10}, {Domain: "example.org", Host: "mx0.example.org", Pref: 5}},
	})
	p := startPlugin(t, map[string]any{"resolver": dns.Addr, "port": pf.Port})
	m := e2eMessage("sender@example.net", "carol@example.org")
	got := deliverVia(t, p, m)
	if got["carol@example.org"] != nil {
		t.Fatalf("carol@example.org: %v", got["carol@example.org"])
	}
	files := pf.WaitMessages(t, 1, 10*time.Second)
	wantMaildirMessage(t, files[0], m)
	if !strings.Contains(pf.Log(), "TLS connection established") {
		t.Fatalf("tls: may did not use the STARTTLS Postfix offers:\n%s", pf.Log())
	}
}

func TestPluginNullMXAndMissingDomainAreDistinguished(t *testing.T) {
	dns := peers.Dnsmasq(t, peers.DNSRecords{
		MX:    []peers.MX{{Domain: "null.example.org", Host: ".", Pref: 0}},
		Zones: []string{"example.org"},
	})
	p := startPlugin(t, map[string]any{"resolver": dns.Addr})
	got := deliverVia(t, p, e2eMessage("s@example.net", "a@null.example.org", "b@gone.example.org", "c@outside.test"))
	for _, c := range []struct {
		rcpt      string
		temporary bool
		code      int
		enh       string
	}{
		{"a@null.example.org", false, 556, "5.1.10"},
		{"b@gone.example.org", false, 550, "5.1.2"},
		{"c@outside.test", true, 451, "4.4.3"}, // dnsmasq REFUSED: the lookup failed, retry
	} {
		e := sdk.AsError(got[c.rcpt])
		if e == nil || e.Temporary != c.temporary || e.SMTPCode() != c.code || e.EnhancedCode() != c.enh {
			t.Errorf("%s: got %v, want temporary=%v %d %s", c.rcpt, got[c.rcpt], c.temporary, c.code, c.enh)
		}
	}
}

func TestPluginReportsPostfixRelayDenialPerRecipient(t *testing.T) {
	pf := peers.Postfix(t)
	p := startPlugin(t, map[string]any{"relay_host": pf.Addr})
	m := e2eMessage("s@example.org", "ok@example.net", "other@unrelated.test")
	got := deliverVia(t, p, m)
	if got["ok@example.net"] != nil {
		t.Fatalf("ok@example.net: %v", got["ok@example.net"])
	}
	e := sdk.AsError(got["other@unrelated.test"])
	if e == nil || e.Temporary || e.SMTPCode() != 554 || e.EnhancedCode() != "5.7.1" {
		t.Fatalf("other@unrelated.test: want permanent 554 5.7.1 (relay access denied), got %v", e)
	}
	if strings.Contains(e.Error(), "@") {
		t.Fatalf("error carries an address: %q", e.Error())
	}
	files := pf.WaitMessages(t, 1, 10*time.Second)
	time.Sleep(200 * time.Millisecond)
	if files = pf.Messages(); len(files) != 1 {
		t.Fatalf("%d messages delivered, want 1", len(files))
	}
}

func TestPluginNothingListeningIsTemporary(t *testing.T) {
	port := peers.FreePort(t)
	p := startPlugin(t, map[string]any{"relay_host": net.JoinHostPort("127.0.0.1", strconv.Itoa(port))})
	got := deliverVia(t, p, e2eMessage("s@example.org", "a@example.net"))
	e := sdk.AsError(got["a@example.net"])
	if e == nil || !e.Temporary || e.EnhancedCode() != "4.4.1" {
		t.Fatalf("want temporary 4.4.1, got %v", got["a@example.net"])
	}
}

func TestPluginReusesOneConnectionForSuccessiveMessages(t *testing.T) {
	pf := peers.Postfix(t)
	p := startPlugin(t, map[string]any{"relay_host": pf.Addr, "tls": "require"})
	for i := 0; i < 3; i++ {
		got := deliverVia(t, p, e2eMessage("s@example.org", "a@example.net"))
		if got["a@example.net"] != nil {
			t.Fatalf("message %d: %v", i, got["a@example.net"])
		}
	}
	pf.WaitMessages(t, 3, 10*time.Second)
	log := pf.Log()
	if n := strings.Count(log, ": connect from localhost"); n != 1 {
		t.Fatalf("Postfix saw %d connections for 3 messages, want 1:\n%s", n, log)
	}
	if n := strings.Count(log, "TLS connection established"); n != 1 {
		t.Fatalf("Postfix saw %d TLS handshakes, want 1", n)
	}
}

func TestPluginRefuses8BitMessageToServerWithout8BITMIME(t *testing.T) {
	sink := peers.SmtpSink(t, "-8")
	p := startPlugin(t, map[string]any{"relay_host": sink.Addr})
	got := deliverVia(t, p, e2eMessage("s@example.org", "a@example.net"))
	e := sdk.AsError(got["a@example.net"])
	if e == nil || e.Temporary || e.EnhancedCode() != "5.6.3" {
		t.Fatalf("want permanent 5.6.3, got %v", got["a@example.net"])
	}
	// A 7-bit message goes through, and smtp-sink records its envelope.
	m := testMessage("s@example.org", "a@example.net", "b@example.net")
	got = deliverVia(t, p, m)
	if got["a@example.net"] != nil || got["b@example.net"] != nil {
		t.Fatalf("7-bit message: %v", got)
	}
	if !sink.WaitCount(1, 5*time.Second) {
		t.Fatalf("smtp-sink got no message")
	}
	ms, err := sink.Messages()
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) != 1 || ms[0].MailFrom() != "s@example.org" || strings.Join(ms[0].RcptTo(), ",") != "a@example.net,b@example.net" {
		t.Fatalf("sink envelope %+v", ms)
	}
	if want := lf(append(append([]byte(nil), m.Header...), m.Body...)); !bytes.Equal(ms[0].Data, want) {
		t.Fatalf("sink data\n%q\nwant\n%q", ms[0].Data, want)
	}
}

func TestPluginSoftRejectsAreTemporaryPerRecipient(t *testing.T) {
	sink := peers.SmtpSink(t, "-r", "RCPT")
	p := startPlugin(t, map[string]any{"relay_host": sink.Addr})
	got := deliverVia(t, p, testMessage("s@example.org", "a@example.net", "b@example.net"))
	for _, r := range []string{"a@example.net", "b@example.net"} {
		e := sdk.AsError(got[r])
		if e == nil || !e.Temporary || e.SMTPCode()/100 != 4 {
			t.Fatalf("%s: want a temporary 4xx, got %v", r, got[r])
		}
	}
	// smtp-sink creates its dump file at MAIL FROM and removes it when the
	// transaction is aborted (our RSET).
	if n := sink.Count(); n != 0 {
		t.Fatalf("sink stored %d messages, want 0", n)
	}
}

func TestPluginConfigErrorsNameTheKeyThroughTheHost(t *testing.T) {
	_, err := plugintest.StartErr(t, pluginBinary(t), `{"tls":"sometimes"}`)
	var fe *sdk.FieldError
	if !errors.As(err, &fe) || fe.Field != "tls" {
		t.Fatalf("want a config error on key tls, got %v", err)
	}
}

// TestDelivererConformance runs the SDK's delivery-stage contract on the
// plugin through the real host, relaying to a real smtp-sink.
func TestDelivererConformance(t *testing.T) {
	sink := peers.SmtpSink(t)
	plugintest.DelivererSuite{
		Good: []string{"a@example.net", "b@example.net"},
		New: func(t *testing.T) sdk.Deliverer {
			p := startPlugin(t, map[string]any{"relay_host": sink.Addr})
			plugintest.CheckInfo(t, p.Info(), sdk.KindDeliverer)
			return p
		},
	}.Run(t)
}
