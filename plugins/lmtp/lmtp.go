package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/hashicorp/go-hclog"

	"github.com/mixmta/mixmta/sdk"
	"github.com/mixmta/mixmta/sdk/address"
)

// lmtp is the stage value. It is safe for concurrent use: every delivery
// has its own connection.
type lmtp struct {
	cfg     Config
	log     hclog.Logger
	network string
	addr    string
}

var _ sdk.Deliverer = (*lmtp)(nil)

func newLMTP(cfg Config, log hclog.Logger) *lmtp {
	if log == nil {
		log = hclog.NewNullLogger()
	}
	network, addr := cfg.endpoint()
	return &lmtp{cfg: cfg, log: log, network: network, addr: addr}
}

// Deliver sends m in one LMTP transaction (RFC 2033 §4.2): LHLO, MAIL FROM
// with the envelope sender, one RCPT TO per distinct recipient, DATA, then
// one reply per accepted recipient after the final dot. Each recipient's
// result is its own reply: RCPT TO refused, or the reply after the data.
// A 4xx reply is temporary, a 5xx permanent, with the server's reply and
// enhanced codes (RFC 3463). Failing to connect (451 4.4.1), a lost
// connection or a timeout (451 4.4.2), and any refusal before MAIL FROM
// (451 4.4.0: the server, not the recipient, is the problem) are temporary
// for every recipient still open. A recipient whose reply after the data
// never came is temporary too: the server may have stored it, so a retry
// can duplicate it (the SDK's at-least-once contract). The returned error
// is always nil. Error texts name the command and the codes, never the
// server's text, which echoes addresses.
func (l *lmtp) Deliver(ctx context.Context, m *sdk.Message) ([]sdk.RcptResult, error) {
	var rcpts []string
	seen := map[string]bool{}
	for _, r := range m.Envelope.RcptTo {
		if !seen[r] {
			seen[r] = true
			rcpts = append(rcpts, r)
		}
	}
	results := make(map[string]error, len(rcpts))
	// A recipient that is not an RFC 5321 mailbox never reaches the
	// server: an LMTP server may take "postmaster" or a bare user name
	// as a local user, or choke on a control character.
	var send []string
	for _, r := range rcpts {
		if _, err := address.Parse(r, true); err != nil {
			results[r] = sdk.Permanent(553, "1.3", "lmtp: recipient is not a valid address: %v", err)
			continue
		}
		send = append(send, r)
	}
	all := func(err error) []sdk.RcptResult {
		out := make([]sdk.RcptResult, 0, len(rcpts))
		for _, r := range rcpts {
			e, done := results[r]
			if !done {
				e = err
			}
			out = append(out, sdk.RcptResult{Rcpt: r, Err: e})
		}
		return out
	}

	if len(send) == 0 {
		return all(nil), nil
	}
	d := net.Dialer{Timeout: l.cfg.ConnectTimeout.D()}
	conn, err := d.DialContext(ctx, l.network, l.addr)
	if err != nil {
		l.log.Debug("connect failed", "address", l.cfg.Address, "error", err)
		return all(sdk.Temporary(451, "4.4.1", "lmtp: cannot connect to the LMTP server: %s", netReason(err))), nil
	}
	// Cancelling ctx (the core's call timeout, shutdown) ends any wait.
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Now()) })
	defer stop()
	c := smtp.NewClientLMTP(conn)
	defer c.Close()
	c.CommandTimeout = l.cfg.Timeout.D()
	c.SubmissionTimeout = l.cfg.Timeout.D()

	if err := c.Hello(l.cfg.LHLOName); err != nil {
		return all(setupError(err)), nil
	}
	opts := &smtp.MailOptions{}
	if m.Envelope.SMTPUTF8 {
		if ok, _ := c.Extension("SMTPUTF8"); ok {
			opts.UTF8 = true
		} else if !asciiEnvelope(m.Envelope.MailFrom, send) {
			// RFC 6531 §3.2: an address that needs SMTPUTF8 cannot go
			// to a server that does not offer it.
			return all(sdk.Permanent(553, "6.7", "lmtp: the LMTP server does not offer SMTPUTF8, which the addresses need")), nil
		}
	}
	if err := c.Mail(m.Envelope.MailFrom, opts); err != nil {
		return all(replyError("MAIL FROM", err)), nil
	}
	var accepted []string
	for _, r := range send {
		if err := c.Rcpt(r, nil); err != nil {
			e := replyError("RCPT TO", err)
			results[r] = e
			l.log.Debug("recipient refused", "rcpt", r, "reply", e.EnhancedCode())
			if !isReply(err) {
				return all(e), nil // the connection is gone
			}
			continue
		}
		accepted = append(accepted, r)
	}
	if len(accepted) == 0 {
		_ = c.Quit()
		return all(nil), nil
	}
	w, err := c.Data()
	if err != nil {
		return all(replyError("DATA", err)), nil
	}
	// A write that fails must not be mistaken for a sent body. The dot
	// writer passes a bare CR: "\r.\r" in a mixnet exit's payload would
	// end the data early for an LMTP server that takes a bare CR for a
	// line end, and smuggle what follows as commands.
	cw := sdk.CRLFWriter(w)
	if _, err = cw.Write(m.Header); err == nil {
		_, err = cw.Write(m.Body)
	}
	if err != nil {
		return all(replyError("DATA", err)), nil
	}
	resp, err := w.CloseWithLMTPResponse()
	var perRcpt smtp.LMTPDataError
	errors.As(err, &perRcpt)
	for _, r := range accepted {
		switch {
		case resp[r] != nil:
			results[r] = nil
			l.log.Debug("delivered", "rcpt", r)
		case perRcpt[r] != nil:
			results[r] = replyError("end of data", perRcpt[r])
			l.log.Debug("recipient failed after data", "rcpt", r, "reply", perRcpt[r].Code)
		}
	}
	if err != nil && !isLMTPDataError(err) {
		// The connection broke before every reply came. err may also hold
		// the replies that did come: not theirs to give the others.
		return all(sdk.Temporary(451, "4.4.2", "lmtp: end of data: %s", netReason(err))), nil
	}
	_ = c.Quit()
	return all(sdk.Temporary(451, "4.4.2", "lmtp: no reply for the recipient after the data")), nil
}

