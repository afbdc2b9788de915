package main

import (
	"bufio"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/mixmta/mixmta/sdk"
)

// stingyMX offers PIPELINING and answers nothing of a transaction until it
// has read the whole group up to DATA (RFC 2920 §3.1 lets a server do
// so): a client that waits for the MAIL reply before sending RCPT stalls
// and times out. It records the commands of every group and the message.
func stingyMX(t *testing.T) (addr string, groups chan []string, msgs chan string) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	groups, msgs = make(chan []string, 10), make(chan string, 10)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
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
						var body strings.Builder
						for {
							l, err := r.ReadString('\n')
							if err != nil {
								return
							}
							if l == ".\r\n" {
								break
							}
							body.WriteString(l)
						}
						msgs <- body.String()
						c.Write([]byte("250 2.0.0 queued\r\n"))
					default:
						group = append(group, strings.Fields(cmd)[0])
					}
				}
			}()
		}
	}()
	return l.Addr().String(), groups, msgs
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
