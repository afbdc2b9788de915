package main

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/hashicorp/go-hclog"

	"github.com/mixmta/mixmta/sdk"
)

func newTestStage(t *testing.T, level hclog.Level, mutate func(*Config)) (*stage, *bytes.Buffer) {
	t.Helper()
	var logs bytes.Buffer
	v, err := newStage(testConfig(t, mutate), sdk.Env{Stage: "sanitize", Logger: hclog.New(&hclog.LoggerOptions{Level: level, Output: &logs})})
	if err != nil {
		t.Fatal(err)
	}
	return v.(*stage), &logs
}

var stageHeader = crlf("From: Alice LEAK-VALUE <alice@example.org>\nX-Secret-LEAKNAME: LEAK-VALUE2\nTo: bob@example.net\nSubject: LEAK-SUBJECT\n\n")

func TestTransformSetsNullEnvelopeSenderByDefault(t *testing.T) {
	st, _ := newTestStage(t, hclog.Info, nil)
	ch, err := st.Transform(context.Background(), &sdk.Message{
		ID: "00112233445566778899aabbccddeeff", Header: []byte(stageHeader),
		Envelope: sdk.Envelope{MailFrom: "alice.LEAK@example.org", RcptTo: []string{"bob@example.net"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if ch.MailFrom == nil || *ch.MailFrom != "" {
		t.Fatalf("want MAIL FROM replaced by the null reverse-path, got %v", ch.MailFrom)
	}
	if ch.Body != nil {
		t.Fatalf("want the body untouched (nil), got %d bytes", len(ch.Body))
	}
	if bytes.Contains(ch.Header, []byte("LEAK-VALUE")) || !bytes.HasSuffix(ch.Header, []byte("\r\n\r\n")) {
		t.Fatalf("bad header:\n%s", ch.Header)
	}
}

func TestTransformSetsConfiguredEnvelopeSender(t *testing.T) {
	st, _ := newTestStage(t, hclog.Info, func(c *Config) { c.EnvelopeSender = "bounces@mix.example.org" })
	ch, err := st.Transform(context.Background(), &sdk.Message{Header: []byte(stageHeader), Envelope: sdk.Envelope{MailFrom: "alice@example.org"}})
	if err != nil {
		t.Fatal(err)
	}
	if ch.MailFrom == nil || *ch.MailFrom != "bounces@mix.example.org" {
		t.Fatalf("want MAIL FROM bounces@mix.example.org, got %v", ch.MailFrom)
	}
}

func TestTransformLogsOnlyCountsAtInfo(t *testing.T) {
	st, logs := newTestStage(t, hclog.Info, nil)
	if _, err := st.Transform(context.Background(), &sdk.Message{ID: "abc123", Header: []byte(stageHeader)}); err != nil {
		t.Fatal(err)
	}
	out := logs.String()
	if !strings.Contains(out, "[SANITIZE] dropped 2 fields") {
		t.Fatalf("want an Info line \"[SANITIZE] dropped 2 fields\", got:\n%s", out)
	}
	for _, secret := range []string{"LEAK", "alice", "bob", "abc123"} {
		if strings.Contains(out, secret) {
			t.Fatalf("Info log carries %q:\n%s", secret, out)
		}
	}
}

func TestTransformLogsNamesButNeverValuesAtDebug(t *testing.T) {
	st, logs := newTestStage(t, hclog.Debug, nil)
	if _, err := st.Transform(context.Background(), &sdk.Message{ID: "abc123", Header: []byte(stageHeader)}); err != nil {
		t.Fatal(err)
	}
	out := logs.String()
	if !strings.Contains(out, "X-Secret-LEAKNAME") {
		t.Fatalf("want dropped field names at Debug, got:\n%s", out)
	}
	for _, secret := range []string{"LEAK-VALUE", "LEAK-SUBJECT", "alice", "bob@"} {
		if strings.Contains(out, secret) {
			t.Fatalf("Debug log carries the value %q:\n%s", secret, out)
		}
	}
}

func TestTransformRandomFailureIsTemporary(t *testing.T) {
	st, _ := newTestStage(t, hclog.Info, nil)
	st.s.rand = failingReader{}
	_, err := st.Transform(context.Background(), &sdk.Message{Header: []byte(stageHeader)})
	e := sdk.AsError(err)
	if e == nil || !e.Temporary || !strings.Contains(e.Message, "sanitize") {
		t.Fatalf("want a temporary error naming the plugin, got %v", err)
	}
}
