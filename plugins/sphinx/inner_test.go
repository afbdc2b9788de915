package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"reflect"
	"strings"
	"testing"

	"github.com/mixmta/mixmta/sdk"
)

func TestInnerMessageRoundTripsEveryEnvelopeField(t *testing.T) {
	many := make([]string, 1000)
	for i := range many {
		many[i] = fmt.Sprintf("rcpt%d@example.net", i)
	}
	cases := []struct {
		name         string
		env          sdk.Envelope
		header, body string
	}{
		{"null sender, 7BIT", sdk.Envelope{RcptTo: []string{"a@b.example"}, BodyType: sdk.Body7Bit}, "Subject: x\r\n\r\n", "hi\r\n"},
		{"SMTPUTF8", sdk.Envelope{MailFrom: "jöran@exämple.org", RcptTo: []string{"用户@例子.广告"}, SMTPUTF8: true, BodyType: sdk.Body8BitMIME}, "Subject: ü\r\n\r\n", "ü\r\n"},
		{"BINARYMIME with NUL bytes", sdk.Envelope{MailFrom: "a@b.example", RcptTo: []string{"c@d.example"}, BodyType: sdk.BodyBinaryMIME}, "X: y\r\n\r\n", "\x00\x01\xff\r\n"},
		{"no BODY, empty header and body", sdk.Envelope{MailFrom: "a@b.example", RcptTo: []string{"c@d.example"}}, "", ""},
		{"1000 recipients", sdk.Envelope{MailFrom: "a@b.example", RcptTo: many}, "A: b\r\n\r\n", "body"},
		{"quoted local part with space", sdk.Envelope{MailFrom: `"john doe"@b.example`, RcptTo: []string{`"x y"@d.example`}}, "", "x"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			im, err := encodeInner(c.env, []byte(c.header), []byte(c.body))
			if err != nil {
				t.Fatal(err)
			}
			data := im.bytes()
			if int64(len(data)) != im.size {
				t.Fatalf("size %d, encoded %d bytes", im.size, len(data))
			}
			m, err := decodeInner(data)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(m.Envelope, c.env) {
				t.Fatalf("envelope\n got %+v\nwant %+v", m.Envelope, c.env)
			}
			if string(m.Header) != c.header || string(m.Body) != c.body || m.Size != int64(len(c.header)+len(c.body)) {
				t.Fatalf("header %q body %q size %d, want %q %q", m.Header, m.Body, m.Size, c.header, c.body)
			}
		})
	}
}

// resum replaces the digest of an inner message after a test edited it,
// so that the parser's field checks (not the digest) are exercised.
func resum(b []byte) []byte {
	d := sha256.Sum256(b[:len(b)-digestSize])
	copy(b[len(b)-digestSize:], d[:])
	return b
}

func TestDecodeInnerRejectsMalformedMessages(t *testing.T) {
	good := func() []byte {
		im, err := encodeInner(sdk.Envelope{MailFrom: "a@b.example", RcptTo: []string{"c@d.example"}, BodyType: sdk.Body7Bit}, []byte("H: v\r\n\r\n"), []byte("body\r\n"))
		if err != nil {
			t.Fatal(err)
		}
		return im.bytes()
	}
	// Offsets in good(): 0 version, 1 flags, 2 body type, 3 MAIL FROM
	// length (11), 5 MAIL FROM, 16 RCPT count, 18 RCPT length, 20 RCPT.
	cases := []struct {
		name string
		data func() []byte
		want string
	}{
		{"empty", func() []byte { return nil }, "too short"},
		{"one byte flipped in the body", func() []byte { b := good(); b[len(b)-digestSize-2] ^= 1; return b }, "digest mismatch"},
		{"digest flipped", func() []byte { b := good(); b[len(b)-1] ^= 1; return b }, "digest mismatch"},
		{"version 2", func() []byte { b := good(); b[0] = 2; return resum(b) }, "unknown version 0x02"},
		{"unknown flag", func() []byte { b := good(); b[1] = 0x80; return resum(b) }, "unknown flags 0x80"},
		{"body type 4", func() []byte { b := good(); b[2] = 4; return resum(b) }, "unknown body type 4"},
		{"MAIL FROM longer than the data", func() []byte { b := good(); b[3] = 0xff; return resum(b) }, "with"},
		{"no recipient", func() []byte { b := good(); binary.BigEndian.PutUint16(b[16:], 0); return resum(b) }, "no RCPT TO"},
		{"more recipients than present", func() []byte { b := good(); binary.BigEndian.PutUint16(b[16:], 2); return resum(b) }, "RCPT TO #2: empty address"},
		{"CR in RCPT TO", func() []byte { b := good(); b[21] = '\r'; return resum(b) }, "RCPT TO #1: address has byte 0x0d"},
		{"LF in MAIL FROM", func() []byte { b := good(); b[6] = '\n'; return resum(b) }, "MAIL FROM: address has byte 0x0a"},
		{"bytes after the body", func() []byte {
			b := good()
			b = append(b[:len(b)-digestSize], append([]byte("extra"), b[len(b)-digestSize:]...)...)
			return resum(b)
		}, "5 bytes after the body"},
		{"body length beyond the data", func() []byte {
			b := good()
			binary.BigEndian.PutUint32(b[len(b)-digestSize-6-4:], 0xffffffff)
			return resum(b)
		}, "left"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			m, err := decodeInner(c.data())
			if err == nil || !strings.Contains(err.Error(), c.want) || m != nil {
				t.Fatalf("want an error containing %q, got %v", c.want, err)
			}
		})
	}
}

