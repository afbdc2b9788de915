package main

import (
	"bytes"
	"strings"
	"testing"

	"github.com/mixmta/mixmta/sdk"
)

// FuzzBuildArticle: any header section, body and recipient either becomes
// an article with the mandatory fields and our Path, or a permanent
// refusal; never a panic, never a temporary error (the message itself
// cannot get better by waiting).
func FuzzBuildArticle(f *testing.F) {
	f.Add("Newsgroups: alt.test\r\nSubject: s\r\n\r\n", ".x\r\n", "mail2news@gw.test")
	f.Add("Subject: s\r\n folded\r\nControl: x\r\n\r\n", "", "mail2news-20260310-alt.test=b.c@gw.test")
	f.Add("Newsgroups: ,,,\r\nDate: Mon, 1 Jan 3000 00:00:00 +0000\r\n\r\n", "b", "x@y")
	f.Add("no colon\r\n\r\n", "", "mail2news-99999999-a.b@gw")
	f.Add("Newsgroups: a.b\r\nMessage-ID: <a@b@c>\r\nFrom:\r\n\r\n", "\r\n.\r\n", "")
	f.Fuzz(func(t *testing.T, header, body, rcpt string) {
		g := testGateway(t, nil)
		m := &sdk.Message{ID: "f", Envelope: sdk.Envelope{RcptTo: []string{rcpt}}, Header: []byte(header), Body: []byte(body), Size: int64(len(header) + len(body))}
		a, err := g.buildArticle(m, testNow)
		if err != nil {
			if !sdk.IsPermanent(err) {
				t.Fatalf("temporary error %v", err)
			}
			return
		}
		h := "\r\n" + strings.ToLower(string(a.Header))
		for _, f := range []string{"date", "from", "message-id", "newsgroups", "path", "subject"} {
			if !strings.Contains(h, "\r\n"+f+":") {
				t.Fatalf("mandatory %s missing:\n%s", f, a.Header)
			}
		}
		if !validMessageID(a.MessageID) || len(a.Groups) == 0 || len(a.Groups) > g.cfg.MaxGroups {
			t.Fatalf("article %q with groups %v", a.MessageID, a.Groups)
		}
		if !bytes.Equal(a.Body, m.Body) {
			t.Fatal("body changed")
		}
	})
}
