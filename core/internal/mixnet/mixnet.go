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
//
// Files by concern: packets.go (receive, ack, unwrap, forward, send),
// fragments.go (exit fragments and their message), cover.go (drop and
// loop cover), sending.go (the λ_P schedule of own packets), health.go
// (probes, loops, paths), state.go (mix state and keys pushed to the
// mixer), links.go (Links over the mix transport). The node reaches the
// pipeline engine only through pipeline.MixHost; every item kind it owns
// is dispatched in Process.
package mixnet

import (
	"context"
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
	// Mix unwraps packet (PacketSize bytes). packet is the caller's again
	// once Mix returns (it is recycled): the result must not refer to it,
	// as a plugin's never does (it comes back through gRPC).
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
	// Probe checks that node id answers (a TLS handshake). An error
	// wrapping transport.ErrFull means it answered and says it is full.
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
	// Full, when set, reports whether this node is full with pending
	// more packets counted as messages: queue.max_items messages queued
	// (pending: the packets received and not yet unwrapped, any of which
	// may complete one), or the data dir below its free-space reserve.
	// Receive then refuses every packet, whatever it is, before storing
	// it, at the same AckTime as an ack (transport.ErrFull: the previous
	// hop keeps it and sends it again later, and holds nothing against
	// this node). docs/mixnet.md, "Flow control".
	Full func(pending int64) bool
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
	// RefusedFull: packets this node refused because it was full;
	// DeferredFull: sends deferred because the next hop was full;
	// LoopsExcused: loops not back in time through a node seen full, not
	// counted against their path.
	RefusedFull, DeferredFull, LoopsExcused atomic.Int64
}

// Node is the mixnet side of one mixmta daemon.
type Node struct {
	cfg    Config
	self   sdk.NodeID
	eng    pipeline.MixHost
	mixer  Mixer
	delay  Delayer
	keys   Keys
	dir    Directory
	links  Links
	log    hclog.Logger
	Stats  Stats
	health *health
	// loopStats are the per-node loop statistics (mixmta mixnet stats).
	loopStats *loopStats
	sendq     *sendQueue
	// pathLen is the mixer's path length, learned from cover packets;
	// pathsDown is set while too few healthy nodes are known for it.
	pathLen   atomic.Int32
	pathsDown atomic.Bool

	// inbound holds a copy of the packets Receive stored until a worker
	// unwraps them, outbound the forward forms apply made until they are
	// sent: the common path neither reads them back from the queue nor
	// stores a forward form (apply).
	inbound, outbound packetCache
	// bufs recycles the PacketSize buffers of inbound (packetBuf).
	bufs sync.Pool
	// stores commits received packets in batches.
	stores storeBatch
	// hopDelays are hop delays sampled ahead, in batches.
	hopDelays delayBatch
	// parked are the pool's packets waiting for full next hops (flow.go).
	parked parked
	// pendingIn counts the packets Receive stored that no worker has
	// unwrapped yet (their ids in reserved); selfFull is when this node
	// last refused a packet as full (unix ns).
	pendingIn atomic.Int64
	reserved  sync.Map
	selfFull  atomic.Int64

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

// New builds a mix node. Start it after the engine has started.
func New(cfg Config, self sdk.NodeID, eng pipeline.MixHost, mixer Mixer, delay Delayer, keys Keys, dir Directory, links Links, log hclog.Logger) *Node {
	cfg.defaults()
	// Packets, all of one size, go to the queue's slot file, not its value log.
	if err := eng.Queue().StoreInSlots(cfg.PacketSize); err != nil {
		log.Warn("[MIX] packets stored in the value log", "error", err)
	}
	return &Node{cfg: cfg, self: self, eng: eng, mixer: mixer, delay: delay, keys: keys, dir: dir, links: links,
		log: log.Named("mix"), health: newHealth(), loopStats: newLoopStats(), sendq: newSendQueue(), fragments: map[queue.ID]map[int]*queue.Item{}, loops: map[[16]byte]loop{}}
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

// StatsLine formats fog's mix fields for the [STATS] line.
func (n *Node) StatsLine() string {
	s := &n.Stats
	c := n.eng.Counters()
	oldest, _ := n.SendQueueWait()
	return fmt.Sprintf("sphinx_messages=%d sphinx_packets=%d mix_received=%d mix_forwarded=%d exit=%d assembled=%d replays=%d mix_dropped=%d cover_sent=%d cover_dropped=%d loops=%d/%d/%d healthy_nodes=%d paths=%s own_sent=%d tick_drops=%d pool_dummies=%d send_queue=%d send_wait=%s",
		c.SphinxMessages.Load(), c.SphinxPackets.Load(), s.Received.Load(), s.Forwarded.Load(), s.Exited.Load(), s.Assembled.Load(), s.Replays.Load(), s.Dropped.Load(),
		s.CoverSent.Load(), s.CoverDropped.Load(), s.LoopsSent.Load(), s.LoopsBack.Load(), s.LoopsLost.Load(), n.HealthyNodes(), map[bool]string{false: "ok", true: "held"}[n.pathsDown.Load()],
		s.OwnSent.Load(), s.TickDrops.Load(), s.PoolDummies.Load(), n.sendq.Len(), oldest.Round(time.Second)) + n.flowStats()
}
