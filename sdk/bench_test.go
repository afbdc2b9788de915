package sdk_test

import (
	"bytes"
	"context"
	"testing"

	"github.com/mixmta/mixmta/sdk"
	"github.com/mixmta/mixmta/sdk/plugintest"
)

// inProcess is the echo plugin's Deliver logic called directly: the
// baseline the RPC cost is measured against.
type inProcess struct{}

func (inProcess) Deliver(_ context.Context, m *sdk.Message) ([]sdk.RcptResult, error) {
	out := make([]sdk.RcptResult, 0, len(m.Envelope.RcptTo))
	for _, r := range m.Envelope.RcptTo {
		out = append(out, sdk.RcptResult{Rcpt: r})
	}
	return out, nil
}

// BenchmarkStageCall measures the cost of one stage call through the real
// plugin host (go-plugin, gRPC over a Unix socket, framing) against calling
// the same logic in process: headers only (a sanitizer's view of a 1 KiB
// message) and a full 64 KiB message (a deliverer's view).
//
//	go test -run '^$' -bench StageCall -benchmem ./sdk/
func BenchmarkStageCall(b *testing.B) {
	header := []byte("From: a@example.org\r\nTo: ok@example.net\r\nSubject: bench\r\n\r\n")
	cases := []struct {
		name string
		msg  *sdk.Message
	}{
		{"headers-1KiB", &sdk.Message{Envelope: sdk.Envelope{RcptTo: []string{"ok@example.net"}}, Header: append(header, bytes.Repeat([]byte("X-Pad: 0123456789\r\n"), 50)...)}},
		{"full-64KiB", &sdk.Message{Envelope: sdk.Envelope{RcptTo: []string{"ok@example.net"}}, Header: header, Body: bytes.Repeat([]byte("x"), 64<<10)}},
	}
	p := plugintest.Start(b, echoBin, "")
	ctx := context.Background()
	for _, c := range cases {
		b.Run(c.name+"/rpc", func(b *testing.B) {
			b.SetBytes(int64(len(c.msg.Header) + len(c.msg.Body)))
			for i := 0; i < b.N; i++ {
				if _, err := p.Deliver(ctx, c.msg); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(c.name+"/in-process", func(b *testing.B) {
			var d sdk.Deliverer = inProcess{}
			b.SetBytes(int64(len(c.msg.Header) + len(c.msg.Body)))
			for i := 0; i < b.N; i++ {
				// the in-process baseline still copies the message once, as a
				// stage that keeps it would have to
				m := *c.msg
				m.Body = append([]byte(nil), c.msg.Body...)
				if _, err := d.Deliver(ctx, &m); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkUnaryDelayCall is a unary call (Delay) for comparison with the
// streamed message calls above.
func BenchmarkUnaryDelayCall(b *testing.B) {
	p := plugintest.Start(b, echoBin, "")
	ctx := context.Background()
	for i := 0; i < b.N; i++ {
		if _, err := p.Delay(ctx, sdk.DelayRequest{Count: 1}); err != nil {
			b.Fatal(err)
		}
	}
}
