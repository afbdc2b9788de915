package address

import (
	"errors"
	"strings"
	"testing"
)

var errSyntax = errors.New("syntax")

func TestParseUnquoted(t *testing.T) {
	cases := []struct {
		addr string
		utf8 bool
		err  error // nil: ok; errSyntax: any other error
	}{
		{"user@example.org", false, nil},
		{"first.last+tag@sub.example.org", false, nil},
		{"user@[127.0.0.1]", false, nil},
		{"jörg@exämple.org", true, nil},
		{"jörg@exämple.org", false, ErrNeedsSMTPUTF8},
		{"j\xf6rg@example.org", true, ErrNotUTF8},
		{"user@ex\xe4mple.org", true, ErrNotUTF8},
		{"user@xn--zz.example", false, errSyntax},
		{"no-at-sign", false, errSyntax},
		{"@example.org", false, errSyntax},
		{"user@", false, errSyntax},
		{"user@bad..domain", false, errSyntax},
		{"user@example.org.", false, errSyntax},
		{"user@-leading.example", false, errSyntax},
		{"john doe@example.org", false, nil}, // was "john doe"@example.org
		{"user@exa_mple.org", false, errSyntax},
		{"ctrl\x01@example.org", false, errSyntax},
		{"c1\u0085@example.org", true, errSyntax},
		{"bob>evil@example.org", false, errSyntax}, // was "bob>evil"@example.org
		{strings.Repeat("l", 65) + "@example.org", false, errSyntax},
	}
	for _, c := range cases {
		_, err := ParseUnquoted(c.addr, c.utf8)
		switch {
		case c.err == nil && err != nil, c.err != nil && err == nil:
			t.Errorf("ParseUnquoted(%q, utf8=%v) = %v, want %v", c.addr, c.utf8, err, c.err)
		case c.err != nil && c.err != errSyntax && !errors.Is(err, c.err):
			t.Errorf("ParseUnquoted(%q, utf8=%v) = %v, want %v", c.addr, c.utf8, err, c.err)
		}
	}
}

// TestQuotingRoundTripsAndRoutingIsFlagged: a server library hands over
// local parts unquoted; String quotes them again where RFC 5321 §4.1.2
// needs it, and Parse of that form gives back the same mailbox, so every
// later stage sees the mailbox the policy judged.
func TestQuotingRoundTripsAndRoutingIsFlagged(t *testing.T) {
	cases := []struct {
		in, out string
		routed  bool
	}{
		{"bob@example.net", "bob@example.net", false},
		{"john doe@example.net", `"john doe"@example.net`, false},
		{"bob@evil.example@example.net", `"bob@evil.example"@example.net`, true},
		{"bob%evil.example@example.net", "bob%evil.example@example.net", true},
		{"evil.example!bob@example.net", "evil.example!bob@example.net", true},
		{`a"b\c@example.net`, `"a\"b\\c"@example.net`, false},
		{".dot@example.net", `".dot"@example.net`, false},
		{"a..b@example.net", `"a..b"@example.net`, false},
		{"jörg@exämple.org", "jörg@exämple.org", false},
	}
	for _, c := range cases {
		m, err := ParseUnquoted(c.in, true)
		if err != nil {
			t.Fatalf("ParseUnquoted(%q): %v", c.in, err)
		}
		if m.String() != c.out || m.Routed() != c.routed {
			t.Errorf("%q: got %q routed=%v, want %q routed=%v", c.in, m.String(), m.Routed(), c.out, c.routed)
		}
		back, err := Parse(m.String(), true)
		if err != nil || back != m {
			t.Errorf("Parse(%q) = %+v, %v; want %+v", m.String(), back, err, m)
		}
	}
}

func TestParseRefusesWhatIsNeitherDotStringNorQuotedString(t *testing.T) {
	for _, a := range []string{
		`john doe@example.net`, // a space needs quotes
		`"unclosed@example.net`,
		`"a"b@example.net`,
		`"a"@`,
		`""@example.net`,
		`"a\`,
		"x@example.org\r\nRCPT TO:<y@example.org>",
		"x\x00y@example.org",
		"no-at-sign",
		"",
		`"a"@exa mple.net`,
	} {
		if m, err := Parse(a, true); err == nil {
			t.Errorf("Parse(%q) = %+v, want an error", a, m)
		}
	}
}

func TestASCIIDomainAndToASCII(t *testing.T) {
	m, err := Parse("x@BÜCHER.example", true)
	if err != nil {
		t.Fatal(err)
	}
	if got := m.ASCIIDomain(); got != "xn--bcher-kva.example" {
		t.Errorf("ASCIIDomain = %q", got)
	}
	if m, _ := Parse("x@[IPv6:2001:db8::1]", false); m.ASCIIDomain() != "[IPv6:2001:db8::1]" {
		t.Errorf("an address literal must stay as is, got %q", m.ASCIIDomain())
	}
	for in, want := range map[string]string{"Example.ORG.": "example.org", "ｅｘａｍｐｌｅ。org": "example.org"} {
		if got, err := ToASCII(in); err != nil || got != want {
			t.Errorf("ToASCII(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "a..b", "exa_mple.org", "\xff.org"} {
		if got, err := ToASCII(bad); err == nil {
			t.Errorf("ToASCII(%q) = %q, want an error", bad, got)
		}
	}
}

func TestNormalizedRespellsTheDomainAsItsULabels(t *testing.T) {
	for in, want := range map[string]string{
		"bob@ｅｘäｍｐｌｅ。org": "bob@exämple.org",
		"bob@Example.ORG": "bob@Example.ORG", // ASCII stays as written
		"bob@[192.0.2.1]": "bob@[192.0.2.1]",
	} {
		m, err := ParseUnquoted(in, true)
		if err != nil {
			t.Fatalf("%q: %v", in, err)
		}
		if got := m.Normalized().String(); got != want {
			t.Errorf("Normalized(%q) = %q, want %q", in, got, want)
		}
	}
}
