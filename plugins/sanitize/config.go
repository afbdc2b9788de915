package main

import (
	"fmt"
	"net/mail"
	"strings"
	"time"

	"github.com/mixmta/mixmta/sdk"
)

// Config is the sanitize stage's config block in the pipeline file. The
// defaults are in main.go; README.md documents every key.
type Config struct {
	Allow           []string     `json:"allow" doc:"header field names kept from the original message, exact and case-insensitive (no patterns); replaces the default list"`
	From            string       `json:"from" doc:"the From field every message gets (RFC 5322 §3.4 address, ASCII)"`
	MessageIDDomain string       `json:"message_id_domain" doc:"domain part of the generated Message-ID <32 hex digits@domain>"`
	DateRound       sdk.Duration `json:"date_round" doc:"the generated Date is rounded down to a multiple of this (UTC); 0 keeps whole seconds"`
	DateFuzz        sdk.Duration `json:"date_fuzz" doc:"the generated Date is moved back by a uniform random amount in [0, date_fuzz) before rounding"`
	EnvelopeSender  string       `json:"envelope_sender" doc:"MAIL FROM of every outgoing message (addr-spec); empty is the null reverse-path <>"`
	AddHeaders      []string     `json:"add_headers" doc:"fixed header lines (\"Name: value\", ASCII, one line each) appended to every message"`
}

// maxDateShift bounds date_round and date_fuzz: a Date more than a week old
// makes receivers treat mail as stale or spam, and is almost surely a typo.
const maxDateShift = 7 * 24 * time.Hour

// maxLine is RFC 5322 §2.1.1's limit on a line, without its CRLF.
const maxLine = 998

// Validate checks every key and names the first bad one.
func (c *Config) Validate() error {
	if c.Allow == nil {
		return sdk.FieldErrorf("allow", "must be a list of field names (use [] to keep no original field)")
	}
	for i, p := range c.Allow {
		if err := checkAllowName(p); err != nil {
			return sdk.FieldErrorf(fmt.Sprintf("allow.%d", i), "%v", err)
		}
	}
	if err := checkFrom(c.From); err != nil {
		return sdk.FieldErrorf("from", "%v", err)
	}
	if err := checkDomain(c.MessageIDDomain); err != nil {
		return sdk.FieldErrorf("message_id_domain", "%v", err)
	}
	if c.DateRound < 0 || c.DateRound.D() > maxDateShift {
		return sdk.FieldErrorf("date_round", "must be between 0 and %s, got %s", maxDateShift, c.DateRound)
	}
	if c.DateFuzz < 0 || c.DateFuzz.D() > maxDateShift {
		return sdk.FieldErrorf("date_fuzz", "must be between 0 and %s, got %s", maxDateShift, c.DateFuzz)
	}
	if err := checkEnvelopeSender(c.EnvelopeSender); err != nil {
		return sdk.FieldErrorf("envelope_sender", "%v", err)
	}
	for i, h := range c.AddHeaders {
		if err := checkAddHeader(h); err != nil {
			return sdk.FieldErrorf(fmt.Sprintf("add_headers.%d", i), "%v", err)
		}
	}
	return nil
}

// isFtext reports whether b may appear in a field name (RFC 5322 §3.6.8:
// printable US-ASCII except colon).
func isFtext(b byte) bool { return b >= 33 && b <= 126 && b != ':' }

func checkFieldName(name string) error {
	if name == "" {
		return fmt.Errorf("empty field name")
	}
	for i := 0; i < len(name); i++ {
		if !isFtext(name[i]) {
			return fmt.Errorf("field name %q has a character not allowed by RFC 5322 §3.6.8", name)
		}
	}
	return nil
}

// checkAllowName accepts an exact field name that may be kept. Patterns
// are refused: a Content-* prefix let Content-X-Originating-IP and a
// Content-ID naming the sender's host through.
func checkAllowName(name string) error {
	if strings.Contains(name, "*") {
		return fmt.Errorf("%q: patterns are not allowed, list exact field names (a prefix such as Content-* keeps fields like Content-X-Originating-IP)", name)
	}
	if err := checkFieldName(name); err != nil {
		return err
	}
	if neverKept(strings.ToLower(name)) {
		return fmt.Errorf("%s is never kept: it identifies the sender or is replaced by this stage", name)
	}
	return nil
}

// printableASCII reports whether s holds only printable US-ASCII and HTAB:
// no CR, LF, NUL or 8-bit bytes, which would need SMTPUTF8 (RFC 6531)
// downstream or could split a header line.
func printableASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if (s[i] < 32 && s[i] != '\t') || s[i] > 126 {
			return false
		}
	}
	return true
}

func checkFrom(from string) error {
	if from == "" {
		return fmt.Errorf("must be set")
	}
	if !printableASCII(from) {
		return fmt.Errorf("must be printable ASCII on one line (write a non-ASCII name as an RFC 2047 encoded word)")
	}
	if len("From: ")+len(from) > maxLine {
		return fmt.Errorf("longer than one %d-character header line", maxLine)
	}
	if _, err := mail.ParseAddress(from); err != nil {
		return fmt.Errorf("not an RFC 5322 address: %v", err)
	}
	return nil
}

// checkDomain accepts an RFC 1035 §2.3.1 host name: dot-separated labels of
// letters, digits and hyphens, 1-63 bytes each, no hyphen at either end,
// 253 bytes in all.
func checkDomain(d string) error {
	if d == "" {
		return fmt.Errorf("must be set")
	}
	if len(d) > 253 {
		return fmt.Errorf("longer than 253 characters")
	}
	for _, l := range strings.Split(d, ".") {
		if l == "" || len(l) > 63 {
			return fmt.Errorf("%q: each label must be 1 to 63 characters", d)
		}
		if l[0] == '-' || l[len(l)-1] == '-' {
			return fmt.Errorf("%q: a label may not start or end with a hyphen", d)
		}
		for i := 0; i < len(l); i++ {
			c := l[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
				return fmt.Errorf("%q: only letters, digits, hyphens and dots are allowed", d)
			}
		}
	}
	return nil
}

// checkEnvelopeSender accepts "" (the null reverse-path, RFC 5321 §4.5.5) or
// a bare ASCII addr-spec such as bounces@example.org.
func checkEnvelopeSender(s string) error {
	if s == "" {
		return nil
	}
	if !printableASCII(s) || strings.ContainsAny(s, " \t<>") {
		return fmt.Errorf("must be a bare ASCII address like bounces@example.org, or empty for <>")
	}
	a, err := mail.ParseAddress(s)
	if err != nil || a.Name != "" || a.Address != s {
		return fmt.Errorf("%q is not a bare address like bounces@example.org", s)
	}
	local, domain, _ := strings.Cut(s, "@")
	if len(local) > 64 || len(s) > 254 {
		return fmt.Errorf("too long for RFC 5321 §4.5.3.1 (local part 64, path 256)")
	}
	return checkDomain(domain)
}

func checkAddHeader(h string) error {
	name, value, ok := strings.Cut(h, ":")
	if !ok {
		return fmt.Errorf("%q is not a header line \"Name: value\"", h)
	}
	if err := checkFieldName(name); err != nil {
		return err
	}
	if !printableASCII(value) {
		return fmt.Errorf("the value of %s must be printable ASCII on one line", name)
	}
	if len(h) > maxLine {
		return fmt.Errorf("%s is longer than one %d-character header line", name, maxLine)
	}
	lower := strings.ToLower(name)
	if neverKept(lower) || singleInstance(lower) {
		return fmt.Errorf("%s may appear only once and comes from the message or this stage", name)
	}
	return nil
}
