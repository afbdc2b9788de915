package mixnet_test

import (
	"bytes"
	"context"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/mixmta/mixmta/core/internal/config"
	"github.com/mixmta/mixmta/core/internal/mixnet/nodes"
	"github.com/mixmta/mixmta/core/internal/pluginhost"
	"github.com/mixmta/mixmta/core/internal/queue"
	"github.com/mixmta/mixmta/sdk"
)

// threeNodes is a sender, the node under test (a mix, not an exit) and an
// exit. A sender with hops 2 and only mix and exit healthy can only choose
// the path [mix, exit]: every packet it makes is forwarded by the node
// under test to the exit.
func threeNodes(t *testing.T, now time.Time) (net *simNet, s, u, x *simNode) {
	net = newSimNet(t, t.TempDir(), now, nodeSpec{"sender", false}, nodeSpec{"mix", false}, nodeSpec{"exit", true})
	return net, net.node("sender"), net.node("mix"), net.node("exit")
}

// A packet received from the transport is stored, unwrapped by the real
// mixer, held in the scheduler's pool for its hop delay, and sent to the
// next hop the packet names, at the same size. The exit can unwrap what
// was sent into the original message: it is the packet re-wrapped for the
// next hop, not filler of the right length.
func TestForwardedPacketLeavesThroughPoolWithSameSize(t *testing.T) {
	now := time.Now()
	net, s, u, x := threeNodes(t, now)
	const hopDelay = 500 * time.Millisecond
	h := startNode(t, net, u, nodeOptions{hopDelay: hopDelay})
	sender := peer(t, net, s, 2, now, u, x)
	m := testMessage(1000)
	pkts := route(t, sender, m, u.ID())
	if len(pkts) != 1 {
		t.Fatalf("%d packets for 1000 bytes, want 1", len(pkts))
	}

	start := time.Now()
	h.receive(s, pkts[0])
	eventually(t, "the packet waiting in the pool for its hop delay", func() bool { return h.eng.Delayed() == 1 })
	if n := len(h.links.all()); n != 0 {
		t.Fatalf("%d packets sent before the hop delay of %v passed, want 0", n, hopDelay)
	}
	eventually(t, "the packet sent", func() bool { return len(h.links.all()) == 1 })
	if waited := time.Since(start); waited < hopDelay {
		t.Errorf("packet left after %v, before its hop delay of %v", waited, hopDelay)
	}
	out := h.links.all()[0]
	if out.to != x.ID() {
		t.Errorf("sent to %s, want the exit %s", out.to.Short(), x.ID().Short())
	}
	if len(out.data) != packetSize {
		t.Errorf("sent %d bytes, want %d (the size it arrived with)", len(out.data), packetSize)
	}
	if bytes.Equal(out.data, pkts[0]) {
		t.Error("the packet left exactly as it arrived: not unwrapped")
	}

	exit := peer(t, net, x, 2, now)
	res, err := exit.Mix(context.Background(), out.data)
	if err != nil {
		t.Fatalf("the exit cannot unwrap the forwarded packet: %v", err)
	}
	if res.Action != sdk.MixExit || res.Fragment == nil || res.Fragment.Count != 1 {
		t.Fatalf("exit result: action %d, fragment %v; want an exit with the single fragment", res.Action, res.Fragment)
	}
	got, err := exit.Assemble(context.Background(), res.Fragment.Data)
	if err != nil {
		t.Fatal(err)
	}
	want := m.Envelope
	want.MailFrom = "" // the entry's router sends the null sender
	if !reflect.DeepEqual(got.Envelope, want) || !bytes.Equal(got.Header, m.Header) || !bytes.Equal(got.Body, m.Body) {
		t.Errorf("message behind the forwarded packet differs: envelope %+v, want %+v", got.Envelope, want)
	}

	st := &h.node.Stats
	if st.Received.Load() != 1 || st.Forwarded.Load() != 1 || st.Dropped.Load() != 0 || st.Replays.Load() != 0 {
		t.Errorf("stats: %s; want received 1, forwarded 1, nothing dropped", h.node.StatsLine())
	}
	h.settled()
}

