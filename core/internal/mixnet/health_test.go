package mixnet

import (
	"context"
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/mixmta/mixmta/sdk"
)

// expDelayer draws exponential delays of mean `mean` capped at max, like
// the delay-exponential plugin (the hop delay of configs/fog.yaml: mean
// 30s, max 10m).
type expDelayer struct{ mean, max time.Duration }

func (e expDelayer) Delay(_ context.Context, req sdk.DelayRequest) ([]time.Duration, error) {
	out := make([]time.Duration, req.Count)
	for i := range out {
		out[i] = min(time.Duration(rand.ExpFloat64()*float64(e.mean)), e.max)
	}
	return out, nil
}

// loopDelays draws n total delays of a k-hop loop, fresh: k hop delays
// plus, at the sender and at each hop, a wait for the next pool flush
// (uniform over one window).
func loopDelays(d expDelayer, k, n int, window time.Duration) []time.Duration {
	ds, _ := d.Delay(context.Background(), sdk.DelayRequest{Count: n * k})
	out := make([]time.Duration, n)
	for i := range out {
		for j := range k {
			out[i] += ds[i*k+j]
		}
		for range k + 1 {
			out[i] += time.Duration(rand.Int64N(int64(window)))
		}
	}
	return out
}

func fractionWithin(xs []time.Duration, d time.Duration) float64 {
	c := 0
	for _, x := range xs {
		if x <= d {
			c++
		}
	}
	return float64(c) / float64(len(xs))
}

// With fog's hop delay (mean 30 s, max 10 min), its 30 s pool window and
// 3 hops, only about a third of loops are back within the old fixed
// 2-minute timeout (a third was seen on a real fog network); the derived
// timeout lets at least 99.9 % of them come back in time, and its hop
// delay part is close to the Gamma(3) 99.9 % quantile, 11.23 × 30 s.
func TestLoopTimeoutIsAHighQuantileOfTheLoopDelay(t *testing.T) {
	fog := expDelayer{mean: 30 * time.Second, max: 10 * time.Minute}
	window := 30 * time.Second
	lt, err := deriveLoopTimeouts(context.Background(), fog, 65536, window)
	if err != nil {
		t.Fatal(err)
	}
	fresh := loopDelays(fog, 3, 100000, window)
	if f := fractionWithin(fresh, 2*time.Minute); f > 0.45 || f < 0.25 {
		t.Fatalf("%.0f %% of fog loops back within 2 min, expected about a third: the test's delays are off", 100*f)
	}
	hopOnly := lt[3] - time.Duration(2*(3+1))*window - loopTimeoutMargin
	if f := fractionWithin(fresh, lt[3]); f < 0.999 {
		t.Errorf("derived 3-hop timeout %s covers %.2f %% of loops, want >= 99.9 %%", lt[3], 100*f)
	}
	theory := time.Duration(11.229 * 30 * float64(time.Second))
	if math.Abs(float64(hopOnly-theory)) > 0.15*float64(theory) {
		t.Errorf("derived hop-delay quantile %s, Gamma(3, 30 s) 99.9 %% quantile %s", hopOnly, theory)
	}
	if !slices.IsSorted(lt[1:]) {
		t.Errorf("timeouts do not grow with the path length: %v", lt)
	}
	t.Logf("fog, 3 hops: %.0f %% of loops within 2 min; derived timeout %s", 100*fractionWithin(fresh, 2*time.Minute), lt[3].Round(time.Second))
}

// One failed probe or send does not mark a node down; three in a row do;
// a successful probe clears them. Three lost loops in a row mark it down;
// a returned loop clears them.
func TestNodeMarkedDownOnRepeatedEvidenceOnly(t *testing.T) {
	h := newHealth()
	id := sdk.NodeID{7}
	if h.healthy(id) {
		t.Fatal("a node never probed is healthy")
	}
	h.probeOK(id)
	for i := 1; i < probeFailLimit; i++ {
		h.fail(id)
		if !h.healthy(id) {
			t.Fatalf("down after %d failed probe(s)", i)
		}
	}
	h.fail(id)
	if h.healthy(id) {
		t.Fatalf("still healthy after %d failed probes in a row", probeFailLimit)
	}
	h.probeOK(id)
	if !h.healthy(id) {
		t.Fatal("a successful probe did not bring it back")
	}
	for i := 1; i < loopFailLimit; i++ {
		h.lostLoop(id, time.Now())
	}
	h.ok(id)
	h.lostLoop(id, time.Now())
	if !h.healthy(id) {
		t.Fatal("lost loops separated by a returned one marked it down")
	}
	for i := 1; i < loopFailLimit; i++ {
		h.lostLoop(id, time.Now())
	}
	if h.healthy(id) {
		t.Fatalf("still healthy after %d lost loops in a row", loopFailLimit)
	}
}

type fixedDir []sdk.DirectoryNode

func (d fixedDir) Nodes() []sdk.DirectoryNode { return d }

