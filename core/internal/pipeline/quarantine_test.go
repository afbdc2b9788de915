package pipeline

import (
	"bytes"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mixmta/mixmta/core/internal/queue"
	"github.com/mixmta/mixmta/core/internal/stats"
	"github.com/mixmta/mixmta/internal/pluginclient"
	"github.com/mixmta/mixmta/sdk"
)

func quickBackoff() Backoff {
	return Backoff{MaxAttempts: 9, Base: 5 * time.Millisecond, Factor: 1, Max: time.Second}
}

func heldItems(t *testing.T, q *queue.Queue) []*queue.Item {
	t.Helper()
	var out []*queue.Item
	if err := q.Items(func(it *queue.Item) error {
		if it.Held {
			out = append(out, it)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestCrashQuarantinesOnlyTheItemThatCausesIt: a "plugin" that crashes on
// poison items fails every call in flight at that moment, as a real crash
// does. Poison items end quarantined after 2 crashes; the normal items
// that shared a crash are retried alone and delivered, none quarantined.
func TestCrashQuarantinesOnlyTheItemThatCausesIt(t *testing.T) {
	q := openQueue(t, t.TempDir())
	defer q.Close()
	var gen atomic.Int64 // "process generation": a crash starts a new one
	crashErr := &pluginclient.TransportError{Err: errors.New("plugin exited")}
	tr := &fakeStage{transform: func(m *sdk.Message) (*sdk.Change, error) {
		g := gen.Load()
		if bytes.Contains(m.Header, []byte("Poison")) {
			gen.Add(1)
			return nil, crashErr
		}
		time.Sleep(2 * time.Millisecond) // overlap with other calls
		if gen.Load() != g {
			return nil, crashErr // died under us
		}
		return &sdk.Change{}, nil
	}}
	dl := &fakeStage{deliver: okAll}
	c := &stats.Counters{}
	e, _ := runEngine(t, q, []Stage{
		{Name: "poison", Kind: sdk.KindTransformer, Needs: sdk.NeedHeader, Impl: tr},
		{Name: "deliver", Kind: sdk.KindDeliverer, Needs: sdk.NeedAll, Impl: dl},
	}, Options{Counters: c, Backoff: quickBackoff(), Workers: 8})
	const poison, normal = 10, 40
	for i := 0; i < poison+normal; i++ {
		h := "Subject: ok\r\n\r\n"
		if i%5 == 0 {
			h = "Subject: Poison\r\n\r\n"
		}
		it, err := q.Accept(sdk.Envelope{MailFrom: "a@example.org", RcptTo: []string{"b@example.net"}}, []byte(h), []byte("x\r\n"), time.Now())
		if err != nil {
			t.Fatal(err)
		}
		e.Submit(it)
	}
	eventually(t, "normal items delivered and poison quarantined", func() bool {
		return dl.count() == normal && len(heldItems(t, q)) == poison
	})
	for _, it := range heldItems(t, q) {
		h, _ := q.Blob(it.Header)
		if !bytes.Contains(h, []byte("Poison")) {
			t.Fatalf("a normal item was quarantined: %q", it.Reason)
		}
		if it.Reason != "poison: quarantined: the plugin crashed 2 times on this item" {
			t.Fatalf("reason %q", it.Reason)
		}
	}
	if crashes := gen.Load(); crashes > 2*poison {
		t.Fatalf("%d crashes for %d poison items, want at most 2 each", crashes, poison)
	}
	if c.Quarantined.Load() != poison {
		t.Fatalf("quarantined counter %d, want %d", c.Quarantined.Load(), poison)
	}
}

// TestRepeatedStageFailureQuarantinesAndReleaseResumes: a stage that keeps
// failing an item temporarily quarantines it after 5 failures (not
// retried forever); released once the stage works, it is delivered.
func TestRepeatedStageFailureQuarantinesAndReleaseResumes(t *testing.T) {
	q := openQueue(t, t.TempDir())
	defer q.Close()
	var broken atomic.Bool
	broken.Store(true)
	var calls atomic.Int64
	tr := &fakeStage{transform: func(m *sdk.Message) (*sdk.Change, error) {
		calls.Add(1)
		if broken.Load() {
			return nil, sdk.Temporary(451, "3.0", "resolver for <x@example.net> down")
		}
		return &sdk.Change{}, nil
	}}
	dl := &fakeStage{deliver: okAll}
	e, _ := runEngine(t, q, []Stage{
		{Name: "sanitize", Kind: sdk.KindTransformer, Needs: sdk.NeedHeader, Impl: tr},
		{Name: "deliver", Kind: sdk.KindDeliverer, Needs: sdk.NeedAll, Impl: dl},
	}, Options{Backoff: quickBackoff()})
	it := accept(t, q, e, "b@example.net")
	eventually(t, "quarantine", func() bool { return len(heldItems(t, q)) == 1 })
	held := heldItems(t, q)[0]
	if want := "sanitize: quarantined: failed 5 times (451 4.3.0 resolver for <***> down)"; held.Reason != want {
		t.Fatalf("reason %q, want %q (addresses masked)", held.Reason, want)
	}
	if e.WaitsFor(held) != "sanitize" {
		t.Fatalf("WaitsFor = %q", e.WaitsFor(held))
	}
	time.Sleep(100 * time.Millisecond)
	if n := calls.Load(); n != 5 {
		t.Fatalf("%d calls, want 5: a quarantined item is not retried", n)
	}
	if err := e.HoldItem(it.ID); err != nil {
		t.Fatal(err)
	}
	broken.Store(false)
	if err := e.ReleaseItem(it.ID); err != nil {
		t.Fatal(err)
	}
	if err := e.ReleaseItem(it.ID); !errors.Is(err, ErrNotHeld) && err != nil && !errors.Is(err, queue.ErrNotFound) {
		t.Fatalf("second release: %v", err)
	}
	eventually(t, "delivery after release", func() bool { return dl.count() == 1 && queueLen(t, q) == 0 })
}

// downStage is a fakeStage whose plugin process is not running.
type downStage struct{ *fakeStage }

func (downStage) Healthy() bool { return false }

// TestStageDownIsNotCountedAgainstItems: while a stage's plugin cannot be
// started, its items are retried without counting failures: none is
// quarantined, and all are delivered once it runs again.
func TestStageDownIsNotCountedAgainstItems(t *testing.T) {
	q := openQueue(t, t.TempDir())
	defer q.Close()
	var calls atomic.Int64
	var up atomic.Bool
	tr := &fakeStage{transform: func(m *sdk.Message) (*sdk.Change, error) {
		calls.Add(1)
		if !up.Load() {
			return nil, sdk.Temporary(451, "3.0", "plugin cannot be started")
		}
		return &sdk.Change{}, nil
	}}
	dl := &fakeStage{deliver: okAll}
	e, _ := runEngine(t, q, []Stage{
		{Name: "sanitize", Kind: sdk.KindTransformer, Needs: sdk.NeedHeader, Impl: downStage{tr}},
		{Name: "deliver", Kind: sdk.KindDeliverer, Needs: sdk.NeedAll, Impl: dl},
	}, Options{Backoff: quickBackoff()})
	accept(t, q, e, "b@example.net")
	eventually(t, "20 failed calls", func() bool { return calls.Load() >= 20 })
	if h := heldItems(t, q); len(h) != 0 {
		t.Fatalf("an item was quarantined while its stage was down: %q", h[0].Reason)
	}
	up.Store(true)
	eventually(t, "delivery once the stage is up", func() bool { return dl.count() == 1 })
}
