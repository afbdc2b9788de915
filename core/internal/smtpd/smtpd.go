// Package smtpd is mixmta's SMTP ingress (RFC 5321, with SIZE, 8BITMIME,
// SMTPUTF8, PIPELINING, ENHANCEDSTATUSCODES, optional STARTTLS and AUTH
// PLAIN), built on emersion/go-smtp. Each listener enforces its own relay
// policy, default-deny: a recipient is accepted only for a local domain, or
// when this client may relay (an allowed network, an authenticated user, or
// a public entry with rate limits). Loopback is never trusted implicitly:
// behind a Tor onion service every client is 127.0.0.1.
//
// A message is answered 250 only after the queue has synced it to disk.
package smtpd

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"github.com/hashicorp/go-hclog"

	"github.com/mixmta/mixmta/core/internal/config"
	"github.com/mixmta/mixmta/core/internal/queue"
	"github.com/mixmta/mixmta/core/internal/stats"
	"github.com/mixmta/mixmta/core/internal/users"
	"github.com/mixmta/mixmta/internal/pluginclient"
	"github.com/mixmta/mixmta/sdk"
	"github.com/mixmta/mixmta/sdk/address"
)

// Checker is a checker stage (see sdk.Checker).
type Checker interface {
	Name() string
	Check(ctx context.Context, m *sdk.Message) error
}

// Sink receives accepted messages.
type Sink interface {
	// NewBody starts a body that DATA streams into the queue.
	NewBody() (*queue.BodyWriter, error)
	// AcceptBody stores the message durably (synced) and returns its item.
	AcceptBody(env sdk.Envelope, header []byte, body *queue.BodyWriter, received time.Time) (*queue.Item, error)
	// Submit hands the stored item to the pipeline.
	Submit(it *queue.Item)
}

// Server is one SMTP listener.
type Server struct {
	cfg      config.Listener
	hostname string
	sink     Sink
	checkers []Checker
	log      hclog.Logger
	c        *stats.Counters

	smtp    *smtp.Server
	ln      net.Listener
	blocks  *config.BlockList
	users   map[string]users.Hash
	limiter *rateLimiter
	// tlsConfig serves STARTTLS, which clientConn runs itself (nil: not
	// offered); go-smtp is never given it.
	tlsConfig *tls.Config
	sessions  atomic.Int64
	nextID    atomic.Uint64
}

// New builds a listener from its config. Errors: unreadable TLS files,
// users file or block list.
func New(cfg config.Listener, hostname string, sink Sink, checkers []Checker, c *stats.Counters, log hclog.Logger) (*Server, error) {
	s := &Server{cfg: cfg, hostname: hostname, sink: sink, checkers: checkers, c: c, log: log.Named("smtp").With("listener", cfg.Name)}
	srv := smtp.NewServer(s)
	srv.Addr = cfg.Address
	srv.Domain = hostname
	srv.MaxMessageBytes = cfg.MaxMessageBytes
	srv.MaxRecipients = cfg.MaxRecipients
	srv.MaxLineLength = cfg.MaxLineLength
	srv.ReadTimeout = cfg.ReadTimeout.D()
	srv.WriteTimeout = cfg.WriteTimeout.D()
	srv.EnableSMTPUTF8 = true
	// go-smtp cannot see the TLS that clientConn runs: the session offers
	// and accepts AUTH only after STARTTLS.
	srv.AllowInsecureAuth = true
	srv.ErrorLog = errorLog{s.log}
	if cfg.TLS != nil {
		cert, err := tls.LoadX509KeyPair(cfg.TLS.CertFile, cfg.TLS.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("listener %s: tls: %w", cfg.Name, err)
		}
		s.tlsConfig = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}
	if cfg.Auth != nil {
		u, err := users.Read(cfg.Auth.UsersFile)
		if err != nil {
			return nil, fmt.Errorf("listener %s: auth: %w", cfg.Name, err)
		}
		s.users = u
	}
	if f := cfg.Relay.DestinationBlockFile; f != "" {
		bl, err := config.ReadBlockList(f)
		if err != nil {
			return nil, fmt.Errorf("listener %s: %w", cfg.Name, err)
		}
		s.blocks = bl
	}
	if rl := cfg.Relay.RateLimit; rl != nil {
		s.limiter = newRateLimiter(rl.Messages, rl.Per.D(), rl.Burst)
	}
	s.smtp = srv
	return s, nil
}