// Assemble refuses fragments joined in the wrong order (the digest), and
// data beyond what max_message_bytes allows, permanently.
func TestAssembleRejectsWrongOrderAndOversizedData(t *testing.T) {
	net := newTestNet(t, 4, testConfig(), 3)
	routes, err := net.nodes[0].stage.Route(context.Background(), testMessage(150<<10, 5))
	if err != nil {
		t.Fatal(err)
	}
	frags, _ := net.deliverAll(routes)
	frags[0], frags[1] = frags[1], frags[0]
	_, err = net.nodes[3].stage.Assemble(context.Background(), concat(frags))
	wantPermanent(t, err, "digest mismatch")

	cfg := testConfig()
	cfg.MaxMessageBytes = 1000
	s := newStageWith(cfg, nil, nil, nil)
	m := testMessage(int(maxInnerSize(1000)), 5) // inner beyond what 1000 bytes allow
	im, err := encodeInner(m.Envelope, m.Header, m.Body)
	if err != nil {
		t.Fatal(err)
	}
	_, err = s.Assemble(context.Background(), padToClass(s, im.bytes()))
	wantPermanent(t, err, "exceeds")
}

// Assemble accepts an inner message only with exactly the zero padding of
// its size class: other padding could carry a mark from the entry.
func TestAssembleRejectsWrongPadding(t *testing.T) {
	s := newStageWith(testConfig(), nil, nil, nil)
	m := testMessage(100<<10, 6) // 2 fragments
	im, err := encodeInner(m.Envelope, m.Header, m.Body)
	if err != nil {
		t.Fatal(err)
	}
	good := padToClass(s, im.bytes())
	if len(good) != 2*s.fragData {
		t.Fatalf("a 100 KiB message padded to %d bytes, want 2 fragments", len(good))
	}
	if _, err := s.Assemble(context.Background(), good); err != nil {
		t.Fatalf("the padded message: %v", err)
	}
	marked := bytes.Clone(good)
	marked[len(marked)-1] = 1
	_, err = s.Assemble(context.Background(), marked)
	wantPermanent(t, err, "padding")
	_, err = s.Assemble(context.Background(), im.bytes())
	wantPermanent(t, err, "size class")
	_, err = s.Assemble(context.Background(), append(bytes.Clone(good), make([]byte, s.fragData)...))
	wantPermanent(t, err, "size class")
}

func TestEncodeInnerRejectsOversizedEnvelope(t *testing.T) {
	long := strings.Repeat("a", 60000) + "@example.org"
	env := sdk.Envelope{RcptTo: []string{long, long, long, long, long, long, long, long, long, long, long, long, long, long, long, long, long, long}}
	_, err := encodeInner(env, nil, nil)
	wantPermanent(t, err, "envelope of")
	if e := sdk.AsError(err); e.EnhancedCode() != "5.5.3" {
		t.Fatalf("want 5.5.3, got %s", e.EnhancedCode())
	}
	_, err = encodeInner(sdk.Envelope{RcptTo: []string{strings.Repeat("a", 70000)}}, nil, nil)
	wantPermanent(t, err, "address of 70000 bytes")
	if !bytes.Contains([]byte(err.Error()), []byte("RCPT TO #1")) {
		t.Fatalf("error should say which recipient: %v", err)
	}
}
