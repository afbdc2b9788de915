package config

import (
	"errors"
	"os"
	"testing"
)

func TestBlockListBlocked(t *testing.T) {
	b, err := ParseBlockList("dest.blk", []byte(`# opt-outs
  alice@example.org
@optout.example
/^postmaster@/
/\.mil$/

#/commented@out/
`))
	if err != nil {
		t.Fatal(err)
	}
	if b.Len() != 4 {
		t.Errorf("want 4 entries, got %d", b.Len())
	}
	cases := []struct {
		addr string
		want bool
	}{
		{"alice@example.org", true},
		{"ALICE@Example.ORG", true},      // exact entries ignore case
		{"alice@example.org.", true},     // trailing root dot
		{"alice2@example.org", false},    // exact means exact
		{"xalice@example.org", false},    // not a substring match
		{"alice@sub.example.org", false}, // address entries cover no subdomain
		{"bob@optout.example", true},     // @domain
		{"bob@mail.optout.example", true},
		{"bob@a.b.optout.example", true}, // @domain covers all subdomains
		{"bob@notoptout.example", false}, // but not a longer label
		{"bob@optout.example.com", false},
		{"postmaster@anywhere.net", true}, // regexp, anchored
		{"PostMaster@anywhere.net", true}, // regexp ignores case
		{"not-postmaster@anywhere.net", false},
		{"general@army.mil", true},
		{"commented@out", false},
		{"", false},
	}
	for _, tc := range cases {
		if got := b.Blocked(tc.addr); got != tc.want {
			t.Errorf("Blocked(%q): want %v, got %v", tc.addr, tc.want, got)
		}
	}
}

func TestNilBlockListBlocksNothing(t *testing.T) {
	var b *BlockList
	if b.Blocked("alice@example.org") || b.Len() != 0 {
		t.Error("a nil *BlockList must block nothing")
	}
}

func TestBlockListSyntaxErrorsHaveFileAndLine(t *testing.T) {
	_, err := ParseBlockList("dest.blk", []byte("ok@example.org\nexample.org\n/[x/\n//\n@bad_domain\n@\nuser@\ntwo words@x\n/open\n"))
	want := `dest.blk:2: "example.org" is neither an address (user@example.org), a domain (@example.org) nor a regexp (/.../)
dest.blk:3: invalid regexp /[x/: missing closing ]: ` + "`[x`" + `
dest.blk:4: a regexp must be written /like this/ and not be empty, got "//"
dest.blk:5: "bad_domain" is not a domain name (letters, digits, inner hyphens and dots only)
dest.blk:6: empty domain name
dest.blk:7: "user@" is neither an address (user@example.org), a domain (@example.org) nor a regexp (/.../)
dest.blk:8: "two words@x": one address, @domain or /regexp/ per line
dest.blk:9: a regexp must be written /like this/ and not be empty, got "/open"`
	if err == nil || err.Error() != want {
		t.Errorf("want:\n%s\ngot:\n%v", want, err)
	}
}

func TestReadBlockList(t *testing.T) {
	b, err := ReadBlockList("testdata/files/dest.blk")
	if err != nil {
		t.Fatal(err)
	}
	if !b.Blocked("alice@example.org") || b.Blocked("bob@example.org") {
		t.Error("testdata/files/dest.blk: want alice blocked and bob not")
	}
	if _, err := ReadBlockList("testdata/files/none.blk"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: want os.ErrNotExist, got %v", err)
	}
}

// TestBlockListCatchesUnicodeSpellings: an entry (A-labels) also blocks
// the recipient written with U-labels, fullwidth letters or an
// ideographic full stop.
func TestBlockListCatchesUnicodeSpellings(t *testing.T) {
	b, err := ParseBlockList("dest.blk", []byte("@optout.example\n@xn--mller-kva.example\n"))
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range []string{"bob@ｏｐｔｏｕｔ.example", "bob@optout\u3002example", "bob@müller.example", "bob@MÜLLER.example"} {
		if !b.Blocked(a) {
			t.Errorf("%q passes the opt-out", a)
		}
	}
	if b.Blocked("bob@elsewhere.example") {
		t.Error("an unlisted domain is blocked")
	}
}

// TestBlockListCatchesNeedlessQuoting: an address entry also blocks the
// same mailbox with its local part quoted where it need not be, as a
// mixnet sender may write an inner envelope.
func TestBlockListCatchesNeedlessQuoting(t *testing.T) {
	b, err := ParseBlockList("dest.blk", []byte("bob@example.org\nalice@xn--mller-kva.example\n"))
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range []string{`"bob"@example.org`, `"Bob"@EXAMPLE.org`, `"bob"@example.org.`, `"alice"@müller.example`} {
		if !b.Blocked(a) {
			t.Errorf("%q passes the opt-out", a)
		}
	}
	for _, a := range []string{`"bob x"@example.org`, `"bob@example.org"@elsewhere.example`} {
		if b.Blocked(a) {
			t.Errorf("%q is another mailbox, but is blocked", a)
		}
	}
}
