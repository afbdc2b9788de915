// Command delay-poisson is a mixmta Delayer stage: each item is held for
// k × unit with k drawn from a Poisson distribution with mean lambda,
// bounded to [min, max] by resampling (never clamped), from crypto/rand so
// that release times cannot be predicted. It suits batch-style mixing on a
// clock of whole units (e.g. minutes).
package main

import (
	"crypto/rand"
	"time"

	"github.com/mixmta/mixmta/sdk"
)

func main() {
	sdk.Serve(sdk.Plugin[Config]{
		Name:    "delay-poisson",
		Version: "1.0.0",
		Doc:     "delay = k × unit, k ~ Poisson(lambda), bounded to [min, max] by resampling",
		Kinds:   []sdk.Kind{sdk.KindDelayer},
		Config:  Config{Unit: sdk.Duration(time.Minute)},
		New: func(c Config, _ sdk.Env) (any, error) {
			return &Delayer{Dist: c.Distribution(), Rand: rand.Reader}, nil
		},
	})
}
