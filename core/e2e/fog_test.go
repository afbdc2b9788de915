package e2e

import (
	"fmt"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mixmta/mixmta/internal/peers"
)

// TestFogProfileDeliversOnFourNodes: configs/fog.yaml's own pipeline and
// settings (entry sanitize, message delay, 3-hop Sphinx, exit sanitize and
// exit delay, a pool with min_pool 5, fog's send, drop and loop rates, the
// loop timeout derived from the delays) with its delays scaled down (hop
// delay and pool window 1/100, message and exit delays 1/3600 and 1/300),
// on the smallest network it can use: 4 nodes, so that every path is the
// other three. Low traffic (one message every few seconds) must not
// starve the pool (it is fed with dummies), no node may be marked down on
// a loaded machine, and every message is delivered, each at least the
// exit delay's minimum (2 s here) after an exit assembled it.
func TestFogProfileDeliversOnFourNodes(t *testing.T) {
	sink := peers.SmtpSink(t)
	m := startProfileMixnet(t, "configs/fog.yaml", 4, sink.Addr, map[string]any{
		"pipeline.delay.config":      map[string]any{"mean": "4s", "min": "1s", "max": "24s"},
		"pipeline.exit-delay.config": map[string]any{"mean": "3s", "min": "2s", "max": "24s"},
		"mix.hop_delay.config":       map[string]any{"mean": "300ms", "max": "6s"},
		"scheduler.window":           "300ms",
		// Links over direct TCP here; TestMixnetOverOnionServices runs
		// the mixnet over Tor.
		"tor": nil,
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

	// The exit holds each message for its own delay: sorted, the k-th
	// delivery comes at least 2 s after the k-th assembly.
	assembled := regexp.MustCompile(`(?m)^(\S+) \[INFO\]\s+\S+: \[MIX\] message assembled`)
	var at, delivered []time.Time
	for _, n := range m.nodes {
		for _, mm := range assembled.FindAllStringSubmatch(n.log(), -1) {
			ts, err := time.Parse("2006-01-02T15:04:05.000Z07:00", mm[1])
			if err != nil {
				t.Fatal(err)
			}
			at = append(at, ts)
		}
	}
	files, err := sink.Messages()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		fi, err := os.Stat(f.Path)
		if err != nil {
			t.Fatal(err)
		}
		delivered = append(delivered, fi.ModTime())
	}
	if len(at) != msgs || len(delivered) != msgs {
		t.Fatalf("%d messages assembled and %d delivered, want %d", len(at), len(delivered), msgs)
	}
	slices.SortFunc(at, time.Time.Compare)
	slices.SortFunc(delivered, time.Time.Compare)
	for k := range at {
		if d := delivered[k].Sub(at[k]); d < 2*time.Second-100*time.Millisecond {
			t.Errorf("delivery %d came %s after assembly %d: the exit did not hold it for its delay", k, d, k)
		}
	}
}
