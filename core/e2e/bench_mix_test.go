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
// plugin process, as the VmRSS sum, the PSS sum and the node-alone figure
// (nodeMem says how each counts shared pages): idle, once a 5-node
// loopback mixnet
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

		var idleRSS, idlePSS, idleAlone int
		for j, n := range m.nodes {
			nm := measureNode(n.pid())
			fmt.Printf("mix node %d idle: VmRSS core %d + plugins %d = %d MiB; PSS %d + %d = %d MiB; alone %d MiB (core: anonymous %d, value log mapped %d; %d plugin processes of %d binaries: binaries %d, anonymous %d)\n",
				j+1, nm.coreRSS>>10, nm.pluginsRSS>>10, nm.rss()>>10, nm.corePSS>>10, nm.pluginsPSS>>10, nm.pss()>>10, nm.alone>>10,
				nm.coreAnon>>10, nm.coreVlog>>10, nm.plugins, nm.binaries, nm.pluginBin>>10, nm.pluginAnon>>10)
			idleRSS, idlePSS, idleAlone = max(idleRSS, nm.rss()), max(idlePSS, nm.pss()), max(idleAlone, nm.alone)
		}

		stop := make(chan struct{})
		var peaks []<-chan nodeMem
		for _, n := range m.nodes {
			peaks = append(peaks, nodePeaks(n.pid(), stop))
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
		var loadRSS, loadPSS int
		for j, ch := range peaks {
			p := <-ch
			fmt.Printf("mix node %d under load, peak: VmRSS core %d + plugins %d = %d MiB; PSS %d + %d = %d MiB\n",
				j+1, p.coreRSS>>10, p.pluginsRSS>>10, p.rss()>>10, p.corePSS>>10, p.pluginsPSS>>10, p.pss()>>10)
			loadRSS, loadPSS = max(loadRSS, p.rss()), max(loadPSS, p.pss())
		}
		fmt.Printf("mix node memory, largest node: idle VmRSS %d MiB, PSS %d MiB, alone %d MiB (target <= 100); under load VmRSS %d MiB, PSS %d MiB (target <= 300); %d x 64 KiB messages through 5 nodes in %.1f s\n",
			idleRSS>>10, idlePSS>>10, idleAlone>>10, loadRSS>>10, loadPSS>>10, msgs, elapsed.Seconds())
		b.ReportMetric(float64(idleRSS)/1024, "idle-MiB")
		b.ReportMetric(float64(idlePSS)/1024, "idle-PSS-MiB")
		b.ReportMetric(float64(idleAlone)/1024, "idle-alone-MiB")
		b.ReportMetric(float64(loadRSS)/1024, "load-MiB")
		b.ReportMetric(float64(loadPSS)/1024, "load-PSS-MiB")
	}
}
