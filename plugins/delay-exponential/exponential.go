package main

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"math"
	"time"

	"github.com/mixmta/mixmta/sdk"
)

// MinAcceptance is the smallest probability P(min <= X <= max), X ~
// Exp(mean), that Validate accepts. Below it, resampling would throw away
// more than 999 draws in 1000 and the delay an operator gets has little to
// do with the mean they wrote, so the configuration is treated as a mistake.
const MinAcceptance = 1e-3

// DefaultMaxFactor is the upper bound, in multiples of mean, used when max is
// left at 0: it cuts P(X > 10 × mean) = e^-10 ≈ 0.0045 % of the mass, so the
// distribution is practically untouched while no item is held for ever.
const DefaultMaxFactor = 10

// Exponential is the exponential distribution with mean Mean truncated to
// [Min, Max]: the distribution of X ~ Exp(Mean) conditioned on
// Min <= X <= Max, i.e. what rejecting and redrawing every sample outside the
// bounds yields. Nothing is clamped, so no probability mass piles up on Min
// or Max. The zero value is not usable: build one with a valid Config.
type Exponential struct {
	Mean, Min, Max time.Duration
}

// Acceptance returns P(Min <= X <= Max) for X ~ Exp(Mean): the fraction of
// untruncated draws that a resampling sampler would keep.
func (e Exponential) Acceptance() float64 {
	m := float64(e.Mean)
	// e^(-min/m) * (1 - e^(-(max-min)/m)), written with Expm1 so that a
	// narrow window keeps its precision.
	return math.Exp(-float64(e.Min)/m) * -math.Expm1(-float64(e.Max-e.Min)/m)
}

// CDF returns P(Y <= d) for Y drawn from the truncated distribution.
func (e Exponential) CDF(d time.Duration) float64 {
	switch {
	case d < e.Min:
		return 0
	case d >= e.Max:
		return 1
	}
	m := float64(e.Mean)
	return math.Expm1(-float64(d-e.Min)/m) / math.Expm1(-float64(e.Max-e.Min)/m)
}

// Sample returns n independent delays from the truncated distribution,
// reading 8 bytes of rng per delay (53 bits of a uniform U in [0, 1)).
//
// It samples exactly by inversion rather than by a rejection loop: by
// memorylessness, X | X >= Min is Min + Exp(Mean), and conditioning that on
// X <= Max gives Min + F^-1(U · F(w)) with w = Max - Min and
// F(t) = 1 - e^(-t/Mean). That is the same distribution a resampling loop
// produces, in one draw per delay and constant time (no spinning, and no
// timing that depends on the bounds). Rounding to whole nanoseconds keeps
// every delay inside [Min, Max].
//
// The only error is a failed read of rng, wrapped and naming the plugin.
func (e Exponential) Sample(rng io.Reader, n int) ([]time.Duration, error) {
	if n < 1 {
		return nil, fmt.Errorf("delay-exponential: %d delays asked, want at least 1", n)
	}
	buf := make([]byte, 8*n)
	if _, err := io.ReadFull(rng, buf); err != nil {
		return nil, fmt.Errorf("delay-exponential: reading randomness: %w", err)
	}
	m := float64(e.Mean)
	// -F(w), negative: the span of U·F(w) scaled into the window.
	negFw := math.Expm1(-float64(e.Max-e.Min) / m)
	out := make([]time.Duration, n)
	for i := range out {
		u := float64(binary.LittleEndian.Uint64(buf[8*i:])>>11) * 0x1p-53
		// F^-1(p) = -m·ln(1-p) with p = U·F(w); Log1p keeps small p exact.
		t := -m * math.Log1p(u*negFw)
		d := e.Min + time.Duration(t)
		out[i] = min(max(d, e.Min), e.Max)
	}
	return out, nil
}

// Delayer is the stage: it answers each Delay call with req.Count
// independent delays from Dist, reading Rand (crypto/rand in production).
// It never sees a message body or header. Safe for concurrent use when Rand
// is (crypto/rand.Reader is).
type Delayer struct {
	Dist Exponential
	Rand io.Reader
}

var _ sdk.Delayer = (*Delayer)(nil)

// Delay returns exactly req.Count delays, each in [Dist.Min, Dist.Max]. It
// fails only when Rand fails (a temporary error: the core retries).
func (d *Delayer) Delay(_ context.Context, req sdk.DelayRequest) ([]time.Duration, error) {
	return d.Dist.Sample(d.Rand, req.Count)
}
