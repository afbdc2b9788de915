package simulate

import (
	"math"
	"math/rand/v2"
	"testing"
)

// singleMix is a network in which each message crosses exactly one
// continuous-time mix with exponential delays of rate mu, fed by a Poisson
// stream of rate lambda from many users (so that two messages of one user
// rarely meet in the mix): the entry forwards at once, the exit holds each
// message Exp(1/mu) before delivering it.
func singleMix(t testing.TB, lambda, mu float64, messages int, seed uint64) []Result {
	r := rand.New(rand.NewPCG(seed, 1))
	warm := 15 / mu
	dur := warm + float64(messages)/(2*lambda)
	net := Network{Nodes: 2, Exits: 2, Hops: 1, FragmentPayload: 1 << 16, ExitDelay: Exp{Mean: 1 / mu, R: r}}
	work := Workload{
		// Both nodes carry a stream of rate lambda into the other, every
		// message from a sender of its own.
		UsersPerNode: int(lambda * dur),
		OneEach:      true,
		Size:         func(*rand.Rand) int { return 1000 },
		Duration:     dur,
		Warmup:       warm,
		Seed:         seed,
	}
	tr, _, err := Run(net, work)
	if err != nil {
		t.Fatal(err)
	}
	return Analyze(tr, EstimateModel(tr), nil)
}

func meanEntropy(rs []Result) float64 {
	s := 0.0
	for _, r := range rs {
		s += r.Entropy
	}
	return s / float64(len(rs))
}

// TestSingleMixEntropyMatchesClosedForm: for one continuous-time mix with
// Poisson arrivals of rate λ and exponential delays of rate μ, Danezis (PET
// 2004, §3) gives the sender entropy log2(e·λ/μ) bits. The simulator and
// the adversary must agree with it within 2% over a range of λ/μ.
func TestSingleMixEntropyMatchesClosedForm(t *testing.T) {
	for _, ratio := range []float64{10, 30, 100, 200} {
		rs := singleMix(t, ratio, 1, 3000, uint64(ratio))
		got := meanEntropy(rs)
		want := math.Log2(math.E * ratio)
		t.Logf("λ/μ = %4.0f: simulated %.3f bits over %d messages, closed form %.3f bits (%+.2f%%)", ratio, got, len(rs), want, 100*(got-want)/want)
		if math.Abs(got-want) > 0.02*want {
			t.Errorf("λ/μ = %v: simulated entropy %.3f bits, closed form %.3f: more than 2%% apart", ratio, got, want)
		}
	}
}

// TestClosedFormCheckDetectsAWrongModel is the negative control of the
// closed-form test: an adversary that believes the mix is three times as
// fast as it is gets an entropy the 2% check rejects.
func TestClosedFormCheckDetectsAWrongModel(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 1))
	net := Network{Nodes: 2, Exits: 2, Hops: 1, FragmentPayload: 1 << 16, ExitDelay: Exp{Mean: 1, R: r}}
	work := Workload{UsersPerNode: 30 * 60, OneEach: true, Size: func(*rand.Rand) int { return 1000 }, Duration: 60, Warmup: 15, Seed: 7}
	tr, _, err := Run(net, work)
	if err != nil {
		t.Fatal(err)
	}
	m := EstimateModel(tr)
	for i := range m.ExitRate {
		m.ExitRate[i] *= 3
	}
	got, want := meanEntropy(Analyze(tr, m, nil)), math.Log2(math.E*30)
	t.Logf("wrong model: %.3f bits, closed form %.3f", got, want)
	if math.Abs(got-want) <= 0.02*want {
		t.Fatalf("an adversary with a 3x wrong delay rate still matched the closed form (%.3f vs %.3f): the check cannot fail", got, want)
	}
}
