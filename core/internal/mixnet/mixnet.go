// Package mixnet is the core's side of a Sphinx mix node (docs/mixnet.md):
// packets received on the mix transport are queued durably before they are
// acknowledged, unwrapped by the mixer stage, checked against the replay
// tags of their epoch key, delayed by the hop delay stage, and released
// through the scheduler's pool to the next hop; exit fragments are kept in
// the queue until their message is complete and then re-enter the pipeline
// after the router stage. It sends this node's own packets on a Poisson
// schedule with drop packets in empty ticks (sending.go), keeps node
// health (link probes, loops with timeouts derived from the delays; mail
// held while no full path exists; health.go), sends loop and drop cover
// at Poisson rates, feeds a starving pool with dummies, and pushes keys
// and directory to the mixer at every epoch change.
package mixnet

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/mixmta/mixmta/core/internal/pipeline"
	"github.com/mixmta/mixmta/core/internal/queue"
	"github.com/mixmta/mixmta/sdk"
)

// Mixer is the mixer stage (a *pluginhost.Stage).
type Mixer interface {
	SetMixState(ctx context.Context, st sdk.MixState) error
	Mix(ctx context.Context, packet []byte) (*sdk.MixResult, error)
	Cover(ctx context.Context, k sdk.CoverKind) (*sdk.Packet, error)
	Assemble(ctx context.Context, data []byte) (*sdk.Message, error)
}

// Delayer samples hop delays (a *pluginhost.Stage).
type Delayer interface {
	Delay(ctx context.Context, req sdk.DelayRequest) ([]time.Duration, error)
}

// Keys is this node's key store.
type Keys interface {
	// Ensure creates missing keys and deletes expired ones.
	Ensure(now time.Time) error
	// Keys returns this node's valid epoch keys (public halves).
	Keys(now time.Time) []sdk.EpochKey
	// Dir is the key directory, where the mixer reads the private halves.
	Dir() string
	// NotAfter is when the key of epoch e stops serving packets (its
	// file's Not-After), and whether that key exists.
	NotAfter(e uint64) (time.Time, bool)
}

// Directory is the verified nodes file.
type Directory interface {
	// Nodes returns every node (Healthy unset).
	Nodes() []sdk.DirectoryNode
}

// Links sends packets to other nodes.
type Links interface {
	// Send delivers one packet to node id and returns after its ack.
	Send(ctx context.Context, id sdk.NodeID, packet []byte) error
	// Probe checks that node id answers (a TLS handshake).
	Probe(ctx context.Context, id sdk.NodeID) error
}

// Config tunes a Node. Zero values take the defaults in brackets.
type Config struct {
	// PacketSize in bytes (65536).
	PacketSize int
	// EpochLength (1 h) and Grace (10 min) of the keys created now. A key
	// serves packets until the Not-After written in its file, and its
	// replay tags live as long, whatever these say later.
	EpochLength, Grace time.Duration
	// ProbeInterval between link probes of every node (30 s).
	ProbeInterval time.Duration
	// LoopTimeout: a loop not back by then counts against its path. 0
	// (default): derived per path length from the hop delay stage
	// (health.go: the 99.9 % quantile of the loop's total delay).
	LoopTimeout time.Duration
	// PoolWindow and MinPool are the scheduler's pool settings: the loop
	// timeout allows for pool waits, and with MinPool > 0 the pool is fed
	// dummy drop packets so that it never starves (health.go).
	PoolWindow time.Duration
	MinPool    int
	// DropRate and LoopRate: cover packets per second, Poisson (0: none).
	DropRate, LoopRate float64
	// SendRate is λ_P, packets per second: the Poisson rate at which this
	// node sends its own packets, a drop cover packet filling every tick
	// with none queued (sending.go). Default 0.2.
	SendRate float64
	// SendQueueLimit in packets: at this many own packets waiting, new
	// mail gets 452 4.3.1 and routing waits. Default ⌈SendRate × Grace⌉
	// (at least 1): a packet waits at most about Grace, so its epoch key
	// is still valid at every hop when it leaves.
	SendQueueLimit int
	// FragmentTTL: an incomplete message is dropped after this (24 h).
	FragmentTTL time.Duration
	// MessageIDTTL: how long the exit remembers message ids (24 h).
	MessageIDTTL time.Duration
	// ExitStage is the pipeline stage index an assembled message resumes at.
	ExitStage int
	// AckTime is how long after a packet's arrival its ack is sent (20 ms):
	// Receive stores the packet, then waits out the rest, so the ack's
	// timing depends neither on this packet's fate nor on the work after
	// the ack of the packets before it (a forward costs the queue more
	// than a drop, and the next packet's sync would wait on it). A store
	// that takes longer is acked at once and counted (Stats.LateAcks).
	// Negative: ack as soon as the packet is stored (tests only).
	AckTime time.Duration
	// Blocked reports whether an assembled message must not be delivered
	// to a recipient (the exit's destination opt-out list); nil blocks
	// none. A message left without recipients is dropped.
	Blocked func(rcpt string) bool
}

