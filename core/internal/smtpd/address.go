package smtpd

import (
	"errors"
	"strings"
	"unicode"
	"unicode/utf8"

	"golang.org/x/net/idna"

	"github.com/mixmta/mixmta/sdk/onion"
)

// Address errors, each mapped to its own reply by the session.
var (
	// errNotUTF8 is an address with invalid UTF-8 (501 5.1.7 / 5.1.3).
	errNotUTF8 = errors.New("address is not valid UTF-8")
	// errNeedsSMTPUTF8 is an 8-bit address in a transaction without the
	// SMTPUTF8 parameter (553 5.6.7, RFC 6531 §3.3).
	errNeedsSMTPUTF8 = errors.New("non-ASCII address without SMTPUTF8")
)

// mailbox is an address split at its last "@" (a domain never contains
// one), with the local part as go-smtp hands it over: unquoted, escapes
// removed (RFC 5321 §4.1.2 Quoted-string).
type mailbox struct {
	local, domain string
}

// String is the address as it goes on the wire and into the queue: the
// local part as a Dot-string when it is one, otherwise as a
// Quoted-string (RFC 5321 §4.1.2), so `"john doe"@example.net` and
// `"bob@evil.example"@example.net` keep their quotes all the way to the
// next MTA and mean exactly what the policy accepted.
func (m mailbox) String() string {
	if isDotString(m.local) {
		return m.local + "@" + m.domain
	}
	var b strings.Builder
	b.WriteByte('"')
	for i := 0; i < len(m.local); i++ {
		if c := m.local[i]; c == '"' || c == '\\' {
			b.WriteByte('\\')
		}
		b.WriteByte(m.local[i])
	}
	b.WriteString(`"@`)
	b.WriteString(m.domain)
	return b.String()
}

// routed reports whether the local part carries sender-specified routing
// that a later MTA may act on: a second "@" (user@elsewhere@domain or a
// quoted "user@elsewhere"), the %-hack (user%elsewhere@domain) or a UUCP
// bang path (elsewhere!user@domain). Postfix refuses the same for
// untrusted clients (allow_untrusted_routing = no).
func (m mailbox) routed() bool {
	return strings.ContainsAny(m.local, "@%!")
}

// parseMailbox checks an address as go-smtp parsed it from MAIL FROM or
// RCPT TO (source route already dropped, quotes removed) and returns its
// parts. smtputf8 is the transaction's SMTPUTF8 parameter. Errors:
// errNotUTF8, errNeedsSMTPUTF8, or a syntax error.
//
// Rules: RFC 5321 §4.1.2 and §4.5.3.1 (local part <= 64 octets, path <=
// 256), RFC 6531 §3.3 (8-bit only with SMTPUTF8, then valid UTF-8 with a
// domain of U-labels or A-labels valid under IDNA2008, RFC 5891), no
// control characters anywhere (C0, DEL, C1).
func parseMailbox(addr string, smtputf8 bool) (mailbox, error) {
	if !utf8.ValidString(addr) {
		return mailbox{}, errNotUTF8
	}
	if !isASCII(addr) && !smtputf8 {
		return mailbox{}, errNeedsSMTPUTF8
	}
	at := strings.LastIndexByte(addr, '@')
	if at <= 0 || at == len(addr)-1 || len(addr) > 254 {
		return mailbox{}, errors.New("not local@domain")
	}
	m := mailbox{local: addr[:at], domain: addr[at+1:]}
	if len(m.local) > 64 {
		return mailbox{}, errors.New("local part longer than 64 octets")
	}
	for _, r := range m.local {
		// A space is fine inside a Quoted-string; other controls never are.
		if r != ' ' && (unicode.IsControl(r) || r == utf8.RuneError) {
			return mailbox{}, errors.New("control character in local part")
		}
	}
	// Legal quoted, but a naive parser downstream ends the path at ">".
	if strings.ContainsAny(m.local, "<>") {
		return mailbox{}, errors.New("angle bracket in local part")
	}
	if err := checkDomain(m.domain); err != nil {
		return mailbox{}, err
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

// checkDomain accepts a dot-atom domain or an address literal.
func checkDomain(d string) error {
	if strings.HasPrefix(d, "[") && strings.HasSuffix(d, "]") {
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

// asciiDomain is d in A-label form for comparing with local_domains
// (d already passed checkDomain).
func asciiDomain(d string) string {
	a, err := lookupProfile.ToASCII(d)
	if err != nil {
		return d
	}
	return a
}

// isDotString reports whether s is an RFC 5321 Dot-string (atoms of
// atext joined by single dots), with RFC 6531's UTF8-non-ascii in atext.
func isDotString(s string) bool {
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

// checkOnion refuses a domain that ends in ".onion" but is not a valid v3
// onion address (rend-spec-v3 §6: 56 base32 characters, version 3, the
// SHA3 checksum): a mistyped address, or a v2 address, whose service no
// longer exists. No route can reach it, so it is refused at the command
// rather than bounced later. The error text says what is wrong.
func checkOnion(domain string) error {
	if !onion.IsOnion(domain) {
		return nil
	}
	_, _, err := onion.Parse(domain)
	return err
}
