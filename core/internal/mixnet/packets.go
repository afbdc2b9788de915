package mixnet

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mixmta/mixmta/core/internal/mixnet/transport"
	"github.com/mixmta/mixmta/core/internal/pipeline"
	"github.com/mixmta/mixmta/core/internal/queue"
	"github.com/mixmta/mixmta/sdk"
)

// Receive is the transport's handler. It stores the raw packet durably
// (synced, group commit) and returns Config.AckTime after it was called,
// so the transport acknowledges it then; the packet is unwrapped
// afterwards by an engine worker. The work before the ack is the same
// whatever the packet's fate (forward, exit, drop, loop, replay,
// malformed): an ack that came sooner for a drop would tell the previous
// hop which packets were cover, and a first hop that it is first. The
// fixed ack time also hides the fate-dependent work done after the acks of
// earlier packets, which the store of this one would otherwise wait on.
// The replay check still precedes any forwarding (apply).
func (n *Node) Receive(ctx context.Context, from sdk.NodeID, packet []byte) error {
	arrived := time.Now()
	if len(packet) != n.cfg.PacketSize {
		n.Stats.Dropped.Add(1)
		return fmt.Errorf("packet of %d bytes, want %d", len(packet), n.cfg.PacketSize)
	}
	// Counted before the check, so that packets arriving together cannot
	// all pass it (flow.go).
	if others := n.pendingIn.Add(1) - 1; n.cfg.Full != nil && n.cfg.Full(others) {
		n.pendingIn.Add(-1)
		n.refuseFull(ctx, arrived)
		return fmt.Errorf("mix node: %w", transport.ErrFull)
	}
	it := &queue.Item{ID: queue.NewID(), Msg: queue.NewID(), Kind: queue.KindPacketIn, Received: time.Now(), Deliverer: -1}
	n.reserved.Store(it.ID, struct{}{})
	if err := n.stores.store(n.eng, it, packet); err != nil {
		n.unreserve(it.ID)
		return err // a queue error nacks: the sender tries again
	}
	n.Stats.Received.Add(1)
	// The transport reuses its buffer: the cache keeps a copy, in a buffer
	// that unwrap recycles.
	buf := n.packetBuf()
	copy(buf, packet)
	if !n.inbound.put(it.ID, buf) {
		n.bufs.Put(&buf)
	}
	n.eng.Run(it)
	n.waitAck(ctx, arrived)
	return nil
}

// storeBatch stores the packets of concurrent Receive calls in one queue
// transaction and one sync (group commit). One caller at a time leads: it
// commits the packets waiting, in arrival order, up to and including its
// own, then hands the lead to the oldest caller still waiting, so no
// caller's store waits on more than the packets that arrived before it.
// A failed batch fails each of its packets (each is nacked and sent
// again by its previous hop).
type storeBatch struct {
	mu      sync.Mutex
	waiting []*storeReq
	running bool
}

type storeReq struct {
	it     *queue.Item
	packet []byte
	done   chan error    // the result, once committed and synced
	lead   chan struct{} // closed: this caller leads now
}

// maxStoreBatch bounds one transaction (2 MiB of 64 KiB packets), well
// under badger's transaction size limit.
const maxStoreBatch = 32

// store puts it with packet as its content and returns once that is
// synced.
func (b *storeBatch) store(eng pipeline.MixHost, it *queue.Item, packet []byte) error {
	r := &storeReq{it: it, packet: packet, done: make(chan error, 1), lead: make(chan struct{})}
	b.mu.Lock()
	b.waiting = append(b.waiting, r)
	if b.running {
		b.mu.Unlock()
		select {
		case err := <-r.done:
			return err
		case <-r.lead:
		}
		b.mu.Lock()
	}
	b.running = true
	mine := false
	for !mine {
		batch := b.waiting[:min(len(b.waiting), maxStoreBatch)]
		b.waiting = b.waiting[len(batch):]
		mine = slices.Contains(batch, r)
		b.mu.Unlock()
		err := eng.Commit(func(tx *pipeline.Tx) error {
			for _, r := range batch {
				if err := tx.Put(r.it, r.packet); err != nil {
					return err
				}
			}
			return nil
		})
		if err == nil {
			err = eng.Queue().Sync()
		}
		for _, r := range batch {
			r.done <- err
		}
		b.mu.Lock()
	}
	if len(b.waiting) > 0 {
		close(b.waiting[0].lead)
	} else {
		b.running = false
	}
	b.mu.Unlock()
	return <-r.done
}

