package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"sync"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/hashicorp/go-hclog"

	"github.com/mixmta/mixmta/sdk"
)

// deliverer is the stage value. It is safe for concurrent use: the pool is
// the only shared mutable state.
type deliverer struct {
	cfg      Config
	log      hclog.Logger
	net      *network
	direct   *network   // no proxy: only for local_relay, a loopback address
	dns      *dnsClient // nil in relay mode with an IP relay host and no resolver
	resolver chain
	pool     *pool
	roots    *x509.CertPool // for tls_verify; nil: system roots
	lookup   *lookupServer  // Postfix socketmap, if lookup_listen is set
	// noPipelining: destinations (pool keys) that offer PIPELINING but
	// left a pipelined group unanswered; they get one command at a time
	// for the life of the process (pipelining.go).
	noPipelining sync.Map
}

var _ sdk.Deliverer = (*deliverer)(nil)

// newDeliverer builds the stage from a validated config.
func newDeliverer(cfg Config, log hclog.Logger) (*deliverer, error) {
	if log == nil {
		log = hclog.NewNullLogger()
	}
	d := &deliverer{cfg: cfg, log: log, net: newNetwork(cfg.SOCKS5, cfg.ConnectTimeout.D(), cfg.Circuits), direct: newNetwork("", cfg.ConnectTimeout.D(), 1)}
	needDNS := cfg.needsDNS() || cfg.Resolver != ""
	if cfg.RelayHost != "" && cfg.SOCKS5 == "" {
		if h, _, _ := splitHostPort(cfg.RelayHost, 25); !isIP(h) {
			needDNS = true
		}
	}
	if needDNS {
		dc, err := newDNSClient(cfg.Resolver, d.net, cfg.DNSTimeout.D())
		if err != nil {
			return nil, err
		}
		d.dns = dc
	}
	if cfg.TLSCAFile != "" {
		roots, err := loadCAs(cfg.TLSCAFile)
		if err != nil {
			return nil, fmt.Errorf("onionmx: tls_ca_file: %w", err)
		}
		d.roots = roots
	}
	var omap *onionMap
	if cfg.OnionMap != "" && cfg.RelayHost == "" {
		m, err := newOnionMap(cfg.OnionMap, log)
		if err != nil {
			return nil, fmt.Errorf("onionmx: %w", err)
		}
		omap = m
	}
	d.resolver = newChain(cfg, d.dns, omap)
	if cfg.LookupListen != "" {
		ls, err := startLookupServer(cfg.LookupListen, cfg.LookupTransport, onionOnly(cfg, d.dns, omap), cfg.DNSTimeout.D()+cfg.ConnectTimeout.D(), log)
		if err != nil {
			return nil, err
		}
		d.lookup = ls
	}
	d.pool = newPool(cfg.MaxIdle, cfg.IdleTimeout.D())
	return d, nil
}

func isIP(h string) bool { _, err := netip.ParseAddr(h); return err == nil }

