package main

import (
	"context"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/mixmta/mixmta/sdk"
	"github.com/mixmta/mixmta/sdk/address"
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
	// A recipient that is not an RFC 5321 mailbox is refused on its own
	// and never names a newsgroup; the others still get the article.
	var refused []sdk.RcptResult
	valid := make([]string, 0, len(m.Envelope.RcptTo))
	for _, r := range m.Envelope.RcptTo {
		if _, err := address.Parse(r, true); err != nil {
			refused = append(refused, sdk.RcptResult{Rcpt: r, Err: sdk.Permanent(553, "1.3", "mail2news: recipient is not a valid address: %v", err)})
			continue
		}
		valid = append(valid, r)
	}
	if len(refused) > 0 {
		if len(valid) == 0 {
			return refused, nil
		}
		mm := *m
		mm.Envelope.RcptTo = valid
		res, err := g.Deliver(ctx, &mm)
		return append(res, refused...), err
	}
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