// waitAck returns Config.AckTime after arrived (at once if that has
// passed: counted as late).
func (n *Node) waitAck(ctx context.Context, arrived time.Time) {
	if n.cfg.AckTime < 0 {
		return
	}
	wait := n.cfg.AckTime - time.Since(arrived)
	if wait <= 0 {
		n.Stats.LateAcks.Add(1)
		return
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}

// maxCached bounds each packetCache (32 MiB of 64 KiB packets): a backlog
// beyond it costs a queue read per packet (and a forward packet another
// unwrap by the mixer), not memory.
const maxCached = 512

// packetCache keeps copies of stored packets by item id, so that the
// common path does not read back from the queue what it has just written.
// The queue stays the truth: a packet not cached (evicted by the bound, or
// stored before a restart) is read back.
type packetCache struct {
	m sync.Map // queue.ID -> []byte
	n atomic.Int64
	// limit, if set, replaces maxCached (tests: a full cache).
	limit atomic.Int64
}

// put caches p under id, unless maxCached packets are cached already
// (false).
func (c *packetCache) put(id queue.ID, p []byte) bool {
	limit := int64(maxCached)
	if l := c.limit.Load(); l != 0 {
		limit = l
	}
	if c.n.Add(1) > limit {
		c.n.Add(-1)
		return false
	}
	c.m.Store(id, p)
	return true
}

// packetBuf returns a buffer of PacketSize bytes (recycled from n.bufs when
// one is there): a received packet is copied into it, and unwrap gives it
// back once the mixer has returned, so the steady state allocates and
// clears no 64 KiB per packet.
func (n *Node) packetBuf() []byte {
	if p, ok := n.bufs.Get().(*[]byte); ok && len(*p) == n.cfg.PacketSize {
		return *p
	}
	return make([]byte, n.cfg.PacketSize)
}

// take removes and returns the packet cached under id.
func (c *packetCache) take(id queue.ID) ([]byte, bool) {
	if p, ok := c.m.LoadAndDelete(id); ok {
		c.n.Add(-1)
		return p.([]byte), true
	}
	return nil, false
}

// delayBatch hands out hop delays drawn from the delay stage in batches of
// hopDelayBatch, one stage call per batch instead of one per packet. The
// samples are independent and identically distributed, so drawing them
// ahead changes no packet's delay distribution.
type delayBatch struct {
	mu  sync.Mutex
	buf []time.Duration
}

const hopDelayBatch = 64

// hopDelay returns the next hop delay for a packet of size bytes.
func (n *Node) hopDelay(ctx context.Context, size int) (time.Duration, error) {
	b := &n.hopDelays
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.buf) == 0 {
		ds, err := n.delay.Delay(ctx, sdk.DelayRequest{Size: int64(size), Count: hopDelayBatch})
		if err != nil {
			return 0, err
		}
		if len(ds) != hopDelayBatch {
			return 0, fmt.Errorf("hop delay stage returned %d delays, want %d", len(ds), hopDelayBatch)
		}
		b.buf = ds
	}
	d := b.buf[0]
	b.buf = b.buf[1:]
	return d, nil
}

func (n *Node) dropped(err error) {
	n.Stats.Dropped.Add(1)
	n.eng.Counters().Dropped.Add(1)
	n.log.Info("[MIX] packet dropped", "reason", sdk.AsError(err).Message)
}

func epochKey(epoch uint64, tag [32]byte) []byte {
	k := binary.BigEndian.AppendUint64(nil, epoch)
	return append(k, tag[:]...)
}

