package main

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite testdata/*.article from the current output")

// TestArticleGolden turns each testdata/*.eml into an article and compares
// it with testdata/*.article (LF line endings in the files).
func TestArticleGolden(t *testing.T) {
	files, _ := filepath.Glob("testdata/*.eml")
	if len(files) == 0 {
		t.Fatal("no testdata/*.eml")
	}
	g := testGateway(t, func(c *Config) { c.PathHost = "news-gw.example" })
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		crlf := bytes.ReplaceAll(raw, []byte("\n"), []byte("\r\n"))
		i := bytes.Index(crlf, []byte("\r\n\r\n"))
		m := msg("", "")
		m.Header, m.Body = crlf[:i+4], crlf[i+4:]
		m.Size = int64(len(crlf))
		a, err := g.buildArticle(m, testNow)
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		got := strings.ReplaceAll(string(a.Bytes()), "\r\n", "\n")
		golden := strings.TrimSuffix(f, ".eml") + ".article"
		if *update {
			os.WriteFile(golden, []byte(got), 0o644)
			continue
		}
		want, err := os.ReadFile(golden)
		if err != nil {
			t.Fatalf("%v (run go test -update)", err)
		}
		if got != string(want) {
			t.Errorf("%s: article differs from %s\ngot:\n%s\nwant:\n%s", f, golden, got, want)
		}
	}
}
