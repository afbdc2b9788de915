package smtpd

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/mixmta/mixmta/core/internal/config"
	"github.com/mixmta/mixmta/core/internal/queue"
	"github.com/mixmta/mixmta/core/internal/stats"
	"github.com/mixmta/mixmta/sdk"
)

// memSink keeps what the server accepted in memory; bodies stream through a
// real queue in a temp dir, as in the daemon.
type memSink struct {
	q    *queue.Queue
	mu   sync.Mutex
	msgs []accepted
}

func newMemSink(tb testing.TB) *memSink {
	q, err := queue.Open(tb.TempDir(), queue.Options{})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { q.Close() })
	return &memSink{q: q}
}

func (m *memSink) NewBody() (*queue.BodyWriter, error) { return m.q.NewBody() }

func (m *memSink) AcceptBody(env sdk.Envelope, header []byte, body *queue.BodyWriter, t time.Time) (*queue.Item, error) {
	r, err := body.Open()
	if err != nil {
		return nil, err
	}
	b, err := io.ReadAll(r)
	body.Abort()
	if err != nil {
		return nil, err
	}
	return m.Accept(env, header, b, t)
}

type accepted struct {
	env          sdk.Envelope
	header, body []byte
}

func (m *memSink) Accept(env sdk.Envelope, header, body []byte, _ time.Time) (*queue.Item, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.msgs = append(m.msgs, accepted{env, append([]byte{}, header...), append([]byte{}, body...)})
	return &queue.Item{Size: int64(len(header) + len(body))}, nil
}

func (m *memSink) Submit(*queue.Item) {}

func (m *memSink) reset() {
	m.mu.Lock()
	m.msgs = nil
	m.mu.Unlock()
}

func (m *memSink) all() []accepted {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]accepted{}, m.msgs...)
}

// testListener is a listener accepting mail for example.net with the
// daemon's defaults, changed by edit.
func testListener(edit func(*config.Listener)) config.Listener {
	c := config.Config{Listeners: []config.Listener{{Address: "127.0.0.1:0", LocalDomains: []string{"example.net"}}}}
	c.SetDefaults()
	l := c.Listeners[0]
	if edit != nil {
		edit(&l)
	}
	return l
}

// startServer runs a real listener on a free loopback port.
func startServer(tb testing.TB, l config.Listener) (*Server, *memSink) {
	tb.Helper()
	sink := newMemSink(tb)
	s, err := New(l, "mx.test.invalid", sink, nil, &stats.Counters{}, hclog.NewNullLogger())
	if err != nil {
		tb.Fatal(err)
	}
	if err := s.Listen(); err != nil {
		tb.Fatal(err)
	}
	go s.Serve()
	tb.Cleanup(func() { s.smtp.Close() })
	return s, sink
}

// client is a raw SMTP dialogue.
type client struct {
	t testing.TB
	c net.Conn
	r *bufio.Reader
}

func dial(t testing.TB, s *Server, local string) *client {
	t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second}
	if local != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(local)}
	}
	c, err := d.Dial("tcp", s.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &client{t: t, c: c, r: bufio.NewReader(c)}
}

// reply reads one (possibly multi-line) reply and returns its last line.
func (c *client) reply() (string, error) {
	c.c.SetReadDeadline(time.Now().Add(30 * time.Second))
	for {
		line, err := c.r.ReadString('\n')
		if err != nil {
			return line, err
		}
		if len(line) < 4 || line[3] != '-' {
			return strings.TrimRight(line, "\r\n"), nil
		}
	}
}

// expect sends cmd (unless empty) and checks the reply starts with want.
func (c *client) expect(cmd, want string) string {
	c.t.Helper()
	if cmd != "" {
		fmt.Fprintf(c.c, "%s\r\n", cmd)
	}
	got, err := c.reply()
	if err != nil {
		c.t.Fatalf("after %q: %v", cmd, err)
	}
	if !strings.HasPrefix(got, want) {
		c.t.Fatalf("after %q: got %q, want %q", cmd, got, want)
	}
	return got
}

// closed checks the server has closed the connection within d.
func (c *client) closed(d time.Duration) bool {
	c.c.SetReadDeadline(time.Now().Add(d))
	for {
		if _, err := c.r.ReadByte(); err != nil {
			return !isTimeout(err)
		}
	}
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}

func (c *client) hello() *client {
	c.expect("", "220")
	c.expect("EHLO client.example.org", "250")
	return c
}
