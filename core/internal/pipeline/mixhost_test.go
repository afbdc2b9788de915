package pipeline

import (
	"errors"
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
