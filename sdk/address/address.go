// Package address parses and checks envelope addresses: RFC 5321 §4.1.2
// mailboxes (a Dot-string or Quoted-string local part, "@", a domain or an
// address literal), with RFC 6531 internationalized addresses (UTF-8 local
// parts, domains of U-labels checked under IDNA2008, RFC 5891).
//
// The core's SMTP server and every plugin that reads an envelope address
// (a Maildir, an MX or onion resolver, a block list) use this one parser,
// so an address means the same thing at every step: what the server
// accepted is what a deliverer sees.
package address

import (
	"errors"
	"strings"
	"unicode"
	"unicode/utf8"

	"golang.org/x/net/idna"
)

// Errors of Parse and ParseUnquoted. Any other error is a syntax error.
var (
	// ErrNotUTF8 is an address with invalid UTF-8 (RFC 6531 §3.3).
	ErrNotUTF8 = errors.New("address is not valid UTF-8")
	// ErrNeedsSMTPUTF8 is an 8-bit address in a transaction without the
	// SMTPUTF8 parameter (RFC 6531 §3.3: 553 5.6.7).
	ErrNeedsSMTPUTF8 = errors.New("non-ASCII address without SMTPUTF8")
)

// Mailbox is an address split at its last "@" (a domain never contains
// one). Local is unquoted: the Quoted-string's quotes and backslash
// escapes removed (RFC 5321 §4.1.2).
type Mailbox struct {
	Local, Domain string
}

// String is the address as it goes on the wire and into the queue: the
// local part as a Dot-string when it is one, otherwise as a
// Quoted-string (RFC 5321 §4.1.2), so `"john doe"@example.net` and
// `"bob@evil.example"@example.net` keep their quotes all the way to the
// next MTA and mean exactly what the policy accepted.
func (m Mailbox) String() string {
	if IsDotString(m.Local) {
		return m.Local + "@" + m.Domain
	}
	var b strings.Builder
	b.WriteByte('"')
	for i := 0; i < len(m.Local); i++ {
		if c := m.Local[i]; c == '"' || c == '\\' {
			b.WriteByte('\\')
		}
		b.WriteByte(m.Local[i])
	}
	b.WriteString(`"@`)
	b.WriteString(m.Domain)
	return b.String()
}

// Routed reports whether the local part carries sender-specified routing
// that a later MTA may act on: a second "@" (user@elsewhere@domain or a
// quoted "user@elsewhere"), the %-hack (user%elsewhere@domain) or a UUCP
// bang path (elsewhere!user@domain). Postfix refuses the same for
// untrusted clients (allow_untrusted_routing = no).
func (m Mailbox) Routed() bool {
	return strings.ContainsAny(m.Local, "@%!")
}

// ASCIIDomain is the domain in lower-case A-label form, for comparing
// with configured domains and for DNS; an address literal is returned as
// is. The domain already passed CheckDomain, so this cannot fail.
func (m Mailbox) ASCIIDomain() string {
	if IsLiteral(m.Domain) {
		return m.Domain
	}
	a, err := lookupProfile.ToASCII(m.Domain)
	if err != nil {
		return strings.ToLower(m.Domain)
	}
	return strings.ToLower(a)
}

// Normalized returns m with a non-ASCII domain respelled as the U-labels
// of its A-label form: UTS #46 maps fullwidth letters, U+3002 dots and
// soft hyphens, so a server hands the next MTA the spelling its policy
// judged, not one that MTA might read differently.
func (m Mailbox) Normalized() Mailbox {
	if isASCII(m.Domain) || IsLiteral(m.Domain) {
		return m
	}
	if u, err := lookupProfile.ToUnicode(m.ASCIIDomain()); err == nil {
		m.Domain = u
	}
	return m
}

// ParseUnquoted checks an address whose local part is already unquoted
// (as an SMTP server library hands over MAIL FROM or RCPT TO, source
// route dropped) and splits it at its last "@". smtputf8 is the
// transaction's SMTPUTF8 parameter. Errors: ErrNotUTF8, ErrNeedsSMTPUTF8,
// or a syntax error.
//
// Rules: RFC 5321 §4.1.2 and §4.5.3.1 (local part <= 64 octets, path <=
// 256), RFC 6531 §3.3 (8-bit only with SMTPUTF8, then valid UTF-8 with a
// domain of U-labels or A-labels valid under IDNA2008, RFC 5891), no
// control characters anywhere (C0, DEL, C1), no angle bracket in the
// local part (legal quoted, but a naive parser downstream ends the path
// at ">").
func ParseUnquoted(addr string, smtputf8 bool) (Mailbox, error) {
	if !utf8.ValidString(addr) {
		return Mailbox{}, ErrNotUTF8
	}
	if !isASCII(addr) && !smtputf8 {
		return Mailbox{}, ErrNeedsSMTPUTF8
	}
	at := strings.LastIndexByte(addr, '@')
	if at <= 0 || at == len(addr)-1 || len(addr) > 254 {
		return Mailbox{}, errors.New("no local part or no domain")
	}
	return check(Mailbox{Local: addr[:at], Domain: addr[at+1:]})
}

