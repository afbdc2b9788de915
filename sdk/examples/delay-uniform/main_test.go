package main

import (
	"context"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/mixmta/mixmta/sdk"
	"github.com/mixmta/mixmta/sdk/plugintest"
)

func TestDelaysStayInRangeThroughRealHost(t *testing.T) {
	bin := plugintest.Build(t, ".")
	p := plugintest.Start(t, bin, `{"min":"2s","max":"3s"}`)
	ds, err := p.Delay(context.Background(), sdk.DelayRequest{Count: 500})
	if err != nil {
		t.Fatal(err)
	}
	if len(ds) != 500 {
		t.Fatalf("got %d delays, want 500", len(ds))
	}
	seen := map[time.Duration]bool{}
	for _, d := range ds {
		if d < 2*time.Second || d >= 3*time.Second {
			t.Fatalf("delay %v outside [2s, 3s)", d)
		}
		seen[d] = true
	}
	if len(seen) < 490 {
		t.Fatalf("only %d distinct delays of 500: not random", len(seen))
	}
}

func TestInvertedRangeIsRejectedNamingTheKey(t *testing.T) {
	bin := plugintest.Build(t, ".")
	_, err := plugintest.StartErr(t, bin, `{"min":"5s","max":"1s"}`)
	var fe *sdk.FieldError
	if err == nil || !asField(err, &fe) || fe.Field != "max" {
		t.Fatalf("want a config error on key max, got %v", err)
	}
	_, err = plugintest.StartErr(t, bin, `{"min":"5s","maxx":"1s"}`)
	if err == nil || !strings.Contains(err.Error(), "maxx") {
		t.Fatalf("want unknown key maxx rejected, got %v", err)
	}
}

func asField(err error, fe **sdk.FieldError) bool {
	f, ok := err.(*sdk.FieldError)
	*fe = f
	return ok
}

// TestDelayerConformance runs the SDK's delay-stage contract on the stage.
func TestDelayerConformance(t *testing.T) {
	plugintest.DelayerSuite{Name: "delay-uniform", New: func(r io.Reader) sdk.Delayer {
		return uniform{min: time.Minute, span: 9 * time.Minute, rand: r}
	}}.Run(t)
}
