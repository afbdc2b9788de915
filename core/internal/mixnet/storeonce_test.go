package mixnet_test

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/mixmta/mixmta/core/internal/mixnet"
	"github.com/mixmta/mixmta/sdk"
)

// A forwarded packet is stored once: the packet as received, before its
// ack, and no second sealed copy in its forward form after the unwrap
// (the forward item takes the received packet over; its forward form
// stays in memory). After a restart, when that memory is gone, the forward
// form is derived again by the mixer from the stored packet: the packets
// waiting in the pool across the restart leave unwrapped, for the next hop
// the packet names, and the exit reads the messages behind them. With no
// room in memory (a long pool, a backlog) the forward form is stored
// sealed instead, and the packets leave after the restart just as well.
func TestForwardedPacketIsStoredOnceAndSentAfterRestart(t *testing.T) {
	t.Run("in memory", func(t *testing.T) { storedOnceAndSent(t, 0, 1) })
	t.Run("memory full", func(t *testing.T) { storedOnceAndSent(t, -1, 2) })
}

// storedOnceAndSent forwards packets with the node's packet memory bounded
// by cacheLimit (0: the default) and wants perPacket packets written to
// the queue (its slot file) for each.
func storedOnceAndSent(t *testing.T, cacheLimit int64, perPacket int) {
	now := time.Now()
	net, s, u, x := threeNodes(t, now)
	// Long enough that the packets still wait when the node stops.
	const hopDelay = 8 * time.Second
	h := startNode(t, net, u, nodeOptions{hopDelay: hopDelay})
	if cacheLimit != 0 {
		mixnet.SetCacheLimit(h.node, cacheLimit)
	}
	sender := peer(t, net, s, 2, now, u, x)
	const n = 3
	var msgs [][]byte
	var pkts [][]byte
	for i := range n {
		m := testMessage(1000 + i)
		p := route(t, sender, m, u.ID())
		if len(p) != 1 {
			t.Fatalf("%d packets for %d bytes, want 1", len(p), len(m.Body))
		}
		msgs, pkts = append(msgs, m.Body), append(pkts, p[0])
	}
	start := time.Now()
	for _, p := range pkts {
		h.receive(s, p)
	}
	eventually(t, "the packets waiting in the pool", func() bool { return h.eng.Delayed() == n })
	written := h.eng.Queue().SlotWrites()
	h.stop()
	if time.Since(start) >= hopDelay || len(h.links.all()) != 0 {
		t.Fatalf("%d packets sent before the restart (the machine took %v for %d packets): the test needs them waiting", len(h.links.all()), time.Since(start), n)
	}
	if written != int64(perPacket*n) {
		t.Errorf("%d packets written to the queue for %d forwarded packets, want %d", written, n, perPacket*n)
	}

	h.start()
	eventually(t, "the packets sent after the restart", func() bool { return len(h.links.all()) == n })
	exit := peer(t, net, x, 2, now)
	found := map[int]bool{}
	for _, out := range h.links.all() {
		if out.to != x.ID() || len(out.data) != packetSize {
			t.Fatalf("sent %d bytes to %s, want %d to the exit", len(out.data), out.to.Short(), packetSize)
		}
		res, err := exit.Mix(context.Background(), out.data)
		if err != nil {
			t.Fatalf("the exit cannot unwrap a packet sent after the restart: %v", err)
		}
		if res.Action != sdk.MixExit || res.Fragment == nil {
			t.Fatalf("exit result: action %d, fragment %v; want an exit fragment", res.Action, res.Fragment)
		}
		got, err := exit.Assemble(context.Background(), res.Fragment.Data)
		if err != nil {
			t.Fatal(err)
		}
		for i, b := range msgs {
			if bytes.Equal(got.Body, b) {
				found[i] = true
			}
		}
	}
	if len(found) != n {
		t.Errorf("the exit read %d of the %d messages", len(found), n)
	}
	if st := &h.node.Stats; st.Dropped.Load() != 0 || st.Replays.Load() != 0 {
		t.Errorf("stats after the restart: %s; want nothing dropped", h.node.StatsLine())
	}
	h.settled()
}
