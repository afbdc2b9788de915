package simulate

import (
	"math/rand/v2"
	"testing"
)

// BenchmarkSimulateDay: one simulated day of a 20-node, 3-hop network at a
// fog-like load (10 users per node, 4 messages a day each, drop 0.05/s and
// loop 0.02/s per node, hour-scale message delays, 30 s hop delays, a 30 s
// pool), simulated and analysed by the adversary. Reports simulated
// messages per second of wall time.
func BenchmarkSimulateDay(b *testing.B) {
	r := rand.New(rand.NewPCG(1, 1))
	net := Network{
		Nodes: 20, Exits: 20, Hops: 3, FragmentPayload: DefaultFragmentPayload,
		MsgDelay: Exp{Mean: 4 * 3600, R: r}, HopDelay: Exp{Mean: 30, R: r},
		Pool:     Pool{Window: 30, MinPool: 5, SendFraction: 0.65},
		DropRate: 0.05, LoopRate: 0.02,
	}
	work := Workload{UsersPerNode: 10, Rate: 4.0 / 86400, Size: BuiltinSize, Duration: 86400, Warmup: 0}
	msgs := 0
	for i := 0; b.Loop(); i++ {
		work.Seed = uint64(i)
		tr, c, err := Run(net, work)
		if err != nil {
			b.Fatal(err)
		}
		Analyze(tr, EstimateModel(tr), nil)
		msgs += c.Messages
	}
	b.ReportMetric(float64(msgs)/b.Elapsed().Seconds(), "msgs/s")
}
