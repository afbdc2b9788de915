package smtpd

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/mixmta/mixmta/core/internal/config"
	"github.com/mixmta/mixmta/core/internal/stats"
	"github.com/mixmta/mixmta/internal/pluginclient"
	"github.com/mixmta/mixmta/sdk"
)

// TestDataTimeoutEndsSessionNoSmuggledMessage: a client stalls in the
// middle of DATA past the read timeout, then sends the rest of the body,
// which holds a complete second transaction. The server answers 421 4.4.2
// without Go error text and closes; the rest is never read as commands.
func TestDataTimeoutEndsSessionNoSmuggledMessage(t *testing.T) {
	s, sink := startServer(t, withTLS(t, testListener(func(l *config.Listener) { l.ReadTimeout = sdk.Duration(time.Second) })))
	for _, mode := range modes {
		t.Run(mode, func(t *testing.T) {
			c := open(t, s, mode)
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
		})
	}
}

// TestBareLineEndsRefusedAndNeverStored: the SMTP smuggling separators of
// CVE-2023-51764/51765/51766 and other bare CR/LF forms in DATA are
// refused (554 5.5.2, session closed); nothing is stored, and a clean
// message with dots and CRLF around the header/body boundary is stored
// byte for byte.
func TestBareLineEndsRefusedAndNeverStored(t *testing.T) {
	s, sink := startServer(t, withTLS(t, testListener(nil)))
	const smuggled = "MAIL FROM:<spoof@example.org>\r\nRCPT TO:<b@example.net>\r\nDATA\r\nSubject: smuggled\r\n\r\nsmuggled"
	for _, mode := range modes {
		t.Run(mode, func(t *testing.T) {
			sink.reset()
			for _, sep := range smugglingSeparators {
				t.Run(fmt.Sprintf("%q", sep), func(t *testing.T) {
					c := open(t, s, mode)
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
			c := open(t, s, mode)
			c.expect("MAIL FROM:<a@example.org>", "250")
			c.expect("RCPT TO:<b@example.net>", "250")
			c.expect("DATA", "354")
			fmt.Fprint(c.c, "Subject: clean\r\n\r\n..leading dot\r\n.\r\n")
			c.expect("", "250")
			msgs := sink.all()
			if len(msgs) != 1 || string(msgs[0].header) != "Subject: clean\r\n\r\n" || string(msgs[0].body) != ".leading dot\r\n" {
				t.Fatalf("stored %+v, want the clean message", msgs)
			}
		})
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
	s, _ := startServer(t, withTLS(t, testListener(func(l *config.Listener) {
		l.ReadTimeout = sdk.Duration(time.Second)
		l.MaxSessionTime = sdk.Duration(2 * time.Second)
	})))
	for _, mode := range modes {
		t.Run(mode, func(t *testing.T) {
			start := time.Now()
			c := open(t, s, mode)
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
		})
	}
}

// TestJunkAndErrorLimitsEndTheSession: NOOP/RSET/VRFY beyond
// max_junk_commands and error replies beyond max_errors get 421 4.7.0
// and the session ends; an accepted message starts the counts afresh.
func TestJunkAndErrorLimitsEndTheSession(t *testing.T) {
	s, _ := startServer(t, withTLS(t, testListener(func(l *config.Listener) {
		l.MaxJunkCommands = 5
		l.MaxErrors = 3
	})))
	for _, mode := range modes {
		t.Run(mode, func(t *testing.T) {
			c := open(t, s, mode)
			for _, cmd := range []string{"NOOP", "RSET", "VRFY postmaster", "NOOP", "RSET"} {
				c.expect(cmd, "25")
			}
			c.expect("NOOP", "250")
			c.expect("", "421 4.7.0")
			if !c.closed(5 * time.Second) {
				t.Error("session open past max_junk_commands")
			}

			// An MTA reusing its connection sends RSET between messages:
			// the counts start afresh after each accepted message.
			c = open(t, s, mode)
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

			c = open(t, s, mode)
			c.expect("MAIL FROM:<a@example.org>", "250")
			for i := 0; i < 3; i++ {
				c.expect("RCPT TO:<x@elsewhere.example>", "550 5.7.1")
			}
			c.expect("RCPT TO:<x@elsewhere.example>", "550 5.7.1")
			c.expect("", "421 4.7.0")
			if !c.closed(5 * time.Second) {
				t.Error("session open past max_errors")
			}
		})
	}
}

// TestMinDataRate: a message sent steadily faster than min_data_rate may
// take longer than read_timeout; one trickled slower is cut with 421
// 4.4.2 and nothing is stored.
func TestMinDataRate(t *testing.T) {
	s, sink := startServer(t, withTLS(t, testListener(func(l *config.Listener) {
		l.ReadTimeout = sdk.Duration(time.Second)
		l.MinDataRate = 1000
	})))
	for _, mode := range modes {
		t.Run(mode, func(t *testing.T) {
			sink.reset()
			send := func(chunk string, every time.Duration, n int) *client {
				c := open(t, s, mode)
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
		})
	}
}

// TestPerClientLimitsGroupAnIPv6Slash64: a client given an IPv6 /64 (the
// usual assignment to one host or site) cannot multiply the per-client
// session cap or rate limit by using a new address for each connection.
// The test runs the listener and the clients in a network namespace of
// its own, where lo carries several addresses of 2001:db8:1::/64 and one
// of 2001:db8:2::/64.
func TestPerClientLimitsGroupAnIPv6Slash64(t *testing.T) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		// The thread is left in the namespace: it ends with the goroutine.
		runtime.LockOSThread()
		if err := syscall.Unshare(syscall.CLONE_NEWNET); err != nil {
			t.Errorf("unshare: %v", err)
			return
		}
		for _, args := range [][]string{
			{"link", "set", "lo", "up"},
			{"-6", "addr", "add", "2001:db8:1::1/64", "dev", "lo", "nodad"},
			{"-6", "addr", "add", "2001:db8:1::2/64", "dev", "lo", "nodad"},
			{"-6", "addr", "add", "2001:db8:1::3/64", "dev", "lo", "nodad"},
			{"-6", "addr", "add", "2001:db8:2::1/64", "dev", "lo", "nodad"},
		} {
			if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
				t.Errorf("ip %v: %v %s", args, err, out)
				return
			}
		}
		s, sink := startServer(t, testListener(func(l *config.Listener) {
			l.Address = "[2001:db8:1::1]:0"
			l.MaxSessionsPerClient = 1
			l.Relay.RateLimit = &config.RateLimit{Messages: 1, Per: sdk.Duration(time.Hour), Burst: 1}
		}))
		greet := func(local string) (*bufio.Reader, net.Conn, string) {
			d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}}
			c, err := d.Dial("tcp", s.Addr().String())
			// The kernel may take a moment to route new addresses.
			for end := time.Now().Add(5 * time.Second); errors.Is(err, syscall.ENETUNREACH) && time.Now().Before(end); {
				time.Sleep(50 * time.Millisecond)
				c, err = d.Dial("tcp", s.Addr().String())
			}
			if err != nil {
				t.Errorf("dial from %s: %v", local, err)
				return nil, nil, ""
			}
			_ = c.SetDeadline(time.Now().Add(10 * time.Second))
			r := bufio.NewReader(c)
			line, _ := r.ReadString('\n')
			return r, c, line
		}
		r, held, got := greet("2001:db8:1::2")
		if held == nil {
			return
		}
		defer held.Close()
		if !strings.HasPrefix(got, "220") {
			t.Errorf("first session: %q", got)
		}
		if _, c, got := greet("2001:db8:1::3"); c != nil {
			c.Close()
			if !strings.HasPrefix(got, "421 4.7.0") {
				t.Errorf("second session from the same /64: %q, want 421 4.7.0", got)
			}
		}
		_, other, got := greet("2001:db8:2::1")
		if other == nil {
			return
		}
		defer other.Close()
		if !strings.HasPrefix(got, "220") {
			t.Errorf("session from another /64: %q, want 220", got)
		}

		// Rate limit: one message per hour per client; the held session
		// sends it, a session from a sibling address is refused at MAIL.
		send := func(c net.Conn, r *bufio.Reader, cmds ...string) string {
			var line string
			for _, cmd := range cmds {
				fmt.Fprint(c, cmd+"\r\n")
				for {
					line, _ = r.ReadString('\n')
					if len(line) < 4 || line[3] != '-' {
						break
					}
				}
			}
			return line
		}
		if got := send(held, r, "EHLO a.example", "MAIL FROM:<a@example.org>", "RCPT TO:<b@example.net>", "DATA", "Subject: one\r\n\r\nbody\r\n."); !strings.HasPrefix(got, "250") {
			t.Errorf("first message: %q", got)
		}
		send(held, r, "QUIT")
		held.Close()
		deadline := time.Now().Add(10 * time.Second)
		for {
			r2, c2, got := greet("2001:db8:1::3")
			if c2 == nil {
				return
			}
			if strings.HasPrefix(got, "220") {
				if got := send(c2, r2, "EHLO a.example", "MAIL FROM:<a@example.org>"); !strings.HasPrefix(got, "450 4.7.1") {
					t.Errorf("MAIL from a sibling address past the rate limit: %q, want 450 4.7.1", got)
				}
				c2.Close()
				break
			}
			c2.Close()
			if time.Now().After(deadline) {
				t.Errorf("slot not freed: %q", got)
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		if n := len(sink.all()); n != 1 {
			t.Errorf("%d messages stored, want 1", n)
		}
	}()
	<-done
}

// failingChecker fails every check with err.
type failingChecker struct{ err error }

func (f failingChecker) Name() string                              { return "failing" }
func (f failingChecker) Check(context.Context, *sdk.Message) error { return f.err }

// TestCheckerFailureRepliesCarryNoInternals: a checker that fails with a
// Go error, or whose plugin crashed (a transport error), gets the client
// 451 4.3.0 with a fixed text: no Go error text, socket path or plugin
// name. A checker's own *sdk.Error keeps its code and text.
func TestCheckerFailureRepliesCarryNoInternals(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want string
	}{
		{errors.New("dial unix /tmp/plugin3141592: connect: connection refused"), "451 4.3.0 Temporary local problem"},
		{&pluginclient.TransportError{Err: errors.New("rpc error: code = Unavailable desc = error reading from server: EOF")}, "451 4.3.0 Temporary local problem"},
		{sdk.Temporary(450, "7.1", "Greylisted, try again later"), "450 4.7.1 Greylisted, try again later"},
	} {
		sink := newMemSink(t)
		s, err := New(testListener(nil), "mx.test.invalid", sink, []Checker{failingChecker{tc.err}}, &stats.Counters{}, hclog.NewNullLogger())
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Listen(); err != nil {
			t.Fatal(err)
		}
		go s.Serve()
		c := dial(t, s, "").hello()
		c.expect("MAIL FROM:<a@example.org>", "250")
		got := c.expect("RCPT TO:<b@example.net>", tc.want)
		for _, bad := range []string{"/tmp", "unix", "rpc", "EOF", "plugin"} {
			if strings.Contains(got, bad) {
				t.Errorf("reply %q carries %q", got, bad)
			}
		}
		s.smtp.Close()
	}
}

// TestMappedDomainIsDeliveredAsJudged: an SMTPUTF8 recipient whose domain
// is a local domain only after UTS #46 mapping (fullwidth letters, an
// ideographic full stop, a soft hyphen) is queued with the domain the
// policy compared, not the client's spelling.
func TestMappedDomainIsDeliveredAsJudged(t *testing.T) {
	s, sink := startServer(t, testListener(nil))
	for _, rcpt := range []string{"bob@ｅｘａｍｐｌｅ.net", "bob@example\u3002net", "bob@exa\u00admple.net", "bob@EXAMPLE.net"} {
		c := dial(t, s, "").hello()
		c.expect("MAIL FROM:<a@example.org> SMTPUTF8", "250")
		c.expect("RCPT TO:<"+rcpt+">", "250")
		c.expect("DATA", "354")
		fmt.Fprint(c.c, "Subject: idn\r\n\r\nbody\r\n.\r\n")
		c.expect("", "250")
	}
	var got []string
	for _, m := range sink.all() {
		got = append(got, m.env.RcptTo...)
	}
	want := []string{"bob@example.net", "bob@example.net", "bob@example.net", "bob@EXAMPLE.net"}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("queued recipients %q, want %q", got, want)
	}
}