func (c *Config) defaults() {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	if c.PacketSize <= 0 {
		c.PacketSize = 65536
	}
	def(&c.EpochLength, time.Hour)
	def(&c.Grace, 10*time.Minute)
	def(&c.ProbeInterval, 30*time.Second)
	def(&c.PoolWindow, time.Second)
	def(&c.FragmentTTL, 24*time.Hour)
	def(&c.MessageIDTTL, 24*time.Hour)
	if c.SendRate <= 0 {
		c.SendRate = 0.2
	}
	if c.SendQueueLimit <= 0 {
		c.SendQueueLimit = max(1, int(math.Ceil(c.SendRate*c.Grace.Seconds())))
	}
	if c.AckTime == 0 {
		c.AckTime = 20 * time.Millisecond
	}
}

// Stats counts a mix node's events since start.
type Stats struct {
	Received, Forwarded, Exited, Replays, Dropped, CoverSent, CoverDropped atomic.Int64
	LoopsSent, LoopsBack, LoopsLost, Assembled, Duplicates                 atomic.Int64
	// OwnSent: own packets sent at a tick; TickDrops: drop packets sent
	// at a tick with no own packet waiting; TicksMissed: ticks with
	// neither sent (no path, link down); PoolDummies: drop packets added
	// to a starving pool.
	OwnSent, TickDrops, TicksMissed, PoolDummies atomic.Int64
	// LateAcks counts packets whose store took longer than Config.AckTime.
	LateAcks atomic.Int64
}

// Node is the mixnet side of one mixmta daemon.
type Node struct {
	cfg    Config
	self   sdk.NodeID
	eng    *pipeline.Engine
	mixer  Mixer
	delay  Delayer
	keys   Keys
	dir    Directory
	links  Links
	log    hclog.Logger
	Stats  Stats
	health *health
	sendq  *sendQueue
	// pathLen is the mixer's path length, learned from cover packets;
	// pathsDown is set while too few healthy nodes are known for it.
	pathLen   atomic.Int32
	pathsDown atomic.Bool

	// pending holds a copy of packets Receive stored, by item id, until a
	// worker unwraps them, so the common path does not read them back from
	// the queue; at most maxPending (the rest are read back).
	pending  sync.Map // queue.ID -> []byte
	nPending atomic.Int64

	mu        sync.Mutex
	fragments map[queue.ID]map[int]*queue.Item // message id -> index -> item
	loops     map[[16]byte]loop
	loopTO    loopTimeouts
	lastState string
	// refreshMu serializes refresh: the epoch ticker, the probe loop and
	// the sweep all call it, and an older state must never be pushed after
	// a newer one.
	refreshMu sync.Mutex
}

type loop struct {
	deadline time.Time
	path     []sdk.NodeID
}

// New builds a mix node. Start it after the engine has started.
func New(cfg Config, self sdk.NodeID, eng *pipeline.Engine, mixer Mixer, delay Delayer, keys Keys, dir Directory, links Links, log hclog.Logger) *Node {
	cfg.defaults()
	return &Node{cfg: cfg, self: self, eng: eng, mixer: mixer, delay: delay, keys: keys, dir: dir, links: links,
		log: log.Named("mix"), health: newHealth(), sendq: newSendQueue(), fragments: map[queue.ID]map[int]*queue.Item{}, loops: map[[16]byte]loop{}}
}

