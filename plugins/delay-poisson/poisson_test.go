package main

import (
	"bytes"
	cryptorand "crypto/rand"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/mixmta/mixmta/sdk"
)

// seeded is a reproducible randomness source for tests: ChaCha8 keyed by
// seed, read as an io.Reader exactly like crypto/rand in production.
func seeded(seed uint64) io.Reader {
	var key [32]byte
	for i := range 8 {
		key[i] = byte(seed >> (8 * i))
	}
	return rand.NewChaCha8(key)
}

// Upper standard normal quantiles for the chi-square critical values.
const (
	z001  = 3.090232 // alpha = 0.001
	z005  = 1.644854 // alpha = 0.05
	z1em6 = 4.753424 // alpha = 1e-6
)

// chiSquareCritical is the upper-alpha quantile of chi-square with df
// degrees of freedom by the Wilson–Hilferty approximation (1931), z being
// the standard normal upper-alpha quantile.
func chiSquareCritical(df int, z float64) float64 {
	h := 2 / (9 * float64(df))
	return float64(df) * math.Pow(1-h+z*math.Sqrt(h), 3)
}

// truncPoissonProbs returns P(K = k | lo <= K <= hi) for K ~ Poisson(lambda)
// over the k that matter (beyond 12 sd + 30 of lambda the mass is < 1e-30),
// computed here independently of the code under test.
func truncPoissonProbs(lambda float64, lo, hi int64) (first int64, probs []float64) {
	sd := math.Sqrt(lambda)
	first = max(lo, int64(max(0, lambda-12*sd-30)))
	last := min(hi, int64(lambda+12*sd+30))
	var total float64
	for k := first; k <= last; k++ {
		lg, _ := math.Lgamma(float64(k + 1))
		p := math.Exp(float64(k)*math.Log(lambda) - lambda - lg)
		probs = append(probs, p)
		total += p
	}
	for i := range probs {
		probs[i] /= total
	}
	return first, probs
}

// chiSquareFit bins ks by k, merging neighbours (tails included) until each
// bin expects at least 5 samples, and reports an error when the statistic
// exceeds the critical value for bins-1 degrees of freedom at the alpha
// whose normal quantile is z.
func chiSquareFit(ks []int64, lambda float64, lo, hi int64, z float64) error {
	first, probs := truncPoissonProbs(lambda, lo, hi)
	n := float64(len(ks))
	// binOf[i] is the bin of k = first+i; ends[b] the last index of bin b.
	binOf := make([]int, len(probs))
	var expected []float64
	acc := 0.0
	for i, p := range probs {
		acc += n * p
		binOf[i] = len(expected)
		if acc >= 5 {
			expected = append(expected, acc)
			acc = 0
		}
	}
	if acc > 0 { // the short right tail joins the last full bin
		if len(expected) == 0 {
			return fmt.Errorf("chi-square: fewer than 5 samples expected in all")
		}
		expected[len(expected)-1] += acc
		for i := len(probs) - 1; i >= 0 && binOf[i] == len(expected); i-- {
			binOf[i] = len(expected) - 1
		}
	}
	if len(expected) < 2 {
		return fmt.Errorf("chi-square: only %d bin, nothing to test", len(expected))
	}
	observed := make([]float64, len(expected))
	for _, k := range ks {
		i := min(max(k-first, 0), int64(len(probs)-1))
		observed[binOf[i]]++
	}
	var stat float64
	for b := range expected {
		d := observed[b] - expected[b]
		stat += d * d / expected[b]
	}
	df := len(expected) - 1
	if crit := chiSquareCritical(df, z); stat > crit {
		return fmt.Errorf("chi-square = %.1f > critical %.1f (df = %d, n = %d)", stat, crit, df, len(ks))
	}
	return nil
}

// units turns delays back into k, failing on a delay that is not a whole
// number of units.
func units(t *testing.T, ds []time.Duration, unit time.Duration) []int64 {
	t.Helper()
	ks := make([]int64, len(ds))
	for i, d := range ds {
		if d%unit != 0 {
			t.Fatalf("delay %s is not a whole number of units of %s", d, unit)
		}
		ks[i] = int64(d / unit)
	}
	return ks
}

