package main

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"syscall"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/hashicorp/go-hclog"
	"golang.org/x/net/proxy"

	"github.com/mixmta/mixmta/sdk"
)

// gateway is the mail2news deliverer: one article per message, posted to
// the configured servers or forwarded by mail.
type gateway struct {
	cfg  Config
	log  hclog.Logger
	net  *network
	idle *idlePool
	now  func() time.Time
}

var _ sdk.Deliverer = (*gateway)(nil)

func newGateway(cfg Config, log hclog.Logger) (*gateway, error) {
	return &gateway{cfg: cfg, log: log, net: newNetwork(cfg.SOCKS5, cfg.ConnectTimeout.D()),
		idle: newIdlePool(cfg.MaxIdle, cfg.IdleTimeout.D()), now: time.Now}, nil
}

// Deliver turns the message into one article (the groups of every
// recipient together) and posts it. Every recipient gets the same result:
// delivered, or the article's refusal (permanent, with the reason), or a
// temporary failure to retry. Reasons are logged at Info without groups,
// addresses or content.
func (g *gateway) Deliver(ctx context.Context, m *sdk.Message) ([]sdk.RcptResult, error) {
	a, err := g.buildArticle(m, g.now())
	if err == nil {
		if g.cfg.Forward != nil {
			err = g.forward(ctx, a)
		} else {
			err = g.postAll(ctx, a)
		}
	}
	if err != nil {
		e := sdk.AsError(err)
		g.log.Debug("mail2news failure", "item", m.ID, "error", err.Error())
		if e.Temporary {
			g.log.Info("[MAIL2NEWS] not posted, will retry", "item", m.ID, "reason", e.Message)
		} else {
			g.log.Info("[MAIL2NEWS] refused", "item", m.ID, "reply", e.EnhancedCode(), "reason", e.Message)
		}
		return nil, e
	}
	g.log.Info("[MAIL2NEWS] posted", "item", m.ID, "groups", len(a.Groups), "bytes", len(a.Header)+2+len(a.Body))
	res := make([]sdk.RcptResult, len(m.Envelope.RcptTo))
	for i, r := range m.Envelope.RcptTo {
		res[i] = sdk.RcptResult{Rcpt: r}
	}
	return res, nil
}

// postAll posts to the servers. With post_to: first it stops at the first
// server that has the article. With post_to: each every server is tried:
// any temporary failure retries the whole posting (servers that already
// took it answer "duplicate", which counts as success), and only when no
// server took it and none can take it later is it refused.
func (g *gateway) postAll(ctx context.Context, a *Article) error {
	var temp, perm error
	ok := 0
	for i := range g.cfg.Servers {
		err := g.post(ctx, i, a)
		switch {
		case err == nil:
			ok++
			if g.cfg.PostTo == postToFirst {
				return nil
			}
		case sdk.IsPermanent(err):
			g.log.Debug("news server refused the article", "server", i, "error", err)
			perm = err
		default:
			g.log.Debug("news server failed", "server", i, "error", err)
			temp = err
		}
	}
	switch {
	case temp != nil && (g.cfg.PostTo == postToEach || ok == 0):
		return temp
	case ok > 0:
		return nil
	default:
		return perm
	}
}

