package mixnet_test

import (
	"bytes"
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mixmta/mixmta/core/internal/mixnet"
	"github.com/mixmta/mixmta/core/internal/mixnet/transport"
	"github.com/mixmta/mixmta/core/internal/pluginhost"
	"github.com/mixmta/mixmta/sdk"
)

// TestFullNodeRefusesEveryPacketAndLosesNothing: while Config.Full
// reports the node full, Receive refuses each packet before storing it,
// with transport.ErrFull (the full word: the previous hop keeps it), and
// no sooner than an ack would come (the refusal is not a timing signal).
// The queue does not grow. The fragments the exit already stored stay;
// once there is room the refused ones, sent again, complete the message,
// which is delivered once.
func TestFullNodeRefusesEveryPacketAndLosesNothing(t *testing.T) {
	now := time.Now()
	net := newSimNet(t, t.TempDir(), now, nodeSpec{"sender", false}, nodeSpec{"a", false}, nodeSpec{"b", false}, nodeSpec{"exit", true})
	s, a, b, u := net.node("sender"), net.node("a"), net.node("b"), net.node("exit")
	var full atomic.Bool
	const ackTime = 30 * time.Millisecond
	h := startNode(t, net, u, nodeOptions{full: func(int64) bool { return full.Load() }, ackTime: ackTime})
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
		start := time.Now()
		err := h.node.Receive(ctx, b.ID(), p)
		if !errors.Is(err, transport.ErrFull) {
			t.Fatalf("packet %d received while full: %v, want transport.ErrFull", i+2, err)
		}
		if took := time.Since(start); took < ackTime {
			t.Errorf("refused after %v, before the ack time %v: a refusal would be told apart by its timing", took, ackTime)
		}
	}
	quiet()
	if n := h.queueLen(); n != held {
		t.Fatalf("the queue went from %d to %d items while full", held, n)
	}
	if n := len(h.dlv.got()); n != 0 {
		t.Fatalf("%d messages delivered from half the fragments", n)
	}
	if n := h.node.Stats.RefusedFull.Load(); n != 2 {
		t.Errorf("RefusedFull = %d, want 2", n)
	}

	full.Store(false)
	for _, p := range finals[2:] {
		h.receive(b, p)
	}
	eventually(t, "the reassembled message delivered", func() bool { return len(h.dlv.got()) == 1 })
	if got := h.dlv.got()[0]; !bytes.Equal(got.Body, m.Body) {
		t.Fatalf("delivered body of %d bytes, want the %d sent", len(got.Body), len(m.Body))
	}
	h.settled()
}

