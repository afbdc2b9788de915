package simulate

import (
	"math/rand/v2"
	"testing"
)

func fixedSize(n int) func(*rand.Rand) int { return func(*rand.Rand) int { return n } }

// smallNet is a 6-node, 3-hop network with 10 users per node sending a
// message every 100 s each, with the given per-hop and message delays
// (means, seconds; 0 = none) and cover rates.
func smallNet(seed uint64, hop, msg, cover float64) (Network, Workload) {
	r := rand.New(rand.NewPCG(seed, 2))
	n := Network{Nodes: 6, Exits: 6, Hops: 3, FragmentPayload: 65200, DropRate: cover, LoopRate: cover}
	if hop > 0 {
		n.HopDelay = Exp{Mean: hop, R: r}
	}
	if msg > 0 {
		n.MsgDelay = Exp{Mean: msg, R: r}
	}
	w := Workload{UsersPerNode: 10, Rate: 0.01, Size: fixedSize(2000), Duration: 4000, Warmup: 500, Seed: seed}
	return n, w
}

func run(t *testing.T, n Network, w Workload, compromised []bool) (Summary, Costs) {
	t.Helper()
	tr, c, err := Run(n, w)
	if err != nil {
		t.Fatal(err)
	}
	rs := Analyze(tr, EstimateModel(tr), compromised)
	return Summarize("test", 0, tr.Users, rs), CostsOf(c, w.Duration)
}

// TestNoDelayNoCoverLeaksEverything is the negative control the tool must
// get right: without delays and cover traffic, a global passive observer
// follows every packet, so the entropy is near 0 bits and the verdict says
// the configuration leaks.
func TestNoDelayNoCoverLeaksEverything(t *testing.T) {
	n, w := smallNet(1, 0, 0, 0)
	s, _ := run(t, n, w, nil)
	t.Logf("no delay, no cover: %.3f bits mean, %.0f%% traced; %s", s.EntropyMean, 100*s.PTraced, s.Verdict())
	if s.Messages < 100 || s.EntropyMean > 0.1 || s.PTraced < 0.95 {
		t.Fatalf("a network without delays or cover gave %.3f bits and traced %.0f%% of %d messages; want ~0 bits and ~all traced", s.EntropyMean, 100*s.PTraced, s.Messages)
	}
	if v := s.Verdict(); v[:5] != "LEAKS" {
		t.Fatalf("verdict %q does not say the configuration leaks", v)
	}
}

// TestDelaysAndCoverGiveAnonymity: the same network with per-hop delays
// and cover hides senders among many users, and more delay gives more
// entropy.
func TestDelaysAndCoverGiveAnonymity(t *testing.T) {
	n, w := smallNet(2, 10, 0, 0.05)
	short, _ := run(t, n, w, nil)
	n, w = smallNet(2, 60, 0, 0.05)
	long, _ := run(t, n, w, nil)
	t.Logf("hop delay 10 s: %.2f bits, %.1f%% traced; 60 s: %.2f bits, %.1f%% traced (max %.2f)", short.EntropyMean, 100*short.PTraced, long.EntropyMean, 100*long.PTraced, long.MaxEntropy)
	if short.EntropyMean < 2 || long.EntropyMean <= short.EntropyMean+0.3 {
		t.Fatalf("entropy %.2f bits with 10 s hop delays and %.2f with 60 s: want > 2 bits and growing with the delay", short.EntropyMean, long.EntropyMean)
	}
}

// TestCompromisedNodesReduceAnonymity: the more nodes the adversary holds,
// the less entropy; holding all of them traces every message.
func TestCompromisedNodesReduceAnonymity(t *testing.T) {
	n, w := smallNet(3, 20, 0, 0.05)
	tr, _, err := Run(n, w)
	if err != nil {
		t.Fatal(err)
	}
	m := EstimateModel(tr)
	prev := 1e9
	for _, held := range []int{0, 2, 4, 6} {
		c := make([]bool, n.Nodes)
		for i := range held {
			c[i] = true
		}
		s := Summarize("test", 0, tr.Users, Analyze(tr, m, c))
		t.Logf("%d of %d nodes compromised: %.2f bits, %.1f%% traced", held, n.Nodes, s.EntropyMean, 100*s.PTraced)
		if s.EntropyMean > prev+0.05 {
			t.Errorf("%d compromised nodes gave more entropy (%.2f) than fewer (%.2f)", held, s.EntropyMean, prev)
		}
		prev = s.EntropyMean
		if held == n.Nodes && s.PTraced < 0.999 {
			t.Errorf("with every node compromised only %.1f%% of messages were traced", 100*s.PTraced)
		}
	}
}