// checkBounds reports a k outside [lo, hi], or more samples on a bound than
// its own probability explains (expected + 5 sd + 1): where clamping piles
// the cut tails.
func checkBounds(ks []int64, lambda float64, lo, hi int64) error {
	var atLo, atHi float64
	for _, k := range ks {
		if k < lo || k > hi {
			return fmt.Errorf("k = %d outside [%d, %d]", k, lo, hi)
		}
		if k == lo {
			atLo++
		}
		if k == hi {
			atHi++
		}
	}
	first, probs := truncPoissonProbs(lambda, lo, hi)
	n := float64(len(ks))
	limit := func(k int64) float64 {
		var p float64
		if i := k - first; i >= 0 && i < int64(len(probs)) {
			p = probs[i]
		}
		return n*p + 5*math.Sqrt(n*p*(1-p)) + 1
	}
	if atLo > limit(lo) {
		return fmt.Errorf("%.0f of %.0f samples at min k = %d, want <= %.1f: mass piled on the bound", atLo, n, lo, limit(lo))
	}
	if hi != math.MaxInt64 && atHi > limit(hi) {
		return fmt.Errorf("%.0f of %.0f samples at max k = %d, want <= %.1f: mass piled on the bound", atHi, n, hi, limit(hi))
	}
	return nil
}

func TestWilsonHilfertyMatchesChiSquareTables(t *testing.T) {
	// Upper quantiles from standard chi-square tables.
	cases := []struct {
		df        int
		z, want   float64
		tolerance float64
	}{
		{1, z001, 10.828, 0.035}, {2, z001, 13.816, 0.025}, {3, z001, 16.266, 0.02},
		{5, z001, 20.515, 0.015}, {10, z001, 29.588, 0.01}, {30, z001, 59.703, 0.005},
		{100, z001, 149.449, 0.005}, {1, z005, 3.841, 0.03}, {10, z005, 18.307, 0.005},
		{100, z005, 124.342, 0.005},
	}
	for _, c := range cases {
		got := chiSquareCritical(c.df, c.z)
		if math.Abs(got-c.want)/c.want > c.tolerance {
			t.Errorf("df %d z %.3f: Wilson–Hilferty %.3f, table %.3f (tolerance %.1f %%)", c.df, c.z, got, c.want, 100*c.tolerance)
		}
	}
}

var fitCases = []struct {
	name   string
	lambda float64
	lo, hi int64 // bounds in units
}{
	{"lambda 0.5 (Knuth)", 0.5, 0, math.MaxInt64},
	{"lambda 3 (Knuth)", 3, 0, math.MaxInt64},
	{"lambda 5 bounded [3, 8] (Knuth)", 5, 3, 8},
	{"lambda 9.99 (Knuth, top of range)", 9.99, 0, math.MaxInt64},
	{"lambda 10 (PTRS, bottom of range)", 10, 0, math.MaxInt64},
	{"lambda 25 bounded [20, 30] (PTRS)", 25, 20, 30},
	{"lambda 100 (PTRS)", 100, 0, math.MaxInt64},
	{"lambda 10000 (PTRS)", 1e4, 0, math.MaxInt64},
	{"lambda 1e6 bounded above (PTRS)", 1e6, 0, 1e6 + 500},
}

func TestSamplesFitBoundedPoissonChiSquare(t *testing.T) {
	for i, c := range fitCases {
		t.Run(c.name, func(t *testing.T) {
			unit := time.Minute
			maxD := time.Duration(0)
			if c.hi != math.MaxInt64 {
				maxD = time.Duration(c.hi) * unit
			}
			p := NewPoisson(c.lambda, unit, time.Duration(c.lo)*unit, maxD)
			ds, err := p.Sample(seeded(uint64(i+1)), 10000)
			if err != nil {
				t.Fatal(err)
			}
			ks := units(t, ds, unit)
			if err := chiSquareFit(ks, c.lambda, c.lo, c.hi, z001); err != nil {
				t.Errorf("want a fit at alpha = 0.001, got %v", err)
			}
			if err := checkBounds(ks, c.lambda, c.lo, min(c.hi, p.KMax)); err != nil {
				t.Errorf("want all k inside the bounds and none piled on them, got %v", err)
			}
		})
	}
}

