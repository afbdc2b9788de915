package smtpd

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/mixmta/mixmta/core/internal/config"
	"github.com/mixmta/mixmta/sdk"
)

// TestDataTimeoutEndsSessionNoSmuggledMessage: a client stalls in the
// middle of DATA past the read timeout, then sends the rest of the body,
// which holds a complete second transaction. The server answers 421 4.4.2
// without Go error text and closes; the rest is never read as commands.
func TestDataTimeoutEndsSessionNoSmuggledMessage(t *testing.T) {
	s, sink := startServer(t, testListener(func(l *config.Listener) { l.ReadTimeout = sdk.Duration(time.Second) }))
	c := dial(t, s, "").hello()
	c.expect("MAIL FROM:<a@example.org>", "250")
	c.expect("RCPT TO:<b@example.net>", "250")
	c.expect("DATA", "354")
	fmt.Fprint(c.c, "Subject: first\r\n\r\nhalf a bo")
	time.Sleep(1500 * time.Millisecond)
	fmt.Fprint(c.c, "dy\r\n.\r\nMAIL FROM:<spoof@example.org>\r\nRCPT TO:<b@example.net>\r\nDATA\r\nSubject: smuggled\r\n\r\nsmuggled\r\n.\r\n")
	got := c.expect("", "421 4.4.2")
	if strings.Contains(got, "127.0.0.1") || strings.Contains(got, "i/o") || strings.Contains(got, "tcp") {
		t.Errorf("reply carries internal details: %q", got)
	}
	if !c.closed(5 * time.Second) {
		t.Error("session still open after the DATA timeout")
	}
	if n := len(sink.all()); n != 0 {
		t.Errorf("%d messages accepted, want 0", n)
	}
}

// TestBareLineEndsRefusedAndNeverStored: the SMTP smuggling separators of
// CVE-2023-51764/51765/51766 and other bare CR/LF forms in DATA are
// refused (554 5.5.2, session closed); nothing is stored, and a clean
// message with dots and CRLF around the header/body boundary is stored
// byte for byte.
func TestBareLineEndsRefusedAndNeverStored(t *testing.T) {
	s, sink := startServer(t, testListener(nil))
	const smuggled = "MAIL FROM:<spoof@example.org>\r\nRCPT TO:<b@example.net>\r\nDATA\r\nSubject: smuggled\r\n\r\nsmuggled"
	for _, sep := range smugglingSeparators {
		t.Run(fmt.Sprintf("%q", sep), func(t *testing.T) {
			c := dial(t, s, "").hello()
			c.expect("MAIL FROM:<a@example.org>", "250")
			c.expect("RCPT TO:<b@example.net>", "250")
			c.expect("DATA", "354")
			fmt.Fprint(c.c, "Subject: first\r\n\r\nbody"+sep+smuggled+"\r\n.\r\n")
			c.expect("", "554 5.5.2")
			if !c.closed(5 * time.Second) {
				t.Error("session still open")
			}
		})
	}
	if n := len(sink.all()); n != 0 {
		t.Fatalf("%d messages stored, want 0: %+v", n, sink.all())
	}
	c := dial(t, s, "").hello()
	c.expect("MAIL FROM:<a@example.org>", "250")
	c.expect("RCPT TO:<b@example.net>", "250")
	c.expect("DATA", "354")
	fmt.Fprint(c.c, "Subject: clean\r\n\r\n..leading dot\r\n.\r\n")
	c.expect("", "250")
	msgs := sink.all()
	if len(msgs) != 1 || string(msgs[0].header) != "Subject: clean\r\n\r\n" || string(msgs[0].body) != ".leading dot\r\n" {
		t.Fatalf("stored %+v, want the clean message", msgs)
	}
}

// smugglingSeparators end a message for a lenient MTA but not for RFC
// 5321; each hides a second transaction (SEC Consult's SMTP smuggling
// research, Postfix's smtp-smuggling page).
var smugglingSeparators = []string{
	"\n.\n",   // LF.LF
	"\n.\r\n", // LF.CRLF (CVE-2023-51764, Postfix)
	"\r\n.\n", // CRLF.LF
	"\r.\r\n", // CR.CRLF
	"\r\n.\r", // CRLF.CR: go-smtp drops ".\r"
	"\n..\n",  // LF..LF
	"\r\n.\r\r\n",
}