// tagTTL is how long a replay tag of epoch e must be kept: as long as the
// key of e accepts packets, that is until the Not-After in its file (plus
// a minute for clock steps). It is not computed from the configured epoch
// length: after the operator changes it, keys made under the old length
// still serve packets until their own end, and a tag that expired sooner
// would let a replay through. A key already gone (deleted between the
// unwrap and now) can unwrap nothing more: a minute is enough.
func (n *Node) tagTTL(epoch uint64) time.Duration {
	end, ok := n.keys.NotAfter(epoch)
	if !ok {
		return time.Minute
	}
	return max(time.Until(end), 0) + time.Minute
}

// unwrap runs the mixer on a packet stored by Receive and applies the
// result.
func (n *Node) unwrap(ctx context.Context, it *queue.Item) error {
	defer n.unreserve(it.ID)
	packet, cached := n.inbound.take(it.ID)
	if !cached {
		var err error
		if packet, err = n.eng.Queue().Blob(it.Body); err != nil {
			return err
		}
	}
	res, err := n.mixer.Mix(ctx, packet)
	if cached {
		n.bufs.Put(&packet) // Mixer.Mix keeps no reference to it
	}
	if err != nil {
		if sdk.IsPermanent(err) {
			n.dropped(err)
			return n.finish(it)
		}
		return n.retry(it)
	}
	done, err := n.apply(ctx, it, res)
	if err == nil && !done {
		return n.retry(it)
	}
	return err
}

// apply turns a mix result, in one queue transaction with its replay tag
// that also deletes the stored packet in, into a forward item, a fragment,
// or nothing (drop, loop back, replay). A forward packet whose forward
// form fits in memory (n.outbound, until sent) is stored once: its forward
// item takes over the packet as received (Item.AsReceived; the
// transaction writes only small records), and only after a restart does
// the mixer derive the forward form again (forwardForm). One that does not
// fit (a pool longer than maxCached packets: long hop delays, a backlog)
// is stored in its forward form, sealed, so that sending it costs a queue
// read, not another unwrap. The transaction is synced before a
// forward item reaches the scheduler or a fragment can complete a message,
// so nothing leaves before its replay tag is on disk (a crash cannot make
// it leave twice). A drop, loop or replay is synced too, though nothing
// leaves: every packet then costs one sync after its ack, whatever its
// fate, and the group commit that the next packets' acks wait for does not
// tell the previous hop whether this one was a drop. done is false when
// the hop delay cannot be sampled now: nothing was changed.
func (n *Node) apply(ctx context.Context, in *queue.Item, res *sdk.MixResult) (done bool, err error) {
	q := n.eng.Queue()
	var out *queue.Item
	var outData []byte
	switch res.Action {
	case sdk.MixForward:
		if len(res.Packet) != n.cfg.PacketSize {
			n.dropped(sdk.Permanent(554, "6.0", "mixer returned a packet of %d bytes", len(res.Packet)))
			return true, n.finish(in)
		}
		d, err := n.hopDelay(ctx, len(res.Packet))
		if err != nil {
			return false, nil
		}
		out = &queue.Item{ID: queue.NewID(), Msg: queue.NewID(), Kind: queue.KindPacketOut, NextHop: res.NextHop,
			Received: in.Received, SendAfter: time.Now().Add(d), Waiting: true, Deliverer: -1}
		outData = res.Packet
		// Cached now, under an id no item has yet: only send takes it,
		// after the commit below scheduled the item.
		out.AsReceived = n.outbound.put(out.ID, outData)
	case sdk.MixExit:
		if f := res.Fragment; f != nil {
			if f.Count < 1 || f.Index < 0 || f.Index >= f.Count {
				n.dropped(sdk.Permanent(554, "6.0", "fragment %d of %d", f.Index, f.Count))
				return true, n.finish(in)
			}
			out = &queue.Item{ID: queue.NewID(), Msg: queue.ID(f.MessageID), Kind: queue.KindFragment,
				FragIndex: f.Index, FragCount: f.Count, Received: time.Now(), Deliverer: -1}
			outData = f.Data
		}
	}
	replay := false
	err = n.eng.Commit(func(tx *pipeline.Tx) error {
		seen, err := tx.Mark(epochKey(res.Epoch, res.ReplayTag), n.tagTTL(res.Epoch))
		if err != nil {
			return err
		}
		replay = seen
		switch {
		case seen || out == nil:
		case out.AsReceived:
			return tx.Handover(in, out)
		default:
			if err := tx.Put(out, outData); err != nil {
				return err
			}
		}
		return tx.Delete(in)
	})
	if err == nil {
		err = q.Sync()
	}
	if out != nil && out.AsReceived && (err != nil || replay) {
		n.outbound.take(out.ID) // never sent
	}
	if err != nil {
		return true, err
	}
	switch {
	case replay:
		n.Stats.Replays.Add(1)
		n.eng.Counters().Dropped.Add(1)
		n.log.Info("[MIX] replayed packet dropped", "epoch", res.Epoch)
	case res.Action == sdk.MixForward:
		n.Stats.Forwarded.Add(1)
		n.eng.Schedule(out)
	case res.Action == sdk.MixDrop:
		n.Stats.CoverDropped.Add(1)
	case res.LoopID != ([16]byte{}):
		n.loopBack(res.LoopID)
	case out != nil:
		n.Stats.Exited.Add(1)
		n.addFragment(ctx, out)
	}
	return true, nil
}

