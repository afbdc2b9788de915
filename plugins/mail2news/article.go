package main

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/mail"
	"regexp"
	"strings"
	"time"

	"github.com/emersion/go-message/textproto"

	"github.com/mixmta/mixmta/sdk"
)

// Article is a Usenet article ready to post: RFC 5536 header fields and the
// body, CRLF line endings, not dot-stuffed.
type Article struct {
	// MessageID is the article's Message-ID with angle brackets.
	MessageID string
	// Groups are the newsgroups it is posted to, in order, without
	// duplicates.
	Groups []string
	// Header is the header section without its empty line.
	Header []byte
	// Body is the body after the empty line.
	Body []byte
}

// Bytes returns the whole article (header, empty line, body).
func (a *Article) Bytes() []byte {
	out := make([]byte, 0, len(a.Header)+2+len(a.Body))
	out = append(out, a.Header...)
	out = append(out, "\r\n"...)
	return append(out, a.Body...)
}

// refusedFields make a message a control message or one of its relatives:
// an anonymous gateway never lets them through (RFC 5537 §5.3 control
// messages, §3.5.1 Approved; Cancel and X-Cancel are the older spellings,
// Supersedes replaces someone's article).
var refusedFields = []string{"Control", "Also-Control", "Approved", "Cancel", "X-Cancel", "Supersedes"}

// tracingFields are removed: they carry the mail path, the original
// recipients, or are set by the news server itself (RFC 5536 §3.2.7 Xref,
// RFC 5537 §3.2.1 Path and Injection-Info, obsolete Lines and
// NNTP-Posting-*).
var tracingFields = []string{
	"Received", "Return-Path", "Delivered-To", "X-Original-To", "To", "Cc", "Bcc",
	"Path", "Xref", "Lines", "Content-Length", "Injection-Info", "Injection-Date",
	"NNTP-Posting-Host", "NNTP-Posting-Date", "X-Trace", "X-Complaints-To",
}

// groupName is a newsgroup name as existing gateways accept it: lower case,
// at least two components (RFC 5536 §3.1.4 allows a wider set; single
// component names are reserved like "control" and "junk").
var groupName = regexp.MustCompile(`^[a-z][a-z0-9+_-]*(\.[a-z0-9+_-]+)+$`)

// addressPattern is a recipient local part carrying the groups:
// mail2news-YYYYMMDD-group1=group2 (crooks/mail2news's convention).
var addressPattern = regexp.MustCompile(`^mail2news-([0-9]{8})-(.+)$`)

// maxFuture is RFC 5537 §3.5's limit: an injecting agent refuses an
// article whose Date is more than 24 hours in the future.
const maxFuture = 24 * time.Hour

// buildArticle turns a message into an article, or returns the permanent
// *sdk.Error that says why it is refused. now is the injection time.
func (g *gateway) buildArticle(m *sdk.Message, now time.Time) (*Article, error) {
	if m.Size > g.cfg.MaxBytes {
		return nil, sdk.Permanent(552, "3.4", "mail2news: message is %d bytes, over the %d-byte article limit", m.Size, g.cfg.MaxBytes)
	}
	h, err := textproto.ReadHeader(bufio.NewReader(bytes.NewReader(m.Header)))
	if err != nil {
		return nil, sdk.Permanent(554, "6.0", "mail2news: malformed header section")
	}
	// A bare CR ends a line for some news software and NUL truncates it
	// for others: "Subject: x<CR>Control: cancel <id>" would become a
	// control message downstream. The SMTP listener refuses bare CRs, but
	// messages also arrive from the mixnet.
	if hb := bytes.ReplaceAll(m.Header, []byte("\r\n"), nil); bytes.IndexByte(hb, '\r') >= 0 || bytes.IndexByte(hb, 0) >= 0 {
		return nil, sdk.Permanent(554, "6.0", "mail2news: header section contains a bare CR or a NUL")
	}
	for _, f := range refusedFields {
		if h.Has(f) {
			return nil, sdk.Permanent(554, "7.1", "mail2news: %s header refused: no control messages, approvals, cancels or supersedes", f)
		}
	}
	groups, err := g.newsgroups(&h, m.Envelope.RcptTo, now)
	if err != nil {
		return nil, err
	}
	date := now.UTC()
	if v := h.Get("Date"); v != "" {
		// An unparsable Date is replaced like a missing one: the article
		// needs a valid one (RFC 5536 §3.1.1), and guessing is worse.
		if d, err := mail.ParseDate(v); err == nil {
			if d.After(now.Add(maxFuture)) {
				return nil, sdk.Permanent(554, "6.0", "mail2news: Date is more than 24 hours in the future")
			}
			date = d
		}
	}
	for _, f := range tracingFields {
		h.Del(f)
	}
	id := strings.TrimSpace(h.Get("Message-ID"))
	if !validMessageID(id) {
		id = newMessageID(g.cfg.MessageIDDomain)
	}
	if strings.TrimSpace(h.Get("From")) == "" {
		h.Set("From", g.cfg.From)
	}
	if strings.TrimSpace(h.Get("Subject")) == "" {
		h.Set("Subject", "None")
	}
	for _, f := range []string{"Message-ID", "Date", "Newsgroups"} {
		h.Del(f)
	}
	// The fields this gateway writes come first, in RFC 5536's spelling
	// (go-message would write "Message-Id"); the rest follow as received.
	var hb bytes.Buffer
	fmt.Fprintf(&hb, "Path: %s!not-for-mail\r\nNewsgroups: %s\r\nDate: %s\r\nMessage-ID: %s\r\n",
		g.cfg.PathHost, strings.Join(groups, ","), date.Format("Mon, 02 Jan 2006 15:04:05 -0700"), id)
	if err := textproto.WriteHeader(&hb, h); err != nil {
		return nil, sdk.Permanent(554, "6.0", "mail2news: header cannot be written: %v", err)
	}
	header := bytes.TrimSuffix(hb.Bytes(), []byte("\r\n"))
	return &Article{MessageID: id, Groups: groups, Header: header, Body: m.Body}, nil
}

