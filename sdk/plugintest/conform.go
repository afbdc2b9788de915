package plugintest

import (
	"bytes"
	"context"
	cryptorand "crypto/rand"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mixmta/mixmta/sdk"
)

// The conformance suites check the contract every stage of one kind must
// keep, whatever it does (the sdk package documents the contract). A
// plugin's tests run the suite of each kind the plugin implements, instead
// of copying these checks from another plugin. Each suite takes the stage
// as its sdk interface, so it runs the same on a stage in process and on a
// plugin launched through the real host (Start returns a client that
// implements every stage interface).

// callTimeout bounds each call a suite makes; generous, as the machine may
// be loaded and a deliverer talks to a real peer.
const callTimeout = 60 * time.Second

func callCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), callTimeout)
	t.Cleanup(cancel)
	return ctx
}

// CheckInfo fails t unless info is a consistent self-description of a
// plugin that implements kind: the kind is declared, every declared kind
// is a known one, Needs holds only defined bits, a delayer asks for no part
// of the message (its request carries none), and CapSanitizes comes only
// with a transformer (the core checks a pipeline's order by it).
func CheckInfo(t *testing.T, info Info, kind sdk.Kind) {
	t.Helper()
	if info.Name == "" {
		t.Errorf("Info.Name is empty")
	}
	if !info.Has(kind) {
		t.Errorf("Info.Kinds %v lacks %q", info.Kinds, kind)
	}
	for _, k := range info.Kinds {
		switch k {
		case sdk.KindChecker, sdk.KindTransformer, sdk.KindRouter, sdk.KindDelayer, sdk.KindDeliverer, sdk.KindMixer:
		default:
			t.Errorf("Info.Kinds holds unknown kind %q", k)
		}
	}
	if known := sdk.NeedHeader | sdk.NeedBody | sdk.NeedBodyStream; info.Needs&^known != 0 {
		t.Errorf("Info.Needs %#x has undefined bits %#x", info.Needs, info.Needs&^known)
	}
	if kind == sdk.KindDelayer && len(info.Kinds) == 1 && info.Needs != 0 {
		t.Errorf("a delayer declares Needs %#x, want 0: a delay request carries no header or body", info.Needs)
	}
	if info.Can(sdk.CapSanitizes) && !info.Has(sdk.KindTransformer) {
		t.Errorf("Info claims %q without being a transformer", sdk.CapSanitizes)
	}
}

// DelayerSuite is the contract of a delay stage: exactly Count
// non-negative delays per call, safe for concurrent calls, every bit of
// randomness read from the source it was given (so the same stream gives
// the same delays, and crypto/rand in production is the only source), and
// a failing source is a temporary error naming the plugin, never a panic,
// a hang or a fixed delay.
type DelayerSuite struct {
	// Name is the plugin's name; a randomness failure must mention it.
	Name string
	// New returns the stage reading its randomness from r.
	New func(r io.Reader) sdk.Delayer
}