// TestPerClientSessionCap: one source address cannot hold more than
// max_sessions_per_client sessions; others still get in, and a closed
// session frees its slot.
func TestPerClientSessionCap(t *testing.T) {
	s, _ := startServer(t, testListener(func(l *config.Listener) { l.MaxSessionsPerClient = 3 }))
	var held []*client
	for i := 0; i < 3; i++ {
		c := dial(t, s, "127.0.0.2")
		c.expect("", "220")
		held = append(held, c)
	}
	dial(t, s, "127.0.0.2").expect("", "421 4.7.0")
	dial(t, s, "127.0.0.3").expect("", "220")
	held[0].expect("QUIT", "221")
	deadline := time.Now().Add(10 * time.Second)
	for {
		c := dial(t, s, "127.0.0.2")
		got, _ := c.reply()
		if strings.HasPrefix(got, "220") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("slot not freed after QUIT: %q", got)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestSessionTimeLimitEndsABusySession: a client that keeps its session
// alive with NOOPs well inside the read timeout is still closed at
// max_session_time.
func TestSessionTimeLimitEndsABusySession(t *testing.T) {
	s, _ := startServer(t, testListener(func(l *config.Listener) {
		l.ReadTimeout = sdk.Duration(time.Second)
		l.MaxSessionTime = sdk.Duration(2 * time.Second)
	}))
	c := dial(t, s, "").hello()
	start := time.Now()
	for time.Since(start) < 10*time.Second {
		fmt.Fprint(c.c, "NOOP\r\n")
		got, err := c.reply()
		if err != nil || !strings.HasPrefix(got, "250") {
			if el := time.Since(start); el < 1500*time.Millisecond {
				t.Fatalf("closed after %v, before max_session_time: %q %v", el, got, err)
			}
			if !strings.HasPrefix(got, "421 4.4.2") {
				t.Errorf("last reply %q, want 421 4.4.2", got)
			}
			return
		}
		time.Sleep(300 * time.Millisecond)
	}
	t.Fatal("session alive 10 s after a 2 s max_session_time")
}

// TestJunkAndErrorLimitsEndTheSession: NOOP/RSET/VRFY beyond
// max_junk_commands and error replies beyond max_errors get 421 4.7.0
// and the session ends; an accepted message starts the counts afresh.
func TestJunkAndErrorLimitsEndTheSession(t *testing.T) {
	s, _ := startServer(t, testListener(func(l *config.Listener) {
		l.MaxJunkCommands = 5
		l.MaxErrors = 3
	}))
	c := dial(t, s, "").hello()
	for _, cmd := range []string{"NOOP", "RSET", "VRFY postmaster", "NOOP", "RSET"} {
		c.expect(cmd, "25")
	}
	c.expect("NOOP", "250")
	c.expect("", "421 4.7.0")
	if !c.closed(5 * time.Second) {
		t.Error("session open past max_junk_commands")
	}

	// An MTA reusing its connection sends RSET between messages: the
	// counts start afresh after each accepted message.
	c = dial(t, s, "").hello()
	for i := 0; i < 3; i++ {
		for j := 0; j < 5; j++ {
			c.expect("RSET", "250")
		}
		c.expect("MAIL FROM:<a@example.org>", "250")
		c.expect("RCPT TO:<b@example.net>", "250")
		c.expect("DATA", "354")
		fmt.Fprint(c.c, "Subject: reuse\r\n\r\nbody\r\n.\r\n")
		c.expect("", "250")
	}

	c = dial(t, s, "").hello()
	c.expect("MAIL FROM:<a@example.org>", "250")
	for i := 0; i < 3; i++ {
		c.expect("RCPT TO:<x@elsewhere.example>", "550 5.7.1")
	}
	c.expect("RCPT TO:<x@elsewhere.example>", "550 5.7.1")
	c.expect("", "421 4.7.0")
	if !c.closed(5 * time.Second) {
		t.Error("session open past max_errors")
	}
}

// TestMinDataRate: a message sent steadily faster than min_data_rate may
// take longer than read_timeout; one trickled slower is cut with 421
// 4.4.2 and nothing is stored.
func TestMinDataRate(t *testing.T) {
	s, sink := startServer(t, testListener(func(l *config.Listener) {
		l.ReadTimeout = sdk.Duration(time.Second)
		l.MinDataRate = 1000
	}))
	send := func(chunk string, every time.Duration, n int) *client {
		c := dial(t, s, "").hello()
		c.expect("MAIL FROM:<a@example.org>", "250")
		c.expect("RCPT TO:<b@example.net>", "250")
		c.expect("DATA", "354")
		go func() {
			fmt.Fprint(c.c, "Subject: rate\r\n\r\n")
			for i := 0; i < n; i++ {
				if _, err := fmt.Fprint(c.c, chunk); err != nil {
					return
				}
				time.Sleep(every)
			}
			fmt.Fprint(c.c, ".\r\n")
		}()
		return c
	}
	// 3 s at about 4000 bytes/s, three times read_timeout.
	send(strings.Repeat("x", 398)+"\r\n", 100*time.Millisecond, 30).expect("", "250")
	// 10 bytes every 300 ms: 33 bytes/s.
	start := time.Now()
	c := send("slowly..\r\n", 300*time.Millisecond, 20)
	c.expect("", "421 4.4.2")
	if el := time.Since(start); el > 3*time.Second {
		t.Errorf("slow DATA cut after %v, want about read_timeout (1 s)", el)
	}
	if n := len(sink.all()); n != 1 {
		t.Errorf("%d messages stored, want only the steady one", n)
	}
}
