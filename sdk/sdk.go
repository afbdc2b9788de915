// Package sdk is the whole public surface for writing a mixmta stage plugin:
// the message types, one small interface per stage kind, typed errors that
// say whether a failure is temporary, config-schema declaration and Serve,
// which turns a binary into a plugin the mixmta core launches and supervises
// over gRPC (github.com/hashicorp/go-plugin).
//
// # Contract for every stage kind
//
//   - Plugin.New makes one stage from its config. The core starts one
//     process per plugin binary and calls New in it once for each pipeline
//     stage that names the binary (three delay stages: three values, each
//     with its own config, in one process), then reuses each value for
//     every message of its stage. So a stage keeps its state in the value
//     New returns, never in package variables, which its sibling stages
//     share. Calls may arrive concurrently: a stage must be safe for
//     concurrent use.
//   - The core owns all state. A call may be repeated after a crash or a
//     timeout (at-least-once), so a stage must be idempotent or tolerate a
//     repeat: a Deliverer may deliver twice when the core dies between the
//     peer's 250 and its own commit; duplicates are bounded by the items in
//     flight.
//   - Errors: return an *Error from Temporary or Permanent to say what kind
//     of failure it is. Any other non-nil error is treated as temporary (the
//     item stays queued and is retried), so a plugin bug never loses mail.
//   - Stages see only what they declare in Needs: a stage without NeedBody
//     gets Message.Body == nil, and a stage without NeedHeader gets
//     Message.Header == nil. The envelope is always present. A checker or
//     deliverer that declares NeedBodyStream instead of NeedBody reads the
//     body as it arrives (Message.OpenBody), so a big message never has to
//     fit in its memory.
//   - Logs go to the Logger from Env (hclog, routed through the core's
//     logger). Never log an address, subject or content above Debug level.
package sdk

import (
	"bytes"
	"context"
	"io"
	"time"
)

// Kind names a stage kind. A plugin declares the kinds it implements.
type Kind string

// The stage kinds, in the order a pipeline runs them (checkers at RCPT and
// end of DATA; then transformers, router, delayer and deliverer in the order
// the pipeline file lists them).
const (
	KindChecker     Kind = "checker"
	KindTransformer Kind = "transformer"
	KindRouter      Kind = "router"
	KindDelayer     Kind = "delayer"
	KindDeliverer   Kind = "deliverer"
)

// Needs says which parts of a message a stage receives. The envelope is
// always sent; the header section and body only when declared, so a delay
// stage or a header sanitizer never ships a body over RPC.
type Needs uint32

const (
	// NeedHeader: the raw header section (Message.Header).
	NeedHeader Needs = 1 << iota
	// NeedBody: the raw body (Message.Body).
	NeedBody
	// NeedBodyStream: the raw body as a stream (Message.OpenBody, with
	// Body nil), read from the wire as the stage consumes it: memory per
	// call stays bounded whatever the message size. It applies to Check
	// and Deliver; a transformer or router that declares it gets Body as
	// with NeedBody.
	NeedBodyStream
)

// NeedAll is the full message.
const NeedAll = NeedHeader | NeedBody

// Body reports whether n asks for the body in any form.
func (n Needs) Body() bool { return n&(NeedBody|NeedBodyStream) != 0 }

// Mask returns a shallow copy of m holding only the parts n declares: no
// header without NeedHeader, no body (Body, OpenBody, BodyLen) unless
// Body() holds. The envelope and sizes are always kept. This is the one
// place the rule "a stage sees only what it declares" is applied; m
// itself is not changed.
func (n Needs) Mask(m *Message) *Message {
	v := *m
	if n&NeedHeader == 0 {
		v.Header = nil
	}
	if !n.Body() {
		v.Body, v.OpenBody, v.BodyLen = nil, nil, 0
	}
	return &v
}

// Capability is a promise a plugin makes about what its stage does, which
// the core relies on when it checks a pipeline's order.
type Capability string

// CapSanitizes: the stage (a transformer) removes everything in the header
// section and envelope that identifies the sender: it keeps only fields
// known to be safe, replaces From, Date and Message-ID, drops Received, and
// sets MAIL FROM to the null sender (or a configured address of its own).
// A pipeline whose router emits mixnet packets must run such a stage before
// that router, so that no sender-identifying value ever leaves the entry
// node (mixmta refuses the pipeline otherwise).
const CapSanitizes Capability = "sanitizes"

// BodyType is the MAIL FROM BODY= parameter (RFC 6152, RFC 3030).
type BodyType string

const (
	Body7Bit       BodyType = "7BIT"
	Body8BitMIME   BodyType = "8BITMIME"
	BodyBinaryMIME BodyType = "BINARYMIME"
)

// Envelope is the SMTP envelope (RFC 5321 §2.3.1): the reverse-path from
// MAIL FROM and the forward-paths from RCPT TO, as addresses without angle
// brackets. MailFrom is "" for the null reverse-path.
type Envelope struct {
	MailFrom string
	RcptTo   []string
	// SMTPUTF8 is set when MAIL FROM carried SMTPUTF8 (RFC 6531 §3.4).
	SMTPUTF8 bool
	BodyType BodyType
}

