package e2e

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mixmta/mixmta/internal/peers"
)

// BenchmarkMixNodeMemory measures the memory of mix nodes, core plus every
// plugin process (VmRSS from /proc): idle, once a 5-node loopback mixnet
// (configs/local-mixnet.yaml: its cover traffic, zero delays, λ_P = 10/s)
// is healthy, and the peak
// while 300 messages of 64 KiB (two Sphinx packets each) cross it from
// 20 SMTP sessions, sampled every 20 ms on every node. The figure per
// phase is the largest node's. Targets: idle <= 100 MiB, under load
// <= 300 MiB. Run with
//
//	go test -run '^$' -bench MixNodeMemory -benchtime 1x ./core/e2e/
//
// (bench/mix-memory.sh).
func BenchmarkMixNodeMemory(b *testing.B) {
	for i := 0; i < b.N; i++ {
		sink := peers.SmtpSink(b)
		m := startMixnet(b, 5, sink.Addr, map[string]any{
			"scheduler.window":           "10ms",
			"pipeline.delay.config":      map[string]any{"mean": "1us", "max": "1us"},
			"mix.hop_delay.config":       map[string]any{"mean": "1us", "max": "1us"},
			"pipeline.exit-delay.config": map[string]any{"mean": "1us", "max": "1us"},
			// λ_P 10/s per node: 300 messages (600 packets) need at least
			// 12 s to leave their entries.
			"mix.send_rate": 10,
			// Loops lost to a loaded machine must not mark nodes down
			// and hold the mail mid-measurement.
			"mix.loop_timeout": "2m",
		})
		m.waitHealthy(b)
		time.Sleep(5 * time.Second) // settle after start-up

		idle := 0
		for j, n := range m.nodes {
			c, p := rssKiB(n.pid())
			cm := readProcMem(n.pid())
			fmt.Printf("mix node %d idle: core %d MiB (anonymous %d, file-backed %d: the mapped queue files and binary) + plugins %d MiB = %d MiB\n",
				j+1, c>>10, cm.anon>>10, cm.file>>10, p>>10, (c+p)>>10)
			idle = max(idle, c+p)
		}

		stop := make(chan struct{})
		var peaks []<-chan memPeaks
		for _, n := range m.nodes {
			peaks = append(peaks, sampleMemory(n.pid(), stop))
		}
		const msgs, size, sessions = 300, 64 << 10, 20
		start := time.Now()
		var next atomic.Int64
		var wg sync.WaitGroup
		for s := 0; s < sessions; s++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					j := next.Add(1) - 1
					if j >= msgs {
						return
					}
					if err := sendBig(m.smtp[j%int64(len(m.smtp))], fmt.Sprintf("mem%d", j), size); err != nil {
						b.Errorf("message %d: %v", j, err)
						return
					}
				}
			}()
		}
		wg.Wait()
		if !sink.WaitCount(msgs, 5*time.Minute) {
			close(stop)
			b.Fatalf("%d of %d messages delivered after 5 min", sink.Count(), msgs)
		}
		elapsed := time.Since(start)
		close(stop)
		load := 0
		for j, ch := range peaks {
			p := <-ch
			fmt.Printf("mix node %d under load, peak: core %d MiB (anonymous %d, file-backed %d) + plugins %d MiB, together %d MiB\n",
				j+1, p.core>>10, p.coreAnon>>10, p.coreFile>>10, p.plugins>>10, p.total>>10)
			load = max(load, p.total)
		}
		fmt.Printf("mix node memory, largest node: idle %d MiB (target <= 100), under load %d MiB (target <= 300); %d x 64 KiB messages through 5 nodes in %.1f s\n",
			idle>>10, load>>10, msgs, elapsed.Seconds())
		b.ReportMetric(float64(idle)/1024, "idle-MiB")
		b.ReportMetric(float64(load)/1024, "load-MiB")
	}
}
