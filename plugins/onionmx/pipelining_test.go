package main

import (
	"bufio"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mixmta/mixmta/internal/peers"
	"github.com/mixmta/mixmta/sdk"
)

// rawMX listens on a free 127.0.0.1 port until the test ends and runs
// serve on each connection in its own goroutine (conn counts from 0),
// closing the connection when serve returns.
func rawMX(t *testing.T, serve func(conn int, c net.Conn)) string {
	t.Helper()
	var n atomic.Int64
	return peers.ServeTCP(t, func(c net.Conn) { serve(int(n.Add(1)-1), c) })
}

// readData reads a message's lines up to the final "." line and returns
// them as sent (dot-stuffed, line ends as they came); ok is false when
// the connection ended first.
func readData(r *bufio.Reader) (raw string, ok bool) {
	var b strings.Builder
	for {
		l, err := r.ReadString('\n')
		if err != nil {
			return b.String(), false
		}
		if l == ".\r\n" {
			return b.String(), true
		}
		b.WriteString(l)
	}
}

// stingyMX offers PIPELINING and answers nothing of a transaction until it
// has read the whole group up to DATA (RFC 2920 §3.1 lets a server do
// so): a client that waits for the MAIL reply before sending RCPT stalls
// and times out. It records the commands of every group and the message.
func stingyMX(t *testing.T) (addr string, groups chan []string, msgs chan string) {
	t.Helper()
	groups, msgs = make(chan []string, 10), make(chan string, 10)
	addr = rawMX(t, func(_ int, c net.Conn) {
		r := bufio.NewReader(c)
		c.Write([]byte("220 stingy ESMTP\r\n"))
		var group []string
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return
			}
			cmd := strings.ToUpper(strings.TrimSpace(line))
			switch {
			case strings.HasPrefix(cmd, "EHLO"):
				c.Write([]byte("250-stingy\r\n250-PIPELINING\r\n250 8BITMIME\r\n"))
			case strings.HasPrefix(cmd, "QUIT"):
				c.Write([]byte("221 bye\r\n"))
				return
			case cmd == "DATA":
				group = append(group, "DATA")
				groups <- group
				var out strings.Builder
				for range group[:len(group)-1] {
					out.WriteString("250 2.0.0 ok\r\n")
				}
				out.WriteString("354 go on\r\n")
				c.Write([]byte(out.String()))
				group = nil
				body, ok := readData(r)
				if !ok {
					return
				}
				msgs <- body
				c.Write([]byte("250 2.0.0 queued\r\n"))
			default:
				group = append(group, strings.Fields(cmd)[0])
			}
		}
	})
	return addr, groups, msgs
}

// With pipelining, RSET (on a reused session), MAIL, both RCPT and DATA
// reach the server as one group before any reply, the message arrives
// dot-stuffed, and the session is reused; without pipelining the same
// server gets MAIL alone and the delivery times out (the test can fail).
func TestPipeliningSendsTheGroupInOneRoundTrip(t *testing.T) {
	addr, groups, msgs := stingyMX(t)
	cfg := testConfig(addr)
	d := newTestDeliverer(t, cfg)
	for i, want := range []string{"MAIL RCPT RCPT DATA", "RSET MAIL RCPT RCPT DATA"} {
		got := deliver(t, d, testMessage("s@example.org", "a@example.net", "b@example.net"))
		wantResult(t, got, "a@example.net", false, 0, "")
		wantResult(t, got, "b@example.net", false, 0, "")
		if g := strings.Join(<-groups, " "); g != want {
			t.Fatalf("message %d: group %q, want %q", i, g, want)
		}
		if m := <-msgs; !strings.Contains(m, "\r\n..leading dot survives") || !strings.HasSuffix(m, "last line\r\n") {
			t.Fatalf("message %d not dot-stuffed or cut:\n%q", i, m)
		}
	}

	cfg.Pipelining = false
	cfg.CommandTimeout = sdk.Duration(time.Second)
	d = newTestDeliverer(t, cfg)
	start := time.Now()
	got := deliver(t, d, testMessage("s@example.org", "a@example.net"))
	wantResult(t, got, "a@example.net", true, 451, "")
	if time.Since(start) < time.Second {
		t.Fatalf("without pipelining the stingy server should stall the client")
	}
}

