package pipeline

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mixmta/mixmta/core/internal/queue"
	"github.com/mixmta/mixmta/core/internal/stats"
	"github.com/mixmta/mixmta/sdk"
)

// fakeStage is an in-process stage for engine unit tests.
type fakeStage struct {
	mu        sync.Mutex
	transform func(*sdk.Message) (*sdk.Change, error)
	route     func(*sdk.Message) ([]sdk.Route, error)
	delay     time.Duration
	deliver   func(*sdk.Message) ([]sdk.RcptResult, error)
	delivered []*sdk.Message
}

// inMemory is m as a stage that declared NeedBody gets it: the body the
// core streams (OpenBody) read into Body.
func inMemory(m *sdk.Message) *sdk.Message {
	v := *m
	if v.Body == nil && v.OpenBody != nil {
		b, err := v.ReadBody()
		if err != nil {
			panic(err)
		}
		v.Body, v.OpenBody = b, nil
	}
	return &v
}

func (f *fakeStage) Check(context.Context, *sdk.Message) error { return nil }
func (f *fakeStage) Transform(_ context.Context, m *sdk.Message) (*sdk.Change, error) {
	return f.transform(inMemory(m))
}
func (f *fakeStage) Route(_ context.Context, m *sdk.Message) ([]sdk.Route, error) {
	return f.route(inMemory(m))
}
func (f *fakeStage) Delay(_ context.Context, r sdk.DelayRequest) ([]time.Duration, error) {
	out := make([]time.Duration, r.Count)
	for i := range out {
		out[i] = f.delay
	}
	return out, nil
}
func (f *fakeStage) Deliver(_ context.Context, m *sdk.Message) ([]sdk.RcptResult, error) {
	m = inMemory(m)
	f.mu.Lock()
	f.delivered = append(f.delivered, m)
	f.mu.Unlock()
	return f.deliver(m)
}
func (f *fakeStage) Healthy() bool { return true }

func (f *fakeStage) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.delivered)
}

func okAll(m *sdk.Message) ([]sdk.RcptResult, error) {
	out := make([]sdk.RcptResult, len(m.Envelope.RcptTo))
	for i, r := range m.Envelope.RcptTo {
		out[i] = sdk.RcptResult{Rcpt: r}
	}
	return out, nil
}

func openQueue(t *testing.T, dir string) *queue.Queue {
	t.Helper()
	q, err := queue.Open(dir, queue.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return q
}

func runEngine(t *testing.T, q *queue.Queue, stages []Stage, o Options) (*Engine, context.CancelFunc) {
	t.Helper()
	if o.Pool.Window == 0 {
		o.Pool = Pool{Window: 10 * time.Millisecond, SendFraction: 1}
	}
	e, err := New(q, stages, o)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	if err := e.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); e.Wait() })
	return e, cancel
}