// The replay tag is stored in the transaction that creates the forward
// item, so the same packet is forwarded at most once: received again
// later, received many times at once (concurrent unwraps of one packet
// race to commit the tag), or received again after the daemon restarted
// (tags live in the queue until their key's grace ends). Every replay is
// counted in Stats.Replays.
func TestReplayedPacketIsDroppedAndCounted(t *testing.T) {
	now := time.Now()
	net, s, u, x := threeNodes(t, now)
	h := startNode(t, net, u, nodeOptions{})
	sender := peer(t, net, s, 2, now, u, x)
	p1 := route(t, sender, testMessage(100), u.ID())[0]
	p2 := route(t, sender, testMessage(200), u.ID())[0]
	p3 := route(t, sender, testMessage(300), u.ID())[0]
	sentCount := func() int { return len(h.links.all()) }

	// Again, after it was forwarded.
	h.receive(s, p1)
	eventually(t, "p1 forwarded", func() bool { return sentCount() == 1 })
	h.receive(s, p1)
	eventually(t, "the replay of p1 counted", func() bool { return h.node.Stats.Replays.Load() == 1 })
	quiet()
	if n := sentCount(); n != 1 {
		t.Fatalf("%d packets sent after a replay, want 1", n)
	}

	// Eight copies at once.
	const copies = 8
	var wg sync.WaitGroup
	for range copies {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := h.node.Receive(context.Background(), s.ID(), p2); err != nil {
				t.Errorf("Receive: %v", err)
			}
		}()
	}
	wg.Wait()
	eventually(t, "p2 unwrapped 8 times", func() bool {
		return h.node.Stats.Forwarded.Load()+h.node.Stats.Replays.Load() == 2+copies
	})
	quiet()
	if f, r, n := h.node.Stats.Forwarded.Load(), h.node.Stats.Replays.Load(), sentCount(); f != 2 || r != copies || n != 2 {
		t.Fatalf("after %d concurrent copies of p2: forwarded %d, replays %d, sent %d; want 2, %d, 2", copies, f, r, n, copies)
	}
	h.settled()

	// After a restart of engine and queue.
	h.restart()
	h.receive(s, p1)
	h.receive(s, p2)
	eventually(t, "both replays counted after the restart", func() bool { return h.node.Stats.Replays.Load() == 2 })
	h.receive(s, p3) // a fresh packet still passes: the node is working
	eventually(t, "p3 forwarded", func() bool { return sentCount() == 3 })
	quiet()
	st := &h.node.Stats
	if n := sentCount(); n != 3 || st.Forwarded.Load() != 1 || st.Replays.Load() != 2 {
		t.Fatalf("after the restart: sent %d (want 3 in all), %s; want forwarded 1, replays 2", n, h.node.StatsLine())
	}
	for i, p := range h.links.all() {
		if p.to != x.ID() {
			t.Errorf("packet %d sent to %s, want %s", i, p.to.Short(), x.ID().Short())
		}
	}
	h.settled()
}

