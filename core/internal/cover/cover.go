// Package cover originates cover messages: dummy mail that a node puts into
// its own queue at a Poisson rate, addressed to a cover sink (an address at
// an onion service that discards it), so that the node's outbound traffic
// carries deliveries even when nobody writes, and an observer of that
// traffic cannot count real mail.
//
// A cover message is an ordinary queue item at pipeline stage 0: it takes
// the same delay, pool, sanitizing, padding, deliverer, connection and Tor
// isolation as mail received by SMTP. Nothing in it or in the queue marks
// it as cover; only its recipient does, and that is not visible outside
// the Tor stream. pluto2's cover traffic never left the process; this does.
package cover

import (
	"context"
	crand "crypto/rand"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/mixmta/mixmta/sdk"
)

// Options configure a Generator.
type Options struct {
	// Interval: mean gap between messages (exponential gaps: a Poisson
	// process of rate 1/Interval).
	Interval time.Duration
	// From is the MAIL FROM; To the sinks, one chosen per message.
	From string
	To   []string
	// MinSize, MaxSize: body bytes, drawn uniformly in [MinSize, MaxSize].
	MinSize, MaxSize int
	// Hostname names the node in the Message-ID.
	Hostname string
}

// Accept stores one message durably and hands it to the pipeline. It
// returns an error when the message was not stored (nothing to undo).
type Accept func(env sdk.Envelope, header, body []byte, received time.Time) error

// Generator makes cover messages; see Run.
type Generator struct {
	o   Options
	rnd *rand.Rand
	log hclog.Logger
	// Room reports whether the queue may take size more bytes; when it
	// returns false the message is skipped (a full disk is not made
	// fuller by dummies). Nil: always.
	Room func(size int64) bool
	// Sent counts messages handed to the pipeline.
	Sent atomic.Int64
}

// New returns a generator with its own ChaCha8 stream seeded from
// crypto/rand: neither the gaps nor the sizes are predictable from outside.
func New(o Options, log hclog.Logger) *Generator {
	var seed [32]byte
	if _, err := crand.Read(seed[:]); err != nil {
		panic(err) // crypto/rand never fails on Linux >= 3.17
	}
	if log == nil {
		log = hclog.NewNullLogger()
	}
	return &Generator{o: o, rnd: rand.New(rand.NewChaCha8(seed)), log: log}
}

// Gap returns the wait before the next message: exponential with mean
// Interval.
func (g *Generator) Gap() time.Duration {
	return time.Duration(g.rnd.ExpFloat64() * float64(g.o.Interval))
}

// Run makes messages until ctx ends, each after a Gap, and gives them to
// accept. A failed accept is logged and the next message comes after the
// next gap: cover is best effort, real mail has the disk first.
func (g *Generator) Run(ctx context.Context, accept Accept) {
	t := time.NewTimer(g.Gap())
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		env, h, b := g.Message(time.Now())
		switch {
		case g.Room != nil && !g.Room(int64(len(h)+len(b))):
			g.log.Debug("[COVER] queue has no room; message skipped")
		default:
			if err := accept(env, h, b, time.Now()); err != nil {
				g.log.Warn("[COVER] cannot queue a cover message", "error", err)
			} else {
				g.Sent.Add(1)
			}
		}
		t.Reset(g.Gap())
	}
}

// Message returns one cover message: the envelope, a header section like
// that of plain mail (From, To, Date, Message-ID, Subject; ends CRLF CRLF)
// and a body of random base64 lines (76 characters, CRLF), its size drawn
// uniformly in [MinSize, MaxSize], looking like an encrypted message.
func (g *Generator) Message(now time.Time) (sdk.Envelope, []byte, []byte) {
	to := g.o.To[g.rnd.IntN(len(g.o.To))]
	env := sdk.Envelope{MailFrom: g.o.From, RcptTo: []string{to}}
	var id [12]byte
	binary.LittleEndian.PutUint64(id[:8], g.rnd.Uint64())
	binary.LittleEndian.PutUint32(id[8:], g.rnd.Uint32())
	h := fmt.Appendf(nil, "From: <%s>\r\nTo: <%s>\r\nDate: %s\r\nMessage-ID: <%x@%s>\r\nSubject: \r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n",
		g.o.From, to, now.UTC().Format(time.RFC1123Z), id, g.o.Hostname)
	size := g.o.MinSize
	if g.o.MaxSize > g.o.MinSize {
		size += g.rnd.IntN(g.o.MaxSize - g.o.MinSize + 1)
	}
	return env, h, g.body(size)
}

// body returns size bytes (none, or at least 2) of base64 lines of about 76
// characters, each ending CRLF.
func (g *Generator) body(size int) []byte {
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
	if size == 1 {
		size = 2
	}
	b := make([]byte, size)
	col := 0
	for i := 0; i < size; i++ {
		rest := size - i
		switch {
		case rest == 2 || (col >= 76 && rest > 4):
			b[i], b[i+1] = '\r', '\n'
			i++
			col = 0
		default:
			b[i] = alphabet[g.rnd.IntN(64)]
			col++
		}
	}
	return b
}
