package pluginclient_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"testing"

	"github.com/mixmta/mixmta/internal/pluginclient"
	"github.com/mixmta/mixmta/sdk"
)

// failingReader returns n bytes, then err.
type failingReader struct {
	n   int
	err error
}

func (f *failingReader) Read(p []byte) (int, error) {
	if f.n == 0 {
		return 0, f.err
	}
	k := min(len(p), f.n)
	clear(p[:k])
	f.n -= k
	return k, nil
}

// TestStreamedBodyReachesThePluginWhole: a body given as OpenBody (how the
// core hands over a queued body) crosses the wire in frames and arrives
// byte for byte; OpenBody is opened again when the call is repeated.
func TestStreamedBodyReachesThePluginWhole(t *testing.T) {
	p := echo(t, "")
	body := bigMessage().Body
	opened := 0
	m := &sdk.Message{ID: "01", Envelope: sdk.Envelope{RcptTo: []string{"ok@example.net"}}, Header: []byte("Subject: s\r\n\r\n"),
		BodyLen: int64(len(body)), OpenBody: func() (io.Reader, error) { opened++; return bytes.NewReader(body), nil }}
	sum := sha256.Sum256(body)
	for range 2 {
		ch, err := p.Transform(context.Background(), m)
		if err != nil {
			t.Fatal(err)
		}
		if string(ch.Body) != hex.EncodeToString(sum[:]) {
			t.Fatalf("plugin saw a different body: %q", ch.Body)
		}
	}
	if opened != 2 {
		t.Fatalf("OpenBody called %d times for 2 calls", opened)
	}
}

// TestBodyReadFailureIsNotAPluginFailure: when the body cannot be read
// (the queue failed), the call fails with that error, not a
// *TransportError (which would restart a healthy plugin), and the plugin
// keeps serving.
func TestBodyReadFailureIsNotAPluginFailure(t *testing.T) {
	p := echo(t, "")
	broken := errors.New("queue: chunk 3 missing")
	m := &sdk.Message{ID: "02", Envelope: sdk.Envelope{RcptTo: []string{"ok@example.net"}}, Header: []byte("S: 1\r\n\r\n"),
		BodyLen: 3 << 20, OpenBody: func() (io.Reader, error) { return &failingReader{n: 1 << 20, err: broken}, nil }}
	_, err := p.Deliver(context.Background(), m)
	if !errors.Is(err, broken) || pluginclient.IsTransport(err) {
		t.Fatalf("Deliver with a failing body: %v (transport: %v); want the read error", err, pluginclient.IsTransport(err))
	}
	short := *m
	short.OpenBody = func() (io.Reader, error) { return bytes.NewReader(make([]byte, 10)), nil }
	if _, err := p.Deliver(context.Background(), &short); err == nil || pluginclient.IsTransport(err) {
		t.Fatalf("Deliver with a body shorter than BodyLen: %v; want a non-transport error", err)
	}
	ok := *m
	ok.OpenBody = func() (io.Reader, error) { return bytes.NewReader(make([]byte, 3<<20)), nil }
	res, err := p.Deliver(context.Background(), &ok)
	if err != nil || len(res) != 1 || res[0].Err != nil {
		t.Fatalf("plugin after the failed calls: %v %v", res, err)
	}
}
