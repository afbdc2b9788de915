package sdk

import (
	"bytes"
	"io"
	"testing"
)

// TestMaskKeepsOnlyTheDeclaredParts: Mask is the one place the rule "a
// stage sees only what it declares" is applied; it must never hand a body
// to a stage that did not ask for it, nor change the caller's message.
func TestMaskKeepsOnlyTheDeclaredParts(t *testing.T) {
	open := func() (io.Reader, error) { return bytes.NewReader([]byte("body")), nil }
	full := func() *Message {
		return &Message{ID: "x", Envelope: Envelope{MailFrom: "a@example.org", RcptTo: []string{"b@example.org"}},
			Header: []byte("H: v\r\n\r\n"), Body: []byte("body"), OpenBody: open, BodyLen: 4, Size: 12}
	}
	cases := []struct {
		needs      Needs
		header     bool
		body, open bool
	}{
		{0, false, false, false},
		{NeedHeader, true, false, false},
		{NeedBody, false, true, true},
		{NeedBodyStream, false, true, true},
		{NeedHeader | NeedBodyStream, true, true, true},
		{NeedAll, true, true, true},
	}
	for _, c := range cases {
		m := full()
		v := c.needs.Mask(m)
		if (v.Header != nil) != c.header || (v.Body != nil) != c.body || (v.OpenBody != nil) != c.open || (v.BodyLen != 0) != c.body {
			t.Errorf("Needs %#x: header %v body %v open %v len %d", c.needs, v.Header != nil, v.Body != nil, v.OpenBody != nil, v.BodyLen)
		}
		if v.Envelope.MailFrom != "a@example.org" || len(v.Envelope.RcptTo) != 1 || v.Size != 12 || v.ID != "x" {
			t.Errorf("Needs %#x: envelope, size or id lost: %+v", c.needs, v)
		}
		if m.Header == nil || m.Body == nil || m.OpenBody == nil || m.BodyLen != 4 {
			t.Errorf("Needs %#x: the caller's message was changed", c.needs)
		}
	}
}
