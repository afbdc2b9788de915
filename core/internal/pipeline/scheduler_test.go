package pipeline

import (
	"testing"
	"time"

	"github.com/mixmta/mixmta/core/internal/queue"
)

func TestPoolBatchSizeTable(t *testing.T) {
	cases := []struct {
		pool Pool
		n    int
		want int
	}{
		{Pool{SendFraction: 1}, 0, 0},
		{Pool{SendFraction: 1}, 7, 7},
		{Pool{MinPool: 5, SendFraction: 1}, 4, 0},
		{Pool{MinPool: 5, SendFraction: 1}, 9, 4},
		{Pool{SendFraction: 0.5}, 1, 1}, // ceil: a lone item is not held forever
		{Pool{SendFraction: 0.5}, 10, 5},
		{Pool{MinPool: 2, SendFraction: 0.6}, 10, 6},
		{Pool{MinPool: 8, SendFraction: 0.6}, 10, 2},
		{Pool{SendFraction: 1, MaxBatch: 3}, 10, 3},
	}
	for _, c := range cases {
		if got := c.pool.batchSize(c.n); got != c.want {
			t.Errorf("%+v with %d pooled: got %d, want %d", c.pool, c.n, got, c.want)
		}
	}
}

func items(n int, at time.Time) []*queue.Item {
	out := make([]*queue.Item, n)
	for i := range out {
		out[i] = &queue.Item{ID: queue.NewID(), SendAfter: at}
	}
	return out
}

func TestSchedulerHoldsItemsUntilSendAfter(t *testing.T) {
	s := NewScheduler(Pool{SendFraction: 1}, nil)
	now := time.Now()
	for _, it := range items(3, now.Add(time.Hour)) {
		s.Add(it)
	}
	for _, it := range items(2, now.Add(-time.Second)) {
		s.Add(it)
	}
	if got := len(s.batch(now)); got != 2 {
		t.Fatalf("released %d, want the 2 due items", got)
	}
	if got := len(s.batch(now.Add(2 * time.Hour))); got != 3 {
		t.Fatalf("released %d later, want 3", got)
	}
}

func TestSchedulerMinPoolKeepsItems(t *testing.T) {
	s := NewScheduler(Pool{MinPool: 10, SendFraction: 1}, nil)
	now := time.Now()
	for _, it := range items(12, now) {
		s.Add(it)
	}
	if got := len(s.batch(now)); got != 2 {
		t.Fatalf("released %d, want 2 (12 pooled, min pool 10)", got)
	}
	if w, p := s.Len(); w != 0 || p != 10 {
		t.Fatalf("left waiting=%d pooled=%d, want 0/10", w, p)
	}
}

// The release order must not follow arrival order: over many rounds every
// item should appear first about equally often.
func TestSchedulerShufflesBatches(t *testing.T) {
	const n, rounds = 5, 5000
	first := make([]int, n)
	for r := 0; r < rounds; r++ {
		s := NewScheduler(Pool{SendFraction: 1}, nil)
		its := items(n, time.Time{})
		for i, it := range its {
			it.Attempts = i // tag arrival order
			s.Add(it)
		}
		out := s.batch(time.Now())
		first[out[0].Attempts]++
	}
	// chi-square, 4 dof, alpha 0.001: 18.47
	exp := float64(rounds) / n
	var chi float64
	for _, c := range first {
		chi += (float64(c) - exp) * (float64(c) - exp) / exp
	}
	if chi > 18.47 {
		t.Fatalf("first position not uniform: %v (chi-square %.1f)", first, chi)
	}
}

func TestSchedulerFlushMakesEverythingDue(t *testing.T) {
	s := NewScheduler(Pool{SendFraction: 1}, nil)
	for _, it := range items(4, time.Now().Add(24*time.Hour)) {
		s.Add(it)
	}
	if n := s.Flush(); n != 4 {
		t.Fatalf("flush reported %d, want 4", n)
	}
	if got := len(s.batch(time.Now())); got != 4 {
		t.Fatalf("released %d after flush, want 4", got)
	}
}

func TestSchedulerAddIsIdempotent(t *testing.T) {
	s := NewScheduler(Pool{SendFraction: 1}, nil)
	it := items(1, time.Time{})[0]
	s.Add(it)
	s.Add(it)
	if got := len(s.batch(time.Now())); got != 1 {
		t.Fatalf("released %d, want 1", got)
	}
}
