package mixnet

import (
	"math"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/mixmta/mixmta/sdk"
)

// Per-node loop statistics: the operator's view of reliability, like the
// Mixmaster/YAMN pinger's mlist. A loop cannot tell which hop lost it, so
// a loop's outcome is counted against every other node of its path (as the
// health checks do); a node that is down shows as many lost loops as all
// the others it shared paths with together, and the others recover as
// their loops through healthy paths return.
const (
	// loopStatsWindow is how many finished loops are kept per node.
	loopStatsWindow = 500
	// loopStatsAge is how long a finished loop counts.
	loopStatsAge = 24 * time.Hour
	// loopStatsNodes bounds the nodes kept; the least recently updated one
	// is forgotten first (nodes leave the directory over time).
	loopStatsNodes = 1024
	// loopStatsPercentile is the high latency percentile shown besides
	// the median.
	loopStatsPercentile = 0.95
)

// loopOutcome is one finished loop through a node, finished at at:
// returned after latency, or lost (timed out) when lost.
type loopOutcome struct {
	at      time.Time
	latency time.Duration
	lost    bool
}

type nodeLoops struct {
	ring    [loopStatsWindow]loopOutcome
	next, n int // next slot, slots used
	pending int // loops sent through the node and not finished yet
	updated time.Time
}

// loopStats keeps, for each node, its last loopStatsWindow finished loops
// of the last loopStatsAge and the loops still out: memory is bounded by
// loopStatsNodes × loopStatsWindow records. It holds no envelope data:
// only node ids, times and outcomes.
type loopStats struct {
	mu    sync.Mutex
	nodes map[sdk.NodeID]*nodeLoops
}

func newLoopStats() *loopStats { return &loopStats{nodes: map[sdk.NodeID]*nodeLoops{}} }

func (s *loopStats) get(id sdk.NodeID, now time.Time) *nodeLoops {
	nl := s.nodes[id]
	if nl == nil {
		if len(s.nodes) >= loopStatsNodes {
			var old sdk.NodeID
			var oldest time.Time
			first := true
			for k, v := range s.nodes {
				if first || v.updated.Before(oldest) {
					old, oldest, first = k, v.updated, false
				}
			}
			delete(s.nodes, old)
		}
		nl = &nodeLoops{}
		s.nodes[id] = nl
	}
	nl.updated = now
	return nl
}

// sent records a loop sent through path (self excluded).
func (s *loopStats) sent(self sdk.NodeID, path []sdk.NodeID, now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, h := range uniqueHops(self, path) {
		s.get(h, now).pending++
	}
}

// finished records the outcome of a loop sent through path: returned
// after latency, or lost.
func (s *loopStats) finished(self sdk.NodeID, path []sdk.NodeID, now time.Time, latency time.Duration, lost bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, h := range uniqueHops(self, path) {
		nl := s.get(h, now)
		if nl.pending > 0 {
			nl.pending--
		}
		nl.ring[nl.next] = loopOutcome{at: now, latency: latency, lost: lost}
		nl.next = (nl.next + 1) % loopStatsWindow
		nl.n = min(nl.n+1, loopStatsWindow)
	}
}

// uniqueHops is path without self and without repeats: a node twice on a
// path still carried one loop.
func uniqueHops(self sdk.NodeID, path []sdk.NodeID) []sdk.NodeID {
	out := make([]sdk.NodeID, 0, len(path))
	for _, h := range path {
		if h != self && !slices.Contains(out, h) {
			out = append(out, h)
		}
	}
	return out
}

// NodeLoopStats is one node's line of `mixmta mixnet stats`: the loops
// this node sent through it that finished in the last 24 h (at most the
// last 500), and those still out.
type NodeLoopStats struct {
	ID   sdk.NodeID `json:"id"`
	Name string     `json:"name"`
	// Healthy is this node's current health verdict (probes and loops).
	Healthy bool `json:"healthy"`
	// Returned and Lost count finished loops; Pending those still out.
	Returned int `json:"returned"`
	Lost     int `json:"lost"`
	Pending  int `json:"pending"`
	// Reliability is Returned / (Returned + Lost) in [0, 1]; -1 when no
	// loop through the node has finished yet.
	Reliability float64 `json:"reliability"`
	// LatencyMedian and LatencyHigh (95th percentile) are the round-trip
	// times of the returned loops; 0 when none returned.
	LatencyMedian time.Duration `json:"latency_median"`
	LatencyHigh   time.Duration `json:"latency_p95"`
}

// snapshot computes the statistics of id at now.
func (s *loopStats) snapshot(id sdk.NodeID, now time.Time) NodeLoopStats {
	out := NodeLoopStats{ID: id, Reliability: -1}
	s.mu.Lock()
	nl := s.nodes[id]
	var lat []time.Duration
	if nl != nil {
		out.Pending = nl.pending
		for i := range nl.n {
			o := nl.ring[i]
			if now.Sub(o.at) > loopStatsAge {
				continue
			}
			if o.lost {
				out.Lost++
			} else {
				out.Returned++
				lat = append(lat, o.latency)
			}
		}
	}
	s.mu.Unlock()
	if f := out.Returned + out.Lost; f > 0 {
		out.Reliability = float64(out.Returned) / float64(f)
	}
	if len(lat) > 0 {
		sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
		out.LatencyMedian = percentile(lat, 0.5)
		out.LatencyHigh = percentile(lat, loopStatsPercentile)
	}
	return out
}

// percentile is the nearest-rank p-quantile of sorted (not empty).
func percentile(sorted []time.Duration, p float64) time.Duration {
	i := int(math.Ceil(p*float64(len(sorted)))) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

// LoopStats returns the loop statistics of every other node of the
// directory, sorted by name then id.
func (n *Node) LoopStats() []NodeLoopStats {
	now := time.Now()
	var out []NodeLoopStats
	for _, d := range n.dir.Nodes() {
		if d.ID == n.self {
			continue
		}
		st := n.loopStats.snapshot(d.ID, now)
		st.Name, st.Healthy = d.Name, n.health.healthy(d.ID)
		out = append(out, st)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Name != out[j].Name {
			return out[i].Name < out[j].Name
		}
		return string(out[i].ID[:]) < string(out[j].ID[:])
	})
	return out
}