// Run keeps keys, mix state, health and cover traffic going until ctx ends.
func (n *Node) Run(ctx context.Context) {
	n.refresh(ctx, true)
	var wg sync.WaitGroup
	wg.Add(5)
	go func() { defer wg.Done(); n.sendLoop(ctx) }()
	go func() { defer wg.Done(); n.refreshLoopTimeouts(ctx) }()
	if n.cfg.MinPool > 0 {
		wg.Add(1)
		go func() { defer wg.Done(); n.feedPool(ctx) }()
	}
	go func() {
		defer wg.Done()
		n.every(ctx, min(n.cfg.EpochLength/10, 5*time.Second), func() { n.refresh(ctx, false) })
	}()
	go func() { defer wg.Done(); n.probeLoop(ctx) }()
	go func() { defer wg.Done(); n.sweepLoop(ctx) }()
	for _, c := range []struct {
		kind sdk.CoverKind
		rate float64
	}{{sdk.CoverDrop, n.cfg.DropRate}, {sdk.CoverLoop, n.cfg.LoopRate}} {
		if c.rate > 0 {
			wg.Add(1)
			go func() { defer wg.Done(); n.coverLoop(ctx, c.kind, c.rate) }()
		}
	}
	wg.Wait()
}

func (n *Node) every(ctx context.Context, d time.Duration, fn func()) {
	t := time.NewTicker(d)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			fn()
		}
	}
}

// refresh pushes the mix state when it changed, then rotates keys (a key
// leaves the mixer's memory before its file is deleted), and pushes again
// when rotation changed the keys.
func (n *Node) refresh(ctx context.Context, force bool) {
	n.refreshMu.Lock()
	defer n.refreshMu.Unlock()
	now := time.Now()
	n.push(ctx, now, force)
	if err := n.keys.Ensure(now); err != nil {
		n.log.Error("[MIX] key rotation failed", "error", err)
	}
	n.push(ctx, now, false)
	n.checkPaths()
}

func (n *Node) push(ctx context.Context, now time.Time, force bool) {
	st := sdk.MixState{Epoch: uint64(now.Unix()) / uint64(n.cfg.EpochLength.Seconds()), Keys: n.keys.Keys(now), Self: n.self, KeyDir: n.keys.Dir()}
	for _, d := range n.dir.Nodes() {
		d.Healthy = d.ID == n.self || n.health.healthy(d.ID)
		st.Nodes = append(st.Nodes, d)
	}
	sig := stateSignature(st)
	n.mu.Lock()
	changed := sig != n.lastState
	n.lastState = sig
	n.mu.Unlock()
	if !changed && !force {
		return
	}
	if err := n.mixer.SetMixState(ctx, st); err != nil {
		n.log.Error("[MIX] cannot push mix state", "error", err)
		n.mu.Lock()
		n.lastState = "" // try again next time
		n.mu.Unlock()
		return
	}
	healthy := 0
	for _, d := range st.Nodes {
		if d.Healthy && d.ID != n.self {
			healthy++
		}
	}
	n.log.Info("[HEALTH] mix state pushed", "epoch", st.Epoch, "keys", len(st.Keys), "healthy_nodes", healthy, "nodes", len(st.Nodes)-1)
}

// stateSignature is a digest of everything in a MixState the mixer acts
// on: epoch, own keys, and every node's id, flags and public keys.
func stateSignature(st sdk.MixState) string {
	h := sha256.New()
	fmt.Fprintf(h, "%d|", st.Epoch)
	for _, k := range st.Keys {
		fmt.Fprintf(h, "k%d:%x:%d|", k.Epoch, k.Public, k.NotAfter.Unix())
	}
	for _, d := range st.Nodes {
		fmt.Fprintf(h, "n%x:%v:%v:%q|", d.ID[:], d.Healthy, d.Exit, d.Capabilities)
		for _, k := range d.Keys {
			fmt.Fprintf(h, "%d:%x:%d,", k.Epoch, k.Public, k.NotAfter.Unix())
		}
	}
	return string(h.Sum(nil))
}

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
	it := &queue.Item{ID: queue.NewID(), Msg: queue.NewID(), Kind: queue.KindPacketIn, Received: time.Now(), Deliverer: -1}
	if err := n.eng.Queue().Put(it, packet); err != nil {
		return err // a queue error nacks: the sender tries again
	}
	n.Stats.Received.Add(1)
	if n.nPending.Add(1) <= maxPending {
		n.pending.Store(it.ID, bytes.Clone(packet)) // the transport reuses its buffer
	} else {
		n.nPending.Add(-1)
	}
	n.eng.Forget(-1)
	n.eng.Enqueue(it)
	n.waitAck(ctx, arrived)
	return nil
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

