package e2e

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mixmta/mixmta/internal/peers"
)

// rssKiB sums VmRSS of pid and its children (the core and its plugins).
func rssKiB(pid int) (core, plugins int) {
	read := func(p int) int {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p))
		if err != nil {
			return 0
		}
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "VmRSS:") {
				v, _ := strconv.Atoi(strings.Fields(l)[1])
				return v
			}
		}
		return 0
	}
	core = read(pid)
	for _, k := range children(pid) {
		plugins += read(k)
	}
	return core, plugins
}

// cpuTree is the CPU time (user + system) pid has used, with its reaped
// children's (cutime, cstime: Postfix's short-lived daemons) and its live
// descendants' (mixmta's plugins), from /proc/PID/stat (proc(5)).
func cpuTree(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	var ticks int64
	for _, i := range []int{11, 12, 13, 14} { // utime stime cutime cstime
		if i < len(f) {
			v, _ := strconv.ParseInt(f[i], 10, 64)
			ticks += v
		}
	}
	d := time.Duration(ticks) * time.Second / 100 // USER_HZ
	for _, k := range children(pid) {
		d += cpuTree(k)
	}
	return d
}

// BenchmarkRelayVsPostfix measures relaying throughput side by side in one
// run: smtp-source (20 sessions) into mixmta (configs/relay.yaml, zero
// delay, durable queue) relaying to smtp-sink, and the same load into a
// temp-dir Postfix relaying to the same kind of sink; plus mixmta's memory
// (core + plugins RSS) idle and after the load. Run with
//
//	go test -run '^$' -bench RelayVsPostfix -benchtime 1x ./core/e2e/
//
// (bench/relay.sh). Each figure is messages delivered per second, from the
// first SMTP connection to the last message in the sink.
func BenchmarkRelayVsPostfix(b *testing.B) {
	loads := []struct {
		msgs, size int
	}{{5000, 1024}, {1000, 65536}}
	for i := 0; i < b.N; i++ {
		var lines []string
		for _, l := range loads {
			mix, idle, after, mixCPU := relayOnce(b, "mixmta", l.msgs, l.size)
			pf, _, _, pfCPU := relayOnce(b, "postfix", l.msgs, l.size)
			lines = append(lines, fmt.Sprintf("relay %5d x %5d B, 20 sessions: mixmta %7.0f msg/s  postfix %7.0f msg/s  ratio %.2fx",
				l.msgs, l.size, mix, pf, mix/pf))
			// CPU per message is what a loaded machine does not distort:
			// the rate above shares the cores with whatever else runs.
			lines = append(lines, fmt.Sprintf("cpu per message %5d B: mixmta (core+plugins) %4.0f us  postfix (all daemons) %4.0f us  ratio %.2fx",
				l.size, mixCPU, pfCPU, pfCPU/mixCPU))
			lines = append(lines, fmt.Sprintf("memory (core+plugins RSS): idle %s, after %d x %d B: %s", idle, l.msgs, l.size, after))
			b.ReportMetric(mix, fmt.Sprintf("mixmta-msg/s-%dB", l.size))
			b.ReportMetric(pf, fmt.Sprintf("postfix-msg/s-%dB", l.size))
		}
		for _, l := range lines {
			fmt.Println(l)
		}
	}
}

