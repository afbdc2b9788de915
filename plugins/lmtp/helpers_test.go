package main

import (
	"bufio"
	"bytes"
	"net"
	"os"
	"strings"
	"testing"

	"github.com/mixmta/mixmta/sdk"
)

// loadMessage reads testdata/8bit-dots.eml (CRLF, 8-bit text, lines that
// begin with dots) as a message for rcpts.
func loadMessage(t *testing.T, rcpts ...string) *sdk.Message {
	t.Helper()
	raw, err := os.ReadFile("testdata/8bit-dots.eml")
	if err != nil {
		t.Fatal(err)
	}
	i := bytes.Index(raw, []byte("\r\n\r\n")) + 4
	return &sdk.Message{ID: "0123456789abcdef0123456789abcdef",
		Envelope: sdk.Envelope{MailFrom: "", RcptTo: rcpts, BodyType: sdk.Body8BitMIME},
		Header:   raw[:i], Body: raw[i:], Size: int64(len(raw))}
}

// scriptedLMTP is a fake LMTP server for one session: reply maps a
// command's first word (or "RCPT <addr>") to its reply line, and
// afterData lists the replies sent after the final dot; close, if set,
// drops the connection after them instead of waiting for QUIT.
type scriptedLMTP struct {
	reply     map[string]string
	afterData []string
	close     bool
	got       chan []string // the commands received, when the session ends
}

func (s *scriptedLMTP) start(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	s.got = make(chan []string, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		var cmds []string
		defer func() { s.got <- cmds }()
		r := bufio.NewReader(c)
		c.Write([]byte("220 fake LMTP\r\n"))
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return
			}
			line = strings.TrimRight(line, "\r\n")
			cmds = append(cmds, line)
			verb := strings.ToUpper(strings.Fields(line + " x")[0])
			key := verb
			if verb == "RCPT" {
				key = "RCPT " + strings.Trim(line[strings.Index(line, ":")+1:], "<> ")
			}
			switch verb {
			case "LHLO":
				c.Write([]byte("250-fake\r\n250-PIPELINING\r\n250 ENHANCEDSTATUSCODES\r\n"))
			case "QUIT":
				c.Write([]byte("221 2.0.0 bye\r\n"))
				return
			case "DATA":
				c.Write([]byte("354 go ahead\r\n"))
				for {
					l, err := r.ReadString('\n')
					if err != nil || l == ".\r\n" {
						break
					}
				}
				for _, a := range s.afterData {
					c.Write([]byte(a + "\r\n"))
				}
				if s.close {
					return
				}
			default:
				rep, ok := s.reply[key]
				if !ok {
					rep = "250 2.0.0 ok"
				}
				c.Write([]byte(rep + "\r\n"))
			}
		}
	}()
	return l.Addr().String()
}