// Listen binds the listener's address.
func (s *Server) Listen() error {
	ln, err := net.Listen("tcp", s.cfg.Address)
	if err != nil {
		return fmt.Errorf("listener %s: %w", s.cfg.Name, err)
	}
	s.ln = &limitListener{Listener: ln, s: s, perIP: map[netip.Addr]int{}}
	return nil
}

// Addr returns the bound address (after Listen).
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// Serve accepts connections until Shutdown.
func (s *Server) Serve() error {
	err := s.smtp.Serve(s.ln)
	if errors.Is(err, smtp.ErrServerClosed) {
		return nil
	}
	return err
}

// Shutdown stops accepting, waits for sessions to end until ctx expires,
// then closes the rest (their messages without 250 are the client's).
func (s *Server) Shutdown(ctx context.Context) error {
	err := s.smtp.Shutdown(ctx)
	if err != nil {
		s.smtp.Close()
	}
	return err
}

// Sessions returns the number of open sessions.
func (s *Server) Sessions() int64 { return s.sessions.Load() }

// NewSession implements smtp.Backend.
func (s *Server) NewSession(c *smtp.Conn) (smtp.Session, error) {
	cc, _ := c.Conn().(*clientConn)
	sess := &session{s: s, cc: cc, ip: remoteIP(c.Conn()), id: s.nextID.Add(1)}
	return sess, nil
}

type session struct {
	s    *Server
	cc   *clientConn // the connection below go-smtp (it runs STARTTLS)
	ip   netip.Addr
	id   uint64
	user string

	env     sdk.Envelope
	relayed int
	started bool
}

// tls reports whether the session runs inside TLS.
func (ss *session) tls() bool { return ss.cc != nil && ss.cc.isTLS() }

func smtpErr(code int, enh smtp.EnhancedCode, msg string) *smtp.SMTPError {
	return &smtp.SMTPError{Code: code, EnhancedCode: enh, Message: msg}
}

func (ss *session) reject(err *smtp.SMTPError, what string) error {
	ss.s.c.Rejected.Add(1)
	ss.s.log.Info("[SMTP] refused", "session", ss.id, "command", what, "reply", fmt.Sprintf("%d %d.%d.%d", err.Code, err.EnhancedCode[0], err.EnhancedCode[1], err.EnhancedCode[2]))
	return err
}

// AuthMechanisms implements smtp.AuthSession: PLAIN when users exist,
// only after STARTTLS.
func (ss *session) AuthMechanisms() []string {
	if ss.s.users == nil || !ss.tls() {
		return nil
	}
	return []string{sasl.Plain}
}

// Auth implements smtp.AuthSession (RFC 4616 PLAIN).
func (ss *session) Auth(mech string) (sasl.Server, error) {
	if ss.s.users == nil || mech != sasl.Plain {
		return nil, smtp.ErrAuthUnsupported
	}
	if !ss.tls() {
		return nil, smtpErr(538, smtp.EnhancedCode{5, 7, 11}, "Encryption required for requested authentication mechanism")
	}
	if ss.cc.needsHello() {
		return nil, smtpErr(503, smtp.EnhancedCode{5, 5, 1}, "Send EHLO again after STARTTLS")
	}
	return sasl.NewPlainServer(func(identity, username, password string) error {
		hash, ok := ss.s.users[username]
		if !ok {
			// Compare anyway so timing does not reveal which users exist.
			users.VerifyUnknown(password)
			return ss.reject(smtpErr(535, smtp.EnhancedCode{5, 7, 8}, "Authentication credentials invalid"), "AUTH")
		}
		if identity != "" && identity != username {
			return ss.reject(smtpErr(535, smtp.EnhancedCode{5, 7, 8}, "Authorization identity must match"), "AUTH")
		}
		if !hash.Verify(password) {
			return ss.reject(smtpErr(535, smtp.EnhancedCode{5, 7, 8}, "Authentication credentials invalid"), "AUTH")
		}
		ss.user = username
		return nil
	}), nil
}

