package main

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"net/textproto"
	"strings"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/mixmta/mixmta/sdk"
)

// wire is a session's own reader and writer for transactions sent with
// PIPELINING (RFC 2920). Once a session has one, every command after EHLO
// goes through it (go-smtp's client has no pipelining and its reader must
// not be used alongside).
type wire struct {
	conn net.Conn
	r    *textproto.Reader
	w    *bufio.Writer
}

func newWire(conn net.Conn) *wire {
	return &wire{conn: conn, r: textproto.NewReader(bufio.NewReader(conn)), w: bufio.NewWriter(conn)}
}

// reply reads one reply within timeout. A reply with a code is an
// *smtp.SMTPError whatever its class (the caller decides what it means);
// anything else (EOF, timeout, garbage) is returned as is.
func (w *wire) reply(timeout time.Duration) (*smtp.SMTPError, error) {
	_ = w.conn.SetReadDeadline(time.Now().Add(timeout))
	code, msg, err := w.r.ReadResponse(0) // 0: any code, no *textproto.Error
	if err != nil {
		return nil, err
	}
	return &smtp.SMTPError{Code: code, EnhancedCode: parseEnhanced(msg), Message: msg}, nil
}

// quitWire sends QUIT, reads the reply briefly and closes.
func (s *session) quitWire() {
	_ = s.wire.conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := s.wire.w.WriteString("QUIT\r\n"); err == nil && s.wire.w.Flush() == nil {
		_, _ = s.wire.reply(5 * time.Second)
	}
	s.close()
}

