package peers

import (
	"net"
	"net/textproto"
	"os"
	"strings"
	"testing"
	"time"
)

func TestDovecotLMTPRepliesPerRecipient(t *testing.T) {
	start := time.Now()
	p := Dovecot(t, DovecotConfig{Deny: []string{"reject@example.net"}})
	t.Logf("dovecot ready in %s at %s and %s", time.Since(start), p.Addr, p.Socket)
	conn, err := net.DialTimeout("unix", p.Socket, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(20 * time.Second))
	c := textproto.NewConn(conn)
	expect := func(code int) string {
		t.Helper()
		_, msg, err := c.ReadResponse(code)
		if err != nil {
			t.Fatalf("want %d: %v", code, err)
		}
		return msg
	}
	expect(220)
	c.PrintfLine("LHLO test.invalid")
	if ext := expect(250); !strings.Contains(ext, "PIPELINING") {
		t.Fatalf("LHLO reply %q", ext)
	}
	c.PrintfLine("MAIL FROM:<a@example.org>")
	expect(250)
	c.PrintfLine("RCPT TO:<bob@example.net>")
	expect(250)
	c.PrintfLine("RCPT TO:<reject@example.net>")
	if _, _, err := c.ReadResponse(250); err == nil || !strings.HasPrefix(err.Error(), "550") {
		t.Fatalf("denied recipient: want 550, got %v", err)
	}
	c.PrintfLine("DATA")
	expect(354)
	c.PrintfLine("Subject: peer test\r\n\r\n..leading dot\r\n.")
	if msg := expect(250); !strings.Contains(msg, "bob@example.net") {
		t.Fatalf("final reply %q does not name the accepted recipient", msg)
	}
	c.PrintfLine("QUIT")
	files := p.Messages("bob@example.net")
	if len(files) != 1 {
		t.Fatalf("bob's Maildir has %d messages, want 1", len(files))
	}
	b, _ := os.ReadFile(files[0])
	if !strings.HasSuffix(string(b), "\n.leading dot\n") {
		t.Fatalf("stored message:\n%s", b)
	}
	if n := len(p.Messages("reject@example.net")); n != 0 {
		t.Fatalf("denied recipient got %d messages", n)
	}
}
