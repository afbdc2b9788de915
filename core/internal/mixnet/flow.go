package mixnet

import (
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/mixmta/mixmta/core/internal/queue"
	"github.com/mixmta/mixmta/sdk"
)

// Flow control (docs/mixnet.md, "Flow control"): a node that is full
// (Config.Full) refuses every packet with the transport's full word. For
// the sender that is no failure of the next hop: the packet is kept and
// sent again after a wait that grows while the next hop stays full, no
// attempt of the retry schedule is spent, the next hop's health is not
// touched, and a loop that did not come back through a node seen full
// is not held against its path.

var (
	// fullWaitMin and fullWaitMax bound the wait before a packet refused
	// as full is sent again: fullWaitMin doubled for every refusal in a
	// row by that next hop, up to fullWaitMax, times a jitter of
	// 0.5-1.5 so that the packets held for one node do not all come back
	// at once.
	fullWaitMin = 500 * time.Millisecond
	fullWaitMax = 30 * time.Second
)

// deferFull puts a packet item its next hop refused as full back in the
// pool, due after the wait for that next hop, without spending an
// attempt.
func (n *Node) deferFull(it *queue.Item) error {
	n.Stats.DeferredFull.Add(1)
	it.SendAfter = time.Now().Add(n.health.sawFull(it.NextHop))
	it.Waiting = true
	if err := n.eng.Queue().Update(it); err != nil {
		return err
	}
	n.eng.Schedule(it)
	return nil
}

// sawFull records that id refused a packet as full and returns how long
// to wait before sending to it again.
func (h *health) sawFull(id sdk.NodeID) time.Duration {
	h.mu.Lock()
	nh := h.get(id)
	nh.lastFull = time.Now()
	d := min(fullWaitMin<<min(nh.fullStreak, 16), fullWaitMax)
	nh.fullStreak++
	h.mu.Unlock()
	return time.Duration(float64(d) * (0.5 + rand.Float64()))
}

// probedFull records that a probe found id full.
func (h *health) probedFull(id sdk.NodeID) {
	h.mu.Lock()
	h.get(id).lastFull = time.Now()
	h.mu.Unlock()
}

// notFull records that id took a packet: the next refusal waits the least
// again.
func (h *health) notFull(id sdk.NodeID) {
	h.mu.Lock()
	h.get(id).fullStreak = 0
	h.mu.Unlock()
}

// fullSince reports whether any node of path was seen full at or after t.
func (h *health) fullSince(path []sdk.NodeID, t time.Time) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, id := range path {
		if nh := h.nodes[id]; nh != nil && !nh.lastFull.Before(t) {
			return true
		}
	}
	return false
}

// flowStats are the flow control fields of the [STATS] line: packets
// refused as full, sends deferred for a full next hop, loops excused.
func (n *Node) flowStats() string {
	s := &n.Stats
	return fmt.Sprintf(" full_refused=%d full_deferred=%d loops_excused=%d", s.RefusedFull.Load(), s.DeferredFull.Load(), s.LoopsExcused.Load())
}
