package mixnet

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/mixmta/mixmta/core/internal/queue"
	"github.com/mixmta/mixmta/sdk"
)

// Flow control (docs/mixnet.md, "Flow control"): a node that is full
// (Config.Full) refuses every packet with the transport's full word. For
// the sender that is no failure of the next hop: no attempt of the retry
// schedule is spent, the next hop's health is not touched, and a loop that
// did not come back through a node seen full is not held against its
// path. A packet of the pool refused as full is parked, with the packets
// for the same next hop that come after it, and released a few at a time
// when the next hop has room again: a probe finds it not full, or it
// takes a packet (each packet it takes releases two more), or, failing
// both, after fullWaitMax. So a full node is not sent every held packet
// again and again.

var (
	// fullWaitMin and fullWaitMax bound the wait before an own packet
	// refused as full is sent again (at a later tick): fullWaitMin
	// doubled for every refusal in a row by that next hop, up to
	// fullWaitMax, times a jitter of 0.5-1.5. fullWaitMax is also how long
	// packets stay parked for a next hop that neither probes nor sends
	// show to have room.
	fullWaitMin = 500 * time.Millisecond
	fullWaitMax = 30 * time.Second
)

const (
	// fullOffPaths: a node full without a break for this long is left
	// off paths (healthy reports false) until it takes a packet or a
	// probe finds room: one that refuses everything for good, by fault
	// or by malice, must not keep drawing packets that wait for it. A
	// full node that drains in time stays on paths.
	fullOffPaths = 5 * time.Minute
	// fullBurst packets are released at once when a next hop shows room.
	fullBurst = 4
	// fullRamp packets are released for each packet the next hop takes.
	fullRamp = 2
)

// parked holds the pool's packets waiting for full next hops, in order.
type parked struct {
	mu sync.Mutex
	m  map[sdk.NodeID][]parkedItem
}

type parkedItem struct {
	it    *queue.Item
	since time.Time
}

// refuseFull counts a packet refused because this node is full and waits
// out the ack time: the full word leaves when an ack would.
func (n *Node) refuseFull(ctx context.Context, arrived time.Time) {
	n.Stats.RefusedFull.Add(1)
	n.selfFull.Store(time.Now().UnixNano())
	n.waitAck(ctx, arrived)
}

// unreserve ends the count of a received packet in pendingIn once a
// worker has unwrapped it (or its store failed). Packets resumed after a
// restart were never counted.
func (n *Node) unreserve(id queue.ID) {
	if _, ok := n.reserved.LoadAndDelete(id); ok {
		n.pendingIn.Add(-1)
	}
}

// excused reports whether a loop sent at sent over path, not back in
// time, was held up by flow control: a node of its path was seen full
// since, or this node refused packets as full since (its own loops
// come back through its own listener).
func (n *Node) excused(path []sdk.NodeID, sent time.Time) bool {
	return n.selfFull.Load() >= sent.UnixNano() || n.health.fullSince(path, sent)
}

// deferFull parks a packet of the pool that its next hop refused as full,
// or that was not sent because the next hop is known to be full, without
// spending an attempt. Its stored SendAfter is not changed: after a
// restart it is sent at once.
func (n *Node) deferFull(it *queue.Item) {
	n.Stats.DeferredFull.Add(1)
	n.parked.mu.Lock()
	if n.parked.m == nil {
		n.parked.m = map[sdk.NodeID][]parkedItem{}
	}
	n.parked.m[it.NextHop] = append(n.parked.m[it.NextHop], parkedItem{it, time.Now()})
	n.parked.mu.Unlock()
}

// unpark hands up to k packets parked for id (k < 0: all) back to the
// pool, oldest first.
func (n *Node) unpark(id sdk.NodeID, k int) {
	n.parked.mu.Lock()
	q := n.parked.m[id]
	if k < 0 || k > len(q) {
		k = len(q)
	}
	out := q[:k:k]
	if k == len(q) {
		delete(n.parked.m, id)
	} else {
		n.parked.m[id] = q[k:]
	}
	n.parked.mu.Unlock()
	for _, p := range out {
		p.it.SendAfter = time.Now()
		n.eng.Schedule(p.it)
	}
}

