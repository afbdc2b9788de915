package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/mixmta/mixmta/sdk/plugintest/peers"
)

// TestFogProfileDeliversOnFourNodes: configs/fog.yaml's own pipeline and
// settings (entry sanitize, message delay, 3-hop Sphinx, exit sanitize and
// exit delay, a pool with min_pool 5, fog's send, drop and loop rates, the
// loop timeout derived from the delays) with its delays scaled down (hop
// delay and pool window 1/100, message and exit delays 1/3600 and 1/300),
// on the smallest network it can use: 4 nodes, so that every path is the
// other three. Low traffic (one message every few seconds) must not
// starve the pool (it is fed with dummies), no node may be marked down on
// a loaded machine, and every message is delivered.
func TestFogProfileDeliversOnFourNodes(t *testing.T) {
	sink := peers.SmtpSink(t)
	m := startProfileMixnet(t, "configs/fog.yaml", 4, sink.Addr, map[string]any{
		"pipeline.delay.config":      map[string]any{"mean": "4s", "min": "1s", "max": "24s"},
		"pipeline.exit-delay.config": map[string]any{"mean": "3s", "max": "24s"},
		"mix.hop_delay.config":       map[string]any{"mean": "300ms", "max": "6s"},
		"scheduler.window":           "300ms",
	})
	m.waitHealthy(t)
	const msgs = 6
	for i := 0; i < msgs; i++ {
		entry := m.smtp[i%len(m.smtp)]
		if err := sendRaw(entry, "someone@example.org", []string{fmt.Sprintf("fog%d@example.net", i)}, []byte("Subject: fog\r\n\r\nlow traffic\r\n"), false); err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		time.Sleep(3 * time.Second)
	}
	if !eventuallyCount(sink.Count, msgs, 150*time.Second) {
		t.Fatalf("%d of %d messages delivered", sink.Count(), msgs)
	}
	dummies := 0
	for i, n := range m.nodes {
		st := lastStats(n.log())
		if !strings.Contains(st, "healthy_nodes=3") || !strings.Contains(st, "paths=ok") {
			t.Errorf("node%d: %s", i+1, st)
		}
		if strings.Contains(n.log(), "too few healthy nodes for full paths") {
			t.Errorf("node%d held mail for want of healthy nodes", i+1)
		}
		dummies += max(0, statValue(st, "pool_dummies"))
	}
	if dummies == 0 {
		t.Errorf("no dummy fed a pool of min_pool 5 at this low traffic")
	}
	t.Logf("%d pool dummies; node1: %s", dummies, lastStats(m.nodes[0].log()))
}