func (ss *session) Mail(from string, opts *smtp.MailOptions) error {
	if ss.cc != nil && ss.cc.needsHello() {
		return ss.reject(smtpErr(503, smtp.EnhancedCode{5, 5, 1}, "Send EHLO again after STARTTLS"), "MAIL")
	}
	if from != "" {
		m, err := address.ParseUnquoted(from, opts != nil && opts.UTF8)
		if err != nil {
			return ss.reject(addressErr(err, smtp.EnhancedCode{5, 1, 7}, "sender"), "MAIL")
		}
		if err := checkOnion(m.ASCIIDomain()); err != nil {
			return ss.reject(smtpErr(553, smtp.EnhancedCode{5, 1, 7}, "Bad sender address: "+err.Error()), "MAIL")
		}
		// Like RCPT TO: the queue and the next MTA get the spelling the
		// checks here and the checker stages judged.
		from = m.Normalized().String()
	}
	if ss.s.limiter != nil && !ss.s.limiter.allow(clientKey(ss.ip), time.Now()) {
		return ss.reject(smtpErr(450, smtp.EnhancedCode{4, 7, 1}, "Rate limit exceeded, try again later"), "MAIL")
	}
	if err := ss.checkSpace(mailSize(opts), "MAIL"); err != nil {
		return err
	}
	if err := ss.checkQueue("MAIL"); err != nil {
		return err
	}
	ss.env = sdk.Envelope{MailFrom: from, BodyType: sdk.Body7Bit}
	if opts != nil {
		ss.env.SMTPUTF8 = opts.UTF8
		if opts.Body != "" {
			ss.env.BodyType = sdk.BodyType(opts.Body)
		}
	}
	ss.relayed = 0
	ss.started = true
	return nil
}

// mayRelay reports whether this session may send to non-local domains.
func (ss *session) mayRelay() bool {
	r := ss.s.cfg.Relay
	if r.Anyone {
		return true
	}
	if r.AuthenticatedUsers && ss.user != "" {
		return true
	}
	for _, p := range r.Networks {
		if ss.ip.IsValid() && p.Contains(ss.ip) {
			return true
		}
	}
	return false
}

func (ss *session) isLocal(domain string) bool {
	for _, d := range ss.s.cfg.LocalDomains {
		if strings.EqualFold(d, domain) {
			return true
		}
	}
	return false
}

func (ss *session) Rcpt(to string, opts *smtp.RcptOptions) error {
	if !ss.started {
		return ss.reject(smtpErr(503, smtp.EnhancedCode{5, 5, 1}, "MAIL first"), "RCPT")
	}
	m, err := address.ParseUnquoted(to, ss.env.SMTPUTF8)
	if err != nil {
		return ss.reject(addressErr(err, smtp.EnhancedCode{5, 1, 3}, "recipient"), "RCPT")
	}
	domain := m.ASCIIDomain()
	if err := checkOnion(domain); err != nil {
		return ss.reject(smtpErr(553, smtp.EnhancedCode{5, 1, 3}, "Bad recipient address: "+err.Error()), "RCPT")
	}
	// A non-ASCII domain goes on in the form the policy below judges.
	m = m.Normalized()
	// The queue gets the address exactly as the policy below judged it.
	to = m.String()
	if m.Routed() && !ss.mayRelay() {
		return ss.reject(smtpErr(550, smtp.EnhancedCode{5, 7, 1}, "Sender-specified routing (%, !, or a second @) is not allowed"), "RCPT")
	}
	if !ss.isLocal(domain) {
		if !ss.mayRelay() {
			return ss.reject(smtpErr(550, smtp.EnhancedCode{5, 7, 1}, "Relaying denied"), "RCPT")
		}
		if ss.s.blocks.Blocked(to) {
			return ss.reject(smtpErr(550, smtp.EnhancedCode{5, 7, 1}, "Recipient has opted out of anonymous mail"), "RCPT")
		}
		if max := ss.s.cfg.Relay.MaxRecipients; max > 0 && ss.relayed >= max {
			return ss.reject(smtpErr(452, smtp.EnhancedCode{4, 5, 3}, fmt.Sprintf("Too many recipients (at most %d)", max)), "RCPT")
		}
	}
	if err := ss.checkQueue("RCPT"); err != nil {
		return err
	}
	env := ss.env
	env.RcptTo = append(append([]string{}, ss.env.RcptTo...), to)
	for _, c := range ss.s.checkers {
		if err := c.Check(context.Background(), &sdk.Message{Envelope: env}); err != nil {
			return ss.reject(toSMTP(err), "RCPT")
		}
	}
	if !ss.isLocal(domain) {
		ss.relayed++
	}
	ss.env.RcptTo = env.RcptTo
	return nil
}

