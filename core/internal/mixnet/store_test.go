package mixnet

import (
	"bytes"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mixmta/mixmta/core/internal/pipeline"
	"github.com/mixmta/mixmta/core/internal/queue"
)

// commitHost is the part of pipeline.MixHost that storeBatch uses, over a
// real queue, counting transactions.
type commitHost struct {
	pipeline.MixHost
	q       *queue.Queue
	commits atomic.Int64
}

func (h *commitHost) Queue() *queue.Queue { return h.q }

func (h *commitHost) Commit(fn func(*pipeline.Tx) error) error {
	h.commits.Add(1)
	time.Sleep(time.Millisecond) // a transaction takes a while: others queue up
	return h.q.Do(func(tx *queue.Tx) error { return fn(&pipeline.Tx{Tx: tx}) })
}

// TestStoreBatchGroupsConcurrentPacketsDurably: 200 packets stored at once
// by 200 callers all return, in fewer transactions than packets, and every
// one is in the queue with its content after the queue is closed and
// opened again.
func TestStoreBatchGroupsConcurrentPacketsDurably(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "queue")
	q, err := queue.Open(dir, queue.Options{})
	if err != nil {
		t.Fatal(err)
	}
	h := &commitHost{q: q}
	var b storeBatch
	const n = 200
	ids := make([]queue.ID, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			it := &queue.Item{ID: queue.NewID(), Msg: queue.NewID(), Kind: queue.KindPacketIn, Received: time.Now(), Deliverer: -1}
			ids[i] = it.ID
			if err := b.store(h, it, bytes.Repeat([]byte{byte(i)}, 4096)); err != nil {
				t.Errorf("store %d: %v", i, err)
			}
		}()
	}
	wg.Wait()
	if c := h.commits.Load(); c >= n || c < (n+maxStoreBatch-1)/maxStoreBatch {
		t.Errorf("%d packets in %d transactions; want fewer than one each, at most %d per transaction", n, c, maxStoreBatch)
	}
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
	q, err = queue.Open(dir, queue.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	for i, id := range ids {
		it, err := q.Get(id)
		if err != nil {
			t.Fatalf("packet %d: %v", i, err)
		}
		data, err := q.Blob(it.Body)
		if err != nil || !bytes.Equal(data, bytes.Repeat([]byte{byte(i)}, 4096)) {
			t.Fatalf("packet %d: content %d bytes, %v", i, len(data), err)
		}
	}
}
