package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/mixmta/mixmta/plugins/sphinx/internal/sphinx"
	"github.com/mixmta/mixmta/sdk"
)

// onePacket routes a small message at node 0 and returns its only route.
func onePacket(t *testing.T, net *testNet) sdk.Route {
	t.Helper()
	routes, err := net.nodes[0].stage.Route(context.Background(), testMessage(500, 9))
	if err != nil {
		t.Fatal(err)
	}
	if len(routes) != 1 {
		t.Fatalf("%d routes, want 1", len(routes))
	}
	return routes[0]
}

// A bit flipped anywhere (payload region, α, β, γ) is caught at the next
// hop, at the first and at a middle hop: a permanent error, never a forward.
func TestMixRejectsTamperedPacketPermanently(t *testing.T) {
	net := newTestNet(t, 5, testConfig(), 4)
	g := sphinx.DefaultGeometry()
	L := g.PacketSize - g.HeaderSize()
	offsets := map[string]int{"payload start": 0, "payload middle": L / 2, "payload end": L - 1,
		"alpha": L + 3, "beta": L + 32 + 100, "gamma": g.PacketSize - 1}
	for _, atHop := range []int{0, 1} {
		for name, off := range offsets {
			r := onePacket(t, net)
			at, pkt := r.NextHop, r.Body
			for range atHop { // let the packet advance honestly first
				res, err := net.byID[at].stage.Mix(context.Background(), pkt)
				if err != nil {
					t.Fatal(err)
				}
				at, pkt = res.NextHop, res.Packet
			}
			pkt[off] ^= 0x10
			res, err := net.byID[at].stage.Mix(context.Background(), pkt)
			if res != nil {
				t.Fatalf("hop %d, bit flipped in %s: got action %d, want a drop", atHop, name, res.Action)
			}
			wantPermanent(t, err, "sphinx: packet")
		}
	}
}

// The same packet gives the same replay tag and epoch every time it is
// mixed (so the core recognises a replay), and Mix leaves its input alone.
func TestMixReplayTagIsStableForTheSamePacket(t *testing.T) {
	net := newTestNet(t, 5, testConfig(), 4)
	r := onePacket(t, net)
	orig := bytes.Clone(r.Body)
	nd := net.byID[r.NextHop]
	a, err := nd.stage.Mix(context.Background(), r.Body)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(r.Body, orig) {
		t.Fatal("Mix modified its input packet")
	}
	b, err := nd.stage.Mix(context.Background(), r.Body)
	if err != nil {
		t.Fatal(err)
	}
	if a.ReplayTag != b.ReplayTag || a.Epoch != b.Epoch || a.Epoch != testEpoch || a.ReplayTag == ([32]byte{}) {
		t.Fatalf("replay tags %x / %x epochs %d / %d, want equal, non-zero, epoch %d", a.ReplayTag, b.ReplayTag, a.Epoch, b.Epoch, testEpoch)
	}
	if !bytes.Equal(a.Packet, b.Packet) || a.NextHop != b.NextHop {
		t.Fatal("the same packet was forwarded differently")
	}
	other := onePacket(t, net)
	if o, err := net.byID[other.NextHop].stage.Mix(context.Background(), other.Body); err != nil || o.ReplayTag == a.ReplayTag {
		t.Fatalf("another packet must get another tag: %v", err)
	}
}

func TestMixRejectsWrongSizeAndIsTemporaryWithoutState(t *testing.T) {
	net := newTestNet(t, 4, testConfig(), 3)
	for _, n := range []int{0, 1, 65535, 65537} {
		_, err := net.nodes[1].stage.Mix(context.Background(), make([]byte, n))
		wantPermanent(t, err, "packet_size is 65536")
	}
	s := newStageWith(testConfig(), rand.Reader, time.Now, nil)
	_, err := s.Mix(context.Background(), make([]byte, 65536))
	wantTemporary(t, err, "no mix state")
	_, err = s.Cover(context.Background(), sdk.CoverDrop)
	wantTemporary(t, err, "no mix state")
}

