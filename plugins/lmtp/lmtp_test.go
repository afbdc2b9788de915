package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/mixmta/mixmta/sdk"
)

func newTestLMTP(t *testing.T, address string) *lmtp {
	t.Helper()
	c, err := sdk.DecodeConfig(defaults, []byte(fmt.Sprintf(`{"address":%q,"timeout":"5s"}`, address)))
	if err != nil {
		t.Fatal(err)
	}
	return newLMTP(c, nil)
}

// results runs Deliver and returns the result per recipient, failing
// unless there is exactly one result per distinct recipient.
func results(t *testing.T, l *lmtp, m *sdk.Message) map[string]*sdk.Error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	res, err := l.Deliver(ctx, m)
	if err != nil {
		t.Fatalf("Deliver returned %v, want per-recipient results", err)
	}
	got := map[string]*sdk.Error{}
	for _, r := range res {
		if _, dup := got[r.Rcpt]; dup {
			t.Fatalf("two results for %s", r.Rcpt)
		}
		got[r.Rcpt] = sdk.AsError(r.Err)
	}
	distinct := map[string]bool{}
	for _, r := range m.Envelope.RcptTo {
		distinct[r] = true
	}
	if len(got) != len(distinct) {
		t.Fatalf("%d results for %d distinct recipients: %v", len(got), len(distinct), got)
	}
	return got
}

func wantErr(t *testing.T, rcpt string, e *sdk.Error, temporary bool, code int, enhanced string) {
	t.Helper()
	if e == nil || e.Temporary != temporary || e.SMTPCode() != code || e.EnhancedCode() != enhanced {
		t.Fatalf("%s: want temporary=%v %d %s, got %v", rcpt, temporary, code, enhanced, e)
	}
	if strings.Contains(e.Message, "@") {
		t.Fatalf("%s: error text names an address: %q", rcpt, e.Message)
	}
}

func TestEachRecipientGetsItsOwnReplyCode(t *testing.T) {
	s := &scriptedLMTP{
		reply: map[string]string{
			"RCPT full@example.net":    "452 4.2.2 <full@example.net> Mailbox full",
			"RCPT unknown@example.net": "550 5.1.1 <unknown@example.net> User doesn't exist",
		},
		afterData: []string{"250 2.0.0 <a@example.net> Saved", "552 5.2.2 <b@example.net> Quota exceeded", "451 4.3.0 <c@example.net> Try again"},
	}
	l := newTestLMTP(t, s.start(t))
	got := results(t, l, loadMessage(t, "a@example.net", "full@example.net", "b@example.net", "unknown@example.net", "c@example.net", "a@example.net"))
	if got["a@example.net"] != nil {
		t.Fatalf("a: %v", got["a@example.net"])
	}
	wantErr(t, "full", got["full@example.net"], true, 452, "4.2.2")
	wantErr(t, "unknown", got["unknown@example.net"], false, 550, "5.1.1")
	wantErr(t, "b", got["b@example.net"], false, 552, "5.2.2")
	wantErr(t, "c", got["c@example.net"], true, 451, "4.3.0")
	cmds := <-s.got
	if n := strings.Count(strings.Join(cmds, "\n"), "RCPT TO:<a@example.net>"); n != 1 {
		t.Fatalf("a duplicate recipient was sent %d times: %q", n, cmds)
	}
	if cmds[1] != "MAIL FROM:<>" {
		t.Fatalf("MAIL FROM line %q, want the null sender", cmds[1])
	}
}

func TestConnectionLostBeforeAllRepliesIsTemporaryForTheRest(t *testing.T) {
	s := &scriptedLMTP{afterData: []string{"250 2.0.0 <a@example.net> Saved"}, close: true}
	l := newTestLMTP(t, s.start(t))
	got := results(t, l, loadMessage(t, "a@example.net", "b@example.net"))
	if got["a@example.net"] != nil {
		t.Fatalf("a got its 250 and must count as delivered: %v", got["a@example.net"])
	}
	wantErr(t, "b", got["b@example.net"], true, 451, "4.4.2")
}

func TestConnectionLostAfterARefusalLeavesTheRestTemporary(t *testing.T) {
	s := &scriptedLMTP{afterData: []string{"552 5.2.2 <a@example.net> Quota exceeded"}, close: true}
	l := newTestLMTP(t, s.start(t))
	got := results(t, l, loadMessage(t, "a@example.net", "b@example.net"))
	wantErr(t, "a", got["a@example.net"], false, 552, "5.2.2")
	wantErr(t, "b", got["b@example.net"], true, 451, "4.4.2")
}

