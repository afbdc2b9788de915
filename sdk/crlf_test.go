package sdk

import (
	"bytes"
	"testing"
)

// TestCRLFWriterEndsEveryLineWithCRLF writes each input whole and byte by
// byte (a CR LF split between two writes must stay one line end).
func TestCRLFWriterEndsEveryLineWithCRLF(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"a\r\nb\r\n", "a\r\nb\r\n"},
		{"a\rb\r", "a\r\nb\r\n"},
		{"a\nb\n", "a\r\nb\r\n"},
		{"x\r.\rMAIL FROM:<f@example.org>\r\r\n", "x\r\n.\r\nMAIL FROM:<f@example.org>\r\n\r\n"},
		{"\n\r\r\n\n", "\r\n\r\n\r\n\r\n"},
		{"no line end", "no line end"},
	} {
		for _, split := range []bool{false, true} {
			var out bytes.Buffer
			w := CRLFWriter(&out)
			if split {
				for i := 0; i < len(tc.in); i++ {
					if n, err := w.Write([]byte{tc.in[i]}); n != 1 || err != nil {
						t.Fatalf("Write = %d, %v", n, err)
					}
				}
			} else if n, err := w.Write([]byte(tc.in)); n != len(tc.in) || err != nil {
				t.Fatalf("Write = %d, %v", n, err)
			}
			if out.String() != tc.want {
				t.Errorf("%q (byte by byte %v) = %q, want %q", tc.in, split, out.String(), tc.want)
			}
		}
	}
}