// Deliver sends m to every recipient in m.Envelope.RcptTo and returns one
// result per distinct recipient. Recipients are grouped by destination
// (one group in relay mode, one per recipient domain otherwise) and the
// groups are delivered in parallel, each as one SMTP transaction: MAIL
// FROM, one RCPT TO per recipient, DATA. Reply codes map to results: 2xx
// delivered, 4xx sdk.Temporary, 5xx sdk.Permanent, each with the server's
// code; connection, DNS and timeout failures are temporary. The returned
// error is always nil.
func (d *deliverer) Deliver(ctx context.Context, m *sdk.Message) ([]sdk.RcptResult, error) {
	groups := map[string][]string{}
	var order []string
	var results []sdk.RcptResult
	seen := map[string]bool{}
	for _, r := range m.Envelope.RcptTo {
		if seen[r] {
			continue
		}
		seen[r] = true
		dom, err := recipientDomain(r)
		if err != nil {
			results = append(results, sdk.RcptResult{Rcpt: r, Err: err})
			continue
		}
		if d.cfg.RelayHost != "" {
			dom = "" // one smarthost for all
		}
		if _, ok := groups[dom]; !ok {
			order = append(order, dom)
		}
		groups[dom] = append(groups[dom], r)
	}
	if len(order) > 1 && m.Body == nil && m.OpenBody != nil {
		// Several transactions need the body, which streams in once: keep
		// it. A single destination (a relay host) streams it through.
		b, err := m.ReadBody()
		if err != nil {
			return nil, sdk.Temporary(451, "4.3.0", "onionmx: reading the message: %v", err)
		}
		v := *m
		v.Body, v.OpenBody = b, nil
		m = &v
	}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, dom := range order {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res := d.deliverGroup(ctx, m, dom, groups[dom])
			mu.Lock()
			results = append(results, res...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	return results, nil
}

// deliverGroup delivers m to rcpts, which share destination domain: it tries
// the domain's hosts in order until one gives per-recipient answers.
func (d *deliverer) deliverGroup(ctx context.Context, m *sdk.Message, domain string, rcpts []string) []sdk.RcptResult {
	all := func(err error) []sdk.RcptResult {
		out := make([]sdk.RcptResult, len(rcpts))
		for i, r := range rcpts {
			out[i] = sdk.RcptResult{Rcpt: r, Err: err}
		}
		return out
	}
	targets, err := d.resolver.resolve(ctx, domain)
	if err != nil {
		d.log.Debug("resolve failed", "domain", domain, "error", err)
		return all(err)
	}
	var hostErrs []*sdk.Error
	for _, t := range targets {
		res, hostErr := d.tryHost(ctx, t, domain, m, rcpts)
		if hostErr == nil {
			out := make([]sdk.RcptResult, len(rcpts))
			for i, r := range rcpts {
				err, ok := res[r]
				if !ok {
					// Never report delivery without a 250 for it.
					err = sdk.Temporary(451, "4.3.0", "onionmx: no result for recipient (bug)")
				}
				out[i] = sdk.RcptResult{Rcpt: r, Err: err, Relay: t.String()}
			}
			return out
		}
		d.log.Debug("host failed, trying the next", "host", t.String(), "error", hostErr)
		hostErrs = append(hostErrs, hostErr)
		if ctx.Err() != nil {
			break
		}
	}
	return all(pickHostError(hostErrs))
}

// pickHostError reports the failure of a destination whose every host
// failed: temporary if any host failed temporarily (the mail may still get
// through later), else the first permanent failure (all hosts refused).
func pickHostError(errs []*sdk.Error) *sdk.Error {
	if len(errs) == 0 {
		return sdk.Temporary(451, "4.4.4", "onionmx: no host to deliver to")
	}
	for _, e := range errs {
		if e.Temporary {
			return e
		}
	}
	return errs[0]
}

// tryHost runs one transaction for rcpts at t, on a pooled session if one
// is idle (retrying once on a fresh connection if the pooled one turns out
// dead). res maps each recipient to its outcome (nil = accepted). hostErr
// set means this host gave no per-recipient answer: try the next one.
func (d *deliverer) tryHost(ctx context.Context, t target, domain string, m *sdk.Message, rcpts []string) (res map[string]error, hostErr *sdk.Error) {
	key := t.String()
	for {
		s := d.pool.get(key)
		// A pipelining session sends its RSET with the transaction.
		if s != nil && s.wire == nil && !d.revive(ctx, s) {
			continue // dead; try the next idle one or dial
		}
		if s == nil {
			var err *sdk.Error
			if s, err = d.connect(ctx, t, domain); err != nil {
				return nil, err
			}
		}
		res, hostErr, keep, stale := d.transact(ctx, s, m, rcpts)
		reused := s.reused
		if keep {
			d.pool.release(s)
		} else {
			s.close()
		}
		if stale && reused {
			d.log.Debug("pooled connection died, redialling", "host", key)
			continue
		}
		return res, hostErr
	}
}

// revive readies a pooled session with RSET (RFC 5321 §4.1.1.5): it clears
// whatever the previous transaction left and proves the connection alive.
// A session that fails it is closed.
func (d *deliverer) revive(ctx context.Context, s *session) bool {
	stop := context.AfterFunc(ctx, func() { s.raw.Close() })
	err := s.c.Reset()
	if !stop() || err != nil {
		d.log.Debug("pooled connection is dead", "host", s.key, "error", err)
		s.close()
		return false
	}
	return true
}

// connect opens a session to t: TCP (or SOCKS), then greeting, EHLO and
// STARTTLS per the tls policy. With tls: may a failed handshake is retried
// once in plaintext on a new connection (opportunistic TLS, RFC 7435: an
// attacker who can break the handshake can strip STARTTLS too, so refusing
// would only lose mail from servers with broken TLS).
func (d *deliverer) connect(ctx context.Context, t target, domain string) (*session, *sdk.Error) {
	policy := d.cfg.TLS
	for {
		s, err := d.connectOnce(ctx, t, domain, policy)
		var te *tlsError
		if errors.As(err, &te) && policy == tlsMay {
			d.log.Debug("STARTTLS failed, retrying in plaintext", "host", t.String(), "error", err)
			policy = tlsNone
			continue
		}
		if err != nil {
			d.log.Debug("connect failed", "host", t.String(), "error", err)
			return nil, sessionError(err)
		}
		return s, nil
	}
}

func (d *deliverer) connectOnce(ctx context.Context, t target, domain, policy string) (*session, error) {
	lookup := func(ctx context.Context, host string) ([]netip.Addr, error) {
		if d.dns == nil {
			return nil, errors.New("no resolver for a host name")
		}
		return d.dns.lookupHost(ctx, domain, host)
	}
	dial := d.net.dialHost
	if t.local {
		dial = d.direct.dialHost
	}
	raw, err := dial(ctx, t.host, t.port, lookup)
	if err != nil {
		return nil, err
	}
	stop := context.AfterFunc(ctx, func() { raw.Close() })
	defer stop()
	conn, encrypted := raw, false
	if policy != tlsNone {
		conn, encrypted, err = negotiate(ctx, raw, d.cfg.HELO, d.tlsConfig(t.host), policy == tlsRequire, d.cfg.CommandTimeout.D())
		if err != nil {
			raw.Close()
			return nil, err
		}
	}
	c := smtp.NewClient(conn)
	c.CommandTimeout = d.cfg.CommandTimeout.D()
	c.SubmissionTimeout = d.cfg.DataTimeout.D()
	if err := c.Hello(d.cfg.HELO); err != nil {
		raw.Close()
		return nil, fmt.Errorf("EHLO: %w", err)
	}
	if ctx.Err() != nil {
		raw.Close()
		return nil, ctx.Err()
	}
	s := &session{c: c, raw: raw, key: t.String(), encrypted: encrypted}
	_, broken := d.noPipelining.Load(s.key)
	if ok, _ := c.Extension("PIPELINING"); ok && d.cfg.Pipelining && !broken {
		s.wire = newWire(conn)
	}
	return s, nil
}

// tlsConfig is the client TLS config for host (a name or an IP): SNI and
// verification name is the MX host name (or relay host) itself. Only tls:
// require with tls_verify checks the certificate; opportunistic TLS accepts
// any certificate and TLS 1.0 up, since anything beats plaintext.
func (d *deliverer) tlsConfig(host string) *tls.Config {
	cfg := &tls.Config{ServerName: host}
	if d.cfg.TLS == tlsRequire && d.cfg.TLSVerify {
		cfg.RootCAs = d.roots
		cfg.MinVersion = tls.VersionTLS12
	} else {
		cfg.InsecureSkipVerify = true
		cfg.MinVersion = tls.VersionTLS10
	}
	return cfg
}

// transact runs MAIL, RCPT and DATA on s. res maps each recipient to its
// outcome; hostErr means no recipient got an answer here (try the next
// host); keep means s is fit for the pool; stale means s came from the pool
// and was found dead before anything was sent (retry on a new connection).
func (d *deliverer) transact(ctx context.Context, s *session, m *sdk.Message, rcpts []string) (res map[string]error, hostErr *sdk.Error, keep, stale bool) {
	// A cancelled context closes the connection, unblocking any read.
	stop := context.AfterFunc(ctx, func() { s.raw.Close() })
	defer func() {
		if !stop() {
			keep = false
		}
	}()
	c := s.c
	needUTF8 := m.Envelope.SMTPUTF8 || !isASCII(m.Envelope.MailFrom)
	for _, r := range rcpts {
		needUTF8 = needUTF8 || !isASCII(r)
	}
	if needUTF8 {
		if ok, _ := c.Extension("SMTPUTF8"); !ok {
			return nil, sdk.Permanent(553, "5.6.7", "onionmx: message needs SMTPUTF8 and the server does not offer it (RFC 6531 §3.2)"), true, false
		}
	}
	if m.Envelope.BodyType == sdk.BodyBinaryMIME {
		return nil, sdk.Permanent(554, "5.6.3", "onionmx: BINARYMIME messages cannot be relayed with DATA (RFC 3030)"), true, false
	}
	no8Bit := false
	if ok, _ := c.Extension("8BITMIME"); !ok && !needUTF8 {
		if has8Bit(m.Header) || has8Bit(m.Body) {
			return nil, err8Bit, true, false
		}
		// A streamed body is checked as it is sent.
		no8Bit = m.Body == nil && m.OpenBody != nil
	}
	size := int64(len(m.Header)) + bodyLen(m)
	if limit, ok := c.MaxMessageSize(); ok && limit > 0 && size > int64(limit) {
		return nil, sdk.Permanent(552, "5.3.4", "onionmx: message larger than the server's SIZE limit (RFC 1870)"), true, false
	}

	if s.wire != nil {
		return d.transactPipelined(s, m, rcpts, needUTF8, no8Bit, size)
	}
	if err := c.Mail(m.Envelope.MailFrom, &smtp.MailOptions{UTF8: needUTF8, Size: size}); err != nil {
		se, isReply := smtpReply(err)
		if s.reused && (!isReply || se.Code == 421) {
			return nil, nil, false, true
		}
		e := replyToError("MAIL FROM", err)
		d.log.Debug("MAIL FROM refused", "host", s.key, "reply", err)
		if isReply && se.Code >= 500 {
			// The server refused the sender: final for every recipient.
			res = map[string]error{}
			for _, r := range rcpts {
				res[r] = e
			}
			return res, nil, true, false
		}
		return nil, e, isReply && se.Code != 421, false
	}

	res = make(map[string]error, len(rcpts))
	var accepted []string
	for i, r := range rcpts {
		err := c.Rcpt(r, nil)
		if err == nil {
			accepted = append(accepted, r)
			continue
		}
		d.log.Debug("RCPT TO refused", "host", s.key, "rcpt", r, "reply", err)
		e := replyToError("RCPT TO", err)
		res[r] = e
		if se, ok := smtpReply(err); !ok || se.Code == 421 {
			// The connection is gone: nothing else can be answered now.
			for _, rest := range append(accepted, rcpts[i+1:]...) {
				res[rest] = e
			}
			if len(accepted) == 0 && i == 0 {
				return nil, e, false, false
			}
			return res, nil, false, false
		}
	}
	if len(accepted) == 0 {
		// End the transaction now rather than leave it open while idle.
		return res, nil, c.Reset() == nil, false
	}
	failAccepted := func(phase string, err error) {
		e := replyToError(phase, err)
		for _, r := range accepted {
			res[r] = e
		}
	}
	w, err := c.Data()
	if err != nil {
		d.log.Debug("DATA refused", "host", s.key, "reply", err)
		failAccepted("DATA", err)
		_, isReply := smtpReply(err)
		return res, nil, isReply, false
	}
	// go-smtp sets no deadline while the body is written.
	_ = s.raw.SetDeadline(time.Now().Add(d.cfg.DataTimeout.D()))
	cw := &crlfWriter{w: w}
	_, err = cw.Write(m.Header)
	if err == nil {
		err = writeBody(cw, m, no8Bit)
	}
	if err != nil {
		// Nothing was delivered: the final dot was never sent, and the
		// connection is dropped.
		var be *bodyError
		switch {
		case errors.Is(err, err8Bit):
			for _, r := range accepted {
				res[r] = err8Bit
			}
		case errors.As(err, &be):
			e := sdk.Temporary(451, "4.3.0", "onionmx: reading the message: %v", be.err)
			for _, r := range accepted {
				res[r] = e
			}
		default:
			failAccepted("DATA", err)
		}
		return res, nil, false, false
	}
	if err := w.Close(); err != nil {
		d.log.Debug("message refused at end of data", "host", s.key, "reply", err)
		failAccepted("end of data", err)
		se, isReply := smtpReply(err)
		return res, nil, isReply && se.Code != 421, false
	}
	for _, r := range accepted {
		res[r] = nil
	}
	d.log.Debug("delivered", "host", s.key, "recipients", len(accepted), "tls", s.encrypted, "reused", s.reused)
	return res, nil, true, false
}

// smtpReply returns err as an SMTP reply, if it is one.
func smtpReply(err error) (*smtp.SMTPError, bool) {
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		return se, true
	}
	return nil, false
}

// replyToError maps the outcome of one SMTP command to an *sdk.Error: a
// 4xx reply is temporary and a 5xx permanent, keeping the server's reply
// code and its enhanced code (RFC 3463) when that agrees with the reply's
// class; anything else (connection lost, timeout, odd reply) is temporary.
// The message names the plugin and the command, never the server's text,
// which often echoes the address.
func replyToError(phase string, err error) *sdk.Error {
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		class := se.Code / 100
		enh := ""
		if ec := se.EnhancedCode; ec[0] == class && ec[1] >= 0 && ec[2] >= 0 && (ec[1] != 0 || ec[2] != 0) {
			enh = fmt.Sprintf("%d.%d.%d", ec[0], ec[1], ec[2])
		}
		switch class {
		case 4:
			return sdk.Temporary(se.Code, enh, "onionmx: %s: server replied %d (temporary)", phase, se.Code)
		case 5:
			return sdk.Permanent(se.Code, enh, "onionmx: %s: server replied %d", phase, se.Code)
		default:
			return sdk.Temporary(451, "4.5.0", "onionmx: %s: unexpected reply %d", phase, se.Code)
		}
	}
	return sdk.Temporary(451, "4.4.2", "onionmx: %s: %s", phase, netReason(err))
}

