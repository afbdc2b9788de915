// Command delay-exponential is a mixmta Delayer stage: each item is held for
// a delay drawn from an exponential distribution with a configured mean,
// truncated to [min, max] (the distribution of resampled draws, never
// clamped), from crypto/rand so that release times cannot be predicted. It
// is the per-hop delay of Loopix-style continuous-time mixing.
package main

import (
	"crypto/rand"

	"github.com/mixmta/mixmta/sdk"
)

func main() {
	sdk.Serve(sdk.Plugin[Config]{
		Name:    "delay-exponential",
		Version: "1.0.0",
		Doc:     "delay ~ Exp(mean) truncated to [min, max] by resampling",
		Kinds:   []sdk.Kind{sdk.KindDelayer},
		Config:  Config{},
		New: func(c Config, _ sdk.Env) (any, error) {
			return &Delayer{Dist: c.Distribution(), Rand: rand.Reader}, nil
		},
	})
}
