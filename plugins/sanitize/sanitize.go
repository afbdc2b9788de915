package main

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"math/big"
	"net/textproto"
	"slices"
	"strings"
	"time"
)

// DateLayout is the RFC 5322 §3.3 date-time the generated Date field uses,
// always in UTC (+0000) so it never reveals the node's time zone.
const DateLayout = "Mon, 02 Jan 2006 15:04:05 +0000"

// maxLoggedNames caps the dropped field names kept for a Debug log line.
const maxLoggedNames = 64

// neverKept reports whether a field (lower-case name) is dropped whatever
// the allow list says: the originator and trace fields that identify the
// sender (RFC 5322 §3.6.2, §3.6.6, §3.6.7; Bcc §3.6.3) and the three fields
// this stage generates (From, Date, Message-ID).
func neverKept(lower string) bool {
	switch lower {
	case "from", "sender", "date", "message-id", "return-path", "received", "bcc":
		return true
	}
	return strings.HasPrefix(lower, "resent-")
}

// singleInstance reports whether a field (lower-case name) may appear at most
// once: the RFC 5322 §3.6 fields with an upper limit of 1, MIME-Version and
// every Content-* field (RFC 2045 §3-§8, RFC 2183), and the RFC 5536
// Newsgroups and Followup-To. Only the first occurrence is kept: a second
// Subject or To could otherwise smuggle text past a reader that shows the
// first.
func singleInstance(lower string) bool {
	switch lower {
	case "to", "cc", "subject", "reply-to", "in-reply-to", "references",
		"mime-version", "newsgroups", "followup-to":
		return true
	}
	return strings.HasPrefix(lower, "content-")
}

// canonicalNames spell the usual fields the way RFC 5322, RFC 2045 and
// RFC 5536 do, so the original's capitalization (a hint to the sender's mail
// client) does not survive.
var canonicalNames = map[string]string{
	"to":                        "To",
	"cc":                        "Cc",
	"subject":                   "Subject",
	"reply-to":                  "Reply-To",
	"in-reply-to":               "In-Reply-To",
	"references":                "References",
	"newsgroups":                "Newsgroups",
	"followup-to":               "Followup-To",
	"keywords":                  "Keywords",
	"comments":                  "Comments",
	"mime-version":              "MIME-Version",
	"content-type":              "Content-Type",
	"content-transfer-encoding": "Content-Transfer-Encoding",
	"content-disposition":       "Content-Disposition",
	"content-id":                "Content-ID",
	"content-description":       "Content-Description",
	"content-language":          "Content-Language",
	"content-location":          "Content-Location",
	"content-md5":               "Content-MD5",
}

func canonicalName(name []byte, lower string) string {
	if c, ok := canonicalNames[lower]; ok {
		return c
	}
	return textproto.CanonicalMIMEHeaderKey(string(name))
}

// field is one header field as parsed by parseHeader, or one run of lines
// that is not a field (bad).
type field struct {
	// name is the field name as written, without the WSP that obsolete
	// syntax (RFC 5322 §4.5) allows before the colon.
	name []byte
	// value is the rest of the first line after the colon.
	value []byte
	// cont are the raw continuation lines (each starts with SP or HTAB)
	// with their CRLF or LF endings; the last may have none.
	cont []byte
	// bad: no colon, an empty or invalid name, a continuation line with no
	// field before it, or a bare CR or NUL in any of its lines.
	bad bool
}

// parseHeader splits a header section (RFC 5322 §2.2) into fields. A field
// is a line that starts with a non-WSP character and has a colon, followed by
// the lines that start with SP or HTAB (§2.2.3 folding). Lines end with CRLF
// or a bare LF. The section ends at the first empty line or at the end of h;
// trailing reports bytes after that empty line, which are not header.
// It runs in time linear in len(h), allocates only the returned slice (the
// fields point into h) and never fails: what is not a field comes back with
// bad set.
func parseHeader(h []byte) (fields []field, trailing bool) {
	fields = make([]field, 0, bytes.Count(h, []byte{'\n'})+1)
	for pos := 0; pos < len(h); {
		start, end, next := pos, len(h), len(h)
		if i := bytes.IndexByte(h[pos:], '\n'); i >= 0 {
			end, next = pos+i, pos+i+1
		}
		pos = next
		line := bytes.TrimSuffix(h[start:end], []byte{'\r'})
		if len(line) == 0 {
			trailing = pos < len(h)
			break
		}
		// A bare CR splits lines for some readers; NUL truncates them for
		// others. A field carrying either is not passed on.
		damaged := bytes.IndexByte(line, '\r') >= 0 || bytes.IndexByte(line, 0) >= 0
		if line[0] == ' ' || line[0] == '\t' {
			if len(fields) == 0 {
				fields = append(fields, field{bad: true})
			}
			f := &fields[len(fields)-1]
			if f.cont == nil {
				f.cont = h[start:next]
			} else {
				// Continuation lines are contiguous in h: grow the span.
				f.cont = f.cont[:len(f.cont)+next-start]
			}
			f.bad = f.bad || damaged
			continue
		}
		f := field{bad: damaged}
		colon := bytes.IndexByte(line, ':')
		if colon < 0 {
			f.bad = true
		} else {
			f.name = bytes.TrimRight(line[:colon], " \t")
			f.value = line[colon+1:]
			f.bad = f.bad || !validName(f.name)
		}
		fields = append(fields, f)
	}
	return fields, trailing
}

