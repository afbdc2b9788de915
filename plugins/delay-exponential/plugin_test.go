package main

import (
	"context"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/mixmta/mixmta/sdk"
	"github.com/mixmta/mixmta/sdk/plugintest"
)

func TestThousandDelaysThroughRealHostFitAndStayInRange(t *testing.T) {
	bin := plugintest.Build(t, ".")
	p := plugintest.Start(t, bin, `{"mean":"30m","min":"1m","max":"6h"}`)
	plugintest.CheckInfo(t, p.Info(), sdk.KindDelayer)
	ds, err := p.Delay(context.Background(), sdk.DelayRequest{Count: 1000})
	if err != nil {
		t.Fatal(err)
	}
	if len(ds) != 1000 {
		t.Fatalf("got %d delays, want 1000", len(ds))
	}
	if err := checkTruncation(ds, time.Minute, 6*time.Hour); err != nil {
		t.Fatalf("want delays in [1m, 6h] with none piled on a bound, got %v", err)
	}
	// crypto/rand, so no fixed seed: alpha = 1e-6 (c = sqrt(ln(2/alpha)/2))
	// keeps a false failure rare while clamping (D ~ 0.2) is still caught.
	if err := ksFit(ds, truncExpCDF(30*time.Minute, time.Minute, 6*time.Hour), 2.69); err != nil {
		t.Fatalf("delays from the real plugin do not fit Exp(30m) on [1m, 6h]: %v", err)
	}
}

// TestDelayerConformance runs the SDK's delay-stage contract on the stage.
func TestDelayerConformance(t *testing.T) {
	plugintest.DelayerSuite{Name: "delay-exponential", New: func(r io.Reader) sdk.Delayer {
		return &Delayer{Dist: Exponential{Mean: time.Minute, Min: time.Second, Max: 10 * time.Minute}, Rand: r}
	}}.Run(t)
}

func TestAbsurdTruncationRejectedThroughRealHost(t *testing.T) {
	bin := plugintest.Build(t, ".")
	_, err := plugintest.StartErr(t, bin, `{"mean":"1m","min":"1h","max":"2h"}`)
	var fe *sdk.FieldError
	if !errors.As(err, &fe) || fe.Field != "min" {
		t.Fatalf("want a config error on key min, got %v", err)
	}
	t.Logf("operator sees: %v", err)
}

// BenchmarkDelayRPC is one Delay call of Count = 64 (one per Sphinx packet
// of a 4 MiB message) through the real plugin host, crypto/rand included.
func BenchmarkDelayRPC(b *testing.B) {
	bin := plugintest.Build(b, ".")
	p := plugintest.Start(b, bin, `{"mean":"30m","min":"1m","max":"6h"}`)
	ctx := context.Background()
	for b.Loop() {
		if _, err := p.Delay(ctx, sdk.DelayRequest{Count: 64}); err != nil {
			b.Fatal(err)
		}
	}
}
