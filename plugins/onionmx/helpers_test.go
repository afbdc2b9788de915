package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/hashicorp/go-hclog"
	"github.com/miekg/dns"

	"github.com/mixmta/mixmta/internal/peers"
	"github.com/mixmta/mixmta/sdk"
)

// fakeMX is an in-process go-smtp server for tests of reply handling and
// connection reuse. It counts connections and RSET commands.
type fakeMX struct {
	Addr string
	Port int
	srv  *smtp.Server

	mu    sync.Mutex
	conns int
	rsets int
	msgs  []fakeMsg
	helos []string
	mail  error            // reply to every MAIL FROM (nil = 250)
	rcpt  map[string]error // reply per recipient (nil = 250)
	data  error            // reply at the end of data
	live  []net.Conn       // server side of every accepted connection
}

type fakeMsg struct {
	from  string
	opts  smtp.MailOptions
	rcpts []string
	data  []byte
	tls   bool
}

type fakeOpts struct {
	tls     *tls.Config // offers STARTTLS when set
	noUTF8  bool
	maxSize int64
}

func startFakeMX(t *testing.T, o fakeOpts) *fakeMX {
	t.Helper()
	f := &fakeMX{rcpt: map[string]error{}}
	f.srv = smtp.NewServer(smtp.BackendFunc(func(c *smtp.Conn) (smtp.Session, error) {
		f.mu.Lock()
		f.helos = append(f.helos, c.Hostname())
		f.mu.Unlock()
		return &fakeSession{f: f, conn: c}, nil
	}))
	f.srv.Domain = "fake.mx.test"
	f.srv.TLSConfig = o.tls
	f.srv.EnableSMTPUTF8 = !o.noUTF8
	f.srv.MaxMessageBytes = o.maxSize
	f.srv.MaxRecipients = 100
	f.srv.ReadTimeout = 10 * time.Second
	f.srv.WriteTimeout = 10 * time.Second
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f.Addr = l.Addr().String()
	f.Port = l.Addr().(*net.TCPAddr).Port
	go f.srv.Serve(&countingListener{Listener: l, f: f})
	t.Cleanup(func() { f.srv.Close() })
	return f
}

func (f *fakeMX) counts() (conns, rsets int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.conns, f.rsets
}

func (f *fakeMX) messages() []fakeMsg {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]fakeMsg(nil), f.msgs...)
}

func (f *fakeMX) setRcpt(rcpt string, err error) {
	f.mu.Lock()
	f.rcpt[rcpt] = err
	f.mu.Unlock()
}

// dropAll closes the server side of every connection, as a server does
// when its idle timeout fires.
func (f *fakeMX) dropAll() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, c := range f.live {
		c.Close()
	}
}

type countingListener struct {
	net.Listener
	f *fakeMX
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.f.mu.Lock()
		l.f.conns++
		l.f.live = append(l.f.live, c)
		l.f.mu.Unlock()
		c = &rsetCounter{Conn: c, f: l.f}
	}
	return c, err
}

// rsetCounter counts "RSET" command lines in what the client sends (plain
// text only: after STARTTLS go-smtp reads from a tls.Conn over this one).
type rsetCounter struct {
	net.Conn
	f *fakeMX
}

func (c *rsetCounter) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if k := bytes.Count(b[:n], []byte("RSET\r\n")); k > 0 {
		c.f.mu.Lock()
		c.f.rsets += k
		c.f.mu.Unlock()
	}
	return n, err
}

type fakeSession struct {
	f    *fakeMX
	conn *smtp.Conn
	cur  fakeMsg
}

func (s *fakeSession) Reset()        { s.cur = fakeMsg{} }
func (s *fakeSession) Logout() error { return nil }
func (s *fakeSession) Mail(from string, o *smtp.MailOptions) error {
	s.f.mu.Lock()
	defer s.f.mu.Unlock()
	if s.f.mail != nil {
		return s.f.mail
	}
	s.cur = fakeMsg{from: from}
	if o != nil {
		s.cur.opts = *o
	}
	return nil
}
func (s *fakeSession) Rcpt(to string, _ *smtp.RcptOptions) error {
	s.f.mu.Lock()
	defer s.f.mu.Unlock()
	if err := s.f.rcpt[to]; err != nil {
		return err
	}
	s.cur.rcpts = append(s.cur.rcpts, to)
	return nil
}
func (s *fakeSession) Data(r io.Reader) error {
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	s.f.mu.Lock()
	defer s.f.mu.Unlock()
	if s.f.data != nil {
		return s.f.data
	}
	s.cur.data = b
	_, s.cur.tls = s.conn.TLSConnectionState()
	s.f.msgs = append(s.f.msgs, s.cur)
	return nil
}

