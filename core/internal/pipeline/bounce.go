package pipeline

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"strings"
	"time"

	"github.com/mixmta/mixmta/core/internal/queue"
	"github.com/mixmta/mixmta/sdk"
)

// failure is one recipient given up on, for a bounce.
type failure struct {
	rcpt string
	err  error
}

// bounce queues a delivery status notification (RFC 3464, as a
// multipart/report of RFC 6522) to the item's MAIL FROM for the failed
// recipients, when bounces are configured. It never bounces a message with
// the null reverse-path (that would be a bounce of a bounce, RFC 5321
// §4.5.5), and an anonymous remailer normally runs without bounces: its
// sanitizer rewrites MAIL FROM to <> anyway. The notification enters the
// pipeline at the first deliverer, with MAIL FROM <>. An error means the
// notification was not queued: the caller keeps the item.
func (e *Engine) bounce(it *queue.Item, failed []failure) error {
	if !e.bounces(it) || len(failed) == 0 {
		return nil
	}
	header, _ := e.q.Blob(it.Header)
	dsnHeader, dsnBody := buildDSN(e.opt.Hostname, it.Envelope.MailFrom, it.Received, failed, header, time.Now())
	first := -1
	for i, s := range e.stages {
		if s.Kind == sdk.KindDeliverer {
			first = i
			break
		}
	}
	env := sdk.Envelope{MailFrom: "", RcptTo: []string{it.Envelope.MailFrom}, BodyType: sdk.Body7Bit}
	n, err := e.q.Insert(env, dsnHeader, dsnBody, time.Now(), first)
	if err != nil {
		e.log.Error("[QUEUE] cannot queue bounce; the message is kept and tried again", "item", it.ID.String(), "error", err)
		return err
	}
	e.log.Info("[QUEUE] bounce queued", "item", it.ID.String(), "bounce", n.ID.String(), "recipients", len(failed))
	e.Submit(n)
	return nil
}

// bounceRetry is how long an item given up on waits before its bounce is
// tried again after the queue failed to store it.
const bounceRetry = time.Minute

// bounces reports whether a failed recipient of it gets a bounce.
func (e *Engine) bounces(it *queue.Item) bool {
	return e.opt.Bounce && it.Envelope.MailFrom != ""
}

// buildDSN renders the notification's header section and body (CRLF).
func buildDSN(hostname, to string, arrival time.Time, failed []failure, origHeader []byte, now time.Time) (header, body []byte) {
	var rnd [16]byte
	_, _ = rand.Read(rnd[:])
	boundary := "dsn-" + hex.EncodeToString(rnd[:8])
	var h bytes.Buffer
	fmt.Fprintf(&h, "From: Mail Delivery System <MAILER-DAEMON@%s>\r\n", hostname)
	fmt.Fprintf(&h, "To: <%s>\r\n", to)
	fmt.Fprintf(&h, "Subject: Undelivered Mail Returned to Sender\r\n")
	fmt.Fprintf(&h, "Date: %s\r\n", now.UTC().Format("Mon, 02 Jan 2006 15:04:05 -0700"))
	fmt.Fprintf(&h, "Message-ID: <%s@%s>\r\n", hex.EncodeToString(rnd[8:]), hostname)
	fmt.Fprintf(&h, "Auto-Submitted: auto-replied\r\n")
	fmt.Fprintf(&h, "MIME-Version: 1.0\r\n")
	fmt.Fprintf(&h, "Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"%s\"\r\n\r\n", boundary)

	var b bytes.Buffer
	fmt.Fprintf(&b, "--%s\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n", boundary)
	fmt.Fprintf(&b, "This is the mail system at %s.\r\n\r\nYour message could not be delivered to %d recipient(s).\r\n\r\n", hostname, len(failed))
	fmt.Fprintf(&b, "--%s\r\nContent-Type: message/delivery-status\r\n\r\n", boundary)
	fmt.Fprintf(&b, "Reporting-MTA: dns; %s\r\n", hostname)
	if !arrival.IsZero() {
		fmt.Fprintf(&b, "Arrival-Date: %s\r\n", arrival.UTC().Format("Mon, 02 Jan 2006 15:04:05 -0700"))
	}
	for _, f := range failed {
		e := sdk.AsError(f.err)
		status, diag := "5.0.0", "failed"
		if e != nil {
			status = e.EnhancedCode()
			if status[0] == '4' { // given up after temporary failures
				status = "5" + status[1:]
			}
			diag = fmt.Sprintf("%d %s %s", e.SMTPCode(), e.EnhancedCode(), oneLine(e.Message))
		}
		fmt.Fprintf(&b, "\r\nFinal-Recipient: rfc822; %s\r\nAction: failed\r\nStatus: %s\r\nDiagnostic-Code: smtp; %s\r\n", f.rcpt, status, diag)
	}
	fmt.Fprintf(&b, "\r\n--%s\r\nContent-Type: text/rfc822-headers\r\n\r\n", boundary)
	b.Write(bytes.TrimRight(origHeader, "\r\n"))
	fmt.Fprintf(&b, "\r\n\r\n--%s--\r\n", boundary)
	return h.Bytes(), b.Bytes()
}

func oneLine(s string) string {
	s = strings.NewReplacer("\r", " ", "\n", " ").Replace(s)
	if len(s) > 200 {
		s = s[:200]
	}
	return s
}