func accept(t *testing.T, q *queue.Queue, e *Engine, rcpts ...string) *queue.Item {
	t.Helper()
	it, err := q.Accept(sdk.Envelope{MailFrom: "a@example.org", RcptTo: rcpts}, []byte("Subject: x\r\n\r\n"), []byte("body\r\n"), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	e.Submit(it)
	return it
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func queueLen(t *testing.T, q *queue.Queue) int {
	n := 0
	if err := q.Items(func(*queue.Item) error { n++; return nil }); err != nil {
		t.Fatal(err)
	}
	return n
}

func TestTransformDelayDeliverEmptiesQueue(t *testing.T) {
	q := openQueue(t, t.TempDir())
	defer q.Close()
	from := "anon@remailer.invalid"
	tr := &fakeStage{transform: func(m *sdk.Message) (*sdk.Change, error) {
		if m.Body != nil {
			return nil, errors.New("transformer got a body it did not ask for")
		}
		return &sdk.Change{MailFrom: &from, Header: []byte("Subject: clean\r\n\r\n")}, nil
	}}
	dl := &fakeStage{deliver: okAll}
	c := &stats.Counters{}
	e, _ := runEngine(t, q, []Stage{
		{Name: "sanitize", Kind: sdk.KindTransformer, Needs: sdk.NeedHeader, Impl: tr},
		{Name: "delay", Kind: sdk.KindDelayer, Impl: &fakeStage{delay: 20 * time.Millisecond}},
		{Name: "deliver", Kind: sdk.KindDeliverer, Needs: sdk.NeedAll, Impl: dl},
	}, Options{Counters: c})
	accept(t, q, e, "b@example.net", "c@example.net")
	eventually(t, "delivery", func() bool { return dl.count() == 1 })
	m := dl.delivered[0]
	if m.Envelope.MailFrom != from || string(m.Header) != "Subject: clean\r\n\r\n" || string(m.Body) != "body\r\n" {
		t.Fatalf("delivered %+v", m)
	}
	eventually(t, "empty queue", func() bool { return queueLen(t, q) == 0 && e.Queued() == 0 })
	if c.Sent.Load() != 2 {
		t.Fatalf("sent=%d, want 2", c.Sent.Load())
	}
}

func TestTemporaryFailureRetriesOnScheduleThenGivesUp(t *testing.T) {
	q := openQueue(t, t.TempDir())
	defer q.Close()
	dl := &fakeStage{deliver: func(m *sdk.Message) ([]sdk.RcptResult, error) {
		return nil, sdk.Temporary(451, "4.4.1", "no answer")
	}}
	c := &stats.Counters{}
	e, _ := runEngine(t, q, []Stage{{Name: "deliver", Kind: sdk.KindDeliverer, Impl: dl}},
		Options{Counters: c, Backoff: Backoff{MaxAttempts: 3, Schedule: []time.Duration{10 * time.Millisecond}}})
	accept(t, q, e, "b@example.net")
	eventually(t, "give-up", func() bool { return c.Failed.Load() == 1 })
	if n := dl.count(); n != 3 {
		t.Fatalf("%d attempts, want 3 (max_attempts)", n)
	}
	if c.Deferred.Load() != 3 || queueLen(t, q) != 0 {
		t.Fatalf("deferred=%d queue=%d, want 3 and 0", c.Deferred.Load(), queueLen(t, q))
	}
}

func TestPerRecipientResultsRetryOnlyTheTemporaryOnes(t *testing.T) {
	q := openQueue(t, t.TempDir())
	defer q.Close()
	var mu sync.Mutex
	calls := 0
	dl := &fakeStage{deliver: func(m *sdk.Message) ([]sdk.RcptResult, error) {
		mu.Lock()
		defer mu.Unlock()
		calls++
		var out []sdk.RcptResult
		for _, r := range m.Envelope.RcptTo {
			switch {
			case r == "perm@example.net":
				out = append(out, sdk.RcptResult{Rcpt: r, Err: sdk.Permanent(550, "1.1", "no such user")})
			case r == "temp@example.net" && calls == 1:
				out = append(out, sdk.RcptResult{Rcpt: r, Err: sdk.Temporary(450, "2.1", "busy")})
			default:
				out = append(out, sdk.RcptResult{Rcpt: r})
			}
		}
		return out, nil
	}}
	c := &stats.Counters{}
	e, _ := runEngine(t, q, []Stage{{Name: "deliver", Kind: sdk.KindDeliverer, Impl: dl}},
		Options{Counters: c, Backoff: Backoff{MaxAttempts: 5, Schedule: []time.Duration{10 * time.Millisecond}}})
	accept(t, q, e, "ok@example.net", "perm@example.net", "temp@example.net")
	eventually(t, "done", func() bool { return queueLen(t, q) == 0 && dl.count() == 2 })
	if got := dl.delivered[1].Envelope.RcptTo; len(got) != 1 || got[0] != "temp@example.net" {
		t.Fatalf("retry went to %v, want only temp@example.net", got)
	}
	if c.Sent.Load() != 2 || c.Failed.Load() != 1 || c.Deferred.Load() != 1 {
		t.Fatalf("sent=%d failed=%d deferred=%d, want 2/1/1", c.Sent.Load(), c.Failed.Load(), c.Deferred.Load())
	}
}

func TestRouterSplitsAndFreesSharedBlobs(t *testing.T) {
	q := openQueue(t, t.TempDir())
	defer q.Close()
	rt := &fakeStage{route: func(m *sdk.Message) ([]sdk.Route, error) {
		var out []sdk.Route
		for _, r := range m.Envelope.RcptTo {
			out = append(out, sdk.Route{RcptTo: []string{r}})
		}
		out[0].Body = []byte("packet-bytes")
		return out, nil
	}}
	dl := &fakeStage{deliver: okAll}
	e, _ := runEngine(t, q, []Stage{
		{Name: "route", Kind: sdk.KindRouter, Needs: sdk.NeedAll, Impl: rt},
		{Name: "deliver", Kind: sdk.KindDeliverer, Needs: sdk.NeedAll, Impl: dl},
	}, Options{})
	it := accept(t, q, e, "a@x.example", "b@y.example", "c@z.example")
	eventually(t, "three deliveries", func() bool { return dl.count() == 3 })
	eventually(t, "empty queue", func() bool { return queueLen(t, q) == 0 })
	var packet int
	for _, m := range dl.delivered {
		if string(m.Body) == "packet-bytes" && len(m.Header) == 0 {
			packet++
		}
	}
	if packet != 1 {
		t.Fatalf("want exactly one delivery carrying the route's own body, got %d", packet)
	}
	// the original header and body blobs are gone with the last child
	if b, err := q.Blob(it.Body); !errors.Is(err, queue.ErrNotFound) {
		t.Fatalf("body blob still there after every child finished: %q %v", b, err)
	}
}

func TestRestartResumesWaitingItems(t *testing.T) {
	dir := t.TempDir()
	q := openQueue(t, dir)
	dl := &fakeStage{deliver: okAll}
	stages := []Stage{
		{Name: "delay", Kind: sdk.KindDelayer, Impl: &fakeStage{delay: 300 * time.Millisecond}},
		{Name: "deliver", Kind: sdk.KindDeliverer, Impl: dl},
	}
	e, cancel := runEngine(t, q, stages, Options{})
	for i := 0; i < 5; i++ {
		accept(t, q, e, "b@example.net")
	}
	eventually(t, "items delayed", func() bool { return e.Delayed() == 5 })
	cancel()
	e.Wait()
	q.Close()
	if dl.count() != 0 {
		t.Fatalf("delivered %d before the delay ended", dl.count())
	}

	q = openQueue(t, dir)
	defer q.Close()
	dl2 := &fakeStage{deliver: okAll}
	stages[1].Impl = dl2
	runEngine(t, q, stages, Options{})
	eventually(t, "resumed deliveries", func() bool { return dl2.count() == 5 })
	eventually(t, "empty queue", func() bool { return queueLen(t, q) == 0 })
}

func TestPermanentStageErrorDropsAndCounts(t *testing.T) {
	q := openQueue(t, t.TempDir())
	defer q.Close()
	tr := &fakeStage{transform: func(*sdk.Message) (*sdk.Change, error) {
		return nil, sdk.Permanent(554, "6.0", "unparsable")
	}}
	c := &stats.Counters{}
	e, _ := runEngine(t, q, []Stage{
		{Name: "t", Kind: sdk.KindTransformer, Impl: tr},
		{Name: "d", Kind: sdk.KindDeliverer, Impl: &fakeStage{deliver: okAll}},
	}, Options{Counters: c})
	accept(t, q, e, "b@example.net")
	eventually(t, "drop", func() bool { return c.Dropped.Load() == 1 && queueLen(t, q) == 0 })
}

func TestValidateOrder(t *testing.T) {
	st := func(k sdk.Kind) Stage { return Stage{Name: string(k), Kind: k} }
	cases := []struct {
		stages []Stage
		ok     bool
	}{
		{[]Stage{st(sdk.KindDeliverer)}, true},
		{[]Stage{st(sdk.KindChecker), st(sdk.KindTransformer), st(sdk.KindDelayer), st(sdk.KindDeliverer)}, true},
		{[]Stage{st(sdk.KindTransformer)}, false},
		{[]Stage{st(sdk.KindDeliverer), st(sdk.KindTransformer)}, false},
		{[]Stage{st(sdk.KindTransformer), st(sdk.KindChecker), st(sdk.KindDeliverer)}, false},
	}
	for i, c := range cases {
		if err := ValidateOrder(c.stages); (err == nil) != c.ok {
			t.Errorf("case %d: err=%v, want ok=%v", i, err, c.ok)
		}
	}
}

// A router that emits mixnet packets needs a sanitizing transformer before
// it; the error names that router's index.
func TestValidateOrderWantsSanitizingBeforePacketRouter(t *testing.T) {
	san := Stage{Name: "sanitize", Kind: sdk.KindTransformer, Sanitizes: true}
	other := Stage{Name: "dkim", Kind: sdk.KindTransformer}
	sphinx := Stage{Name: "sphinx", Kind: sdk.KindRouter, Packets: true}
	plainRouter := Stage{Name: "route", Kind: sdk.KindRouter}
	delay := Stage{Name: "delay", Kind: sdk.KindDelayer}
	dlv := Stage{Name: "deliver", Kind: sdk.KindDeliverer}
	cases := []struct {
		name   string
		stages []Stage
		bad    int // index of the refused stage, -1 when valid
	}{
		{"sanitize, delay, router", []Stage{san, delay, sphinx, san, dlv}, -1},
		{"sanitize only after the router", []Stage{delay, sphinx, san, dlv}, 1},
		{"a transformer that does not sanitize", []Stage{other, delay, sphinx, san, dlv}, 2},
		{"a router without packets needs none", []Stage{plainRouter, dlv}, -1},
	}
	for _, c := range cases {
		err := ValidateOrder(c.stages)
		var oe *OrderError
		switch {
		case c.bad < 0 && err != nil:
			t.Errorf("%s: %v", c.name, err)
		case c.bad >= 0 && (!errors.As(err, &oe) || oe.Index != c.bad || !strings.Contains(err.Error(), "sanitize")):
			t.Errorf("%s: err=%v, want an OrderError at stage %d", c.name, err, c.bad)
		}
	}
}

func TestBounceOnlyWhenConfiguredAndNeverForNullSender(t *testing.T) {
	for _, c := range []struct {
		name     string
		bounce   bool
		mailFrom string
		want     int // deliveries: the message, plus the bounce if any
	}{
		{"off by default", false, "a@example.org", 1},
		{"configured", true, "a@example.org", 2},
		{"null sender never bounced", true, "", 1},
	} {
		t.Run(c.name, func(t *testing.T) {
			q := openQueue(t, t.TempDir())
			defer q.Close()
			dl := &fakeStage{deliver: func(m *sdk.Message) ([]sdk.RcptResult, error) {
				if m.Envelope.MailFrom == "" && m.Envelope.RcptTo[0] == "a@example.org" {
					return okAll(m) // the bounce itself
				}
				return []sdk.RcptResult{{Rcpt: m.Envelope.RcptTo[0], Err: sdk.Permanent(550, "1.1", "no such user")}}, nil
			}}
			e, _ := runEngine(t, q, []Stage{{Name: "d", Kind: sdk.KindDeliverer, Needs: sdk.NeedAll, Impl: dl}},
				Options{Bounce: c.bounce, Hostname: "mx.example.test"})
			it, err := q.Accept(sdk.Envelope{MailFrom: c.mailFrom, RcptTo: []string{"gone@example.net"}}, []byte("Subject: x\r\n\r\n"), []byte("b\r\n"), time.Now())
			if err != nil {
				t.Fatal(err)
			}
			e.Submit(it)
			eventually(t, "queue drained", func() bool { return queueLen(t, q) == 0 && dl.count() >= 1 })
			time.Sleep(50 * time.Millisecond)
			if dl.count() != c.want {
				t.Fatalf("%d deliveries, want %d", dl.count(), c.want)
			}
			if c.want == 2 {
				b := dl.delivered[1]
				for _, s := range []string{"message/delivery-status", "Final-Recipient: rfc822; gone@example.net", "Status: 5.1.1", "Subject: x"} {
					if !strings.Contains(string(b.Body), s) && !strings.Contains(string(b.Header), s) {
						t.Errorf("bounce lacks %q:\n%s%s", s, b.Header, b.Body)
					}
				}
			}
		})
	}
}

// After the delay, transform and delivery run in one go without persisting
// the transformed message; a retry transforms the stored original again.
func TestFinalTransformRunsInMemoryAndAgainOnRetry(t *testing.T) {
	q := openQueue(t, t.TempDir())
	defer q.Close()
	var mu sync.Mutex
	transforms := 0
	from := "anon@remailer.invalid"
	tr := &fakeStage{transform: func(m *sdk.Message) (*sdk.Change, error) {
		mu.Lock()
		transforms++
		mu.Unlock()
		if string(m.Header) != "Subject: x\r\n\r\n" {
			return nil, sdk.Permanent(554, "6.0", "transformer saw %q, want the stored original", m.Header)
		}
		return &sdk.Change{MailFrom: &from, Header: []byte("Subject: clean\r\n\r\n")}, nil
	}}
	calls := 0
	dl := &fakeStage{deliver: func(m *sdk.Message) ([]sdk.RcptResult, error) {
		calls++
		if m.Envelope.MailFrom != from || string(m.Header) != "Subject: clean\r\n\r\n" || string(m.Body) != "body\r\n" {
			return nil, sdk.Permanent(554, "6.0", "deliverer got %q %q", m.Envelope.MailFrom, m.Header)
		}
		if calls == 1 {
			return nil, sdk.Temporary(451, "4.1", "later")
		}
		return okAll(m)
	}}
	c := &stats.Counters{}
	e, _ := runEngine(t, q, []Stage{
		{Name: "delay", Kind: sdk.KindDelayer, Impl: &fakeStage{delay: time.Millisecond}},
		{Name: "sanitize", Kind: sdk.KindTransformer, Needs: sdk.NeedHeader, Impl: tr},
		{Name: "deliver", Kind: sdk.KindDeliverer, Needs: sdk.NeedAll, Impl: dl},
	}, Options{Counters: c, Backoff: Backoff{MaxAttempts: 3, Schedule: []time.Duration{10 * time.Millisecond}}})
	accept(t, q, e, "b@example.net")
	eventually(t, "delivered", func() bool { return c.Sent.Load() == 1 && queueLen(t, q) == 0 })
	if transforms != 2 || calls != 2 {
		t.Fatalf("transforms=%d deliveries=%d, want 2 and 2 (one retry)", transforms, calls)
	}
	if c.Failed.Load() != 0 {
		t.Fatalf("failed=%d", c.Failed.Load())
	}
}

// TestRelayFieldNamesOnlyWhatNamesNoRecipient: a relay given as an IP
// literal (a smarthost, the site's MTA) is logged as is; a host name or an
// onion address names the recipient's domain and is logged only with
// log.addresses.
func TestRelayFieldNamesOnlyWhatNamesNoRecipient(t *testing.T) {
	e := &Engine{}
	for relay, want := range map[string]string{
		"":                          "none",
		"127.0.0.1:25":              "127.0.0.1:25",
		"[::1]:2525":                "[::1]:2525",
		"mx.example.net:25":         "***",
		"abcdefghijklmnop.onion:25": "***",
	} {
		if got := e.relayField(relay); got != want {
			t.Errorf("relayField(%q) = %q, want %q", relay, got, want)
		}
	}
	e.opt.LogAddresses = true
	if got := e.relayField("mx.example.net:25"); got != "mx.example.net:25" {
		t.Errorf("with log.addresses: %q", got)
	}
}

// TestBounceWaitsWhileTheQueueIsFull: with queue.max_items 2 and two
// messages queued, a recipient of one fails permanently while another
// is deferred. Its bounce would be a third item: it waits (the failed
// recipient stays on the message) until the other message is delivered,
// and is then queued and delivered once. The queue never holds more than
// 2 items, and the bounce is not lost.
func TestBounceWaitsWhileTheQueueIsFull(t *testing.T) {
	q := openQueue(t, t.TempDir())
	defer q.Close()
	var release atomic.Bool
	var most atomic.Int64
	var e *Engine
	dl := &fakeStage{deliver: func(m *sdk.Message) ([]sdk.RcptResult, error) {
		most.Store(max(most.Load(), e.Queued()))
		var out []sdk.RcptResult
		for _, r := range m.Envelope.RcptTo {
			switch {
			case m.Envelope.MailFrom == "":
				out = append(out, sdk.RcptResult{Rcpt: r}) // the bounce
			case r == "perm@example.net":
				out = append(out, sdk.RcptResult{Rcpt: r, Err: sdk.Permanent(550, "1.1", "no such user")})
			case !release.Load():
				out = append(out, sdk.RcptResult{Rcpt: r, Err: sdk.Temporary(450, "2.1", "busy")})
			default:
				out = append(out, sdk.RcptResult{Rcpt: r})
			}
		}
		return out, nil
	}}
	e, _ = runEngine(t, q, []Stage{{Name: "d", Kind: sdk.KindDeliverer, Needs: sdk.NeedAll, Impl: dl}},
		Options{Bounce: true, Hostname: "mx.example.test", MaxItems: 2,
			Backoff: Backoff{MaxAttempts: 1000, Schedule: []time.Duration{20 * time.Millisecond}}})
	accept(t, q, e, "other@example.net")
	accept(t, q, e, "perm@example.net", "temp@example.net")
	if !e.Full() {
		t.Fatalf("Full with %d of 2 messages queued: false", e.Messages())
	}
	eventually(t, "a few attempts while full", func() bool { return dl.count() >= 8 })
	bounces := func() int {
		dl.mu.Lock()
		defer dl.mu.Unlock()
		n := 0
		for _, m := range dl.delivered {
			if m.Envelope.MailFrom == "" {
				n++
			}
		}
		return n
	}
	if n := bounces(); n != 0 {
		t.Fatalf("%d bounces delivered while the queue was full", n)
	}
	if n := most.Load(); n > 2 {
		t.Fatalf("the queue held %d items, max_items 2", n)
	}
	release.Store(true)
	eventually(t, "queue drained", func() bool { return queueLen(t, q) == 0 && e.Queued() == 0 && e.Messages() == 0 })
	time.Sleep(50 * time.Millisecond)
	if n := bounces(); n != 1 {
		t.Fatalf("%d bounces delivered, want 1", n)
	}
	if n := most.Load(); n > 2 {
		t.Fatalf("the queue held %d items, max_items 2", n)
	}
	dl.mu.Lock()
	defer dl.mu.Unlock()
	for _, m := range dl.delivered {
		if m.Envelope.MailFrom == "" && !strings.Contains(string(m.Body), "Final-Recipient: rfc822; perm@example.net") {
			t.Errorf("the bounce does not name perm@example.net:\n%s", m.Body)
		}
	}
}

// countingDelayer counts its Delay calls.
type countingDelayer struct {
	fakeStage
	calls atomic.Int64
}

func (c *countingDelayer) Delay(ctx context.Context, r sdk.DelayRequest) ([]time.Duration, error) {
	c.calls.Add(1)
	return c.fakeStage.Delay(ctx, r)
}

// Deliveries do not take the shared workers: with peers that hang, as
// many deliveries as the deliverer's concurrency are in flight (more than
// there are workers), and a newly accepted message still gets its delay
// sampled meanwhile.
func TestHangingDeliveriesLeaveTheWorkersFree(t *testing.T) {
	q := openQueue(t, t.TempDir())
	defer q.Close()
	hang := make(chan struct{})
	var inFlight, most atomic.Int64
	dl := &fakeStage{deliver: func(m *sdk.Message) ([]sdk.RcptResult, error) {
		n := inFlight.Add(1)
		for {
			old := most.Load()
			if n <= old || most.CompareAndSwap(old, n) {
				break
			}
		}
		<-hang
		inFlight.Add(-1)
		return okAll(m)
	}}
	dy := &countingDelayer{}
	e, _ := runEngine(t, q, []Stage{
		{Name: "delay", Kind: sdk.KindDelayer, Impl: dy},
		{Name: "deliver", Kind: sdk.KindDeliverer, Needs: sdk.NeedAll, Impl: dl},
	}, Options{Workers: 2, Concurrency: 4})
	var unhang sync.Once
	t.Cleanup(func() { unhang.Do(func() { close(hang) }) }) // runs before the engine stops
	for i := 0; i < 4; i++ {
		accept(t, q, e, "b@example.net")
	}
	eventually(t, "4 deliveries in flight with 2 workers", func() bool { return most.Load() == 4 })
	accept(t, q, e, "c@example.net")
	eventually(t, "the delay of a message accepted while deliveries hang", func() bool { return dy.calls.Load() == 5 })
	unhang.Do(func() { close(hang) })
	eventually(t, "every delivery", func() bool { return dl.count() == 5 })
	eventually(t, "empty queue", func() bool { return queueLen(t, q) == 0 && e.Queued() == 0 })
	if most.Load() > 4 {
		t.Fatalf("%d deliveries in flight, concurrency is 4", most.Load())
	}
}
