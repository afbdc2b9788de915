package smtpd

import (
	"github.com/emersion/go-smtp"
)

// SpaceChecker is implemented by a Sink whose storage can fill up.
type SpaceChecker interface {
	// HasSpace reports whether size more bytes can be accepted without
	// the free space dropping below the configured reserve.
	HasSpace(size int64) bool
}

// checkSpace refuses a command with 452 4.3.1 (RFC 5321 §4.2.3
// "insufficient system storage", RFC 3463 X.3.1 "mail system full") when
// the sink lacks room for size more bytes. The client keeps the message
// and tries again later; nothing was accepted.
func (ss *session) checkSpace(size int64, cmd string) error {
	sc, ok := ss.s.sink.(SpaceChecker)
	if !ok || sc.HasSpace(size) {
		return nil
	}
	ss.s.c.SMTPFull.Add(1)
	return ss.reject(smtpErr(452, smtp.EnhancedCode{4, 3, 1}, "Insufficient system storage, try again later"), cmd)
}

// mailSize is the SIZE a client declared at MAIL (RFC 1870), or 0.
func mailSize(opts *smtp.MailOptions) int64 {
	if opts == nil {
		return 0
	}
	return opts.Size
}

// QueueChecker is implemented by a Sink whose queue has a size limit.
type QueueChecker interface {
	// QueueFull reports whether the queue holds as many items as it may.
	QueueFull() bool
}

// checkQueue refuses a command with 451 4.3.2 (RFC 3463 X.3.2 "system not
// accepting network messages") while the sink's queue is full: the client
// keeps the message and tries again later (backpressure), nothing already
// accepted is dropped to make room.
func (ss *session) checkQueue(cmd string) error {
	qc, ok := ss.s.sink.(QueueChecker)
	if !ok || !qc.QueueFull() {
		return nil
	}
	ss.s.c.SMTPQueueFull.Add(1)
	return ss.reject(smtpErr(451, smtp.EnhancedCode{4, 3, 2}, "Queue full, try again later"), cmd)
}