// transactPipelined is transact for a server that offers PIPELINING: RSET
// (on a reused session), MAIL FROM, every RCPT TO and DATA leave in one
// write and their replies are read in order (RFC 2920 §3.1: DATA ends the
// group), then the message and its final dot. Over a Tor circuit, where
// a round trip is tens of milliseconds, this is one round trip before the
// message instead of one per command. The outcomes are those of transact.
func (d *deliverer) transactPipelined(s *session, m *sdk.Message, rcpts []string, needUTF8, no8Bit bool, size int64) (res map[string]error, hostErr *sdk.Error, keep, stale bool) {
	if strings.ContainsAny(m.Envelope.MailFrom, "\r\n") || strings.ContainsAny(strings.Join(rcpts, ""), "\r\n") {
		return nil, sdk.Permanent(553, "5.1.7", "onionmx: address contains a line break"), false, false
	}
	c, w := s.c, s.wire
	cmdTimeout := d.cfg.CommandTimeout.D()
	var b strings.Builder
	if s.reused {
		// Clears whatever the last transaction left and proves the
		// connection alive, at no extra round trip.
		b.WriteString("RSET\r\n")
	}
	fmt.Fprintf(&b, "MAIL FROM:<%s>", m.Envelope.MailFrom)
	if ok, _ := c.Extension("8BITMIME"); ok {
		b.WriteString(" BODY=8BITMIME")
	}
	if ok, _ := c.Extension("SIZE"); ok && size > 0 {
		fmt.Fprintf(&b, " SIZE=%d", size)
	}
	if needUTF8 {
		b.WriteString(" SMTPUTF8")
	}
	b.WriteString("\r\n")
	for _, r := range rcpts {
		fmt.Fprintf(&b, "RCPT TO:<%s>\r\n", r)
	}
	b.WriteString("DATA\r\n")
	_ = w.conn.SetWriteDeadline(time.Now().Add(cmdTimeout))
	if _, err := w.w.WriteString(b.String()); err == nil {
		err = w.w.Flush()
		if err != nil && s.reused {
			return nil, nil, false, true
		}
	}

	if s.reused {
		rep, err := w.reply(cmdTimeout)
		if err != nil || rep.Code == 421 {
			return nil, nil, false, true // dead or closing: nothing was taken
		}
	}
	rep, err := w.reply(cmdTimeout)
	var mailErr *smtp.SMTPError
	// inStep: every reply so far is one a server in step with the
	// commands sends; only such a session may be pooled again.
	inStep := err != nil || stepReply(rep.Code)
	switch {
	case err != nil:
		if s.reused {
			return nil, nil, false, true
		}
		return nil, replyToError("MAIL FROM", err), false, false
	case rep.Code/100 != 2:
		mailErr = rep
	}

	res = make(map[string]error, len(rcpts))
	var accepted []string
	for _, r := range rcpts {
		rep, err := w.reply(cmdTimeout)
		switch {
		case err != nil:
			d.falsePipelining(s, err)
			e := replyToError("RCPT TO", err)
			for _, r := range rcpts {
				if _, done := res[r]; !done {
					res[r] = e
				}
			}
			return res, nil, false, false
		case !stepReply(rep.Code):
			inStep = false
			res[r] = replyToError("RCPT TO", rep)
		case mailErr != nil:
			// The server refused the sender; its RCPT replies (503) say
			// nothing about the recipients.
		case rep.Code/100 != 2:
			d.log.Debug("RCPT TO refused", "host", s.key, "rcpt", r, "reply", rep)
			res[r] = replyToError("RCPT TO", rep)
		default:
			accepted = append(accepted, r)
		}
	}
	dataRep, err := w.reply(cmdTimeout)
	if err != nil {
		d.falsePipelining(s, err)
		e := replyToError("DATA", err)
		for _, r := range rcpts {
			if _, done := res[r]; !done {
				res[r] = e
			}
		}
		return res, nil, false, false
	}
	// Anything but 354, 4xx or 5xx to DATA (a 250, say) is a server out
	// of step: reused, it could read the next transaction as a body.
	dataKeep := inStep && (dataRep.Code/100 == 4 || dataRep.Code/100 == 5) && dataRep.Code != 421
	if mailErr != nil {
		se := mailErr
		e := replyToError("MAIL FROM", se)
		d.log.Debug("MAIL FROM refused", "host", s.key, "reply", se)
		if dataRep.Code == 354 {
			return nil, e, false, false // a broken server: drop the session
		}
		if se.Code >= 500 {
			for _, r := range rcpts {
				res[r] = e
			}
			return res, nil, dataKeep, false
		}
		return nil, e, dataKeep && se.Code != 421, false
	}
	if dataRep.Code != 354 {
		if len(accepted) == 0 {
			return res, nil, dataKeep, false
		}
		d.log.Debug("DATA refused", "host", s.key, "reply", dataRep)
		e := replyToError("DATA", dataRep)
		for _, r := range accepted {
			res[r] = e
		}
		return res, nil, dataKeep, false
	}
	if len(accepted) == 0 {
		// 354 with no recipient (RFC 2920 §3.1 forbids it): send nothing
		// and drop the session rather than deliver an empty message.
		return res, nil, false, false
	}

	_ = w.conn.SetWriteDeadline(time.Now().Add(d.cfg.DataTimeout.D()))
	cw := sdk.DotWriter(w.w)
	_, err = cw.Write(m.Header)
	if err == nil {
		err = writeBody(cw, m, no8Bit)
	}
	if err != nil {
		// Nothing was delivered: the final dot was never sent, and the
		// connection is dropped.
		var be *bodyError
		e := replyToError("DATA", err)
		switch {
		case errors.Is(err, err8Bit):
			e = err8Bit
		case errors.As(err, &be):
			e = sdk.Temporary(451, "4.3.0", "onionmx: reading the message: %v", be.err)
		}
		for _, r := range accepted {
			res[r] = e
		}
		return res, nil, false, false
	}
	if err = cw.Close(); err == nil {
		err = w.w.Flush()
	}
	var final *smtp.SMTPError
	if err == nil {
		final, err = w.reply(d.cfg.DataTimeout.D())
	}
	if err == nil && final.Code/100 != 2 {
		err = final
	}
	if err != nil {
		d.log.Debug("message refused at end of data", "host", s.key, "reply", err)
		e := replyToError("end of data", err)
		for _, r := range accepted {
			res[r] = e
		}
		return res, nil, inStep && final != nil && final.Code/100 >= 4 && stepReply(final.Code) && final.Code != 421, false
	}
	for _, r := range accepted {
		res[r] = nil
	}
	d.log.Debug("delivered", "host", s.key, "recipients", len(accepted), "tls", s.encrypted, "reused", s.reused, "pipelined", true)
	return res, nil, inStep, false
}

// stepReply reports whether code is of a class that answers MAIL, RCPT or
// the end of data (2xx, 4xx, 5xx; RFC 5321 §4.3.2); a 1xx, 3xx or a code
// past 5xx there means the server's replies are out of step with the
// commands.
func stepReply(code int) bool {
	c := code / 100
	return c == 2 || c == 4 || c == 5
}

// falsePipelining notes a destination whose server answered MAIL FROM but
// timed out on the rest of a pipelined group: it offers PIPELINING and
// does not do it (it reads one command and drops what came with it, as
// some naive servers and SMTP-inspecting firewalls do). RFC 2920 has no
// way to tell; its later sessions get one command at a time, so the
// retry is delivered instead of timing out the same way until the last
// attempt.
func (d *deliverer) falsePipelining(s *session, err error) {
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		return
	}
	if _, known := d.noPipelining.LoadOrStore(s.key, true); !known {
		d.log.Info("server offers PIPELINING but left a pipelined group unanswered; one command at a time from now on", "host", s.key)
	}
}
