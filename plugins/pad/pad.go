package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"strings"

	"github.com/mixmta/mixmta/sdk"
)

// Config is the stage's config block (README.md).
type Config struct {
	Block int    `json:"block" doc:"pad the whole message (header and body) to a multiple of this many bytes (512-1048576)"`
	Field string `json:"field" doc:"name of the added header field carrying the padding"`
}

var defaults = Config{Block: 8192, Field: "X-Padding"}

// Validate checks the config; errors name the key.
func (c *Config) Validate() error {
	if c.Block < 512 || c.Block > 1<<20 {
		return sdk.FieldErrorf("block", "must be 512-1048576 bytes, got %d", c.Block)
	}
	if c.Field == "" || strings.ContainsFunc(c.Field, func(r rune) bool { return r <= ' ' || r >= 127 || r == ':' }) {
		return sdk.FieldErrorf("field", "must be a header field name (printable ASCII, no colon or space), got %q", c.Field)
	}
	return nil
}

type stage struct{ cfg Config }

func newStage(c Config, _ sdk.Env) (any, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return &stage{cfg: c}, nil
}

// Limits of one line of the padding field (RFC 5322 §2.1.1: at most 78
// characters before CRLF should be kept).
const (
	firstMax = 60 // after "Field: "
	foldMax  = 70 // after the folding space
)

// Transform adds the padding field at the end of the header section so
// that header plus body is a multiple of Block bytes. The body is never
// seen nor changed, and no existing field is touched, so DKIM signatures
// (which do not cover an added unsigned field) and OpenPGP/S-MIME
// signatures (inside the body) stay valid: run pad after any signing
// stage. The padding is random base64 letters, so it compresses no better
// than the rest. A repeat after a crash draws new random padding of the
// same size.
func (s *stage) Transform(_ context.Context, m *sdk.Message) (*sdk.Change, error) {
	h := m.Header
	if !bytes.HasSuffix(h, []byte("\r\n\r\n")) {
		return nil, sdk.Permanent(554, "6.0", "pad: header section does not end with an empty line")
	}
	field, err := padding(s.cfg.Field, m.Size, s.cfg.Block)
	if err != nil {
		return nil, sdk.Temporary(451, "3.0", "pad: %v", err)
	}
	out := make([]byte, 0, len(h)+len(field))
	out = append(out, h[:len(h)-2]...)
	out = append(out, field...)
	out = append(out, "\r\n"...)
	return &sdk.Change{Header: out}, nil
}

// padding returns a complete field ("Name: ...\r\n", folded) whose length
// makes size+len(field) a multiple of block.
func padding(name string, size int64, block int) ([]byte, error) {
	prefix := len(name) + 2 // "Name: "
	min := int64(prefix + 1 + 2)
	total := (size + min + int64(block) - 1) / int64(block) * int64(block)
	content := int(total-size) - prefix - 2 // bytes between "Name: " and the final CRLF
	segs := []int{}
	for rem := content; rem > 0; {
		if len(segs) == 0 {
			n := min64(rem, firstMax)
			segs, rem = append(segs, n), rem-n
			continue
		}
		// a folded line costs CRLF + space + at least one character
		if rem < 4 {
			segs[len(segs)-1] -= 4 - rem
			rem = 4
		}
		n := min64(rem-3, foldMax)
		segs, rem = append(segs, n), rem-3-n
	}
	letters := make([]byte, content)
	if _, err := rand.Read(letters); err != nil {
		return nil, err
	}
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
	var b bytes.Buffer
	fmt.Fprintf(&b, "%s: ", name)
	k := 0
	for i, n := range segs {
		if i > 0 {
			b.WriteString("\r\n ")
		}
		for range n {
			b.WriteByte(alphabet[letters[k]&63])
			k++
		}
	}
	b.WriteString("\r\n")
	return b.Bytes(), nil
}

func min64(a, b int) int {
	if a < b {
		return a
	}
	return b
}
