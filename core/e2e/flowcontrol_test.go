package e2e

import (
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mixmta/mixmta/core/internal/config"
	"github.com/mixmta/mixmta/internal/peers"
)

// deliveryGate is a TCP proxy in front of a real SMTP peer: closed, it cuts every
// connection at once (the exit's deliveries fail temporarily and are
// retried); open, it passes them through.
type deliveryGate struct {
	addr string
	open atomic.Bool
}

func newDeliveryGate(t *testing.T, to string) *deliveryGate {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	g := &deliveryGate{addr: ln.Addr().String()}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			if !g.open.Load() {
				c.Close()
				continue
			}
			go func() {
				defer c.Close()
				up, err := net.Dial("tcp", to)
				if err != nil {
					return
				}
				defer up.Close()
				go io.Copy(up, c)
				io.Copy(c, up)
			}()
		}
	}()
	return g
}

// startFloodMixnet starts 4 nodes of configs/local-mixnet.yaml of which
// only node4 is an exit, with queue.max_items maxItems (0: none), its
// deliveries to relayHost retried every second. Loops run at 1/s with a
// 8 s timeout, so that loops held up behind a full node would mark it
// down within seconds if they counted as lost.
func startFloodMixnet(t *testing.T, relayHost string, maxItems int) *mixnet {
	t.Helper()
	dir := t.TempDir()
	const n = 4
	smtpPort, mixPort := freeRange(t, n), freeRange(t, n)
	cfgs := initMixnet(t, dir, "configs/local-mixnet.yaml", mixnetSettings(relayHost, map[string]any{
		"mix.cover":        map[string]any{"drop_rate": 0.2, "loop_rate": 1},
		"mix.loop_timeout": "8s",
	}), "--nodes", fmt.Sprint(n), "--smtp-port", fmt.Sprint(smtpPort), "--mix-port", fmt.Sprint(mixPort))
	patch := func(cfg string, p map[string]any) {
		b, err := os.ReadFile(cfg)
		if err != nil {
			t.Fatal(err)
		}
		if b, err = config.Patch(b, p); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(cfg, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	for i, cfg := range cfgs {
		if i == n-1 {
			patch(cfg, map[string]any{"queue.max_items": maxItems, "retry.schedule": []any{"1s"}, "retry.max_attempts": 1000, "retry.jitter": 0})
			continue
		}
		// Not an exit: its descriptor in the nodes file says so too.
		patch(cfg, map[string]any{"mix.exit": false})
		desc, err := mixmtaCommand(t, "node", "export", "-c", cfg).Output()
		if err != nil {
			t.Fatalf("node export: %v", err)
		}
		f := filepath.Join(dir, fmt.Sprintf("node%d.json", i+1))
		if err := os.WriteFile(f, desc, 0o600); err != nil {
			t.Fatal(err)
		}
		if b, err := mixmtaCommand(t, "nodes", "add", "-c", cfg, f).CombinedOutput(); err != nil {
			t.Fatalf("nodes add: %v\n%s", err, b)
		}
	}
	m := &mixnet{dir: dir}
	for i, cfg := range cfgs {
		addr := fmt.Sprintf("127.0.0.1:%d", smtpPort+i)
		m.smtp = append(m.smtp, addr)
		m.nodes = append(m.nodes, startNode(t, cfg, filepath.Join(filepath.Dir(cfg), "data"), addr))
	}
	return m
}

// flood sends each entry (nodes 1-3) perEntry messages with swaks, the
// entries in parallel, and returns the tokens of the messages that got
// 250 (every one must).
func (m *mixnet) flood(t *testing.T, perEntry int) []string {
	t.Helper()
	var mu sync.Mutex
	var accepted []string
	var wg sync.WaitGroup
	for e := 0; e < 3; e++ {
		wg.Add(1)
		go func(e int) {
			defer wg.Done()
			for i := 0; i < perEntry; i++ {
				tok := fmt.Sprintf("flood-%d-%d-%s", e, i, token())
				code, out := peers.Swaks(t, "--server", m.smtp[e], "--from", "a@example.org", "--to", "b@example.net",
					"--header", "Subject: flood", "--body", "token "+tok)
				if code != 0 {
					t.Errorf("entry %d message %d: swaks exit %d:\n%s", e+1, i, code, out)
					continue
				}
				mu.Lock()
				accepted = append(accepted, tok)
				mu.Unlock()
			}
		}(e)
	}
	wg.Wait()
	return accepted
}

// queuePeak samples the queue of the node with config cfg every 200 ms
// until stop is closed: the most messages and the most items it held.
func queuePeak(t *testing.T, cfg string, stop <-chan struct{}) (done <-chan [2]int) {
	out := make(chan [2]int, 1)
	go func() {
		var peak [2]int
		for {
			select {
			case <-stop:
				out <- peak
				return
			case <-time.After(200 * time.Millisecond):
			}
			b, err := mixmtaCommand(t, "queue", "ls", "--json", "-c", cfg).Output()
			if err != nil {
				continue
			}
			msgs := strings.Count(string(b), `"kind":"message"`)
			items := strings.Count(string(b), `"kind":`)
			peak[0], peak[1] = max(peak[0], msgs), max(peak[1], items)
		}
	}()
	return out
}

var healthyRe = regexp.MustCompile(`healthy_nodes=(\d+)`)

// TestMixnetFloodedExitKeepsItsBoundAndTheNetworkHealthy: 4 real nodes,
// node4 the only exit, with queue.max_items 4 and its deliveries failing
// (the path to the real smtp-sink is cut). 3 swaks clients send 24
// messages through the other three nodes: every one gets 250. node4 fills
// and refuses packets with the full word; its queue never holds more than
// 4 messages plus the documented slack (1). Meanwhile every node keeps the
// others healthy (healthy_nodes=3 in every [STATS] line; loops held up
// behind node4 are excused, not lost), so no node holds its mail. Once
// deliveries work again, every 250'd message reaches the sink exactly
// once. Control: the same flood with no max_items takes node4's queue
// past the bound.
func TestMixnetFloodedExitKeepsItsBoundAndTheNetworkHealthy(t *testing.T) {
	const maxItems, slack, perEntry = 4, 1, 8
	bound := maxItems + slack

	t.Run("control without max_items", func(t *testing.T) {
		sink := peers.SmtpSink(t)
		g := newDeliveryGate(t, sink.Addr)
		m := startFloodMixnet(t, g.addr, 0)
		m.waitHealthy(t)
		stop := make(chan struct{})
		peak := queuePeak(t, filepath.Join(m.dir, "node4", "mixmta.yaml"), stop)
		accepted := m.flood(t, perEntry)
		deadline := time.Now().Add(60 * time.Second)
		for statValue(lastStats(m.nodes[3].log()), "assembled") < len(accepted) && time.Now().Before(deadline) {
			time.Sleep(200 * time.Millisecond)
		}
		time.Sleep(time.Second)
		close(stop)
		p := <-peak
		t.Logf("without max_items: node4 held up to %d messages (%d items)", p[0], p[1])
		if p[0] <= bound {
			t.Fatalf("the flood took node4 to %d messages only: it does not test a bound of %d", p[0], bound)
		}
	})

	sink := peers.SmtpSink(t)
	g := newDeliveryGate(t, sink.Addr)
	m := startFloodMixnet(t, g.addr, maxItems)
	m.waitHealthy(t)
	exitCfg := filepath.Join(m.dir, "node4", "mixmta.yaml")
	stop := make(chan struct{})
	peak := queuePeak(t, exitCfg, stop)
	logStart := make([]int, len(m.nodes))
	for i, n := range m.nodes {
		logStart[i] = len(n.log())
	}

	accepted := m.flood(t, perEntry)
	if len(accepted) != 3*perEntry {
		t.Fatalf("%d of %d messages accepted", len(accepted), 3*perEntry)
	}
	deadline := time.Now().Add(90 * time.Second)
	for statValue(lastStats(m.nodes[3].log()), "full_refused") <= 0 {
		if time.Now().After(deadline) {
			t.Fatalf("node4 never refused a packet as full: %s", lastStats(m.nodes[3].log()))
		}
		time.Sleep(200 * time.Millisecond)
	}
	// Held full for longer than the loop timeout: loops through node4
	// are late.
	time.Sleep(20 * time.Second)
	g.open.Store(true)

	if !sink.WaitCount(len(accepted), 180*time.Second) {
		t.Errorf("%d of %d messages delivered; node4: %s", sink.Count(), len(accepted), lastStats(m.nodes[3].log()))
	}
	time.Sleep(2 * time.Second) // a duplicate would come now
	close(stop)
	p := <-peak
	t.Logf("with max_items %d: node4 held up to %d messages (%d items)", maxItems, p[0], p[1])
	if p[0] > bound {
		t.Errorf("node4 held %d messages, want at most max_items %d + slack %d", p[0], maxItems, slack)
	}

	msgs, err := sink.Messages()
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]int{}
	for _, msg := range msgs {
		if i := strings.Index(string(msg.Data), "flood-"); i >= 0 {
			seen[strings.Fields(string(msg.Data[i:]))[0]]++
		}
	}
	for _, tok := range accepted {
		if seen[tok] != 1 {
			t.Errorf("message %s delivered %d times, want once", tok, seen[tok])
		}
	}

	for i, n := range m.nodes {
		log := n.log()[logStart[i]:]
		lines := 0
		for _, l := range strings.Split(log, "\n") {
			if !strings.Contains(l, "[STATS]") {
				continue
			}
			lines++
			if mm := healthyRe.FindStringSubmatch(l); mm == nil || mm[1] != "3" {
				t.Errorf("node%d during the flood: %s", i+1, l)
				break
			}
		}
		if lines == 0 {
			t.Errorf("node%d logged no [STATS] line during the flood", i+1)
		}
	}
	rows, out := mixnetStats(t, filepath.Join(m.dir, "node1", "mixmta.yaml"))
	for name, r := range rows {
		if r.health != "up" {
			t.Errorf("node1 sees %s %s after the flood:\n%s", name, r.health, out)
		}
	}
	t.Logf("node1: %s", lastStats(m.nodes[0].log()))
	t.Logf("node4: %s", lastStats(m.nodes[3].log()))
}
