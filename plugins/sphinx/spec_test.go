package main

import (
	"encoding/hex"
	"fmt"
	"os"
	"reflect"
	"strings"
	"testing"

	"github.com/mixmta/mixmta/sdk"
)

// specText is SPEC.md with all white space removed, so that hex split over
// lines and columns matches.
func specText(t *testing.T) (raw, compact string) {
	t.Helper()
	b, err := os.ReadFile("SPEC.md")
	if err != nil {
		t.Fatal(err)
	}
	return string(b), strings.Join(strings.Fields(string(b)), "")
}

// The vector of SPEC.md §14.5: the code's encoding of the vector message,
// its fragment header and a loop header are exactly what SPEC.md prints,
// and they decode back to the inputs.
func TestSpecVectorMatchesTheCode(t *testing.T) {
	raw, spec := specText(t)
	header, err := os.ReadFile("testdata/spec-vector.hdr")
	if err != nil {
		t.Fatal(err)
	}
	body, err := os.ReadFile("testdata/spec-vector.body")
	if err != nil {
		t.Fatal(err)
	}
	env := sdk.Envelope{MailFrom: "alice@example.org", RcptTo: []string{"bob@example.net", "carol@example.com"}, BodyType: sdk.Body8BitMIME}
	im, err := encodeInner(env, header, body)
	if err != nil {
		t.Fatal(err)
	}
	inner := im.bytes()
	if !strings.Contains(spec, hex.EncodeToString(inner)) {
		t.Errorf("SPEC.md §14.5 does not print the inner message the code encodes:\n%s", hex.Dump(inner))
	}
	if !strings.Contains(raw, fmt.Sprintf("%d bytes:", len(inner))) {
		t.Errorf("SPEC.md §14.5 does not give the length %d", len(inner))
	}
	m, err := decodeInner(inner)
	if err != nil || !reflect.DeepEqual(m.Envelope, env) || string(m.Header) != string(header) || string(m.Body) != string(body) {
		t.Fatalf("the vector does not decode to its inputs: %v", err)
	}

	id := [16]byte{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}
	payload := make([]byte, fragmentHeaderSize, fragmentHeaderSize+len(inner))
	putFragmentHeader(payload, id, 0, 1)
	if !strings.Contains(spec, hex.EncodeToString(payload)) {
		t.Errorf("SPEC.md §14.5 does not print the fragment header %x", payload)
	}
	p, err := parsePayload(append(payload, inner...), 1)
	if err != nil || p.fragment.MessageID != id || p.fragment.Index != 0 || p.fragment.Count != 1 || string(p.fragment.Data) != string(inner) {
		t.Fatalf("the fragment vector does not parse back: %v", err)
	}

	loop := []byte{payloadLoop, 0xa0, 0xa1, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7, 0xa8, 0xa9, 0xaa, 0xab, 0xac, 0xad, 0xae, 0xaf}
	if !strings.Contains(spec, hex.EncodeToString(loop)) {
		t.Errorf("SPEC.md §14.5 does not print the loop header %x", loop)
	}
	if p, err := parsePayload(append(loop, 0xff, 0x00), 1); err != nil || p.loopID != [16]byte(loop[1:]) {
		t.Fatalf("the loop vector does not parse back: %v", err)
	}
}

// The sizes SPEC.md §14 states follow from the code's constants.
func TestSpecSizesMatchTheCode(t *testing.T) {
	raw, _ := specText(t)
	s := newStageWith(defaults, nil, nil, nil)
	m := testMessage(2<<20, 1)
	im, err := encodeInner(m.Envelope, m.Header, m.Body)
	if err != nil {
		t.Fatal(err)
	}
	frags := int((im.size + int64(s.fragData) - 1) / int64(s.fragData))
	for _, want := range []string{
		fmt.Sprintf("PayloadSize = %d, F = %d bytes", s.pf.payloadSize(), s.fragData),
		fmt.Sprintf("at most %d fragments", s.maxFragments),
		fmt.Sprintf("a 2 MiB message needs %d fragments and takes %d packets", frags, sizeClass(frags, s.maxFragments)),
		fmt.Sprintf("the fixed fields take %d bytes", innerFixedSize),
		fmt.Sprintf("The fragment header is %d bytes, the loop header %d", fragmentHeaderSize, loopHeaderSize),
	} {
		if !strings.Contains(strings.Join(strings.Fields(raw), " "), want) {
			t.Errorf("SPEC.md §14 does not say %q", want)
		}
	}
}