// Mail is held (the router gate says so) while fewer healthy other nodes
// than the path length are known, or no healthy exit among them; never a
// shorter path.
func TestMailHeldWhileTooFewHealthyNodesForAFullPath(t *testing.T) {
	self := sdk.NodeID{1}
	dir := fixedDir{{ID: self, Exit: true}, {ID: sdk.NodeID{2}}, {ID: sdk.NodeID{3}}, {ID: sdk.NodeID{4}, Exit: true}}
	cfg := Config{}
	cfg.defaults()
	n := &Node{cfg: cfg, self: self, dir: dir, health: newHealth(), sendq: newSendQueue(), log: hclog.NewNullLogger()}
	if !n.PathsAvailable() {
		t.Fatal("held before the path length is known")
	}
	n.learnPathLen(&sdk.Packet{Path: make([]sdk.NodeID, 3)})
	for _, id := range []sdk.NodeID{{2}, {3}, {4}} {
		n.health.probeOK(id)
	}
	n.checkPaths()
	if !n.PathsAvailable() || n.Backlogged() != nil || n.pathsDown.Load() {
		t.Fatal("held with three healthy others for three hops")
	}
	for range probeFailLimit {
		n.health.fail(sdk.NodeID{3})
	}
	n.checkPaths()
	err := n.Backlogged()
	if n.PathsAvailable() || err == nil || !n.pathsDown.Load() {
		t.Fatalf("two healthy others for three hops: not held (err %v)", err)
	}
	if e := sdk.AsError(err); e.SMTPCode()/100 != 4 {
		t.Fatalf("held with %v, want a temporary error", err)
	}
	n.health.probeOK(sdk.NodeID{3})
	for range probeFailLimit {
		n.health.fail(sdk.NodeID{4}) // the only exit
	}
	if n.PathsAvailable() {
		t.Fatal("no healthy exit: not held")
	}
}

type consensusDir struct{ fixedDir }

func (consensusDir) FromConsensus() bool { return true }

// A node whose links to all but two of the consensus' nodes are blocked
// holds its mail, although two healthy nodes with an exit make a full
// 2-hop path: it cannot be steered onto the minority it still reaches.
// The same view from a nodes file routes through the two (the control).
func TestBlockedLinksToMostConsensusNodesHoldMail(t *testing.T) {
	self := sdk.NodeID{1}
	var nodes fixedDir
	for i := byte(1); i <= 8; i++ {
		nodes = append(nodes, sdk.DirectoryNode{ID: sdk.NodeID{i}, Exit: i%2 == 0})
	}
	cfg := Config{}
	cfg.defaults()
	for _, tc := range []struct {
		name string
		dir  Directory
		held bool
	}{
		{"consensus", consensusDir{nodes}, true},
		{"nodes file", nodes, false},
	} {
		n := &Node{cfg: cfg, self: self, dir: tc.dir, health: newHealth(), sendq: newSendQueue(), log: hclog.NewNullLogger()}
		n.learnPathLen(&sdk.Packet{Path: make([]sdk.NodeID, 2)})
		for i := byte(2); i <= 8; i++ {
			n.health.probeOK(sdk.NodeID{i})
		}
		if !n.PathsAvailable() {
			t.Fatalf("%s: held with every node reachable", tc.name)
		}
		for i := byte(4); i <= 8; i++ { // links to 5 of the 7 others blocked
			for range probeFailLimit {
				n.health.fail(sdk.NodeID{i})
			}
		}
		if got := !n.PathsAvailable(); got != tc.held {
			t.Errorf("%s: reaching 2 of 7 other nodes, held = %v, want %v", tc.name, got, tc.held)
		}
		if tc.held {
			// Reaching 4 of 7 again: a majority, routed.
			for i := byte(4); i <= 5; i++ {
				n.health.probeOK(sdk.NodeID{i})
			}
			if !n.PathsAvailable() {
				t.Errorf("%s: held while reaching 4 of 7", tc.name)
			}
		}
	}
}

// Before the first consensus (and after the last one expired) mail waits
// before the router, even while the path length is not known yet: it is
// held, not failed and quarantined. A nodes file with no nodes is left to
// the router as before (the control).
func TestMailHeldWithoutConsensus(t *testing.T) {
	cfg := Config{}
	cfg.defaults()
	n := &Node{cfg: cfg, self: sdk.NodeID{1}, dir: consensusDir{}, health: newHealth(), sendq: newSendQueue(), log: hclog.NewNullLogger()}
	if n.PathsAvailable() || n.Backlogged() == nil {
		t.Fatal("no consensus: mail not held")
	}
	n.dir = fixedDir{}
	if !n.PathsAvailable() {
		t.Fatal("an empty nodes file holds mail before the path length is known")
	}
}

