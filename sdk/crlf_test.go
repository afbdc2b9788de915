package sdk

import (
	"bufio"
	"bytes"
	"io"
	"math/rand/v2"
	"net/textproto"
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

// referenceDATA is how the message went on the wire before the writer
// worked on spans: bare CRs made CR LF a byte at a time, then
// net/textproto's dot writer (bare LF to CR LF, dot-stuffing, the final
// ".\r\n"; RFC 5321 §4.5.2), fed in the same pieces.
func referenceDATA(pieces [][]byte) []byte {
	var out bytes.Buffer
	bw := bufio.NewWriter(&out)
	dw := textproto.NewWriter(bw).DotWriter()
	cr := false
	for _, p := range pieces {
		var b []byte
		for _, x := range p {
			if cr && x != '\n' {
				b = append(b, '\n')
			}
			b = append(b, x)
			cr = x == '\r'
		}
		dw.Write(b)
	}
	dw.Close()
	return out.Bytes()
}

// TestDotWriterMatchesTheByteAtATimeDotWriter: for random content made
// of line ends, bare CRs and LFs, dots at line starts and text, cut into
// random pieces, the span-based writer puts exactly the bytes on the
// wire that the byte-at-a-time chain did, and the result has no bare CR
// or LF and no unstuffed "." line.
func TestDotWriterMatchesTheByteAtATimeDotWriter(t *testing.T) {
	tokens := []string{"\r\n", "\r", "\n", ".", "..", "a", "text ", ".\r\n", "\r\n.\r\n", "\r.\r", "\n.\n", "x\x00y"}
	rng := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 20000; i++ {
		var msg []byte
		for j := rng.IntN(24); j > 0; j-- {
			msg = append(msg, tokens[rng.IntN(len(tokens))]...)
		}
		var pieces [][]byte
		for rest := msg; len(rest) > 0; {
			k := 1 + rng.IntN(len(rest))
			pieces, rest = append(pieces, rest[:k]), rest[k:]
		}
		want := referenceDATA(pieces)
		var got bytes.Buffer
		w := DotWriter(&got)
		for _, p := range pieces {
			if n, err := w.Write(p); n != len(p) || err != nil {
				t.Fatalf("Write = %d, %v", n, err)
			}
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got.Bytes(), want) {
			t.Fatalf("content %q in pieces %q:\n got %q\nwant %q", msg, pieces, got.Bytes(), want)
		}
		// Line by line: every line ends CRLF, none but the last is ".".
		lines := bytes.SplitAfter(got.Bytes(), []byte("\r\n"))
		lines = lines[:len(lines)-1]
		for k, l := range lines {
			body := l[:len(l)-2]
			if bytes.ContainsAny(body, "\r\n") || !bytes.HasSuffix(l, []byte("\r\n")) {
				t.Fatalf("line %q has a bare CR or LF in %q", l, got.Bytes())
			}
			if string(l) == ".\r\n" && k != len(lines)-1 {
				t.Fatalf("end of data inside the content: %q", got.Bytes())
			}
		}
	}
}

// TestCRLFWriterWithoutStuffLeavesDotsAndEnd: for go-smtp's DATA writer,
// which stuffs and ends the data itself, only line ends are made CR LF.
func TestCRLFWriterWithoutStuffLeavesDotsAndEnd(t *testing.T) {
	var got bytes.Buffer
	w := CRLFWriter(&got)
	io.WriteString(w, ".a\r.b\n.c\r")
	io.WriteString(w, "\n.")
	if want := ".a\r\n.b\r\n.c\r\n."; got.String() != want {
		t.Fatalf("got %q, want %q", got.String(), want)
	}
}

// BenchmarkDATAWriter: a 64 KiB body of 78-byte lines (some starting with
// a dot) made into DATA lines, by DotWriter and by the byte-at-a-time
// chain it replaced.
func BenchmarkDATAWriter(b *testing.B) {
	var body []byte
	for i := 0; len(body) < 64<<10; i++ {
		if i%10 == 0 {
			body = append(body, '.')
		}
		body = append(body, bytes.Repeat([]byte("x"), 76)...)
		body = append(body, "\r\n"...)
	}
	b.Run("spans", func(b *testing.B) {
		bw := bufio.NewWriter(io.Discard)
		b.SetBytes(int64(len(body)))
		for i := 0; i < b.N; i++ {
			w := DotWriter(bw)
			w.Write(body)
			w.Close()
		}
	})
	b.Run("bytewise", func(b *testing.B) {
		b.SetBytes(int64(len(body)))
		for i := 0; i < b.N; i++ {
			referenceDATA([][]byte{body})
		}
	})
}
