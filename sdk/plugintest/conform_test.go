package plugintest

import (
	"context"
	cryptorand "crypto/rand"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/mixmta/mixmta/sdk"
)

// brokenStages are stages that each break one rule of their kind's
// contract, with the complaint the suite must make about it.
var brokenStages = map[string]struct {
	run  func(t *testing.T)
	want string
}{
	"delayer short by one": {func(t *testing.T) {
		DelayerSuite{Name: "broken", New: func(r io.Reader) sdk.Delayer { return delayFunc(r, -1, nil) }}.Run(t)
	}, "got 0 delays"},
	"delayer negative": {func(t *testing.T) {
		DelayerSuite{Name: "broken", New: func(r io.Reader) sdk.Delayer { return negativeDelayer{} }}.Run(t)
	}, "is negative"},
	"delayer with its own randomness": {func(t *testing.T) {
		DelayerSuite{Name: "broken", New: func(io.Reader) sdk.Delayer { return delayFunc(cryptorand.Reader, 0, nil) }}.Run(t)
	}, "reads randomness from elsewhere"},
	"delayer ignoring its source": {func(t *testing.T) {
		DelayerSuite{Name: "broken", New: func(io.Reader) sdk.Delayer {
			return delayFunc(rand.NewChaCha8([32]byte{}), 0, nil)
		}}.Run(t)
	}, "ignores its source"},
	"delayer with a permanent randomness failure": {func(t *testing.T) {
		DelayerSuite{Name: "broken", New: func(r io.Reader) sdk.Delayer {
			return delayFunc(r, 0, sdk.Permanent(554, "0.0", "broken: %v", errEntropy))
		}}.Run(t)
	}, "must be temporary"},
	"deliverer that takes anything": {func(t *testing.T) {
		DelivererSuite{Good: []string{"a@example.org"}, New: func(*testing.T) sdk.Deliverer { return acceptAll{} }}.Run(t)
	}, `malformed recipient "no-at-sign" reported as delivered`},
	"deliverer answering for a stranger": {func(t *testing.T) {
		DelivererSuite{Good: []string{"a@example.org"}, New: func(*testing.T) sdk.Deliverer { return acceptAll{extra: "b@example.org"} }}.Run(t)
	}, `a result for "b@example.org", not in the envelope`},
	"transformer cutting the header's end": {func(t *testing.T) {
		TransformerSuite{New: func(*testing.T) sdk.Transformer { return cutHeader{} }}.Run(t)
	}, "does not end with CRLF CRLF"},
	"mixer that forwards anything": {func(t *testing.T) {
		MixerSuite{PacketSize: 1024, New: func(*testing.T) sdk.Mixer { return forwardAll{size: 1024} }}.Run(t)
	}, "random: forwarded"},
	"mixer with short cover packets": {func(t *testing.T) {
		MixerSuite{PacketSize: 1024, New: func(*testing.T) sdk.Mixer { return forwardAll{size: 1000} }}.Run(t)
	}, "1000 bytes to"},
	"router naming a stranger": {func(t *testing.T) {
		RouterSuite{Rcpts: []string{"a@example.org", "b@example.org"}, Message: func(r ...string) *sdk.Message { return Message("", r...) },
			New: func(*testing.T) sdk.Router { return routeTwice{} }}.Run(t)
	}, `names "stranger@example.org"`},
	"info of a delayer asking for the body": {func(t *testing.T) {
		CheckInfo(t, Info{Name: "x", Kinds: []sdk.Kind{sdk.KindDelayer}, Needs: sdk.NeedBody}, sdk.KindDelayer)
	}, "a delay request carries no header or body"},
}

// TestBrokenStage is the child process of TestSuitesCatchBrokenStages: it
// runs the suite named by PLUGINTEST_BROKEN on its broken stage, and does
// nothing in a normal run.
func TestBrokenStage(t *testing.T) {
	if c, ok := brokenStages[os.Getenv("PLUGINTEST_BROKEN")]; ok {
		c.run(t)
	}
}

// TestSuitesCatchBrokenStages is the suites' negative control: each
// broken stage must fail its suite with the expected complaint (run in a
// child process, as a failing subtest would fail this test).
func TestSuitesCatchBrokenStages(t *testing.T) {
	for name, c := range brokenStages {
		t.Run(name, func(t *testing.T) {
			cmd := exec.Command(os.Args[0], "-test.run=^TestBrokenStage$", "-test.count=1")
			cmd.Env = append(os.Environ(), "PLUGINTEST_BROKEN="+name)
			out, err := cmd.CombinedOutput()
			if err == nil {
				t.Fatalf("the suite passed the broken stage:\n%s", out)
			}
			if !strings.Contains(string(out), c.want) {
				t.Fatalf("the suite failed without saying %q:\n%s", c.want, out)
			}
		})
	}
}