// TestFullNextHopIsNeitherDownNorChargedAnAttempt: the next hop answers
// a forwarded packet with the full word again and again. The node parks
// the packet and sends it again when nothing has shown room for a while
// (no probe runs here), spends no attempt of its retry schedule on it, keeps the next hop healthy (three failed
// sends in a row mark a node down), and delivers the packet to it once
// it takes packets again. Control: the same refusals as nacks spend an
// attempt each and mark the next hop down.
func TestFullNextHopIsNeitherDownNorChargedAnAttempt(t *testing.T) {
	defer mixnet.SetFullWait(10*time.Millisecond, 80*time.Millisecond)()
	for _, c := range []struct {
		name   string
		refuse error
	}{
		{"full", transport.ErrFull},
		{"nack control", transport.ErrNack},
	} {
		t.Run(c.name, func(t *testing.T) {
			now := time.Now()
			net, s, u, x := threeNodes(t, now)
			var refusing atomic.Bool
			var refusals atomic.Int32
			refusing.Store(true)
			links := &fakeLinks{refuse: func(id sdk.NodeID) error {
				if id == x.ID() && refusing.Load() {
					refusals.Add(1)
					return c.refuse
				}
				return nil
			}}
			// One probe, at start: no later probe clears send failures.
			h := startNode(t, net, u, nodeOptions{links: links, probe: time.Hour})
			eventually(t, "the exit healthy after the first probe", func() bool { return h.node.HealthyNodes() == 2 })
			sender := peer(t, net, s, 2, now, u, x)
			h.receive(s, route(t, sender, testMessage(1000), u.ID())[0])
			attempts := func() int {
				n := -1
				for _, it := range h.queueItems() {
					n = it.Attempts
				}
				return n
			}

			if c.refuse == transport.ErrNack {
				eventually(t, "three nacks", func() bool { return refusals.Load() >= 3 })
				eventually(t, "the attempts recorded", func() bool { return attempts() >= 3 })
				if n := h.node.HealthyNodes(); n != 1 {
					t.Errorf("%d healthy nodes after 3 nacks in a row, want 1: the control does not see what the test guards against", n)
				}
				return
			}
			eventually(t, "three full refusals", func() bool { return refusals.Load() >= 3 })
			if n := attempts(); n != 0 {
				t.Errorf("the packet has %d attempts after full refusals only, want 0", n)
			}
			if n := h.node.HealthyNodes(); n != 2 {
				t.Errorf("%d healthy nodes after the full refusals, want 2 (a full node is not down)", n)
			}
			refusing.Store(false)
			eventually(t, "the packet sent once the next hop has room", func() bool { return len(links.all()) == 1 })
			if got := links.all()[0].to; got != x.ID() {
				t.Fatalf("sent to %s, want %s", got.Short(), x.ID().Short())
			}
			if st := &h.node.Stats; st.Dropped.Load() != 0 || st.DeferredFull.Load() < 3 {
				t.Errorf("dropped %d, deferred as full %d; want 0 and >= 3", st.Dropped.Load(), st.DeferredFull.Load())
			}
			h.settled()
		})
	}
}

// TestPacketsForAFullNextHopWaitParked: ten packets for a next hop that
// refuses as full, and whose probes say it is full, cost it one refusal
// (or the few sent before the first came back), not ten per probe
// round: the rest wait parked. Once its probes find room, all ten are
// sent, none dropped, no attempt spent.
func TestPacketsForAFullNextHopWaitParked(t *testing.T) {
	defer mixnet.SetFullWait(10*time.Millisecond, time.Hour)()
	now := time.Now()
	net, s, u, x := threeNodes(t, now)
	var full atomic.Bool
	var refusals atomic.Int32
	full.Store(true)
	links := &fakeLinks{
		refuse: func(id sdk.NodeID) error {
			if id == x.ID() && full.Load() {
				refusals.Add(1)
				return transport.ErrFull
			}
			return nil
		},
		probe: func(id sdk.NodeID) error {
			if id == x.ID() && full.Load() {
				return transport.ErrFull
			}
			return nil
		},
	}
	h := startNode(t, net, u, nodeOptions{links: links})
	sender := peer(t, net, s, 2, now, u, x)
	const n = 10
	for range n {
		h.receive(s, route(t, sender, testMessage(1000), u.ID())[0])
	}
	eventually(t, "every packet parked", func() bool { return h.node.Parked() == n })
	time.Sleep(time.Second) // 20 probe rounds that find x full
	if r := refusals.Load(); r > 4 {
		t.Errorf("%d refusals for %d packets held over 20 probe rounds: the packets were sent again to a node known to be full", r, n)
	}
	if got := len(links.all()); got != 0 {
		t.Fatalf("%d packets taken by a full node", got)
	}
	full.Store(false)
	eventually(t, "all packets sent once the next hop has room", func() bool { return len(links.all()) == n })
	for _, it := range h.queueItems() {
		t.Errorf("item left in the queue: %s attempts %d", it.Kind, it.Attempts)
	}
	if d := h.node.Stats.Dropped.Load(); d != 0 {
		t.Errorf("%d packets dropped", d)
	}
	h.settled()
}