// newsgroups returns the checked, deduplicated groups: from the
// Newsgroups field when there is one (it wins, as at existing gateways),
// else from the recipients' mail2news-YYYYMMDD-group1=group2 local parts.
func (g *gateway) newsgroups(h *textproto.Header, rcpts []string, now time.Time) ([]string, error) {
	var names []string
	if v := h.Get("Newsgroups"); strings.TrimSpace(v) != "" {
		for _, n := range strings.Split(v, ",") {
			names = append(names, strings.TrimSpace(n))
		}
	} else {
		for _, r := range rcpts {
			local := r
			if i := strings.LastIndexByte(r, '@'); i >= 0 {
				local = r[:i]
			}
			local = strings.ToLower(local)
			if !strings.HasPrefix(local, "mail2news-") {
				continue
			}
			sm := addressPattern.FindStringSubmatch(local)
			if sm == nil {
				return nil, sdk.Permanent(550, "1.3", "mail2news: recipient is not of the form mail2news-YYYYMMDD-group1=group2")
			}
			day, err := time.Parse("20060102", sm[1])
			if err != nil {
				return nil, sdk.Permanent(550, "1.3", "mail2news: recipient date %s is not a valid YYYYMMDD", sm[1])
			}
			// The day runs from 00:00 to 24:00 UTC; it must overlap
			// [now - address_past, now + address_future].
			if !day.Add(24*time.Hour).After(now.Add(-g.cfg.AddressPast.D())) || day.After(now.Add(g.cfg.AddressFuture.D())) {
				return nil, sdk.Permanent(550, "1.3", "mail2news: recipient date %s is outside the accepted window (%s past, %s future)", sm[1], g.cfg.AddressPast, g.cfg.AddressFuture)
			}
			names = append(names, strings.Split(sm[2], "=")...)
		}
	}
	if len(names) == 0 {
		return nil, sdk.Permanent(554, "6.0", "mail2news: no newsgroup: neither a Newsgroups header nor a mail2news-YYYYMMDD-group recipient")
	}
	var groups []string
	seen := map[string]bool{}
	for i, n := range names {
		if !groupName.MatchString(n) || len(n) > 250 {
			return nil, sdk.Permanent(554, "6.0", "mail2news: newsgroup %d of %d is malformed (want lower-case dotted names like alt.test)", i+1, len(names))
		}
		if n == "junk" || strings.HasPrefix(n, "control.") {
			return nil, sdk.Permanent(554, "7.1", "mail2news: newsgroup %d of %d is a control or junk group", i+1, len(names))
		}
		if !seen[n] {
			seen[n] = true
			groups = append(groups, n)
		}
	}
	if len(groups) > g.cfg.MaxGroups {
		return nil, sdk.Permanent(554, "7.1", "mail2news: crossposted to %d newsgroups; the limit is %d", len(groups), g.cfg.MaxGroups)
	}
	return groups, nil
}

// validMessageID checks the RFC 5536 §3.1.3 msg-id shape: "<left@right>",
// printable ASCII without spaces, at most 250 octets, no "<", ">" inside.
func validMessageID(s string) bool {
	if len(s) < 5 || len(s) > 250 || s[0] != '<' || s[len(s)-1] != '>' {
		return false
	}
	inner := s[1 : len(s)-1]
	at := strings.IndexByte(inner, '@')
	if at <= 0 || at == len(inner)-1 || strings.Count(inner, "@") != 1 {
		return false
	}
	for i := 0; i < len(inner); i++ {
		c := inner[i]
		if c <= ' ' || c >= 0x7f || c == '<' || c == '>' {
			return false
		}
	}
	return true
}

// newMessageID returns "<32 hex digits@domain>" from crypto/rand.
func newMessageID(domain string) string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return "<" + hex.EncodeToString(b[:]) + "@" + domain + ">"
}
