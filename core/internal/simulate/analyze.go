package simulate

import (
	"math"
)

// maxRate stands for an infinite rate (a node that holds nothing: zero
// delay). e^(-maxRate·Δt) is 1 for Δt = 0 and 0 for any Δt a trace can
// show, so such a node's output is exactly its latest input.
const maxRate = 1e12

// Model is what the adversary knows of how long each node holds what it
// receives, as the rates of exponential delays (1/mean, per second), and of
// how much cover each node makes. Knowing the mean delays and the cover
// rates is the standard assumption: they are in the profile, and an
// observer of the links can estimate them.
type Model struct {
	// ForwardRate[n]: 1 / mean time a packet node n forwards stays in it.
	ForwardRate []float64
	// SubmitRate[n]: 1 / mean time from a submission at n to one of its
	// message's packets leaving n.
	SubmitRate []float64
	// ExitRate[n]: 1 / mean time from the last fragment of a message
	// reaching exit n to its delivery.
	ExitRate []float64
	// CoverRate[n]: cover packets (drop and loop) n creates per second.
	CoverRate []float64
}

// EstimateModel measures a Model from a trace's ground truth: the mean
// delays per node and the cover rates. This is an adversary that knows the
// network's parameters exactly.
func EstimateModel(tr *Trace) Model {
	n := tr.Nodes
	var (
		fwdSum, subSum, exitSum = make([]float64, n), make([]float64, n), make([]float64, n)
		fwdN, subN, exitN       = make([]float64, n), make([]float64, n), make([]float64, n)
		cover                   = make([]float64, n)
	)
	for _, e := range tr.Events {
		switch e.Kind {
		case Link:
			switch {
			case e.Cause < 0:
				cover[e.From]++
			case tr.Events[e.Cause].Kind == Link:
				fwdSum[e.From] += e.T - tr.Events[e.Cause].T
				fwdN[e.From]++
			default:
				subSum[e.From] += e.T - tr.Events[e.Cause].T
				subN[e.From]++
			}
		case Deliver:
			last := 0.0
			for _, f := range tr.Fragments[e.Msg] {
				last = max(last, tr.Events[f].T)
			}
			exitSum[e.From] += e.T - last
			exitN[e.From]++
		}
	}
	rate := func(sum, cnt float64) float64 {
		if cnt == 0 || sum <= 0 {
			return maxRate
		}
		return min(cnt/sum, maxRate)
	}
	m := Model{
		ForwardRate: make([]float64, n), SubmitRate: make([]float64, n),
		ExitRate: make([]float64, n), CoverRate: make([]float64, n),
	}
	for i := range n {
		m.ForwardRate[i] = rate(fwdSum[i], fwdN[i])
		m.SubmitRate[i] = rate(subSum[i], subN[i])
		m.ExitRate[i] = rate(exitSum[i], exitN[i])
		if tr.Duration > 0 {
			m.CoverRate[i] = cover[i] / tr.Duration
		}
	}
	return m
}

// ModelFor is the Model an adversary derives from a profile alone, for a
// network of n nodes that all run it: mean delays in seconds (message
// delay at the entry, hop delay, exit delay), each plus the mean wait in
// the pool (half its window), and the cover packets a node creates per
// second. It needs no ground truth, so it also serves traces of a real
// network.
func ModelFor(n int, msgMean, hopMean, exitMean, window, coverRate float64) Model {
	rate := func(mean float64) float64 {
		if mean += window / 2; mean <= 0 {
			return maxRate
		}
		return min(1/mean, maxRate)
	}
	m := Model{
		ForwardRate: make([]float64, n), SubmitRate: make([]float64, n),
		ExitRate: make([]float64, n), CoverRate: make([]float64, n),
	}
	for i := range n {
		m.ForwardRate[i], m.SubmitRate[i], m.ExitRate[i] = rate(hopMean), rate(msgMean), rate(exitMean)
		m.CoverRate[i] = coverRate
	}
	return m
}

// Result is the adversary's verdict on one delivered message.
type Result struct {
	Msg int32 `json:"msg"`
	// Entropy in bits of the adversary's distribution over senders.
	Entropy float64 `json:"entropy_bits"`
	// PSender is the probability the adversary gives the true sender;
	// Traced is PSender >= TracedThreshold.
	PSender float64 `json:"p_sender"`
	Traced  bool    `json:"traced"`
}

// TracedThreshold: a message whose true sender gets at least this
// probability counts as traced end to end.
const TracedThreshold = 0.99

// agg is a decaying sum of distributions over senders (index Users is
// "cover"): at time t it holds Σ_i e^(-rate·(t-t_i)) d_i over what was
// added at times t_i. With rate the node's rate of exponential delay this
// is, up to a factor, the likelihood of each sender for a packet leaving
// the node at t: the exponential mix's weights f(t - t_i) of Danezis, "The
// Traffic Analysis of Continuous-Time Mixes" (PET 2004), §3. Stored as
// scale·v so that decay is O(1).
type agg struct {
	v     []float64
	scale float64
	t     float64
	rate  float64
}

func newAgg(k int, rate float64) *agg {
	return &agg{v: make([]float64, k), scale: 1, rate: rate}
}

func (a *agg) decay(t float64) {
	if t > a.t {
		a.scale *= math.Exp(-a.rate * (t - a.t))
		a.t = t
	}
	if a.scale < 1e-100 {
		if a.scale == 0 {
			clear(a.v)
		} else {
			for i := range a.v {
				a.v[i] *= a.scale
			}
		}
		a.scale = 1
	}
}