func TestNoRecipientAcceptedSendsNoData(t *testing.T) {
	s := &scriptedLMTP{reply: map[string]string{"RCPT a@example.net": "550 5.1.1 no"}}
	l := newTestLMTP(t, s.start(t))
	got := results(t, l, loadMessage(t, "a@example.net"))
	wantErr(t, "a", got["a@example.net"], false, 550, "5.1.1")
	for _, c := range <-s.got {
		if c == "DATA" {
			t.Fatal("DATA sent without an accepted recipient")
		}
	}
}

func TestRefusalsBeforeRecipientsApplyToAll(t *testing.T) {
	cases := []struct {
		name, key, reply string
		temporary        bool
		code             int
		enhanced         string
	}{
		{"MAIL 5xx is permanent", "MAIL", "553 5.1.7 bad sender", false, 553, "5.1.7"},
		{"MAIL 4xx is temporary", "MAIL", "421 4.3.2 shutting down", true, 421, "4.3.2"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := &scriptedLMTP{reply: map[string]string{c.key: c.reply}}
			l := newTestLMTP(t, s.start(t))
			got := results(t, l, loadMessage(t, "a@example.net", "b@example.net"))
			for _, r := range []string{"a@example.net", "b@example.net"} {
				wantErr(t, r, got[r], c.temporary, c.code, c.enhanced)
			}
		})
	}
}

func TestUnreachableServerIsTemporary(t *testing.T) {
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := ln.Addr().String()
	ln.Close()
	got := results(t, newTestLMTP(t, addr), loadMessage(t, "a@example.net"))
	wantErr(t, "a", got["a@example.net"], true, 451, "4.4.1")
	got = results(t, newTestLMTP(t, "/nonexistent/lmtp.sock"), loadMessage(t, "a@example.net"))
	wantErr(t, "a", got["a@example.net"], true, 451, "4.4.1")
}

func TestSilentServerTimesOutAsTemporary(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			defer c.Close()
			time.Sleep(10 * time.Second) // never greets
		}
	}()
	c, _ := sdk.DecodeConfig(defaults, []byte(fmt.Sprintf(`{"address":%q,"timeout":"300ms"}`, ln.Addr().String())))
	got := results(t, newLMTP(c, nil), loadMessage(t, "a@example.net"))
	wantErr(t, "a", got["a@example.net"], true, 451, "4.4.2")
}

func TestConfigValidationNamesTheKey(t *testing.T) {
	cases := []struct{ json, key string }{
		{`{"address":"/run/dovecot/lmtp"}`, ""},
		{`{"address":"unix:/run/dovecot/lmtp"}`, ""},
		{`{"address":"127.0.0.1:24"}`, ""},
		{`{"address":"[::1]:24"}`, ""},
		{`{}`, "address"},
		{`{"address":"unix:relative/sock"}`, "address"},
		{`{"address":"localhost"}`, "address"},
		{`{"address":"127.0.0.1:0"}`, "address"},
		{`{"address":"127.0.0.1:24","lhlo_name":"two words"}`, "lhlo_name"},
		{`{"address":"127.0.0.1:24","timeout":"0s"}`, "timeout"},
		{`{"address":"127.0.0.1:24","connect_timeout":"0s"}`, "connect_timeout"},
	}
	for _, c := range cases {
		_, err := sdk.DecodeConfig(defaults, []byte(c.json))
		var fe *sdk.FieldError
		if c.key == "" && err != nil || c.key != "" && (!errors.As(err, &fe) || fe.Field != c.key) {
			t.Errorf("%s: want error on %q, got %v", c.json, c.key, err)
		}
	}
}

func TestSMTPUTF8EnvelopeWithoutServerSupport(t *testing.T) {
	// ASCII addresses: delivered without the SMTPUTF8 parameter.
	s := &scriptedLMTP{afterData: []string{"250 2.0.0 ok"}}
	m := loadMessage(t, "a@example.net")
	m.Envelope.SMTPUTF8 = true
	got := results(t, newTestLMTP(t, s.start(t)), m)
	if got["a@example.net"] != nil {
		t.Fatalf("ASCII envelope: %v", got["a@example.net"])
	}
	if cmds := <-s.got; strings.Contains(strings.Join(cmds, "\n"), "SMTPUTF8") {
		t.Fatalf("SMTPUTF8 sent to a server that does not offer it: %q", cmds)
	}
	// A non-ASCII address cannot go: permanent 553 5.6.7, nothing sent.
	s = &scriptedLMTP{}
	m = loadMessage(t, "jörg@example.net")
	m.Envelope.SMTPUTF8 = true
	got = results(t, newTestLMTP(t, s.start(t)), m)
	wantErr(t, "jörg", got["jörg@example.net"], false, 553, "5.6.7")
	for _, c := range <-s.got {
		if strings.HasPrefix(c, "MAIL") {
			t.Fatalf("MAIL FROM sent for an address the server cannot take: %q", c)
		}
	}
}
