package main

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"time"

	"github.com/mixmta/mixmta/sdk"
)

// MinAcceptance is the smallest probability P(kmin <= K <= kmax),
// K ~ Poisson(lambda), that Validate accepts. Resampling draws 1/P times
// per delay on average, so below it a delay would cost thousands of draws,
// and the delays would have little to do with the configured lambda.
const MinAcceptance = 1e-3

// MaxLambda bounds lambda. Beyond it the delay's relative spread
// 1/sqrt(lambda) is under 0.03 %, a constant delay in all but name, and
// computing the acceptance probability at config time gets slow: use a
// larger unit instead.
const MaxLambda = 1e7

// ptrsMinLambda is where sampling switches from Knuth's multiplication
// method (O(lambda) uniforms per draw) to PTRS (O(1)); PTRS is exact for
// lambda >= 10 (Hörmann 1993, §2).
const ptrsMinLambda = 10

// maxUniformsPerDelay caps the uniforms one delay may consume, resampling
// included. With P >= MinAcceptance and lambda < 10 a delay needs about
// 11/P <= 11,000 on average; reaching 2^20 has probability below e^-90, so
// it only ever trips on a broken randomness source, which then gets an
// error instead of a hung stage.
const maxUniformsPerDelay = 1 << 20

// errRandomness is returned when a delay exhausts maxUniformsPerDelay.
var errRandomness = errors.New("delay-poisson: no delay inside [min, max] after 2^20 random draws: the randomness source is broken")

// Poisson is the delay K × Unit with K ~ Poisson(Lambda) conditioned on
// KMin <= K <= KMax: the distribution that rejecting and redrawing every K
// outside the bounds yields. Nothing is clamped, so no probability mass
// piles up on the bounds. Build it with NewPoisson.
type Poisson struct {
	Lambda     float64
	Unit       time.Duration
	KMin, KMax int64

	expNegLambda float64 // Knuth: e^-lambda
	// PTRS constants (Hörmann 1993, algorithm PTRS).
	logLambda, a, b, logInvAlpha, vr float64
}

// NewPoisson returns the distribution for lambda > 0 and unit > 0 with
// delays bounded to [minD, maxD]; maxD == 0 means no upper bound beyond what
// a time.Duration holds. The bounds are rounded inward to whole units:
// KMin = ceil(minD/unit), KMax = floor(maxD/unit). It does not validate:
// see Config.Validate.
func NewPoisson(lambda float64, unit, minD, maxD time.Duration) *Poisson {
	p := &Poisson{Lambda: lambda, Unit: unit}
	if unit > 0 {
		p.KMin = int64(minD / unit)
		if minD%unit != 0 {
			p.KMin++
		}
		p.KMax = int64(maxD / unit)
		if maxD == 0 {
			p.KMax = math.MaxInt64 / int64(unit)
		}
	}
	p.expNegLambda = math.Exp(-lambda)
	p.logLambda = math.Log(lambda)
	p.b = 0.931 + 2.53*math.Sqrt(lambda)
	p.a = -0.059 + 0.02483*p.b
	p.logInvAlpha = math.Log(1.1239 + 1.1328/(p.b-3.4))
	p.vr = 0.9277 - 3.6224/(p.b-2)
	return p
}

// logPMF is ln P(K = k) for K ~ Poisson(lambda), k >= 0.
func logPMF(k int64, lambda float64) float64 {
	lg, _ := math.Lgamma(float64(k) + 1)
	return -lambda + float64(k)*math.Log(lambda) - lg
}

// Mass returns P(lo <= K <= hi) for K ~ Poisson(p.Lambda). Terms more than
// 40 standard deviations (plus 40) from lambda are left out: together they
// weigh less than 1e-300.
func (p *Poisson) Mass(lo, hi int64) float64 {
	sd := math.Sqrt(p.Lambda)
	lo = max(lo, int64(max(0, math.Floor(p.Lambda-40*sd-40))))
	hi = min(hi, int64(math.Ceil(p.Lambda+40*sd+40)))
	var sum float64
	for k := lo; k <= hi; k++ {
		sum += math.Exp(logPMF(k, p.Lambda))
	}
	return min(sum, 1)
}

// Acceptance returns P(KMin <= K <= KMax): the fraction of untruncated
// draws that resampling keeps.
func (p *Poisson) Acceptance() float64 { return p.Mass(p.KMin, p.KMax) }