func (a *agg) add(d []float64) {
	w := 1 / a.scale
	for i, x := range d {
		if x != 0 {
			a.v[i] += x * w
		}
	}
}

func (a *agg) addUnit(i int) { a.v[i] += 1 / a.scale }

// into adds f times the current value to out.
func (a *agg) into(out []float64, f float64) {
	f *= a.scale
	if f == 0 {
		return
	}
	for i, x := range a.v {
		out[i] += x * f
	}
}

// Analyze runs the adversary over a trace: a global passive observer of
// every link (and of every submission and delivery), helped by the
// compromised nodes, which reveal for each packet they send the packet
// they received (or that they made it as cover), and as an exit which
// fragments a delivered message came from. For every message delivered
// after tr.Warmup it returns the adversary's distribution's entropy.
//
// The observer propagates a distribution over senders along every packet:
// a packet leaving an honest node n at t gets the mixture
//
//	ForwardRate·Σ e^(-ForwardRate·Δt) d_in + SubmitRate·Σ e^(-SubmitRate·Δt) e_user + CoverRate·e_cover
//
// over what entered n before (the likelihood of each way the packet could
// have come about, under exponential delays), normalized. A delivery at an
// honest exit gets the same over the exit's arrivals with ExitRate. The
// exponential weights make this the exact posterior for a network of
// continuous-time (exponential) mixes, and a well-informed estimate for
// other delays. compromised may be nil.
func Analyze(tr *Trace, m Model, compromised []bool) []Result {
	k := tr.Users + 1 // the last entry is "cover"
	coverIdx := tr.Users
	fwd := make([]*agg, tr.Nodes)
	sub := make([]*agg, tr.Nodes)
	arr := make([]*agg, tr.Nodes)
	for n := range tr.Nodes {
		fwd[n] = newAgg(k, m.ForwardRate[n])
		sub[n] = newAgg(k, m.SubmitRate[n])
		arr[n] = newAgg(k, m.ExitRate[n])
	}
	bad := func(n int32) bool { return compromised != nil && compromised[n] }
	// What compromised nodes received, by event index, until they use it.
	held := map[int32][]float64{}
	d := make([]float64, k)
	var out []Result
	for i, e := range tr.Events {
		switch e.Kind {
		case Submit:
			sub[e.To].decay(e.T)
			sub[e.To].addUnit(int(e.From))
		case Link:
			x := e.From
			clear(d)
			switch {
			case bad(x) && e.Cause < 0:
				d[coverIdx] = 1
			case bad(x) && tr.Events[e.Cause].Kind == Submit:
				d[tr.Events[e.Cause].From] = 1
			case bad(x):
				copy(d, held[e.Cause])
				delete(held, e.Cause)
			default:
				fwd[x].decay(e.T)
				sub[x].decay(e.T)
				fwd[x].into(d, m.ForwardRate[x])
				sub[x].into(d, m.SubmitRate[x])
				d[coverIdx] += m.CoverRate[x]
				if !normalize(d) {
					d[coverIdx] = 1
				}
			}
			y := e.To
			fwd[y].decay(e.T)
			fwd[y].add(d)
			arr[y].decay(e.T)
			arr[y].add(d)
			if bad(y) && (!e.Terminal || e.Msg >= 0) {
				held[int32(i)] = append([]float64(nil), d...)
			}
		case Deliver:
			x := e.From
			clear(d)
			if bad(x) {
				exitKnows(d, held, tr.Fragments[e.Msg], tr.Users)
			} else {
				arr[x].decay(e.T)
				arr[x].into(d, 1)
			}
			d[coverIdx] = 0 // a delivered message is real
			if !normalize(d) {
				// Nothing explains it: the adversary knows nothing.
				for u := range tr.Users {
					d[u] = 1 / float64(tr.Users)
				}
				d[coverIdx] = 0
			}
			if tr.Submitted[e.Msg] < tr.Warmup {
				continue
			}
			ps := d[tr.Sender[e.Msg]]
			out = append(out, Result{Msg: e.Msg, Entropy: entropy(d), PSender: ps, Traced: ps >= TracedThreshold})
		}
	}
	return out
}

// exitKnows is what a compromised exit learns of a message's sender: each
// fragment's distribution, and that all of them come from one sender, so
// the product of the fragments' distributions, normalized.
func exitKnows(d []float64, held map[int32][]float64, frags []int32, users int) {
	for u := range users {
		d[u] = 1
	}
	for _, f := range frags {
		h := held[f]
		delete(held, f)
		if h == nil {
			continue
		}
		s := 0.0
		for u := range users {
			d[u] *= h[u]
			s += d[u]
		}
		if s == 0 {
			// Contradictory evidence (numerically): fall back to this
			// fragment alone.
			copy(d[:users], h[:users])
			continue
		}
		for u := range users {
			d[u] /= s
		}
	}
}

func normalize(d []float64) bool {
	s := 0.0
	for _, x := range d {
		s += x
	}
	if s <= 0 || math.IsNaN(s) || math.IsInf(s, 0) {
		return false
	}
	for i := range d {
		d[i] /= s
	}
	return true
}

// entropy in bits of a normalized distribution.
func entropy(d []float64) float64 {
	h := 0.0
	for _, p := range d {
		if p > 0 {
			h -= p * math.Log2(p)
		}
	}
	return h
}
