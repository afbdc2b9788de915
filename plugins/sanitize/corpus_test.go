package main

import (
	"bufio"
	"bytes"
	"flag"
	"net/mail"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-message/textproto"
)

var update = flag.Bool("update", false, "rewrite testdata/golden/*.header from the current output")

// markerRE matches every leak marker planted in the corpus headers (see
// testdata/corpus/README.md).
var markerRE = regexp.MustCompile(`LEAK-[A-Z0-9]+`)

// corpus returns the corpus files' paths; the corpus must hold at least 30.
func corpus(t testing.TB) []string {
	t.Helper()
	files, err := filepath.Glob("testdata/corpus/*.eml")
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < 30 {
		t.Fatalf("want at least 30 corpus messages, found %d", len(files))
	}
	return files
}

// splitMessage splits a CRLF message into its header section (with the
// empty line that ends it, as the core passes it) and body.
func splitMessage(raw []byte) (header, body []byte) {
	if i := bytes.Index(raw, []byte("\r\n\r\n")); i >= 0 {
		return raw[:i+4], raw[i+4:]
	}
	return raw, nil
}

func TestCorpusFilesFollowTheConventions(t *testing.T) {
	readme, err := os.ReadFile("testdata/corpus/README.md")
	if err != nil {
		t.Fatal(err)
	}
	owner := map[string]string{}
	for _, path := range corpus(t) {
		name := filepath.Base(path)
		raw, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Contains(readme, []byte(name)) {
			t.Errorf("%s is not described in testdata/corpus/README.md", name)
		}
		if bytes.Count(raw, []byte("\n")) != bytes.Count(raw, []byte("\r\n")) || bytes.Count(raw, []byte("\r")) != bytes.Count(raw, []byte("\r\n")) {
			t.Errorf("%s: every line must end with CRLF (no bare CR or LF)", name)
		}
		header, body := splitMessage(raw)
		markers := markerRE.FindAll(header, -1)
		if len(markers) == 0 {
			t.Errorf("%s: no LEAK- marker in its header", name)
		}
		prefix := "LEAK-" + name[:2]
		for _, m := range markers {
			if !bytes.HasPrefix(m, []byte(prefix)) {
				t.Errorf("%s: marker %s does not start with %s", name, m, prefix)
			}
			if o, ok := owner[string(m)]; ok && o != name {
				t.Errorf("marker %s is in both %s and %s", m, o, name)
			}
			owner[string(m)] = name
		}
		if bytes.Contains(body, []byte("LEAK")) {
			t.Errorf("%s: the body holds a marker; bodies are never sanitized, so the end-to-end test would fail", name)
		}
	}
}

var defaultOutputNames = map[string]bool{
	"Date": true, "From": true, "Message-ID": true, "To": true, "Subject": true,
	"Newsgroups": true, "References": true, "In-Reply-To": true, "MIME-Version": true,
}

func TestCorpusNeverLeaksMarkers(t *testing.T) {
	s := NewSanitizer(testConfig(t, nil))
	for _, path := range corpus(t) {
		t.Run(filepath.Base(path), func(t *testing.T) {
			raw, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			header, body := splitMessage(raw)
			r, err := s.Sanitize(header, testNow)
			if err != nil {
				t.Fatal(err)
			}
			out := r.Header
			if m := markerRE.Find(out); m != nil {
				t.Fatalf("marker %s leaked:\n%s", m, out)
			}
			if !bytes.HasSuffix(out, []byte("\r\n\r\n")) {
				t.Fatalf("output does not end with CRLF CRLF: %q", out)
			}
			seen := map[string]bool{}
			for _, n := range names(t, out) {
				if !defaultOutputNames[n] && !strings.HasPrefix(n, "Content-") {
					t.Errorf("field %s is not on the default allow list", n)
				}
				if seen[n] {
					t.Errorf("field %s appears twice", n)
				}
				seen[n] = true
			}

			msg, err := mail.ReadMessage(bytes.NewReader(append(append([]byte{}, out...), body...)))
			if err != nil {
				t.Fatalf("net/mail cannot read the output: %v\n%s", err, out)
			}
			if a, err := mail.ParseAddress(msg.Header.Get("From")); err != nil || a.Address != "nobody@anonymous.invalid" {
				t.Errorf("From %q: %v", msg.Header.Get("From"), err)
			}
			if d, err := msg.Header.Date(); err != nil || d.After(testNow) || d.Before(testNow.Add(-time.Hour)) {
				t.Errorf("Date %q (%v) not within the hour before %s", msg.Header.Get("Date"), err, testNow)
			}
			if _, err := textproto.ReadHeader(bufio.NewReader(bytes.NewReader(out))); err != nil {
				t.Errorf("go-message cannot read the output: %v", err)
			}

			golden := filepath.Join("testdata", "golden", strings.TrimSuffix(filepath.Base(path), ".eml")+".header")
			got := originalPart(t, out)
			if *update {
				if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test -run TestCorpus -update and review the diff)", err)
			}
			if got != string(want) {
				t.Fatalf("kept fields differ from %s\nwant:\n%s\ngot:\n%s", golden, want, got)
			}
		})
	}
}
