package simulate

import (
	"fmt"
	"io"
	"math"
	"slices"
)

// Summary is what a run reports: the adversary's success and the costs.
type Summary struct {
	// Scenario names the adversary: "global passive" or "global passive +
	// 20% compromised".
	Scenario string `json:"scenario"`
	// Compromised is the fraction of nodes the adversary holds.
	Compromised float64 `json:"compromised"`
	Messages    int     `json:"messages"`
	// Entropy of the sender distribution, bits: mean and percentiles over
	// the scored messages. MaxEntropy is log2 of the number of users, the
	// most a message can have.
	EntropyMean float64 `json:"entropy_mean_bits"`
	EntropyP5   float64 `json:"entropy_p5_bits"`
	EntropyP50  float64 `json:"entropy_p50_bits"`
	EntropyP95  float64 `json:"entropy_p95_bits"`
	MaxEntropy  float64 `json:"max_entropy_bits"`
	// PTraced is the fraction of messages whose true sender the adversary
	// gives at least TracedThreshold.
	PTraced float64 `json:"p_traced"`
}

// Costs are independent of the adversary.
type Costs struct {
	Submitted int `json:"submitted"`
	Delivered int `json:"delivered"`
	// Latency from submission to delivery, seconds.
	LatencyP50 float64 `json:"latency_p50_s"`
	LatencyP95 float64 `json:"latency_p95_s"`
	LatencyP99 float64 `json:"latency_p99_s"`
	// CoverOverhead: cover packets per real packet.
	CoverOverhead float64 `json:"cover_overhead"`
	// PacketsPerSecond on all links together.
	PacketsPerSecond float64 `json:"link_packets_per_s"`
	MaxSendQueue     int     `json:"max_send_queue"`
}

// Summarize reduces per-message results.
func Summarize(scenario string, compromised float64, users int, rs []Result) Summary {
	s := Summary{Scenario: scenario, Compromised: compromised, Messages: len(rs), MaxEntropy: math.Log2(float64(users))}
	if len(rs) == 0 {
		return s
	}
	h := make([]float64, len(rs))
	traced := 0
	for i, r := range rs {
		h[i] = r.Entropy
		s.EntropyMean += r.Entropy
		if r.Traced {
			traced++
		}
	}
	slices.Sort(h)
	s.EntropyMean /= float64(len(rs))
	s.EntropyP5, s.EntropyP50, s.EntropyP95 = quantile(h, 0.05), quantile(h, 0.5), quantile(h, 0.95)
	s.PTraced = float64(traced) / float64(len(rs))
	return s
}

// CostsOf reads the costs of a run.
func CostsOf(c Counts, duration float64) Costs {
	l := slices.Clone(c.Latency)
	slices.Sort(l)
	out := Costs{
		Submitted: c.Messages, Delivered: c.Delivered,
		LatencyP50: quantile(l, 0.5), LatencyP95: quantile(l, 0.95), LatencyP99: quantile(l, 0.99),
		MaxSendQueue: c.MaxSendQueue,
	}
	if c.RealPackets > 0 {
		out.CoverOverhead = float64(c.CoverPackets) / float64(c.RealPackets)
	}
	if duration > 0 {
		out.PacketsPerSecond = float64(c.LinkEvents) / duration
	}
	return out
}

// quantile of sorted values (nearest rank); 0 for none.
func quantile(sorted []float64, q float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(q*float64(len(sorted)))) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

// Verdict is one line an operator reads: whether the configuration gives
// anonymity worth the name against this adversary.
func (s Summary) Verdict() string {
	switch {
	case s.Messages == 0:
		return "no message was delivered after the warm-up: run longer"
	case s.EntropyMean < 1 || s.PTraced > 0.5:
		return fmt.Sprintf("LEAKS: senders are traced (%.0f%% of messages, mean %.2f bits): add delays, cover traffic or users", 100*s.PTraced, s.EntropyMean)
	case s.EntropyMean < s.MaxEntropy/2:
		return fmt.Sprintf("weak: on average the adversary narrows a sender down to about %.0f of %.0f users", math.Exp2(s.EntropyMean), math.Exp2(s.MaxEntropy))
	default:
		return fmt.Sprintf("ok: on average a sender hides among about %.0f of %.0f users", math.Exp2(s.EntropyMean), math.Exp2(s.MaxEntropy))
	}
}

// WriteText prints a report for operators.
func WriteText(w io.Writer, c Costs, ss []Summary) {
	fmt.Fprintf(w, "messages: %d submitted, %d delivered\n", c.Submitted, c.Delivered)
	fmt.Fprintf(w, "latency: p50 %s, p95 %s, p99 %s\n", secs(c.LatencyP50), secs(c.LatencyP95), secs(c.LatencyP99))
	fmt.Fprintf(w, "cover traffic: %.2f cover packets per real packet; %.2f packets/s on all links; longest send queue %d\n", c.CoverOverhead, c.PacketsPerSecond, c.MaxSendQueue)
	for _, s := range ss {
		fmt.Fprintf(w, "\nadversary: %s (%d messages scored)\n", s.Scenario, s.Messages)
		fmt.Fprintf(w, "  sender anonymity: mean %.2f bits (p5 %.2f, p50 %.2f, p95 %.2f; at most %.2f)\n", s.EntropyMean, s.EntropyP5, s.EntropyP50, s.EntropyP95, s.MaxEntropy)
		fmt.Fprintf(w, "  traced end to end: %.1f%% of messages\n", 100*s.PTraced)
		fmt.Fprintf(w, "  %s\n", s.Verdict())
	}
}

func secs(s float64) string {
	switch {
	case s >= 3600:
		return fmt.Sprintf("%.1fh", s/3600)
	case s >= 60:
		return fmt.Sprintf("%.1fm", s/60)
	default:
		return fmt.Sprintf("%.2fs", s)
	}
}