func reply(code int, enh string, msg string) *smtp.SMTPError {
	var ec smtp.EnhancedCode
	if enh != "" {
		parts := strings.Split(enh, ".")
		for i := range ec {
			ec[i], _ = strconv.Atoi(parts[i])
		}
	} else {
		ec = smtp.NoEnhancedCode
	}
	return &smtp.SMTPError{Code: code, EnhancedCode: ec, Message: msg}
}

// testConfig returns the defaults with short timeouts, relaying to addr.
func testConfig(relay string) Config {
	c := defaults
	c.RelayHost = relay
	c.ConnectTimeout = sdk.Duration(3 * time.Second)
	c.CommandTimeout = sdk.Duration(5 * time.Second)
	c.DataTimeout = sdk.Duration(5 * time.Second)
	c.DNSTimeout = sdk.Duration(3 * time.Second)
	return c
}

func newTestDeliverer(t *testing.T, c Config) *deliverer {
	t.Helper()
	if err := c.Validate(); err != nil {
		t.Fatalf("config: %v", err)
	}
	d, err := newDeliverer(c, hclog.New(&hclog.LoggerOptions{Level: hclog.Debug, Output: testLogWriter{t}}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.pool.close)
	return d
}

type testLogWriter struct{ t *testing.T }

func (w testLogWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}

// testMessage is a message with the given envelope; header and body CRLF.
func testMessage(from string, rcpts ...string) *sdk.Message {
	h := []byte("From: <sender@example.org>\r\nTo: undisclosed-recipients:;\r\nSubject: onionmx test\r\nMessage-ID: <t1@example.org>\r\n\r\n")
	b := []byte("First line\r\n.leading dot survives dot-stuffing\r\n..two dots\r\ntrailing spaces   \r\n\r\nlast line\r\n")
	return &sdk.Message{ID: "0123456789abcdef0123456789abcdef", Envelope: sdk.Envelope{MailFrom: from, RcptTo: rcpts}, Header: h, Body: b, Size: int64(len(h) + len(b))}
}

// deliver runs d.Deliver and returns the results by recipient.
func deliver(t *testing.T, d sdk.Deliverer, m *sdk.Message) map[string]error {
	t.Helper()
	res, err := d.Deliver(deliverCtx(t), m)
	if err != nil {
		t.Fatalf("Deliver returned error %v, want per-recipient results", err)
	}
	got := map[string]error{}
	for _, r := range res {
		if _, dup := got[r.Rcpt]; dup {
			t.Fatalf("two results for %s", r.Rcpt)
		}
		got[r.Rcpt] = r.Err
	}
	return got
}

// wantResult checks one recipient's outcome: code 0 means delivered.
func wantResult(t *testing.T, got map[string]error, rcpt string, temporary bool, code int, enhanced string) {
	t.Helper()
	err, ok := got[rcpt]
	if !ok {
		t.Fatalf("no result for %s (results %v)", rcpt, got)
	}
	if code == 0 {
		if err != nil {
			t.Fatalf("%s: want delivered, got %v", rcpt, err)
		}
		return
	}
	e := sdk.AsError(err)
	if e == nil {
		t.Fatalf("%s: want %d %s, got delivered", rcpt, code, enhanced)
	}
	if e.Temporary != temporary || e.SMTPCode() != code || (enhanced != "" && e.EnhancedCode() != enhanced) {
		t.Fatalf("%s: want temporary=%v %d %s, got temporary=%v %d %s (%v)", rcpt, temporary, code, enhanced, e.Temporary, e.SMTPCode(), e.EnhancedCode(), e)
	}
	if strings.Contains(e.Message, "@") {
		t.Fatalf("%s: error message carries an address: %q", rcpt, e.Message)
	}
}

// fakeDNS is an in-process DNS server (TCP) answering from a handler.
func fakeDNS(t *testing.T, h dns.HandlerFunc) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &dns.Server{Listener: l, Handler: h}
	go srv.ActivateAndServe()
	t.Cleanup(func() { srv.Shutdown() })
	return l.Addr().String()
}

