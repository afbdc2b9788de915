package mixnet

import (
	"context"
	"errors"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"github.com/mixmta/mixmta/core/internal/mixnet/transport"
	"github.com/mixmta/mixmta/core/internal/queue"
	"github.com/mixmta/mixmta/sdk"
)

// Loop timeouts follow from the configured delays: a loop of k hops is
// lost only when it is later than the 99.9 % quantile of its total delay,
// so that on a healthy network about one loop in a thousand is blamed
// wrongly (and a node needs loopFailLimit lost loops in a row, with no
// returned loop between them, before it is marked down).
const (
	loopQuantile      = 0.999
	loopDelaySamples  = 20000  // hop delays drawn from the hop delay stage
	loopSums          = 200000 // Monte Carlo sums per path length (200 beyond the 99.9 % quantile)
	loopTimeoutMargin = 10 * time.Second
)

// maxPathLen is the longest Sphinx path (the sphinx plugin's max_hops cap).
const maxPathLen = 5

// loopTimeouts holds the derived timeout for each path length 1..maxPathLen.
type loopTimeouts [maxPathLen + 1]time.Duration

// deriveLoopTimeouts samples the hop delay stage and computes, for every
// path length k, the 99.9 % quantile of the sum of k hop delays, plus two
// pool windows per hop and one for the sender's own pool (a packet waits
// for the next flush at each node, and with fog's min_pool sometimes for
// one more), plus a margin of 10 s for links and unwrapping. The quantile
// comes from the stage itself, so it is right for any delay plugin.
func deriveLoopTimeouts(ctx context.Context, d Delayer, packetSize int, window time.Duration) (loopTimeouts, error) {
	var out loopTimeouts
	ds, err := d.Delay(ctx, sdk.DelayRequest{Size: int64(packetSize), Count: loopDelaySamples})
	if err != nil {
		return out, err
	}
	if len(ds) == 0 {
		return out, errNoSamples
	}
	sums := make([]time.Duration, loopSums)
	for k := 1; k < len(out); k++ {
		for i := range sums {
			var s time.Duration
			for range k {
				s += ds[rand.IntN(len(ds))]
			}
			sums[i] = s
		}
		slices.Sort(sums)
		q := sums[min(len(sums)-1, int(loopQuantile*float64(len(sums))))]
		out[k] = q + time.Duration(2*(k+1))*window + loopTimeoutMargin
	}
	return out, nil
}

var errNoSamples = errors.New("hop delay stage returned no delays")

// loopTimeout is the time after which a loop over path (this node last) is
// lost: mix.loop_timeout when configured, else the derived quantile.
func (n *Node) loopTimeout(path []sdk.NodeID) time.Duration {
	if n.cfg.LoopTimeout > 0 {
		return n.cfg.LoopTimeout
	}
	k := min(max(len(path), 1), maxPathLen)
	n.mu.Lock()
	d := n.loopTO[k]
	n.mu.Unlock()
	if d <= 0 {
		return fallbackLoopTimeout
	}
	return d
}

// fallbackLoopTimeout is used until the hop delay stage has answered.
const fallbackLoopTimeout = 10 * time.Minute

