package main

import (
	"math"
	"time"

	"github.com/mixmta/mixmta/sdk"
)

// Config is the stage's config block in the pipeline file.
type Config struct {
	Lambda float64      `json:"lambda" required:"true" doc:"mean of the Poisson distribution, in units (number, > 0, at most 1e7)"`
	Unit   sdk.Duration `json:"unit" doc:"length of one unit: the delay is k × unit (duration, default 1m)"`
	Min    sdk.Duration `json:"min" doc:"shortest delay, inclusive, rounded up to a whole unit (duration, default 0)"`
	Max    sdk.Duration `json:"max" doc:"longest delay, inclusive, rounded down to a whole unit (duration; 0 or absent: no bound)"`
}

// Distribution returns the bounded Poisson the config describes.
func (c Config) Distribution() *Poisson {
	return NewPoisson(c.Lambda, c.Unit.D(), c.Min.D(), c.Max.D())
}

// Validate rejects a missing, non-positive or huge lambda, a non-positive
// unit, min above max, bounds with no whole unit between them, and bounds
// that keep less than MinAcceptance of the distribution's mass. Errors are
// *sdk.FieldError naming lambda, unit, min or max.
func (c *Config) Validate() error {
	if !(c.Lambda > 0) {
		return sdk.FieldErrorf("lambda", "required and must be greater than 0 (e.g. 10)")
	}
	if c.Lambda > MaxLambda {
		return sdk.FieldErrorf("lambda", "%g is above %g: the delay would be constant to within 0.03 %%; use a larger unit", c.Lambda, float64(MaxLambda))
	}
	if c.Unit <= 0 {
		return sdk.FieldErrorf("unit", "must be greater than 0 (e.g. 1m)")
	}
	if c.Min < 0 {
		return sdk.FieldErrorf("min", "must not be negative")
	}
	if c.Max != 0 && c.Min > c.Max {
		return sdk.FieldErrorf("max", "must not be below min (%s)", c.Min)
	}
	p := c.Distribution()
	if p.KMin > p.KMax {
		return sdk.FieldErrorf("max", "no whole multiple of unit (%s) lies in [min, max] = [%s, %s]", c.Unit, c.Min, c.Max)
	}
	if acc := p.Acceptance(); !(acc >= MinAcceptance) {
		// Blame min when it alone sits too far in the upper tail, else max.
		key, fix := "max", "raise max or lower lambda"
		if p.Mass(p.KMin, math.MaxInt64) < MinAcceptance {
			key, fix = "min", "lower min or raise lambda"
		}
		hi := "no bound"
		if c.Max != 0 {
			hi = (time.Duration(p.KMax) * p.Unit).String()
		}
		return sdk.FieldErrorf(key,
			"P(min <= K × unit <= max) = %.3g for K ~ Poisson(%g), unit %s, [min, max] = [%s, %s]: below %g, so truncation by resampling would reject almost every draw and the delays would not follow the configured lambda; %s",
			acc, c.Lambda, c.Unit, time.Duration(p.KMin)*p.Unit, hi, MinAcceptance, fix)
	}
	return nil
}
