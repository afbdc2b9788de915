package config

import (
	"os"
	"regexp"
	"strings"

	"github.com/mixmta/mixmta/sdk/address"
)

// BlockList is a destination opt-out list in the style of Mixmaster's
// dest.blk: recipients who asked not to receive mail from the remailer.
// The nil *BlockList blocks nothing.
//
// The file is UTF-8 text, one entry per line; surrounding blanks are
// ignored, and so are empty lines and lines starting with "#" (whole-line
// comments only: "#" may occur inside an address or a regexp). An entry
// is one of:
//
//	user@example.org   that address exactly, compared case-insensitively
//	                   (local parts are case-sensitive by RFC 5321 §2.4,
//	                   but an opt-out errs on the side of blocking)
//	@example.org       every address at example.org AND at any subdomain
//	                   of it (mail.example.org, a.b.example.org)
//	/regexp/           Go RE2 syntax, case-insensitive, matched anywhere in
//	                   the address unless anchored with ^ and $
//
// Anything else is an error with the file's line.
type BlockList struct {
	addrs   map[string]bool
	domains map[string]bool
	res     []*regexp.Regexp
}

// ReadBlockList reads and parses the block list file at path. A read
// error is returned as is; syntax errors as an ErrorList ("PATH:LINE:
// message" each).
func ReadBlockList(path string) (*BlockList, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return ParseBlockList(path, data)
}

// ParseBlockList parses block list text; file names it in errors.
func ParseBlockList(file string, data []byte) (*BlockList, error) {
	b := &BlockList{addrs: map[string]bool{}, domains: map[string]bool{}}
	e := &errs{file: file}
	for i, line := range strings.Split(string(data), "\n") {
		n := i + 1
		s := strings.TrimSpace(line)
		switch {
		case s == "" || strings.HasPrefix(s, "#"):
		case strings.HasPrefix(s, "/"):
			if len(s) < 3 || !strings.HasSuffix(s, "/") {
				e.add(n, "a regexp must be written /like this/ and not be empty, got %q", s)
				continue
			}
			re, err := regexp.Compile("(?i)" + s[1:len(s)-1])
			if err != nil {
				e.add(n, "invalid regexp %s: %v", s, strings.TrimPrefix(err.Error(), "error parsing regexp: "))
				continue
			}
			b.res = append(b.res, re)
		case strings.ContainsAny(s, " \t"):
			e.add(n, "%q: one address, @domain or /regexp/ per line", s)
		case strings.HasPrefix(s, "@"):
			if err := checkDomain(s[1:]); err != nil {
				e.add(n, "%v", err)
				continue
			}
			b.domains[strings.ToLower(s[1:])] = true
		default:
			at := strings.LastIndexByte(s, '@')
			if at <= 0 || at == len(s)-1 {
				e.add(n, "%q is neither an address (user@example.org), a domain (@example.org) nor a regexp (/.../)", s)
				continue
			}
			b.addrs[normAddr(s)] = true
		}
	}
	if err := e.list.err(); err != nil {
		return nil, err
	}
	return b, nil
}

// normAddr lower-cases an address and drops a trailing dot of its domain.
func normAddr(a string) string {
	return strings.TrimSuffix(strings.ToLower(strings.TrimSpace(a)), ".")
}

// Blocked reports whether mail to addr (an envelope address without angle
// brackets, e.g. a RCPT TO) must not be sent.
func (b *BlockList) Blocked(addr string) bool {
	if b == nil {
		return false
	}
	if b.blocked(addr) {
		return true
	}
	// The same mailbox written another way must not pass its opt-out (an
	// inner envelope at a mixnet exit is whatever its sender wrote):
	// quoted where it need not be ("bob"@example.org is bob@example.org),
	// or with a domain of U-labels, fullwidth letters or U+3002 dots
	// where the entries are A-labels.
	var forms []string
	if m, err := address.Parse(strings.TrimSuffix(addr, "."), true); err == nil {
		forms = append(forms, m.String())
		if !address.IsLiteral(m.Domain) {
			m.Domain = m.ASCIIDomain()
			forms = append(forms, m.String())
		}
	} else if at := strings.LastIndexByte(addr, '@'); at >= 0 {
		if d, err := address.ToASCII(addr[at+1:]); err == nil {
			forms = append(forms, addr[:at+1]+d)
		}
	}
	for _, f := range forms {
		if b.blocked(f) {
			return true
		}
	}
	return false
}

func (b *BlockList) blocked(addr string) bool {
	a := normAddr(addr)
	if b.addrs[a] {
		return true
	}
	if at := strings.LastIndexByte(a, '@'); at >= 0 {
		for d := a[at+1:]; d != ""; {
			if b.domains[d] {
				return true
			}
			_, parent, ok := strings.Cut(d, ".")
			if !ok {
				break
			}
			d = parent
		}
	}
	for _, re := range b.res {
		if re.MatchString(a) {
			return true
		}
	}
	return false
}

// Len returns the number of entries.
func (b *BlockList) Len() int {
	if b == nil {
		return 0
	}
	return len(b.addrs) + len(b.domains) + len(b.res)
}
