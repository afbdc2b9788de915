package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/textproto"
	"strings"
	"sync"
	"time"

	"github.com/mixmta/mixmta/sdk"
)

// The NNTP client is this file: RFC 3977 is a line protocol whose few
// commands we need (MODE READER, POST, IHAVE, QUIT) plus RFC 4643
// AUTHINFO USER/PASS and RFC 4642 STARTTLS fit in net/textproto, which
// also does the dot-stuffing. We found no maintained Go NNTP client
// library (the known ones have had no release for years), and a
// dependency would still leave us to decide what each reply code means for
// the queue, which is most of this file.

// nntpReply is a reply from a server: code and text (printable ASCII, at
// most 120 bytes). The text may name groups or hosts, so it never goes
// into an *sdk.Error (which the core may log or bounce): withText carries
// it to the Debug log.
type nntpReply struct {
	code int
	text string
}

// post transfers a to server i with its configured method. It returns
// nil when the server has the article (taken now, or already had it), or
// an error whose *sdk.Error says whether to retry. It reuses an idle
// session of that server when there is one (a new reader session costs
// INN a fork of nnrpd: tens of milliseconds against a fraction of one for
// a POST on an open session); a reused session that fails temporarily is
// dropped and the article goes once more over a new one (a repeat is
// harmless: the server drops the duplicate by Message-ID).
func (g *gateway) post(ctx context.Context, i int, a *Article) error {
	s := &g.cfg.Servers[i]
	if c := g.idle.get(i); c != nil {
		err := c.transfer(ctx, s, a)
		if g.keep(i, c, err) || sdk.IsPermanent(err) {
			return err
		}
	}
	c, err := g.open(ctx, s)
	if err != nil {
		return err
	}
	err = c.transfer(ctx, s, a)
	g.keep(i, c, err)
	return err
}

// keep returns c to the idle pool after a transfer that left the session
// usable (success, or a refusal the server answered normally) and reports
// whether it did; otherwise it closes c.
func (g *gateway) keep(i int, c *nntpConn, err error) bool {
	var re *replyError
	if err == nil || errors.As(err, &re) && !re.err.Temporary {
		if g.idle.put(i, c) {
			return true
		}
		_, _ = c.cmd("QUIT")
	}
	c.raw.Close()
	return false
}

// open connects to s and sets the session up: greeting, MODE READER (for
// POST), STARTTLS, AUTHINFO.
func (g *gateway) open(ctx context.Context, s *Server) (c *nntpConn, err error) {
	conn, err := g.net.dial(ctx, s.Address)
	if err != nil {
		return nil, sdk.Temporary(451, "4.1", "mail2news: news server: %v", err)
	}
	defer func() {
		if err != nil {
			conn.Close()
		}
	}()
	// A context cancel (the core's call timeout) ends a stuck exchange.
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Now()) })
	defer stop()
	host, _, _ := net.SplitHostPort(s.Address)
	tlsConf := &tls.Config{ServerName: host, MinVersion: tls.VersionTLS12}
	if s.TLSName != "" {
		tlsConf.ServerName = s.TLSName
	}
	if s.TLSCAFile != "" {
		pool, err := loadCAs(s.TLSCAFile)
		if err != nil {
			return nil, sdk.Temporary(451, "3.5", "mail2news: tls_ca_file: %v", err)
		}
		tlsConf.RootCAs = pool
	}
	if s.TLS == tlsImplicit {
		tc := tls.Client(conn, tlsConf)
		conn = tc
		if err := g.handshake(tc); err != nil {
			return nil, err
		}
	}
	c = &nntpConn{raw: conn, tp: textproto.NewConn(conn), timeout: g.cfg.CommandTimeout.D()}
	if r, err := c.read(); err != nil {
		return nil, err
	} else if r.code != 200 && r.code != 201 {
		return nil, r.fail("greeting", r.code/100 == 5)
	}
	if s.Method == methodPost {
		r, err := c.cmd("MODE READER")
		if err != nil {
			return nil, err
		}
		if r.code != 200 && r.code != 201 {
			return nil, r.fail("MODE READER", false)
		}
	}
	if s.TLS == tlsSTARTTLS {
		r, err := c.cmd("STARTTLS")
		if err != nil {
			return nil, err
		}
		if r.code != 382 {
			// A server that does not offer TLS must not get the password
			// or the article in the clear.
			return nil, r.fail("STARTTLS", false)
		}
		tc := tls.Client(conn, tlsConf)
		conn = tc
		if err := g.handshake(tc); err != nil {
			return nil, err
		}
		c = &nntpConn{raw: tc, tp: textproto.NewConn(tc), timeout: c.timeout}
	}
	if s.User != "" {
		if err := c.authinfo(s); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// transfer sends one article on an open session.
func (c *nntpConn) transfer(ctx context.Context, s *Server, a *Article) error {
	stop := context.AfterFunc(ctx, func() { _ = c.raw.SetDeadline(time.Now()) })
	defer stop()
	if s.Method == methodIHAVE {
		return c.ihave(a)
	}
	return c.postArticle(a)
}

// idlePool keeps open sessions per server for reuse: at most max per
// server, each closed after idleTimeout unused (by a reaper goroutine).
type idlePool struct {
	mu          sync.Mutex
	max         int
	idleTimeout time.Duration
	conns       map[int][]*nntpConn
}

func newIdlePool(max int, idleTimeout time.Duration) *idlePool {
	p := &idlePool{max: max, idleTimeout: idleTimeout, conns: map[int][]*nntpConn{}}
	if max > 0 {
		go func() {
			for range time.Tick(idleTimeout / 2) {
				p.reap(time.Now())
			}
		}()
	}
	return p
}

// get takes the most recently used session of server i, or nil.
func (p *idlePool) get(i int) *nntpConn {
	p.mu.Lock()
	defer p.mu.Unlock()
	l := p.conns[i]
	if len(l) == 0 {
		return nil
	}
	c := l[len(l)-1]
	p.conns[i] = l[:len(l)-1]
	return c
}

// put keeps c for server i unless the pool for i is full.
func (p *idlePool) put(i int, c *nntpConn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.conns[i]) >= p.max {
		return false
	}
	c.idleSince = time.Now()
	p.conns[i] = append(p.conns[i], c)
	return true
}

