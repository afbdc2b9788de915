package pluginclient_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mixmta/mixmta/internal/pluginclient"
	"github.com/mixmta/mixmta/sdk"
)

// launch starts the echo plugin configured with cfg, with or without the
// batched Calls stream.
func launch(t *testing.T, cfg string, noBatch bool) *pluginclient.Client {
	t.Helper()
	c, err := pluginclient.Launch(pluginclient.LaunchOptions{Path: echoBin, NoBatch: noBatch})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Kill)
	if err := c.Configure(context.Background(), "test", []byte(cfg)); err != nil {
		t.Fatal(err)
	}
	return c
}

// outcome runs every stage kind on a small message and renders what came
// back, errors included.
func outcome(c *pluginclient.Client) string {
	ctx := context.Background()
	m := &sdk.Message{ID: "0a", Envelope: sdk.Envelope{MailFrom: "a@example.org", RcptTo: []string{"ok@example.net", "temp@example.net", "gone@example.net"}},
		Header: []byte("Subject: small\r\n\r\n"), Body: []byte("hello\r\n"), Size: 25, Attempt: 2, ReceivedAt: time.Unix(1e9, 0)}
	var b strings.Builder
	ch, err := c.Transform(ctx, m)
	fmt.Fprintf(&b, "transform %q %q %v %v\n", ch.Header, ch.Body, *ch.MailFrom, err)
	routes, err := c.Route(ctx, m)
	fmt.Fprintf(&b, "route %+v %v\n", routes, err)
	res, err := c.Deliver(ctx, m)
	fmt.Fprintf(&b, "deliver %+v %v\n", res, err)
	ds, err := c.Delay(ctx, sdk.DelayRequest{Size: 3, Count: 2})
	fmt.Fprintf(&b, "delay %v %v\n", ds, err)
	fmt.Fprintf(&b, "check %v %v\n", c.Check(ctx, &sdk.Message{Envelope: sdk.Envelope{RcptTo: []string{"spam@example.net"}}}),
		c.Check(ctx, &sdk.Message{Envelope: sdk.Envelope{RcptTo: []string{"fine@example.net"}}}))
	// empty header and body are present, not absent
	ch, err = c.Transform(ctx, &sdk.Message{Header: []byte{}, Body: []byte{}})
	fmt.Fprintf(&b, "empty %q %v\n", ch.Body, err)
	return b.String()
}

// TestBatchedCallsAnswerAsFramedCalls: every stage kind gives the same
// result through the batched Calls stream as through framed calls of
// their own, and the batched client really used its stream.
func TestBatchedCallsAnswerAsFramedCalls(t *testing.T) {
	batched, framed := launch(t, `{"reject":"spam"}`, false), launch(t, `{"reject":"spam"}`, true)
	got, want := outcome(batched), outcome(framed)
	if got != want {
		t.Fatalf("batched:\n%s\nframed:\n%s", got, want)
	}
	if !strings.Contains(want, "SUBJECT: SMALL") || !strings.Contains(want, "5.7.1") || !strings.Contains(want, "len=") {
		t.Fatalf("unexpected outcome:\n%s", want)
	}
	if calls, _ := pluginclient.Batched(batched); calls < 7 {
		t.Fatalf("batched client sent %d calls on its stream, want every call", calls)
	}
	if calls, _ := pluginclient.Batched(framed); calls != 0 {
		t.Fatalf("framed client sent %d batched calls", calls)
	}
	if !pluginclient.UsesRegion(batched) || pluginclient.UsesRegion(framed) {
		t.Fatalf("body region: batched %v, framed %v; want only the batched client to use one", pluginclient.UsesRegion(batched), pluginclient.UsesRegion(framed))
	}
	if !pluginclient.UsesReplyRegion(batched) || pluginclient.UsesReplyRegion(framed) {
		t.Fatalf("reply region: batched %v, framed %v; want only the batched client to use one", pluginclient.UsesReplyRegion(batched), pluginclient.UsesReplyRegion(framed))
	}
}

// TestConcurrentCallsShareBatches: calls made at once travel together,
// fewer batches than calls, and each caller gets its own reply; with more
// callers than body region slots, bodies travel both in the region and
// inside calls, and none is mixed up with another.
func TestConcurrentCallsShareBatches(t *testing.T) {
	c := launch(t, "", false)
	const callers, each = 64, 20
	var wg sync.WaitGroup
	errs := make(chan error, callers)
	for i := range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range each {
				body := bytes.Repeat([]byte{'a' + byte(i%26)}, i*100+j)
				ch, err := c.Transform(context.Background(), &sdk.Message{Header: []byte("A: b\r\n\r\n"), Body: body})
				if err != nil {
					errs <- err
					return
				}
				if want := fmt.Sprintf("%x", sha(body)); string(ch.Body) != want {
					errs <- fmt.Errorf("caller %d call %d got another call's reply", i, j)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	calls, batches := pluginclient.Batched(c)
	if calls != callers*each || batches >= calls {
		t.Fatalf("%d calls in %d batches: want all %d calls, in fewer batches", calls, batches, callers*each)
	}
	t.Logf("%d calls in %d batches", calls, batches)
	// Every slot lent to a call came back with its reply.
	if free, all := pluginclient.FreeSlots(c); free != all {
		t.Fatalf("%d of %d body region slots free after every call returned", free, all)
	}
}

// TestCrashFailsBatchedCallsAsTransportErrors: when the plugin dies, the
// call in flight and every later call on the dead stream fail at once as
// transport errors (the core restarts the plugin and retries the items);
// none hangs.
func TestCrashFailsBatchedCallsAsTransportErrors(t *testing.T) {
	c := launch(t, `{"crash":"boom"}`, false)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	errs := make([]error, 16)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rcpt := "ok@example.net"
			if i == 0 {
				rcpt = "boom@example.net"
			}
			for ctx.Err() == nil {
				if _, errs[i] = c.Deliver(ctx, &sdk.Message{Envelope: sdk.Envelope{RcptTo: []string{rcpt}}}); errs[i] != nil {
					return
				}
			}
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if !pluginclient.IsTransport(err) || errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("caller %d: got %v, want a transport error from the crash", i, err)
		}
	}
	if _, err := c.Delay(ctx, sdk.DelayRequest{Count: 1}); !pluginclient.IsTransport(err) {
		t.Fatalf("call after the crash: %v", err)
	}
}

// TestCancelledBatchedCallReturns: a call whose context ends returns at
// once, as a transport error carrying the context's error, and the stream
// keeps serving other calls.
func TestCancelledBatchedCallReturns(t *testing.T) {
	c := launch(t, "", false)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := c.Deliver(ctx, &sdk.Message{Envelope: sdk.Envelope{RcptTo: []string{"ok@example.net"}}}); !pluginclient.IsTransport(err) || !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v, want a transport error wrapping context.Canceled", err)
	}
	res, err := c.Deliver(context.Background(), &sdk.Message{Envelope: sdk.Envelope{RcptTo: []string{"ok@example.net"}}})
	if err != nil || !reflect.DeepEqual(res, []sdk.RcptResult{{Rcpt: "ok@example.net"}}) {
		t.Fatalf("after a cancelled call: %v %v", res, err)
	}
}

func sha(b []byte) [32]byte { return sha256.Sum256(b) }
