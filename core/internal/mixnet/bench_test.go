package mixnet_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// benchNet is the benchmark's mixnet (sender, node under test, exit) and
// the packets made for the node under test. They are kept across the
// benchmark's runs: each run has a fresh queue, so the same packets are
// new to it (no replay tag).
var benchNet struct {
	mu      sync.Mutex
	net     *simNet
	s, u, x *simNode
	pkts    [][]byte
}

// benchPackets returns n packets whose first hop is the node under test
// (path [mix, exit]), making the missing ones with two sender processes.
func benchPackets(b *testing.B, n int) [][]byte {
	b.Helper()
	bn := &benchNet
	bn.mu.Lock()
	defer bn.mu.Unlock()
	now := time.Now()
	if bn.net == nil {
		dir, err := os.MkdirTemp(tmpRoot, "bench-")
		if err != nil {
			b.Fatal(err)
		}
		bn.net = newSimNet(b, dir, now, nodeSpec{"sender", false}, nodeSpec{"mix", false}, nodeSpec{"exit", true})
		bn.s, bn.u, bn.x = bn.net.node("sender"), bn.net.node("mix"), bn.net.node("exit")
	}
	missing := n - len(bn.pkts)
	if missing <= 0 {
		return bn.pkts[:n]
	}
	const senders = 2
	made := make([][][]byte, senders)
	var wg sync.WaitGroup
	for i := range senders {
		sender := peer(b, bn.net, bn.s, 2, now, bn.u, bn.x)
		defer sender.Close() // idle senders would not run in the timed part, but keep it clean
		wg.Add(1)
		go func() {
			defer wg.Done()
			m := testMessage(1000)
			for j := i; j < missing; j += senders {
				routes, err := sender.Route(context.Background(), m)
				if err != nil || len(routes) != 1 || routes[0].NextHop != bn.u.ID() {
					b.Errorf("Route: %d routes, %v", len(routes), err)
					return
				}
				made[i] = append(made[i], routes[0].Body)
			}
		}()
	}
	wg.Wait()
	for _, m := range made {
		bn.pkts = append(bn.pkts, m...)
	}
	if len(bn.pkts) < n {
		b.Fatalf("made %d packets, want %d", len(bn.pkts), n)
	}
	return bn.pkts[:n]
}

// cpuSelf is this process's user + system CPU time.
func cpuSelf() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// cpuOf is process pid's user + system CPU time from /proc/PID/stat
// (fields 14 and 15, in clock ticks of 1/100 s on Linux).
func cpuOf(b *testing.B, pid int) time.Duration {
	data, err := os.ReadFile(filepath.Join("/proc", fmt.Sprint(pid), "stat"))
	if err != nil {
		b.Fatal(err)
	}
	f := strings.Fields(string(data[strings.LastIndexByte(string(data), ')')+2:]))
	var utime, stime int64
	if _, err := fmt.Sscan(f[11], &utime); err != nil {
		b.Fatal(err)
	}
	if _, err := fmt.Sscan(f[12], &stime); err != nil {
		b.Fatal(err)
	}
	return time.Duration(utime+stime) * 10 * time.Millisecond
}

// BenchmarkMixNodeThroughput measures a mix node's sustained forwarding
// rate: b.N pre-built 64 KiB packets enter through Node.Receive from
// several goroutines (receivers=8: a few inbound links; receivers=32: one
// link's default transport window) and each is stored and synced,
// unwrapped by the real sphinx plugin (batched Mix calls on its call
// stream, the packets through the body and reply regions), turned into
// its forward item with its replay tag (the stored packet taken over, its
// forward form kept in memory), released by the scheduler (10 ms window,
// zero hop delay) and handed to the links, which only count. The clock
// runs from the first Receive to the last send. Metrics: packets/s, and
// the CPU time per packet of the core process (queue, engine, plugin
// client, the receiving goroutines) and of the plugin process (call
// stream, unwrap): on a shared machine the CPU figures are steadier than
// the rate. Each receiver waits for the ack time (20 ms) per packet, so
// receivers=8 cannot exceed 400 packets/s, receivers=32 1,600.
//
//	go test -run '^$' -bench MixNodeThroughput -benchtime 3000x ./core/internal/mixnet/
func BenchmarkMixNodeThroughput(b *testing.B) {
	for _, r := range []int{8, 32, 96} {
		b.Run(fmt.Sprintf("receivers=%d", r), func(b *testing.B) { benchThroughput(b, r) })
	}
}

func benchThroughput(b *testing.B, receivers int) {
	pkts := benchPackets(b, b.N)
	bn := &benchNet
	links := &fakeLinks{countOnly: true, target: int64(b.N), done: make(chan struct{})}
	h := startNode(b, bn.net, bn.u, nodeOptions{quiet: true, links: links, probe: 30 * time.Second})
	ctx := context.Background()
	pid := h.plugin.Pid()
	core0, plugin0 := cpuSelf(), cpuOf(b, pid)

	b.ResetTimer()
	start := time.Now()
	var next atomic.Int64
	var wg sync.WaitGroup
	for range receivers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1) - 1
				if i >= int64(len(pkts)) {
					return
				}
				if err := h.node.Receive(ctx, bn.s.ID(), pkts[i]); err != nil {
					b.Errorf("Receive: %v", err)
					return
				}
			}
		}()
	}
	wg.Wait()
	select {
	case <-links.done:
	case <-time.After(5 * time.Minute):
		b.Fatalf("%d of %d packets sent after 5 min; %s", links.n.Load(), b.N, h.node.StatsLine())
	}
	elapsed := time.Since(start)
	b.StopTimer()

	coreCPU, pluginCPU := cpuSelf()-core0, cpuOf(b, pid)-plugin0
	st := &h.node.Stats
	if st.Forwarded.Load() != int64(b.N) || st.Dropped.Load() != 0 || st.Replays.Load() != 0 {
		b.Fatalf("%s; want %d forwarded, nothing dropped", h.node.StatsLine(), b.N)
	}
	if r := h.plugin.Restarts(); r != 0 {
		b.Fatalf("plugin restarted %d times", r)
	}
	perPkt := func(d time.Duration) float64 { return float64(d.Microseconds()) / float64(b.N) }
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "packets/s")
	b.ReportMetric(perPkt(coreCPU), "core-cpu-us/pkt")
	b.ReportMetric(perPkt(pluginCPU), "plugin-cpu-us/pkt")
}