// forward mails the article to the external gateway over SMTP (through
// the SOCKS5 proxy when set). Path is left out: the gateway that injects
// the article writes its own.
func (g *gateway) forward(ctx context.Context, a *Article) error {
	f := g.cfg.Forward
	conn, err := g.net.dial(ctx, f.Host)
	if err != nil {
		return sdk.Temporary(451, "4.1", "mail2news: forward relay: %v", err)
	}
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Now()) })
	defer stop()
	_ = conn.SetDeadline(time.Now().Add(g.cfg.CommandTimeout.D()))
	c := smtp.NewClient(conn)
	defer c.Close()
	var header bytes.Buffer
	for _, line := range bytes.SplitAfter(a.Header, []byte("\r\n")) {
		if len(line) >= 5 && strings.EqualFold(string(line[:5]), "Path:") {
			continue
		}
		header.Write(line)
	}
	fmt.Fprintf(&header, "To: %s\r\n\r\n", f.To)
	err = func() error {
		if err := c.Hello(f.HELO); err != nil {
			return err
		}
		if err := c.Mail(f.MailFrom, nil); err != nil {
			return err
		}
		if err := c.Rcpt(f.To, nil); err != nil {
			return err
		}
		w, err := c.Data()
		if err != nil {
			return err
		}
		_, err = w.Write(append(header.Bytes(), a.Body...))
		if cerr := w.Close(); err == nil {
			err = cerr
		}
		return err
	}()
	if err == nil {
		_ = c.Quit()
		return nil
	}
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		if se.Code >= 500 {
			return withText(sdk.Permanent(554, "6.0", "mail2news: forward relay refused the article: %d", se.Code), printable(se.Message, 120))
		}
		return withText(sdk.Temporary(451, "4.0", "mail2news: forward relay: %d", se.Code), printable(se.Message, 120))
	}
	return sdk.Temporary(451, "4.2", "mail2news: forward relay: %s", netReason(err))
}

// network opens every outbound connection. With a SOCKS5 proxy nothing is
// dialled directly: host names go to the proxy unresolved (Tor resolves
// them at the exit or reaches the onion service), and each destination
// gets its own SOCKS credentials so Tor (IsolateSOCKSAuth, on by default)
// keeps destinations on separate circuits.
type network struct {
	socks   string
	timeout time.Duration
	// isolationKey keeps the credentials unguessable outside this process
	// and stable per destination.
	isolationKey [32]byte
}

func newNetwork(socks string, timeout time.Duration) *network {
	n := &network{socks: socks, timeout: timeout}
	_, _ = rand.Read(n.isolationKey[:])
	return n
}

// isolation returns SOCKS credentials for a destination "host:port":
// HMAC-SHA256(key, destination) in hex, split in two.
func (n *network) isolation(dest string) *proxy.Auth {
	m := hmac.New(sha256.New, n.isolationKey[:])
	m.Write([]byte(dest))
	sum := hex.EncodeToString(m.Sum(nil))
	return &proxy.Auth{User: "mail2news-" + sum[:16], Password: sum[16:32]}
}

// dial connects to dest ("host:port"), through the proxy when set. Its
// errors never name the host.
func (n *network) dial(ctx context.Context, dest string) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, n.timeout)
	defer cancel()
	d := &net.Dialer{}
	var c net.Conn
	var err error
	if n.socks == "" {
		c, err = d.DialContext(ctx, "tcp", dest)
	} else {
		var pd proxy.Dialer
		pd, err = proxy.SOCKS5("tcp", n.socks, n.isolation(dest), d)
		if err == nil {
			c, err = pd.(proxy.ContextDialer).DialContext(ctx, "tcp", dest)
		}
	}
	if err != nil {
		return nil, errors.New("connect failed: " + netReason(err))
	}
	return c, nil
}

// netReason names a network failure without addresses or host names, for
// messages the core logs at Info level.
func netReason(err error) string {
	var ne net.Error
	var errno syscall.Errno
	var op *net.OpError
	switch {
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	case errors.Is(err, context.Canceled):
		return "canceled"
	case errors.As(err, &op) && strings.HasPrefix(op.Op, "socks"):
		var inner *net.OpError
		if errors.As(op.Err, &inner) {
			return "SOCKS proxy unreachable: " + netReason(inner)
		}
		return "SOCKS: " + printable(strings.TrimPrefix(op.Err.Error(), "unknown error "), 80)
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, net.ErrClosed):
		return "connection closed"
	case errors.As(err, &errno):
		return errno.Error()
	}
	return "network error"
}
