package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/mixmta/mixmta/sdk"
)

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
