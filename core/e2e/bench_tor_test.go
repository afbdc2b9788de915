package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/mixmta/mixmta/internal/peers"
)

// torsocksPostfix is onionmx's own recipe on the test network: a Postfix
// whose smtptor transport runs Postfix's smtp client under `torsocks -i`
// (a new circuit per smtp process), tuned as measured (connection cache
// off, which torsocks breaks), relaying the domain example.net to onion.
func torsocksPostfix(b *testing.B, tn *peers.TorNet, onion string) *peers.PostfixPeer {
	peers.Ensure(b, "torsocks", "torsocks")
	dir := b.TempDir()
	os.Chmod(dir, 0o755)
	daemons := filepath.Join(dir, "daemons")
	os.MkdirAll(daemons, 0o755)
	ents, _ := os.ReadDir("/usr/lib/postfix/sbin")
	for _, e := range ents {
		os.Symlink(filepath.Join("/usr/lib/postfix/sbin", e.Name()), filepath.Join(daemons, e.Name()))
	}
	port := tn.SocksAddr[strings.LastIndex(tn.SocksAddr, ":")+1:]
	conf := filepath.Join(dir, "torsocks.conf")
	os.WriteFile(conf, []byte("TorAddress 127.0.0.1\nTorPort "+port+"\nOnionAddrRange 127.42.42.0/24\nAllowInbound 1\n"), 0o644)
	// Postfix's master clears the environment: set it in the wrapper.
	os.WriteFile(filepath.Join(daemons, "smtp_tor"), []byte("#!/bin/sh\nTORSOCKS_CONF_FILE="+conf+"\nexport TORSOCKS_CONF_FILE\nexec /usr/bin/torsocks -i /usr/lib/postfix/sbin/smtp \"$@\"\n"), 0o755)
	return peers.Postfix(b, peers.PostfixConfig{
		Domains: []string{"example.org"},
		Main: []string{
			"myhostname = torsocks.example.org",
			"daemon_directory = " + daemons,
			"transport_maps = inline:{ example.net=smtptor:[" + onion + "]:25 }",
			"smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination",
			"default_destination_concurrency_limit = 20",
		},
		Master: []string{"smtptor/unix = smtptor unix - - n - - smtp_tor -o smtp_dns_support_level=disabled -o smtp_tls_security_level=none -o smtp_connection_cache_on_demand=no"},
	})
}

// BenchmarkOnionDeliveryVsTorsocks: the same messages to one onion
// service on the offline Tor network, through mixmta's onionmx gateway
// (configs/onionmx-gateway.yaml, a literal .onion recipient, isolation per
// destination) and through Postfix with onionmx's `torsocks -i` recipe
// (tuned: connection cache off), side by side in one run: messages/s with
// smtp-source (20 sessions; 200 x 1 KiB, 100 x 64 KiB, until the last
// lands at smtp-sink), and the p50/p90 latency of 20 sequential 1 KiB
// messages with warm circuits (250 at the sender to arrival at the sink).
//
//	go test -run '^$' -bench OnionDeliveryVsTorsocks -benchtime 1x ./core/e2e/
func BenchmarkOnionDeliveryVsTorsocks(b *testing.B) {
	tn := peers.Tor(b)
	for i := 0; i < b.N; i++ {
		sink := peers.SmtpSink(b)
		onion := tn.AddOnion(b, 25, sink.Addr)
		from := freeAddr(b)
		cfg, data := profile(b, "configs/onionmx-gateway.yaml", map[string]any{
			"listeners.0.address":              from,
			"listeners.0.max_sessions":         200,
			"listeners.1.address":              freeAddr(b),
			"log.level":                        "warn",
			"scheduler.window":                 "50ms",
			"scheduler.concurrency":            20,
			"tor.socks_address":                tn.SocksAddr,
			"tor.control_address":              tn.ControlAddr,
			"tor.cookie_file":                  tn.ControlCookie,
			"pipeline.deliver.config.srv":      false,
			"pipeline.deliver.config.tls":      "none",
			"pipeline.deliver.config.max_idle": 20,
		})
		gw := startNode(b, cfg, data, from)
		pf := torsocksPostfix(b, tn, onion)
		systems := []struct {
			name, addr, rcpt string
		}{{"mixmta", from, "b@" + onion}, {"postfix+torsocks", pf.Addr, "b@example.net"}}
		// Warm both paths (descriptor fetch, first circuits).
		for _, s := range systems {
			n := sink.Count()
			if err := sendRaw(s.addr, "a@example.org", []string{s.rcpt}, []byte("Subject: warm\r\n\r\nwarm\r\n"), false); err != nil {
				b.Fatal(err)
			}
			if !sink.WaitCount(n+1, 2*time.Minute) {
				b.Fatalf("%s: warm-up message not delivered", s.name)
			}
		}
		for _, load := range []struct{ msgs, size int }{{200, 1024}, {100, 65536}} {
			var line []string
			for _, s := range systems {
				n := sink.Count()
				start := time.Now()
				if _, err := peers.SmtpSource(b, s.addr, peers.SourceOptions{Sessions: 20, Count: load.msgs, Size: load.size, From: "a@example.org", To: s.rcpt}); err != nil {
					b.Fatal(err)
				}
				if !sink.WaitCount(n+load.msgs, 5*time.Minute) {
					b.Fatalf("%s: %d of %d delivered", s.name, sink.Count()-n, load.msgs)
				}
				rate := float64(load.msgs) / time.Since(start).Seconds()
				b.ReportMetric(rate, fmt.Sprintf("%s-msg/s-%dB", s.name, load.size))
				line = append(line, fmt.Sprintf("%s %6.1f msg/s", s.name, rate))
			}
			fmt.Printf("onion delivery %d x %d B, 20 sessions: %s\n", load.msgs, load.size, strings.Join(line, "  "))
		}
		var line []string
		for _, s := range systems {
			var lat []time.Duration
			for range 20 {
				n := sink.Count()
				if err := sendRaw(s.addr, "a@example.org", []string{s.rcpt}, []byte("Subject: lat\r\n\r\n"+strings.Repeat("x", 1000)+"\r\n"), false); err != nil {
					b.Fatal(err)
				}
				start := time.Now()
				for sink.Count() <= n {
					if time.Since(start) > time.Minute {
						b.Fatalf("%s: latency message lost", s.name)
					}
					time.Sleep(2 * time.Millisecond)
				}
				lat = append(lat, time.Since(start))
			}
			sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
			b.ReportMetric(lat[10].Seconds(), s.name+"-p50-s")
			line = append(line, fmt.Sprintf("%s p50 %.3f s p90 %.3f s", s.name, lat[10].Seconds(), lat[18].Seconds()))
		}
		fmt.Printf("latency 1 KiB, warm circuits, sequential: %s\n", strings.Join(line, "  "))
		gw.stop()
	}
}

