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

type relayRun struct {
	name  string
	msgs  int
	size  int
	secs  float64
	rateP float64
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
			mix, idle, after := relayOnce(b, "mixmta", l.msgs, l.size)
			pf, _, _ := relayOnce(b, "postfix", l.msgs, l.size)
			lines = append(lines, fmt.Sprintf("relay %5d x %5d B, 20 sessions: mixmta %7.0f msg/s  postfix %7.0f msg/s  ratio %.2fx",
				l.msgs, l.size, mix, pf, mix/pf))
			lines = append(lines, fmt.Sprintf("memory (core+plugins RSS): idle %s, after %d x %d B: %s", idle, l.msgs, l.size, after))
			b.ReportMetric(mix, fmt.Sprintf("mixmta-msg/s-%dB", l.size))
			b.ReportMetric(pf, fmt.Sprintf("postfix-msg/s-%dB", l.size))
		}
		for _, l := range lines {
			fmt.Println(l)
		}
	}
}

func relayOnce(b *testing.B, system string, msgs, size int) (rate float64, idle, after string) {
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
	}
	start := time.Now()
	if _, err := peers.SmtpSource(b, addr, peers.SourceOptions{Sessions: 20, Count: msgs, Size: size,
		From: "a@example.org", To: "b@example.net"}); err != nil {
		b.Fatal(err)
	}
	if !sink.WaitCount(msgs, 5*time.Minute) {
		b.Fatalf("%s: sink got %d of %d", system, sink.Count(), msgs)
	}
	el := time.Since(start)
	if pid != 0 {
		c, p := rssKiB(pid)
		after = fmt.Sprintf("%d MiB (core %d + plugins %d)", (c+p)/1024, c/1024, p/1024)
	}
	return float64(msgs) / el.Seconds(), idle, after
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