// TestSuitesPassCorrectStages is the positive control: a stage that keeps
// each contract passes its suite.
func TestSuitesPassCorrectStages(t *testing.T) {
	DelayerSuite{Name: "good", New: func(r io.Reader) sdk.Delayer { return delayFunc(r, 0, nil) }}.Run(t)
	DelivererSuite{Good: []string{"a@example.org", `"john doe"@example.org`}, New: func(*testing.T) sdk.Deliverer { return strict{} }}.Run(t)
	TransformerSuite{New: func(*testing.T) sdk.Transformer { return cutHeader{keepEnd: true} }}.Run(t)
	MixerSuite{PacketSize: 1024, New: func(*testing.T) sdk.Mixer { return forwardAll{size: 1024, strict: true} }}.Run(t)
	RouterSuite{Rcpts: []string{"a@example.org", "b@example.org"}, Message: func(r ...string) *sdk.Message { return Message("", r...) },
		New: func(*testing.T) sdk.Router { return routeTwice{good: true} }}.Run(t)
}

type delayer struct {
	r     io.Reader
	short int
	fail  error
}

func delayFunc(r io.Reader, short int, fail error) sdk.Delayer {
	return &delayer{r: r, short: short, fail: fail}
}

func (d *delayer) Delay(_ context.Context, req sdk.DelayRequest) ([]time.Duration, error) {
	out := make([]time.Duration, 0, req.Count)
	var b [2]byte
	for range req.Count + d.short {
		if _, err := io.ReadFull(d.r, b[:]); err != nil {
			if d.fail != nil {
				return nil, d.fail
			}
			return nil, sdk.Temporary(451, "3.0", "good: %v", err)
		}
		out = append(out, time.Duration(int(b[0])<<8|int(b[1]))*time.Millisecond)
	}
	return out, nil
}

type negativeDelayer struct{}

func (negativeDelayer) Delay(_ context.Context, req sdk.DelayRequest) ([]time.Duration, error) {
	out := make([]time.Duration, req.Count)
	out[0] = -time.Second
	return out, nil
}

type acceptAll struct{ extra string }

func (a acceptAll) Deliver(_ context.Context, m *sdk.Message) ([]sdk.RcptResult, error) {
	var res []sdk.RcptResult
	for _, r := range m.Envelope.RcptTo {
		res = append(res, sdk.RcptResult{Rcpt: r})
	}
	if a.extra != "" {
		res = append(res, sdk.RcptResult{Rcpt: a.extra})
	}
	return res, nil
}

// strict refuses any recipient with a control character or without "@".
type strict struct{}

func (strict) Deliver(_ context.Context, m *sdk.Message) ([]sdk.RcptResult, error) {
	var res []sdk.RcptResult
	for _, r := range m.Envelope.RcptTo {
		var err error
		if !strings.Contains(r, "@") || strings.ContainsAny(r, "\r\n\x00") {
			err = sdk.Permanent(553, "1.3", "bad address")
		}
		res = append(res, sdk.RcptResult{Rcpt: r, Err: err})
	}
	return res, nil
}

type cutHeader struct{ keepEnd bool }

func (c cutHeader) Transform(_ context.Context, m *sdk.Message) (*sdk.Change, error) {
	h := append([]byte("X-Seen: yes\r\n"), m.Header...)
	if !c.keepEnd {
		h = h[:len(h)-2]
	} else if !strings.HasSuffix(string(h), "\r\n\r\n") {
		return nil, sdk.Permanent(554, "6.0", "header section without its end")
	}
	return &sdk.Change{Header: h}, nil
}

// forwardAll forwards every packet (strict: refuses all, as a mixer
// without a key that opens them must) and makes cover packets of size.
type forwardAll struct {
	size   int
	strict bool
}

func (forwardAll) SetMixState(context.Context, sdk.MixState) error { return nil }
func (f forwardAll) Mix(_ context.Context, p []byte) (*sdk.MixResult, error) {
	if f.strict {
		return nil, sdk.Permanent(554, "6.0", "no key opens the packet")
	}
	return &sdk.MixResult{Action: sdk.MixForward, NextHop: sdk.NodeID{1}, Packet: p}, nil
}
func (f forwardAll) Cover(context.Context, sdk.CoverKind) (*sdk.Packet, error) {
	return &sdk.Packet{NextHop: sdk.NodeID{1}, Data: make([]byte, f.size)}, nil
}
func (forwardAll) Assemble(context.Context, []byte) (*sdk.Message, error) {
	return nil, sdk.Permanent(554, "6.0", "not a message")
}

// routeTwice routes each recipient in its own delivery route, adding a
// recipient of its own unless good.
type routeTwice struct{ good bool }

func (r routeTwice) Route(_ context.Context, m *sdk.Message) ([]sdk.Route, error) {
	var out []sdk.Route
	for _, rc := range m.Envelope.RcptTo {
		out = append(out, sdk.Route{RcptTo: []string{rc}})
	}
	if !r.good {
		out = append(out, sdk.Route{RcptTo: []string{"stranger@example.org"}})
	}
	return out, nil
}