// reap closes sessions idle longer than idleTimeout (with QUIT).
func (p *idlePool) reap(now time.Time) {
	var old []*nntpConn
	p.mu.Lock()
	for i, l := range p.conns {
		keep := l[:0]
		for _, c := range l {
			if now.Sub(c.idleSince) > p.idleTimeout {
				old = append(old, c)
			} else {
				keep = append(keep, c)
			}
		}
		p.conns[i] = keep
	}
	p.mu.Unlock()
	for _, c := range old {
		_ = c.raw.SetDeadline(time.Now().Add(5 * time.Second))
		_, _ = c.cmd("QUIT")
		c.raw.Close()
	}
}

func (g *gateway) handshake(tc *tls.Conn) error {
	_ = tc.SetDeadline(time.Now().Add(g.cfg.CommandTimeout.D()))
	if err := tc.Handshake(); err != nil {
		return sdk.Temporary(451, "7.0", "mail2news: TLS handshake with the news server failed: %v", tlsReason(err))
	}
	return nil
}

// tlsReason names a TLS failure without host names.
func tlsReason(err error) string {
	var cv *tls.CertificateVerificationError
	if errors.As(err, &cv) {
		return "certificate not trusted"
	}
	return netReason(err)
}

type nntpConn struct {
	raw       net.Conn
	tp        *textproto.Conn
	timeout   time.Duration
	idleSince time.Time // set while in the idle pool
}

// read reads one reply line ("NNN text").
func (c *nntpConn) read() (nntpReply, error) {
	_ = c.raw.SetDeadline(time.Now().Add(c.timeout))
	line, err := c.tp.ReadLine()
	if err != nil {
		return nntpReply{}, sdk.Temporary(451, "4.2", "mail2news: news server: %s", netReason(err))
	}
	var r nntpReply
	code, text, _ := strings.Cut(line, " ")
	if len(code) != 3 || code[0] < '1' || code[0] > '5' {
		return nntpReply{}, sdk.Temporary(451, "5.0", "mail2news: news server sent a malformed reply")
	}
	fmt.Sscan(code, &r.code)
	r.text = printable(text, 120)
	return r, nil
}

// cmd sends one command line and reads its reply.
func (c *nntpConn) cmd(line string) (nntpReply, error) {
	_ = c.raw.SetDeadline(time.Now().Add(c.timeout))
	if err := c.tp.PrintfLine("%s", line); err != nil {
		return nntpReply{}, sdk.Temporary(451, "4.2", "mail2news: news server: %s", netReason(err))
	}
	return c.read()
}

// fail turns an unexpected reply into an error: permanent when perm,
// otherwise temporary (a misconfigured or busy server must not lose mail).
func (r nntpReply) fail(step string, perm bool) error {
	if perm {
		return withText(sdk.Permanent(554, "6.0", "mail2news: news server refused %s: %d", step, r.code), r.text)
	}
	return withText(sdk.Temporary(451, "4.0", "mail2news: news server answered %s with %d", step, r.code), r.text)
}

// authinfo runs AUTHINFO USER/PASS (RFC 4643 §2.3). A refusal is
// temporary: it is the operator's configuration, not the message.
func (c *nntpConn) authinfo(s *Server) error {
	pw, err := readSecret(s.PasswordFile)
	if err != nil {
		return sdk.Temporary(451, "7.0", "mail2news: password_file: %v", err)
	}
	r, err := c.cmd("AUTHINFO USER " + s.User)
	if err != nil {
		return err
	}
	if r.code == 381 {
		if r, err = c.cmd("AUTHINFO PASS " + pw); err != nil {
			return err
		}
	}
	if r.code != 281 {
		return withText(sdk.Temporary(451, "7.0", "mail2news: news server refused AUTHINFO: %d", r.code), r.text)
	}
	return nil
}

