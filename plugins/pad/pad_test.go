package main

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/mixmta/mixmta/sdk"
)

func msg(headerLines string, body string) *sdk.Message {
	h := []byte(headerLines + "\r\n")
	return &sdk.Message{Header: h, Body: []byte(body), Size: int64(len(h) + len(body))}
}

// TestPadToEveryBlockMultiple: for many header and body sizes (around the
// block edges too) the result is a multiple of the block, the body and the
// original fields are unchanged, every line is at most 78 characters and
// every folded line carries content.
func TestPadToEveryBlockMultiple(t *testing.T) {
	s := &stage{cfg: defaults}
	for _, bodyLen := range []int{0, 1, 100, 8000, 8100, 8150, 8170, 8180, 8191, 8192, 8193, 20000, 2 << 20} {
		for _, extra := range []int{0, 1, 2, 3, 4, 5, 70, 73, 74, 75} {
			hdr := "From: a@example.org\r\nSubject: " + strings.Repeat("s", extra) + "\r\n"
			body := strings.Repeat("b", bodyLen)
			m := msg(hdr, body)
			ch, err := s.Transform(context.Background(), m)
			if err != nil {
				t.Fatal(err)
			}
			total := len(ch.Header) + len(body)
			if total%8192 != 0 || total < int(m.Size) || total-int(m.Size) > 8192+20 {
				t.Fatalf("body %d, extra %d: padded size %d (from %d)", bodyLen, extra, total, m.Size)
			}
			if ch.Body != nil {
				t.Fatal("pad changed the body")
			}
			if !bytes.HasPrefix(ch.Header, []byte(hdr)) || !bytes.HasSuffix(ch.Header, []byte("\r\n\r\n")) {
				t.Fatalf("original fields changed or header not terminated:\n%q", ch.Header)
			}
			for _, line := range strings.Split(string(ch.Header[len(hdr):len(ch.Header)-4]), "\r\n") {
				if len(line) > 78 || strings.TrimSpace(line) == "" {
					t.Fatalf("bad padding line %q", line)
				}
			}
		}
	}
}

func TestPadRejectsHeaderWithoutEmptyLine(t *testing.T) {
	s := &stage{cfg: defaults}
	m := &sdk.Message{Header: []byte("From: a@b\r\n"), Size: 11}
	if _, err := s.Transform(context.Background(), m); !sdk.IsPermanent(err) {
		t.Fatalf("got %v, want a permanent error", err)
	}
}

func TestConfigValidate(t *testing.T) {
	for _, c := range []Config{{Block: 100, Field: "X-Padding"}, {Block: 8192, Field: "X Pad"}, {Block: 8192, Field: ""}} {
		if err := c.Validate(); err == nil {
			t.Errorf("%+v accepted", c)
		}
	}
}
