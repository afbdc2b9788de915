package mixnet_test

import (
	"math"
	"slices"
	"testing"

	"gonum.org/v1/gonum/stat"
)

// ksTest is the two-sample Kolmogorov-Smirnov test: D is the largest
// distance between the empirical CDFs of x and y (gonum's stat), p the
// probability of a D at least as large if both samples come from one
// continuous distribution. p uses the asymptotic Kolmogorov distribution
// with Stephens' small-sample correction (Stephens 1970; Numerical Recipes
// 3rd ed. §14.3.3): λ = (√Ne + 0.12 + 0.11/√Ne)·D, Ne = n·m/(n+m), accurate
// to a few per cent of p for Ne >= 4; our samples have Ne >= 150. gonum
// has no Kolmogorov distribution, hence kolmogorovQ. x and y are not
// modified.
func ksTest(x, y []float64) (d, p float64) {
	xs, ys := slices.Clone(x), slices.Clone(y)
	slices.Sort(xs)
	slices.Sort(ys)
	d = stat.KolmogorovSmirnov(xs, nil, ys, nil)
	ne := float64(len(x)*len(y)) / float64(len(x)+len(y))
	sq := math.Sqrt(ne)
	return d, kolmogorovQ((sq + 0.12 + 0.11/sq) * d)
}

// kolmogorovQ is the survival function of the Kolmogorov distribution,
// Q(λ) = P(K > λ) = 2 Σ_{k>=1} (-1)^(k-1) exp(-2k²λ²). The series
// alternates and its terms fall below 1e-17 by k = 25 for λ >= 0.2; below
// 0.2, Q is 1 to within 1e-12 (the complementary series, 1 - Q(λ) =
// √(2π)/λ Σ exp(-(2k-1)²π²/(8λ²)), gives 5e-13 at λ = 0.2).
func kolmogorovQ(lambda float64) float64 {
	if lambda < 0.2 {
		return 1
	}
	sum, sign := 0.0, 1.0
	for k := 1; k <= 100; k++ {
		term := sign * math.Exp(-2*float64(k*k)*lambda*lambda)
		sum += term
		if math.Abs(term) < 1e-17 {
			break
		}
		sign = -sign
	}
	return min(max(2*sum, 0), 1)
}

// Known values of the Kolmogorov distribution (scipy.stats.kstwobign.sf,
// and the classical critical values 1.2239, 1.3581, 1.6276 of the 10 %,
// 5 % and 1 % levels), and two-sample tests whose answer is known.
func TestKolmogorovSmirnovKnownValues(t *testing.T) {
	for _, c := range []struct{ lambda, q float64 }{
		{0.5, 0.9639452436648751},
		{1.0, 0.26999967167735456},
		{1.2239, 0.10},
		{1.3581, 0.05},
		{1.6276, 0.01},
		{2.0, 0.0006709252558537},
	} {
		if got := kolmogorovQ(c.lambda); math.Abs(got-c.q) > 1e-3*c.q {
			t.Errorf("Q(%v) = %.10g, want %.10g", c.lambda, got, c.q)
		}
	}
	if q := kolmogorovQ(0.1); q != 1 {
		t.Errorf("Q(0.1) = %v, want 1", q)
	}

	// Disjoint samples: D = 1, p tiny.
	a, b := make([]float64, 300), make([]float64, 300)
	for i := range a {
		a[i], b[i] = float64(i), float64(1000+i)
	}
	if d, p := ksTest(a, b); math.Abs(d-1) > 1e-9 || p > 1e-12 {
		t.Errorf("disjoint samples: D = %v, p = %v; want 1, ~0", d, p)
	}
	// The same values interleaved: D = 1/300, p = 1.
	for i := range b {
		b[i] = float64(i) + 0.5
	}
	if d, p := ksTest(a, b); math.Abs(d-1.0/300) > 1e-9 || p < 0.999 {
		t.Errorf("interleaved samples: D = %v, p = %v; want 1/300, 1", d, p)
	}
	// A shift by a tenth of the range: D = 0.1, λ ≈ 1.2376, p ≈ 0.0934.
	for i := range b {
		b[i] = float64(i) + 30
	}
	if d, p := ksTest(a, b); math.Abs(d-0.1) > 1e-9 || math.Abs(p-0.0934) > 0.001 {
		t.Errorf("shifted samples: D = %v, p = %v; want 0.1, 0.0934", d, p)
	}
}
