package smtpd

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/mixmta/mixmta/core/internal/config"
)

// refBackend is a bare go-smtp server's backend: it records the message
// data go-smtp's own DATA reader (RFC 5321 §4.5.2, byte at a time) hands
// over.
type refBackend struct {
	mu   sync.Mutex
	data []byte
	err  error
}

func (b *refBackend) NewSession(*smtp.Conn) (smtp.Session, error) { return refSession{b}, nil }

type refSession struct{ b *refBackend }

func (s refSession) Mail(string, *smtp.MailOptions) error { return nil }
func (s refSession) Rcpt(string, *smtp.RcptOptions) error { return nil }
func (s refSession) Reset()                               {}
func (s refSession) Logout() error                        { return nil }
func (s refSession) Data(r io.Reader) error {
	d, err := io.ReadAll(r)
	s.b.mu.Lock()
	s.b.data, s.b.err = d, err
	s.b.mu.Unlock()
	return err
}

// dataDialogue sends a transaction to addr, the message data in pieces
// (a short pause between them, so the server's reads end inside lines),
// and returns the reply to the end of data.
func dataDialogue(t testing.TB, addr string, pieces [][]byte) string {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	r := bufio.NewReader(c)
	fmt.Fprint(c, "EHLO client.example.org\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n")
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			t.Fatalf("before 354: %v", err)
		}
		if strings.HasPrefix(line, "354") {
			break
		}
	}
	go func() {
		for _, p := range pieces {
			c.Write(p)
			time.Sleep(100 * time.Microsecond)
		}
		c.Write([]byte("QUIT\r\n"))
	}()
	line, _ := r.ReadString('\n')
	return line
}

// rfcClean reports whether the data up to its end marker (the first line
// that is ".", RFC 5321 §4.5.2) has only CR LF pairs as line ends
// (§2.3.8), and whether what follows the end marker (commands to the
// server) does.
func rfcClean(data []byte) (message, after bool) {
	end := len(data)
	if bytes.HasPrefix(data, []byte(".\r\n")) {
		end = 0
	} else if i := bytes.Index(data, []byte("\r\n.\r\n")); i >= 0 {
		end = i + 2
	}
	clean := func(b []byte) bool {
		return !bytes.ContainsAny(bytes.ReplaceAll(b, []byte("\r\n"), nil), "\r\n")
	}
	return clean(data[:end]), clean(data[min(end+3, len(data)):])
}

// differential sends data (it ends with an end marker) to go-smtp alone
// and to mixmta's listener: where the data is clean, mixmta stores
// exactly what go-smtp read; where it is not, mixmta refuses it with 554
// 5.5.2 and stores nothing.
type differential struct {
	ref     *refBackend
	refAddr string
	s       *Server
	sink    *memSink
}

func newDifferential(t testing.TB) *differential {
	ref := &refBackend{}
	srv := smtp.NewServer(ref)
	srv.Domain = "ref.test.invalid"
	srv.MaxLineLength = 1 << 20 // as the listener below
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	s, sink := startServer(t, testListener(func(l *config.Listener) {
		l.MaxLineLength = 1 << 20
		l.MaxSessionsPerClient = 1 << 20
		l.MaxSessions = 1 << 20
		l.MaxJunkCommands = 1 << 20
		l.MaxErrors = 1 << 20
	}))
	return &differential{ref: ref, refAddr: ln.Addr().String(), s: s, sink: sink}
}

func (d *differential) check(t testing.TB, pieces [][]byte) {
	t.Helper()
	data := bytes.Join(pieces, nil)
	clean, cleanAfter := rfcClean(data)
	d.sink.reset()
	got := dataDialogue(t, d.s.Addr().String(), pieces)
	msgs := d.sink.all()
	// A bare CR or LF in commands the client pipelined after the message
	// refuses the message too when the server has read them with it
	// (clientConn.takeBare): either answer is right then.
	if !clean || !cleanAfter && strings.HasPrefix(got, "554 5.5.2") {
		if !strings.HasPrefix(got, "554 5.5.2") || len(msgs) != 0 {
			t.Fatalf("data %q: got %q and %d messages stored, want 554 5.5.2 and none", data, got, len(msgs))
		}
		return
	}
	// go-smtp alone may never see the end of data that is not clean
	// (after ".\r" at a line start it drops both and reads on), so it is
	// asked only about clean data.
	d.ref.mu.Lock()
	d.ref.data, d.ref.err = nil, nil
	d.ref.mu.Unlock()
	refReply := dataDialogue(t, d.refAddr, pieces)
	d.ref.mu.Lock()
	want, refErr := d.ref.data, d.ref.err
	d.ref.mu.Unlock()
	if refErr != nil || !strings.HasPrefix(refReply, "250") {
		t.Fatalf("data %q: go-smtp refused clean data: %q %v", data, refReply, refErr)
	}
	if !strings.HasPrefix(got, "250") || len(msgs) != 1 {
		t.Fatalf("data %q: got %q and %d messages stored, want 250 and one", data, got, len(msgs))
	}
	if stored := append(msgs[0].header, msgs[0].body...); !bytes.Equal(stored, want) {
		t.Fatalf("data %q:\nstored  %q\ngo-smtp %q", data, stored, want)
	}
}