// TestOutOfStepReplyDropsThePipelinedSession: a server that answers DATA
// with 250 instead of 354 (its replies out of step with the commands)
// and then reads a message body. The delivery is deferred (451, an
// unexpected reply), and the session is dropped, not pooled: reused, the
// next transaction's RSET, MAIL FROM and RCPT TO would go into the body
// the server is still reading, a message built from another message's
// envelope. The next delivery opens a new connection and succeeds.
func TestOutOfStepReplyDropsThePipelinedSession(t *testing.T) {
	swallowed := make(chan string, 100) // lines read as a body after the bogus 250
	addr := rawMX(t, func(conn int, c net.Conn) {
		r := bufio.NewReader(c)
		c.Write([]byte("220 skewed ESMTP\r\n"))
		inData := false
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return
			}
			cmd := strings.ToUpper(strings.TrimSpace(line))
			switch {
			case inData && line == ".\r\n":
				inData = false
				c.Write([]byte("250 2.0.0 queued\r\n"))
			case inData:
				if conn == 0 {
					swallowed <- strings.TrimSpace(line)
				}
			case strings.HasPrefix(cmd, "EHLO"):
				c.Write([]byte("250-skewed\r\n250-PIPELINING\r\n250 8BITMIME\r\n"))
			case cmd == "DATA" && conn == 0:
				c.Write([]byte("250 2.0.0 ok\r\n")) // out of step: 354 expected
				inData = true
			case cmd == "DATA":
				c.Write([]byte("354 go on\r\n"))
				inData = true
			case strings.HasPrefix(cmd, "QUIT"):
				c.Write([]byte("221 bye\r\n"))
				return
			default:
				c.Write([]byte("250 2.0.0 ok\r\n"))
			}
		}
	})
	cfg := testConfig(addr)
	cfg.CommandTimeout = sdk.Duration(2 * time.Second)
	d := newTestDeliverer(t, cfg)
	got := deliver(t, d, testMessage("s@example.org", "a@example.net"))
	wantResult(t, got, "a@example.net", true, 451, "")
	got = deliver(t, d, testMessage("other@example.org", "b@example.net"))
	wantResult(t, got, "b@example.net", false, 0, "")
	time.Sleep(200 * time.Millisecond)
	for {
		select {
		case line := <-swallowed:
			t.Errorf("the out-of-step session was reused: %q went into its message body", line)
		default:
			return
		}
	}
}

