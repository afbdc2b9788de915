package main

import (
	"math"
	"time"

	"github.com/mixmta/mixmta/sdk"
)

// Config is the stage's config block in the pipeline file.
type Config struct {
	Mean sdk.Duration `json:"mean" required:"true" doc:"mean of the untruncated exponential distribution (duration, > 0)"`
	Min  sdk.Duration `json:"min" doc:"shortest delay, inclusive (duration, default 0)"`
	Max  sdk.Duration `json:"max" doc:"longest delay, inclusive (duration; 0 or absent: 10 × mean)"`
}

// Distribution returns the truncated exponential the config describes, with
// max defaulted to DefaultMaxFactor × mean (saturating) when it is 0.
func (c Config) Distribution() Exponential {
	e := Exponential{Mean: c.Mean.D(), Min: c.Min.D(), Max: c.Max.D()}
	if e.Max == 0 {
		e.Max = time.Duration(math.MaxInt64)
		if e.Mean <= math.MaxInt64/DefaultMaxFactor {
			e.Max = DefaultMaxFactor * e.Mean
		}
	}
	return e
}

// Validate rejects a missing or non-positive mean, min above max, and a
// window [min, max] that holds less than MinAcceptance of the exponential's
// mass (see MinAcceptance). Errors are *sdk.FieldError naming mean, min or
// max.
func (c *Config) Validate() error {
	if c.Mean <= 0 {
		return sdk.FieldErrorf("mean", "required and must be greater than 0 (e.g. 30m)")
	}
	if c.Min < 0 {
		return sdk.FieldErrorf("min", "must not be negative")
	}
	e := c.Distribution()
	if e.Min > e.Max {
		if c.Max == 0 {
			return sdk.FieldErrorf("max", "not set, so it defaults to %d × mean = %s, which is below min (%s): set max", DefaultMaxFactor, e.Max, e.Min)
		}
		return sdk.FieldErrorf("max", "must not be below min (%s)", e.Min)
	}
	if p := e.Acceptance(); !(p >= MinAcceptance) {
		// Blame min when it alone sits too far in the tail, else the window.
		key, fix := "max", "widen [min, max] or change mean"
		if math.Exp(-float64(e.Min)/float64(e.Mean)) < MinAcceptance {
			key, fix = "min", "lower min or raise mean"
		}
		return sdk.FieldErrorf(key,
			"P(min <= X <= max) = %.3g for X ~ Exp(mean %s) with [min, max] = [%s, %s]: below %g, so truncation by resampling would reject almost every draw and the delays would not follow the configured mean; %s",
			p, e.Mean, e.Min, e.Max, MinAcceptance, fix)
	}
	return nil
}