// TestMappedSenderDomainIsQueuedAsJudged: MAIL FROM with a domain that
// UTS #46 maps (fullwidth letters, an ideographic full stop, a soft
// hyphen) is queued in the same normalized spelling as RCPT TO: the
// sender checks (onion refusal, checker stages) judge the A-label form,
// and the next MTA must get that address, not the client's spelling.
func TestMappedSenderDomainIsQueuedAsJudged(t *testing.T) {
	s, sink := startServer(t, testListener(nil))
	for _, from := range []string{"a@ｅｘａｍｐｌｅ.org", "a@example\u3002org", "a@exa\u00admple.org", "a@ｂüｃｈｅｒ.example", "a@EXAMPLE.org"} {
		c := dial(t, s, "").hello()
		c.expect("MAIL FROM:<"+from+"> SMTPUTF8", "250")
		c.expect("RCPT TO:<bob@example.net>", "250")
		c.expect("DATA", "354")
		fmt.Fprint(c.c, "Subject: idn\r\n\r\nbody\r\n.\r\n")
		c.expect("", "250")
	}
	var got []string
	for _, m := range sink.all() {
		got = append(got, m.env.MailFrom)
	}
	want := []string{"a@example.org", "a@example.org", "a@example.org", "a@bücher.example", "a@EXAMPLE.org"}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("queued senders %q, want %q", got, want)
	}
}

// TestBlockListCatchesEveryIDNASpelling: an opted-out domain is refused
// whether the client spells it in ASCII, with fullwidth letters, or with
// the U-labels of an entry (entries are A-labels).
func TestBlockListCatchesEveryIDNASpelling(t *testing.T) {
	blk := filepath.Join(t.TempDir(), "dest.blk")
	if err := os.WriteFile(blk, []byte("@optout.example\n@xn--mller-kva.example\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	s, _ := startServer(t, testListener(func(l *config.Listener) {
		l.Relay.Anyone = true
		l.Relay.RateLimit = &config.RateLimit{Messages: 100, Per: sdk.Duration(time.Hour)}
		l.Relay.DestinationBlockFile = blk
	}))
	c := dial(t, s, "").hello()
	c.expect("MAIL FROM:<a@example.org> SMTPUTF8", "250")
	for _, rcpt := range []string{"bob@optout.example", "bob@ｏｐｔｏｕｔ.example", "bob@xn--mller-kva.example", "bob@müller.example", "bob@MÜLLER.example"} {
		c.expect("RCPT TO:<"+rcpt+">", "550 5.7.1")
	}
	c.expect("RCPT TO:<bob@elsewhere.example>", "250")
}