// validName reports whether name is a non-empty RFC 5322 §3.6.8 field name.
func validName(name []byte) bool {
	for _, b := range name {
		if !isFtext(b) {
			return false
		}
	}
	return len(name) > 0
}

// lowerName returns an ASCII field name in lower case (one allocation).
func lowerName(name []byte) string {
	var b strings.Builder
	b.Grow(len(name))
	for _, c := range name {
		if c >= 'A' && c <= 'Z' {
			c += 'a' - 'A'
		}
		b.WriteByte(c)
	}
	return b.String()
}

// lines calls fn for each line of a continuation span, without its ending.
func lines(span []byte, fn func(line []byte)) {
	for len(span) > 0 {
		line := span
		if i := bytes.IndexByte(span, '\n'); i >= 0 {
			line, span = span[:i], span[i+1:]
		} else {
			span = nil
		}
		fn(bytes.TrimSuffix(line, []byte{'\r'}))
	}
}

// Sanitizer rewrites header sections by allow-list. It is safe for
// concurrent use.
type Sanitizer struct {
	exact  map[string]int // lower-case name -> rank (position in allow)
	from   string
	domain string
	round  time.Duration
	fuzz   time.Duration
	add    []string
	// rand supplies the Message-ID and the Date fuzz; crypto/rand.Reader
	// unless a test replaces it.
	rand io.Reader
}

// NewSanitizer builds a Sanitizer from a validated Config.
func NewSanitizer(c Config) *Sanitizer {
	s := &Sanitizer{
		exact:  map[string]int{},
		from:   c.From,
		domain: c.MessageIDDomain,
		round:  c.DateRound.D(),
		fuzz:   c.DateFuzz.D(),
		add:    slices.Clone(c.AddHeaders),
		rand:   rand.Reader,
	}
	for rank, name := range c.Allow {
		if lower := strings.ToLower(name); !s.known(lower) {
			s.exact[lower] = rank
		}
	}
	return s
}

func (s *Sanitizer) known(lower string) bool { _, ok := s.exact[lower]; return ok }

// rank returns the position in the allow list of lower, or -1 when the
// list does not name it exactly or the field is never kept.
func (s *Sanitizer) rank(lower string) int {
	if neverKept(lower) {
		return -1
	}
	if r, ok := s.exact[lower]; ok {
		return r
	}
	return -1
}

// Result is the outcome of Sanitize.
type Result struct {
	// Header is the new header section: CRLF line endings, ending with
	// CRLF CRLF.
	Header []byte
	// Kept counts the original fields passed on.
	Kept int
	// Dropped counts well-formed fields not on the allow list (the original
	// From, Date and Message-ID among them).
	Dropped int
	// Duplicates counts later copies of single-instance fields.
	Duplicates int
	// Malformed counts runs of lines that were not a header field, plus one
	// for bytes after the empty line that ends the section.
	Malformed int
	// DroppedNames are the names of the first 64 dropped well-formed fields,
	// for Debug logs only (never their values).
	DroppedNames []string
}

// Removed is the number of fields and non-field line runs not passed on.
func (r Result) Removed() int { return r.Dropped + r.Duplicates + r.Malformed }

type keptField struct {
	f     *field
	rank  int
	lower string
	name  string
}