// toSMTP maps a stage error to an SMTP reply; anything that is not an
// *sdk.Error, and a plugin that crashed or cannot be reached, becomes 451
// 4.3.0 with a fixed text (never lose mail on a plugin bug, and never show
// the client Go error text or socket paths).
func toSMTP(err error) *smtp.SMTPError {
	var se *sdk.Error
	if !errors.As(err, &se) || pluginclient.IsTransport(err) {
		return smtpErr(451, smtp.EnhancedCode{4, 3, 0}, "Temporary local problem, try again later")
	}
	e := sdk.AsError(err)
	code := e.SMTPCode()
	var enh smtp.EnhancedCode
	if _, err := fmt.Sscanf(e.EnhancedCode(), "%d.%d.%d", &enh[0], &enh[1], &enh[2]); err != nil || enh[0] != code/100 {
		enh = smtp.EnhancedCode{code / 100, 0, 0}
	}
	msg := e.Message
	if msg == "" {
		msg = "Rejected"
	}
	return smtpErr(code, enh, msg)
}

// Data receives the message. Memory per session stays bounded whatever the
// message size: the header section (at most max_header_bytes) is read into
// memory, the body goes to the queue in sealed chunks as it arrives
// (queue.BodyWriter), and checkers that read the body get it streamed back
// from the queue.
func (ss *session) Data(r io.Reader) error {
	if ss.cc != nil {
		ss.cc.beginData()
		defer ss.cc.endData()
		// After DATA (not BDAT) the message is read from the connection
		// in bulk, checked as go-smtp's reader and lineEndReader did.
		if d := ss.cc.startDot(); d != nil {
			r = d
			defer ss.cc.endDot()
		}
	}
	if !ss.started || len(ss.env.RcptTo) == 0 {
		_, _ = io.Copy(io.Discard, r)
		return ss.reject(smtpErr(503, smtp.EnhancedCode{5, 5, 1}, "RCPT first"), "DATA")
	}
	if _, ok := r.(*dotReader); !ok {
		r = &lineEndReader{r: r}
	}
	bufs := dataBufs.Get().(*dataBuf)
	defer dataBufs.Put(bufs)
	br := bufs.br
	br.Reset(r)
	defer br.Reset(nil)
	header, tooBig, err := readHeader(br, ss.s.cfg.MaxHeaderBytes)
	if err != nil {
		return ss.dataFailed(err)
	}
	if tooBig {
		_, _ = io.Copy(io.Discard, br)
		return ss.reject(smtpErr(552, smtp.EnhancedCode{5, 3, 4}, fmt.Sprintf("Message header exceeds %d bytes", ss.s.cfg.MaxHeaderBytes)), "DATA")
	}
	if n := CountFields(header); n > ss.s.cfg.MaxHeaderFields {
		_, _ = io.Copy(io.Discard, br)
		return ss.reject(smtpErr(552, smtp.EnhancedCode{5, 3, 4}, fmt.Sprintf("Message header has more than %d fields", ss.s.cfg.MaxHeaderFields)), "DATA")
	}
	body, err := ss.s.sink.NewBody()
	if err != nil {
		_, _ = io.Copy(io.Discard, br)
		return ss.queueFailed(err)
	}
	buf := bufs.buf
	for {
		n, rerr := br.Read(buf)
		if n > 0 {
			// Checked as the body arrives, not only at MAIL and at the
			// end: sessions streaming at once without SIZE would
			// otherwise fill the disk together, and a full disk under
			// the queue's memory-mapped writes crashes the daemon.
			if err := ss.checkSpace(int64(n), "DATA"); err != nil {
				body.Abort()
				_, _ = io.Copy(io.Discard, br)
				return err
			}
			if _, werr := body.Write(buf[:n]); werr != nil {
				body.Abort()
				_, _ = io.Copy(io.Discard, br)
				return ss.queueFailed(werr)
			}
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			body.Abort()
			return ss.dataFailed(rerr)
		}
	}
	if ss.cc != nil && ss.cc.takeBare() {
		body.Abort()
		return ss.dataFailed(errBareLineEnd)
	}
	for _, c := range ss.s.checkers {
		m := &sdk.Message{Envelope: ss.env, Header: header, Size: int64(len(header)) + body.Len(), BodyLen: body.Len(), OpenBody: body.Open}
		if err := c.Check(context.Background(), m); err != nil {
			body.Abort()
			return ss.reject(toSMTP(err), "DATA")
		}
	}
	if err := ss.checkSpace(int64(len(header))+body.Len(), "DATA"); err != nil {
		body.Abort()
		return err
	}
	if err := ss.checkQueue("DATA"); err != nil {
		body.Abort()
		return err
	}
	it, err := ss.s.sink.AcceptBody(ss.env, header, body, time.Now())
	if err != nil {
		body.Abort()
		return ss.queueFailed(err)
	}
	ss.s.c.Received.Add(1)
	ss.s.log.Info("[SMTP] accepted", "session", ss.id, "item", it.ID.String(), "size", it.Size, "rcpts", len(ss.env.RcptTo))
	ss.s.sink.Submit(it)
	if ss.cc != nil {
		ss.cc.accepted()
	}
	ss.reset()
	return nil
}

