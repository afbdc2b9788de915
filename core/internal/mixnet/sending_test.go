package mixnet

import (
	"testing"
	"time"

	"github.com/mixmta/mixmta/core/internal/queue"
)

// The send queue hands out the oldest packet that is due: a packet whose
// send failed waits out its backoff without holding up the others, and a
// packet queued twice (a restart re-adding it) is queued once.
func TestSendQueueIsFIFOOverDuePackets(t *testing.T) {
	q := newSendQueue()
	now := time.Now()
	a := &queue.Item{ID: queue.NewID()}
	b := &queue.Item{ID: queue.NewID(), SendAfter: now.Add(time.Minute)} // backing off
	c := &queue.Item{ID: queue.NewID()}
	for _, it := range []*queue.Item{a, b, c, a} {
		q.push(it)
	}
	if q.Len() != 3 {
		t.Fatalf("%d packets queued, want 3", q.Len())
	}
	for _, want := range []*queue.Item{a, c, nil} {
		if got := q.pop(now); got != want {
			t.Fatalf("popped %v, want %v", got, want)
		}
	}
	if got := q.pop(now.Add(2 * time.Minute)); got != b {
		t.Fatalf("the backed-off packet is not sent once due")
	}
}