// isLMTPDataError reports whether err holds only per-recipient replies.
func isLMTPDataError(err error) bool {
	_, ok := err.(smtp.LMTPDataError)
	return ok
}

// isReply reports whether err is an SMTP reply (the session goes on).
func isReply(err error) bool {
	var se *smtp.SMTPError
	return errors.As(err, &se)
}

// replyError maps the outcome of one command to an *sdk.Error: a 4xx reply
// is temporary and a 5xx permanent, keeping the reply code and the
// enhanced code when its class agrees; anything else (connection lost,
// timeout, odd reply) is temporary 451 4.4.2.
func replyError(phase string, err error) *sdk.Error {
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		class := se.Code / 100
		enh := ""
		if ec := se.EnhancedCode; ec[0] == class && ec[1] >= 0 && ec[2] >= 0 && (ec[1] != 0 || ec[2] != 0) {
			enh = fmt.Sprintf("%d.%d.%d", ec[0], ec[1], ec[2])
		}
		switch class {
		case 4:
			return sdk.Temporary(se.Code, enh, "lmtp: %s: server replied %d (temporary)", phase, se.Code)
		case 5:
			return sdk.Permanent(se.Code, enh, "lmtp: %s: server replied %d", phase, se.Code)
		}
		return sdk.Temporary(451, "4.5.0", "lmtp: %s: unexpected reply %d", phase, se.Code)
	}
	return sdk.Temporary(451, "4.4.2", "lmtp: %s: %s", phase, netReason(err))
}

// setupError maps a failure of the greeting or LHLO. Even a 5xx is
// temporary: a server refusing the session says nothing about the
// recipients, and the mail waits until the operator fixes it.
func setupError(err error) *sdk.Error {
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		return sdk.Temporary(451, "4.4.0", "lmtp: greeting or LHLO: server replied %d", se.Code)
	}
	return sdk.Temporary(451, "4.4.2", "lmtp: greeting or LHLO: %s", netReason(err))
}

// netReason names a network failure without addresses or paths.
func netReason(err error) string {
	var ne net.Error
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return "timed out"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused"
	case errors.Is(err, syscall.ENOENT):
		return "no such socket"
	case errors.Is(err, syscall.EACCES):
		return "permission denied"
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return "connection reset"
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return "canceled"
	}
	return "connection failed"
}

// asciiEnvelope reports whether every address is ASCII.
func asciiEnvelope(from string, rcpts []string) bool {
	for _, a := range append([]string{from}, rcpts...) {
		for i := 0; i < len(a); i++ {
			if a[i] >= 0x80 {
				return false
			}
		}
	}
	return true
}
