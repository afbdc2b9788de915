package main

import (
	"bytes"
	"context"
	"errors"
	"testing"

	"github.com/mixmta/mixmta/plugins/sphinx/internal/sphinx"
	"github.com/mixmta/mixmta/sdk"
	"github.com/mixmta/mixmta/sdk/mixkey"
)

// xwingConfig is the default config with the KEM packet format.
func xwingConfig() Config {
	c := testConfig()
	c.SphinxFormat = "xwing"
	return c
}

// With sphinx_format xwing the stage routes, mixes and assembles KEM
// format packets: a multi-fragment message crosses 3 hops of a 5-node
// network intact, every packet packet_size bytes, each one a KEM packet
// (an X25519 unwrap of it fails), with the KEM geometry's fragment size;
// drop and loop cover packets end as they should.
func TestXWingFormatRoutesMixesAndAssembles(t *testing.T) {
	net := newTestNet(t, 5, xwingConfig(), 3, 4)
	entry := net.nodes[0]
	g := sphinx.DefaultKEMGeometry()
	if entry.stage.fragData != g.PayloadSize()-fragmentHeaderSize {
		t.Fatalf("fragment data %d, want %d (KEM geometry)", entry.stage.fragData, g.PayloadSize()-fragmentHeaderSize)
	}
	for i, size := range []int{1 << 10, 200 << 10} {
		m := testMessage(size, uint64(i))
		routes, err := entry.stage.Route(context.Background(), m)
		if err != nil {
			t.Fatal(err)
		}
		if size > g.PayloadSize() && len(routes) < 2 {
			t.Fatalf("%d bytes in %d packet(s)", size, len(routes))
		}
		for _, r := range routes {
			if len(r.Body) != g.PacketSize {
				t.Fatalf("packet of %d bytes", len(r.Body))
			}
			// The first hop's X25519 unwrap must not authenticate it.
			first := net.byID[r.NextHop]
			if _, err := sphinx.Unwrap(sphinx.DefaultGeometry(), mkKey(t, first), bytes.Clone(r.Body)); !errors.Is(err, sphinx.ErrBadMAC) {
				t.Fatalf("X25519 unwrap of a KEM packet: %v", err)
			}
		}
		frags, paths := net.deliverAll(routes)
		for j := range frags {
			checkPath(t, paths[j], entry, 3)
		}
		got, err := entry.stage.Assemble(context.Background(), concat(frags))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got.Body, m.Body) || !bytes.Equal(got.Header, m.Header) {
			t.Fatalf("%d bytes: message changed on the way", size)
		}
	}
	drop, err := entry.stage.Cover(context.Background(), sdk.CoverDrop)
	if err != nil {
		t.Fatal(err)
	}
	steps, err := net.travel(drop.NextHop, drop.Data)
	if err != nil || steps[len(steps)-1].res.Action != sdk.MixDrop {
		t.Fatalf("drop cover: %v", err)
	}
	loop, err := entry.stage.Cover(context.Background(), sdk.CoverLoop)
	if err != nil {
		t.Fatal(err)
	}
	steps, err = net.travel(loop.NextHop, loop.Data)
	if err != nil || steps[len(steps)-1].node != entry || steps[len(steps)-1].res.LoopID != loop.LoopID {
		t.Fatalf("loop cover did not come back: %v", err)
	}
}

// mkKey is node nd's X25519 key of the current epoch as a mixkey.Key.
func mkKey(t *testing.T, nd *testNode) *mixkey.Key {
	t.Helper()
	k, err := mixkey.New(nd.keys[testEpoch].Bytes())
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// A stage never mixes formats: an xwing stage refuses a MixState with
// X25519 own keys and an x25519 stage one with X-Wing keys, each naming
// both settings; directory nodes with keys of the other format are left
// out of paths.
func TestStageRefusesKeysOfTheOtherFormat(t *testing.T) {
	x := newTestNet(t, 4, testConfig(), 3)
	k := newTestNet(t, 4, xwingConfig(), 3)
	err := k.nodes[0].stage.SetMixState(context.Background(), x.stateOf(x.nodes[0]))
	wantPermanent(t, err, "mix.sphinx_format")
	err = x.nodes[1].stage.SetMixState(context.Background(), k.stateOf(k.nodes[1]))
	wantPermanent(t, err, "mix.sphinx_format")

	// An xwing node's own state with an x25519 directory: no candidates.
	st := k.stateOf(k.nodes[0])
	st.Nodes = x.directory()
	ms, err := newMixState(st, xwingConfig().format())
	if err != nil {
		t.Fatal(err)
	}
	if len(ms.candidates) != 0 {
		t.Fatalf("%d X25519 nodes usable on an xwing stage", len(ms.candidates))
	}
}

// A retired X-Wing key leaves the ring: its seed is zeroed and the
// expanded private key is dropped; a packet for it no longer unwraps.
func TestXWingKeyLeavingTheStateIsWiped(t *testing.T) {
	net := newTestNet(t, 4, xwingConfig(), 3)
	nd := net.nodes[1]
	stage := nd.stage
	stage.ring.mu.RLock()
	old, oldKEM := stage.ring.keys[testEpoch-1], stage.ring.kem[testEpoch-1]
	stage.ring.mu.RUnlock()
	if old == nil || oldKEM == nil || *old.Scalar() == ([32]byte{}) {
		t.Fatalf("the ring does not hold the X-Wing key of epoch %d", testEpoch-1)
	}
	delete(nd.keys, testEpoch-1)
	delete(nd.xkeys, testEpoch-1)
	if err := stage.SetMixState(context.Background(), net.stateOf(nd)); err != nil {
		t.Fatal(err)
	}
	if *old.Scalar() != ([32]byte{}) {
		t.Errorf("the retired seed was not zeroed")
	}
	stage.ring.mu.RLock()
	defer stage.ring.mu.RUnlock()
	if stage.ring.kem[testEpoch-1] != nil || len(stage.ring.kem) != len(nd.xkeys) {
		t.Errorf("the ring still holds %d expanded X-Wing keys, want %d", len(stage.ring.kem), len(nd.xkeys))
	}
}