// One flipped bit anywhere in a packet makes the mixer refuse it: in the
// payload region (the hop's AES-GCM layer), α, β or γ (the header MAC).
// The node drops and counts it, forwards nothing, and neither the core nor
// the plugin crashes. The tampered copies leave no replay tag behind: the
// genuine packet still goes through afterwards.
func TestTamperedPacketIsDropped(t *testing.T) {
	now := time.Now()
	net, s, u, x := threeNodes(t, now)
	h := startNode(t, net, u, nodeOptions{})
	sender := peer(t, net, s, 2, now, u, x)
	pkt := route(t, sender, testMessage(5000), u.ID())[0]

	cases := []struct {
		name string
		off  int
		bit  uint
	}{
		{"payload, first byte", 0, 0},
		{"payload, length field", 2, 6},
		{"payload, middle", payloadEnd / 2, 3},
		{"payload, last byte", payloadEnd - 1, 7},
		{"alpha, first byte", payloadEnd, 0},
		{"alpha, bit 255 (X25519 ignores it)", alphaEnd - 1, 7},
		{"beta, first slot's command", alphaEnd, 0},
		{"beta, middle", alphaEnd + 120, 4},
		{"beta, last byte", betaEnd - 1, 1},
		{"gamma, first byte", betaEnd, 0},
		{"gamma, last byte", packetSize - 1, 7},
	}
	for i, c := range cases {
		bad := bytes.Clone(pkt)
		bad[c.off] ^= 1 << c.bit
		h.receive(s, bad)
		eventually(t, fmt.Sprintf("the drop of the packet tampered at %s (byte %d)", c.name, c.off), func() bool {
			return h.node.Stats.Dropped.Load() == int64(i+1)
		})
	}
	if err := h.node.Receive(context.Background(), s.ID(), pkt[:packetSize-1]); err == nil {
		t.Error("a packet one byte short was accepted")
	}
	quiet()
	st := &h.node.Stats
	if n := len(h.links.all()); n != 0 {
		t.Fatalf("%d tampered packets forwarded, want 0", n)
	}
	if st.Dropped.Load() != int64(len(cases)+1) || st.Forwarded.Load() != 0 || st.Replays.Load() != 0 {
		t.Fatalf("%s; want %d dropped, none forwarded or counted as replay", h.node.StatsLine(), len(cases)+1)
	}
	if r := h.plugin.Restarts(); r != 0 {
		t.Fatalf("the sphinx plugin restarted %d times (crashed on a tampered packet)", r)
	}
	h.settled()

	h.receive(s, pkt)
	eventually(t, "the genuine packet forwarded", func() bool { return len(h.links.all()) == 1 })
	if to := h.links.all()[0].to; to != x.ID() {
		t.Fatalf("genuine packet sent to %s, want %s", to.Short(), x.ID().Short())
	}
	h.settled()
}

// A packet made with the node's key of epoch e is forwarded during e and
// during the grace period after it; once e's end plus grace has passed, the
// node has deleted that key (file and mixer state) and drops the packet,
// without counting it as a replay.
func TestPacketForExpiredEpochIsDropped(t *testing.T) {
	now := time.Now()
	e := nodes.Epoch(now, epochLength)
	net, s, u, x := threeNodes(t, now)
	h := startNode(t, net, u, nodeOptions{})
	sender := peer(t, net, s, 2, now, u, x) // paths with u's key of epoch e
	var pkts [3][]byte
	for i := range pkts {
		pkts[i] = route(t, sender, testMessage(100*(i+1)), u.ID())[0]
	}
	hasKey := func(st sdk.MixState, epoch uint64) bool {
		for _, k := range st.Keys {
			if k.Epoch == epoch {
				return true
			}
		}
		return false
	}
	waitState := func(what string, ok func(sdk.MixState) bool) {
		t.Helper()
		eventually(t, what, func() bool { st, _ := h.mixer.last(); return ok(st) })
	}
	sentCount := func() int { return len(h.links.all()) }

	h.receive(s, pkts[0])
	eventually(t, "the packet of epoch e forwarded during e", func() bool { return sentCount() == 1 })

	end := nodes.EpochStart(e+1, epochLength).Add(grace)
	h.clock.setNow(end.Add(-time.Minute))
	waitState("the mix state of epoch e+1 with e's key still in grace", func(st sdk.MixState) bool {
		return hasKey(st, e) && hasKey(st, e+2)
	})
	h.receive(s, pkts[1])
	eventually(t, "the packet of epoch e forwarded during the grace period", func() bool { return sentCount() == 2 })

	h.clock.setNow(end.Add(time.Second))
	waitState("a mix state without e's key", func(st sdk.MixState) bool { return !hasKey(st, e) && hasKey(st, e+1) })
	// The state without the key is pushed first, then the file is deleted.
	eventually(t, fmt.Sprintf("the key file of epoch %d deleted after its grace", e), func() bool {
		_, err := os.Stat(filepath.Join(u.dir, fmt.Sprintf("mix-%d.key", e)))
		return errors.Is(err, fs.ErrNotExist)
	})
	h.receive(s, pkts[2])
	eventually(t, "the packet of the expired epoch dropped", func() bool { return h.node.Stats.Dropped.Load() == 1 })
	quiet()
	if n := sentCount(); n != 2 {
		t.Fatalf("%d packets sent, want 2 (the packet of the expired epoch forwarded)", n)
	}
	if r := h.node.Stats.Replays.Load(); r != 0 {
		t.Fatalf("%d replays counted, want 0", r)
	}
	h.settled()
}

