package main

import (
	cryptorand "crypto/rand"
	"sync"
	"testing"
	"time"

	"github.com/mixmta/mixmta/sdk"
)

// TestConcurrentDelayCallsAreSafe runs Delay from many goroutines on one
// stage, as the core does; run it with -race.
func TestConcurrentDelayCallsAreSafe(t *testing.T) {
	d := &Delayer{Dist: Exponential{Mean: time.Minute, Max: 10 * time.Minute}, Rand: cryptorand.Reader}
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for range 16 {
		wg.Go(func() {
			for range 50 {
				ds, err := d.Delay(t.Context(), sdk.DelayRequest{Count: 64})
				if err == nil && len(ds) != 64 {
					t.Errorf("got %d delays, want 64", len(ds))
				}
				if err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}
