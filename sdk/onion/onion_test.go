package onion

import (
	"crypto/ed25519"
	"errors"
	"strings"
	"testing"
)

// The Tor Project's own address (torproject.org's v3 onion), checked
// independently of Address.
const torProject = "2gzyxa5ihm7nsggfxnu52rck2vv4rvmdlkiu3zzui5du4xyclen53wid.onion"

func TestParseAcceptsRealV3Address(t *testing.T) {
	for _, h := range []string{torProject, strings.ToUpper(torProject), torProject + ".", "www." + torProject} {
		got, pub, err := Parse(h)
		if err != nil {
			t.Fatalf("Parse(%q): %v", h, err)
		}
		if got != torProject || Address(pub) != torProject {
			t.Fatalf("Parse(%q) = %q, Address = %q", h, got, Address(pub))
		}
	}
}

func TestParseRejects(t *testing.T) {
	flip := []byte(torProject)
	flip[10] = 'a' // one character changed: checksum mismatch
	cases := map[string]error{
		"expyuzz4wqqyqhjn.onion":           ErrV2,
		"example.org":                      ErrNotOnion,
		string(flip):                       ErrMalformed,
		"abc.onion":                        ErrMalformed,
		strings.Repeat("1", 56) + ".onion": ErrMalformed,
	}
	// A valid checksum with version byte 2.
	pub := make([]byte, 32)
	raw := append(append(append([]byte{}, pub...), 0, 0), 2)
	cases[strings.ToLower(b32.EncodeToString(raw))+".onion"] = ErrMalformed
	for h, want := range cases {
		if _, _, err := Parse(h); !errors.Is(err, want) {
			t.Errorf("Parse(%q) = %v, want %v", h, err, want)
		}
	}
}

func TestAddressRoundTrip(t *testing.T) {
	pub, _, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	a := Address(pub)
	if len(a) != 62 {
		t.Fatalf("Address = %q", a)
	}
	_, got, err := Parse(a)
	if err != nil || !got.Equal(pub) {
		t.Fatalf("Parse(Address) = %x, %v", got, err)
	}
}
