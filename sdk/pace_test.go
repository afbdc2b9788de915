package sdk

import "testing"

// TestGCPacerFollowsTheAllocationRate: one busy interval raises GOGC to
// pluginGCPercent; only idleAfter quiet intervals in a row bring it back
// to idleGCPercent, with the free heap given back; a busy interval in
// between starts the count again.
func TestGCPacerFollowsTheAllocationRate(t *testing.T) {
	const quiet, busy = 2 << 20, 64 << 20
	type step struct {
		rate    float64
		percent int
		release bool
	}
	steps := []step{
		{quiet, 0, false},
		{busy, pluginGCPercent, false},
		{busy, 0, false},
	}
	for range idleAfter - 1 {
		steps = append(steps, step{quiet, 0, false})
	}
	steps = append(steps, step{busy, 0, false}) // the count starts again
	for range idleAfter - 1 {
		steps = append(steps, step{quiet, 0, false})
	}
	steps = append(steps, step{quiet, idleGCPercent, true}, step{quiet, 0, false}, step{busy, pluginGCPercent, false})
	p := gcPacer{busy: false}
	for i, s := range steps {
		percent, release := p.next(s.rate)
		if percent != s.percent || release != s.release {
			t.Fatalf("step %d (rate %.0f B/s): GOGC %d, release %v; want %d, %v", i, s.rate, percent, release, s.percent, s.release)
		}
	}
}