// dataTokens make data where line starts, dots, end markers and bare
// CR/LF meet at every place, the smuggling separators among them.
var dataTokens = []string{"\r\n", "\r\n", "\r\n", "\r", "\n", ".", ".", "..", "a", "Subject: x", " y", "\r\n.\r\n", "\r\n..\r\n", "\r\n.\r", ".\r", "\r\n\r\n", ".\n"}

func randomData(rng *rand.Rand) [][]byte {
	var b []byte
	for j := rng.IntN(16); j > 0; j-- {
		b = append(b, dataTokens[rng.IntN(len(dataTokens))]...)
	}
	b = append(b, "\r\n.\r\n"...)
	var pieces [][]byte
	for rest := b; len(rest) > 0; {
		k := 1 + rng.IntN(len(rest))
		pieces, rest = append(pieces, rest[:k]), rest[k:]
	}
	return pieces
}

// TestDotReaderMatchesGoSMTP: random message data, sent in random pieces
// to a bare go-smtp server and to mixmta's listener (whose DATA reader
// works on whole lines of its read buffer): mixmta stores byte for byte
// what go-smtp's byte-at-a-time reader reads where the data has only
// CRLF line ends, and refuses with 554 5.5.2 where it has a bare CR or LF
// before its end marker.
func TestDotReaderMatchesGoSMTP(t *testing.T) {
	d := newDifferential(t)
	rng := rand.New(rand.NewPCG(5321, 452))
	clean := 0
	for i := 0; i < 400; i++ {
		p := randomData(rng)
		if c, _ := rfcClean(bytes.Join(p, nil)); c {
			clean++
		}
		d.check(t, p)
	}
	if clean < 50 || clean > 350 {
		t.Fatalf("%d of 400 cases clean: the generator does not cover both sides", clean)
	}
}

// FuzzDotReader is TestDotReaderMatchesGoSMTP on fuzzed data (an end
// marker appended), sent whole.
//
//	go test -run '^$' -fuzz FuzzDotReader -fuzztime 5m ./core/internal/smtpd/
func FuzzDotReader(f *testing.F) {
	for _, s := range append(smugglingSeparators, "..a\r\n", ".\r\n", "a\r\n.\r\nb", "\r\n..\r\n") {
		f.Add([]byte(s))
	}
	d := newDifferential(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		d.check(t, [][]byte{data, []byte("\r\n.\r\n")})
	})
}

// rfcRead is RFC 5321 §4.5.2 read plainly, for clean data: the lines
// before the first "." line, each without its leading dot, and what
// follows that line.
func rfcRead(data []byte) (msg, rest []byte) {
	for len(data) > 0 {
		i := bytes.Index(data, []byte("\r\n"))
		line := data[:i+2]
		data = data[i+2:]
		if string(line) == ".\r\n" {
			return msg, data
		}
		msg = append(msg, bytes.TrimPrefix(line, []byte("."))...)
	}
	return msg, nil
}

// TestDotReaderSplitReads drives the DATA reader directly over a pipe
// whose every read returns exactly one piece the client wrote, so pieces
// end at every place (after a CR, inside ".\r\n", after the stuffing
// dot): clean data reads as RFC 5321 §4.5.2 says and what follows the
// end marker is left for the commands, untouched; data with a bare CR or
// LF fails with errBareLineEnd.
func TestDotReaderSplitReads(t *testing.T) {
	rng := rand.New(rand.NewPCG(2920, 3030))
	s := &Server{cfg: testListener(nil)}
	for i := 0; i < 3000; i++ {
		pieces := randomData(rng)
		data := bytes.Join(pieces, nil)
		srv, cli := net.Pipe()
		cc := newClientConn(srv, &limitListener{s: s, perIP: map[netip.Addr]int{}}, netip.Addr{})
		cc.dataNext = true
		cc.beginData()
		d := cc.startDot()
		go func() {
			for _, p := range pieces {
				cli.Write(p)
			}
			cli.Close()
		}()
		got, err := io.ReadAll(d)
		clean, _ := rfcClean(data)
		if !clean {
			if !errors.Is(err, errBareLineEnd) {
				t.Fatalf("data %q in pieces %q: %v, want errBareLineEnd", data, pieces, err)
			}
			srv.Close()
			continue
		}
		want, rest := rfcRead(data)
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("data %q in pieces %q:\n got %q, %v\nwant %q", data, pieces, got, err, want)
		}
		cc.endDot()
		cc.endData()
		after, _ := io.ReadAll(cc)
		if want := append([]byte(".\r\n"), rest...); !bytes.Equal(after, want) {
			t.Fatalf("data %q in pieces %q: go-smtp then reads %q, want %q", data, pieces, after, want)
		}
		srv.Close()
	}
}