// maxPending bounds the packets held in memory between Receive and their
// unwrap (16 MiB of 64 KiB packets): a backlog beyond it costs a queue
// read each, not memory.
const maxPending = 256

func (n *Node) dropped(err error) {
	n.Stats.Dropped.Add(1)
	n.eng.Counters().Dropped.Add(1)
	n.log.Info("[MIX] packet dropped", "reason", sdk.AsError(err).Message)
}

// Process implements pipeline.PacketHandler.
func (n *Node) Process(ctx context.Context, it *queue.Item, released bool) {
	var err error
	switch it.Kind {
	case queue.KindPacketIn:
		err = n.unwrap(ctx, it)
	case queue.KindPacketOut:
		err = n.send(ctx, it, released)
	case queue.KindFragment:
		err = n.fragment(ctx, it)
	default:
		err = fmt.Errorf("unknown item kind %q", it.Kind)
	}
	if err != nil {
		n.log.Error("[MIX] item failed; it resumes at restart", "item", it.ID.String(), "kind", it.Kind, "error", err)
	}
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
	var packet []byte
	if p, ok := n.pending.LoadAndDelete(it.ID); ok {
		n.nPending.Add(-1)
		packet = p.([]byte)
	} else {
		var err error
		if packet, err = n.eng.Queue().Blob(it.Body); err != nil {
			return err
		}
	}
	res, err := n.mixer.Mix(ctx, packet)
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
// or nothing (drop, loop back, replay). The transaction is synced before a
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
		ds, err := n.delay.Delay(ctx, sdk.DelayRequest{Size: int64(len(res.Packet)), Count: 1})
		if err != nil || len(ds) != 1 {
			return false, nil
		}
		out = &queue.Item{ID: queue.NewID(), Msg: queue.NewID(), Kind: queue.KindPacketOut, NextHop: res.NextHop,
			Received: in.Received, SendAfter: time.Now().Add(ds[0]), Waiting: true, Deliverer: -1}
		outData = res.Packet
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
	err = q.Do(func(tx *queue.Tx) error {
		seen, err := tx.Mark(epochKey(res.Epoch, res.ReplayTag), n.tagTTL(res.Epoch))
		if err != nil {
			return err
		}
		replay = seen
		if !seen && out != nil {
			if err := tx.Put(out, outData); err != nil {
				return err
			}
		}
		return tx.Delete(in)
	})
	if err == nil {
		err = q.Sync()
	}
	if err != nil {
		return true, err
	}
	if replay || out == nil {
		n.eng.Forget(1) // the packet deleted, nothing added
	}
	switch {
	case replay:
		n.Stats.Replays.Add(1)
		n.eng.Counters().Dropped.Add(1)
		n.log.Info("[MIX] replayed packet dropped", "epoch", res.Epoch)
	case res.Action == sdk.MixForward:
		n.Stats.Forwarded.Add(1)
		n.eng.Hold(out)
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

func (n *Node) finish(it *queue.Item) error { return n.eng.Done(it) }

func (n *Node) retry(it *queue.Item) error {
	ok, err := n.eng.RetryPacket(it)
	if err == nil && !ok {
		n.Stats.Dropped.Add(1)
		return n.eng.Done(it)
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
	packet, err := n.eng.Queue().Blob(it.Body)
	if err != nil {
		return err
	}
	if err := n.links.Send(ctx, it.NextHop, packet); err != nil {
		n.log.Info("[MIX] send failed, will retry", "next", it.NextHop.Short(), "attempt", it.Attempts+1)
		n.health.fail(it.NextHop)
		return n.retry(it)
	}
	return n.eng.Done(it)
}

// fragment re-indexes a fragment item loaded at start.
func (n *Node) fragment(ctx context.Context, it *queue.Item) error {
	if time.Since(it.Received) > n.cfg.FragmentTTL {
		n.Stats.Dropped.Add(1)
		return n.eng.Done(it)
	}
	n.addFragment(ctx, it)
	return nil
}

// addFragment indexes a stored fragment and assembles its message when
// every fragment is there.
func (n *Node) addFragment(ctx context.Context, it *queue.Item) {
	n.mu.Lock()
	set := n.fragments[it.Msg]
	if set == nil {
		set = map[int]*queue.Item{}
		n.fragments[it.Msg] = set
	}
	if old, dup := set[it.FragIndex]; dup && old.ID != it.ID {
		// The same fragment twice (by another path): keep the first.
		n.mu.Unlock()
		n.Stats.Duplicates.Add(1)
		_ = n.eng.Done(it)
		return
	}
	set[it.FragIndex] = it
	complete := len(set) == it.FragCount
	var parts []*queue.Item
	if complete {
		delete(n.fragments, it.Msg)
		for i := 0; i < it.FragCount; i++ {
			p, ok := set[i]
			if !ok || p.FragCount != it.FragCount {
				complete = false
				break
			}
			parts = append(parts, p)
		}
		if !complete { // inconsistent counts: keep waiting, sweep drops them
			n.fragments[it.Msg] = set
		}
	}
	n.mu.Unlock()
	if complete {
		if err := n.assemble(ctx, parts); err != nil {
			n.log.Error("[MIX] assembly failed; fragments kept, retrying in 10s", "error", err)
			n.mu.Lock()
			n.fragments[it.Msg] = set
			n.mu.Unlock()
			// Try again later: re-adding the last fragment re-checks the set.
			time.AfterFunc(10*time.Second, func() {
				if ctx.Err() == nil {
					n.mu.Lock()
					delete(n.fragments[it.Msg], it.FragIndex)
					n.mu.Unlock()
					n.addFragment(ctx, it)
				}
			})
		}
	}
}

// assemble turns a complete fragment set into a message item that resumes
// the pipeline at the exit stage, in one transaction that also records the
// message id (a duplicate message is dropped).
func (n *Node) assemble(ctx context.Context, parts []*queue.Item) error {
	q := n.eng.Queue()
	var data []byte
	for _, p := range parts {
		b, err := q.Blob(p.Body)
		if err != nil {
			return err
		}
		data = append(data, b...)
	}
	msg, err := n.mixer.Assemble(ctx, data)
	if err == nil && n.cfg.Blocked != nil {
		var keep []string
		for _, r := range msg.Envelope.RcptTo {
			if !n.cfg.Blocked(r) {
				keep = append(keep, r)
			}
		}
		if len(keep) < len(msg.Envelope.RcptTo) {
			n.log.Info("[MIX] recipients opted out at exit; not delivered to them", "opted_out", len(msg.Envelope.RcptTo)-len(keep), "left", len(keep))
			msg.Envelope.RcptTo = keep
			if len(keep) == 0 {
				err = sdk.Permanent(550, "7.1", "every recipient has opted out of anonymous mail")
			}
		}
	}
	if err != nil {
		if sdk.IsPermanent(err) {
			n.Stats.Dropped.Add(1)
			n.eng.Counters().Dropped.Add(1)
			n.log.Info("[MIX] reassembled message malformed or without recipients; dropped", "fragments", len(parts))
			err := q.Do(func(tx *queue.Tx) error {
				for _, p := range parts {
					if err := tx.Delete(p); err != nil {
						return err
					}
				}
				return nil
			})
			if err == nil {
				n.eng.Forget(len(parts))
			}
			return err
		}
		return err
	}
	it := &queue.Item{ID: queue.NewID(), Envelope: msg.Envelope, Stage: n.cfg.ExitStage, Received: time.Now(), Deliverer: -1}
	it.Msg = it.ID
	dup := false
	err = q.Do(func(tx *queue.Tx) error {
		seen, err := tx.Mark(append([]byte("msgid/"), parts[0].Msg[:]...), n.cfg.MessageIDTTL)
		if err != nil {
			return err
		}
		dup = seen
		for _, p := range parts {
			if err := tx.Delete(p); err != nil {
				return err
			}
		}
		if seen {
			return nil
		}
		return tx.Insert(it, msg.Header, msg.Body)
	})
	if err != nil {
		return err
	}
	n.eng.Forget(len(parts))
	if dup {
		n.Stats.Duplicates.Add(1)
		n.log.Info("[MIX] duplicate message dropped at exit")
		return nil
	}
	n.Stats.Assembled.Add(1)
	n.log.Info("[MIX] message assembled", "item", it.ID.String(), "fragments", len(parts), "size", it.Size)
	n.eng.Forget(-1)
	n.eng.Enqueue(it)
	return nil
}

// coverLoop sends cover packets of kind k with exponential inter-arrival
// times of mean 1/rate seconds (a Poisson process, Loopix §4.2).
func (n *Node) coverLoop(ctx context.Context, k sdk.CoverKind, rate float64) {
	for {
		wait := time.Duration(expSample(1/rate) * float64(time.Second))
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		if err := n.queueCover(ctx, k, &n.Stats.CoverSent); err != nil {
			n.log.Debug("[MIX] no cover packet", "error", err)
		}
	}
}

// queueCover builds a cover packet of kind k and queues it for the pool,
// counting it in sent.
func (n *Node) queueCover(ctx context.Context, k sdk.CoverKind, sent *atomic.Int64) error {
	p, err := n.mixer.Cover(ctx, k)
	if err != nil {
		return err
	}
	n.learnPathLen(p)
	it := &queue.Item{ID: queue.NewID(), Msg: queue.NewID(), Kind: queue.KindPacketOut, NextHop: p.NextHop,
		Received: time.Now(), SendAfter: time.Now(), Waiting: true, Deliverer: -1}
	if err := n.eng.Queue().Do(func(tx *queue.Tx) error { return tx.Put(it, p.Data) }); err != nil {
		return err
	}
	n.eng.Forget(-1)
	sent.Add(1)
	if k == sdk.CoverLoop {
		n.Stats.LoopsSent.Add(1)
		d := time.Now().Add(n.loopTimeout(p.Path))
		n.mu.Lock()
		n.loops[p.LoopID] = loop{deadline: d, path: p.Path}
		n.mu.Unlock()
	}
	n.eng.Hold(it)
	return nil
}

func (n *Node) loopBack(id [16]byte) {
	n.mu.Lock()
	l, ok := n.loops[id]
	delete(n.loops, id)
	n.mu.Unlock()
	if !ok {
		return // sent before a restart: nothing to credit
	}
	n.Stats.LoopsBack.Add(1)
	for _, h := range l.path {
		n.health.ok(h)
	}
}

// sweepLoop expires lost loops and stale fragments.
func (n *Node) sweepLoop(ctx context.Context) {
	n.every(ctx, time.Second, func() {
		now := time.Now()
		var lost [][]sdk.NodeID
		n.mu.Lock()
		for id, l := range n.loops {
			if now.After(l.deadline) {
				lost = append(lost, l.path)
				delete(n.loops, id)
			}
		}
		var stale []*queue.Item
		for msg, set := range n.fragments {
			for _, it := range set {
				if now.Sub(it.Received) > n.cfg.FragmentTTL {
					for _, p := range set {
						stale = append(stale, p)
					}
					delete(n.fragments, msg)
					break
				}
			}
		}
		n.mu.Unlock()
		for _, path := range lost {
			n.Stats.LoopsLost.Add(1)
			for _, h := range path {
				if h != n.self {
					n.health.lostLoop(h)
				}
			}
		}
		for _, it := range stale {
			n.Stats.Dropped.Add(1)
			_ = n.eng.Done(it)
		}
		if len(lost) > 0 {
			n.refresh(ctx, false)
		}
	})
}

// probeLoop dials every other node once per probe interval.
func (n *Node) probeLoop(ctx context.Context) {
	probe := func() {
		var wg sync.WaitGroup
		for _, d := range n.dir.Nodes() {
			if d.ID == n.self {
				continue
			}
			wg.Add(1)
			go func(id sdk.NodeID) {
				defer wg.Done()
				pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				defer cancel()
				if err := n.links.Probe(pctx, id); err != nil {
					n.health.fail(id)
				} else {
					n.health.probeOK(id)
				}
			}(d.ID)
		}
		wg.Wait()
		n.refresh(ctx, false)
	}
	probe()
	n.every(ctx, n.cfg.ProbeInterval, probe)
}

// HealthyNodes returns the number of other nodes now considered healthy.
func (n *Node) HealthyNodes() int {
	c := 0
	for _, d := range n.dir.Nodes() {
		if d.ID != n.self && n.health.healthy(d.ID) {
			c++
		}
	}
	return c
}

// Fragments returns the number of incomplete messages held at this exit.
func (n *Node) Fragments() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return len(n.fragments)
}

// StatsLine formats fog's mix fields for the [STATS] line.
func (n *Node) StatsLine() string {
	s := &n.Stats
	c := n.eng.Counters()
	oldest, _ := n.SendQueueWait()
	return fmt.Sprintf("sphinx_messages=%d sphinx_packets=%d mix_received=%d mix_forwarded=%d exit=%d assembled=%d replays=%d mix_dropped=%d cover_sent=%d cover_dropped=%d loops=%d/%d/%d healthy_nodes=%d paths=%s own_sent=%d tick_drops=%d pool_dummies=%d send_queue=%d send_wait=%s",
		c.SphinxMessages.Load(), c.SphinxPackets.Load(), s.Received.Load(), s.Forwarded.Load(), s.Exited.Load(), s.Assembled.Load(), s.Replays.Load(), s.Dropped.Load(),
		s.CoverSent.Load(), s.CoverDropped.Load(), s.LoopsSent.Load(), s.LoopsBack.Load(), s.LoopsLost.Load(), n.HealthyNodes(), map[bool]string{false: "ok", true: "held"}[n.pathsDown.Load()],
		s.OwnSent.Load(), s.TickDrops.Load(), s.PoolDummies.Load(), n.sendq.Len(), oldest.Round(time.Second))
}

// health tracks other nodes. A node is healthy once a probe succeeded, and
// stays so until there is repeated evidence against it: probeFailLimit
// failed probes or sends in a row (one lost TCP connection is not enough),
// or loopFailLimit lost loops on paths through it without a returned loop
// in between. A successful probe clears the probe failures; a returned
// loop clears the lost loops.
type health struct {
	mu    sync.Mutex
	nodes map[sdk.NodeID]*nodeHealth
}

type nodeHealth struct {
	probed     bool // a probe succeeded at least once
	probeFails int  // failed probes and sends since the last success
	lostLoops  int
}

const (
	probeFailLimit = 3
	loopFailLimit  = 3
)

func newHealth() *health { return &health{nodes: map[sdk.NodeID]*nodeHealth{}} }

func (h *health) get(id sdk.NodeID) *nodeHealth {
	nh := h.nodes[id]
	if nh == nil {
		nh = &nodeHealth{}
		h.nodes[id] = nh
	}
	return nh
}

func (h *health) healthy(id sdk.NodeID) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	nh := h.get(id)
	return nh.probed && nh.probeFails < probeFailLimit && nh.lostLoops < loopFailLimit
}

func (h *health) probeOK(id sdk.NodeID) {
	h.mu.Lock()
	nh := h.get(id)
	nh.probed, nh.probeFails = true, 0
	h.mu.Unlock()
}

func (h *health) fail(id sdk.NodeID) {
	h.mu.Lock()
	h.get(id).probeFails++
	h.mu.Unlock()
}

func (h *health) ok(id sdk.NodeID) {
	h.mu.Lock()
	h.get(id).lostLoops = 0
	h.mu.Unlock()
}

func (h *health) lostLoop(id sdk.NodeID) {
	h.mu.Lock()
	h.get(id).lostLoops++
	h.mu.Unlock()
}

// expSample draws Exp(mean) from crypto/rand.
func expSample(mean float64) float64 {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err)
	}
	u := (float64(binary.LittleEndian.Uint64(b[:])>>11) + 0.5) / (1 << 53)
	return -mean * math.Log(u)
}
