package main

import (
	"bytes"
	cryptorand "crypto/rand"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"slices"
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

// truncExpCDF is the CDF of Exp(mean) conditioned on [lo, hi], written out
// here independently of the code under test.
func truncExpCDF(mean, lo, hi time.Duration) func(float64) float64 {
	m, a, b := float64(mean), float64(lo), float64(hi)
	fa, fb := math.Exp(-a/m), math.Exp(-b/m)
	return func(x float64) float64 {
		switch {
		case x < a:
			return 0
		case x >= b:
			return 1
		}
		return (fa - math.Exp(-x/m)) / (fa - fb)
	}
}

// ksStatistic is the Kolmogorov–Smirnov D = sup |F_n(x) - F(x)| of the
// samples against cdf.
func ksStatistic(xs []float64, cdf func(float64) float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	n := float64(len(s))
	var d float64
	for i, x := range s {
		f := cdf(x)
		d = max(d, float64(i+1)/n-f, f-float64(i)/n)
	}
	return d
}

// ksFit reports an error when D exceeds the asymptotic critical value
// c/sqrt(n) (c = 1.95 for alpha = 0.001, 1.36 for alpha = 0.05).
func ksFit(ds []time.Duration, cdf func(float64) float64, c float64) error {
	xs := make([]float64, len(ds))
	for i, d := range ds {
		xs[i] = float64(d)
	}
	d, crit := ksStatistic(xs, cdf), c/math.Sqrt(float64(len(xs)))
	if d > crit {
		return fmt.Errorf("KS D = %.4f > critical %.4f (n = %d)", d, crit, len(xs))
	}
	return nil
}

const ksAlpha001 = 1.95

// checkTruncation reports a delay outside [lo, hi], or more than 0.1 % of
// the delays sitting exactly on a bound (a continuous distribution puts
// practically no mass on one nanosecond; clamping puts the whole cut tail
// there).
func checkTruncation(ds []time.Duration, lo, hi time.Duration) error {
	var atLo, atHi int
	for _, d := range ds {
		if d < lo || d > hi {
			return fmt.Errorf("delay %s outside [%s, %s]", d, lo, hi)
		}
		if d == lo {
			atLo++
		}
		if d == hi {
			atHi++
		}
	}
	if limit := len(ds) / 1000; atLo > limit || atHi > limit {
		return fmt.Errorf("%d delays exactly at min and %d at max of %d: mass piled on the bounds (want <= %d)", atLo, atHi, len(ds), limit)
	}
	return nil
}

var fitCases = []struct {
	name string
	e    Exponential
}{
	{"untruncated-looking 1s mean, [0, 10s]", Exponential{Mean: time.Second, Min: 0, Max: 10 * time.Second}},
	{"issue example 30m mean, [1m, 6h]", Exponential{Mean: 30 * time.Minute, Min: time.Minute, Max: 6 * time.Hour}},
	{"heavy truncation 1h mean, [10m, 2h]", Exponential{Mean: time.Hour, Min: 10 * time.Minute, Max: 2 * time.Hour}},
	{"narrow window 1h mean, [50m, 70m]", Exponential{Mean: time.Hour, Min: 50 * time.Minute, Max: 70 * time.Minute}},
	{"min far above mean 1m, [5m, 20m]", Exponential{Mean: time.Minute, Min: 5 * time.Minute, Max: 20 * time.Minute}},
}

func TestSamplesFitTruncatedExponentialKS(t *testing.T) {
	for i, c := range fitCases {
		t.Run(c.name, func(t *testing.T) {
			ds, err := c.e.Sample(seeded(uint64(i+1)), 10000)
			if err != nil {
				t.Fatal(err)
			}
			if err := ksFit(ds, truncExpCDF(c.e.Mean, c.e.Min, c.e.Max), ksAlpha001); err != nil {
				t.Errorf("want a fit at alpha = 0.001, got %v", err)
			}
			if err := checkTruncation(ds, c.e.Min, c.e.Max); err != nil {
				t.Errorf("want all delays inside the bounds and none piled on them, got %v", err)
			}
		})
	}
}

// TestKSRejectionRateMatchesAlphaAcrossSeeds guards against a test that
// passes only for one lucky seed: at alpha = 0.05 a correct sampler is
// rejected for about 5 % of seeds, a wrong one for nearly all.
func TestKSRejectionRateMatchesAlphaAcrossSeeds(t *testing.T) {
	e := Exponential{Mean: time.Hour, Min: 10 * time.Minute, Max: 2 * time.Hour}
	cdf := truncExpCDF(e.Mean, e.Min, e.Max)
	const seeds = 200
	rejected := 0
	for s := range uint64(seeds) {
		ds, err := e.Sample(seeded(1000+s), 2000)
		if err != nil {
			t.Fatal(err)
		}
		if ksFit(ds, cdf, 1.36) != nil {
			rejected++
		}
	}
	// Binomial(200, 0.05): mean 10, sd 3.1; 25 is ~5 sd out.
	if rejected > 25 {
		t.Fatalf("KS at alpha = 0.05 rejected %d of %d seeds, want about 10 (<= 25)", rejected, seeds)
	}
}

// wrongSamplers produce delays that a correct goodness-of-fit test must
// reject for e, drawing from r.
var wrongSamplers = []struct {
	name   string
	sample func(e Exponential, r *rand.Rand, n int) []time.Duration
}{
	{"clamped instead of truncated", func(e Exponential, r *rand.Rand, n int) []time.Duration {
		out := make([]time.Duration, n)
		for i := range out {
			x := time.Duration(r.ExpFloat64() * float64(e.Mean))
			out[i] = min(max(x, e.Min), e.Max)
		}
		return out
	}},
	{"uniform on [min, max]", func(e Exponential, r *rand.Rand, n int) []time.Duration {
		out := make([]time.Duration, n)
		for i := range out {
			out[i] = e.Min + time.Duration(r.Int64N(int64(e.Max-e.Min)))
		}
		return out
	}},
	{"mean 20 % too long", func(e Exponential, r *rand.Rand, n int) []time.Duration {
		wrong := e
		wrong.Mean = e.Mean * 12 / 10
		ds, _ := wrong.Sample(seeded(r.Uint64()), n)
		return ds
	}},
	{"untruncated shifted by min (max ignored)", func(e Exponential, r *rand.Rand, n int) []time.Duration {
		out := make([]time.Duration, n)
		for i := range out {
			out[i] = e.Min + time.Duration(r.ExpFloat64()*float64(e.Mean))
		}
		return out
	}},
}

func TestKSRejectsWrongDistributions(t *testing.T) {
	e := Exponential{Mean: time.Hour, Min: 10 * time.Minute, Max: 2 * time.Hour}
	cdf := truncExpCDF(e.Mean, e.Min, e.Max)
	for i, w := range wrongSamplers {
		t.Run(w.name, func(t *testing.T) {
			ds := w.sample(e, rand.New(rand.NewPCG(7, uint64(i))), 10000)
			if err := ksFit(ds, cdf, ksAlpha001); err == nil {
				t.Errorf("KS accepted %s as Exp(%s) truncated to [%s, %s]: the test cannot see this error", w.name, e.Mean, e.Min, e.Max)
			} else {
				t.Logf("rejected as wanted: %v", err)
			}
		})
	}
}

func TestTruncationCheckRejectsClampedDelays(t *testing.T) {
	e := Exponential{Mean: time.Hour, Min: 10 * time.Minute, Max: 2 * time.Hour}
	ds := wrongSamplers[0].sample(e, rand.New(rand.NewPCG(1, 2)), 10000)
	if err := checkTruncation(ds, e.Min, e.Max); err == nil {
		t.Fatal("checkTruncation accepted clamped delays: it cannot see mass piled on the bounds")
	}
}

func TestExtremeUniformsStayInsideBounds(t *testing.T) {
	e := Exponential{Mean: 30 * time.Minute, Min: time.Minute, Max: 6 * time.Hour}
	zero, err := e.Sample(bytes.NewReader(make([]byte, 8)), 1)
	if err != nil {
		t.Fatal(err)
	}
	if zero[0] != e.Min {
		t.Errorf("U = 0: got %s, want min %s", zero[0], e.Min)
	}
	top, err := e.Sample(bytes.NewReader(bytes.Repeat([]byte{0xff}, 8)), 1)
	if err != nil {
		t.Fatal(err)
	}
	if top[0] > e.Max || top[0] < e.Max-time.Second {
		t.Errorf("U = 1-2^-53: got %s, want just below or at max %s", top[0], e.Max)
	}
}

func TestAcceptanceIsMassOfTheWindow(t *testing.T) {
	cases := []struct {
		e    Exponential
		want float64
	}{
		{Exponential{Mean: time.Hour, Min: 0, Max: 10 * time.Hour}, 1 - math.Exp(-10)},
		{Exponential{Mean: time.Hour, Min: time.Hour, Max: 2 * time.Hour}, math.Exp(-1) - math.Exp(-2)},
		{Exponential{Mean: time.Hour, Min: 10 * time.Hour, Max: 20 * time.Hour}, math.Exp(-10) - math.Exp(-20)},
		{Exponential{Mean: time.Hour, Min: time.Hour, Max: time.Hour}, 0},
	}
	for _, c := range cases {
		got := c.e.Acceptance()
		if math.Abs(got-c.want) > 1e-12*math.Max(c.want, 1e-300) && got != c.want {
			t.Errorf("%+v: Acceptance = %.15g, want %.15g", c.e, got, c.want)
		}
	}
}

func TestConfigValidationNamesTheKey(t *testing.T) {
	cases := []struct {
		name, json string
		key        string // "" = valid
		says       string
	}{
		{"issue example", `{"mean":"30m","min":"1m","max":"6h"}`, "", ""},
		{"only mean", `{"mean":"30m"}`, "", ""},
		{"mean missing", `{"min":"1m","max":"6h"}`, "mean", "greater than 0"},
		{"mean zero", `{"mean":"0s"}`, "mean", "greater than 0"},
		{"min above max", `{"mean":"30m","min":"2h","max":"1h"}`, "max", "below min"},
		{"min above defaulted max", `{"mean":"1m","min":"11m"}`, "max", "defaults to 10 × mean"},
		{"min far in the tail", `{"mean":"1h","min":"10h","max":"20h"}`, "min", "P(min <= X <= max)"},
		{"window too narrow", `{"mean":"1h","min":"1h","max":"1h0m0.1s"}`, "max", "reject almost every draw"},
		{"min equals max", `{"mean":"1h","min":"1h","max":"1h"}`, "max", "below 0.001"},
		{"just above the acceptance floor", `{"mean":"1h","min":"6h","max":"10h"}`, "", ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := sdk.DecodeConfig(Config{}, []byte(c.json))
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

func TestDefaultMaxIsTenMeans(t *testing.T) {
	c, err := sdk.DecodeConfig(Config{}, []byte(`{"mean":"30m"}`))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := c.Distribution().Max, 5*time.Hour; got != want {
		t.Fatalf("default max = %s, want %s", got, want)
	}
}

// BenchmarkSample64 is the in-process cost of 64 delays from crypto/rand.
func BenchmarkSample64(b *testing.B) {
	d := &Delayer{Dist: Exponential{Mean: 30 * time.Minute, Min: time.Minute, Max: 6 * time.Hour}, Rand: cryptorand.Reader}
	for b.Loop() {
		if _, err := d.Delay(b.Context(), sdk.DelayRequest{Count: 64}); err != nil {
			b.Fatal(err)
		}
	}
}
