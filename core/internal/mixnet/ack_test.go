package mixnet_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/mixmta/mixmta/core/internal/queue"
	"github.com/mixmta/mixmta/sdk"
)

// ackSamples is the number of packets of each fate whose ack latency is
// measured: enough for the KS test to see a 0.15 shift of the CDF (Ne =
// 150, D = 0.15 gives p ≈ 0.002).
const ackSamples = 300

// fatePackets are packets for the node under test u, by what u does with
// them.
type fatePackets struct {
	forward, exit, drop [][]byte
}

// fateNet is a sender s, a mix x and the node under test u, the only exit.
// Packets for u of each fate come from real sphinx processes: drop cover
// packets from s over 2 hops start at u (u forwards them to x) or at x
// (x's mixer unwraps them and u drops them); messages from s take the path
// [x, u] and exit at u.
func fateNet(t *testing.T, now time.Time) (net *simNet, s, x, u *simNode) {
	net = newSimNet(t, t.TempDir(), now, nodeSpec{"sender", false}, nodeSpec{"mix", false}, nodeSpec{"exit", true})
	return net, net.node("sender"), net.node("mix"), net.node("exit")
}

func makeFatePackets(t *testing.T, net *simNet, s, x, u *simNode, now time.Time) *fatePackets {
	t.Helper()
	sender := peer(t, net, s, 2, now, x, u)
	mix := peer(t, net, x, 2, now, x, u)
	ctx := context.Background()
	viaX := func(p []byte) []byte {
		res, err := mix.Mix(ctx, p)
		if err != nil || res.Action != sdk.MixForward || res.NextHop != u.ID() {
			t.Fatalf("x's mixer on a packet for [x, u]: %+v, %v; want a forward to u", res, err)
		}
		return res.Packet
	}
	fp := &fatePackets{}
	for len(fp.forward) < ackSamples || len(fp.drop) < ackSamples {
		c, err := sender.Cover(ctx, sdk.CoverDrop)
		if err != nil {
			t.Fatalf("Cover: %v", err)
		}
		switch {
		case c.NextHop == u.ID() && len(fp.forward) < ackSamples:
			fp.forward = append(fp.forward, c.Data)
		case c.NextHop == x.ID() && len(fp.drop) < ackSamples:
			fp.drop = append(fp.drop, viaX(c.Data))
		}
	}
	for i := range ackSamples {
		pkts := route(t, sender, testMessage(100+i), x.ID())
		fp.exit = append(fp.exit, viaX(pkts[0]))
	}
	return fp
}

// ackLatencies hands every packet to receive in a random order, one at a
// time as a link delivers them, and returns the time each call took (what
// the previous hop sees between its last byte and the ack), by the
// packet's fate (own) and by the fate of the packet received just before
// it (prev), whose work after its ack overlaps this packet's store.
func ackLatencies(t *testing.T, fp *fatePackets, receive func([]byte) error) (own, prev map[string][]float64) {
	t.Helper()
	type job struct {
		fate string
		pkt  []byte
	}
	var jobs []job
	for fate, ps := range map[string][][]byte{"forward": fp.forward, "exit": fp.exit, "drop": fp.drop} {
		for _, p := range ps {
			jobs = append(jobs, job{fate, p})
		}
	}
	rand.Shuffle(len(jobs), func(i, j int) { jobs[i], jobs[j] = jobs[j], jobs[i] })
	own, prev = map[string][]float64{}, map[string][]float64{}
	for i, j := range jobs {
		start := time.Now()
		if err := receive(j.pkt); err != nil {
			t.Fatalf("Receive: %v", err)
		}
		d := float64(time.Since(start).Microseconds())
		own[j.fate] = append(own[j.fate], d)
		if i > 0 {
			prev[jobs[i-1].fate] = append(prev[jobs[i-1].fate], d)
		}
	}
	return own, prev
}

// fatesTell runs the KS test on each pair of fates and returns the
// smallest p-value with a description of every pair.
func fatesTell(lat map[string][]float64) (minP float64, report string) {
	minP = 1
	for _, pair := range [][2]string{{"forward", "drop"}, {"exit", "drop"}, {"forward", "exit"}} {
		a, b := lat[pair[0]], lat[pair[1]]
		d, p := ksTest(a, b)
		minP = min(minP, p)
		report += fmt.Sprintf("%s/%s: n=%d/%d median %.0f/%.0f µs, D=%.3f p=%.3g; ", pair[0], pair[1], len(a), len(b), median(a), median(b), d, p)
	}
	return minP, report
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}

// ackFamilyAlpha is the level of the six pairwise KS tests together (three
// pairs of fates, by own and by previous fate; Bonferroni: each must reach
// p > ackFamilyAlpha/6), so that a node whose ack depends on no fate fails
// the test in at most 1 % of runs.
const ackFamilyAlpha = 0.01