// keysOnDisk opens a fresh KeyStore on dir (as a seized disk would be
// read) and returns every mix key whose file is still there.
func keysOnDisk(t *testing.T, dir string) []sdk.EpochKey {
	t.Helper()
	ks, err := nodes.Open(dir, epochLength, grace)
	if err != nil {
		t.Fatal(err)
	}
	files := mixKeyFiles(t, dir)
	var out []sdk.EpochKey
	for _, e := range files {
		for _, k := range ks.Keys(nodes.EpochStart(e, epochLength)) {
			if k.Epoch == e {
				out = append(out, k)
			}
		}
	}
	if len(out) != len(files) {
		t.Fatalf("read %d keys from %d key files %v", len(out), len(files), files)
	}
	return out
}

// Forward secrecy: a packet recorded during epoch e is readable with the
// keys on disk until e's grace ends (a fresh plugin process given them
// unwraps it); after that, the key file of e is gone, no file in the key
// directory holds its private key, and a fresh process given every key
// still on disk refuses the packet permanently.
func TestForwardSecrecyRecordedPacketUnreadableAfterGrace(t *testing.T) {
	now := time.Now()
	e := nodes.Epoch(now, epochLength)
	net, s, u, x := threeNodes(t, now)
	sender := peer(t, net, s, 2, now, u, x)
	recorded := route(t, sender, testMessage(2000), u.ID())[0]
	priv := privateKeyOf(t, u.dir, e)
	ctx := context.Background()
	seize := func(epoch uint64) *pluginhost.Stage {
		p := launchSphinx(t, "seized", sphinxCfg, newLogger(t, true))
		st := sdk.MixState{Epoch: epoch, Keys: keysOnDisk(t, u.dir), Self: u.ID(), Nodes: net.dir.Nodes(now), KeyDir: u.dir}
		if err := p.SetMixState(ctx, st); err != nil {
			t.Fatal(err)
		}
		return p
	}

	res, err := seize(e).Mix(ctx, recorded)
	if err != nil || res.Action != sdk.MixForward || res.NextHop != x.ID() {
		t.Fatalf("before the grace ended, the keys on disk do not unwrap the recorded packet: %v", err)
	}

	ch, err := u.ks.Ensure(nodes.EpochStart(e+1, epochLength).Add(grace))
	if err != nil {
		t.Fatal(err)
	}
	if len(ch.Deleted) != 1 || ch.Deleted[0] != e {
		t.Fatalf("Ensure after the grace deleted %v, want [%d]", ch.Deleted, e)
	}
	if _, err := os.Stat(filepath.Join(u.dir, fmt.Sprintf("mix-%d.key", e))); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("key file of epoch %d: %v; want it gone", e, err)
	}
	entries, err := os.ReadDir(u.dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, ent := range entries {
		data, err := os.ReadFile(filepath.Join(u.dir, ent.Name()))
		if err != nil {
			t.Fatal(err)
		}
		for rest := data; ; {
			if bytes.Contains(rest, priv) {
				t.Fatalf("%s holds the private key of epoch %d", ent.Name(), e)
			}
			var b *pem.Block
			if b, rest = pem.Decode(rest); b == nil {
				break
			}
			if bytes.Contains(b.Bytes, priv) {
				t.Fatalf("%s holds the private key of epoch %d", ent.Name(), e)
			}
		}
	}

	_, err = seize(e+1).Mix(ctx, recorded)
	if err == nil || !sdk.IsPermanent(err) {
		t.Fatalf("after the grace, the keys left on disk: Mix gave %v; want a permanent error", err)
	}
}