// TestBareCRNeverReachesTheNextMTA: a message whose header and body carry
// bare CRs (a mixnet exit's payload is whatever its anonymous sender
// made: SMTP ingress refuses them, the Sphinx payload does not) goes out,
// pipelined and not, with every CR followed by LF. textproto's dot writer
// fixes a bare LF but passes "\r.\r": the end-of-data marker of receivers
// that take a bare CR for a line end (the SMTP smuggling of
// CVE-2023-51764..51766), behind which a second, forged message would
// follow.
func TestBareCRNeverReachesTheNextMTA(t *testing.T) {
	msgs := make(chan string, 10) // each message's raw bytes up to the final dot
	addr := rawMX(t, func(_ int, c net.Conn) {
		r := bufio.NewReader(c)
		c.Write([]byte("220 raw ESMTP\r\n"))
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return
			}
			cmd := strings.ToUpper(strings.TrimSpace(line))
			switch {
			case strings.HasPrefix(cmd, "EHLO"):
				c.Write([]byte("250-raw\r\n250-PIPELINING\r\n250 8BITMIME\r\n"))
			case cmd == "DATA":
				c.Write([]byte("354 go on\r\n"))
				raw, ok := readData(r)
				if !ok {
					return
				}
				msgs <- raw
				c.Write([]byte("250 2.0.0 queued\r\n"))
			case strings.HasPrefix(cmd, "QUIT"):
				c.Write([]byte("221 bye\r\n"))
				return
			default:
				c.Write([]byte("250 2.0.0 ok\r\n"))
			}
		}
	})
	for _, pipelining := range []bool{true, false} {
		cfg := testConfig(addr)
		cfg.Pipelining = pipelining
		d := newTestDeliverer(t, cfg)
		m := testMessage("s@example.org", "a@example.net")
		m.Header = []byte("Subject: cr\rX-Injected: 1\r\n\r\n")
		m.Body = []byte("first\r.\rMAIL FROM:<forged@example.org>\r\r\nlast\r")
		got := deliver(t, d, m)
		wantResult(t, got, "a@example.net", false, 0, "")
		raw := <-msgs
		if strings.Contains(strings.ReplaceAll(raw, "\r\n", ""), "\r") {
			t.Errorf("pipelining %v: a bare CR went out:\n%q", pipelining, raw)
		}
		if !strings.Contains(raw, "\r\n..\r\nMAIL FROM:<forged@example.org>\r\n") {
			t.Errorf("pipelining %v: want the CRs as line ends and the dot stuffed:\n%q", pipelining, raw)
		}
	}
}

// TestFalsePipeliningFallsBackToOneCommandAtATime: a server that offers
// PIPELINING but reads one command per network read and throws away the
// rest of what came with it (so it never answers the RCPT TO and DATA of
// a group). The first delivery times out (temporary, nothing lost); from
// then on the destination gets one command at a time, and the retry is
// delivered. Without the fallback every retry times out the same way and
// the message is given up after the last attempt.
func TestFalsePipeliningFallsBackToOneCommandAtATime(t *testing.T) {
	msgs := make(chan string, 10)
	addr := rawMX(t, func(_ int, c net.Conn) {
		c.Write([]byte("220 naive ESMTP\r\n"))
		buf := make([]byte, 64<<10)
		var body strings.Builder
		inData := false
		for {
			n, err := c.Read(buf)
			if err != nil {
				return
			}
			chunk := string(buf[:n])
			if inData {
				body.WriteString(chunk)
				if strings.HasSuffix(body.String(), "\r\n.\r\n") {
					inData = false
					msgs <- body.String()
					body.Reset()
					c.Write([]byte("250 2.0.0 queued\r\n"))
				}
				continue
			}
			// Only the first line of each read is a command.
			line, _, _ := strings.Cut(chunk, "\r\n")
			cmd := strings.ToUpper(line)
			switch {
			case strings.HasPrefix(cmd, "EHLO"):
				c.Write([]byte("250-naive\r\n250-PIPELINING\r\n250 8BITMIME\r\n"))
			case cmd == "DATA":
				inData = true
				c.Write([]byte("354 go on\r\n"))
			case strings.HasPrefix(cmd, "QUIT"):
				c.Write([]byte("221 bye\r\n"))
				return
			default:
				c.Write([]byte("250 2.0.0 ok\r\n"))
			}
		}
	})
	cfg := testConfig(addr)
	cfg.CommandTimeout = sdk.Duration(time.Second)
	d := newTestDeliverer(t, cfg)
	got := deliver(t, d, testMessage("s@example.org", "a@example.net"))
	wantResult(t, got, "a@example.net", true, 451, "")
	got = deliver(t, d, testMessage("s@example.org", "a@example.net"))
	wantResult(t, got, "a@example.net", false, 0, "")
	select {
	case m := <-msgs:
		if !strings.Contains(m, "last line\r\n") {
			t.Fatalf("message cut:\n%q", m)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no message at the server")
	}
}