// Packets built in epoch e are still mixed during e's grace period after
// the nodes moved to e+1 (and report epoch e); once the core removes key e,
// or its NotAfter has passed while still listed, they are dropped.
func TestMixHonoursEpochKeysAndTheirGrace(t *testing.T) {
	net := newTestNet(t, 5, testConfig(), 4)
	r := onePacket(t, net) // built with epoch testEpoch keys
	nd := net.byID[r.NextHop]

	net.epoch = testEpoch + 1
	net.now = epochStart(testEpoch + 1).Add(5 * time.Minute) // inside the 10-minute grace
	net.push()
	res, err := nd.stage.Mix(context.Background(), r.Body)
	if err != nil {
		t.Fatalf("in grace: %v", err)
	}
	if res.Epoch != testEpoch {
		t.Fatalf("reported epoch %d, want %d (the key that worked)", res.Epoch, testEpoch)
	}

	net.now = epochStart(testEpoch + 1).Add(11 * time.Minute) // grace over, key still listed
	_, err = nd.stage.Mix(context.Background(), r.Body)
	wantPermanent(t, err, "none of this node's 1 valid mix keys")

	net.now = epochStart(testEpoch + 1).Add(5 * time.Minute)
	delete(nd.keys, testEpoch) // the core deleted the key
	net.push()
	_, err = nd.stage.Mix(context.Background(), r.Body)
	wantPermanent(t, err, "none of this node's")
}

// A sender whose clock is already in the next epoch builds with next keys;
// nodes still in the current epoch hold those (published ahead) and mix.
func TestMixAcceptsPacketsForTheNextEpoch(t *testing.T) {
	net := newTestNet(t, 5, testConfig(), 4)
	entry := net.nodes[0]
	st := net.stateOf(entry)
	st.Epoch = testEpoch + 1
	if err := entry.stage.SetMixState(context.Background(), st); err != nil {
		t.Fatal(err)
	}
	r := onePacket(t, net)
	steps, err := net.travel(r.NextHop, r.Body)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range steps {
		if s.res.Epoch != testEpoch+1 {
			t.Fatalf("hop %s used epoch %d, want %d", s.node.name, s.res.Epoch, testEpoch+1)
		}
	}
}

// If every own key has expired (the core is late with new keys), packets
// wait: a temporary error, not a drop.
func TestMixWithEveryKeyExpiredIsTemporary(t *testing.T) {
	net := newTestNet(t, 4, testConfig(), 3)
	r := onePacket(t, net)
	net.now = epochStart(testEpoch + 3)
	_, err := net.byID[r.NextHop].stage.Mix(context.Background(), r.Body)
	wantTemporary(t, err, "every mix key of this node has expired")
}

// Mix tries the current key first, then the previous, then the next.
func TestKeyOrderIsCurrentPreviousNext(t *testing.T) {
	net := newTestNet(t, 2, testConfig(), 1)
	nd := net.nodes[0]
	for e := uint64(testEpoch - 3); e <= testEpoch+3; e++ {
		if nd.keys[e] == nil {
			nd.keys[e] = nd.keys[testEpoch] // any valid key will do for the order
		}
	}
	st, err := newMixState(net.stateOf(nd), x25519Format)
	if err != nil {
		t.Fatal(err)
	}
	want := []uint64{testEpoch, testEpoch - 1, testEpoch + 1, testEpoch - 2, testEpoch + 2, testEpoch - 3, testEpoch + 3}
	for i, k := range st.keys {
		if k.epoch != want[i] {
			t.Fatalf("key %d is epoch %d, want order %v", i, k.epoch, want)
		}
	}
}