// socksProxy is a minimal in-process SOCKS5 server (RFC 1928, username/
// password auth RFC 1929) that records each CONNECT and forwards it to the
// address route gives for the requested host:port ("" = refuse).
type socksProxy struct {
	Addr  string
	route func(dest string) string
	mu    sync.Mutex
	log   []socksConnect
}

type socksConnect struct {
	user, pass string
	dest       string // as requested: "name:port" or "ip:port"
	isName     bool
}

func startSOCKS(t *testing.T, route func(dest string) string) *socksProxy {
	t.Helper()
	p := &socksProxy{route: route}
	p.Addr = peers.ServeTCP(t, p.serve)
	return p
}

func (p *socksProxy) connects() []socksConnect {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]socksConnect(nil), p.log...)
}

func (p *socksProxy) serve(c net.Conn) {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 262)
	if _, err := io.ReadFull(c, buf[:2]); err != nil || buf[0] != 5 {
		return
	}
	if _, err := io.ReadFull(c, buf[:buf[1]]); err != nil {
		return
	}
	if !bytes.Contains(buf[:buf[1]], []byte{2}) {
		c.Write([]byte{5, 0xff})
		return
	}
	c.Write([]byte{5, 2})
	var rec socksConnect
	if _, err := io.ReadFull(c, buf[:2]); err != nil {
		return
	}
	ul := int(buf[1])
	if _, err := io.ReadFull(c, buf[:ul+1]); err != nil {
		return
	}
	rec.user = string(buf[:ul])
	pl := int(buf[ul])
	if _, err := io.ReadFull(c, buf[:pl]); err != nil {
		return
	}
	rec.pass = string(buf[:pl])
	c.Write([]byte{1, 0})
	if _, err := io.ReadFull(c, buf[:4]); err != nil || buf[1] != 1 {
		return
	}
	var host string
	switch buf[3] {
	case 1:
		io.ReadFull(c, buf[:4])
		host = net.IP(buf[:4]).String()
	case 4:
		io.ReadFull(c, buf[:16])
		host = net.IP(buf[:16]).String()
	case 3:
		io.ReadFull(c, buf[:1])
		n := int(buf[0])
		io.ReadFull(c, buf[:n])
		host, rec.isName = string(buf[:n]), true
	default:
		return
	}
	io.ReadFull(c, buf[:2])
	rec.dest = net.JoinHostPort(host, strconv.Itoa(int(binary.BigEndian.Uint16(buf[:2]))))
	p.mu.Lock()
	p.log = append(p.log, rec)
	p.mu.Unlock()
	to := p.route(rec.dest)
	var up net.Conn
	var err error
	if to != "" {
		up, err = net.DialTimeout("tcp", to, 3*time.Second)
	}
	if to == "" || err != nil {
		c.Write([]byte{5, 4, 0, 1, 0, 0, 0, 0, 0, 0}) // host unreachable
		return
	}
	defer up.Close()
	c.Write([]byte{5, 0, 0, 1, 127, 0, 0, 1, 0, 0})
	_ = c.SetDeadline(time.Time{})
	done := make(chan struct{}, 2)
	go func() { io.Copy(up, c); done <- struct{}{} }()
	go func() { io.Copy(c, up); done <- struct{}{} }()
	<-done
}

// serverTLS returns a server TLS config with a self-signed certificate for
// hosts.
func serverTLS(t *testing.T, hosts ...string) (*tls.Config, peers.Cert) {
	t.Helper()
	cert, err := peers.SelfSigned(hosts...)
	if err != nil {
		t.Fatal(err)
	}
	kp, err := cert.TLS()
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Config{Certificates: []tls.Certificate{kp}}, cert
}

func deliverCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}