// drawMany runs one of the two samplers directly, without truncation.
func drawMany(t *testing.T, lambda float64, usePTRS bool, seed uint64, n int) []int64 {
	t.Helper()
	p := NewPoisson(lambda, time.Minute, 0, 0)
	src := &uniforms{r: seeded(seed)}
	src.i = len(src.buf)
	ks := make([]int64, n)
	for i := range ks {
		src.budget = maxUniformsPerDelay
		var err error
		if usePTRS {
			ks[i], err = p.ptrs(src)
		} else {
			ks[i], err = knuth(src, p.expNegLambda)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	return ks
}

func TestKnuthAndPTRSBothFitWhereBothApply(t *testing.T) {
	for _, lambda := range []float64{10, 15, 29.5} {
		for _, usePTRS := range []bool{false, true} {
			ks := drawMany(t, lambda, usePTRS, uint64(lambda*10), 10000)
			if err := chiSquareFit(ks, lambda, 0, math.MaxInt64, z001); err != nil {
				t.Errorf("lambda %g, PTRS %v: want a fit at alpha = 0.001, got %v", lambda, usePTRS, err)
			}
		}
	}
}

// TestChiSquareRejectionRateMatchesAlphaAcrossSeeds guards against a test
// that passes for one lucky seed: at alpha = 0.05 a correct sampler is
// rejected for about 5 % of seeds, a wrong one for nearly all.
func TestChiSquareRejectionRateMatchesAlphaAcrossSeeds(t *testing.T) {
	for _, c := range []struct {
		lambda float64
		lo, hi int64
	}{{4, 1, 9}, {25, 18, 35}} {
		p := NewPoisson(c.lambda, time.Second, time.Duration(c.lo)*time.Second, time.Duration(c.hi)*time.Second)
		const seeds = 200
		rejected := 0
		for s := range uint64(seeds) {
			ds, err := p.Sample(seeded(5000+s), 2000)
			if err != nil {
				t.Fatal(err)
			}
			if chiSquareFit(units(t, ds, time.Second), c.lambda, c.lo, c.hi, z005) != nil {
				rejected++
			}
		}
		t.Logf("lambda %g on [%d, %d]: %d of %d seeds rejected at alpha = 0.05", c.lambda, c.lo, c.hi, rejected, seeds)
		// Binomial(200, 0.05): mean 10, sd 3.1; 25 is ~5 sd out.
		if rejected > 25 {
			t.Errorf("lambda %g: chi-square at alpha = 0.05 rejected %d of %d seeds, want about 10 (<= 25)", c.lambda, rejected, seeds)
		}
	}
}

// wrongSamplers produce k that a correct goodness-of-fit test must reject
// for Poisson(lambda) bounded to [lo, hi].
var wrongSamplers = []struct {
	name string
	// maxLambda, if set, is the largest lambda where 10,000 samples can
	// tell this sampler from a Poisson.
	maxLambda float64
	sample    func(lambda float64, lo, hi int64, r *rand.Rand, n int) []int64
}{
	{"lambda 10 % too high", 0, func(lambda float64, lo, hi int64, r *rand.Rand, n int) []int64 {
		p := NewPoisson(lambda*1.1, time.Second, time.Duration(lo)*time.Second, time.Duration(hi)*time.Second)
		ds, _ := p.Sample(seeded(r.Uint64()), n)
		ks := make([]int64, n)
		for i, d := range ds {
			ks[i] = int64(d / time.Second)
		}
		return ks
	}},
	{"clamped instead of resampled", 0, func(lambda float64, lo, hi int64, r *rand.Rand, n int) []int64 {
		p := NewPoisson(lambda, time.Second, 0, 0)
		ds, _ := p.Sample(seeded(r.Uint64()), n)
		ks := make([]int64, n)
		for i, d := range ds {
			ks[i] = min(max(int64(d/time.Second), lo), hi)
		}
		return ks
	}},
	{"uniform on [lo, hi]", 0, func(_ float64, lo, hi int64, r *rand.Rand, n int) []int64 {
		ks := make([]int64, n)
		for i := range ks {
			ks[i] = lo + r.Int64N(hi-lo+1)
		}
		return ks
	}},
	// At lambda 25 the normal approximation is too close for 10,000 samples;
	// at lambda 4 its symmetry gives it away.
	{"rounded normal with the same mean and variance", 10, func(lambda float64, lo, hi int64, r *rand.Rand, n int) []int64 {
		ks := make([]int64, 0, n)
		for len(ks) < n {
			k := int64(math.Round(lambda + math.Sqrt(lambda)*r.NormFloat64()))
			if k >= lo && k <= hi {
				ks = append(ks, k)
			}
		}
		return ks
	}},
}

func TestChiSquareRejectsWrongDistributions(t *testing.T) {
	for _, c := range []struct {
		lambda float64
		lo, hi int64
	}{{4, 1, 9}, {25, 18, 35}} {
		for i, w := range wrongSamplers {
			if w.maxLambda != 0 && c.lambda > w.maxLambda {
				continue
			}
			t.Run(fmt.Sprintf("lambda %g %s", c.lambda, w.name), func(t *testing.T) {
				ks := w.sample(c.lambda, c.lo, c.hi, rand.New(rand.NewPCG(11, uint64(i))), 10000)
				if err := chiSquareFit(ks, c.lambda, c.lo, c.hi, z001); err == nil {
					t.Errorf("chi-square accepted %s as Poisson(%g) on [%d, %d]: the test cannot see this error", w.name, c.lambda, c.lo, c.hi)
				} else {
					t.Logf("rejected as wanted: %v", err)
				}
			})
		}
	}
}

func TestBoundsCheckRejectsClampedDelays(t *testing.T) {
	ks := wrongSamplers[1].sample(25, 20, 30, rand.New(rand.NewPCG(3, 4)), 10000)
	if err := checkBounds(ks, 25, 20, 30); err == nil {
		t.Fatal("checkBounds accepted clamped k: it cannot see mass piled on the bounds")
	}
}

func TestBoundsRoundInwardToWholeUnits(t *testing.T) {
	p := NewPoisson(5, time.Minute, 90*time.Second, 450*time.Second)
	if p.KMin != 2 || p.KMax != 7 {
		t.Fatalf("[90s, 450s] in minutes: got k in [%d, %d], want [2, 7]", p.KMin, p.KMax)
	}
	ds, err := p.Sample(seeded(1), 2000)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range ds {
		if d < 2*time.Minute || d > 7*time.Minute || d%time.Minute != 0 {
			t.Fatalf("delay %s: want a whole number of minutes in [2m, 7m]", d)
		}
	}
}

// constReader is an endless stream of one byte: a broken randomness source.
type constReader byte

func (c constReader) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = byte(c)
	}
	return len(p), nil
}