// The core's state is checked; a bad one is refused and the previous state
// stays in force.
func TestSetMixStateRejectsUnusableOwnKeys(t *testing.T) {
	net := newTestNet(t, 4, testConfig(), 3)
	nd := net.nodes[1]
	cases := []struct {
		name string
		edit func(*sdk.MixState)
		want string
	}{
		{"zero self", func(s *sdk.MixState) { s.Self = sdk.NodeID{} }, "Self is the zero node id"},
		{"short public key", func(s *sdk.MixState) { s.Keys[0].Public = s.Keys[0].Public[:31] }, "public key of 31 bytes"},
		{"public key of another", func(s *sdk.MixState) { s.Keys[0].Public = s.Keys[1].Public }, "holds another key"},
		{"no NotAfter", func(s *sdk.MixState) { s.Keys[0].NotAfter = time.Time{} }, "has no NotAfter"},
		{"NotAfter at the Unix epoch", func(s *sdk.MixState) { s.Keys[0].NotAfter = time.Unix(0, 0) }, "has no NotAfter"},
		{"epoch twice", func(s *sdk.MixState) { s.Keys[1].Epoch = s.Keys[0].Epoch }, "given twice"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			st := net.stateOf(nd)
			c.edit(&st)
			wantPermanent(t, nd.stage.SetMixState(context.Background(), st), c.want)
			r := onePacket(t, net)
			if r.NextHop == nd.id { // the old state still mixes
				if _, err := nd.stage.Mix(context.Background(), r.Body); err != nil {
					t.Fatalf("previous state lost: %v", err)
				}
			}
		})
	}
}

