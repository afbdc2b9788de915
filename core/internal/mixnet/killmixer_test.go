package mixnet_test

import (
	"context"
	"crypto/sha256"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The sphinx plugin is killed with SIGKILL while the node is unwrapping a
// stream of packets (batched Mix calls in flight on the call stream):
// every packet whose Receive returned (acknowledged to the previous hop)
// still leaves, exactly once, after the plugin was restarted; nothing is
// dropped and no replay tag is marked twice.
func TestKillNineOfMixerDuringBatchLosesNoAckedPacket(t *testing.T) {
	now := time.Now()
	net, s, u, x := threeNodes(t, now)
	const n = 160
	links := &fakeLinks{target: n, done: make(chan struct{})}
	// Acks at once: the receivers store faster than the mixer unwraps, so
	// the engine's workers keep many Mix calls in flight.
	h := startNode(t, net, u, nodeOptions{links: links, quiet: true, probe: time.Hour, ackTime: -1})
	sender := peer(t, net, s, 2, now, u, x)
	var pkts [][]byte
	for range n {
		pkts = append(pkts, route(t, sender, testMessage(1000), u.ID())...)
	}
	pid := h.plugin.Pid()

	var wg sync.WaitGroup
	var mu sync.Mutex
	acked := 0
	next := make(chan []byte, n)
	for _, p := range pkts {
		next <- p
	}
	close(next)
	for range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for p := range next {
				if err := h.node.Receive(context.Background(), s.ID(), p); err != nil {
					t.Errorf("Receive: %v", err)
					continue
				}
				mu.Lock()
				acked++
				mu.Unlock()
			}
		}()
	}
	// Some packets have been unwrapped and sent, several are in the
	// mixer's hands: kill it now.
	eventually(t, "packets forwarded and Mix calls in flight", func() bool { return links.n.Load() >= 8 && h.mixer.mixing.Load() >= 4 })
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killedAt := links.n.Load()
	wg.Wait()
	if acked != n {
		t.Fatalf("%d of %d packets acknowledged", acked, n)
	}
	select {
	case <-links.done:
	case <-time.After(2 * time.Minute):
		t.Fatalf("%d of %d acknowledged packets forwarded after the kill; %s", links.n.Load(), n, h.node.StatsLine())
	}
	if killedAt >= n {
		t.Fatalf("the kill came after every packet was forwarded (%d): it tested nothing", killedAt)
	}
	if h.plugin.Restarts() < 1 || h.mixer.crashed.Load() < 1 {
		t.Fatalf("%d restarts, %d Mix calls cut by the kill: want at least one each (killed after %d of %d)",
			h.plugin.Restarts(), h.mixer.crashed.Load(), killedAt, n)
	}
	quiet()
	seen := map[[32]byte]bool{}
	for _, p := range links.all() {
		if p.to != x.ID() {
			t.Errorf("packet sent to %s, want the exit %s", p.to.Short(), x.ID().Short())
		}
		seen[sha256.Sum256(p.data)] = true
	}
	st := &h.node.Stats
	if len(seen) != n || links.n.Load() != n || st.Forwarded.Load() != n || st.Dropped.Load() != 0 || st.Replays.Load() != 0 {
		t.Fatalf("%d distinct of %d sent, want %d; %s", len(seen), links.n.Load(), n, h.node.StatsLine())
	}
	t.Logf("killed after %d of %d forwarded, %d Mix calls cut; %s", killedAt, n, h.mixer.crashed.Load(), h.node.StatsLine())
}

// Tampered packets (a flipped header bit: no key authenticates them)
// arrive among good ones and are unwrapped in the same batches: each is
// dropped and counted, and every good packet is forwarded.
func TestMalformedPacketsInABatchAreDroppedAndCounted(t *testing.T) {
	now := time.Now()
	net, s, u, x := threeNodes(t, now)
	const good, bad = 64, 32
	links := &fakeLinks{target: good, done: make(chan struct{})}
	h := startNode(t, net, u, nodeOptions{links: links, quiet: true, probe: time.Hour, ackTime: -1})
	sender := peer(t, net, s, 2, now, u, x)
	var pkts [][]byte
	for i := range good + bad {
		p := route(t, sender, testMessage(1000), u.ID())[0]
		if i%3 == 2 {
			p[100] ^= 1
		}
		pkts = append(pkts, p)
	}
	var wg sync.WaitGroup
	for _, p := range pkts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := h.node.Receive(context.Background(), s.ID(), p); err != nil {
				t.Errorf("Receive: %v", err)
			}
		}()
	}
	wg.Wait()
	select {
	case <-links.done:
	case <-time.After(time.Minute):
		t.Fatalf("%d of %d good packets forwarded; %s", links.n.Load(), good, h.node.StatsLine())
	}
	st := &h.node.Stats
	eventually(t, "every tampered packet dropped", func() bool { return st.Dropped.Load() >= bad })
	quiet()
	if st.Forwarded.Load() != good || st.Dropped.Load() != bad || links.n.Load() != good {
		t.Fatalf("%d forwarded, %d dropped, %d sent; want %d, %d, %d; %s", st.Forwarded.Load(), st.Dropped.Load(), links.n.Load(), good, bad, good, h.node.StatsLine())
	}
}
