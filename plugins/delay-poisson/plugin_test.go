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
	p := plugintest.Start(t, bin, `{"lambda":25,"unit":"1m","min":"18m","max":"35m"}`)
	plugintest.CheckInfo(t, p.Info(), sdk.KindDelayer)
	ds, err := p.Delay(context.Background(), sdk.DelayRequest{Count: 1000})
	if err != nil {
		t.Fatal(err)
	}
	if len(ds) != 1000 {
		t.Fatalf("got %d delays, want 1000", len(ds))
	}
	ks := units(t, ds, time.Minute)
	if err := checkBounds(ks, 25, 18, 35); err != nil {
		t.Fatalf("want whole minutes in [18m, 35m] with none piled on a bound, got %v", err)
	}
	// crypto/rand, so no fixed seed: alpha = 1e-6 keeps a false failure
	// rare while a wrong lambda or clamping is still caught.
	if err := chiSquareFit(ks, 25, 18, 35, z1em6); err != nil {
		t.Fatalf("delays from the real plugin do not fit Poisson(25) on [18, 35]: %v", err)
	}
}

func TestDefaultUnitIsOneMinuteThroughRealHost(t *testing.T) {
	bin := plugintest.Build(t, ".")
	p := plugintest.Start(t, bin, `{"lambda":3}`)
	ds, err := p.Delay(context.Background(), sdk.DelayRequest{Count: 200})
	if err != nil {
		t.Fatal(err)
	}
	units(t, ds, time.Minute)
	var sum time.Duration
	for _, d := range ds {
		sum += d
	}
	// Mean 3m, sd of the mean sqrt(3)/sqrt(200) m ~ 7.3 s.
	if mean := sum / 200; mean < 2*time.Minute || mean > 4*time.Minute {
		t.Fatalf("mean delay %s with lambda 3 and the default unit, want about 3m", mean)
	}
}

// TestDelayerConformance runs the SDK's delay-stage contract on the stage.
func TestDelayerConformance(t *testing.T) {
	plugintest.DelayerSuite{Name: "delay-poisson", New: func(r io.Reader) sdk.Delayer {
		return &Delayer{Dist: NewPoisson(25, time.Minute, 0, 0), Rand: r}
	}}.Run(t)
}

func TestAbsurdTruncationRejectedThroughRealHost(t *testing.T) {
	bin := plugintest.Build(t, ".")
	_, err := plugintest.StartErr(t, bin, `{"lambda":5,"min":"1h"}`)
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
	p := plugintest.Start(b, bin, `{"lambda":25,"unit":"1m","min":"18m","max":"35m"}`)
	ctx := context.Background()
	for b.Loop() {
		if _, err := p.Delay(ctx, sdk.DelayRequest{Count: 64}); err != nil {
			b.Fatal(err)
		}
	}
}