// TestPacketsArrivingTogetherCannotAllPassTheBound: eight exit packets,
// each a whole message, arrive at once at an exit that may hold two
// messages (Config.Full counts the packets received and not yet
// unwrapped as messages) and whose deliveries are held. At most two are
// taken, the others refused as full; the queue never holds more than two
// messages. Once deliveries go on, the refused ones sent again are taken
// and all eight are delivered once.
func TestPacketsArrivingTogetherCannotAllPassTheBound(t *testing.T) {
	now := time.Now()
	net, s, u, x := threeNodes(t, now)
	const bound, n = 2, 8
	var h *harness
	h = startNode(t, net, x, nodeOptions{full: func(pending int64) bool { return h.eng.Messages()+pending >= bound }})
	block := make(chan struct{})
	h.dlv.block = block
	sender, mix := peer(t, net, s, 2, now, u, x), peer(t, net, u, 2, now)
	ctx := context.Background()
	var pkts [][]byte
	for range n {
		res, err := mix.Mix(ctx, route(t, sender, testMessage(1000), u.ID())[0])
		if err != nil || res.Action != sdk.MixForward {
			t.Fatalf("Mix at the first hop: %v", err)
		}
		pkts = append(pkts, res.Packet)
	}

	taken := make([]bool, n)
	var wg sync.WaitGroup
	for i, p := range pkts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := h.node.Receive(ctx, u.ID(), p)
			switch {
			case err == nil:
				taken[i] = true
			case !errors.Is(err, transport.ErrFull):
				t.Errorf("packet %d: %v, want nil or transport.ErrFull", i, err)
			}
		}()
	}
	wg.Wait()
	took := 0
	for _, ok := range taken {
		if ok {
			took++
		}
	}
	if took == 0 || took > bound {
		t.Fatalf("%d of %d packets arriving together taken, want 1 to %d", took, n, bound)
	}
	quiet()
	if m := h.eng.Messages(); m > bound {
		t.Fatalf("%d messages queued, bound %d", m, bound)
	}

	close(block)
	for i, p := range pkts {
		for !taken[i] {
			err := h.node.Receive(ctx, u.ID(), p)
			if err != nil && !errors.Is(err, transport.ErrFull) {
				t.Fatalf("packet %d sent again: %v", i, err)
			}
			taken[i] = err == nil
		}
	}
	eventually(t, "every message delivered", func() bool { return len(h.dlv.got()) == n })
	h.settled()
}

// TestDropPacketsRefusedAsFullComeBackLikeOwnPackets: the first hops
// refuse as full. The drop packets of empty ticks are kept and sent again
// at later ticks, as an own packet would be: a node that claims to be
// full cannot tell the sender's drops from its own packets by which come
// back. Once the hops take packets, the kept ones leave and the queue
// empties.
func TestDropPacketsRefusedAsFullComeBackLikeOwnPackets(t *testing.T) {
	defer mixnet.SetFullWait(10*time.Millisecond, 50*time.Millisecond)()
	now := time.Now()
	net := newSimNet(t, t.TempDir(), now, nodeSpec{"u", false}, nodeSpec{"a", false}, nodeSpec{"b", false}, nodeSpec{"exit", true})
	u := net.node("u")
	var full atomic.Bool
	full.Store(true)
	links := &fakeLinks{refuse: func(sdk.NodeID) error {
		if full.Load() {
			return transport.ErrFull
		}
		return nil
	}}
	h := startNode(t, net, u, nodeOptions{links: links, sendRate: 50})
	eventually(t, "refused drop packets kept in the send queue", func() bool { return h.node.SendQueueLen() >= 3 })
	kept := h.node.Stats.DeferredFull.Load()
	eventually(t, "kept drop packets sent again and refused again", func() bool { return h.node.Stats.DeferredFull.Load() > kept+3 })
	full.Store(false)
	eventually(t, "the kept drop packets sent once the hops take packets", func() bool {
		return h.node.SendQueueLen() == 0 && h.node.Stats.OwnSent.Load() >= 3
	})
	eventually(t, "an empty queue", func() bool { return h.queueLen() == 0 })
}
