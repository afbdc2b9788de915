// Command delay-uniform is a complete third-party mixmta delay plugin: each
// item is held for a delay drawn uniformly from [min, max) — fog's
// "constant" delay strategy. It imports only the mixmta SDK.
package main

import (
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"math/big"
	"time"

	"github.com/mixmta/mixmta/sdk"
)

// Config is the stage's config block in the pipeline file.
type Config struct {
	Min sdk.Duration `json:"min" doc:"shortest delay (inclusive)"`
	Max sdk.Duration `json:"max" doc:"longest delay (exclusive)"`
}

// Validate rejects an empty or inverted range.
func (c *Config) Validate() error {
	if c.Max <= c.Min {
		return sdk.FieldErrorf("max", "must be greater than min (%s)", c.Min)
	}
	return nil
}

type uniform struct {
	min, span time.Duration
	rand      io.Reader // crypto/rand.Reader; a test may give another source
}

// Delay returns req.Count delays, each min + U[0, max-min), drawn from
// crypto/rand so that an observer cannot predict release times.
func (u uniform) Delay(_ context.Context, req sdk.DelayRequest) ([]time.Duration, error) {
	out := make([]time.Duration, req.Count)
	for i := range out {
		n, err := rand.Int(u.rand, big.NewInt(int64(u.span)))
		if err != nil {
			return nil, fmt.Errorf("delay-uniform: no randomness: %w", err)
		}
		out[i] = u.min + time.Duration(n.Int64())
	}
	return out, nil
}

func main() {
	sdk.Serve(sdk.Plugin[Config]{
		Name:    "delay-uniform",
		Version: "1.0.0",
		Doc:     "delay uniform in [min, max) (fog's constant strategy)",
		Kinds:   []sdk.Kind{sdk.KindDelayer},
		Config:  Config{Min: sdk.Duration(time.Minute), Max: sdk.Duration(10 * time.Minute)},
		New: func(c Config, _ sdk.Env) (any, error) {
			return uniform{min: c.Min.D(), span: c.Max.D() - c.Min.D(), rand: rand.Reader}, nil
		},
	})
}