// tookPacket records that id took a packet: it has room, and fullRamp
// more of the packets parked for it go.
func (n *Node) tookPacket(id sdk.NodeID) {
	n.health.notFull(id)
	n.unpark(id, fullRamp)
}

// unparkStale releases a burst for every next hop whose oldest parked
// packet has waited fullWaitMax (nothing showed that it has room).
func (n *Node) unparkStale(now time.Time) {
	var ids []sdk.NodeID
	n.parked.mu.Lock()
	for id, q := range n.parked.m {
		if len(q) > 0 && now.Sub(q[0].since) >= fullWaitMax {
			ids = append(ids, id)
		}
	}
	n.parked.mu.Unlock()
	for _, id := range ids {
		n.health.mayTry(id)
		n.unpark(id, fullBurst)
	}
}

// parkedFor is the number of packets parked for id.
func (n *Node) parkedFor(id sdk.NodeID) int {
	n.parked.mu.Lock()
	defer n.parked.mu.Unlock()
	return len(n.parked.m[id])
}

// Parked returns the number of packets parked for full next hops.
func (n *Node) Parked() int {
	n.parked.mu.Lock()
	defer n.parked.mu.Unlock()
	c := 0
	for _, q := range n.parked.m {
		c += len(q)
	}
	return c
}

// sawFull records that id refused a packet as full and returns how long
// to wait before sending to it again.
func (h *health) sawFull(id sdk.NodeID) time.Duration {
	h.mu.Lock()
	nh := h.get(id)
	nh.lastFull = time.Now()
	d := min(fullWaitMin<<min(nh.fullStreak, 16), fullWaitMax)
	if nh.fullFrom.IsZero() {
		nh.fullFrom = nh.lastFull
	}
	nh.fullStreak++
	h.mu.Unlock()
	return time.Duration(float64(d) * (0.5 + rand.Float64()))
}

// stillFull records that id is full now without a new refusal: a probe
// found it full, or a packet for it was parked because it is known to be
// (a loop parked so is excused like one refused).
func (h *health) stillFull(id sdk.NodeID) {
	h.mu.Lock()
	nh := h.get(id)
	nh.lastFull = time.Now()
	if nh.fullFrom.IsZero() {
		nh.fullFrom = nh.lastFull
	}
	nh.fullStreak = max(nh.fullStreak, 1)
	h.mu.Unlock()
}

// notFull records that id took a packet (or a probe found room while no
// packet waits for it): it is not full.
func (h *health) notFull(id sdk.NodeID) {
	h.mu.Lock()
	nh := h.get(id)
	nh.fullStreak, nh.fullFrom = 0, time.Time{}
	h.mu.Unlock()
}

// mayTry lets packets go to id again (a probe says it has room, or none
// showed it for fullWaitMax) without clearing its full episode: only a
// packet it takes ends that. A node whose probes claim room while it
// refuses every packet thus still leaves paths after fullOffPaths.
func (h *health) mayTry(id sdk.NodeID) {
	h.mu.Lock()
	h.get(id).fullStreak = 0
	h.mu.Unlock()
}

// isFull reports whether the last word from id was full.
func (h *health) isFull(id sdk.NodeID) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	nh := h.nodes[id]
	return nh != nil && nh.fullStreak > 0
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
// refused as full, sends deferred for a full next hop, packets parked
// now, loops excused.
func (n *Node) flowStats() string {
	s := &n.Stats
	return fmt.Sprintf(" full_refused=%d full_deferred=%d full_parked=%d loops_excused=%d", s.RefusedFull.Load(), s.DeferredFull.Load(), n.Parked(), s.LoopsExcused.Load())
}
