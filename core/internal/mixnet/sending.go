package mixnet

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/mixmta/mixmta/core/internal/mixnet/transport"
	"github.com/mixmta/mixmta/core/internal/pipeline"
	"github.com/mixmta/mixmta/core/internal/queue"
	"github.com/mixmta/mixmta/sdk"
)

// The sending discipline of Loopix (Piotrowska et al. 2017, §4.2): the
// packets this node makes itself (the fragments of its users' messages)
// never leave when they are made. They wait in the send queue, and a
// Poisson process of rate λ_P (Config.SendRate) ticks; at each tick the
// oldest queued packet leaves, or, when none is queued, a drop cover packet
// does. So the node emits one packet per tick whatever its users send: an
// observer of its links sees the same Poisson process with no mail, with a
// trickle and with 50 messages at once. Forwarded packets are not in the
// send queue (they leave after their hop delay, through the pool); loop
// cover and extra drop cover (DropRate) run on their own schedules.

// sendQueue is the FIFO of this node's own packets waiting for a tick. It
// lives in memory: the items are in the queue on disk (Waiting unset), and
// a restart rebuilds it from there.
type sendQueue struct {
	mu    sync.Mutex
	items []*queue.Item
	since map[queue.ID]time.Time // when each item joined, for the wait time
	// lastWait is the time the last packet sent spent in the queue.
	lastWait time.Duration
}

func newSendQueue() *sendQueue { return &sendQueue{since: map[queue.ID]time.Time{}} }

func (s *sendQueue) push(it *queue.Item) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, dup := s.since[it.ID]; dup {
		return
	}
	s.since[it.ID] = time.Now()
	s.items = append(s.items, it)
}

// pop takes the oldest packet that is due (a packet whose send failed
// waits out its backoff in SendAfter), or nil.
func (s *sendQueue) pop(now time.Time) *queue.Item {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, it := range s.items {
		if it.SendAfter.After(now) {
			continue
		}
		s.items = append(s.items[:i], s.items[i+1:]...)
		s.lastWait = time.Since(s.since[it.ID])
		delete(s.since, it.ID)
		return it
	}
	return nil
}

// Len is the number of packets waiting.
func (s *sendQueue) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.items)
}

// oldestWait is how long the packet at the head has waited (0: empty).
func (s *sendQueue) oldestWait() time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.items) == 0 {
		return 0
	}
	return time.Since(s.since[s.items[0].ID])
}

// SendQueueLen is the number of this node's own packets waiting for a tick
// of the sending schedule.
func (n *Node) SendQueueLen() int { return n.sendq.Len() }

// SendQueueWait is how long the oldest packet in the send queue has
// waited, and how long the last packet sent had waited.
func (n *Node) SendQueueWait() (oldest, last time.Duration) {
	n.sendq.mu.Lock()
	last = n.sendq.lastWait
	n.sendq.mu.Unlock()
	return n.sendq.oldestWait(), last
}

// SendQueueFull reports whether the send queue holds SendQueueLimit
// packets or more: new mail is refused with this temporary error (SMTP 452
// 4.3.1), so no packet waits longer than its epoch key lives.
func (n *Node) SendQueueFull() error {
	if l := n.sendq.Len(); l >= n.cfg.SendQueueLimit {
		return sdk.Temporary(452, "3.1", "mixnet send queue full (%d packets), try again later", l)
	}
	return nil
}

// Backlogged implements pipeline.Backlog: a message waits before the
// router while the send queue is full or while too few healthy nodes are
// known for a full path (it is held, never sent on a shorter one).
func (n *Node) Backlogged() error {
	if err := n.SendQueueFull(); err != nil {
		return err
	}
	if !n.PathsAvailable() {
		return sdk.Temporary(451, "4.0", "too few healthy mix nodes for a full path")
	}
	return nil
}