// Message is one queued message as a stage sees it.
type Message struct {
	// ID is the core's queue id: 32 lowercase hex digits, random, stable
	// across retries of the same item. It never encodes sender or time.
	ID       string
	Envelope Envelope
	// Header is the raw header section exactly as received (RFC 5322 §2.2),
	// CRLF line endings, including the empty line that ends it. Nil unless
	// the stage declared NeedHeader.
	Header []byte
	// Body is the raw body after the empty line, CRLF line endings, dots
	// unstuffed. Nil unless the stage declared NeedBody.
	Body []byte
	// OpenBody, when set, gives the body as a stream of BodyLen bytes
	// instead of Body (then nil). A stage that declared NeedBodyStream gets
	// it: the reader is valid until the stage's method returns and OpenBody
	// works once per call (the bytes cross the wire once; a stage that
	// needs them twice keeps them itself, see ReadBody). On the host side
	// (the core) OpenBody reads the queue and may be called again to
	// repeat a call.
	OpenBody func() (io.Reader, error)
	// BodyLen is the body's length in bytes when Body or OpenBody is set.
	BodyLen int64
	// Size is len(header)+len(body) in bytes, whether or not they were sent.
	Size int64
	// ReceivedAt is when the core acknowledged the message with 250.
	ReceivedAt time.Time
	// Attempt counts earlier delivery attempts of this item (0 on the first).
	Attempt int
}

// ReadBody returns the body in memory: Body, or all of OpenBody (nil if the
// stage got no body). Errors: the stream's (a truncated message).
func (m *Message) ReadBody() ([]byte, error) {
	if m.Body != nil || m.OpenBody == nil {
		return m.Body, nil
	}
	r, err := m.OpenBody()
	if err != nil {
		return nil, err
	}
	b := make([]byte, 0, m.BodyLen)
	buf := bytes.NewBuffer(b)
	if _, err := buf.ReadFrom(r); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// Checker accepts or rejects mail. It is called once per RCPT TO with
// Message.Header and Body nil and Envelope.RcptTo holding the recipients so
// far (the last one is the one being checked), and once at the end of DATA
// with the parts it declared. Return nil to accept, Permanent(...) for a 5xx
// reply, Temporary(...) for a 4xx reply.
type Checker interface {
	Check(ctx context.Context, m *Message) error
}

// Change is what a Transformer returns. A nil field is unchanged.
type Change struct {
	// MailFrom replaces the envelope reverse-path ("" is the null sender).
	MailFrom *string
	// Header replaces the header section (it must end with CRLF CRLF).
	Header []byte
	// Body replaces the body.
	Body []byte
}

// Transformer rewrites a message (header sanitizing, padding, signing). It
// runs after the message is queued, once per item, and must be deterministic
// enough that a repeat after a crash is harmless (it is applied to the stored
// message again, never to its own output).
type Transformer interface {
	Transform(ctx context.Context, m *Message) (*Change, error)
}

// Route is one delivery produced by a Router.
type Route struct {
	// RcptTo is the subset of recipients this delivery is for.
	RcptTo []string
	// Deliverer is the name of the pipeline stage that delivers it; "" means
	// the next deliverer in the pipeline.
	Deliverer string
	// Body, if not nil, replaces the whole message (header and body) for this
	// delivery, e.g. one Sphinx packet.
	Body []byte
	// NextHop, if not zero, makes this route a packet: Body goes over the
	// mix transport to that node instead of to a deliverer.
	NextHop NodeID
}

// Router splits a message into deliveries. Every recipient must appear in
// exactly one delivery route (one with no NextHop); packet routes (NextHop
// set) each list the recipients whose envelope travels inside the packet.
// A recipient the router covers in no route is a permanent failure for
// that recipient.
type Router interface {
	Route(ctx context.Context, m *Message) ([]Route, error)
}

// DelayRequest asks a Delayer for Count delays for one message.
type DelayRequest struct {
	Envelope Envelope
	// Size of the message in bytes.
	Size int64
	// Count is how many independent samples to return (>= 1).
	Count int
}

// Delayer samples how long the core holds an item before it may leave (the
// core stores send_after = now + delay and releases due items through its
// batch pool). It must return exactly Count non-negative durations.
type Delayer interface {
	Delay(ctx context.Context, req DelayRequest) ([]time.Duration, error)
}

// RcptResult is the outcome of one recipient of a delivery. Err nil means
// delivered; otherwise an *Error saying whether to retry.
type RcptResult struct {
	Rcpt string
	Err  error
	// Relay names the peer that took or refused the recipient, as
	// "host:port" (an SMTP or LMTP server), or "" when there is none (a
	// Maildir) or no peer answered. The core logs it with each delivery
	// attempt, as Postfix's relay=.
	Relay string
}

// Deliverer hands a message to its destination (an SMTP peer, a Maildir, a
// news server). It returns one result per recipient in Envelope.RcptTo, in
// any order; a recipient without a result is retried. A non-nil error
// applies to every recipient without its own result. The core may call
// Deliver again for recipients that failed temporarily.
type Deliverer interface {
	Deliver(ctx context.Context, m *Message) ([]RcptResult, error)
}
