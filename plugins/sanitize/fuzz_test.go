package main

import (
	"bytes"
	"os"
	"strings"
	"testing"
)

// refField is a header field as the test's reference splitter sees it.
type refField struct {
	name  string   // lower case, WSP before the colon removed; "" without a colon
	lines []string // first line's value (the whole line without a colon), then continuation lines
}

// refSplit is a deliberately naive RFC 5322 §2.2 splitter, independent of
// parseHeader: lines end at LF (a CR before it is dropped), the section ends
// at the first empty line, a line starting with SP or HTAB continues the
// field before it.
func refSplit(h []byte) []refField {
	var out []refField
	for _, line := range strings.Split(string(h), "\n") {
		line = strings.TrimSuffix(line, "\r")
		if line == "" {
			break
		}
		if line[0] == ' ' || line[0] == '\t' {
			if len(out) == 0 {
				out = append(out, refField{})
			}
			out[len(out)-1].lines = append(out[len(out)-1].lines, line)
			continue
		}
		name, value, ok := strings.Cut(line, ":")
		if !ok {
			out = append(out, refField{lines: []string{line}})
			continue
		}
		out = append(out, refField{name: strings.ToLower(strings.TrimRight(name, " \t")), lines: []string{value}})
	}
	return out
}

// refAllowed is the default allow list, written out again.
func refAllowed(lower string) bool {
	switch lower {
	case "to", "subject", "newsgroups", "references", "in-reply-to", "mime-version":
		return true
	}
	return strings.HasPrefix(lower, "content-")
}

func FuzzSanitize(f *testing.F) {
	for _, seed := range []string{
		"From: a\r\n b\r\nTo: c\r\n\r\n",
		"To: x\nSubject: y\n  z\n\n",
		" lead\r\nTo: x\r\n\r\n",
		"no colon\r\n cont\r\nSubject: s\r\n\r\n",
		"Subject: a\rBcc: b\r\n\r\n",
		"To: a\r\nTo: b\r\nSubject: =?UTF-8?Q?x?=\r\n\r\nBcc: after\r\n",
		"Content-Type: text/plain\r\nX-Y: secret\r\n \r\n more secret\r\n\r\n",
		"Subject: \xff\xfe\r\nFrom : x\r\n\r\n",
	} {
		f.Add([]byte(seed))
	}
	files, _ := os.ReadDir("testdata/corpus")
	for _, e := range files {
		if raw, err := os.ReadFile("testdata/corpus/" + e.Name()); err == nil && strings.HasSuffix(e.Name(), ".eml") {
			h, _ := splitMessage(raw)
			f.Add(h)
		}
	}
	s := NewSanitizer(testConfig(f, nil))
	f.Fuzz(func(t *testing.T, in []byte) {
		r, err := s.Sanitize(in, testNow)
		if err != nil {
			t.Fatal(err)
		}
		out := r.Header
		if !bytes.HasSuffix(out, []byte("\r\n\r\n")) {
			t.Fatalf("output does not end with CRLF CRLF: %q", out)
		}
		if bytes.Count(out, []byte("\n")) != bytes.Count(out, []byte("\r\n")) || bytes.Count(out, []byte("\r")) != bytes.Count(out, []byte("\r\n")) {
			t.Fatalf("bare CR or LF in output: %q", out)
		}
		if bytes.IndexByte(out, 0) >= 0 {
			t.Fatalf("NUL in output: %q", out)
		}

		// The output parses cleanly (with parseHeader and the reference
		// splitter) into allowed fields, one From, Date and Message-ID.
		outNames := names(t, out)
		counts := map[string]int{}
		for _, n := range outNames {
			lower := strings.ToLower(n)
			counts[lower]++
			if !refAllowed(lower) && lower != "from" && lower != "date" && lower != "message-id" {
				t.Fatalf("field %s is not allowed; output %q", n, out)
			}
			if singleInstance(lower) && counts[lower] > 1 {
				t.Fatalf("single-instance field %s repeated; output %q", n, out)
			}
		}
		if counts["from"] != 1 || counts["date"] != 1 || counts["message-id"] != 1 {
			t.Fatalf("want exactly one From, Date and Message-ID, got %v", counts)
		}
		refOut := refSplit(out)
		if len(refOut) != len(outNames) {
			t.Fatalf("the reference splitter sees %d fields in the output, parseHeader %d: %q", len(refOut), len(outNames), out)
		}

		// Every byte of a kept value comes from an allowed input field.
		var allowedIn []string
		in1 := refSplit(in)
		for _, rf := range in1 {
			if refAllowed(rf.name) {
				allowedIn = append(allowedIn, rf.lines...)
			}
		}
		allowedText := strings.Join(allowedIn, "\n")
		var outValues []string
		for _, rf := range refOut[3:] {
			if rf.name == "mime-version" {
				if len(rf.lines) != 1 || rf.lines[0] != " 1.0" {
					t.Fatalf("MIME-Version is not exactly 1.0: %q", rf.lines)
				}
				continue
			}
			for _, l := range rf.lines {
				if !strings.Contains(allowedText, l) {
					t.Fatalf("output line %q is not in any allowed input field; input %q", l, in)
				}
				outValues = append(outValues, l)
			}
		}

		// No 8-byte run of a dropped field's value reaches the output unless
		// an allowed field carries it too.
		outText := strings.Join(outValues, "\n")
		for _, rf := range in1 {
			if refAllowed(rf.name) {
				continue
			}
			for _, l := range rf.lines {
				for i := 0; i+8 <= len(l); i++ {
					w := l[i : i+8]
					if strings.Contains(outText, w) && !strings.Contains(allowedText, w) {
						t.Fatalf("%q from dropped field %q leaked; output %q", w, rf.name, out)
					}
				}
			}
		}

		// A second pass keeps what the first kept.
		r2, err := s.Sanitize(out, testNow)
		if err != nil {
			t.Fatal(err)
		}
		if r2.Dropped != 3 || r2.Malformed != 0 || r2.Duplicates != 0 || r2.Kept != r.Kept {
			t.Fatalf("second pass: want only From, Date, Message-ID dropped, got %+v (first %+v)", r2, r)
		}
	})
}