// Sample returns n independent delays K × Unit, each K drawn from
// Poisson(Lambda) and redrawn until KMin <= K <= KMax. Uniforms are 53-bit
// floats in [0, 1) read from rng, 8 bytes each, in blocks of 512 bytes.
//
// Errors (naming the plugin): a failed read of rng, or errRandomness when
// one delay exhausts maxUniformsPerDelay.
func (p *Poisson) Sample(rng io.Reader, n int) ([]time.Duration, error) {
	if n < 1 {
		return nil, fmt.Errorf("delay-poisson: %d delays asked, want at least 1", n)
	}
	src := &uniforms{r: rng}
	src.i = len(src.buf)
	out := make([]time.Duration, n)
	for i := range out {
		src.budget = maxUniformsPerDelay
		for {
			k, err := p.draw(src)
			if err != nil {
				return nil, err
			}
			if k >= p.KMin && k <= p.KMax {
				out[i] = time.Duration(k) * p.Unit
				break
			}
		}
	}
	return out, nil
}

// draw returns one untruncated Poisson(Lambda) variate.
func (p *Poisson) draw(src *uniforms) (int64, error) {
	if p.Lambda < ptrsMinLambda {
		return knuth(src, p.expNegLambda)
	}
	return p.ptrs(src)
}

// knuth is the multiplication method (Knuth, TAOCP vol. 2, §3.4.1 F): the
// number of uniforms whose running product stays above e^-lambda. It uses
// lambda + 1 uniforms on average; expNegLambda is e^-lambda.
func knuth(src *uniforms, expNegLambda float64) (int64, error) {
	var k int64
	prod := 1.0
	for {
		u, err := src.next()
		if err != nil {
			return 0, err
		}
		prod *= u
		if prod <= expNegLambda {
			return k, nil
		}
		k++
	}
}

// ptrs is the transformed rejection method with squeeze, algorithm PTRS of
// W. Hörmann, "The transformed rejection method for generating Poisson
// random variables", Insurance: Mathematics and Economics 12 (1993) 39-45,
// with the constants as in NumPy's random_poisson_ptrs. Exact for
// lambda >= 10; 2.25 to 2.65 uniforms per variate (measured, lambda 1e6
// down to 10).
func (p *Poisson) ptrs(src *uniforms) (int64, error) {
	for {
		u, err := src.next()
		if err != nil {
			return 0, err
		}
		v, err := src.next()
		if err != nil {
			return 0, err
		}
		u -= 0.5
		us := 0.5 - math.Abs(u)
		if us == 0 {
			// u = -0.5 would make k -Inf (not an integer); the paper's U is
			// open at both ends, so redraw.
			continue
		}
		kf := math.Floor((2*p.a/us+p.b)*u + p.Lambda + 0.43)
		if us >= 0.07 && v <= p.vr {
			return int64(kf), nil
		}
		if kf < 0 || (us < 0.013 && v > us) {
			continue
		}
		lg, _ := math.Lgamma(kf + 1)
		// log(v) = -Inf for v = 0 accepts, as the paper's test does.
		if math.Log(v)+p.logInvAlpha-math.Log(p.a/(us*us)+p.b) <= -p.Lambda+kf*p.logLambda-lg {
			return int64(kf), nil
		}
	}
}

// uniforms hands out 53-bit floats in [0, 1) from a randomness reader,
// reading 512 bytes at a time, and at most budget of them.
type uniforms struct {
	r      io.Reader
	buf    [512]byte
	i      int
	budget int
}

func (s *uniforms) next() (float64, error) {
	if s.budget <= 0 {
		return 0, errRandomness
	}
	s.budget--
	if s.i == len(s.buf) {
		if _, err := io.ReadFull(s.r, s.buf[:]); err != nil {
			return 0, fmt.Errorf("delay-poisson: reading randomness: %w", err)
		}
		s.i = 0
	}
	x := binary.LittleEndian.Uint64(s.buf[s.i:])
	s.i += 8
	return float64(x>>11) * 0x1p-53, nil
}

// Delayer is the stage: it answers each Delay call with req.Count
// independent delays from Dist, reading Rand (crypto/rand in production).
// It never sees a message body or header. Safe for concurrent use when Rand
// is (crypto/rand.Reader is).
type Delayer struct {
	Dist *Poisson
	Rand io.Reader
}

var _ sdk.Delayer = (*Delayer)(nil)

// Delay returns exactly req.Count delays, each a whole number of units in
// [min, max]. It fails only when Rand fails (a temporary error: the core
// retries).
func (d *Delayer) Delay(_ context.Context, req sdk.DelayRequest) ([]time.Duration, error) {
	return d.Dist.Sample(d.Rand, req.Count)
}
