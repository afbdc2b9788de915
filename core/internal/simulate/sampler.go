package simulate

import "math/rand/v2"

// Exp samples exponential delays of the given mean (seconds) from a seeded
// generator: for tests and for the closed-form validation, where the delay
// plugins' own samplers are not needed.
type Exp struct {
	Mean float64
	R    *rand.Rand
}

// Next returns one delay in seconds.
func (e Exp) Next() (float64, error) { return e.R.ExpFloat64() * e.Mean, nil }