func TestBrokenRandomnessGivesAnErrorNotAHang(t *testing.T) {
	cases := []struct {
		name   string
		lambda float64
		lo     int64
		src    constReader
	}{
		{"Knuth, U = 0 always gives k = 0 below min", 3, 1, 0x00},
		{"Knuth, U = 1-2^-53 never ends the product", 3, 0, 0xff},
		{"PTRS, U = -0.5 always redraws", 50, 0, 0x00},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := NewPoisson(c.lambda, time.Second, time.Duration(c.lo)*time.Second, 0)
			start := time.Now()
			_, err := p.Sample(c.src, 1)
			if !errors.Is(err, errRandomness) {
				t.Fatalf("want errRandomness, got %v", err)
			}
			if el := time.Since(start); el > 5*time.Second {
				t.Errorf("giving up took %s", el)
			}
		})
	}
}

func TestMassMatchesClosedForms(t *testing.T) {
	cases := []struct {
		lambda float64
		lo, hi int64
		want   float64
	}{
		{3, 0, 2, math.Exp(-3) * (1 + 3 + 4.5)},
		{3, 0, math.MaxInt64, 1},
		{1, 3, 3, math.Exp(-1) / 6},
		{25, 0, math.MaxInt64, 1},
		{1e6, 0, math.MaxInt64, 1},
		{100, 0, 20, 0}, // ~1e-22: well below any threshold
	}
	for _, c := range cases {
		p := NewPoisson(c.lambda, time.Second, 0, 0)
		got := p.Mass(c.lo, c.hi)
		if math.Abs(got-c.want) > 1e-9 {
			t.Errorf("P(%d <= K <= %d | lambda %g) = %.12g, want %.12g", c.lo, c.hi, c.lambda, got, c.want)
		}
	}
}