// A message of several fragments, each on its own 3-hop path that ends at
// the node under test, is reassembled there: one message item enters the
// pipeline at Config.ExitStage (the exit transformer, not the router)
// with the message's envelope, header and body, and nothing is forwarded.
// The same packets again are replays; the same fragments again (the same
// message id, found in the queue at start) are a duplicate message that
// the message-id cache drops.
func TestFragmentsReassembleAtExit(t *testing.T) {
	now := time.Now()
	net := newSimNet(t, t.TempDir(), now, nodeSpec{"sender", false}, nodeSpec{"a", false}, nodeSpec{"b", false}, nodeSpec{"exit", true})
	s, a, b, u := net.node("sender"), net.node("a"), net.node("b"), net.node("exit")
	h := startNode(t, net, u, nodeOptions{})
	hops := map[sdk.NodeID]*pluginhost.Stage{a.ID(): peer(t, net, a, 3, now), b.ID(): peer(t, net, b, 3, now)}
	sender := peer(t, net, s, 3, now, a, b, u) // paths [a b exit] or [b a exit]
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
		for n := 0; at != u.ID(); n++ {
			p := hops[at]
			if p == nil || n == 2 {
				t.Fatalf("path leaves the simulated hops (at %s after %d hops)", at.Short(), n)
			}
			res, err := p.Mix(ctx, pkt)
			if err != nil || res.Action != sdk.MixForward {
				t.Fatalf("Mix at a hop before the exit: %v", err)
			}
			at, pkt = res.NextHop, res.Packet
		}
		finals = append(finals, pkt)
	}
	for i := len(finals) - 1; i >= 0; i-- { // not in fragment order
		h.receive(b, finals[i])
	}

	eventually(t, "the reassembled message delivered", func() bool { return len(h.dlv.got()) == 1 })
	got := h.dlv.got()[0]
	want := m.Envelope
	want.MailFrom = "" // the entry's router sends the null sender
	if !reflect.DeepEqual(got.Envelope, want) || !bytes.Equal(got.Header, m.Header) || !bytes.Equal(got.Body, m.Body) {
		t.Fatalf("delivered message differs: envelope %+v (want %+v), header %d bytes (want %d), body %d bytes (want %d)",
			got.Envelope, want, len(got.Header), len(m.Header), len(got.Body), len(m.Body))
	}
	if n := len(h.exit.got()); n != 1 {
		t.Fatalf("the exit stage saw %d messages, want 1 (the message resumes at ExitStage)", n)
	}
	st := &h.node.Stats
	if st.Exited.Load() != 4 || st.Assembled.Load() != 1 || st.Duplicates.Load() != 0 || st.Dropped.Load() != 0 {
		t.Fatalf("%s; want exit=4 assembled=1, no duplicate, nothing dropped", h.node.StatsLine())
	}
	h.settled()
	if n := h.node.Fragments(); n != 0 {
		t.Fatalf("%d incomplete messages held after assembly, want 0", n)
	}

	// The same packets: replays.
	for _, p := range finals {
		h.receive(b, p)
	}
	eventually(t, "4 replays", func() bool { return st.Replays.Load() == 4 })

	// The same fragments (same message id) in the queue at start, as new
	// packets carrying them would leave them.
	own := peer(t, net, u, 3, now) // u's keys outside the node: no replay tags
	var frags []*sdk.Fragment
	for _, p := range finals {
		res, err := own.Mix(ctx, p)
		if err != nil || res.Fragment == nil {
			t.Fatalf("Mix of a final packet with the exit's keys: %v", err)
		}
		frags = append(frags, res.Fragment)
	}
	h.stop()
	q, err := queue.Open(h.qdir, queue.Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range frags {
		it := &queue.Item{ID: queue.NewID(), Msg: queue.ID(f.MessageID), Kind: queue.KindFragment,
			FragIndex: f.Index, FragCount: f.Count, Received: time.Now(), Deliverer: -1}
		if err := q.Do(func(tx *queue.Tx) error { return tx.Put(it, f.Data) }); err != nil {
			t.Fatal(err)
		}
	}
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
	h.start()
	eventually(t, "the duplicate message dropped", func() bool { return h.node.Stats.Duplicates.Load() == 1 })
	quiet()
	if d, x := len(h.dlv.got()), len(h.exit.got()); d != 1 || x != 1 {
		t.Fatalf("after a duplicate fragment set: delivered %d, exit stage saw %d; want 1 and 1", d, x)
	}
	if a := h.node.Stats.Assembled.Load(); a != 0 {
		t.Fatalf("the duplicate was assembled (%d)", a)
	}
	if n := len(h.links.all()); n != 0 {
		t.Fatalf("%d packets sent by an exit, want 0", n)
	}
	h.settled()
}