// sessionError maps a failure to set up a session (connect, greeting,
// EHLO, STARTTLS) to an *sdk.Error.
func sessionError(err error) *sdk.Error {
	var de *dialError
	var re *replyError
	var te *tlsError
	var e *sdk.Error
	switch {
	case errors.As(err, &e):
		return e
	case errors.Is(err, errNoSTARTTLS):
		return sdk.Temporary(451, "4.7.10", "onionmx: tls: require and the server does not offer STARTTLS")
	case errors.As(err, &te):
		return sdk.Temporary(451, "4.7.10", "onionmx: tls: require and the TLS handshake failed")
	case errors.As(err, &de):
		return sdk.Temporary(451, "4.4.1", "onionmx: %s", de.what)
	case errors.As(err, &re):
		return setupReply(re.phase, re.err.Code, parseEnhanced(re.err.Msg))
	}
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		return setupReply("greeting or EHLO", se.Code, se.EnhancedCode)
	}
	return sdk.Temporary(451, "4.4.2", "onionmx: session setup failed: %s", netReason(err))
}

// setupReply maps a refusal before MAIL FROM (greeting, EHLO, STARTTLS).
// Even a 5xx is temporary: the host is skipped and the message retried
// later, as Postfix does by default (smtp_skip_5xx_greeting), since a host
// refusing service says nothing about the recipient.
func setupReply(phase string, code int, ec smtp.EnhancedCode) *sdk.Error {
	e := replyToError(phase, &smtp.SMTPError{Code: code, EnhancedCode: ec})
	if !e.Temporary {
		return sdk.Temporary(451, "4.4.0", "onionmx: %s: server replied %d, host skipped", phase, code)
	}
	return e
}

