package sdk

import (
	"runtime/debug"
	"runtime/metrics"
	"time"
)

// idleGCPercent is a plugin's GOGC while it allocates little. Go's
// smallest heap goal is 4 MiB × GOGC/100: at pluginGCPercent a plugin
// whose live heap is 1 MiB grows to 16 MiB of mostly garbage before each
// collection and keeps those pages. Measured on an idle mix node (cover
// traffic only, configs/local-mixnet.yaml): the sphinx plugin allocates
// about 2.4 MB/s, collects every ~6 s at "15->15->1 MB, 16 MB goal" and
// holds 18.8 MiB anonymous; at 100 it collects about once a second
// (0.3-10 ms of CPU each, under 1 % of a core) and holds 6.7 MiB.
const idleGCPercent = 100

// busyAllocRate is the allocation rate (bytes per second, averaged over
// paceInterval) above which a plugin runs at pluginGCPercent: under load
// (hundreds of 64 KiB calls a second, each allocating its copies) the
// collector's CPU matters and memory is there to trade for it.
const busyAllocRate = 8 << 20

// paceInterval is how often the pacer reads the allocation rate; idleAfter
// is how many quiet intervals in a row switch a busy plugin back to
// idleGCPercent (one busy interval switches it to pluginGCPercent).
const (
	paceInterval = time.Second
	idleAfter    = 5
)

// paceGC switches the plugin's GOGC between idleGCPercent and
// pluginGCPercent with its allocation rate, and gives the heap it grew
// while busy back to the system when it turns idle. A plugin starts busy
// (its start allocates, and a load may be waiting for it). It runs until
// the process exits.
func paceGC() {
	debug.SetGCPercent(pluginGCPercent)
	go func() {
		sample := []metrics.Sample{{Name: "/gc/heap/allocs:bytes"}}
		metrics.Read(sample)
		last := sample[0].Value.Uint64()
		p := gcPacer{busy: true}
		for range time.Tick(paceInterval) {
			metrics.Read(sample)
			now := sample[0].Value.Uint64()
			percent, release := p.next(float64(now-last) / paceInterval.Seconds())
			last = now
			if percent != 0 {
				debug.SetGCPercent(percent)
			}
			if release {
				debug.FreeOSMemory()
			}
		}
	}()
}

// gcPacer decides paceGC's switches.
type gcPacer struct {
	busy  bool
	quiet int // quiet intervals in a row while busy
}

// next takes the allocation rate of the last interval (bytes per second)
// and returns the GOGC to set (0: unchanged) and whether to give the
// free heap back to the system.
func (p *gcPacer) next(rate float64) (percent int, release bool) {
	switch {
	case rate >= busyAllocRate:
		p.quiet = 0
		if !p.busy {
			p.busy = true
			return pluginGCPercent, false
		}
	case p.busy:
		if p.quiet++; p.quiet >= idleAfter {
			p.busy, p.quiet = false, 0
			return idleGCPercent, true
		}
	}
	return 0, false
}