// dataBuf is the memory one DATA/BDAT transfer reads through, reused
// across messages (a 64 KiB message would otherwise allocate 128 KiB).
type dataBuf struct {
	br  *bufio.Reader
	buf []byte
}

var dataBufs = sync.Pool{New: func() any {
	return &dataBuf{br: bufio.NewReaderSize(nil, 64<<10), buf: make([]byte, 64<<10)}
}}

// dataFailed answers a DATA/BDAT transfer that could not be read to its
// end. Only an oversized message keeps the session (go-smtp reads the
// rest to the end marker); after anything else the stream cannot be
// trusted to be in step, so the reply is the session's last: the rest of
// a message must never be read as commands. No reply carries Go error
// text.
func (ss *session) dataFailed(err error) error {
	if errors.Is(err, smtp.ErrDataTooLarge) {
		return ss.reject(smtp.ErrDataTooLarge, "DATA")
	}
	if errors.Is(err, smtp.ErrDataReset) {
		// RSET or a new transaction between BDAT chunks: nothing to answer.
		return err
	}
	if ss.cc != nil {
		ss.cc.closeAfterReply()
	}
	var se *smtp.SMTPError
	switch {
	case errors.Is(err, errBareLineEnd):
		se = smtpErr(554, smtp.EnhancedCode{5, 5, 2}, "Bare CR or LF in message data (RFC 5321 section 2.3.8), closing connection")
	case errors.Is(err, smtp.ErrTooLongLine):
		se = smtpErr(500, smtp.EnhancedCode{5, 5, 2}, fmt.Sprintf("Line too long (at most %d bytes), closing connection", ss.s.cfg.MaxLineLength))
	case errors.As(err, &se) && se.Code == 421:
	default:
		se = smtpErr(421, smtp.EnhancedCode{4, 4, 2}, "Connection error during message transfer, closing connection")
	}
	return ss.reject(se, "DATA")
}

