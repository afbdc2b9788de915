// Command poisonplugin is a test transformer that makes poison items on
// demand: it exits the process on a message whose header carries
// "X-Poison: crash", and fails temporarily on "X-Poison: fail" while the
// file named by gate exists. Every other message passes unchanged. It
// lives in testdata so that only the end-to-end tests build it.
package main

import (
	"bytes"
	"context"
	"os"

	"github.com/mixmta/mixmta/sdk"
)

// Config is the stage's config block.
type Config struct {
	Gate string `json:"gate" doc:"while this file exists, X-Poison: fail items fail"`
}

type poison struct{ gate string }

func (p poison) Transform(_ context.Context, m *sdk.Message) (*sdk.Change, error) {
	switch {
	case bytes.Contains(m.Header, []byte("\nX-Poison: crash")):
		os.Exit(3)
	case bytes.Contains(m.Header, []byte("\nX-Poison: fail")):
		if _, err := os.Stat(p.gate); err == nil {
			return nil, sdk.Temporary(451, "3.0", "poison gate is closed")
		}
	}
	return &sdk.Change{}, nil
}

func main() {
	sdk.Serve(sdk.Plugin[Config]{
		Name:    "e2e-poison",
		Version: "1.0.0",
		Doc:     "test transformer: crashes or fails on marked messages",
		Kinds:   []sdk.Kind{sdk.KindTransformer},
		Needs:   sdk.NeedHeader,
		New: func(c Config, _ sdk.Env) (any, error) {
			return poison{gate: c.Gate}, nil
		},
	})
}