// refreshLoopTimeouts derives the loop timeouts, retrying every minute
// until the hop delay stage answers, then once an hour (a plugin restart
// may come with another config).
func (n *Node) refreshLoopTimeouts(ctx context.Context) {
	for {
		wait := time.Hour
		lt, err := deriveLoopTimeouts(ctx, n.delay, n.cfg.PacketSize, n.cfg.PoolWindow)
		if err != nil {
			n.log.Warn("[HEALTH] cannot derive loop timeouts from the hop delay stage; using the fallback", "fallback", fallbackLoopTimeout, "error", err)
			wait = time.Minute
		} else {
			n.mu.Lock()
			changed := n.loopTO != lt
			n.loopTO = lt
			n.mu.Unlock()
			if changed {
				n.log.Info("[HEALTH] loop timeouts derived from the hop delay", "hops_2", lt[2].Round(time.Second), "hops_3", lt[3].Round(time.Second))
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

// pathLen is the path length the mixer builds (mix hops), learned from the
// cover packets it returns; 0 until the first one.
func (n *Node) learnPathLen(p *sdk.Packet) {
	if l := len(p.Path); l > 0 {
		n.pathLen.Store(int32(l))
	}
}

// PathsAvailable reports whether enough healthy nodes are known for a
// path of the mixer's length (other nodes only, one of them an exit). When
// not, mail is held before the router and this is logged and exported: it
// is never sent on a shorter path.
func (n *Node) PathsAvailable() bool {
	if n.noConsensus() {
		return false
	}
	healthy, exits, others := 0, 0, 0
	for _, d := range n.dir.Nodes() {
		if d.ID != n.self {
			others++
		}
		if d.ID == n.self || !n.health.healthy(d.ID) {
			continue
		}
		healthy++
		if d.Exit {
			exits++
		}
	}
	if !n.reachesMajority(healthy, others) {
		// Whatever the path length: a mixer left to route would take the
		// few nodes still reached.
		return false
	}
	hops := int(n.pathLen.Load())
	if hops == 0 {
		return true // not known yet: the router decides
	}
	return healthy >= hops && exits > 0
}

// checkPaths logs when paths become unavailable and when they are back.
func (n *Node) checkPaths() {
	ok := n.PathsAvailable()
	if n.pathsDown.Swap(!ok) == !ok {
		return
	}
	if ok {
		n.log.Info("[HEALTH] enough healthy nodes for full paths again; held mail is routed", "hops", n.pathLen.Load(), "healthy_nodes", n.HealthyNodes())
	} else {
		n.log.Warn("[HEALTH] too few healthy nodes for full paths; mail is held, never sent on a shorter path", "hops", n.pathLen.Load(), "healthy_nodes", n.HealthyNodes())
	}
}

// feedPool keeps the scheduler's pool from starving (Mixmaster's dummy
// messages): once per pool window, when the pool holds no more than
// min_pool items, drop cover packets are added until it holds one more, so
// at least one item leaves each window and a real packet or message is
// never held indefinitely for want of traffic.
func (n *Node) feedPool(ctx context.Context) {
	n.every(ctx, n.cfg.PoolWindow, func() {
		pooled := n.eng.Pooled()
		for i := pooled; i <= n.cfg.MinPool; i++ {
			if err := n.queueCover(ctx, sdk.CoverDrop, &n.Stats.PoolDummies); err != nil {
				n.log.Debug("[POOL] no dummy for the pool", "error", err)
				return
			}
		}
	})
}

// sweepLoop expires lost loops and stale fragments.
func (n *Node) sweepLoop(ctx context.Context) {
	n.every(ctx, time.Second, func() {
		now := time.Now()
		var lost []loop
		n.mu.Lock()
		for id, l := range n.loops {
			if now.After(l.deadline) {
				lost = append(lost, l)
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
		for _, l := range lost {
			n.Stats.LoopsLost.Add(1)
			n.loopStats.finished(n.self, l.path, now, 0, true)
			if n.excused(l.path, l.sent) {
				// Held up by flow control, not lost by a failing node.
				n.Stats.LoopsExcused.Add(1)
				continue
			}
			for _, h := range l.path {
				if h != n.self {
					n.health.lostLoop(h, l.sent)
				}
			}
		}
		for _, it := range stale {
			n.Stats.Dropped.Add(1)
			_ = n.eng.Finish(it)
		}
		n.unparkStale(now)
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
				switch err := n.links.Probe(pctx, id); {
				case errors.Is(err, transport.ErrFull):
					n.health.probeOK(id)
					n.health.stillFull(id)
				case err != nil:
					n.health.fail(id)
					// Unreachable: they fail and retry as any send.
					n.health.mayTry(id)
					n.unpark(id, -1)
				case n.parkedFor(id) > 0:
					// Room, it says: a burst tests it (flow.go).
					n.health.probeOK(id)
					n.health.mayTry(id)
					n.unpark(id, fullBurst)
				default:
					n.health.probeOK(id)
					n.health.notFull(id)
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

// health tracks other nodes. A node is healthy once a probe succeeded, and
// stays so until there is repeated evidence against it: probeFailLimit
// failed probes or sends in a row (one lost TCP connection is not enough),
// or loopFailLimit lost loops on paths through it without a returned loop
// in between. A successful probe clears the probe failures; a returned
// loop clears the lost loops.
//
// A node down for lost loops gets no loops (paths use healthy nodes only),
// so no returned loop could ever clear it: under load, when late loops
// blame every node of their paths, nodes would drop out of this node's
// paths one by one for good, and whoever delays the loops through a node
// could steer this node's paths off it. So it is readmitted after
// readmitProbes successful probes, doubled for every time in a row it went
// down again without a returned loop (up to maxReadmitShift doublings);
// loops sent before the readmission no longer count against it.
type health struct {
	mu    sync.Mutex
	nodes map[sdk.NodeID]*nodeHealth
}

type nodeHealth struct {
	probed     bool // a probe succeeded at least once
	probeFails int  // failed probes and sends since the last success
	lostLoops  int
	// loopDowns: times in a row it went down for lost loops with no
	// returned loop since; downProbes: successful probes since it last
	// went down; readmitted: when it was last readmitted.
	loopDowns  int
	downProbes int
	readmitted time.Time
	// lastFull: when it last refused a packet as full or a probe found it
	// full; fullStreak: its refusals since it last took a packet or a
	// probe found room, fullFrom: since when (flow.go).
	lastFull, fullFrom time.Time
	fullStreak         int
}

const (
	probeFailLimit  = 3
	loopFailLimit   = 3
	readmitProbes   = 3
	maxReadmitShift = 5
)

// readmitAfter is the number of successful probes after which a node down
// for lost loops for the downs-th time in a row is readmitted.
func readmitAfter(downs int) int {
	return readmitProbes << min(max(downs-1, 0), maxReadmitShift)
}

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
	fullTooLong := !nh.fullFrom.IsZero() && time.Since(nh.fullFrom) > fullOffPaths
	return nh.probed && nh.probeFails < probeFailLimit && nh.lostLoops < loopFailLimit && !fullTooLong
}

func (h *health) probeOK(id sdk.NodeID) {
	h.mu.Lock()
	nh := h.get(id)
	nh.probed, nh.probeFails = true, 0
	if nh.lostLoops >= loopFailLimit {
		if nh.downProbes++; nh.downProbes >= readmitAfter(nh.loopDowns) {
			nh.lostLoops, nh.downProbes, nh.readmitted = 0, 0, time.Now()
		}
	}
	h.mu.Unlock()
}

func (h *health) fail(id sdk.NodeID) {
	h.mu.Lock()
	h.get(id).probeFails++
	h.mu.Unlock()
}

func (h *health) ok(id sdk.NodeID) {
	h.mu.Lock()
	nh := h.get(id)
	nh.lostLoops, nh.loopDowns, nh.downProbes = 0, 0, 0
	h.mu.Unlock()
}

// lostLoop counts a loop sent at sent through id that did not come back.
func (h *health) lostLoop(id sdk.NodeID, sent time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	nh := h.get(id)
	if sent.Before(nh.readmitted) {
		return
	}
	if nh.lostLoops++; nh.lostLoops == loopFailLimit {
		nh.loopDowns++
		nh.downProbes = 0
	}
}