// A fresh mixer reads its private keys from the key directory the state
// names, and refuses a state whose keys it cannot read safely: no
// directory, no key files, key files open to others.
func TestSetMixStateReadsOwnKeysFromKeyDir(t *testing.T) {
	net := newTestNet(t, 4, testConfig(), 3)
	nd := net.nodes[1]
	fresh := func() *Stage {
		return newStageWith(net.cfg, rand.Reader, func() time.Time { return net.now }, nil)
	}
	exposed := t.TempDir()
	for e := range nd.keys {
		name := fmt.Sprintf("mix-%d.key", e)
		data, err := os.ReadFile(filepath.Join(nd.dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(exposed, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(filepath.Join(exposed, name), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range []struct{ name, dir, want string }{
		{"no key directory", "", "no key directory"},
		{"no key files", t.TempDir(), "no such file"},
		{"key files open to others", exposed, "readable or writable by group or others"},
	} {
		st := net.stateOf(nd)
		st.KeyDir = c.dir
		stage := fresh()
		wantPermanent(t, stage.SetMixState(context.Background(), st), c.want)
		if n := stage.ring.held(); n != 0 {
			t.Errorf("%s: %d keys held after a refused state, want 0", c.name, n)
		}
	}
	stage := fresh()
	if err := stage.SetMixState(context.Background(), net.stateOf(nd)); err != nil {
		t.Fatal(err)
	}
	if n := stage.ring.held(); n != len(nd.keys) {
		t.Errorf("%d keys held, want %d", n, len(nd.keys))
	}
	nd.stage = stage
	for {
		r := onePacket(t, net)
		if r.NextHop == nd.id {
			if _, err := stage.Mix(context.Background(), r.Body); err != nil {
				t.Fatalf("Mix with the keys read from the key directory: %v", err)
			}
			break
		}
	}
}

// A key no longer listed in the state is wiped: its buffer is all zero and
// the ring no longer holds it.
func TestKeyLeavingTheStateIsWiped(t *testing.T) {
	net := newTestNet(t, 4, testConfig(), 3)
	nd := net.nodes[1]
	stage := nd.stage
	stage.ring.mu.RLock()
	old := stage.ring.keys[testEpoch-1]
	stage.ring.mu.RUnlock()
	if old == nil || *old.Scalar() == ([32]byte{}) {
		t.Fatalf("the ring does not hold the key of epoch %d", testEpoch-1)
	}
	delete(nd.keys, testEpoch-1)
	if err := stage.SetMixState(context.Background(), net.stateOf(nd)); err != nil {
		t.Fatal(err)
	}
	if *old.Scalar() != ([32]byte{}) {
		t.Errorf("the retired key's buffer was not zeroed")
	}
	if n := stage.ring.held(); n != len(nd.keys) {
		t.Errorf("%d keys held, want %d", n, len(nd.keys))
	}
}

// A cover drop packet takes `hops` distinct healthy nodes other than the
// sender, is forwarded like any packet and ends in MixDrop at its last hop.
func TestCoverDropEndsInMixDropAtTheLastHop(t *testing.T) {
	net := newTestNet(t, 5, testConfig(), 4)
	self := net.nodes[0]
	for range 20 {
		p, err := self.stage.Cover(context.Background(), sdk.CoverDrop)
		if err != nil {
			t.Fatal(err)
		}
		if len(p.Data) != 65536 || p.LoopID != ([16]byte{}) {
			t.Fatalf("drop packet of %d bytes with loop id %x", len(p.Data), p.LoopID)
		}
		steps, err := net.travel(p.NextHop, p.Data)
		if err != nil {
			t.Fatal(err)
		}
		if len(steps) != 3 {
			t.Fatalf("drop packet took %d hops, want 3", len(steps))
		}
		seen := map[sdk.NodeID]bool{}
		for i, s := range steps {
			if s.node == self || seen[s.node.id] {
				t.Fatalf("drop path repeats a node or uses the sender")
			}
			seen[s.node.id] = true
			want := sdk.MixForward
			if i == 2 {
				want = sdk.MixDrop
			}
			if s.res.Action != want || s.res.ReplayTag == ([32]byte{}) || s.res.Epoch != testEpoch {
				t.Fatalf("hop %d: action %d epoch %d, want %d with a replay tag at epoch %d", i, s.res.Action, s.res.Epoch, want, testEpoch)
			}
		}
	}
}

// A loop goes through hops-1 other healthy nodes and comes back to its
// sender, whose Mix returns the LoopID: also at a node that is no exit.
func TestCoverLoopComesBackToSelfWithItsLoopID(t *testing.T) {
	for _, hops := range []int{2, 3} {
		cfg := testConfig()
		cfg.Hops = hops
		net := newTestNet(t, 5, cfg, 4)
		self := net.nodes[0] // not an exit
		net.nodes[3].healthy = false
		net.push()
		ids := map[[16]byte]bool{}
		for range 10 {
			p, err := self.stage.Cover(context.Background(), sdk.CoverLoop)
			if err != nil {
				t.Fatal(err)
			}
			if p.LoopID == ([16]byte{}) || ids[p.LoopID] {
				t.Fatalf("loop id %x zero or repeated", p.LoopID)
			}
			ids[p.LoopID] = true
			if len(p.Path) != hops || p.Path[hops-1] != self.id || p.Path[0] != p.NextHop {
				t.Fatalf("hops %d: Path %d long, want %d ending at self and starting at NextHop", hops, len(p.Path), hops)
			}
			steps, err := net.travel(p.NextHop, p.Data)
			if err != nil {
				t.Fatal(err)
			}
			if len(steps) != hops {
				t.Fatalf("loop took %d hops, want %d", len(steps), hops)
			}
			for i, s := range steps[:hops-1] {
				if s.node == self || s.node == net.nodes[3] || s.node.id != p.Path[i] {
					t.Fatalf("intermediate hop %d is %s, Path says %s", i, s.node.name, p.Path[i].Short())
				}
			}
			last := steps[hops-1]
			if last.node != self || last.res.Action != sdk.MixExit || last.res.LoopID != p.LoopID || last.res.Fragment != nil {
				t.Fatalf("loop ended at %s with action %d loop id %x, want MixExit at self with %x", last.node.name, last.res.Action, last.res.LoopID, p.LoopID)
			}
		}
	}
}

func TestCoverFailsTemporarilyWithTooFewNodesAndRejectsUnknownKinds(t *testing.T) {
	net := newTestNet(t, 3, testConfig(), 2)
	_, err := net.nodes[0].stage.Cover(context.Background(), sdk.CoverDrop)
	wantTemporary(t, err, "a path needs 3")
	if _, err := net.nodes[0].stage.Cover(context.Background(), sdk.CoverLoop); err != nil {
		t.Fatalf("a loop needs only 2 others: %v", err)
	}
	_, err = net.nodes[0].stage.Cover(context.Background(), sdk.CoverKind(9))
	wantPermanent(t, err, "unknown cover kind")
}

// On the wire, real, drop and loop packets have the same size and look
// like random bytes: each passes a chi-square test of its byte histogram
// (df 255, critical 377.2 at α = 1e-6, so that three packets per run
// do not fail by chance once in a few hundred runs; a zeroed kilobyte
// alone adds about 6,000).
func TestCoverAndRealPacketsLookAlikeOnTheWire(t *testing.T) {
	net := newTestNet(t, 5, testConfig(), 4)
	self := net.nodes[0]
	real := onePacket(t, net)
	drop, err := self.stage.Cover(context.Background(), sdk.CoverDrop)
	if err != nil {
		t.Fatal(err)
	}
	loop, err := self.stage.Cover(context.Background(), sdk.CoverLoop)
	if err != nil {
		t.Fatal(err)
	}
	for name, pkt := range map[string][]byte{"real": real.Body, "drop": drop.Data, "loop": loop.Data} {
		if len(pkt) != 65536 {
			t.Fatalf("%s packet of %d bytes", name, len(pkt))
		}
		var h [256]float64
		for _, b := range pkt {
			h[b]++
		}
		exp := float64(len(pkt)) / 256
		chi := 0.0
		for _, n := range h {
			chi += (n - exp) * (n - exp) / exp
		}
		if chi > 377.2 || math.IsNaN(chi) {
			t.Fatalf("%s packet's bytes are not uniform: chi-square %.1f", name, chi)
		}
	}
}

// newExitPacket builds a one-hop packet for node nd with an arbitrary
// payload, as a hostile or buggy sender could.
func newExitPacket(t *testing.T, nd *testNode, payload []byte) []byte {
	t.Helper()
	pkt, err := sphinx.NewPacket(sphinx.DefaultGeometry(), []sphinx.Hop{{NodeID: nd.id, MixKey: nd.keys[testEpoch].PublicKey().Bytes()}}, sphinx.Exit, payload, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return pkt
}

// Authentic packets whose exit payload is malformed are dropped: unknown
// type bytes, truncated headers, impossible index/count, zero loop ids, a
// count beyond max_message_bytes, and a fragment at a node that is no exit.
func TestMixRejectsMalformedExitPayloads(t *testing.T) {
	net := newTestNet(t, 3, testConfig(), 1)
	exit, nonExit := net.nodes[1], net.nodes[2]
	frag := func(index, count uint32, data int) []byte {
		p := make([]byte, fragmentHeaderSize+data)
		putFragmentHeader(p, [16]byte{1}, int(index), int(count))
		return p
	}
	max := exit.stage.maxFragments
	cases := []struct {
		name    string
		node    *testNode
		payload []byte
		want    string // "" = accepted
	}{
		{"empty", exit, nil, "empty"},
		{"type 0x00", exit, make([]byte, 100), "unknown payload type 0x00"},
		{"type 0x03", exit, append([]byte{3}, make([]byte, 99)...), "unknown payload type 0x03"},
		{"fragment without data", exit, frag(0, 1, 0), "has no data"},
		{"fragment header cut", exit, frag(0, 1, 1)[:10], "has no data"},
		{"count 0", exit, frag(0, 0, 5), "count 0"},
		{"index = count", exit, frag(3, 3, 5), "index 3 of 3"},
		{"count beyond max_message_bytes", exit, frag(0, uint32(max+1), 5), "max_message_bytes"},
		{"largest count", exit, frag(uint32(max-1), uint32(max), 5), ""},
		{"fragment at a non-exit", nonExit, frag(0, 1, 5), "not an exit"},
		{"loop short", exit, []byte{2, 1, 2, 3}, "loop payload of 4 bytes"},
		{"loop zero id", exit, make17(2), "zero loop id"},
		{"loop at a non-exit", nonExit, append([]byte{2}, bytes.Repeat([]byte{7}, 16)...), ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			res, err := c.node.stage.Mix(context.Background(), newExitPacket(t, c.node, c.payload))
			if c.want == "" {
				if err != nil || res.Action != sdk.MixExit {
					t.Fatalf("want MixExit, got %v", err)
				}
				return
			}
			wantPermanent(t, err, c.want)
		})
	}
}

func make17(typ byte) []byte { b := make([]byte, 17); b[0] = typ; return b }

// A packet addressed to another node, or built with another geometry,
// fails authentication: permanent.
func TestMixRejectsAnotherNodesPacket(t *testing.T) {
	net := newTestNet(t, 5, testConfig(), 4)
	r := onePacket(t, net)
	for _, nd := range net.nodes {
		if nd.id == r.NextHop {
			continue
		}
		_, err := nd.stage.Mix(context.Background(), r.Body)
		wantPermanent(t, err, "none of this node's 2 valid mix keys")
	}
}