// BenchmarkMixnetLatencyDirectVsTor: end-to-end latency of a 5-node
// mixnet with (nearly) zero configured delays, links over direct TCP and
// then over onion services on the Tor test network, side by side in one
// run: 20 sequential 1-packet messages each, from the entry's 250 to the
// exit's delivery at smtp-sink, and per hop (3 hops + the exit's
// delivery); the difference between the two, per hop, is what Tor adds
// (the sending schedule's tick waits and the mixing are the same both
// ways).
//
//	go test -run '^$' -bench MixnetLatencyDirectVsTor -benchtime 1x ./core/e2e/
func BenchmarkMixnetLatencyDirectVsTor(b *testing.B) {
	tn := peers.Tor(b)
	for i := 0; i < b.N; i++ {
		var line []string
		var means [2]time.Duration
		for k, overTor := range []bool{false, true} {
			sink := peers.SmtpSink(b)
			patches := map[string]any{
				"scheduler.window":      "1ms",
				"pipeline.delay.config": map[string]any{"mean": "1us", "max": "1us"},
				"mix.hop_delay.config":  map[string]any{"mean": "1us", "max": "1us"},
				"mix.cover":             map[string]any{"drop_rate": 0, "loop_rate": 0},
			}
			name := "direct TCP"
			if overTor {
				name = "onion services"
				patches["tor"] = map[string]any{
					"socks_address":   tn.SocksAddr,
					"control_address": tn.ControlAddr,
					"cookie_file":     tn.ControlCookie,
					"onion_services":  []map[string]any{{"listener": "mix"}},
				}
			}
			m := startMixnet(b, 5, sink.Addr, patches)
			want := fmt.Sprintf("healthy_nodes=%d", len(m.nodes)-1)
			deadline := time.Now().Add(3 * time.Minute)
			for _, n := range m.nodes {
				for !strings.Contains(lastStats(n.log()), want) {
					if time.Now().After(deadline) {
						b.Fatalf("%s: node not healthy: %s", name, lastStats(n.log()))
					}
					time.Sleep(200 * time.Millisecond)
				}
			}
			// Warm: one message from each entry (circuits to every peer).
			for j := range 5 {
				if err := sendRaw(m.smtp[j], "a@example.org", []string{"w@example.net"}, []byte("Subject: w\r\n\r\nwarm\r\n"), false); err != nil {
					b.Fatal(err)
				}
			}
			if !sink.WaitCount(5, 2*time.Minute) {
				b.Fatalf("%s: warm-up not delivered", name)
			}
			const n = 20
			var total time.Duration
			for j := range n {
				start := time.Now()
				if err := sendRaw(m.smtp[j%5], "a@example.org", []string{"lat@example.net"}, []byte("Subject: l\r\n\r\nlatency\r\n"), false); err != nil {
					b.Fatal(err)
				}
				if !sink.WaitCount(5+j+1, time.Minute) {
					b.Fatalf("%s: message %d not delivered", name, j)
				}
				total += time.Since(start)
			}
			mean := total / n
			means[k] = mean
			b.ReportMetric(float64((mean / 4).Microseconds()), strings.ReplaceAll(name, " ", "-")+"-us/hop")
			line = append(line, fmt.Sprintf("%s %v per message, %v per hop", name, mean.Round(time.Millisecond), (mean/4).Round(time.Millisecond)))
			for _, nd := range m.nodes {
				nd.stop()
			}
		}
		extra := (means[1] - means[0]) / 4
		b.ReportMetric(float64(extra.Microseconds()), "tor-extra-us/hop")
		fmt.Printf("mixnet latency, 5 nodes, 3 hops, zero delays: %s; Tor adds %v per hop\n", strings.Join(line, "; "), extra.Round(time.Millisecond))
	}
}
