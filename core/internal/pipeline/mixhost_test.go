package pipeline

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/mixmta/mixmta/core/internal/queue"
	"github.com/mixmta/mixmta/sdk"
)

// TestCommitCountsWhatItPutAndDeleted: the engine's queued count follows
// a MixHost.Commit (three items put, then one deleted with a message
// inserted, then a failed transaction that changes nothing) and Finish,
// with no count kept by the caller.
func TestCommitCountsWhatItPutAndDeleted(t *testing.T) {
	q := openQueue(t, t.TempDir())
	defer q.Close()
	e, _ := runEngine(t, q, []Stage{{Name: "deliver", Kind: sdk.KindDeliverer, Impl: &fakeStage{deliver: okAll}}}, Options{})
	var h MixHost = e
	packet := func() *queue.Item {
		return &queue.Item{ID: queue.NewID(), Msg: queue.NewID(), Kind: queue.KindPacketIn, Received: time.Now(), Deliverer: -1}
	}
	its := []*queue.Item{packet(), packet(), packet()}
	if err := h.Commit(func(tx *Tx) error {
		for _, it := range its {
			if err := tx.Put(it, []byte("packet")); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if got := e.Queued(); got != 3 {
		t.Fatalf("after 3 puts: queued %d", got)
	}
	msg := &queue.Item{ID: queue.NewID(), Received: time.Now(), Deliverer: -1, Held: true}
	msg.Msg = msg.ID
	if err := h.Commit(func(tx *Tx) error {
		if err := tx.Delete(its[0]); err != nil {
			return err
		}
		return tx.Insert(msg, []byte("Subject: x\r\n\r\n"), []byte("body\r\n"))
	}); err != nil {
		t.Fatal(err)
	}
	if got := e.Queued(); got != 3 {
		t.Fatalf("after a delete and an insert: queued %d, want 3", got)
	}
	boom := errors.New("boom")
	if err := h.Commit(func(tx *Tx) error {
		if err := tx.Delete(its[1]); err != nil {
			return err
		}
		return boom
	}); !errors.Is(err, boom) {
		t.Fatalf("failed transaction: %v", err)
	}
	if got := e.Queued(); got != 3 {
		t.Fatalf("after a failed transaction: queued %d, want 3", got)
	}
	if err := h.Finish(its[1]); err != nil {
		t.Fatal(err)
	}
	if got, n := e.Queued(), queueLen(t, q); got != 2 || n != 2 {
		t.Fatalf("after Finish: queued %d, %d items in the queue; want 2", got, n)
	}
}

// orderHandler records the order in which packet items are processed;
// the first one blocks until gate is closed.
type orderHandler struct {
	gate chan struct{}
	mu   sync.Mutex
	got  []queue.ID
}

func (h *orderHandler) Process(_ context.Context, it *queue.Item, _ bool) {
	h.mu.Lock()
	first := len(h.got) == 0
	h.got = append(h.got, it.ID)
	h.mu.Unlock()
	if first {
		<-h.gate
	}
}

func (h *orderHandler) order() []queue.ID {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.got)
}

// TestReleasedItemsGoBeforeNewWork: with a backlog of new items (packets
// waiting to be unwrapped) in front of the one worker, an item the
// scheduler releases (a packet due to leave) is processed next, not after
// the backlog: what is due leaves, and what waits in memory to leave does
// not pile up behind arrivals.
func TestReleasedItemsGoBeforeNewWork(t *testing.T) {
	q := openQueue(t, t.TempDir())
	defer q.Close()
	h := &orderHandler{gate: make(chan struct{})}
	e, err := New(q, []Stage{{Name: "deliver", Kind: sdk.KindDeliverer, Impl: &fakeStage{deliver: okAll}}},
		Options{Workers: 1, Pool: Pool{Window: 5 * time.Millisecond, SendFraction: 1}, Packets: h})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	if err := e.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer func() { cancel(); e.Wait() }()
	packet := func() *queue.Item {
		return &queue.Item{ID: queue.NewID(), Msg: queue.NewID(), Kind: queue.KindPacketIn, Received: time.Now(), Deliverer: -1}
	}
	blocker := packet()
	e.Run(blocker)
	eventually(t, "the worker busy with the first item", func() bool { return len(h.order()) == 1 })
	for range 20 {
		e.Run(packet())
	}
	due := packet()
	due.Waiting, due.SendAfter = true, time.Now()
	e.Schedule(due)
	eventually(t, "the due item released by the scheduler", func() bool { w, p := e.sched.Len(); return w+p == 0 })
	close(h.gate)
	eventually(t, "every item processed", func() bool { return len(h.order()) == 22 })
	if got := h.order(); got[1] != due.ID {
		t.Fatalf("the released item was processed at position %d of 22, want 1 (right after the item in progress)", slices.Index(got, due.ID))
	}
}