// Run runs the suite as subtests of t.
func (s DelayerSuite) Run(t *testing.T) {
	t.Run("ExactlyCountNonNegative", func(t *testing.T) {
		d := s.New(cryptorand.Reader)
		for _, n := range []int{1, 2, 64, 1000} {
			ds, err := d.Delay(callCtx(t), sdk.DelayRequest{Count: n, Size: 1 << 10})
			if err != nil {
				t.Fatalf("Count %d: %v", n, err)
			}
			if len(ds) != n {
				t.Fatalf("Count %d: got %d delays", n, len(ds))
			}
			for i, v := range ds {
				if v < 0 {
					t.Fatalf("Count %d: delay %d is negative (%s)", n, i, v)
				}
			}
		}
	})
	t.Run("AllRandomnessFromTheSource", func(t *testing.T) {
		draw := func(seed uint64) []time.Duration {
			ds, err := s.New(rand.NewChaCha8(seedBytes(seed))).Delay(callCtx(t), sdk.DelayRequest{Count: 256})
			if err != nil {
				t.Fatalf("seed %d: %v", seed, err)
			}
			return ds
		}
		a, b, c := draw(1), draw(1), draw(2)
		if fmt.Sprint(a) != fmt.Sprint(b) {
			t.Fatalf("the same random stream gave different delays: the stage reads randomness from elsewhere")
		}
		if fmt.Sprint(a) == fmt.Sprint(c) {
			t.Fatalf("two different random streams gave the same 256 delays: the stage ignores its source")
		}
	})
	t.Run("FailingRandomnessIsTemporaryError", func(t *testing.T) {
		_, err := s.New(failingReader{}).Delay(callCtx(t), sdk.DelayRequest{Count: 3})
		if err == nil {
			t.Fatalf("delays from a failing random source, want an error")
		}
		if !strings.Contains(err.Error(), s.Name) || !strings.Contains(err.Error(), errEntropy.Error()) {
			t.Errorf("error %q should name %s and the cause", err, s.Name)
		}
		if sdk.IsPermanent(err) {
			t.Errorf("a randomness failure must be temporary (the core retries), got permanent %v", err)
		}
	})
	t.Run("ConcurrentCalls", func(t *testing.T) {
		concurrently(t, 16, 50, func() error {
			ds, err := s.New(cryptorand.Reader).Delay(callCtx(t), sdk.DelayRequest{Count: 64})
			if err == nil && len(ds) != 64 {
				err = fmt.Errorf("got %d delays, want 64", len(ds))
			}
			return err
		})
	})
}

var errEntropy = errors.New("entropy gone")

type failingReader struct{}

func (failingReader) Read([]byte) (int, error) { return 0, errEntropy }

func seedBytes(seed uint64) (b [32]byte) {
	for i := range 8 {
		b[i] = byte(seed >> (8 * i))
	}
	return b
}

