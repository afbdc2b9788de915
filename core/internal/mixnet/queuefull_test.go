package mixnet_test

import (
	"bytes"
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mixmta/mixmta/core/internal/mixnet"
	"github.com/mixmta/mixmta/core/internal/pluginhost"
	"github.com/mixmta/mixmta/sdk"
)

// TestFullQueueRefusesPacketsAndLosesNothing: while Config.QueueFull
// reports the queue at queue.max_items, Receive refuses each packet
// before storing it (ErrQueueFull: the transport nacks it and the
// previous hop sends it again), so the queue does not grow. The fragments
// the exit already stored stay, and once there is room the refused ones,
// sent again, complete the message, which is delivered: nothing
// acknowledged upstream is dropped.
func TestFullQueueRefusesPacketsAndLosesNothing(t *testing.T) {
	now := time.Now()
	net := newSimNet(t, t.TempDir(), now, nodeSpec{"sender", false}, nodeSpec{"a", false}, nodeSpec{"b", false}, nodeSpec{"exit", true})
	s, a, b, u := net.node("sender"), net.node("a"), net.node("b"), net.node("exit")
	var full atomic.Bool
	h := startNode(t, net, u, nodeOptions{queueFull: full.Load})
	hops := map[sdk.NodeID]*pluginhost.Stage{a.ID(): peer(t, net, a, 3, now), b.ID(): peer(t, net, b, 3, now)}
	sender := peer(t, net, s, 3, now, a, b, u)
	ctx := context.Background()

	m := testMessage(200 << 10)
	routes, err := sender.Route(ctx, m)
	if err != nil {
		t.Fatal(err)
	}
	if len(routes) != 4 {
		t.Fatalf("%d packets for 200 KiB, want 4", len(routes))
	}
	var finals [][]byte
	for _, r := range routes {
		at, pkt := r.NextHop, r.Body
		for at != u.ID() {
			res, err := hops[at].Mix(ctx, pkt)
			if err != nil || res.Action != sdk.MixForward {
				t.Fatalf("Mix at a hop before the exit: %v", err)
			}
			at, pkt = res.NextHop, res.Packet
		}
		finals = append(finals, pkt)
	}

	h.receive(b, finals[0])
	h.receive(b, finals[1])
	eventually(t, "two fragments held", func() bool { return h.node.Fragments() == 1 && h.eng.InFlight() == 0 })
	held := h.queueLen()

	full.Store(true)
	for i, p := range finals[2:] {
		if err := h.node.Receive(ctx, b.ID(), p); !errors.Is(err, mixnet.ErrQueueFull) {
			t.Fatalf("packet %d received with the queue full: %v, want ErrQueueFull", i+2, err)
		}
	}
	quiet()
	if n := h.queueLen(); n != held {
		t.Fatalf("the queue went from %d to %d items while full", held, n)
	}
	if n := len(h.dlv.got()); n != 0 {
		t.Fatalf("%d messages delivered from half the fragments", n)
	}

	full.Store(false)
	for _, p := range finals[2:] {
		h.receive(b, p)
	}
	eventually(t, "the reassembled message delivered", func() bool { return len(h.dlv.got()) == 1 })
	if got := h.dlv.got()[0]; !bytes.Equal(got.Body, m.Body) {
		t.Fatalf("delivered body of %d bytes, want the %d sent", len(got.Body), len(m.Body))
	}
}