// relayOnce relays msgs messages of size bytes through system and returns
// the rate, mixmta's memory idle and after, and the system's CPU time per
// message in microseconds (smtp-source and smtp-sink not counted).
func relayOnce(b *testing.B, system string, msgs, size int) (rate float64, idle, after string, cpuPerMsg float64) {
	sink := peers.SmtpSink(b)
	var addr string
	var pid int
	switch system {
	case "mixmta":
		addr = freeAddr(b)
		cfg, data := profile(b, "configs/relay.yaml", map[string]any{
			"listeners.0.address":                addr,
			"listeners.0.max_sessions":           200,
			"log.level":                          "warn",
			"scheduler.window":                   "50ms",
			"pipeline.delay.config.mean":         "1ms",
			"pipeline.delay.config.min":          "0s",
			"pipeline.delay.config.max":          "10ms",
			"pipeline.deliver.config.relay_host": sink.Addr,
			"pipeline.deliver.config.tls":        "none",
		})
		n := startNode(b, cfg, data, addr)
		defer n.stop()
		pid = n.pid()
		time.Sleep(2 * time.Second)
		c, p := rssKiB(pid)
		idle = fmt.Sprintf("%d MiB (core %d + plugins %d)", (c+p)/1024, c/1024, p/1024)
	case "postfix":
		pf := peers.Postfix(b, peers.PostfixConfig{Domains: []string{"local.invalid"}, Main: []string{
			"mynetworks = 127.0.0.0/8",
			"smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination",
			"relayhost = [127.0.0.1]:" + strings.Split(sink.Addr, ":")[1],
			"smtp_tls_security_level = none",
			"default_destination_concurrency_limit = 20",
		}})
		addr = pf.Addr
		if p, err := os.ReadFile(pf.Dir + "/queue/pid/master.pid"); err == nil {
			pid, _ = strconv.Atoi(strings.TrimSpace(string(p)))
		}
	}
	cpu0 := cpuTree(pid)
	start := time.Now()
	if _, err := peers.SmtpSource(b, addr, peers.SourceOptions{Sessions: 20, Count: msgs, Size: size,
		From: "a@example.org", To: "b@example.net"}); err != nil {
		b.Fatal(err)
	}
	if !sink.WaitCount(msgs, 5*time.Minute) {
		b.Fatalf("%s: sink got %d of %d", system, sink.Count(), msgs)
	}
	el := time.Since(start)
	if pid == 0 {
		b.Fatalf("%s: no process to measure", system)
	}
	cpuPerMsg = float64((cpuTree(pid) - cpu0).Microseconds()) / float64(msgs)
	if system == "mixmta" {
		c, p := rssKiB(pid)
		after = fmt.Sprintf("%d MiB (core %d + plugins %d)", (c+p)/1024, c/1024, p/1024)
	}
	return float64(msgs) / el.Seconds(), idle, after, cpuPerMsg
}

// BenchmarkMixnetLatency measures what mixmta itself adds on the way
// through a 5-node loopback mixnet with (nearly) zero configured delays
// (message, hop and exit delays 1 µs, pool window 1 ms; the sending
// schedule at λ_P = 5/s adds its mean tick wait of 200 ms): the time from the
// entry's 250 to the message's arrival at smtp-sink, sequentially, and per
// hop (the path has 3 hops plus the exit's delivery). Run with
//
//	go test -run '^$' -bench MixnetLatency -benchtime 1x ./core/e2e/
func BenchmarkMixnetLatency(b *testing.B) {
	for i := 0; i < b.N; i++ {
		sink := peers.SmtpSink(b)
		m := startMixnet(b, 5, sink.Addr, map[string]any{
			"scheduler.window":      "1ms",
			"pipeline.delay.config": map[string]any{"mean": "1us", "max": "1us"},
			"mix.hop_delay.config":  map[string]any{"mean": "1us", "max": "1us"},
			// The exit's own delay off; the entry's packets still wait for
			// a tick of the sending schedule: 1/λ_P = 200 ms on average.
			"pipeline.exit-delay.config": map[string]any{"mean": "1us", "max": "1us"},
			"mix.send_rate":              5,
			"mix.cover":                  map[string]any{"drop_rate": 0, "loop_rate": 0},
			"log.level":                  "warn",
		})
		time.Sleep(3 * time.Second) // first probes
		const n = 40
		var total time.Duration
		got := 0
		for j := 0; j < n; j++ {
			start := time.Now()
			if err := sendRaw(m.smtp[j%5], "a@example.org", []string{"lat@example.net"}, []byte("Subject: l\r\n\r\nlatency\r\n"), false); err != nil {
				b.Fatal(err)
			}
			if !sink.WaitCount(got+1, 30*time.Second) {
				b.Fatalf("message %d not delivered", j)
			}
			got++
			total += time.Since(start)
		}
		mean := total / n
		fmt.Printf("mixnet latency, 5 nodes, 3 hops, zero delays: %v per message end to end, %v per hop (4 steps: 3 hops + exit delivery)\n",
			mean.Round(time.Microsecond), (mean / 4).Round(time.Microsecond))
		b.ReportMetric(float64(mean.Microseconds()), "us/message")
		b.ReportMetric(float64((mean / 4).Microseconds()), "us/hop")
	}
}