// parseEnhanced reads a leading RFC 3463 code from reply text.
func parseEnhanced(msg string) smtp.EnhancedCode {
	var ec smtp.EnhancedCode
	if n, _ := fmt.Sscanf(msg, "%d.%d.%d", &ec[0], &ec[1], &ec[2]); n != 3 {
		return smtp.EnhancedCode{}
	}
	return ec
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

var err8Bit = sdk.Permanent(554, "5.6.3", "onionmx: 8-bit message and the server does not offer 8BITMIME (RFC 6152 §3)")

// bodyError is a failure to read the streamed body (not the peer's fault).
type bodyError struct{ err error }

func (e *bodyError) Error() string { return e.err.Error() }

// bodyLen is the length of m's body, in memory or streamed.
func bodyLen(m *sdk.Message) int64 {
	if m.Body != nil {
		return int64(len(m.Body))
	}
	return m.BodyLen
}

// writeBody writes m's body to w: from memory, or streamed from OpenBody in
// bounded memory (once: the stream cannot be replayed for another host).
// With no8Bit, a byte >= 0x80 stops the stream with err8Bit.
func writeBody(w io.Writer, m *sdk.Message, no8Bit bool) error {
	if m.Body != nil || m.OpenBody == nil {
		_, err := w.Write(m.Body)
		return err
	}
	r, err := m.OpenBody()
	if err != nil {
		return &bodyError{err}
	}
	buf := make([]byte, 64<<10)
	for {
		n, rerr := r.Read(buf)
		if no8Bit && has8Bit(buf[:n]) {
			return err8Bit
		}
		if n > 0 {
			if _, err := w.Write(buf[:n]); err != nil {
				return err
			}
		}
		if rerr == io.EOF {
			return nil
		}
		if rerr != nil {
			return &bodyError{rerr}
		}
	}
}

// crlfWriter writes message content as SMTP DATA lines (RFC 5321
// §2.3.8, §4.5.2): every bare CR and every bare LF becomes CR LF, and,
// with stuff, a line starting with "." gets a second one and Close ends
// the data with ".\r\n". Message content from a stage (a mixnet exit's
// payload is whatever its anonymous sender made) may hold "\r.\r",
// which textproto's dot writer passes as is: the end of data for
// receivers that take a bare CR for a line end, and the start of a
// smuggled second message (CVE-2023-51764..51766). It works on spans
// between line ends (bytes.IndexByte), not a byte at a time. Without
// stuff it feeds go-smtp's DATA writer, which stuffs and ends the data
// itself.
type crlfWriter struct {
	w         io.Writer
	stuff     bool
	cr        bool // the last byte written was CR: its LF is not written yet
	midLine   bool // not at the start of a line
	wroteSome bool
}

var (
	lfByte    = []byte("\n")
	crlfBytes = []byte("\r\n")
	dotByte   = []byte(".")
)

func (c *crlfWriter) Write(b []byte) (int, error) {
	if len(b) > 0 {
		c.wroteSome = true
	}
	// b[start:i] is checked and not yet written: clean lines go out in
	// one Write, split only where a byte must be added.
	start, i := 0, 0
	add := func(extra []byte) error {
		if _, err := c.w.Write(b[start:i]); err != nil {
			return err
		}
		start = i
		_, err := c.w.Write(extra)
		return err
	}
	for i < len(b) {
		if c.cr {
			c.cr = false
			c.midLine = false
			if b[i] == '\n' {
				i++
				continue
			}
			// A bare CR (already taken): its LF.
			if err := add(lfByte); err != nil {
				return 0, err
			}
		}
		if !c.midLine {
			c.midLine = true
			if c.stuff && b[i] == '.' {
				if err := add(dotByte); err != nil {
					return 0, err
				}
			}
		}
		rest := b[i:]
		lf := bytes.IndexByte(rest, '\n')
		line := rest
		if lf >= 0 {
			line = rest[:lf]
		}
		if cr := bytes.IndexByte(line, '\r'); cr >= 0 {
			// Taken; the byte after it decides.
			i += cr + 1
			c.cr = true
			continue
		}
		if lf < 0 {
			i = len(b)
			break
		}
		// A bare LF: CR LF in its place.
		i += lf
		if err := add(crlfBytes); err != nil {
			return 0, err
		}
		i++
		start = i
		c.midLine = false
	}
	if _, err := c.w.Write(b[start:]); err != nil {
		return 0, err
	}
	return len(b), nil
}

// Close ends the last line and, with stuff, writes the end of data. As
// textproto's dot writer, it ends empty content with an empty line.
func (c *crlfWriter) Close() error {
	if !c.stuff {
		return nil
	}
	end := ".\r\n"
	switch {
	case c.cr:
		end = "\n" + end
	case c.midLine || !c.wroteSome:
		end = "\r\n" + end
	}
	_, err := io.WriteString(c.w, end)
	return err
}

func has8Bit(b []byte) bool {
	for _, c := range b {
		if c >= 0x80 {
			return true
		}
	}
	return false
}