func TestConfigValidationNamesTheKey(t *testing.T) {
	cases := []struct {
		name, json string
		key        string // "" = valid
		says       string
	}{
		{"lambda only", `{"lambda":10}`, "", ""},
		{"bounded", `{"lambda":10,"unit":"30s","min":"1m","max":"20m"}`, "", ""},
		{"lambda missing", `{"unit":"1m"}`, "lambda", "greater than 0"},
		{"lambda zero", `{"lambda":0}`, "lambda", "greater than 0"},
		{"lambda negative", `{"lambda":-2}`, "lambda", "greater than 0"},
		{"lambda huge", `{"lambda":1e8}`, "lambda", "larger unit"},
		{"unit zero", `{"lambda":5,"unit":"0s"}`, "unit", "greater than 0"},
		{"min above max", `{"lambda":5,"min":"10m","max":"5m"}`, "max", "below min"},
		{"no whole unit in range", `{"lambda":5,"unit":"1m","min":"61s","max":"119s"}`, "max", "no whole multiple"},
		{"min far in the upper tail", `{"lambda":5,"min":"30m"}`, "min", "P(min <= K × unit <= max)"},
		{"max far in the lower tail", `{"lambda":100,"max":"50m"}`, "max", "reject almost every draw"},
		{"narrow window in the tail", `{"lambda":100,"min":"140m","max":"141m"}`, "min", "below 0.001"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := sdk.DecodeConfig(Config{Unit: sdk.Duration(time.Minute)}, []byte(c.json))
			if c.key == "" {
				if err != nil {
					t.Fatalf("%s: want valid, got %v", c.json, err)
				}
				return
			}
			var fe *sdk.FieldError
			if !errors.As(err, &fe) || fe.Field != c.key || !strings.Contains(fe.Error(), c.says) {
				t.Fatalf("%s: want a FieldError on %q saying %q, got %v", c.json, c.key, c.says, err)
			}
		})
	}
}

func TestZeroReaderGivesZeroDelayWhenUnbounded(t *testing.T) {
	// U = 0 ends Knuth's product at once: k = 0, the smallest legal delay.
	ds, err := NewPoisson(3, time.Minute, 0, 0).Sample(bytes.NewReader(make([]byte, 512)), 1)
	if err != nil || ds[0] != 0 {
		t.Fatalf("got %v, %v; want [0s]", ds, err)
	}
}

func benchmarkSample(b *testing.B, lambda float64) {
	d := &Delayer{Dist: NewPoisson(lambda, time.Second, 0, 0), Rand: cryptorand.Reader}
	for b.Loop() {
		if _, err := d.Delay(b.Context(), sdk.DelayRequest{Count: 64}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkSample64 is the in-process cost of 64 delays from crypto/rand.
func BenchmarkSample64Lambda5Knuth(b *testing.B)  { benchmarkSample(b, 5) }
func BenchmarkSample64Lambda100PTRS(b *testing.B) { benchmarkSample(b, 100) }
