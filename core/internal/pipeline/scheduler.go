package pipeline

import (
	"container/heap"
	"context"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mixmta/mixmta/core/internal/queue"
)

// Pool configures the scheduler's timed dynamic pool (Mixmaster's pool, as
// fog and pluto2 batch): once per Window, every item whose send_after has
// passed joins the pool; if the pool holds more than MinPool items,
// k = min(n-MinPool, ceil(n*SendFraction), MaxBatch) of them, chosen
// uniformly at random (crypto/rand), leave together; the rest stay for the
// next window. Items therefore leave in shuffled batches, never in arrival
// order.
type Pool struct {
	Window       time.Duration
	MinPool      int
	SendFraction float64
	// MaxBatch caps k (0 = no cap).
	MaxBatch int
}

// batchSize returns how many of n pooled items leave this window.
func (p Pool) batchSize(n int) int {
	k := n - p.MinPool
	if k <= 0 {
		return 0
	}
	if p.SendFraction > 0 && p.SendFraction < 1 {
		k = min(k, int(math.Ceil(float64(n)*p.SendFraction)))
	}
	if p.MaxBatch > 0 {
		k = min(k, p.MaxBatch)
	}
	return k
}

// Scheduler holds items that wait for their send_after and releases them in
// pool batches. It keeps only an in-memory index: the queue is the truth,
// and the engine re-adds waiting items at start.
type Scheduler struct {
	pool    Pool
	release func(*queue.Item)

	mu      sync.Mutex
	waiting waitHeap          // send_after in the future
	pooled  []*queue.Item     // due, not yet released
	members map[queue.ID]bool // every item held, to drop duplicates
	flushed map[queue.ID]bool // flush requested: due now
	wake    chan struct{}
	// released counts items released since start.
	released atomic.Int64
}

// Released returns the number of items released since start.
func (s *Scheduler) Released() int64 { return s.released.Load() }

// NewScheduler returns a scheduler that calls release (from its own
// goroutine) for each item of a batch.
func NewScheduler(p Pool, release func(*queue.Item)) *Scheduler {
	if p.Window <= 0 {
		p.Window = time.Second
	}
	return &Scheduler{pool: p, release: release, members: map[queue.ID]bool{}, flushed: map[queue.ID]bool{}, wake: make(chan struct{}, 1)}
}

// Add puts an item under the scheduler's control. Adding an item it
// already holds is a no-op.
func (s *Scheduler) Add(it *queue.Item) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.members[it.ID] {
		return
	}
	s.members[it.ID] = true
	heap.Push(&s.waiting, it)
}

// Len returns (waiting for send_after, due in the pool).
func (s *Scheduler) Len() (waiting, pooled int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.waiting.Len(), len(s.pooled)
}

// Flush makes every held item due now (`mixmta queue flush`); they still
// leave through the pool.
func (s *Scheduler) Flush() int {
	s.mu.Lock()
	n := s.waiting.Len()
	for _, it := range s.waiting {
		s.flushed[it.ID] = true
	}
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
	return n
}

// ReleaseAll releases every held item now, past the pool (`mixmta queue
// flush`): the operator's override, which gives up the mixing of those
// items. It returns how many it released.
func (s *Scheduler) ReleaseAll() int {
	s.mu.Lock()
	out := append([]*queue.Item(nil), s.pooled...)
	out = append(out, s.waiting...)
	s.pooled, s.waiting = nil, nil
	clear(s.flushed)
	clear(s.members)
	s.mu.Unlock()
	s.released.Add(int64(len(out)))
	for _, it := range out {
		s.release(it)
	}
	return len(out)
}

// Remove drops an item (e.g. `mixmta queue delete`); false if not held or
// already released.
func (s *Scheduler) Remove(id queue.ID) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.members[id] {
		return false
	}
	for i, it := range s.waiting {
		if it.ID == id {
			heap.Remove(&s.waiting, i)
			delete(s.members, id)
			return true
		}
	}
	for i, it := range s.pooled {
		if it.ID == id {
			s.pooled = append(s.pooled[:i], s.pooled[i+1:]...)
			delete(s.members, id)
			return true
		}
	}
	return false
}

// Run releases batches once per window until ctx ends.
func (s *Scheduler) Run(ctx context.Context) {
	t := time.NewTicker(s.pool.Window)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-s.wake:
		}
		b := s.batch(time.Now())
		s.released.Add(int64(len(b)))
		for _, it := range b {
			s.release(it)
		}
	}
}

// batch moves due items into the pool and takes this window's batch.
func (s *Scheduler) batch(now time.Time) []*queue.Item {
	s.mu.Lock()
	defer s.mu.Unlock()
	for s.waiting.Len() > 0 {
		it := s.waiting[0]
		if it.SendAfter.After(now) && !s.flushed[it.ID] {
			break
		}
		heap.Pop(&s.waiting)
		delete(s.flushed, it.ID)
		s.pooled = append(s.pooled, it)
	}
	if len(s.flushed) > 0 {
		// flushed items not at the heap top: pull them too
		for i := 0; i < s.waiting.Len(); {
			it := s.waiting[i]
			if s.flushed[it.ID] {
				heap.Remove(&s.waiting, i)
				delete(s.flushed, it.ID)
				s.pooled = append(s.pooled, it)
				continue
			}
			i++
		}
	}
	k := s.pool.batchSize(len(s.pooled))
	if k == 0 {
		return nil
	}
	// Partial Fisher-Yates with crypto randomness: the first k are a
	// uniform random sample in random order.
	for i := 0; i < k; i++ {
		j := i + cryptoIntn(len(s.pooled)-i)
		s.pooled[i], s.pooled[j] = s.pooled[j], s.pooled[i]
	}
	out := make([]*queue.Item, k)
	copy(out, s.pooled[:k])
	s.pooled = append(s.pooled[:0], s.pooled[k:]...)
	for _, it := range out {
		delete(s.members, it.ID)
	}
	return out
}

type waitHeap []*queue.Item

func (h waitHeap) Len() int           { return len(h) }
func (h waitHeap) Less(i, j int) bool { return h[i].SendAfter.Before(h[j].SendAfter) }
func (h waitHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *waitHeap) Push(x any)        { *h = append(*h, x.(*queue.Item)) }
func (h *waitHeap) Pop() any {
	old := *h
	it := old[len(old)-1]
	*h = old[:len(old)-1]
	return it
}
