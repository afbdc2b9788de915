// Command echoplugin is the SDK's own test plugin: one binary implementing
// every stage kind in the simplest way that lets tests check what crossed
// the RPC boundary (sizes, bytes, envelope, errors).
package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"strings"
	"time"

	"github.com/mixmta/mixmta/sdk"
)

// Config selects behaviour.
type Config struct {
	// Reject makes Check reject recipients containing this string.
	Reject string `json:"reject"`
	// Crash makes Deliver exit the process for recipients containing it.
	Crash string `json:"crash"`
	// Slow makes Deliver take 3 s for recipients containing it.
	Slow string `json:"slow"`
}

type echo struct{ cfg Config }

func (e echo) Check(_ context.Context, m *sdk.Message) error {
	for _, r := range m.Envelope.RcptTo {
		if e.cfg.Reject != "" && strings.Contains(r, e.cfg.Reject) {
			return sdk.Permanent(550, "7.1", "rejected by echo")
		}
	}
	return nil
}

// Transform upper-cases the header and returns a body that is the SHA-256
// hex of the body it got, so a test can check every byte arrived.
func (e echo) Transform(_ context.Context, m *sdk.Message) (*sdk.Change, error) {
	sum := sha256.Sum256(m.Body)
	from := "transformed@example.org"
	return &sdk.Change{MailFrom: &from, Header: []byte(strings.ToUpper(string(m.Header))), Body: []byte(hex.EncodeToString(sum[:]))}, nil
}

// Route returns one route per recipient; the first carries a copy of the
// whole body as its own body.
func (e echo) Route(_ context.Context, m *sdk.Message) ([]sdk.Route, error) {
	var out []sdk.Route
	for i, r := range m.Envelope.RcptTo {
		rt := sdk.Route{RcptTo: []string{r}}
		if i == 0 {
			rt.Body = append([]byte(nil), m.Body...)
		}
		out = append(out, rt)
	}
	return out, nil
}

func (e echo) Delay(_ context.Context, req sdk.DelayRequest) ([]time.Duration, error) {
	out := make([]time.Duration, req.Count)
	for i := range out {
		out[i] = time.Duration(req.Size) * time.Millisecond
	}
	return out, nil
}

// Deliver accepts recipients starting with "ok", fails "temp*" temporarily
// and everything else permanently; the message length is echoed in the
// permanent error text.
func (e echo) Deliver(_ context.Context, m *sdk.Message) ([]sdk.RcptResult, error) {
	var out []sdk.RcptResult
	for _, r := range m.Envelope.RcptTo {
		switch {
		case e.cfg.Crash != "" && strings.Contains(r, e.cfg.Crash):
			os.Exit(3)
		case e.cfg.Slow != "" && strings.Contains(r, e.cfg.Slow):
			time.Sleep(3 * time.Second)
			out = append(out, sdk.RcptResult{Rcpt: r})
		case strings.HasPrefix(r, "ok"):
			out = append(out, sdk.RcptResult{Rcpt: r})
		case strings.HasPrefix(r, "temp"):
			out = append(out, sdk.RcptResult{Rcpt: r, Err: sdk.Temporary(451, "4.1", "try later")})
		default:
			out = append(out, sdk.RcptResult{Rcpt: r, Err: sdk.Permanent(550, "1.1", "len=%d", len(m.Header)+len(m.Body))})
		}
	}
	return out, nil
}

func main() {
	sdk.Serve(sdk.Plugin[Config]{
		Name: "echo", Version: "0.0.1", Doc: "SDK test plugin",
		Kinds:  []sdk.Kind{sdk.KindChecker, sdk.KindTransformer, sdk.KindRouter, sdk.KindDelayer, sdk.KindDeliverer},
		Needs:  sdk.NeedAll,
		Config: Config{},
		New:    func(c Config, _ sdk.Env) (any, error) { return echo{c}, nil },
	})
}