// TestDataSizeAndLineLimits: in DATA, more than max_message_bytes is
// refused with 552 5.3.4 after the client's end of data, and the session
// goes on in step (the rest of the message is never read as commands);
// a line longer than max_line_length (with its CRLF) ends the session
// with 500 5.5.2. Nothing refused is stored.
func TestDataSizeAndLineLimits(t *testing.T) {
	s, sink := startServer(t, withTLS(t, testListener(func(l *config.Listener) {
		l.MaxMessageBytes = 2000
		l.MaxLineLength = 1000
	})))
	for _, mode := range modes {
		t.Run(mode, func(t *testing.T) {
			sink.reset()
			c := open(t, s, mode)
			c.expect("MAIL FROM:<a@example.org>", "250")
			c.expect("RCPT TO:<b@example.net>", "250")
			c.expect("DATA", "354")
			line := strings.Repeat("x", 98) + "\r\n"
			fmt.Fprint(c.c, "Subject: big\r\n\r\n"+strings.Repeat(line, 30)+"MAIL FROM:<smuggled@example.org>\r\n.\r\n")
			c.expect("", "552 5.3.4")
			c.expect("MAIL FROM:<a@example.org>", "250")
			c.expect("RCPT TO:<b@example.net>", "250")
			c.expect("DATA", "354")
			// Exactly max_message_bytes.
			msg := "Subject: fits\r\n\r\n" + strings.Repeat(line, 19)
			msg += strings.Repeat("y", 2000-len(msg)-2) + "\r\n"
			fmt.Fprint(c.c, msg+".\r\n")
			c.expect("", "250")
			c.expect("MAIL FROM:<a@example.org>", "250")
			c.expect("RCPT TO:<b@example.net>", "250")
			c.expect("DATA", "354")
			fmt.Fprint(c.c, "Subject: long\r\n\r\n"+strings.Repeat("z", 999)+"\r\n.\r\n")
			c.expect("", "500 5.5.2")
			if !c.closed(5 * time.Second) {
				t.Error("session still open after a line too long")
			}
			if m := sink.all(); len(m) != 1 || string(m[0].header)+string(m[0].body) != msg {
				t.Fatalf("stored %d messages, want only the one that fits", len(m))
			}
		})
	}
}

// TestLongLineWhileDrainingEndsSession: after a message was refused
// while the client still sends it (it grew past max_message_bytes, or its
// header past max_header_bytes) the rest of it is read to its end marker;
// a line longer than max_line_length in that rest (its end arriving in a
// later read) ends the session, as go-smtp's sticky line limit did,
// instead of leaving the rest of the message to be read as commands (a
// smuggled transaction).
func TestLongLineWhileDrainingEndsSession(t *testing.T) {
	s, sink := startServer(t, withTLS(t, testListener(func(l *config.Listener) {
		l.MaxMessageBytes = 4000
		l.MaxHeaderBytes = 2000
		l.MaxLineLength = 1000
	})))
	line := strings.Repeat("x", 98) + "\r\n"
	refused := map[string]string{
		"message too big": "Subject: big\r\n\r\n" + strings.Repeat(line, 50),
		"header too big":  "Subject: big\r\n" + strings.Repeat("X-"+line, 30) + "\r\n",
	}
	for _, mode := range modes {
		for name, start := range refused {
			t.Run(mode+"/"+name, func(t *testing.T) {
				sink.reset()
				c := open(t, s, mode)
				c.expect("MAIL FROM:<a@example.org>", "250")
				c.expect("RCPT TO:<b@example.net>", "250")
				c.expect("DATA", "354")
				fmt.Fprint(c.c, start+strings.Repeat("x", 990))
				// The server reads the first part of the long line alone.
				time.Sleep(300 * time.Millisecond)
				fmt.Fprint(c.c, "yyyyyyyyyyyyy\r\nMAIL FROM:<smuggled@example.org>\r\nRCPT TO:<b@example.net>\r\nDATA\r\nSubject: smuggled\r\n\r\nsmuggled\r\n.\r\n")
				got, _ := c.reply()
				if !strings.HasPrefix(got, "552") && !strings.HasPrefix(got, "500") {
					t.Fatalf("reply to the end of data %q, want 552 or 500", got)
				}
				if !c.closed(5 * time.Second) {
					t.Error("session still open after a line too long")
				}
				if m := sink.all(); len(m) != 0 {
					t.Fatalf("stored %d messages, want none: %q", len(m), m[0].header)
				}
			})
		}
	}
}