// postArticle runs POST (RFC 3977 §6.3.1): 340 send, then 240 taken; 440
// and 441 are the server's final word. A 441 for a duplicate Message-ID
// (INN: "441 435 Duplicate") means a repeat of a posting that already
// succeeded, e.g. after the core died before recording it: success.
func (c *nntpConn) postArticle(a *Article) error {
	r, err := c.cmd("POST")
	if err != nil {
		return err
	}
	switch r.code {
	case 340:
	case 440:
		return withText(sdk.Permanent(554, "7.1", "mail2news: posting not permitted: %d", r.code), r.text)
	default:
		return r.fail("POST", r.code/100 == 5)
	}
	if r, err = c.send(a); err != nil {
		return err
	}
	switch {
	case r.code == 240:
		return nil
	case r.code == 441 && isDuplicate(r.text):
		return nil
	case r.code == 441:
		return withText(sdk.Permanent(554, "6.0", "mail2news: article refused: %d", r.code), r.text)
	default:
		return r.fail("the article", r.code/100 == 5)
	}
}

// ihave runs IHAVE (RFC 3977 §6.3.2): 335 send, then 235 taken. 435 (not
// wanted: it already has it) and a 437 for a duplicate (INN: "437
// Duplicate", the article arrived from elsewhere meanwhile) count as
// delivered: the server has the article. Any other 437 (rejected, do not
// retry: unwanted group, too old) is a permanent refusal; 436 is try later.
func (c *nntpConn) ihave(a *Article) error {
	r, err := c.cmd("IHAVE " + a.MessageID)
	if err != nil {
		return err
	}
	switch r.code {
	case 335:
	case 435:
		return nil
	case 436:
		return withText(sdk.Temporary(451, "4.0", "mail2news: news server says try later: %d", r.code), r.text)
	default:
		return r.fail("IHAVE", r.code/100 == 5)
	}
	if r, err = c.send(a); err != nil {
		return err
	}
	switch {
	case r.code == 235, r.code == 437 && isDuplicate(r.text):
		return nil
	case r.code == 437:
		return withText(sdk.Permanent(554, "6.0", "mail2news: article refused: %d", r.code), r.text)
	case r.code == 436:
		return withText(sdk.Temporary(451, "4.0", "mail2news: news server says try later: %d", r.code), r.text)
	default:
		return r.fail("the article", r.code/100 == 5)
	}
}

// send writes the article as a dot-stuffed multi-line block (RFC 3977
// §3.1.1: a line starting with "." gets another; "." CRLF ends it) and
// reads the reply.
func (c *nntpConn) send(a *Article) (nntpReply, error) {
	_ = c.raw.SetDeadline(time.Now().Add(c.timeout))
	w := c.tp.DotWriter()
	// The dot writer passes a bare CR: "\r.\r" in a body from the mixnet
	// would end the article early for a news server that takes a bare CR
	// for a line end, with what follows read as commands.
	_, err := sdk.CRLFWriter(w).Write(a.Bytes())
	if err == nil {
		err = w.Close()
	}
	if err != nil {
		return nntpReply{}, sdk.Temporary(451, "4.2", "mail2news: news server: %s", netReason(err))
	}
	return c.read()
}

// replyError is a failure with the peer's reply text beside it: errors.As
// finds the *sdk.Error (code only), Error() adds the text for Debug logs.
type replyError struct {
	err  *sdk.Error
	text string
}

func (e *replyError) Error() string { return e.err.Error() + " (server said: " + e.text + ")" }
func (e *replyError) Unwrap() error { return e.err }

func withText(e *sdk.Error, text string) error { return &replyError{err: e, text: text} }

// isDuplicate recognises a duplicate Message-ID in a 441 or 437 reply
// text (INN answers "435 Duplicate"; others say "duplicate" or
// "already"). INN also refuses an article with a repeated header field as
// `441 Duplicate Subject header field` (437 `Duplicate "Subject" header
// field` for IHAVE): that is a refusal, and counting it as posted would
// lose the article.
func isDuplicate(text string) bool {
	t := strings.ToLower(text)
	if strings.Contains(t, "header") || strings.Contains(t, "field") {
		return false
	}
	return strings.HasPrefix(t, "435") || strings.Contains(t, "duplicate") || strings.Contains(t, "already")
}

// printable keeps at most n bytes of printable ASCII from a server reply.
func printable(s string, n int) string {
	var b strings.Builder
	for i := 0; i < len(s) && b.Len() < n; i++ {
		if s[i] >= ' ' && s[i] < 0x7f {
			b.WriteByte(s[i])
		}
	}
	return b.String()
}
