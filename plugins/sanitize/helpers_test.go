package main

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/mixmta/mixmta/sdk"
)

// testNow is a fixed clock reading: Tuesday 2025-03-04 05:06:07.89 UTC.
var testNow = time.Date(2025, 3, 4, 5, 6, 7, 890_000_000, time.UTC)

// testConfig returns a deep copy of the defaults changed by mutate, and fails
// the test if the result does not validate.
func testConfig(t testing.TB, mutate func(*Config)) Config {
	t.Helper()
	c, err := sdk.DecodeConfig(defaults, nil)
	if err != nil {
		t.Fatalf("defaults do not validate: %v", err)
	}
	if mutate != nil {
		mutate(&c)
	}
	if err := c.Validate(); err != nil {
		t.Fatalf("test config does not validate: %v", err)
	}
	return c
}

// sanitize runs a Sanitizer built from testConfig(mutate) at testNow.
func sanitize(t testing.TB, header string, mutate func(*Config)) Result {
	t.Helper()
	r, err := NewSanitizer(testConfig(t, mutate)).Sanitize([]byte(header), testNow)
	if err != nil {
		t.Fatalf("Sanitize: %v", err)
	}
	return r
}

// crlf turns LF line endings into CRLF.
func crlf(s string) string { return strings.ReplaceAll(s, "\n", "\r\n") }

// originalPart returns the header after the three generated fields (Date,
// From, Message-ID), failing the test if they are not there in that order.
func originalPart(t testing.TB, out []byte) string {
	t.Helper()
	rest := out
	for _, name := range []string{"Date: ", "From: ", "Message-ID: "} {
		if !bytes.HasPrefix(rest, []byte(name)) {
			t.Fatalf("output does not continue with the generated %q field:\n%s", name, out)
		}
		i := bytes.Index(rest, []byte("\r\n"))
		rest = rest[i+2:]
	}
	return string(rest)
}

// names returns the field names of a header section, in order, and fails
// the test if any part of it is not a well-formed field.
func names(t testing.TB, h []byte) []string {
	t.Helper()
	fields, trailing := parseHeader(h)
	if trailing {
		t.Fatalf("bytes after the empty line in:\n%q", h)
	}
	var out []string
	for _, f := range fields {
		if f.bad {
			t.Fatalf("malformed line run in output:\n%q", h)
		}
		out = append(out, string(f.name))
	}
	return out
}

type failingReader struct{}

func (failingReader) Read([]byte) (int, error) { return 0, errRandom }

var errRandom = &testError{"entropy source unavailable"}

type testError struct{ s string }

func (e *testError) Error() string { return e.s }
