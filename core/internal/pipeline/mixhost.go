package pipeline

import (
	"time"

	"github.com/mixmta/mixmta/core/internal/queue"
	"github.com/mixmta/mixmta/core/internal/stats"
)

// MixHost is the engine as a mix node uses it. The node stores its items
// (packets received, packets to send, exit fragments) itself, in
// transactions that also hold replay tags and message ids; the engine
// counts them, runs them on its workers (PacketHandler.Process) and waits
// them in its pool. *Engine implements it.
type MixHost interface {
	// Queue is the engine's queue, for reads (Blob), Sync and the update
	// of an item's own fields; items are added and deleted through
	// Commit or Finish, so that the engine's count stays right.
	Queue() *queue.Queue
	// Commit runs fn as one queue transaction (not synced: call
	// Queue().Sync() when the change must be durable before the caller
	// goes on). The engine's count of queued items follows the items fn
	// put and deleted. fn may run more than once (conflict retries).
	Commit(fn func(*Tx) error) error
	// Run hands a stored item to the workers now.
	Run(it *queue.Item)
	// Schedule hands an item stored as waiting (Item.Waiting) to the pool,
	// which releases it to the workers after its SendAfter, in a batch.
	Schedule(it *queue.Item)
	// Finish deletes an item whose work is done.
	Finish(it *queue.Item) error
	// Retry stores a packet item that failed temporarily as waiting for
	// the backoff schedule's next wait and puts it in the pool; false
	// (nothing stored) when the schedule's attempts are spent: the caller
	// drops it.
	Retry(it *queue.Item) (bool, error)
	// Backoff is the retry schedule.
	Backoff() Backoff
	// Pooled is the number of items in the pool now (released by the
	// next batch).
	Pooled() int
	// Counters are the node's counters (the [STATS] line, metrics).
	Counters() *stats.Counters
}

var _ MixHost = (*Engine)(nil)

// Tx is a queue transaction run through MixHost.Commit: it counts the
// items put and deleted.
type Tx struct {
	*queue.Tx
	added, removed int
	// messages: KindMessage items put less those deleted.
	messages int
}

func (t *Tx) count(it *queue.Item, d int) {
	if it.Kind == queue.KindMessage {
		t.messages += d
	}
}

// Put stores a new item whose content is one blob (nil: none).
func (t *Tx) Put(it *queue.Item, content []byte) error {
	if err := t.Tx.Put(it, content); err != nil {
		return err
	}
	t.added++
	t.count(it, 1)
	return nil
}

// Insert stores a new message item with a header and a body blob.
func (t *Tx) Insert(it *queue.Item, header, body []byte) error {
	if err := t.Tx.Insert(it, header, body); err != nil {
		return err
	}
	t.added++
	t.count(it, 1)
	return nil
}

// Delete removes an item and releases its blobs.
func (t *Tx) Delete(it *queue.Item) error {
	if err := t.Tx.Delete(it); err != nil {
		return err
	}
	t.removed++
	t.count(it, -1)
	return nil
}

// Handover replaces item old by next, which takes over old's blobs
// (queue.Tx.Handover); the count of queued items does not change.
func (t *Tx) Handover(old, next *queue.Item) error {
	if err := t.Tx.Handover(old, next); err != nil {
		return err
	}
	t.added++
	t.removed++
	t.count(next, 1)
	t.count(old, -1)
	return nil
}

// Commit implements MixHost.
func (e *Engine) Commit(fn func(*Tx) error) error {
	var t *Tx
	err := e.q.Do(func(qt *queue.Tx) error {
		t = &Tx{Tx: qt} // a retried attempt counts afresh
		return fn(t)
	})
	if err == nil {
		e.queued.Add(int64(t.added - t.removed))
		e.messages.Add(int64(t.messages))
	}
	return err
}

// Run implements MixHost.
func (e *Engine) Run(it *queue.Item) { e.enqueue(it, false) }

// Schedule implements MixHost.
func (e *Engine) Schedule(it *queue.Item) { e.sched.Add(it) }

// Finish implements MixHost.
func (e *Engine) Finish(it *queue.Item) error { return e.done(it) }

// Retry implements MixHost.
func (e *Engine) Retry(it *queue.Item) (bool, error) {
	w, ok := e.opt.Backoff.Wait(it.Attempts)
	it.Attempts++
	if !ok {
		return false, nil
	}
	it.SendAfter = time.Now().Add(w)
	it.Waiting = true
	if err := e.q.Update(it); err != nil {
		return true, err
	}
	e.sched.Add(it)
	return true, nil
}

// Pooled implements MixHost.
func (e *Engine) Pooled() int { _, p := e.sched.Len(); return p }