// Parse checks an address in its queued, on-the-wire form (String's
// output: a Dot-string or a Quoted-string local part, "@", a domain),
// as a stage finds it in an envelope, and returns it split with the
// local part unquoted. The rules are ParseUnquoted's; a Quoted-string
// must be closed and followed by "@".
func Parse(addr string, smtputf8 bool) (Mailbox, error) {
	if !strings.HasPrefix(addr, `"`) {
		m, err := ParseUnquoted(addr, smtputf8)
		if err == nil && !IsDotString(m.Local) {
			return Mailbox{}, errors.New("local part is neither a Dot-string nor a Quoted-string")
		}
		return m, err
	}
	if !utf8.ValidString(addr) {
		return Mailbox{}, ErrNotUTF8
	}
	if !isASCII(addr) && !smtputf8 {
		return Mailbox{}, ErrNeedsSMTPUTF8
	}
	var local strings.Builder
	i := 1
	for ; i < len(addr) && addr[i] != '"'; i++ {
		if addr[i] == '\\' {
			i++
			if i == len(addr) {
				break
			}
		}
		local.WriteByte(addr[i])
	}
	if i >= len(addr)-1 || addr[i+1] != '@' || i+2 == len(addr) || len(addr) > 256 {
		return Mailbox{}, errors.New("unclosed quoted local part or no domain")
	}
	return check(Mailbox{Local: local.String(), Domain: addr[i+2:]})
}

func check(m Mailbox) (Mailbox, error) {
	if m.Local == "" {
		return Mailbox{}, errors.New("empty local part")
	}
	if len(m.Local) > 64 {
		return Mailbox{}, errors.New("local part longer than 64 octets")
	}
	for _, r := range m.Local {
		// A space is fine inside a Quoted-string; other controls never are.
		if r != ' ' && (unicode.IsControl(r) || r == utf8.RuneError) {
			return Mailbox{}, errors.New("control character in local part")
		}
	}
	if strings.ContainsAny(m.Local, "<>") {
		return Mailbox{}, errors.New("angle bracket in local part")
	}
	if err := CheckDomain(m.Domain); err != nil {
		return Mailbox{}, err
	}
	return m, nil
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

// lookupProfile validates a domain of U-labels or A-labels (UTS #46
// lookup, RFC 5891 with the Bidi rule, DNS lengths, LDH only).
var lookupProfile = idna.New(idna.MapForLookup(), idna.BidiRule(), idna.VerifyDNSLength(true), idna.StrictDomainName(true))

// IsLiteral reports whether d is written as an address literal, "[...]"
// (RFC 5321 §4.1.3); CheckDomain checks its content.
func IsLiteral(d string) bool {
	return strings.HasPrefix(d, "[") && strings.HasSuffix(d, "]")
}

// CheckDomain accepts a domain (dot-separated LDH labels of 1-63 octets,
// or U-labels; valid under IDNA2008 lookup rules; no trailing dot) or an
// address literal of printable ASCII (RFC 5321 §4.1.3).
func CheckDomain(d string) error {
	if IsLiteral(d) {
		for i := 1; i < len(d)-1; i++ {
			if c := d[i]; c < 0x21 || c > 0x7e || c == '[' || c == ']' || c == '\\' {
				return errors.New("bad address literal")
			}
		}
		return nil
	}
	for _, label := range strings.Split(d, ".") {
		if label == "" || len(label) > 63 || strings.HasPrefix(label, "-") || strings.HasSuffix(label, "-") {
			return errors.New("bad domain")
		}
		for _, r := range label {
			if !(r == '-' || r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= 0x80) {
				return errors.New("bad domain character")
			}
		}
	}
	if _, err := lookupProfile.ToASCII(d); err != nil {
		return errors.New("domain is not valid IDNA")
	}
	return nil
}

// ToASCII returns domain d (U-labels or A-labels, a trailing dot allowed)
// as lower-case A-labels under IDNA2008 lookup rules (UTS #46, RFC 5891),
// LDH only, DNS lengths checked. Errors: d is not such a domain.
func ToASCII(d string) (string, error) {
	if !utf8.ValidString(d) {
		return "", ErrNotUTF8
	}
	a, err := lookupProfile.ToASCII(strings.TrimSuffix(d, "."))
	if err != nil || a == "" {
		return "", errors.New("not a valid domain name")
	}
	return strings.ToLower(a), nil
}

// IsDotString reports whether s is an RFC 5321 Dot-string (atoms of
// atext joined by single dots), with RFC 6531's UTF8-non-ascii in atext.
func IsDotString(s string) bool {
	if s == "" || s[0] == '.' || s[len(s)-1] == '.' || strings.Contains(s, "..") {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 0x80 || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' {
			continue
		}
		if !strings.ContainsRune("!#$%&'*+-/=?^_`{|}~", rune(c)) {
			return false
		}
	}
	return true
}
