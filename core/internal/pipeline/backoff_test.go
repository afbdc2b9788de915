package pipeline

import (
	"testing"
	"time"
)

func TestBackoffScheduleTable(t *testing.T) {
	s := time.Second
	cases := []struct {
		name string
		b    Backoff
		want []time.Duration // waits after attempts 0..; then no more
	}{
		{"pluto2 default", DefaultBackoff(), []time.Duration{2 * s, 4 * s, 8 * s, 16 * s, 32 * s, 64 * s, 128 * s, 256 * s}},
		{"capped", Backoff{MaxAttempts: 5, Base: 10 * s, Factor: 3, Max: 60 * s}, []time.Duration{10 * s, 30 * s, 60 * s, 60 * s}},
		{"explicit schedule repeats last", Backoff{MaxAttempts: 6, Schedule: []time.Duration{s, 5 * s, 30 * s}}, []time.Duration{s, 5 * s, 30 * s, 30 * s, 30 * s}},
		{"one attempt only", Backoff{MaxAttempts: 1, Base: s, Factor: 2}, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			for n, want := range c.want {
				got, ok := c.b.Nominal(n)
				if !ok || got != want {
					t.Fatalf("attempt %d: got %v (more=%v), want %v", n, got, ok, want)
				}
			}
			if _, ok := c.b.Nominal(len(c.want)); ok {
				t.Fatalf("attempt %d: want no attempt left", len(c.want))
			}
		})
	}
}

func TestBackoffJitterStaysInBoundsAndVaries(t *testing.T) {
	b := DefaultBackoff()
	seen := map[time.Duration]bool{}
	for i := 0; i < 1000; i++ {
		d, ok := b.Wait(2) // nominal 8 s
		if !ok || d < 6400*time.Millisecond || d > 9600*time.Millisecond {
			t.Fatalf("wait %v outside 8s±20%%", d)
		}
		seen[d] = true
	}
	if len(seen) < 900 {
		t.Fatalf("only %d distinct waits of 1000: jitter not random", len(seen))
	}
}

func TestCryptoIntnIsUniform(t *testing.T) {
	const n, draws = 6, 60000
	var counts [n]int
	for i := 0; i < draws; i++ {
		counts[cryptoIntn(n)]++
	}
	// chi-square, 5 degrees of freedom, alpha 0.001: 20.52
	var chi float64
	exp := float64(draws) / n
	for _, c := range counts {
		chi += (float64(c) - exp) * (float64(c) - exp) / exp
	}
	if chi > 20.52 {
		t.Fatalf("chi-square %.1f > 20.52: counts %v", chi, counts)
	}
}