func (n *Node) finish(it *queue.Item) error { return n.eng.Finish(it) }

func (n *Node) retry(it *queue.Item) error {
	ok, err := n.eng.Retry(it)
	if err == nil && !ok {
		n.Stats.Dropped.Add(1)
		n.outbound.take(it.ID) // a failed send put it back
		return n.eng.Finish(it)
	}
	return err
}

// send hands a released packet to the transport. A packet that was not
// released by the scheduler is one of this node's own (the router made it;
// forwards, loops and retries always wait in the pool first): it joins the
// send queue and leaves at a tick of the sending schedule.
func (n *Node) send(ctx context.Context, it *queue.Item, released bool) error {
	if !released {
		n.sendq.push(it)
		return nil
	}
	packet, mixErr, err := n.forwardForm(ctx, it)
	switch {
	case err != nil:
		return err
	case mixErr != nil && sdk.IsPermanent(mixErr):
		n.dropped(mixErr)
		return n.finish(it)
	case mixErr != nil:
		return n.retry(it)
	}
	if n.health.isFull(it.NextHop) {
		// Behind the packets parked for it (flow.go).
		n.health.stillFull(it.NextHop)
		n.outbound.put(it.ID, packet)
		n.deferFull(it)
		return nil
	}
	if err := n.links.Send(ctx, it.NextHop, packet); err != nil {
		n.outbound.put(it.ID, packet) // the retry need not derive it again
		if errors.Is(err, transport.ErrFull) {
			n.health.sawFull(it.NextHop)
			n.deferFull(it)
			return nil
		}
		n.log.Info("[MIX] send failed, will retry", "next", it.NextHop.Short(), "attempt", it.Attempts+1)
		n.health.fail(it.NextHop)
		return n.retry(it)
	}
	n.tookPacket(it.NextHop)
	return n.eng.Finish(it)
}

// forwardForm returns the packet to send for item it: from memory, else
// its stored body, which for an item stored as received (Item.AsReceived)
// is unwrapped again. The unwrap is deterministic (the same epoch key
// gives the same next hop and packet); its replay tag was marked when the
// item was stored and is not checked again. mixErr is the unwrap's error
// (permanent when the epoch key is gone or the result is not this
// forward: the item is dropped), err a queue error.
func (n *Node) forwardForm(ctx context.Context, it *queue.Item) (p []byte, mixErr, err error) {
	if p, ok := n.outbound.take(it.ID); ok {
		return p, nil, nil
	}
	if p, err = n.eng.Queue().Blob(it.Body); err != nil || !it.AsReceived {
		return p, nil, err
	}
	res, err := n.mixer.Mix(ctx, p)
	if err != nil {
		return nil, err, nil
	}
	if res.Action != sdk.MixForward || res.NextHop != it.NextHop || len(res.Packet) != n.cfg.PacketSize {
		return nil, sdk.Permanent(554, "6.0", "stored packet no longer unwraps to its forward form"), nil
	}
	return res.Packet, nil, nil
}