// concurrently runs f calls times in each of n goroutines and fails t with
// the errors, as the core calls one stage from many workers (run with
// -race to catch a data race).
func concurrently(t *testing.T, n, calls int, f func() error) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		wg.Go(func() {
			for range calls {
				if err := f(); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// Message returns a small well-formed message (CRLF, 7-bit) from from to
// rcpts, for suites and tests that need one.
func Message(from string, rcpts ...string) *sdk.Message {
	h := []byte("From: <sender@example.org>\r\nTo: undisclosed-recipients:;\r\nSubject: conformance\r\n" +
		"Date: Wed, 02 Dec 2026 10:00:00 +0000\r\nMessage-ID: <conformance@example.org>\r\nNewsgroups: alt.test\r\n\r\n")
	b := []byte("First line\r\n.leading dot\r\n\r\nlast line\r\n")
	return &sdk.Message{ID: "0123456789abcdef0123456789abcdef",
		Envelope: sdk.Envelope{MailFrom: from, RcptTo: rcpts, BodyType: sdk.Body7Bit},
		Header:   h, Body: b, BodyLen: int64(len(b)), Size: int64(len(h) + len(b)), ReceivedAt: time.Now()}
}

// malformedRecipients are forward-paths no SMTP server would accept and
// that must never count as delivered: header or command injection with CR
// or LF, a NUL, no domain, nothing at all.
var malformedRecipients = []string{
	"x@example.org\r\nRCPT TO:<injected@example.org>",
	"x@example.org\nDATA",
	"x\x00y@example.org",
	"no-at-sign",
	"",
}

// DelivererSuite is the contract of a delivery stage: one result per
// recipient of the envelope and none for anyone else, each error an
// *sdk.Error or classified by sdk.AsError, a malformed recipient never
// reported as delivered, and no panic on an empty envelope, missing or
// malformed parts or a big body.
type DelivererSuite struct {
	// New returns the stage, configured for a real destination that
	// accepts Good. It is called once per subtest.
	New func(t *testing.T) sdk.Deliverer
	// Good are recipients the destination accepts (at least one).
	Good []string
	// Message, if set, builds the message to deliver (default Message).
	Message func(rcpts ...string) *sdk.Message
}

func (s DelivererSuite) message(rcpts ...string) *sdk.Message {
	if s.Message != nil {
		return s.Message(rcpts...)
	}
	return Message("sender@example.org", rcpts...)
}

// results maps each result to its recipient, failing t on a result for a
// recipient outside the envelope or a second result for one recipient.
func results(t *testing.T, m *sdk.Message, res []sdk.RcptResult, err error) map[string]error {
	t.Helper()
	in := map[string]bool{}
	for _, r := range m.Envelope.RcptTo {
		in[r] = true
	}
	got := map[string]error{}
	for _, r := range res {
		if !in[r.Rcpt] {
			t.Errorf("a result for %q, not in the envelope", r.Rcpt)
		}
		if _, dup := got[r.Rcpt]; dup {
			t.Errorf("two results for %q", r.Rcpt)
		}
		got[r.Rcpt] = r.Err
	}
	// A recipient without its own result shares err (nil err: retried).
	for _, r := range m.Envelope.RcptTo {
		if _, ok := got[r]; !ok {
			if err == nil {
				err = sdk.Temporary(451, "4.3.0", "no result")
			}
			got[r] = err
		}
	}
	return got
}

// Run runs the suite as subtests of t.
func (s DelivererSuite) Run(t *testing.T) {
	if len(s.Good) == 0 {
		t.Fatal("DelivererSuite needs at least one Good recipient")
	}
	t.Run("EveryRecipientGetsItsResult", func(t *testing.T) {
		m := s.message(s.Good...)
		res, err := s.New(t).Deliver(callCtx(t), m)
		got := results(t, m, res, err)
		for _, r := range s.Good {
			if got[r] != nil {
				t.Errorf("%s: not delivered: %v", r, got[r])
			}
		}
	})
	t.Run("MalformedRecipientNeverDelivered", func(t *testing.T) {
		d := s.New(t)
		for _, bad := range malformedRecipients {
			m := s.message(bad)
			res, err := d.Deliver(callCtx(t), m)
			got := results(t, m, res, err)
			if got[bad] == nil {
				t.Errorf("malformed recipient %q reported as delivered", bad)
			}
		}
	})
	t.Run("EmptyEnvelopeNoResult", func(t *testing.T) {
		m := s.message()
		res, err := s.New(t).Deliver(callCtx(t), m)
		results(t, m, res, err)
	})
	t.Run("MissingOrMalformedPartsNoPanic", func(t *testing.T) {
		d := s.New(t)
		for name, mut := range partMutations() {
			m := s.message(s.Good[0])
			mut(m)
			res, err := d.Deliver(callCtx(t), m)
			got := results(t, m, res, err)
			t.Logf("%s: %v", name, got[s.Good[0]])
		}
	})
}

// partMutations are the malformed shapes a message can reach a stage in
// (a stage must answer each with a result or an error, never a panic).
func partMutations() map[string]func(*sdk.Message) {
	set := func(h, b []byte) func(*sdk.Message) {
		return func(m *sdk.Message) {
			m.Header, m.Body = h, b
			m.BodyLen, m.Size = int64(len(b)), int64(len(h)+len(b))
		}
	}
	return map[string]func(*sdk.Message){
		"nil header and body":         set(nil, nil),
		"header without end":          set([]byte("Subject: x\r\n"), []byte("body\r\n")),
		"bare LF and NUL":             set([]byte("Subject: a\x00b\nFrom: <a@b>\n\n"), []byte("x\ny\r\n")),
		"1 MiB header line":           set(append(append([]byte("X-Long: "), bytes.Repeat([]byte("a"), 1<<20)...), "\r\n\r\n"...), []byte("b\r\n")),
		"4 MiB body of one long line": set([]byte("Subject: big\r\n\r\n"), bytes.Repeat([]byte("z"), 4<<20)),
	}
}

// TransformerSuite is the contract of a transformer: a Change whose header
// section, when replaced, still ends with the empty line (CRLF CRLF) and
// whose reverse-path, when replaced, is one line; an error is an
// *sdk.Error or classified by sdk.AsError; no panic on missing or
// malformed parts; safe for concurrent calls.
type TransformerSuite struct {
	// New returns the configured stage.
	New func(t *testing.T) sdk.Transformer
	// Message, if set, builds a message the stage transforms without
	// error (default Message).
	Message func() *sdk.Message
}

func (s TransformerSuite) message() *sdk.Message {
	if s.Message != nil {
		return s.Message()
	}
	return Message("sender@example.org", "rcpt@example.net")
}

func checkChange(t *testing.T, ch *sdk.Change) {
	t.Helper()
	if ch == nil {
		return
	}
	if ch.Header != nil && !bytes.HasSuffix(ch.Header, []byte("\r\n\r\n")) && !bytes.Equal(ch.Header, []byte("\r\n")) {
		t.Errorf("the new header section does not end with CRLF CRLF: %q", tail(ch.Header))
	}
	if ch.MailFrom != nil && strings.ContainsAny(*ch.MailFrom, "\r\n\x00<>") {
		t.Errorf("the new MAIL FROM %q holds CR, LF, NUL or brackets", *ch.MailFrom)
	}
}

func tail(b []byte) []byte { return b[max(0, len(b)-40):] }

// Run runs the suite as subtests of t.
func (s TransformerSuite) Run(t *testing.T) {
	t.Run("WellFormedChange", func(t *testing.T) {
		ch, err := s.New(t).Transform(callCtx(t), s.message())
		if err != nil {
			t.Fatalf("the suite's message: %v", err)
		}
		checkChange(t, ch)
	})
	t.Run("MissingOrMalformedPartsNoPanic", func(t *testing.T) {
		tr := s.New(t)
		for name, mut := range partMutations() {
			m := s.message()
			mut(m)
			ch, err := tr.Transform(callCtx(t), m)
			if err != nil {
				t.Logf("%s: %v (%s)", name, err, sdk.AsError(err).EnhancedCode())
				continue
			}
			checkChange(t, ch)
		}
	})
	t.Run("ConcurrentCalls", func(t *testing.T) {
		tr := s.New(t)
		concurrently(t, 8, 20, func() error {
			ch, err := tr.Transform(callCtx(t), s.message())
			if err == nil && ch != nil && ch.Header != nil && !bytes.HasSuffix(ch.Header, []byte("\r\n\r\n")) {
				err = fmt.Errorf("header section without its end under concurrency")
			}
			return err
		})
	})
}

// MixerSuite is the contract of a mixer: a packet that is not exactly
// PacketSize bytes, or that no key of this node opens, is a permanent
// error and never a forward (the core drops and counts it); a cover
// packet is PacketSize bytes with a next hop; Assemble refuses garbage
// with an error; no panic, and safe for concurrent calls.
type MixerSuite struct {
	// PacketSize is the size of every packet on the wire, in bytes.
	PacketSize int
	// New returns the configured stage after its first SetMixState (keys
	// of this node and a directory in which a full path exists).
	New func(t *testing.T) sdk.Mixer
}

// Run runs the suite as subtests of t.
func (s MixerSuite) Run(t *testing.T) {
	garbage := func(n int) []byte {
		b := make([]byte, n)
		_, _ = cryptorand.Read(b)
		return b
	}
	mixDropped := func(t *testing.T, mx sdk.Mixer, name string, pkt []byte) {
		t.Helper()
		res, err := mx.Mix(callCtx(t), pkt)
		if res != nil && res.Action == sdk.MixForward {
			t.Errorf("%s: forwarded", name)
		}
		if err == nil || !sdk.IsPermanent(err) {
			t.Errorf("%s: got %v, want a permanent error (dropped and counted)", name, err)
		}
	}
	t.Run("MalformedPacketsDropped", func(t *testing.T) {
		mx := s.New(t)
		for name, pkt := range map[string][]byte{
			"empty":              nil,
			"one byte":           {1},
			"one byte short":     garbage(s.PacketSize - 1),
			"one byte long":      garbage(s.PacketSize + 1),
			"zeros":              make([]byte, s.PacketSize),
			"random":             garbage(s.PacketSize),
			"random, once again": garbage(s.PacketSize),
		} {
			mixDropped(t, mx, name, pkt)
		}
	})
	t.Run("CoverPacketsHaveThePacketSize", func(t *testing.T) {
		mx := s.New(t)
		for _, k := range []sdk.CoverKind{sdk.CoverDrop, sdk.CoverLoop} {
			p, err := mx.Cover(callCtx(t), k)
			if err != nil {
				t.Fatalf("cover kind %d: %v", k, err)
			}
			if len(p.Data) != s.PacketSize || p.NextHop == (sdk.NodeID{}) {
				t.Errorf("cover kind %d: %d bytes to %s, want %d bytes to a node", k, len(p.Data), p.NextHop.Short(), s.PacketSize)
			}
		}
	})
	t.Run("AssembleRefusesGarbage", func(t *testing.T) {
		mx := s.New(t)
		for _, data := range [][]byte{nil, {0}, garbage(1000)} {
			if m, err := mx.Assemble(callCtx(t), data); err == nil {
				t.Errorf("Assemble of %d garbage bytes gave a message %+v", len(data), m.Envelope)
			}
		}
	})
	t.Run("ConcurrentCalls", func(t *testing.T) {
		mx := s.New(t)
		concurrently(t, 8, 10, func() error {
			res, err := mx.Mix(callCtx(t), garbage(s.PacketSize))
			if err == nil || (res != nil && res.Action == sdk.MixForward) {
				return fmt.Errorf("random packet under concurrency: not dropped (error %v)", err)
			}
			return nil
		})
	})
}

// RouterSuite is the contract of a router: every route names only
// recipients of the envelope, no recipient is in two delivery routes
// (routes without NextHop), and no panic on missing or malformed parts.
type RouterSuite struct {
	// New returns the configured stage (for a mixnet router, after its
	// first SetMixState).
	New func(t *testing.T) sdk.Router
	// Message builds a message the stage routes without error.
	Message func(rcpts ...string) *sdk.Message
	// Rcpts are recipients the stage can route (at least two).
	Rcpts []string
}

func checkRoutes(t *testing.T, m *sdk.Message, routes []sdk.Route) {
	t.Helper()
	in := map[string]bool{}
	for _, r := range m.Envelope.RcptTo {
		in[r] = true
	}
	delivered := map[string]bool{}
	for i, rt := range routes {
		for _, r := range rt.RcptTo {
			if !in[r] {
				t.Errorf("route %d names %q, not in the envelope", i, r)
			}
			if rt.NextHop == (sdk.NodeID{}) {
				if delivered[r] {
					t.Errorf("%q is in two delivery routes", r)
				}
				delivered[r] = true
			}
		}
	}
}

// Run runs the suite as subtests of t.
func (s RouterSuite) Run(t *testing.T) {
	if len(s.Rcpts) < 2 || s.Message == nil {
		t.Fatal("RouterSuite needs Message and two Rcpts")
	}
	t.Run("RoutesNameOnlyEnvelopeRecipients", func(t *testing.T) {
		m := s.Message(s.Rcpts...)
		routes, err := s.New(t).Route(callCtx(t), m)
		if err != nil {
			t.Fatalf("the suite's message: %v", err)
		}
		if len(routes) == 0 {
			t.Fatal("no route")
		}
		checkRoutes(t, m, routes)
	})
	t.Run("MissingOrMalformedPartsNoPanic", func(t *testing.T) {
		r := s.New(t)
		for name, mut := range partMutations() {
			m := s.Message(s.Rcpts...)
			mut(m)
			routes, err := r.Route(callCtx(t), m)
			if err != nil {
				t.Logf("%s: %v", name, err)
				continue
			}
			checkRoutes(t, m, routes)
		}
	})
}