// Constant work until the ack: the time Receive takes (after it returns
// the transport acks) is the same for a packet u forwards, one that exits
// at u and a drop cover packet, and does not depend on the fate of the
// packet received before it either. 300 packets of each fate, received in
// a random order, pass the two-sample KS test pairwise, grouped by their
// own fate and by the previous packet's. An ack that came sooner for a
// drop would tell the previous hop which of its packets were cover, and
// tell a first hop that it is first; one that came later after a forward
// would tell it the same about the packet before.
func TestAckLatencyDoesNotDependOnFate(t *testing.T) {
	now := time.Now()
	net, s, x, u := fateNet(t, now)
	fp := makeFatePackets(t, net, s, x, u, now)
	h := startNode(t, net, u, nodeOptions{quiet: true, probe: 30 * time.Second})
	ctx := context.Background()

	own, prev := ackLatencies(t, fp, func(p []byte) error { return h.node.Receive(ctx, x.ID(), p) })
	minOwn, reportOwn := fatesTell(own)
	minPrev, reportPrev := fatesTell(prev)
	t.Logf("ack latency by fate: %s", reportOwn)
	t.Logf("ack latency by the previous packet's fate: %s", reportPrev)
	if minOwn <= ackFamilyAlpha/6 {
		t.Errorf("ack latency depends on the packet's fate (smallest p = %.3g <= %.3g): %s", minOwn, ackFamilyAlpha/6, reportOwn)
	}
	if minPrev <= ackFamilyAlpha/6 {
		t.Errorf("ack latency depends on the previous packet's fate (smallest p = %.3g <= %.3g): %s", minPrev, ackFamilyAlpha/6, reportPrev)
	}
	// Stores slower than the ack time (a loaded machine) are acked late;
	// the KS tests above say whether that showed.
	t.Logf("%d of %d packets stored later than the ack time", h.node.Stats.LateAcks.Load(), 3*ackSamples)
	// Every packet was really processed by its fate after the ack.
	st := &h.node.Stats
	eventually(t, "every packet unwrapped", func() bool {
		return st.Forwarded.Load() == ackSamples && st.Exited.Load() == ackSamples && st.CoverDropped.Load() == ackSamples
	})
	if st.Dropped.Load() != 0 || st.Replays.Load() != 0 {
		t.Errorf("%s; want nothing dropped as malformed or replayed", h.node.StatsLine())
	}
}

// The negative control of TestAckLatencyDoesNotDependOnFate: the same
// measurement and test detect a receive path that does fate-dependent work
// before the ack. The leaky path unwraps the packet with the real mixer
// first and, unless it is a drop, stores it once more in a scratch queue
// (one synced 64 KiB write, what storing a forward item or a fragment
// before the ack costs) before handing it to Receive.
func TestAckLatencyTestDetectsFateDependentWork(t *testing.T) {
	now := time.Now()
	net, s, x, u := fateNet(t, now)
	fp := makeFatePackets(t, net, s, x, u, now)
	h := startNode(t, net, u, nodeOptions{quiet: true, probe: 30 * time.Second})
	scratch, err := queue.Open(filepath.Join(t.TempDir(), "scratch"), queue.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer scratch.Close()
	ctx := context.Background()

	leaky := func(p []byte) error {
		res, err := h.plugin.Mix(ctx, p)
		if err != nil {
			return err
		}
		if res.Action != sdk.MixDrop {
			it := &queue.Item{ID: queue.NewID(), Msg: queue.NewID(), Kind: queue.KindPacketIn, Received: time.Now(), Deliverer: -1}
			if err := scratch.Put(it, p); err != nil {
				return err
			}
		}
		return h.node.Receive(ctx, x.ID(), p)
	}
	lat, _ := ackLatencies(t, fp, leaky)
	minP, report := fatesTell(lat)
	t.Logf("ack latency by fate, leaky path: %s", report)
	if minP > 0.01 {
		t.Errorf("the KS test missed fate-dependent work before the ack (smallest p = %.3g > 0.01): %s", minP, report)
	}
}

// The second negative control of TestAckLatencyDoesNotDependOnFate: a node
// that acks as soon as the packet is stored (no fixed ack time) lets the
// work done after the previous packet's ack, which depends on that
// packet's fate, show in this packet's ack; the same measurement detects
// it.
const ackControlRounds = 6

func TestAckLatencyTestDetectsWorkAfterEarlierAcks(t *testing.T) {
	now := time.Now()
	net, s, x, u := fateNet(t, now)
	h := startNode(t, net, u, nodeOptions{quiet: true, probe: 30 * time.Second, ackTime: -1})
	ctx := context.Background()

	// The effect is a fraction of a millisecond: on a loaded machine one
	// round can drown it (with batched stores the work after an ack is
	// small), so the control gets up to six rounds, each tested with the
	// samples of the rounds before it (more samples, more power).
	var minP float64
	var report string
	pooled := map[string][]float64{}
	for round := 1; round <= ackControlRounds; round++ {
		fp := makeFatePackets(t, net, s, x, u, now) // fresh packets: no replays
		_, prev := ackLatencies(t, fp, func(p []byte) error { return h.node.Receive(ctx, x.ID(), p) })
		for fate, v := range prev {
			pooled[fate] = append(pooled[fate], v...)
		}
		minP, report = fatesTell(pooled)
		t.Logf("round %d, ack latency by the previous packet's fate, ack at once: %s", round, report)
		if minP <= 0.01 {
			return
		}
	}
	t.Errorf("the KS test missed the previous packet's fate in the ack latency in %d rounds (last smallest p = %.3g > 0.01): %s", ackControlRounds, minP, report)
}