// sendLoop is the Poisson process of rate λ_P: at each tick it sends the
// oldest own packet, or a drop cover packet. Sends run in their own
// goroutines so that a slow ack never shifts the next tick.
func (n *Node) sendLoop(ctx context.Context) {
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		wait := time.Duration(expSample(1/n.cfg.SendRate) * float64(time.Second))
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		it := n.sendq.pop(time.Now())
		wg.Add(1)
		go func() {
			defer wg.Done()
			if it == nil {
				n.sendDropTick(ctx)
				return
			}
			n.sendOwn(ctx, it)
		}()
	}
}

// sendOwn sends one of this node's packets at its tick. A failed send
// puts it back in the send queue, due after the backoff schedule's wait
// (it leaves at a later tick, never outside the schedule), until the
// schedule's attempts are spent.
func (n *Node) sendOwn(ctx context.Context, it *queue.Item) {
	packet, err := n.eng.Queue().Blob(it.Body)
	if err == nil {
		err = n.links.Send(ctx, it.NextHop, packet)
		if err == nil {
			n.tookPacket(it.NextHop)
			n.Stats.OwnSent.Add(1)
			if err := n.eng.Finish(it); err != nil {
				n.log.Error("[MIX] cannot delete a sent packet", "item", it.ID.String(), "error", err)
			}
			return
		}
		if !errors.Is(err, transport.ErrFull) {
			n.health.fail(it.NextHop)
		}
	}
	if ctx.Err() != nil {
		return // it resumes from the queue at the next start
	}
	if errors.Is(err, transport.ErrFull) {
		// Flow control, no failure (flow.go): no attempt spent; a later
		// tick.
		n.Stats.DeferredFull.Add(1)
		it.SendAfter = time.Now().Add(n.health.sawFull(it.NextHop))
		if err := n.eng.Queue().Update(it); err != nil {
			n.log.Error("[MIX] cannot requeue a packet; it resumes at restart", "item", it.ID.String(), "error", err)
			return
		}
		n.sendq.push(it)
		return
	}
	wait, ok := n.eng.Backoff().Wait(it.Attempts)
	it.Attempts++
	if !ok {
		n.log.Warn("[MIX] own packet dropped after repeated send failures", "attempts", it.Attempts)
		n.Stats.Dropped.Add(1)
		n.eng.Counters().Dropped.Add(1)
		_ = n.eng.Finish(it)
		return
	}
	n.log.Info("[MIX] send failed, will retry", "next", it.NextHop.Short(), "attempt", it.Attempts, "retry_in", wait.Round(time.Second))
	it.SendAfter = time.Now().Add(wait)
	if err := n.eng.Queue().Update(it); err != nil {
		n.log.Error("[MIX] cannot requeue a packet; it resumes at restart", "item", it.ID.String(), "error", err)
		return
	}
	n.sendq.push(it)
}

// sendDropTick fills an empty tick with a drop cover packet. It is not
// stored: a drop lost in a crash carries nothing.
func (n *Node) sendDropTick(ctx context.Context) {
	p, err := n.mixer.Cover(ctx, sdk.CoverDrop)
	if err != nil {
		n.Stats.TicksMissed.Add(1)
		n.log.Debug("[MIX] no drop packet for an empty tick", "error", err)
		return
	}
	n.learnPathLen(p)
	if err := n.links.Send(ctx, p.NextHop, p.Data); err != nil {
		n.Stats.TicksMissed.Add(1)
		if !errors.Is(err, transport.ErrFull) {
			n.health.fail(p.NextHop)
			return
		}
		// Kept and sent again at a later tick like an own packet: were
		// only own packets to come back, the full next hop would tell
		// them from this node's drops.
		it := &queue.Item{ID: queue.NewID(), Msg: queue.NewID(), Kind: queue.KindPacketOut, NextHop: p.NextHop,
			Received: time.Now(), SendAfter: time.Now().Add(n.health.sawFull(p.NextHop)), Deliverer: -1}
		if err := n.eng.Commit(func(tx *pipeline.Tx) error { return tx.Put(it, p.Data) }); err != nil {
			n.log.Debug("[MIX] drop packet refused as full not kept", "error", err)
			return
		}
		n.Stats.DeferredFull.Add(1)
		n.sendq.push(it)
		return
	}
	n.tookPacket(p.NextHop)
	n.Stats.TickDrops.Add(1)
}