// The majority rule does not wait for the path length: right after a
// start (before the first cover packet tells the path length), a node that
// reaches only 2 of 7 consensus nodes holds its mail too, instead of
// leaving it to a mixer that would route through the two.
func TestBlockedLinksHoldMailBeforeThePathLengthIsKnown(t *testing.T) {
	var all fixedDir
	for i := byte(1); i <= 8; i++ {
		all = append(all, sdk.DirectoryNode{ID: sdk.NodeID{i}, Exit: i%2 == 0})
	}
	cfg := Config{}
	cfg.defaults()
	n := &Node{cfg: cfg, self: sdk.NodeID{1}, dir: consensusDir{all}, health: newHealth(), sendq: newSendQueue(), log: hclog.NewNullLogger()}
	n.health.probeOK(sdk.NodeID{2})
	n.health.probeOK(sdk.NodeID{3})
	if n.PathsAvailable() || n.Backlogged() == nil {
		t.Fatal("reaching 2 of 7 consensus nodes, path length not known yet: mail not held")
	}
	for i := byte(4); i <= 5; i++ {
		n.health.probeOK(sdk.NodeID{i})
	}
	if !n.PathsAvailable() {
		t.Fatal("reaching 4 of 7 consensus nodes, path length not known yet: held")
	}
}

// A node down for lost loops gets no loops, so no returned loop can clear
// it: it is readmitted after readmitProbes successful probes, then after
// twice as many when it goes down again with no returned loop in between;
// loops sent before the readmission do not count against it; a returned
// loop resets the backoff.
func TestNodeDownForLostLoopsIsReadmittedAfterProbes(t *testing.T) {
	h := newHealth()
	id := sdk.NodeID{9}
	h.probeOK(id)
	down := func() {
		t.Helper()
		for range loopFailLimit {
			h.lostLoop(id, time.Now())
		}
		if h.healthy(id) {
			t.Fatalf("healthy after %d lost loops in a row", loopFailLimit)
		}
	}
	readmit := func(probes int) {
		t.Helper()
		for i := 1; i < probes; i++ {
			h.probeOK(id)
			if h.healthy(id) {
				t.Fatalf("readmitted after %d successful probes, want %d", i, probes)
			}
		}
		h.probeOK(id)
		if !h.healthy(id) {
			t.Fatalf("still down after %d successful probes", probes)
		}
	}
	down()
	inFlight := time.Now()
	readmit(readmitProbes)
	for range loopFailLimit {
		h.lostLoop(id, inFlight) // sent before the readmission
	}
	if !h.healthy(id) {
		t.Fatal("loops sent before the readmission marked it down again")
	}
	down()
	readmit(2 * readmitProbes)
	down()
	readmit(4 * readmitProbes)
	h.ok(id) // a loop came back through it
	down()
	readmit(readmitProbes)
	if got := readmitAfter(100); got != readmitProbes<<maxReadmitShift {
		t.Fatalf("readmitAfter(100) = %d, want the cap %d", got, readmitProbes<<maxReadmitShift)
	}
}

// Under load loops are late whichever nodes they cross, and each lost loop
// counts against every node of its path. Simulated: 6 reachable nodes,
// 3-hop loops over the healthy ones, 15 % of loops lost at random, a probe
// round every 10 loops. Every node stays on about its share of paths
// (within 20 % of the mean). Negative control: without probes (no
// readmission, as before readmission existed) nodes drop out for good one
// by one and the shares collapse.
func TestLoadLossesKeepEveryNodeOnPaths(t *testing.T) {
	run := func(probes bool) (share []int, held int) {
		r := rand.New(rand.NewPCG(1, 2))
		h := newHealth()
		ids := make([]sdk.NodeID, 6)
		for i := range ids {
			ids[i] = sdk.NodeID{byte(i + 1)}
			h.probeOK(ids[i])
		}
		share = make([]int, len(ids))
		for step := range 20000 {
			if probes && step%10 == 0 {
				for _, id := range ids {
					h.probeOK(id)
				}
			}
			var up []int
			for i, id := range ids {
				if h.healthy(id) {
					up = append(up, i)
				}
			}
			if len(up) < 3 {
				held++
				continue
			}
			r.Shuffle(len(up), func(a, b int) { up[a], up[b] = up[b], up[a] })
			lost := r.Float64() < 0.15
			for _, i := range up[:3] {
				share[i]++
				if lost {
					h.lostLoop(ids[i], time.Now())
				} else {
					h.ok(ids[i])
				}
			}
		}
		return share, held
	}
	spread := func(share []int) (lo, hi float64) {
		sum := 0
		for _, s := range share {
			sum += s
		}
		mean := float64(sum) / float64(len(share))
		lo, hi = math.Inf(1), 0
		for _, s := range share {
			lo, hi = min(lo, float64(s)/mean), max(hi, float64(s)/mean)
		}
		return lo, hi
	}
	share, held := run(true)
	lo, hi := spread(share)
	t.Logf("with readmission: paths per node %v (%.2f-%.2f of the mean), %d of 20000 loops held", share, lo, hi, held)
	if lo < 0.8 || hi > 1.2 || held > 1000 {
		t.Errorf("with readmission a node is on far fewer paths than the others: %v, %d loops held", share, held)
	}
	share, held = run(false)
	lo, _ = spread(share)
	t.Logf("control without readmission: paths per node %v, %d held", share, held)
	if lo > 0.5 && held < 10000 {
		t.Errorf("control: nodes kept their share without readmission (%v, %d held): the simulation does not show the exclusion", share, held)
	}
}