// Replay tags live as long as the key they belong to, whatever the
// configuration says now. The node's keys were made with 1-hour epochs;
// the operator then changes mix.epoch to 2 minutes (grace 1 minute) and
// restarts. A packet for the old key, still valid until the Not-After in
// its file, is forwarded once, and again 62 s later it is a replay: its
// tag's lifetime came from the key's file, not from the new epoch length
// (which would have given the one-minute floor). A packet forwarded before
// the change is a replay after it too.
func TestReplayTagsOutliveAnEpochLengthChange(t *testing.T) {
	now := time.Now()
	net, s, u, x := threeNodes(t, now)
	h := startNode(t, net, u, nodeOptions{})
	sender := peer(t, net, s, 2, now, u, x)
	before := route(t, sender, testMessage(100), u.ID())[0]
	after := route(t, sender, testMessage(200), u.ID())[0]
	sentCount := func() int { return len(h.links.all()) }
	h.receive(s, before)
	eventually(t, "the packet before the change forwarded", func() bool { return sentCount() == 1 })

	const newLength, newGrace = 2 * time.Minute, time.Minute
	ks, err := nodes.Open(u.dir, newLength, newGrace)
	if err != nil {
		t.Fatal(err)
	}
	h.opt.epochLength, h.opt.grace, h.opt.keys = newLength, newGrace, ks
	h.restart()
	h.receive(s, after)
	eventually(t, "the packet after the change forwarded", func() bool { return sentCount() == 2 })

	time.Sleep(62 * time.Second) // past a one-minute tag (badger TTLs have second resolution)
	h.receive(s, after)
	h.receive(s, before)
	eventually(t, "both replays counted", func() bool { return h.node.Stats.Replays.Load() == 2 })
	quiet()
	if n, f := sentCount(), h.node.Stats.Forwarded.Load(); n != 2 || f != 1 {
		t.Fatalf("after the replays: %d packets sent in all (want 2), %d forwarded since the restart (want 1); %s", n, f, h.node.StatsLine())
	}
	h.settled()
}

// TestExitAppliesItsDestinationBlockList: an exit with an opt-out list
// delivers a reassembled message only to the recipients it does not
// list, and drops (and counts) a message whose every recipient opted out.
func TestExitAppliesItsDestinationBlockList(t *testing.T) {
	now := time.Now()
	net := newSimNet(t, t.TempDir(), now, nodeSpec{"sender", false}, nodeSpec{"a", false}, nodeSpec{"b", false}, nodeSpec{"exit", true})
	s, a, b, u := net.node("sender"), net.node("a"), net.node("b"), net.node("exit")
	bl, err := config.ParseBlockList("dest.blk", []byte("bob@rcpt.example\n"))
	if err != nil {
		t.Fatal(err)
	}
	h := startNode(t, net, u, nodeOptions{blocked: bl.Blocked})
	hops := map[sdk.NodeID]*pluginhost.Stage{a.ID(): peer(t, net, a, 3, now), b.ID(): peer(t, net, b, 3, now)}
	sender := peer(t, net, s, 3, now, a, b, u)
	ctx := context.Background()
	send := func(m *sdk.Message) {
		routes, err := sender.Route(ctx, m)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range routes {
			at, pkt := r.NextHop, r.Body
			for n := 0; at != u.ID(); n++ {
				p := hops[at]
				if p == nil || n == 2 {
					t.Fatalf("path leaves the simulated hops")
				}
				res, err := p.Mix(ctx, pkt)
				if err != nil || res.Action != sdk.MixForward {
					t.Fatalf("Mix at a hop before the exit: %v", err)
				}
				at, pkt = res.NextHop, res.Packet
			}
			h.receive(b, pkt)
		}
	}
	m := testMessage(1 << 10) // to bob (opted out) and carol
	send(m)
	eventually(t, "the message delivered", func() bool { return len(h.dlv.got()) == 1 })
	if got := h.dlv.got()[0].Envelope.RcptTo; len(got) != 1 || got[0] != "carol@rcpt.example" {
		t.Fatalf("delivered to %q, want only carol@rcpt.example", got)
	}
	only := testMessage(1 << 10)
	only.Envelope.RcptTo = []string{"bob@rcpt.example"}
	send(only)
	eventually(t, "the opted-out message dropped", func() bool { return h.node.Stats.Dropped.Load() == 1 })
	h.settled()
	if n := len(h.dlv.got()); n != 1 {
		t.Fatalf("%d messages delivered, want 1", n)
	}
}
