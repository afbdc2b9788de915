package smtpd

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/mixmta/mixmta/core/internal/config"
	"github.com/mixmta/mixmta/sdk"
)

// replyLine is one line of a reply: a code, "-" or " ", text (RFC 5321
// §4.2).
var replyLine = regexp.MustCompile(`^[2-5][0-9][0-9][ -][^\r\n]*\r\n$`)

// internalText is what no reply may carry: Go error text, addresses,
// the panic handler's reply.
var internalText = regexp.MustCompile(`(?i)read tcp|write tcp|i/o timeout|127\.0\.0\.1|use of closed|broken pipe|Internal server error|runtime error|goroutine|transaction failed|unexpected EOF`)

// FuzzSession drives the real listener with a fuzzed client byte stream
// (one connection, then EOF). Properties: the server never panics (go-smtp
// would answer "421 4.0.0 Internal server error"), every reply line is
// well-formed and carries no Go error text or address, and every message
// stored has CRLF line endings only, and the session ends by
// max_session_time whatever the client does. Seeds: testdata/fuzz/FuzzSession/,
// named for what they exercise (t-smuggle-lf-dot-crlf, t-bdat-chunks, ...).
//
//	go test -run '^$' -fuzz FuzzSession -fuzztime 10m ./core/internal/smtpd/
func FuzzSession(f *testing.F) { fuzzSession(f, false) }

// FuzzSessionInsideTLS is FuzzSession with the fuzzed stream sent inside
// STARTTLS (after EHLO, STARTTLS and the handshake): the same properties
// must hold on the plaintext the server decrypts.
//
//	go test -run '^$' -fuzz FuzzSessionInsideTLS -fuzztime 10m ./core/internal/smtpd/
func FuzzSessionInsideTLS(f *testing.F) { fuzzSession(f, true) }

func fuzzSession(f *testing.F, inTLS bool) {
	seeds, _ := filepath.Glob("testdata/sessions/*.txt")
	for _, s := range seeds {
		b, err := os.ReadFile(s)
		if err != nil {
			f.Fatal(err)
		}
		// The files are readable text with LF endings; the wire has CRLF
		// except where a seed spells a bare one as \n or \r.
		b = bytes.ReplaceAll(b, []byte("\n"), []byte("\r\n"))
		b = bytes.ReplaceAll(b, []byte(`\n`), []byte("\n"))
		b = bytes.ReplaceAll(b, []byte(`\r`), []byte("\r"))
		f.Add(b)
	}
	l := testListener(func(l *config.Listener) {
		l.ReadTimeout = sdk.Duration(500 * time.Millisecond)
		l.MaxSessionTime = sdk.Duration(2 * time.Second)
		l.MaxMessageBytes = 4096
		l.MaxLineLength = 1000
		l.MaxHeaderBytes = 2048
		l.MaxSessionsPerClient = 1000
		l.MaxSessions = 1000
		l.Relay.Networks = nil
	})
	if inTLS {
		l = withTLS(f, l)
	}
	s, sink := startServer(f, l)
	f.Fuzz(func(t *testing.T, data []byte) {
		sink.reset()
		// A source address per run spreads the connections over
		// 127.0.0.0/8, so TIME_WAIT never runs out of ports in a long run.
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, byte(1+rand.IntN(250)), byte(rand.IntN(256)), byte(1+rand.IntN(250)))}}
		c, err := d.Dial("tcp", s.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		// max_session_time is 2 s: the server must have closed by then.
		c.SetReadDeadline(time.Now().Add(4 * time.Second))
		r := bufio.NewReader(c)
		closeWrite := func() { c.(*net.TCPConn).CloseWrite() }
		if inTLS {
			tc := startTLSRaw(t, c, r)
			c, r = tc, bufio.NewReader(tc)
			closeWrite = func() { tc.CloseWrite() }
		}
		go func() {
			c.Write(data)
			closeWrite()
		}()
		for {
			line, err := r.ReadString('\n')
			if line != "" && (!replyLine.MatchString(line) || internalText.MatchString(line)) {
				t.Fatalf("bad reply line %q", line)
			}
			if isTimeout(err) {
				t.Fatalf("session still open after 4 s (max_session_time 2 s)")
			}
			if err != nil {
				break
			}
		}
		for _, m := range sink.all() {
			raw := append(append([]byte{}, m.header...), m.body...)
			if bytes.Contains(bytes.ReplaceAll(raw, []byte("\r\n"), nil), []byte("\n")) ||
				bytes.Contains(bytes.ReplaceAll(raw, []byte("\r\n"), nil), []byte("\r")) {
				t.Fatalf("stored a message with a bare CR or LF: %q", raw)
			}
			for _, a := range append([]string{m.env.MailFrom}, m.env.RcptTo...) {
				if strings.ContainsAny(a, "\r\n") {
					t.Fatalf("stored an address with a line break: %q", a)
				}
			}
		}
	})
}

// startTLSRaw reads the greeting, sends EHLO and STARTTLS on c and
// returns the TLS connection after the handshake.
func startTLSRaw(t *testing.T, c net.Conn, r *bufio.Reader) *tls.Conn {
	t.Helper()
	fmt.Fprint(c, "EHLO fuzz.example\r\nSTARTTLS\r\n")
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			t.Fatalf("before STARTTLS: %v", err)
		}
		if strings.HasPrefix(line, "220 2.0.0") {
			break
		}
	}
	tc := tls.Client(c, &tls.Config{InsecureSkipVerify: true})
	if err := tc.Handshake(); err != nil {
		t.Fatalf("TLS handshake: %v", err)
	}
	return tc
}