// queueFailed answers a queue write that failed: nothing was accepted.
func (ss *session) queueFailed(err error) error {
	if errors.Is(err, syscall.ENOSPC) {
		ss.s.c.SMTPFull.Add(1)
		ss.s.log.Warn("[SMTP] queue write failed: disk full", "session", ss.id)
		return ss.reject(smtpErr(452, smtp.EnhancedCode{4, 3, 1}, "Insufficient system storage, try again later"), "DATA")
	}
	ss.s.log.Error("[SMTP] queue write failed", "session", ss.id, "error", err)
	return ss.reject(smtpErr(451, smtp.EnhancedCode{4, 3, 0}, "Queue unavailable, try again later"), "DATA")
}

// readHeader reads the header section from br: every line up to and
// including the first empty line (RFC 5322 §2.1; CRLF, or a bare LF), or
// everything when there is no empty line (the message is all header). It
// stops with tooBig once more than limit bytes were read, so memory stays
// bounded by limit; the rest of the data is then left in br.
func readHeader(br *bufio.Reader, limit int64) (header []byte, tooBig bool, err error) {
	lineStart := true
	for {
		piece, err := br.ReadSlice('\n')
		header = append(header, piece...)
		if int64(len(header)) > limit {
			return header, true, nil
		}
		switch {
		case err == bufio.ErrBufferFull:
			lineStart = false
			continue
		case err == io.EOF:
			return header, false, nil
		case err != nil:
			return nil, false, err
		}
		if lineStart && (string(piece) == "\r\n" || string(piece) == "\n") {
			return header, false, nil
		}
		lineStart = true
	}
}

func (ss *session) reset() {
	ss.env = sdk.Envelope{}
	ss.relayed = 0
	ss.started = false
}

func (ss *session) Reset()        { ss.reset() }
func (ss *session) Logout() error { return nil }

// SplitMessage splits raw message data at the first empty line into the
// header section (including the empty line, CRLF CRLF) and the body (RFC
// 5322 §2.1). A message without an empty line is all header. A message
// starting with an empty line has an empty header section.
func SplitMessage(raw []byte) (header, body []byte) {
	if bytes.HasPrefix(raw, []byte("\r\n")) {
		return raw[:2], raw[2:]
	}
	if i := bytes.Index(raw, []byte("\r\n\r\n")); i >= 0 {
		return raw[:i+4], raw[i+4:]
	}
	if i := bytes.Index(raw, []byte("\n\n")); i >= 0 {
		return raw[:i+2], raw[i+2:]
	}
	return raw, nil
}

// CountFields counts the header fields in a header section: lines that do
// not start with whitespace (continuations) and are not empty.
func CountFields(header []byte) int {
	n := 0
	for len(header) > 0 {
		line := header
		if i := bytes.IndexByte(header, '\n'); i >= 0 {
			line, header = header[:i], header[i+1:]
		} else {
			header = nil
		}
		if len(line) > 0 && line[0] != ' ' && line[0] != '\t' && line[0] != '\r' {
			n++
		}
	}
	return n
}

// addressErr maps an address.ParseUnquoted error to its reply: 553 5.6.7 for an
// 8-bit address without SMTPUTF8 (RFC 6531 §3.3), 501 with syntax (the
// enhanced code for sender or recipient, RFC 3463 X.1.7 / X.1.3) for
// invalid UTF-8, 553 for any other syntax error (RFC 5321 §4.2.2).
func addressErr(err error, syntax smtp.EnhancedCode, who string) *smtp.SMTPError {
	switch {
	case errors.Is(err, address.ErrNeedsSMTPUTF8):
		return smtpErr(553, smtp.EnhancedCode{5, 6, 7}, "Non-ASCII "+who+" address needs SMTPUTF8")
	case errors.Is(err, address.ErrNotUTF8):
		return smtpErr(501, syntax, "Bad "+who+" address: not valid UTF-8")
	}
	return smtpErr(553, syntax, "Bad "+who+" address syntax")
}

type errorLog struct{ l hclog.Logger }

func (e errorLog) Printf(format string, v ...any) { e.l.Debug(fmt.Sprintf(format, v...)) }
func (e errorLog) Println(v ...any)               { e.l.Debug(fmt.Sprint(v...)) }