// Sanitize returns a new header section built from h (the raw header
// section, CRLF or LF line endings, with or without its final empty line):
//
//  1. Date: now in UTC, moved back by U[0, date_fuzz) and rounded down to a
//     multiple of date_round (whole seconds when 0), in DateLayout;
//  2. From: the configured address;
//  3. Message-ID: <32 lower-case hex digits (128 random bits)@domain>;
//  4. the original fields the allow list names exactly (never From,
//     Sender, Date, Message-ID, Return-Path, Received, Bcc, Resent-*), only
//     the first of each single-instance field, ordered by the allow-list
//     entry they matched and then by name, values byte for byte (RFC 2047
//     encoded words, RFC 6532 UTF-8 and any 8-bit bytes included; folding
//     kept, continuation lines of only WSP removed), except MIME-Version,
//     which is always "1.0" without comments;
//  5. the configured add_headers lines;
//
// then the empty line. Folded continuation lines belong to their field and
// go with it; lines that are not part of a field are dropped. The body is not
// seen and not changed. The only error is a failure of the random source.
func (s *Sanitizer) Sanitize(h []byte, now time.Time) (Result, error) {
	var r Result
	fields, trailing := parseHeader(h)
	if trailing {
		r.Malformed++
	}
	kept := make([]keptField, 0, 16)
	seen := map[string]bool{}
	for i := range fields {
		f := &fields[i]
		if f.bad {
			r.Malformed++
			continue
		}
		lower := lowerName(f.name)
		rank := s.rank(lower)
		if rank < 0 {
			r.Dropped++
			if len(r.DroppedNames) < maxLoggedNames {
				r.DroppedNames = append(r.DroppedNames, string(f.name))
			}
			continue
		}
		if singleInstance(lower) {
			if seen[lower] {
				r.Duplicates++
				continue
			}
			seen[lower] = true
		}
		kept = append(kept, keptField{f: f, rank: rank, lower: lower, name: canonicalName(f.name, lower)})
	}
	r.Kept = len(kept)
	// The original order is a hint to the sender's mail client: replace it
	// with the allow list's order (stable, so repeats keep their order).
	slices.SortStableFunc(kept, func(a, b keptField) int {
		if a.rank != b.rank {
			return a.rank - b.rank
		}
		return strings.Compare(a.lower, b.lower)
	})

	date, err := s.date(now)
	if err != nil {
		return Result{}, err
	}
	var id [16]byte
	if _, err := io.ReadFull(s.rand, id[:]); err != nil {
		return Result{}, fmt.Errorf("random Message-ID: %w", err)
	}

	out := bytes.NewBuffer(make([]byte, 0, len(h)+256))
	out.WriteString("Date: " + date.Format(DateLayout) + "\r\n")
	out.WriteString("From: " + s.from + "\r\n")
	out.WriteString("Message-ID: <" + hex.EncodeToString(id[:]) + "@" + s.domain + ">\r\n")
	for _, k := range kept {
		if k.lower == "mime-version" {
			// 1.0 is the only version (RFC 2045 §4); the comments clients
			// add, e.g. "(Mac OS X Mail 16.0 \(3774.600.62\))", name them.
			out.WriteString("MIME-Version: 1.0\r\n")
			continue
		}
		out.WriteString(k.name)
		out.WriteByte(':')
		out.Write(k.f.value)
		out.WriteString("\r\n")
		lines(k.f.cont, func(c []byte) {
			// A line of only WSP (obs-FWS) carries nothing, and some
			// readers take it for the end of the header.
			if len(bytes.Trim(c, " \t")) > 0 {
				out.Write(c)
				out.WriteString("\r\n")
			}
		})
	}
	for _, a := range s.add {
		out.WriteString(a + "\r\n")
	}
	out.WriteString("\r\n")
	r.Header = out.Bytes()
	return r, nil
}

// date returns the generated Date: now in UTC, minus U[0, fuzz), truncated to
// a multiple of round (counted from 0001-01-01 00:00 UTC, so 1h and 24h align
// with UTC hours and days), truncated to the second. It is never after now
// and never earlier than now - fuzz - round (or now - fuzz - 1s).
func (s *Sanitizer) date(now time.Time) (time.Time, error) {
	t := now.UTC()
	if s.fuzz > 0 {
		n, err := rand.Int(s.rand, big.NewInt(int64(s.fuzz)))
		if err != nil {
			return time.Time{}, fmt.Errorf("random Date fuzz: %w", err)
		}
		t = t.Add(-time.Duration(n.Int64()))
	}
	if s.round > 0 {
		t = t.Truncate(s.round)
	}
	return t.Truncate(time.Second), nil
}
